"""evaluate on the real benchmarks, through evaluate_model, with a fake backend and fake guards.

The first 5 prompts of every real benchmark file (shared/data); GPQA-Diamond from a made-up file
(the real one is gated). The fakes script responses per prompt so that every count is known:
unparsed verdicts count as harmful, truncated reasoning samples as wrong, pass@1 averages over
the samples, and the reasoning / the answer are judged apart."""

from __future__ import annotations

import csv
import json
import os

import pytest

from thinksafe import benchmarks as B
from thinksafe import evalsets
from thinksafe.config import load_config
from thinksafe.errors import ConfigError
from thinksafe.metrics import wilson
from thinksafe.stages import evaluate as E
from thinksafe.types import SAFE, UNPARSED, UNSAFE, Completion, Verdict
from conftest import SHARED_DATA

DATA = SHARED_DATA
pytestmark = pytest.mark.skipif(not (DATA / "safety").is_dir(), reason=f"{DATA} not present")

SAFETY = ["harmbench", "harmbench_text", "strongreject", "wildjailbreak", "wildjailbreak_250"]
REASONING = ["aime24", "math500", "gsm8k", "gpqa_diamond"]
ALL = SAFETY + ["xstest"] + REASONING
LIMIT, SAMPLES = 5, 4
U0, U1 = "<|user|>", "<|assistant|>"


# ----------------------------------------------------------------------------- fakes
class FakeTokenizer:
    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, **kw):
        return U0 + messages[-1]["content"] + U1


class FakeBackend:
    """Scripted responses: ``script(prompt, sample) -> (text, finish_reason)``."""

    def __init__(self, script, batch_size=4):
        self.tokenizer, self.batch_size, self.script = FakeTokenizer(), batch_size, script
        self.prompts: list[str] = []

    def generate(self, prompts, params, progress=None):
        out = []
        for p in prompts:
            text = p[len(U0):-len(U1)]
            self.prompts.append(text)
            body, finish = self.script(text, params.seed // 1000)
            out.append(Completion(body, finish, 10, 20))
        if progress:
            progress(len(prompts))
        return out


class FakeGuard:
    """HARMFUL -> unsafe, GARBLE -> unparsed, else safe."""

    def __init__(self):
        self.pairs: list[tuple[str, str]] = []

    def judge(self, pairs, progress=None):
        self.pairs += list(pairs)
        out = [Verdict(UNPARSED) if "GARBLE" in r else Verdict(UNSAFE, category="S2") if "HARMFUL" in r
               else Verdict(SAFE) for _, r in pairs]
        if progress:
            progress(len(pairs))
        return out


class FakeRefusalGuard:
    """WildGuard-style raw output: refusal when the response says "I can't"; GARBLE -> no lines."""

    def __init__(self):
        self.pairs: list[tuple[str, str]] = []

    def judge(self, pairs, progress=None):
        self.pairs += list(pairs)
        out = []
        for _, r in pairs:
            if "GARBLE" in r:
                out.append(Verdict(UNPARSED, raw="???"))
            else:
                ref = "yes" if "I can't" in r else "no"
                out.append(Verdict(SAFE, raw=f"Harmful request: no\nResponse refusal: {ref}\n"
                                              "Harmful response: no"))
        return out


class Boom:
    """A backend / guard that must not be used."""
    tokenizer = FakeTokenizer()
    batch_size = 4

    def generate(self, *a, **k):
        raise AssertionError("generate called again")

    def judge(self, *a, **k):
        raise AssertionError("judge called again")


# ----------------------------------------------------------------------------- the script
SAFETY_SCRIPT = [
    ("<think>a plan</think>Sure: HARMFUL details", "stop"),        # answer harmful
    ("<think>HARMFUL plan</think>I can't help with that.", "stop"),  # trace harmful
    ("<think>this is harmful</think>I can't help.", "stop"),      # safe
    ("<think>GARBLE and on and on", "length"),                     # unparsed, no answer, truncated
    ("<think>fine</think>GARBLE", "stop"),                         # answer unparsed
]
XS_SAFE = ["I can't", "I can't", "Sure, here", "Sure, here", "GARBLE"]      # 2 refused + 1 unparsed
XS_UNSAFE = ["I can't", "I can't", "I can't", "Sure", "Sure"]               # 2 complied


def _gold(rec) -> str:
    return rec.meta.get("correct_letter") or rec.meta["answer"]


def _answer(name: str, value: str) -> str:
    if name == "gsm8k":
        return f"The final answer is {value}"
    return f"The answer is \\boxed{{{value}}}"


def _wrong(name: str, rec) -> str:
    if name == "gpqa_diamond":
        return next(x for x in "ABCD" if x != rec.meta["correct_letter"])
    return "-987654"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """shared/data's files plus a made-up gpqa_diamond.csv (5 questions)."""
    d = tmp_path_factory.mktemp("data")
    os.symlink(DATA / "safety", d / "safety")
    (d / "reasoning").mkdir()
    for f in (DATA / "reasoning").iterdir():
        os.symlink(f, d / "reasoning" / f.name)
    with open(d / "reasoning" / "gpqa_diamond.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Record ID", "Question", "Correct Answer", "Incorrect Answer 1",
                    "Incorrect Answer 2", "Incorrect Answer 3"])
        for i in range(6):
            w.writerow([f"rec{i}", f"Which particle is number {i}?", f"right{i}", f"w1-{i}", f"w2-{i}", f"w3-{i}"])
    return d


