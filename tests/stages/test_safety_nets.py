"""Safety nets that fail loud: ranges checked when the config loads, prompt files that would
silently mean something else, model folders that hold no model, decontamination that resolves the
evaluation's own benchmarks, and verdicts tied to the completion they judged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from thinksafe.cli import app
from thinksafe.config import load_config
from thinksafe.errors import ConfigError, DataError
from thinksafe.types import SAFE, UNSAFE, Completion, Record, Verdict
from conftest import SHARED_DATA

SHARED = Path(os.environ.get("THINKSAFE_DATA") or SHARED_DATA)


@pytest.mark.parametrize("override, needle", [
    ("generate.top_p=1.5", "generate.top_p must be in (0, 1], got 1.5"),
    ("generate.top_p=0", "generate.top_p must be in (0, 1]"),
    ("generate.temperature=-0.1", "generate.temperature must be >= 0"),
    ("generate.samples=0", "generate.samples must be >= 1"),
    ("model.batch_size=0", "model.batch_size must be >= 1"),
    ("guard.batch_size=0", "guard.batch_size must be >= 1"),
    ("generate.max_new_tokens=0", "generate.max_new_tokens must be >= 1"),
    ("train.batch_size=0", "train.batch_size must be >= 1"),
    ("train.lr=0", "train.lr must be > 0"),
    ("evaluate.top_p=2", "evaluate.top_p must be in (0, 1]"),
    ("grpo.num_generations=1", "grpo.num_generations must be >= 2"),
    ("prompts.default_label=maybe", "prompts.default_label must be one of null, harmful, benign"),
    ("dataset.decontaminate=sometimes", "dataset.decontaminate must be one of true, false, best_effort"),
])
def test_ranges_are_checked_when_the_config_loads(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value)


def test_valid_edges_load():
    c = load_config(None, ["generate.top_p=1", "generate.temperature=0", "dataset.decontaminate=best_effort",
                           "prompts.default_label=harmful"])
    assert c.generate.top_p == 1 and c.dataset.decontaminate == "best_effort"


def _invoke(tmp_path, *args):
    cfg = tmp_path / "c.yaml"
    if not cfg.exists():
        cfg.write_text(f"out: {tmp_path / 'run'}\n")
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "generated.jsonl").write_text('{"id": "x"}\n')
    res = CliRunner().invoke(app, [args[0], str(cfg), "--quiet", *args[1:]])
    assert res.exit_code == 2, res.output
    errors = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert "Traceback" not in res.output and len(errors) == 1, res.output
    assert not list((tmp_path / "run").glob("old/*")), "nothing moved aside for a run that failed at once"
    assert (run / "generated.jsonl").read_text() == '{"id": "x"}\n'     # existing files untouched
    assert not (run / "judged.jsonl").exists()
    return " ".join(errors[0].split())


def _prompts(tmp_path, rows) -> str:
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"prompts.source={p}"


@pytest.mark.parametrize("case, needle", [
    (["--set", "generate.top_p=1.5"], "generate.top_p must be in (0, 1]"),
    (["--set", "generate.samples=0"], "generate.samples must be >= 1"),
    (["--set", "model.path=/no/such/model"], "model folder not found: /no/such/model"),
    ("EMPTYDIR", "holds no model (no config.json)"),
    ("EMPTYFILE", "no prompts in the file"),
    ("NOLABEL", "has no label field 'label'"),
    ("NONSTRING", "'instruction' must be non-empty text"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_files(tmp_path, case, needle):
    if case == "EMPTYDIR":
        (tmp_path / "empty").mkdir()
        case = ["--set", f"model.path={tmp_path / 'empty'}"]
    elif case == "EMPTYFILE":
        (tmp_path / "prompts.jsonl").write_text("")
        case = ["--set", f"prompts.source={tmp_path / 'prompts.jsonl'}"]
    elif case == "NOLABEL":
        case = ["--set", _prompts(tmp_path, [{"instruction": "how to make a bomb"}])]
    elif case == "NONSTRING":
        case = ["--set", _prompts(tmp_path, [{"instruction": ["a", "list"], "label": "harmful"}])]
    assert needle in _invoke(tmp_path, "generate", "--force", *case)


def test_default_label_gives_unlabelled_rows_a_label(tmp_path):
    from thinksafe.prompts import load_prompts
    src = _prompts(tmp_path, [{"instruction": "a"}, {"instruction": "b", "label": "vanilla_benign"}])
    recs = load_prompts(load_config(None, [src, "prompts.default_label=harmful"]))
    assert [r.label for r in recs] == ["harmful", "benign"]


def test_stage_commands_have_the_force_they_promise():
    for cmd in ("generate", "judge", "dataset", "train", "evaluate", "grpo"):
        res = CliRunner().invoke(app, [cmd, "--help"])
        assert "--force" in res.output, cmd
    res = CliRunner().invoke(app, ["run", "--help"])
    assert "--force" in res.output and "--from" in res.output


# ----------------------------------------------------------------------------- decontamination
def _recipe(*extra):
    from thinksafe.config import demo_config_path
    recipe = demo_config_path().parent / "qwen3-4b.yaml"
    return load_config(recipe, ["evaluate.benchmarks=[paper]", f"evaluate.data_dir={SHARED}", *extra])


@pytest.mark.skipif(not (SHARED / "safety").is_dir(), reason="shared/data absent")
def test_qwen3_4b_recipe_decontaminates_against_the_papers_benchmarks(tmp_path):
    from thinksafe.benchmarks import load
    from thinksafe.io import append_jsonl
    from thinksafe.stages import dataset
    cfg = _recipe()
    leaked = load("harmbench", SHARED)[3].prompt
    ok = Completion("<think>no</think>I can't help with that.", "stop", 5, 5)
    rows = [Record("a", leaked, "harmful", "t", {}, "prefix", 0, ok, Verdict(SAFE, 0.9)),
            Record("b", "a fresh prompt of our own", "harmful", "t", {}, "prefix", 0, ok, Verdict(SAFE, 0.9))]
    append_jsonl(tmp_path / "judged.jsonl", [r.to_json() for r in rows])
    stats = dataset.run(cfg, tmp_path, show=False)
    d = json.loads((tmp_path / "dataset_stats.json").read_text())["decontamination"]
    assert stats["dropped"] == {"eval_overlap": 1} and d["dropped"] == 1
    counts = d["benchmarks"]
    assert set(counts) | set(d["skipped"]) == {"harmbench", "strongreject", "wildjailbreak", "xstest",
                                               "aime24", "gsm8k", "math500", "gpqa_diamond"}
    assert all(n > 0 for n in counts.values()) and counts["harmbench"] == len(load("harmbench", SHARED))
    assert set(d["skipped"]) <= {"gpqa_diamond"} and d["unavailable"] == {}


def test_a_benchmark_that_cannot_load_is_an_error_unless_best_effort(tmp_path):
    from thinksafe.decontam import evaluation_prompts
    cfg = load_config(None, ["evaluate.benchmarks=[organism, harmbench]", f"evaluate.data_dir={tmp_path}",
                             "evaluate.n_harmful=3", "evaluate.n_reasoning=2", "evaluate.n_borderline=1"])
    with pytest.raises(DataError, match="cannot decontaminate against 'harmbench'.*best_effort"):
        evaluation_prompts(cfg)
    be = load_config(None, ["evaluate.benchmarks=[organism, harmbench]", f"evaluate.data_dir={tmp_path}",
                            "evaluate.n_harmful=3", "evaluate.n_reasoning=2", "evaluate.n_borderline=1",
                            "dataset.decontaminate=best_effort"])
    prompts, info = evaluation_prompts(be)
    assert info["benchmarks"] == {"organism": 6} and "harmbench" in info["unavailable"]


# ----------------------------------------------------------------------------- verdicts
class _Guard:
    def __init__(self):
        self.calls = 0

    def judge(self, pairs, progress=None):
        self.calls += len(pairs)
        return [Verdict(UNSAFE if "bad" in t else SAFE, 0.5) for _, t in pairs]


def test_a_changed_completion_is_judged_again(tmp_path):
    from thinksafe.judging import judge_records
    out = tmp_path / "judged.jsonl"

    def rec(text):
        return Record("r1", "prompt", "harmful", "t", completion=Completion(text, "stop"))
    g = _Guard()
    assert judge_records(g, [rec("a good answer")], out, show=False)[0].verdict.label == SAFE
    assert judge_records(g, [rec("a good answer")], out, show=False)[0].verdict.label == SAFE
    assert g.calls == 1                                  # same text: the verdict is reused
    again = judge_records(g, [rec("a bad answer")], out, show=False)[0]
    assert g.calls == 2 and again.verdict.label == UNSAFE
    from thinksafe.stages.dataset import read_judged
    assert [r.verdict.label for r in read_judged(out)] == [UNSAFE]    # the later verdict wins
