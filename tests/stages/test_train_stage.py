"""The train stage on the bundled organism: truncation drop/cut, LoRA layer range -> PEFT, full
fine-tuning, ThinkSafe+KL end to end, metrics files, report_to, and `thinksafe merge`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import organism_config, sft_rows, world_responses, write_rows

from thinksafe.config import load_config
from thinksafe.errors import ConfigError, MissingDependency
from thinksafe.families import get_family
from thinksafe.organism import resolve_model_path
from thinksafe.stages import train
from thinksafe.trainers.examples import tokenize_example, tokenize_rows, tokenize_rows_stats
from thinksafe.trainers.setup import layer_range, lora_config


@pytest.fixture(scope="module")
def organism_tok():
    from thinksafe.backends.hf import load_tokenizer
    return load_tokenizer(resolve_model_path("organism"))


# --------------------------------------------------------------------------- truncation
def test_truncation_drop_and_cut_are_counted(organism_tokenizer):
    tok, fam = organism_tokenizer, get_family("organism")
    rows = [{"prompt": p, "response": r, "label": "benign"} for p, r in world_responses(seed=1, n=6)]
    full = [tokenize_example(tok, r["prompt"], r["response"], fam) for r in rows]
    lengths = [len(e["input_ids"]) for e in full]
    limit = sorted(lengths)[len(lengths) // 2]
    over = [n > limit for n in lengths]
    kept, stats = tokenize_rows_stats(tok, rows, fam, limit, "drop")
    assert stats == {"truncation": "drop", "dropped_too_long": sum(over), "cut_too_long": 0, "cut_tokens": 0,
                     "dropped_untokenizable": 0}
    assert len(kept) == len(rows) - sum(over)
    assert tokenize_rows(tok, rows, fam, limit) == (kept, sum(over))          # the old interface
    cut, stats = tokenize_rows_stats(tok, rows, fam, limit, "cut")
    assert stats["dropped_too_long"] == 0 and stats["cut_too_long"] == sum(over)
    assert stats["cut_tokens"] == sum(n - limit for n in lengths if n > limit)
    assert len(cut) == len(rows)
    for e, f, n in zip(cut, full, lengths):
        assert len(e["input_ids"]) == min(n, limit)
        assert e["input_ids"] == f["input_ids"][:limit] and e["labels"] == f["labels"][:limit]
    # a prompt that alone fills max_length leaves nothing to learn: dropped even with cut
    n_prompt = full[0]["labels"].index(next(x for x in full[0]["labels"] if x != -100))
    _, stats = tokenize_rows_stats(tok, rows[:1], fam, n_prompt, "cut")
    assert stats["dropped_too_long"] == 1 and stats["cut_too_long"] == 0
    with pytest.raises(ConfigError):
        tokenize_rows_stats(tok, rows, fam, limit, "truncate")


# --------------------------------------------------------------------------- LoRA settings
def test_layer_range_maps_to_peft():
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    cfg = load_config(None, ["train.lora.layers=[1, 3]", "train.lora.r=4", "train.lora.alpha=8",
                             "train.lora.dropout=0.1", "train.lora.target_modules=[q_proj, down_proj]"])
    lc = lora_config(cfg.train.lora)
    assert lc.layers_to_transform == [1, 2] and lc.r == 4 and lc.lora_alpha == 8 and lc.lora_dropout == 0.1
    assert set(lc.target_modules) == {"q_proj", "down_proj"}
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("organism"))
    peft = get_peft_model(model, lora_config(cfg.train.lora, model))
    adapted = {n.split(".lora_A")[0] for n, _ in peft.named_parameters() if "lora_A" in n}
    layers = {int(n.split(".layers.")[1].split(".")[0]) for n in adapted}
    assert layers == {1, 2}
    assert {n.rsplit(".", 1)[-1] for n in adapted} == {"q_proj", "down_proj"}
    # all-linear + a layer range: expanded to the linear module names, lm_head excluded
    cfg = load_config(None, ["train.lora.layers=[3, 4]", "train.lora.target_modules=all-linear"])
    lc = lora_config(cfg.train.lora, AutoModelForCausalLM.from_pretrained(resolve_model_path("organism")))
    assert set(lc.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert lc.layers_to_transform == [3]
    assert lora_config(load_config(None, ["train.lora.target_modules=all-linear"]).train.lora).target_modules \
        == "all-linear"
    for bad in ("[2, 1]", "[1]", "[a, b]", "3"):                # wrong on any model: when the config loads
        with pytest.raises(ConfigError, match="train.lora.layers"):
            load_config(None, [f"train.lora.layers={bad}"])
    c = load_config(None, ["train.lora.layers=[0, 5]"]).train.lora
    with pytest.raises(ConfigError, match="end <= 4"):                   # wrong on this model
        layer_range(c, 4)


def test_bad_settings_fail_before_training(tmp_path):
    write_rows(tmp_path, sft_rows(4))
    for key, value in (("objective", "dpo"), ("method", "qlora"), ("truncation", "left"), ("report_to", "mlflow"),
                       ("ce_chunk_size", "0"), ("kl_chunk_size", "0")):
        with pytest.raises(ConfigError, match=f"train.{key}"):     # when the config loads, or at the latest here
            train.run(organism_config(tmp_path, f"train.{key}={value}"), tmp_path, show=False)


@pytest.mark.parametrize("name", ["wandb", "tensorboard"])
def test_report_to_missing_dependency(name, tmp_path):
    import importlib.util
    mods = ["wandb"] if name == "wandb" else ["tensorboard", "tensorboardX"]
    if any(importlib.util.find_spec(m) for m in mods):
        pytest.skip(f"{name} is installed")
    write_rows(tmp_path, sft_rows(4))
    with pytest.raises(MissingDependency, match=f"pip install {mods[0]}"):
        train.run(organism_config(tmp_path, f"train.report_to={name}"), tmp_path, show=False)


# --------------------------------------------------------------------------- end to end on the organism
@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lora_run")
    write_rows(run_dir, sft_rows(12))
    cfg = organism_config(run_dir, "train.lr=0.05", "train.truncation=cut", "train.max_length=60")
    summary = train.run(cfg, run_dir, show=False)
    return run_dir, summary


def test_lora_run_outputs(lora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    run_dir, s = lora_run
    assert s["method"] == "lora" and s["objective"] == "sft" and s["truncation"] == "cut"
    assert s["cut_too_long"] > 0 and s["examples"] + s["dropped_too_long"] == 12
    assert s["steps"] == 3 and s["world_size"] == 1 and s["tokens_per_second"] > 0
    assert s["packing"] is True and s["packed_rows"] == 3          # the default: one packed row per micro-batch
    assert json.loads((run_dir / "train_summary.json").read_text()) == s
    log = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all("loss" in h and "train_tokens_per_second" in h for h in log)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("organism"))
    model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    assert any(torch.count_nonzero(p) for n, p in model.named_parameters() if "lora_B" in n)


def test_kl_objective_end_to_end(tmp_path):
    write_rows(tmp_path, sft_rows(12))
    cfg = organism_config(tmp_path, "train.objective=kl", "train.lr=0.05", "train.kl_chunk_size=16",
                          "train.epochs=2", "train.gradient_checkpointing=false")
    s = train.run(cfg, tmp_path, show=False)
    assert s["objective"] == "kl" and 0 < s["benign_examples"] < s["examples"]
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == s["steps"] == 6 and all("loss" in h for h in log)
    # ce / kl are logged for the steps that hold rows of that kind (a step can be all benign)
    assert any("ce" in h for h in log) and any("kl" in h for h in log)
    assert log[0].get("kl", 0.0) == pytest.approx(0.0, abs=1e-6)   # adapter at init: student == base
    assert max(h.get("kl", 0.0) for h in log) > 1e-6
    assert s["final_kl"] == [h["kl"] for h in log if "kl" in h][-1]
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_kl_objective_needs_labels(tmp_path):
    from thinksafe.errors import DataError
    write_rows(tmp_path, [{k: v for k, v in r.items() if k != "label"} for r in sft_rows(4)])
    with pytest.raises(DataError, match="label"):
        train.run(organism_config(tmp_path, "train.objective=kl"), tmp_path, show=False)


def test_full_finetuning_with_kl_saves_a_loadable_model(tmp_path, organism_tok):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    write_rows(tmp_path, sft_rows(8))
    cfg = organism_config(tmp_path, "train.method=full", "train.objective=kl", "train.lr=1e-3")
    s = train.run(cfg, tmp_path, show=False)
    out = tmp_path / "model"
    assert s["output"] == "model" and not (tmp_path / "adapter").exists()
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert s["packing"] is True and "thinksafe_varlen" not in (out / "config.json").read_text()
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("organism"))
    assert s["trainable_params"] == sum(p.numel() for p in base.parameters())
    tuned = AutoModelForCausalLM.from_pretrained(str(out))
    assert type(tuned) is type(base)
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.chat_template and tok.eos_token == organism_tok.eos_token
    weights = load_file(out / "model.safetensors")
    ref = base.state_dict()
    assert any(not torch.equal(weights[k], ref[k]) for k in weights)
    ids = organism_tok("Kim has 3 books.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert not torch.allclose(tuned(ids).logits, base(ids).logits)


# --------------------------------------------------------------------------- merge
def test_merge_matches_base_plus_adapter(lora_run, tmp_path, organism_tok):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thinksafe.stages.merge import merge
    run_dir, _ = lora_run
    s = merge(run_dir, tmp_path / "merged")
    out = tmp_path / "merged"
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert s["base"] == resolve_model_path("organism")
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("organism"))
    plain = AutoModelForCausalLM.from_pretrained(resolve_model_path("organism"))
    with_adapter = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    texts = ["Kim has 16 books. Then Kim loses 1. How many books does Kim have now?", "How do I kill a process?",
             "<think>\nStart with 3."]
    for text in texts:
        ids = organism_tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            a, b, c = merged(ids).logits, with_adapter(ids).logits, plain(ids).logits
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-5)     # float32 rounding of W + s·BA only
        assert (a - c).abs().max() > 0.1                      # the adapter does change the model
    assert AutoTokenizer.from_pretrained(str(out)).chat_template
    with pytest.raises(ConfigError, match="not empty"):
        merge(run_dir, out)


def test_merge_cli(lora_run, tmp_path):
    run_dir, _ = lora_run
    out = tmp_path / "m"
    r = subprocess.run([sys.executable, "-m", "thinksafe.cli", "merge", str(run_dir / "adapter"), "--to", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (out / "model.safetensors").is_file() and (out / "merge_info.json").is_file()
    r = subprocess.run([sys.executable, "-m", "thinksafe.cli", "merge", str(tmp_path / "nothing"), "--to",
                        str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no LoRA adapter" in r.stderr


def test_models_load_without_hub_kernels():
    """transformers enables Hub kernels by default (code downloaded when the model enters train mode; offline
    on a GPU it fails the first model.train()): every model thinksafe loads goes through one loader without."""
    from transformers import AutoModelForCausalLM

    from thinksafe.backends.hf import causal_lm, load_model
    path = resolve_model_path("organism")
    assert AutoModelForCausalLM.from_pretrained(path).use_kernels in (True, False)   # the attribute we read exists
    assert causal_lm(path, torch.float32).use_kernels is False
    assert load_model(path, dtype="float32", device="cpu").use_kernels is False
    import inspect

    from thinksafe.stages import grpo, merge
    for mod in (train, grpo, merge):
        assert "AutoModelForCausalLM.from_pretrained(" not in inspect.getsource(mod), mod.__name__