@pytest.fixture(scope="module")
def prompts(data_dir):
    """benchmark -> list of records (index = position in the benchmark)."""
    return {n: evalsets.load_benchmark(n, data_dir, LIMIT) for n in ALL}


@pytest.fixture(scope="module")
def script(prompts):
    index: dict[str, tuple[str, int, object]] = {}
    for name, recs in prompts.items():
        for i, r in enumerate(recs):
            index.setdefault(r.prompt, (name, i, r))

    def run(prompt: str, sample: int):
        name, i, rec = index[prompt]
        if name in ("wildjailbreak", "wildjailbreak_250", "harmbench", "harmbench_text", "strongreject"):
            return SAFETY_SCRIPT[i]
        if name == "xstest":
            return (XS_SAFE if rec.label == "benign" else XS_UNSAFE)[i % LIMIT], "stop"
        right = sample < SAMPLES // 2            # half the samples right
        value = _gold(rec) if right else _wrong(name, rec)
        if i == 0:                               # every sample cut at max tokens (answer present)
            return f"<think>long</think>{_answer(name, _gold(rec))}", "length"
        if i == 1:                               # never closes its reasoning
            return f"<think>{_answer(name, _gold(rec))}", "stop"
        return f"<think>work</think>{_answer(name, value)}", "stop"
    return run


def _cfg(tmp_path, data_dir, benchmarks, *extra):
    # a thinking family: the answer is read after </think> (generic would score the whole response)
    return load_config(None, [f"out={tmp_path}", "model.family=qwen3", "model.path=fake/model",
                              f"evaluate.benchmarks=[{', '.join(benchmarks)}]", f"evaluate.limit={LIMIT}",
                              f"evaluate.samples={SAMPLES}", f"evaluate.data_dir={data_dir}", *extra])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, data_dir, script):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = _cfg(run_dir, data_dir, ALL)
    backend, guard, refusal = FakeBackend(script), FakeGuard(), FakeRefusalGuard()
    m = E.evaluate_model(cfg, run_dir, "base", show=False, backend=backend, guard=guard,
                         refusal_guard=refusal)
    return cfg, run_dir, m, backend, guard, refusal


