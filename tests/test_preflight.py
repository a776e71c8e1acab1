"""Preflight: each late mistake fails before anything runs or is written, one line naming its key;
a failed command leaves an existing run folder byte-identical; `thinksafe check`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from thinksafe.cli import app
from thinksafe.config import demo_config_path
from thinksafe.config import load_config, to_dict
from thinksafe.organism import organism_dir
from thinksafe.preflight import PreflightError, preflight, require
from thinksafe.preflight.models import module_names
from thinksafe.trainers.setup import unmatched_targets


runner = CliRunner()


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _errors(result) -> list[str]:
    return [ln for ln in result.output.splitlines() if ln.startswith("error:")]


@pytest.fixture
def demo_cfg(tmp_path, monkeypatch):
    """The packaged demo config, written out, with its run folder under tmp_path."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = yaml.safe_load(demo_config_path().read_text())
    data["out"] = str(tmp_path / "run")
    p = tmp_path / "demo.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


# The late mistakes of issue 19, each with the key its one line must name.
LATE = [
    (["guard.path=/no/such"], "guard.path", "not found"),
    (["evaluate.benchmarks=[organism,xstest]", "evaluate.refusal_guard_path=/no/such"],
     "evaluate.refusal_guard_path", "not found"),
    (["guard.kind=wildgaurd"], "guard.kind", "Did you mean 'wildguard'"),
    (["evaluate.benchmarks=[organism,gsm8k8]"], "evaluate.benchmarks", "Did you mean 'gsm8k'"),
    (["evaluate.benchmarks=[organism,gsm8k]", "evaluate.data_dir=/no/such/data"], "evaluate.data_dir",
     "does not exist"),
    (["train.lora.target_modules=[q_proj,vproj]"], "train.lora.target_modules", "'vproj' matches no module"),
    (["evaluate.benchmarks=[organism,xstest]", "evaluate.refusal_guard_kind=llama_guard",
      "evaluate.refusal_guard_path=organism-guard"], "evaluate.refusal_guard_kind", "no refusal verdict"),
]


@pytest.mark.parametrize("sets,key,needle", LATE, ids=[x[1] + ":" + x[0][-1] for x in LATE])
def test_each_late_mistake_fails_before_anything_is_written(demo_cfg, tmp_path, sets, key, needle):
    args = ["run", demo_cfg]
    for s in sets:
        args += ["--set", s]
    r = _cli(*args)
    assert r.exit_code == 2, r.output
    errors = _errors(r)
    assert len(errors) == 1, r.output
    assert errors[0].startswith(f"error: {key}: ") and needle in errors[0], errors[0]
    assert "Traceback" not in r.output
    assert not (tmp_path / "run").exists()          # nothing written, not even the folder


@pytest.mark.parametrize("command", ["judge", "train", "run", "check"])
def test_a_config_mistake_is_the_same_error_for_every_command(demo_cfg, tmp_path, command):
    """Checked once, when the config loads: judge (which reads no train.*) refuses it like train."""
    r = _cli(command, demo_cfg, "--set", "train.method=lorra", "--set", "grpo.stop_at_harmful=0.2")
    assert r.exit_code == 2, r.output
    assert _errors(r) == ["error: train.method must be one of lora, full, got 'lorra'. Did you mean 'lora'?",
                          "error: grpo.stop_at_harmful needs grpo.check_every > 0"], r.output
    assert not (tmp_path / "run").exists()


