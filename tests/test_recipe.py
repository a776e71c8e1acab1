"""The README's real-model recipe (examples/qwen3-4b.sh) is run as written, by bash, on real-shape
local stand-ins, so the documented path cannot rot.

The script calls ``thinksafe``; here that name is a wrapper (first on PATH) that runs this
checkout's CLI with the stand-ins substituted by ``--set`` after the script's own arguments: the
policy is a Qwen3-architecture model with the real Qwen3 tokenizer and chat template
(``shared/data/tokenizers/qwen3``), the guard a Llama-architecture model with Llama-Guard-3's chat
template, the refusal guard a Mistral-architecture (WildGuard-shaped) model; weights random but
for a wired next-token map, so that the policy answers ``<think> Fine</think> Sure`` and stops,
and the guard says ``safe`` (a random model never stops and every sample would be dropped as
truncated). The training prompts are ``shared/data``'s labelled instruction set; the lengths are
cut to a few tokens. Everything else is the packaged ``configs/qwen3-4b.yaml``."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import QWEN3_DIR, ROOT, SHARED_DATA

REPO = ROOT
SCRIPT = REPO / "examples" / "qwen3-4b.sh"

pytestmark = pytest.mark.skipif(not QWEN3_DIR.is_dir(), reason="../shared/data/tokenizers/qwen3 is absent")


def _commands(text: str) -> list[str]:
    return [ln.split("  #")[0].strip() for ln in text.splitlines()
            if ln.strip().startswith("thinksafe ")]


def test_the_readme_shows_the_script():
    """The README's quick start is this file's commands, in order (so what CI runs is what it says)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quick start on a real model", 1)[1].split("\n## ", 1)[0]
    shown = [c for block in re.findall(r"```bash\n(.*?)```", section, re.S) for c in _commands(block)]
    assert shown == _commands(SCRIPT.read_text()) and len(shown) >= 4
    assert "examples/qwen3-4b.sh" in section


def _wire(model, tok_ids: dict[int, int], default_next: int, hidden: int) -> None:
    """Make ``model`` a next-token map: after token a it emits tok_ids[a] (else default_next).
    Attention and MLP outputs are scaled down to 1e-3 (they still get gradients), so the residual
    is the token's embedding, which selects one lm_head row."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        emb.zero_()
        emb[:, 0] = 1.0                                  # every other token: dimension 0
        head.zero_()
        head[default_next, 0] = 50.0                     # logit 200: sampling picks it too
        for d, (a, b) in enumerate(tok_ids.items(), start=1):
            assert d < hidden
            emb[a, 0], emb[a, d] = 0.0, 1.0
            head[b, d] = 50.0
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.mul_(1e-3)


def build_standins(root: Path) -> dict[str, Path]:
    from transformers import (AutoTokenizer, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                              Qwen3Config, Qwen3ForCausalLM)
    tok = AutoTokenizer.from_pretrained(str(QWEN3_DIR))
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<think>", "</think>", "<|im_end|>")}
    fine, sure, safe = (tok(t, add_special_tokens=False).input_ids for t in (" Fine", " Sure", "safe"))
    assert len(fine) == len(sure) == len(safe) == 1
    torch.manual_seed(0)
    hidden = 16
    small = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=32, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
                 eos_token_id=ids["<|im_end|>"], pad_token_id=tok.pad_token_id)
    policy = Qwen3ForCausalLM(Qwen3Config(head_dim=8, **small))
    _wire(policy, {ids["<think>"]: fine[0], fine[0]: ids["</think>"], ids["</think>"]: sure[0],
                   sure[0]: ids["<|im_end|>"]}, ids["<think>"], hidden)
    out = {"policy": root / "qwen3-4b", "guard": root / "llama-guard-3", "refusal": root / "wildguard"}
    policy.save_pretrained(out["policy"])
    tok.save_pretrained(out["policy"])
    guard = LlamaForCausalLM(LlamaConfig(**small))
    _wire(guard, {}, safe[0], hidden)
    guard.save_pretrained(out["guard"])
    gtok = AutoTokenizer.from_pretrained(str(QWEN3_DIR))
    gtok.chat_template = json.loads((SHARED_DATA / "tokenizers" / "llama_guard_3_8b_chat_template.json")
                                    .read_text())["chat_template"]
    gtok.save_pretrained(out["guard"])
    wild = MistralForCausalLM(MistralConfig(head_dim=8, **small))
    _wire(wild, {}, ids["<|im_end|>"], hidden)          # says nothing: its verdicts are unparsed
    wild.save_pretrained(out["refusal"])
    AutoTokenizer.from_pretrained(str(QWEN3_DIR)).save_pretrained(out["refusal"])
    return out


def standin_sets(models: dict[str, Path]) -> list[str]:
    return [f"model.path={models['policy']}", f"guard.path={models['guard']}",
            f"evaluate.refusal_guard_path={models['refusal']}",
            f"prompts.source={SHARED_DATA / 'train' / 'refusal_direction_mixed_train.jsonl'}",
            "prompts.limit=6", "generate.max_new_tokens=8", "evaluate.max_new_tokens=8",
            "evaluate.reasoning_max_new_tokens=8", "evaluate.limit=2", "evaluate.samples=1",
            "guard.max_input_tokens=2048", "model.batch_size=8", "train.epochs=1", "train.max_length=512",
            "train.micro_batch_tokens=2048", f"evaluate.data_dir={SHARED_DATA}"]


@pytest.mark.slow
def test_the_recipe_runs_on_real_shape_standins(tmp_path):
    models = build_standins(tmp_path / "models")
    sets = " ".join(shlex.quote(a) for s in standin_sets(models) for a in ("--set", s))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "thinksafe"
    wrapper.write_text(
        "#!/usr/bin/env bash\n"
        "# this checkout's thinksafe, with the stand-ins after the recipe's own arguments\n"
        f'case "$1" in\n'
        f'  check|evaluate|run) exec {shlex.quote(sys.executable)} -m thinksafe.cli "$@" {sets} ;;\n'
        f'  *) exec {shlex.quote(sys.executable)} -m thinksafe.cli "$@" ;;\n'
        "esac\n")
    wrapper.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(["bash", str(SCRIPT)], cwd=work, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    run = work / "runs" / "qwen3-4b"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["name"] == "qwen3-4b" and cfg["model"]["family"] == "qwen3"       # the packaged config
    assert cfg["guard"]["kind"] == "llama_guard" and cfg["train"]["lora"]["r"] == 32
    for folder in (run, work / "runs" / "qwen3-4b-first"):
        assert (folder / "sft.jsonl").stat().st_size > 0
        assert any(folder.glob("**/adapter_model.safetensors")), sorted(p.name for p in folder.iterdir())
        metrics = json.loads((folder / "eval" / "base" / "metrics.json").read_text())
        assert {"harmbench", "strongreject", "wildjailbreak", "xstest", "aime24", "math500", "gsm8k"} \
            <= set(metrics["benchmarks"]) and metrics["benchmarks"]["gpqa_diamond"]["skipped"]
    sft = [json.loads(ln) for ln in (run / "sft.jsonl").read_text().splitlines()]
    assert all("</think>" in s["response"] for s in sft)
    report = (run / "report.md").read_text()
    assert "## The paper's table" in report and "Qwen3-4B" in report