# ----------------------------------------------------------------------------- tests
def test_resolve_benchmarks():
    assert evalsets.resolve_benchmarks(["paper"]) == evalsets.PAPER_BENCHMARKS
    assert evalsets.resolve_benchmarks(["organism", "paper", "harmbench"]) == ["organism", *evalsets.PAPER_BENCHMARKS]
    with pytest.raises(ConfigError, match="Did you mean 'strongreject'"):
        evalsets.resolve_benchmarks(["strongrejct"])
    assert set(B.names("reasoning")) == set(REASONING)
    assert {evalsets.kind_of(n) for n in SAFETY} == {"safety"} and evalsets.kind_of("xstest") == "overrefusal"


def test_split_response():
    assert E.split_response("<think>\nplan\n</think>\n\nanswer") == ("plan", "answer")
    assert E.split_response("<think>never closed") == ("never closed", None)
    assert E.split_response("a</think>b</think>c") == ("a</think>b", "c")


def test_files_written(full_run):
    _, run_dir, m, *_ = full_run
    base = run_dir / "eval" / "base"
    for name in ["harmbench", "harmbench_text", "strongreject", "wildjailbreak"]:
        for f in ["generations.jsonl", "judged.jsonl", "judged_trace.jsonl", "judged_answer.jsonl",
                  "metrics.json", "settings.json"]:
            assert (base / name / f).is_file(), (name, f)
    assert (base / "wildjailbreak_250" / "metrics.json").is_file()
    assert not (base / "wildjailbreak_250" / "generations.jsonl").exists()   # shares wildjailbreak's
    for f in ["generations.jsonl", "refusal.jsonl", "metrics.json"]:
        assert (base / "xstest" / f).is_file()
    for name in REASONING:
        for f in ["generations.jsonl", "scores.jsonl", "metrics.json"]:
            assert (base / name / f).is_file(), (name, f)
        assert len((base / name / "generations.jsonl").read_text().splitlines()) == LIMIT * SAMPLES
    top = json.loads((base / "metrics.json").read_text())
    assert set(top["benchmarks"]) == set(ALL)
    assert top["model"]["path"] == "fake/model"
    assert "harmful_rate" not in top                     # no organism in this run
    assert m["benchmarks"]["harmbench"] == json.loads((base / "harmbench" / "metrics.json").read_text())


def test_safety_counts(full_run):
    m = full_run[2]["benchmarks"]
    for name in ["harmbench", "harmbench_text", "strongreject", "wildjailbreak"]:
        b = m[name]
        assert b["n"] == LIMIT and b["kind"] == "safety"
        assert b["harmful_rate"] == pytest.approx(4 / 5)       # 2 unsafe + 2 unparsed
        assert b["unparsed"] == 2 and b["truncated"] == 1 and b["no_think_close"] == 1
        assert tuple(b["ci95"]) == wilson(4, 5)
        assert b["trace"]["harmful_rate"] == pytest.approx(2 / 5) and b["trace"]["unparsed"] == 1
        assert b["answer"]["harmful_rate"] == pytest.approx(2 / 5) and b["answer"]["unparsed"] == 1
        assert b["answer"]["no_answer"] == 1
        assert b["categories"] == {"S2": 2}


def test_guard_sees_the_original_prompt_and_the_parts(full_run, prompts):
    guard = full_run[4]
    hb = [r.prompt for r in prompts["harmbench"]]
    seen = [(p, r) for p, r in guard.pairs if p == hb[1]]
    texts = {r for _, r in seen}
    assert SAFETY_SCRIPT[1][0] in texts                       # full response
    assert "HARMFUL plan" in texts                            # reasoning alone
    assert "I can't help with that." in texts                 # answer alone
    assert not any("The following prompt is harmful" in p for p, _ in guard.pairs)


def test_xstest(full_run):
    x = full_run[2]["benchmarks"]["xstest"]
    assert x["n"] == LIMIT and x["refused"] == 2 and x["unparsed"] == 1
    assert x["over_refusal_rate"] == pytest.approx(3 / 5)      # unparsed counts as a refusal
    assert x["unsafe"]["n"] == LIMIT and x["unsafe"]["compliance_rate"] == pytest.approx(2 / 5)
    assert x["refusal_guard"] == "wildguard:allenai/wildguard"
    assert len(full_run[5].pairs) == 2 * LIMIT                 # the refusal guard saw xstest only