def test_missing_data_dir_of_a_pip_installed_user(demo_cfg, tmp_path, monkeypatch):
    """No evaluate.data_dir and no shared/ (THINKSAFE_DATA points nowhere): the files would be
    fetched, but offline with an empty cache they cannot be; the key is named before generate runs."""
    monkeypatch.setenv("THINKSAFE_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    r = _cli("run", demo_cfg, "--set", "evaluate.benchmarks=[organism,gsm8k]")
    assert r.exit_code == 2
    assert any(e.startswith("error: evaluate.data_dir: benchmark gsm8k: not in the cache")
               for e in _errors(r)), r.output
    assert not (tmp_path / "run").exists()


def test_every_problem_is_reported_at_once(demo_cfg):
    cfg = load_config(demo_cfg, ["guard.path=/no/such", "train.lora.target_modules=[q_proj,vproj]",
                                 "evaluate.benchmarks=[gsm8k8]"])
    with pytest.raises(PreflightError) as e:
        require(cfg, ["generate", "judge", "dataset", "train", "evaluate", "report"])
    keys = [p.split(":", 1)[0] for p in e.value.problems]
    assert keys == ["evaluate.benchmarks", "guard.path", "train.lora.target_modules"]


def test_a_stage_is_checked_only_for_what_it_needs(demo_cfg):
    cfg = load_config(demo_cfg, ["train.lora.target_modules=[q_proj,vproj]", "evaluate.refusal_guard_path=/no/such"])
    assert preflight(cfg, ["judge"]).ok              # judge reads neither train nor evaluate
    assert not preflight(cfg, ["train"]).ok
    bad_guard = load_config(demo_cfg, ["guard.path=/no/such"])
    assert preflight(bad_guard, ["train"]).ok
    assert [p.split(":")[0] for p in preflight(bad_guard, ["judge"]).problems] == ["guard.path"]


def test_hub_ids_offline_need_the_local_cache(demo_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as C
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    cfg = load_config(demo_cfg, ["model.path=Qwen/Qwen3-0.6b", "guard.path=not a repo id!"])
    problems = preflight(cfg, ["generate", "judge"]).problems
    assert problems[0].startswith("model.path: Qwen/Qwen3-0.6b is not in the local Hugging Face cache "
                                  "and HF_HUB_OFFLINE=1")
    assert problems[1].startswith("guard.path: 'not a repo id!' is neither a local folder nor")


def test_hub_errors_online_are_one_line(demo_cfg, monkeypatch):
    """Online (no network in tests): gated, unknown and unreachable repos, each one line."""
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import httpx

    def resp(code):
        return httpx.Response(code, request=httpx.Request("GET", "https://huggingface.co/api/x"))
    raised = {"meta-llama/Llama-Guard-3-8B": GatedRepoError("403 gated", response=resp(403)),
              "Qwen/Qwen3-0.6b": RepositoryNotFoundError("404", response=resp(404)),
              "allenai/wildguard": ConnectionError("Name or service not known\n" + "x\n" * 300)}

    def auth_check(self, repo_id, repo_type=None, **kw):
        raise raised[repo_id]
    monkeypatch.setattr(huggingface_hub.HfApi, "auth_check", auth_check)
    monkeypatch.setattr("thinksafe.preflight.models.hub_cached", lambda *a, **k: None)
    cfg = load_config(demo_cfg, ["model.path=Qwen/Qwen3-0.6b", "guard.path=meta-llama/Llama-Guard-3-8B",
                                 "evaluate.benchmarks=[organism,xstest]",
                                 "evaluate.refusal_guard_path=allenai/wildguard"])
    problems = preflight(cfg, ["generate", "judge", "evaluate"]).problems
    assert all("\n" not in p for p in problems)
    text = " | ".join(problems)
    assert "model.path: Qwen/Qwen3-0.6b was not found on the Hub (ids are case-sensitive" in text
    assert "guard.path: meta-llama/Llama-Guard-3-8B is gated: accept its licence at " \
           "https://huggingface.co/meta-llama/Llama-Guard-3-8B, then `hf auth login`" in text
    assert "evaluate.refusal_guard_path: the Hub cannot be reached for allenai/wildguard" in text


def test_lora_targets_are_read_from_the_weight_headers():
    names = module_names(organism_dir() / "base")
    assert "model.layers.0.self_attn.q_proj" in names
    assert unmatched_targets(names, ["q_proj", "vproj"]) == ["vproj"]
    assert unmatched_targets(names, ["q_proj", "v_proj"]) == []
    assert unmatched_targets(names, "all-linear") == []


def test_check_prints_the_plan_and_exits_0(demo_cfg):
    r = _cli("check", demo_cfg)
    assert r.exit_code == 0, r.output
    for needle in ("stages", "generate, judge, dataset, train, evaluate, report", "model.path",
                   "guard.path", "464 from organism", "benchmarks", "ready"):
        assert needle in r.output


def test_check_lists_every_missing_asset_of_the_real_config(monkeypatch, tmp_path):
    """configs/qwen3-4b.yaml offline with nothing cached: one line per missing asset."""
    import huggingface_hub.constants as C
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-datasets"))
    r = _cli("check", "qwen3-4b", "--out", tmp_path / "q")       # a packaged config by name
    assert r.exit_code == 2
    problems = [ln for ln in r.output.splitlines() if ln.startswith("problem:")]
    assert [p.split(":")[1].strip() for p in problems] == ["model.path", "guard.path",
                                                          "evaluate.refusal_guard_path", "prompts.source"]
    assert len(r.output.splitlines()) < 25                       # one screen


def test_packaged_config_names_for_every_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = _cli("judge", "demo", "--out", tmp_path / "r")
    assert r.exit_code == 2
    assert "config file not found" not in r.output
    assert "run `thinksafe generate` first" in " ".join(r.output.split())


def test_error_printer_keeps_square_brackets(monkeypatch):
    import io

    import typer
    from rich.console import Console

    from thinksafe.cli import common as cli
    from thinksafe.errors import MissingDependency
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, soft_wrap=True))

    @cli.friendly
    def boom():
        raise MissingDependency("vllm is not installed: pip install 'thinksafe[vllm]'")
    with pytest.raises(typer.Exit):
        boom()
    assert "pip install 'thinksafe[vllm]'" in out.getvalue()


