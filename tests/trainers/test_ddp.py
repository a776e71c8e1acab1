"""The train stage under real DDP: 2 processes on CPU (gloo), launched by `accelerate launch` with the
shipped ddp.yaml (the README's command) or by torchrun, with `python -m thinksafe.cli train` as the
target, against 1 process with the same effective batch; packed rows (the default) and padded batches."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DDP_YAML, launch, read_log, two_runs



@pytest.mark.parametrize("objective, launcher, packing", [("kl", "accelerate", True), ("sft", "torchrun", True),
                                                       ("kl", "torchrun", False)])
def test_ddp_two_processes_match_one(tmp_path, objective, launcher, packing):
    from safetensors.torch import load_file
    cfg, one, two = two_runs(tmp_path)
    common = ["train", str(cfg), "--set", f"train.objective={objective}"]
    if not packing:                                     # packing is the default
        common += ["--set", "train.packing=false"]
    # effective batch 8: 1 process x 8 rows  vs  2 processes x 2 rows x 2 accumulation steps
    launch(common + ["--set", "train.batch_size=8"], 1, one)
    r = launch(common + ["--set", "train.batch_size=2", "--set", "train.grad_accum=2"], 2, two, launcher)

    a, b = read_log(one), read_log(two)
    assert len(a) == len(b) == 4                       # 16 rows / 8 per step x 2 epochs
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4, abs=1e-7)
        for key in ("ce", "kl"):
            assert (key in x) == (key in y)
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-3, abs=1e-7)
    assert len({round(h["loss"], 6) for h in a}) > 1   # the model trained: later steps differ
    if objective == "kl":
        assert any("kl" in h for h in a) and any("ce" in h for h in a)

    s1 = json.loads((one / "train_summary.json").read_text())
    s2 = json.loads((two / "train_summary.json").read_text())
    assert s1["world_size"] == 1 and s2["world_size"] == 2
    assert s2["steps"] == s1["steps"] == 4 and s2["input_tokens_seen"] == s1["input_tokens_seen"]
    assert s1["packing"] is s2["packing"] is packing
    if packing:     # one packed row per micro-batch, counted over both processes: 4 x 1 vs 4 steps x 2 x 2
        assert (s1["packed_rows"], s2["packed_rows"]) == (4, 16)
        assert s1["real_tokens_per_row"] * 4 == pytest.approx(s1["input_tokens_seen"], abs=0.5)
    # only the main process writes: one announcement, from rank 0, and no stray temp files
    out = r.stdout + r.stderr
    assert out.count("wrote ") == 1 and "[train] rank 0 of 2 wrote" in out
    assert not list(two.glob("**/*.tmp"))
    w1 = load_file(one / "adapter" / "adapter_model.safetensors")
    w2 = load_file(two / "adapter" / "adapter_model.safetensors")
    assert w1.keys() == w2.keys()
    assert any(torch.count_nonzero(w1[k]) for k in w1 if "lora_B" in k)
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=5e-5, rtol=1e-3), k   # gloo all-reduce order
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from thinksafe.organism import resolve_model_path
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve_model_path("organism")),
                              str(two / "adapter"))


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType
    expected = {"ddp": DistributedType.MULTI_GPU, "fsdp": DistributedType.FSDP,
                "deepspeed_zero3": DistributedType.DEEPSPEED}
    for name, kind in expected.items():
        c = load_config_from_file(str(DDP_YAML.with_name(f"{name}.yaml")))
        assert c.distributed_type == kind and c.num_processes == 2 and c.mixed_precision == "bf16"
    assert load_config_from_file(str(DDP_YAML.with_name("fsdp.yaml"))).fsdp_config["fsdp_version"] == 2
    ds = load_config_from_file(str(DDP_YAML.with_name("deepspeed_zero3.yaml"))).deepspeed_config
    assert ds["zero_stage"] == 3 and "gradient_accumulation_steps" not in ds   # "auto": from train.grad_accum