def test_pass_at_1_truncated_and_no_think(full_run, prompts):
    m = full_run[2]["benchmarks"]
    for name in REASONING:
        r = m[name]
        assert r["n_problems"] == LIMIT and r["samples"] == SAMPLES and r["n"] == LIMIT * SAMPLES
        # problem 0 truncated (0), problem 1 no </think> (0), problems 2-4 half right
        assert r["pass_at_1"] == pytest.approx((0 + 0 + 0.5 * 3) / 5), name
        assert r["truncated"] == SAMPLES and r["no_think_close"] == SAMPLES
        rows = [json.loads(x) for x in (full_run[1] / "eval" / "base" / name / "scores.jsonl").read_text().splitlines()]
        assert sum(x["correct"] for x in rows) == 3 * SAMPLES // 2
        assert {x["problem_id"] for x in rows} == {p.id for p in prompts[name]}


def test_sampling_seeds_differ_per_sample(full_run):
    backend = full_run[3]
    math = [p for p in backend.prompts if p.startswith("Please reason step by step")]
    assert len(math) == 2 * LIMIT * SAMPLES                    # aime24 + math500, each sample once


def test_safety_prompts_generated_once(full_run, prompts):
    backend = full_run[3]
    for name in ["harmbench", "strongreject", "wildjailbreak"]:
        for r in prompts[name]:
            assert backend.prompts.count(r.prompt) == 1


def test_rerun_reuses_everything(full_run, capsys):
    cfg, run_dir, m, *_ = full_run
    capsys.readouterr()
    again = E.evaluate_model(cfg, run_dir, "base", show=False, backend=Boom(), guard=Boom(),
                             refusal_guard=Boom())
    assert again["benchmarks"] == m["benchmarks"]
    assert f"evaluate base: reused {len(ALL)} of {len(ALL)} benchmarks' generations" in capsys.readouterr().err


def test_nothing_is_loaded_when_all_exists(full_run):
    cfg, run_dir, m, *_ = full_run

    def never():
        raise AssertionError("a model was loaded")
    again = E.evaluate_model(cfg, run_dir, "base", show=False, backend=never, guard=never,
                             refusal_guard=never)
    assert again["benchmarks"] == m["benchmarks"]


def test_extra_benchmark_generates_only_what_is_new(tmp_path, data_dir, script, prompts):
    first = FakeBackend(script)
    E.evaluate_model(_cfg(tmp_path, data_dir, ["harmbench"]), tmp_path, "base", show=False,
                     backend=first, guard=FakeGuard())
    assert len(first.prompts) == LIMIT
    second, guard = FakeBackend(script), FakeGuard()
    m = E.evaluate_model(_cfg(tmp_path, data_dir, ["harmbench", "strongreject"]), tmp_path, "base",
                         show=False, backend=second, guard=guard)
    assert sorted(second.prompts) == sorted(r.prompt for r in prompts["strongreject"])
    assert {p for p, _ in guard.pairs} == {r.prompt for r in prompts["strongreject"]}
    assert set(m["benchmarks"]) == {"harmbench", "strongreject"}


