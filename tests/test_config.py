"""load_config: YAML + --set overrides, nested keys, did-you-mean and type errors, packaged demo."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

import thinksafe
from thinksafe.config import RunConfig, load_config, section_hash
from thinksafe.errors import ConfigError

DEMO = Path(thinksafe.__file__).parent / "configs" / "demo.yaml"


def _yaml(tmp_path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_defaults_without_file():
    cfg = load_config(None)
    assert cfg == RunConfig()
    assert cfg.train.lora.r == 32
    assert cfg.generate.steering == "prefix"


def test_yaml_overrides_defaults(tmp_path):
    p = _yaml(tmp_path, "name: x\nseed: 3\ntrain:\n  lr: 0.5\n  lora:\n    r: 4\n")
    cfg = load_config(p)
    assert cfg.name == "x" and cfg.seed == 3
    assert cfg.train.lr == 0.5
    assert cfg.train.lora.r == 4
    assert cfg.train.lora.alpha == 16           # untouched sibling keeps its default
    assert cfg.train.epochs == 3                # untouched section key keeps its default
    assert cfg.model == RunConfig().model       # untouched section keeps its defaults


def test_set_overrides_yaml(tmp_path):
    p = _yaml(tmp_path, "seed: 3\ntrain:\n  lr: 0.5\n  lora:\n    r: 4\n    alpha: 7\n")
    cfg = load_config(p, ["seed=9", "train.lora.r=8", "generate.steering=suffix"])
    assert cfg.seed == 9
    assert cfg.train.lora.r == 8
    assert cfg.train.lora.alpha == 7            # from YAML, not overridden
    assert cfg.train.lr == 0.5
    assert cfg.generate.steering == "suffix"


def test_later_set_wins():
    cfg = load_config(None, ["seed=1", "seed=2"])
    assert cfg.seed == 2


def test_nested_set_without_file():
    cfg = load_config(None, ["train.lora.r=8", "train.lora.target_modules=[q_proj, k_proj]"])
    assert cfg.train.lora.r == 8
    assert cfg.train.lora.target_modules == ["q_proj", "k_proj"]
    assert isinstance(cfg.train.lora.r, int)


def test_set_value_with_equals_sign():
    cfg = load_config(None, ["generate.steering=A=B {prompt}"])
    assert cfg.generate.steering == "A=B {prompt}"


def test_float_coercion():
    cfg = load_config(None, ["train.lr=1e-5", "train.epochs=2", "generate.temperature=0.7"])
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 2.0 and isinstance(cfg.train.epochs, float)
    assert cfg.generate.temperature == 0.7


def test_yaml_float_without_dot(tmp_path):
    # PyYAML reads "1e-5" as a string; it must still become a float
    cfg = load_config(_yaml(tmp_path, "train:\n  lr: 1e-5\n"))
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)


def test_optional_fields_accept_null():
    cfg = load_config(None, ["generate.temperature=null", "generate.top_k=null"])
    assert cfg.generate.temperature is None and cfg.generate.top_k is None


@pytest.mark.parametrize("override, wrong, guess", [
    ("train.epoch=2", "train.epoch", "epochs"),
    ("modle.path=x", "modle", "model"),
    ("train.lora.rr=8", "train.lora.rr", "r"),
    ("generate.temprature=0.5", "generate.temprature", "temperature"),
])
def test_unknown_key_did_you_mean(override, wrong, guess):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert wrong in msg
    assert f"Did you mean '{guess}'?" in msg


def test_unknown_key_in_yaml(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'batch_size'"):
        load_config(_yaml(tmp_path, "model:\n  batch_sise: 4\n"))


def test_unknown_key_without_close_match():
    with pytest.raises(ConfigError, match="is unknown") as e:
        load_config(None, ["zzzzzz=1"])
    assert "Did you mean" not in str(e.value)


@pytest.mark.parametrize("override", [
    "seed=abc", "seed=1.5", "seed=true", "train.lora.r=eight", "generate.temperature=hot",
    "generate.top_k=0.5", "model=foo", "train=3",
])
def test_wrong_type(override):
    with pytest.raises(ConfigError):
        load_config(None, [override])


def test_wrong_type_in_yaml(tmp_path):
    with pytest.raises(ConfigError, match="train.batch_size must be int"):
        load_config(_yaml(tmp_path, "train:\n  batch_size: many\n"))


def test_set_into_a_scalar_is_an_error(tmp_path):
    with pytest.raises(ConfigError):
        load_config(_yaml(tmp_path, "seed: 3\n"), ["seed.x=1"])


def test_set_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["seed"])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_yaml(tmp_path, "train: [unclosed\n"))


def test_top_level_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError):
        load_config(_yaml(tmp_path, "- a\n- b\n"))


def test_empty_yaml_is_defaults(tmp_path):
    assert load_config(_yaml(tmp_path, "")) == RunConfig()


def test_packaged_demo_config_loads():
    assert DEMO.is_file()
    cfg = load_config(DEMO)
    assert cfg.name == "demo"
    assert cfg.model.path == "organism" and cfg.model.family == "organism"
    assert cfg.guard.path == "organism-guard" and cfg.guard.max_input_tokens == 512
    assert cfg.generate.steering == "prefix"
    assert cfg.generate.max_new_tokens == 128
    assert cfg.train.lr == pytest.approx(2e-3) and isinstance(cfg.train.lr, float)
    assert cfg.train.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.evaluate.benchmarks == ["organism"]
    assert cfg.prompts.n_harmful > 0 and cfg.evaluate.n_harmful > 0
    over = load_config(DEMO, ["train.lr=0.01", "evaluate.n_harmful=5"])
    assert over.train.lr == 0.01 and over.evaluate.n_harmful == 5
    assert over.train.epochs == cfg.train.epochs


def test_section_hash_tracks_changes():
    a = load_config(None)
    b = load_config(None, ["train.lora.r=8"])
    assert section_hash(a.train) == section_hash(load_config(None).train)
    assert section_hash(a.train) != section_hash(b.train)
    assert section_hash(a.generate) == section_hash(b.generate)


@pytest.mark.parametrize("override", ["seed=null", "train.lora.r=null", "model.path=null"])
def test_null_for_a_non_optional_field(override):
    with pytest.raises(ConfigError):
        load_config(None, [override])


def test_list_field_given_a_string():
    try:
        cfg = load_config(None, ["train.lora.target_modules=q_proj"])
    except ConfigError:
        return
    assert isinstance(cfg.train.lora.target_modules, list)


@pytest.mark.parametrize("override", ["seed=1", "train.lr=0.1"])
def test_top_level_not_a_mapping_with_set(tmp_path, override):
    with pytest.raises(ConfigError):
        load_config(_yaml(tmp_path, "- a\n- b\n"), [override])


@pytest.mark.parametrize("name", ["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "r1-distill-qwen-1.5b",
                                  "r1-distill-qwen-7b", "r1-distill-llama-8b"])
def test_model_configs_reproduce_the_paper_settings(name):
    from thinksafe.families import get_family
    cfg = load_config(DEMO.parent / f"{name}.yaml")
    fam = get_family(cfg.model.family)
    assert (fam.temperature, fam.top_p) == (0.6, 0.95)
    assert fam.top_k == (20 if name.startswith("qwen3") else 0)
    assert cfg.generate.max_new_tokens == 16384 and cfg.generate.samples == 1
    assert cfg.generate.steering == "prefix"
    lora = cfg.train.lora
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (32, 16, 0.05, ["q_proj", "v_proj"])
    assert cfg.train.lr == 1e-5 and cfg.train.epochs == 3
    assert cfg.train.batch_size * cfg.train.grad_accum == 8
    assert cfg.guard.path == "meta-llama/Llama-Guard-3-8B"


# ----------------------------------------------------------------------------- one validation pass
def _dotted_fields(cls=None, prefix="") -> set[str]:
    import dataclasses

    from thinksafe.config import RunConfig
    out = set()
    for f in dataclasses.fields(cls or RunConfig):
        typ = typing.get_type_hints(cls or RunConfig)[f.name]
        if dataclasses.is_dataclass(typ):
            out |= _dotted_fields(typ, f"{prefix}{f.name}.")
        else:
            out.add(prefix + f.name)
    return out


def test_every_validation_key_names_a_real_field():
    from thinksafe import validation as V
    fields_ = _dotted_fields()
    keys = [*V.RANGES, *V.CHOICES, *(k for keys, _ in V.RULES for k in keys)]
    assert len(keys) > 80
    assert not [k for k in keys if k not in fields_]


def test_a_misspelt_validation_key_is_an_error(monkeypatch):
    from thinksafe import validation as V
    monkeypatch.setitem(V.RANGES, "train.lerning_rate", V.RANGES["train.lr"])
    with pytest.raises(ConfigError, match="'train.lerning_rate', which is no config field"):
        load_config(None)


@pytest.mark.parametrize("override, needle", [
    ("train.method=lorra", "train.method must be one of lora, full, got 'lorra'. Did you mean 'lora'?"),
    ("train.objective=dpo", "train.objective must be one of sft, kl, opsa, got 'dpo'"),
    ("train.truncation=left", "train.truncation must be one of drop, cut, got 'left'"),
    ("train.report_to=mlflow", "train.report_to must be one of none, wandb, tensorboard, got 'mlflow'"),
    ("train.lm_head_loss=fast", "train.lm_head_loss must be one of auto, torch, liger, cce, got 'fast'"),
    ("train.kl_chunk_size=0", "train.kl_chunk_size must be >= 1 (or null = by memory), got 0"),
    ("train.micro_batch_tokens=0", "train.micro_batch_tokens must be >= 1 (or null = off), got 0"),
    ("train.save_steps=-1", "train.save_steps must be >= 0 (0 = once per epoch), got -1"),
    ("train.lora.layers=[2, 1]", "train.lora.layers: need 0 <= start < end, got [2, 1]"),
    ("train.lora.layers=3", "train.lora.layers must be [start, end] (two integers, end excluded)"),
    ("grpo.num_generations=1", "grpo.num_generations must be >= 2 (advantages are relative to the group)"),
    ("grpo.num_generations=5", "(8 x 8 x 1) must be a multiple of grpo.num_generations (5)"),
    ("grpo.stop_at_harmful=0.1", "grpo.stop_at_harmful needs grpo.check_every > 0"),
    ("grpo.validation=nowhere.jsonl", "grpo.validation must be auto, organism, heldout or a prompt file"),
    ("grpo.vllm_mode=remote", "grpo.vllm_mode must be one of colocate, server"),
])
def test_training_rules_are_checked_when_the_config_loads(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value)


def test_layers_are_checked_only_for_lora():
    assert load_config(None, ["train.method=full", "train.lora.layers=[2, 1]"]).train.method == "full"


def test_every_broken_rule_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.lr=0", "train.method=lorra", "grpo.stop_at_harmful=0.5"])
    assert [p.split(" ", 1)[0] for p in e.value.problems] == ["train.lr", "train.method", "grpo.stop_at_harmful"]


def test_a_section_on_its_own_meets_the_same_rules():
    import dataclasses

    from thinksafe.validation import check_section
    tc = dataclasses.replace(load_config(None).train, truncation="left")
    with pytest.raises(ConfigError, match="train.truncation must be one of drop, cut"):
        check_section("train", tc)