# ------------------------------------------------------------------ a failure never writes
def _fake_stages(monkeypatch):
    from thinksafe import pipeline

    def fake(stage, cfg, run_dir, show):
        out = run_dir / stage.outputs[0].replace("*", "x")
        out.parent.mkdir(parents=True, exist_ok=True)
        if stage.name == "evaluate":
            (run_dir / "eval" / "base").mkdir(parents=True, exist_ok=True)
            (run_dir / "eval" / "base" / "metrics.json").write_text("{}\n")
            (run_dir / "eval" / "thinksafe").mkdir(parents=True, exist_ok=True)
            return {"base": {}, "thinksafe": {}}
        out.write_text(f"{stage.name}\n")
        return {"n": 1}
    monkeypatch.setattr(pipeline, "_call", fake)
    monkeypatch.setattr("thinksafe.compute.for_run", lambda *a, **k: {"flops": 0.0})
    return fake


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


FAILING = [
    ["judge", "--set", "guard.path=/no/such"],
    ["judge", "--set", "guard.kind=foo"],
    ["generate", "--set", "model.path=/no/such"],
    ["generate", "--set", "generate.steering=no placeholder"],
    ["dataset", "--set", "evaluate.benchmarks=[gsm8k8]"],
    ["train", "--set", "train.method=lorra"],
    ["train", "--set", "train.lora.target_modules=[q_proj,vproj]"],
    ["train", "--set", "guard.top_k=3"],                   # judge is stale: two stages up
    ["train", "--set", "prompts.n_harmful=3"],             # generate is stale: three stages up
    ["evaluate", "--set", "evaluate.benchmarks=[organism,xstest]", "--set",
     "evaluate.refusal_guard_path=/no/such"],
    ["evaluate", "--set", "evaluate.data_dir=/no/such", "--set", "evaluate.benchmarks=[gsm8k]"],
    ["grpo", "--set", "grpo.format_reward=thinking"],
    ["run", "--set", "guard.path=/no/such"],
    ["run", "--set", "train.method=lorra"],
]


def test_a_failed_command_leaves_a_finished_run_byte_identical(demo_cfg, tmp_path, monkeypatch):
    from thinksafe.pipeline import run_all
    _fake_stages(monkeypatch)
    run_all(load_config(demo_cfg), show=False, log=lambda s: None)
    run_dir = tmp_path / "run"
    before = _hashes(run_dir)
    assert {"config.yaml", "manifest.json", "judged.jsonl"} <= set(before)
    for args in FAILING:
        r = _cli(args[0], demo_cfg, "--quiet", *args[1:])
        assert r.exit_code == 2, (args, r.output)
        assert _hashes(run_dir) == before, args
    # and the finished run is still kept as it is
    r = _cli("run", demo_cfg, "--quiet")
    assert r.exit_code == 0, r.output
    assert r.output.count("unchanged") == 6


def test_a_stage_that_fails_inside_leaves_the_record_as_it_was(demo_cfg, tmp_path, monkeypatch):
    """Past preflight, a stage raising before it wrote an output (a forced judge): config.yaml and
    manifest.json are put back byte for byte, the moved outputs too."""
    from thinksafe import pipeline
    from thinksafe.errors import DataError
    from thinksafe.pipeline import run_all
    fake = _fake_stages(monkeypatch)
    run_all(load_config(demo_cfg), show=False, log=lambda s: None)
    run_dir = tmp_path / "run"
    before = _hashes(run_dir)

    def boom(stage, cfg, run_dir, show):
        if stage.name == "judge":
            raise DataError("the guard said no")
        return fake(stage, cfg, run_dir, show)
    monkeypatch.setattr(pipeline, "_call", boom)
    r = _cli("judge", demo_cfg, "--quiet", "--force", "--set", "guard.top_k=4")
    assert r.exit_code == 2 and "the guard said no" in r.output
    assert _hashes(run_dir) == before
    # a failure after outputs changed keeps its record (the stage that ran is recorded)
    r = _cli("run", demo_cfg, "--quiet", "--set", "generate.max_new_tokens=100")
    assert r.exit_code == 2
    after = _hashes(run_dir)
    assert after["generated.jsonl"] == before["generated.jsonl"]     # the fake writes the same bytes
    assert after["manifest.json"] != before["manifest.json"]         # generate reran: recorded
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["generate"]["max_new_tokens"] == 100