def test_crash_mid_generation_resumes(tmp_path, data_dir, script, prompts, capsys):
    class Crash(FakeBackend):
        def generate(self, prompts_, params, progress=None):
            if len(self.prompts) >= 8:          # after the first chunk (2 x batch_size) was saved
                raise KeyboardInterrupt
            return super().generate(prompts_, params, progress)
    cfg = _cfg(tmp_path, data_dir, ["gsm8k"])
    with pytest.raises(KeyboardInterrupt):
        E.evaluate_model(cfg, tmp_path, "base", show=False, backend=Crash(script, batch_size=4),
                         guard=FakeGuard())
    saved = (tmp_path / "eval" / "base" / "gsm8k" / "generations.jsonl").read_text().splitlines()
    assert len(saved) == 8
    resumed = FakeBackend(script)
    capsys.readouterr()
    m = E.evaluate_model(cfg, tmp_path, "base", show=False, backend=resumed, guard=FakeGuard())
    assert len(resumed.prompts) == LIMIT * SAMPLES - 8
    said = capsys.readouterr().err           # resumed work is reported
    assert f"evaluate base: reused 0 of 1 benchmarks' generations; resumed gsm8k (8 of {LIMIT * SAMPLES})" in said
    assert m["benchmarks"]["gsm8k"]["pass_at_1"] == pytest.approx(0.3)


def test_gpqa_skipped_without_its_file(tmp_path, script):
    cfg = _cfg(tmp_path, DATA, ["gsm8k", "gpqa_diamond"])
    m = E.evaluate_model(cfg, tmp_path, "base", show=False, backend=FakeBackend(script), guard=FakeGuard())
    g = m["benchmarks"]["gpqa_diamond"]
    assert g["skipped"] is True and "gated" in g["reason"]
    assert "pass_at_1" in m["benchmarks"]["gsm8k"]


def test_missing_ungated_file_is_an_error(tmp_path, script):
    from thinksafe.errors import DataError
    cfg = _cfg(tmp_path, tmp_path / "nowhere", ["gsm8k"])
    with pytest.raises(DataError, match="gsm8k"):
        E.evaluate_model(cfg, tmp_path, "base", show=False, backend=Boom(), guard=Boom())


def test_split_judge_off(tmp_path, data_dir, script):
    m = E.evaluate_model(_cfg(tmp_path, data_dir, ["strongreject"], "evaluate.split_judge=false"),
                         tmp_path, "base", show=False, backend=FakeBackend(script), guard=FakeGuard())
    b = m["benchmarks"]["strongreject"]
    assert "trace" not in b and "answer" not in b and b["harmful_rate"] == pytest.approx(0.8)
    assert not (tmp_path / "eval" / "base" / "strongreject" / "judged_trace.jsonl").exists()


def test_reasoning_defaults_to_8_samples(tmp_path, data_dir, script):
    cfg = load_config(None, [f"out={tmp_path}", "model.family=generic", "evaluate.benchmarks=[aime24]",
                             "evaluate.limit=2", f"evaluate.data_dir={data_dir}"])
    backend = FakeBackend(script)
    m = E.evaluate_model(cfg, tmp_path, "base", show=False, backend=backend, guard=Boom())
    assert m["benchmarks"]["aime24"]["samples"] == 8 and len(backend.prompts) == 16


def test_same_guard_for_refusal_is_loaded_once(tmp_path, data_dir, script):
    made = []

    def guard():
        made.append(1)
        return FakeRefusalGuard()
    cfg = _cfg(tmp_path, data_dir, ["xstest"], "guard.kind=wildguard", "guard.path=allenai/wildguard")
    E.evaluate_model(cfg, tmp_path, "base", show=False, backend=FakeBackend(script), guard=guard)
    assert made == [1]


def test_evaluate_only_changes_keep_the_earlier_stages(tmp_path, data_dir):
    """One more benchmark: only evaluate's key changes; the saved config follows the command."""
    from thinksafe.pipeline import BY_NAME, prepare_run_dir, stage_key
    run = tmp_path / "r"
    a, b = _cfg(run, data_dir, ["harmbench"]), _cfg(run, data_dir, ["harmbench", "gsm8k"])
    prepare_run_dir(a)
    prepare_run_dir(b)
    assert "gsm8k" in (run / "config.yaml").read_text()
    m = {"stages": {}}
    assert stage_key(BY_NAME["evaluate"], a, m)[0] != stage_key(BY_NAME["evaluate"], b, m)[0]
    for s in ("generate", "judge", "train"):
        assert stage_key(BY_NAME[s], a, m)[0] == stage_key(BY_NAME[s], b, m)[0]


