"""Shared fixtures and fakes: paths (the repository, ``../shared/data``), a small organism tokenizer
trained once per session, tiny models, organism SFT rows, hand-made evaluation metrics, a DDP launcher.

``tests/`` mirrors ``src/thinksafe/`` (``tests/stages/``, ``tests/trainers/``, ...); test files import
shared helpers from here (``from conftest import ...``), never from another test file."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from thinksafe.config import load_config, to_dict
from thinksafe.families import get_family
from thinksafe.organism import resolve_model_path, world
from thinksafe.organism.tokenizer import BASE_CHAT_TEMPLATE, GUARD_CHAT_TEMPLATE, train_tokenizer, wrap
from thinksafe.trainers.examples import tokenize_rows

TESTS = Path(__file__).resolve().parent              # tests/ mirrors src/thinksafe/ (stages/, trainers/, ...)
ROOT = TESTS.parent                                   # the repository
SHARED_DATA = ROOT.parent / "shared" / "data"         # benchmark files, tokenizers, templates (never copied here)
QWEN3_DIR = SHARED_DATA / "tokenizers" / "qwen3"


def world_responses(seed: int = 0, split: str = "train", n: int = 100) -> list[tuple[str, str]]:
    """(prompt, response) pairs of every response type of the world."""
    out = []
    for p in world.sample_prompts(seed, split, n, n, n // 2):
        if p.kind == "reasoning":
            out.append((p.prompt, world.reasoning_response(p)))
        elif p.kind == "harmful":
            out.append((p.prompt, world.comply_response(p)))
            out.append((p.prompt, world.refuse_response(p)))
        else:
            out.append((p.prompt, world.borderline_response(p)))
    return out


def tokenizer_corpus() -> list[str]:
    texts = list(world.vocabulary_corpus())
    for prompt, response in world_responses():
        texts += [prompt, response]
    texts += [f" {i}" for i in range(100)] * 200
    texts += ["safe", "unsafe\nS1"] * 200
    return texts


@pytest.fixture(scope="session")
def raw_tokenizer():
    return train_tokenizer(tokenizer_corpus(), 1024)


@pytest.fixture(scope="session")
def organism_tokenizer(raw_tokenizer):
    """Do not mutate: shared by the whole session."""
    return wrap(copy.deepcopy(raw_tokenizer), BASE_CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def guard_tokenizer(raw_tokenizer):
    return wrap(copy.deepcopy(raw_tokenizer), GUARD_CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    """The real Qwen3 tokenizer (vocab + merges + config only). Do not mutate: deep-copy first."""
    if not QWEN3_DIR.is_dir():
        pytest.skip(f"Qwen3 tokenizer not present at {QWEN3_DIR}")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(QWEN3_DIR))


@pytest.fixture(scope="session")
def _tiny_organism_build(tmp_path_factory):
    from dataclasses import replace

    from thinksafe.organism.build import TINY, build
    out = tmp_path_factory.mktemp("organism")
    return out, build(out, replace(TINY, seed=3), log=lambda s: None)


@pytest.fixture()
def tiny_organism(_tiny_organism_build, monkeypatch):
    """An organism built from scratch at a tiny size (seconds, once per session); THINKSAFE_ORGANISM
    points at it for the duration of the test only."""
    monkeypatch.setenv("THINKSAFE_ORGANISM", str(_tiny_organism_build[0]))
    return _tiny_organism_build


# ---- shared fakes (from trainers/test_kl.py)


def tiny_qwen3(seed: int = 0, layers: int = 2, vocab: int = 61):
    from transformers import Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(Qwen3Config(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
        eos_token_id=1, pad_token_id=0, tie_word_embeddings=False)).float()


def peft_model(seed: int = 0, targets=("q_proj", "v_proj", "o_proj", "down_proj"), dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model
    model = tiny_qwen3(seed)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                            target_modules=list(targets), task_type="CAUSAL_LM"))


def perturb_adapter(model, scale: float = 0.3, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)




# ---- shared fakes (from stages/test_train_stage.py)


def sft_rows(n: int = 12, seed: int = 0) -> list[dict]:
    """Organism (prompt, response) rows labelled like sft.jsonl (harmful ones answered with refusals)."""
    from thinksafe.organism import world
    kinds: dict[str, list[dict]] = {}
    for p in world.sample_prompts(seed, "train", n, n, n // 2):
        if p.kind == "harmful":
            row = {"prompt": p.prompt, "response": world.refuse_response(p), "label": "harmful"}
        elif p.kind == "reasoning":
            row = {"prompt": p.prompt, "response": world.reasoning_response(p), "label": "benign"}
        else:
            row = {"prompt": p.prompt, "response": world.borderline_response(p), "label": "benign"}
        kinds.setdefault(p.kind, []).append(row)
    mixed = [r for group in zip(*kinds.values()) for r in group]     # harmful, reasoning, borderline, ...
    return mixed[:n]


def write_rows(run_dir, rows):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def organism_config(run_dir, *sets):
    from thinksafe.config import demo_config_path
    return load_config(demo_config_path(), [f"out={run_dir}", "train.epochs=1", "train.batch_size=4",
                                            "train.logging_steps=1", "train.warmup_ratio=0", *sets])




# ---- shared fakes (from trainers/test_packed_training.py)


def packing_examples(n: int = 6) -> tuple[object, list[dict]]:
    from thinksafe.backends.hf import load_tokenizer
    tok = load_tokenizer(resolve_model_path("organism"))
    tok.padding_side = "right"
    examples, _ = tokenize_rows(tok, sft_rows(n), get_family("organism"), 512)
    assert len({len(e["input_ids"]) for e in examples}) > 1          # padding happens in the padded batch
    return tok, [{k: e[k] for k in ("input_ids", "labels", "is_benign")} for e in examples]


def packing_model(method: str):
    """The tiny organism, LoRA (B perturbed so every adapter weight gets a gradient) or the full model
    (weights perturbed so student != reference)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("organism"), dtype=torch.float32)
    ref = None
    g = torch.Generator().manual_seed(7)
    if method.startswith("lora"):
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                 target_modules=["q_proj", "v_proj", "down_proj"],
                                                 task_type="CAUSAL_LM"))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    else:
        ref = copy.deepcopy(model).requires_grad_(False)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model.train(), ref




