"""The packaged OPSA configs for real models: they load, say what they train, mirror configs/, and
pass `thinksafe check` offline with nothing cached reporting only the missing assets."""

from __future__ import annotations


import pytest
from typer.testing import CliRunner

from thinksafe.cli import app
from thinksafe.config import demo_config_path, load_config
from conftest import ROOT

NAMES = ["opsa-qwen3-0.6b", "opsa-qwen3-4b", "opsa-r1-distill-qwen-1.5b"]
REPO = ROOT


@pytest.mark.parametrize("name", NAMES)
def test_opsa_config_is_opsa_full_fine_tuning(name):
    cfg = load_config(demo_config_path().parent / f"{name}.yaml")
    assert cfg.train.objective == "opsa" and cfg.train.method == "full"
    assert cfg.opsa.context == "opsa" and cfg.opsa.divergence == "mixed" and cfg.opsa.benign_context == "helpful"
    assert cfg.train.lr == 1e-5 and cfg.train.epochs == 3 and cfg.train.batch_size * cfg.train.grad_accum == 64
    thinksafe = load_config(demo_config_path().parent / f"{name.removeprefix('opsa-')}.yaml")
    assert (cfg.model, cfg.guard, cfg.evaluate) == (thinksafe.model, thinksafe.guard, thinksafe.evaluate)
    assert (REPO / "configs" / f"{name}.yaml").read_text() == (demo_config_path().parent / f"{name}.yaml").read_text()


@pytest.mark.parametrize("name", NAMES)
def test_opsa_config_passes_preflight_but_for_missing_assets(name, monkeypatch, tmp_path):
    import huggingface_hub.constants as C
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-datasets"))
    r = CliRunner().invoke(app, ["check", name, "--out", str(tmp_path / "q")])      # by packaged name
    assert r.exit_code == 2, r.output
    problems = [ln.split(":")[1].strip() for ln in r.output.splitlines() if ln.startswith("problem:")]
    assert "model.path" in problems
    assert set(problems) <= {"model.path", "guard.path", "evaluate.refusal_guard_path", "prompts.source"}, r.output
    assert not [ln for ln in r.output.splitlines() if ln.startswith("error:")]