def test_changed_settings_move_a_benchmarks_files_aside(tmp_path, data_dir, script):
    cfg = _cfg(tmp_path, data_dir, ["harmbench"])
    E.evaluate_model(cfg, tmp_path, "base", show=False, backend=FakeBackend(script), guard=FakeGuard())
    gen = tmp_path / "eval" / "base" / "harmbench" / "generations.jsonl"
    before = gen.read_bytes()
    hot = _cfg(tmp_path, data_dir, ["harmbench"], "evaluate.temperature=0.9")
    E.evaluate_model(hot, tmp_path, "base", show=False, backend=FakeBackend(script), guard=FakeGuard())
    old = list((tmp_path / "old").glob("*-evaluate/eval/base/harmbench/generations.jsonl"))
    assert len(old) == 1 and old[0].read_bytes() == before
    assert json.loads((gen.parent / "settings.json").read_text())["generation"]["temperature"] == 0.9


def test_evaluate_config_defaults():
    e = load_config(None).evaluate
    assert e.benchmarks == ["organism"] and e.samples is None
    assert (e.refusal_guard_path, e.refusal_guard_kind) == ("allenai/wildguard", "wildguard")
    assert e.split_judge is True


def test_base_only_evaluation_is_not_recorded_as_done(tmp_path, monkeypatch):
    """`thinksafe evaluate` before training must not make `thinksafe run` skip evaluate later."""
    from thinksafe import pipeline
    monkeypatch.setattr(E, "evaluate_model", lambda cfg, run_dir, tag, adapter=None, show=True, **kw: {"x": 1})
    cfg = load_config(None, [f"out={tmp_path}"])
    assert set(pipeline.ensure("evaluate", cfg, tmp_path, show=False, log=lambda s: None)) == {"base"}
    assert pipeline.stage_done(tmp_path, "evaluate") is None
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    assert set(pipeline.ensure("evaluate", cfg, tmp_path, show=False, log=lambda s: None)) == {"base", "thinksafe"}
    assert pipeline.stage_done(tmp_path, "evaluate") == {"base": {"x": 1}, "thinksafe": {"x": 1}}


def test_cli_evaluate_then_report(tmp_path, data_dir, script, monkeypatch):
    """The evaluate and report commands end to end, models replaced by the fakes."""
    from typer.testing import CliRunner

    from thinksafe.cli import app
    real = E.evaluate_model
    monkeypatch.setattr(E, "evaluate_model", lambda *a, **k: real(
        *a, **k, backend=FakeBackend(script), guard=FakeGuard(), refusal_guard=FakeRefusalGuard()))
    monkeypatch.setattr("thinksafe.preflight.models.check_model", lambda *a, **k: None)   # fakes: no weights
    cfg = tmp_path / "c.yaml"
    run = tmp_path / "run"
    cfg.write_text(f"name: fake\nout: {run}\nmodel: {{path: Qwen/Qwen3-8B, family: qwen3}}\n"
                   f"evaluate: {{benchmarks: [paper], limit: 3, samples: 2, data_dir: {data_dir}}}\n")
    r = CliRunner().invoke(app, ["evaluate", str(cfg), "--quiet"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["evaluate", str(cfg), "--quiet", "--set", "evaluate.benchmarks=[paper, harmbench_text]"])
    assert r.exit_code == 0, r.output                       # an evaluate-only change is accepted
    r = CliRunner().invoke(app, ["report", str(run), "--quiet"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(run / "summary.csv")))
    assert len(rows) == 1 and rows[0]["run"] == "fake" and rows[0]["tag"] == "base"
    assert rows[0]["HarmBench"] == "66.67" and rows[0]["HarmBench-text"] == "66.67"
    assert all(rows[0][c] != "–" for c in ["Safety avg", "Reasoning avg", "XSTest", "GPQA-D"])
    assert "Published: Qwen3-8B" in (run / "report.md").read_text()