# ---- shared fakes (from stages/test_report.py)


def safety(rate, n=100, unparsed=0, truncated=0, trace=None, answer=None):
    m = {"kind": "safety", "harmful_rate": rate, "n": n, "ci95": [max(0, rate - .1), min(1, rate + .1)],
         "unparsed": unparsed, "truncated": truncated, "no_think_close": 0, "guard": "llama_guard:g"}
    if trace is not None:
        m["trace"] = {"harmful_rate": trace, "n": n, "ci95": [0, 1], "unparsed": 0, "truncated": truncated}
    if answer is not None:
        m["answer"] = {"harmful_rate": answer, "n": n, "ci95": [0, 1], "unparsed": 1, "truncated": truncated,
                       "no_answer": 2}
    return m


def xstest(rate, compliance=0.9):
    return {"kind": "overrefusal", "over_refusal_rate": rate, "n": 250, "ci95": [0, 1], "unparsed": 1,
            "truncated": 0, "refused": 2, "refusal_guard": "wildguard:allenai/wildguard",
            "unsafe": {"compliance_rate": compliance, "n": 200, "ci95": [0, 1], "unparsed": 0, "truncated": 0}}


def reasoning(p, truncated=3):
    return {"kind": "reasoning", "pass_at_1": p, "n_problems": 30, "samples": 8, "n": 240, "correct": 1,
            "ci95": [0, 1], "truncated": truncated, "no_think_close": 1, "reasons": {"ok": 1, "truncated": truncated}}


def make_run(root: Path, name: str, models: dict[str, dict], model_path="Qwen/Qwen3-4B") -> Path:
    run = root / name
    cfg = load_config(None, [f"out={run}", f"name={name}", f"model.path={model_path}", "model.family=qwen3"])
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    for tag, benchmarks in models.items():
        d = run / "eval" / tag
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(
            {"benchmarks": benchmarks, "model": {"path": model_path, "adapter": None, "tag": tag}}))
    return run