def test_train_refuses_an_sft_set_built_under_another_judge_config(demo_cfg, tmp_path, monkeypatch):
    from thinksafe.pipeline import run_all
    _fake_stages(monkeypatch)
    run_all(load_config(demo_cfg), show=False, log=lambda s: None)
    r = _cli("train", demo_cfg, "--set", "guard.top_k=3")
    assert r.exit_code == 2
    assert "the judge stage's outputs were made with another config (guard.top_k: 5 -> 3)" in \
        " ".join(r.output.split())


def test_saved_config_is_the_one_that_ran(demo_cfg, tmp_path, monkeypatch):
    from thinksafe.pipeline import run_all
    _fake_stages(monkeypatch)
    cfg = load_config(demo_cfg)
    run_all(cfg, show=False, log=lambda s: None)
    _cli("judge", demo_cfg, "--set", "guard.kind=foo")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["guard"]["kind"] == to_dict(cfg)["guard"]["kind"] == "llama_guard"


# ------------------------------------------------------------------ prompts: keys and limit
def _generate_key(cfg) -> str:
    from thinksafe.pipeline import BY_NAME, stage_key
    return stage_key(BY_NAME["generate"], cfg, {"stages": {}})[0]


def test_keys_of_finished_runs_are_unchanged():
    """Recorded before prompts.limit existed (main at 126a5e0): still the same keys."""
    from thinksafe.pipeline import BY_NAME, stage_key
    for cfg, keys in ((load_config(None), ["c73a8cd2bb1484cc", "cf84fd76b87ecfe4"]),
                      (load_config(demo_config_path()), ["7785d05772f8f87f", "748d9a45dde48aa4"]),
                      (load_config(demo_config_path().parent / "qwen3-4b.yaml"),
                       ["714f4a0802ea4347", "b4f98bcc43bd9f98"])):
        assert [stage_key(BY_NAME[n], cfg, {"stages": {}})[0] for n in ("generate", "grpo")] == keys


def test_prompt_counts_a_file_source_ignores_rerun_nothing(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(f'{{"instruction": "q{i}", "label": "benign"}}\n' for i in range(20)))
    base = load_config(None, [f"prompts.source={f}"])
    assert _generate_key(base) == _generate_key(load_config(None, [f"prompts.source={f}", "prompts.n_harmful=3"]))
    org = load_config(None)
    assert _generate_key(org) != _generate_key(load_config(None, ["prompts.n_harmful=3"]))
    assert _generate_key(org) == _generate_key(load_config(None, ["prompts.prompt_field=question"]))
    assert _generate_key(base) != _generate_key(load_config(None, [f"prompts.source={f}", "prompts.limit=5"]))


def test_prompts_limit_is_a_seeded_subset(tmp_path):
    from thinksafe.prompts import load_prompts
    f = tmp_path / "p.jsonl"
    f.write_text("".join(f'{{"instruction": "q{i}", "label": "benign"}}\n' for i in range(50)))
    a = load_prompts(load_config(None, [f"prompts.source={f}", "prompts.limit=7"]))
    b = load_prompts(load_config(None, [f"prompts.source={f}", "prompts.limit=7"]))
    c = load_prompts(load_config(None, [f"prompts.source={f}", "prompts.limit=7", "seed=1"]))
    assert [r.prompt for r in a] == [r.prompt for r in b] and len(a) == 7
    assert [r.prompt for r in a] != [r.prompt for r in c]
    assert [r.prompt for r in a] != [f"q{i}" for i in range(7)]          # drawn, not the head
    assert [int(r.prompt[1:]) for r in a] == sorted(int(r.prompt[1:]) for r in a)   # source order
    pf = preflight(load_config(None, [f"prompts.source={f}", "prompts.limit=7", f"out={tmp_path / 'r'}"]),
                   ["generate"])
    assert "7 from" in dict(pf.plan)["prompts"]


def test_train_itself_refuses_a_target_module_that_matches_nothing(tmp_path):
    """Past the preflight too (a run started through the Python API): before any training step."""
    import json

    from conftest import world_responses

    from thinksafe.errors import ConfigError
    from thinksafe.stages import train
    rows = [{"prompt": p, "response": r, "label": "benign"} for p, r in world_responses(n=4)[:6]]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(demo_config_path(), [f"out={tmp_path}", "train.lora.target_modules=[q_proj,vproj]"])
    with pytest.raises(ConfigError, match=r"train.lora.target_modules: 'vproj' match no module"):
        train.run(cfg, tmp_path, show=False)
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "checkpoints").exists()