FULL = {"harmbench": safety(0.40, trace=0.5, answer=0.3), "strongreject": safety(0.10, unparsed=2),
        "wildjailbreak": safety(0.30, truncated=4), "xstest": xstest(0.04),
        "aime24": reasoning(0.70), "gsm8k": reasoning(0.90), "math500": reasoning(0.95),
        "gpqa_diamond": reasoning(0.50)}




# ---- shared fakes (from trainers/test_ddp.py)


DDP_CONFIG = """
model: {path: organism, family: organism}
train:
  lora: {r: 8, alpha: 16, dropout: 0.0, target_modules: [q_proj, v_proj]}
  lr: 0.01
  epochs: 2
  warmup_ratio: 0
  logging_steps: 1
  max_length: 512
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_YAML = ROOT / "src" / "thinksafe" / "configs" / "accelerate" / "ddp.yaml"


def launch(args: list[str], nproc: int, run_dir, launcher: str = "accelerate") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    head = [sys.executable, "-m", "thinksafe.cli"]
    if nproc > 1 and launcher == "torchrun":
        head = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "thinksafe.cli"]
    elif nproc > 1:     # the README's command; bf16 mixed precision is for GPUs
        head = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_YAML),
                "--num_processes", str(nproc), "--mixed_precision", "no", "--main_process_port", str(free_port()),
                "-m", "thinksafe.cli"]
    r = subprocess.run(head + args + ["--out", str(run_dir), "--quiet"], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def read_log(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]


def two_runs(tmp_path: Path, n: int = 16) -> tuple[Path, Path, Path]:
    """The DDP config and two run folders holding the same n training rows (1 process vs 2)."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(DDP_CONFIG)
    rows = sft_rows(n)
    one, two = tmp_path / "one", tmp_path / "two"
    write_rows(one, rows)
    write_rows(two, rows)
    return cfg, one, two


# ---- shared fakes (pipeline and compare runs)
SMALL_RUN = ["prompts.n_harmful=8", "prompts.n_reasoning=8", "prompts.n_borderline=4",
         "evaluate.n_harmful=6", "evaluate.n_reasoning=4", "evaluate.n_borderline=4",
         "generate.max_new_tokens=24", "evaluate.max_new_tokens=24", "train.epochs=1",
         "train.batch_size=4", "model.batch_size=8", "guard.batch_size=8"]


def fake_stages(monkeypatch, calls):
    """Every stage writes its first output and returns a summary; nothing is loaded."""
    from thinksafe import pipeline

    def fake(stage, cfg, run_dir, show):
        calls.append(stage.name)
        out = run_dir / stage.outputs[0].replace("*", "x")
        out.parent.mkdir(parents=True, exist_ok=True)
        if stage.name == "evaluate":
            (run_dir / "eval" / "base").mkdir(parents=True, exist_ok=True)
            (run_dir / "eval" / "thinksafe").mkdir(parents=True, exist_ok=True)
            return {"base": {}, "thinksafe": {}}
        out.write_text(f"{stage.name} {len(calls)}\n")
        return {"n": len(calls)}
    monkeypatch.setattr(pipeline, "_call", fake)
    monkeypatch.setattr("thinksafe.compute.for_run", lambda *a, **k: {"flops": 0.0})


COMPARE_TINY = ["prompts.n_harmful=4", "prompts.n_reasoning=3", "prompts.n_borderline=2",
        "evaluate.n_harmful=3", "evaluate.n_reasoning=2", "evaluate.n_borderline=2",
        "generate.max_new_tokens=96", "evaluate.max_new_tokens=16", "train.epochs=1",
        "train.batch_size=4", "model.batch_size=8", "guard.batch_size=8",
        "compare.no_steering_samples=2", "grpo.num_generations=2", "grpo.batch_size=4",
        "grpo.grad_accum=1", "grpo.epochs=1", "grpo.max_steps=2", "grpo.check_every=1"]


def compare_config(out, extra=()):
    from pathlib import Path

    import thinksafe
    path = Path(thinksafe.__file__).parent / "configs" / "compare-organism.yaml"
    return load_config(path, COMPARE_TINY + [f"out={out}", *extra])
