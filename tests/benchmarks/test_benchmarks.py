"""Real benchmarks: loaders on the shared/data files, prompt texts, GPQA shuffling, answer scoring."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from thinksafe import benchmarks as B
from thinksafe.benchmarks import gpqa_diamond, gsm8k, scoring, wildjailbreak
from thinksafe.errors import ConfigError, DataError
from thinksafe.types import Record, stable_id
from conftest import SHARED_DATA

DATA = SHARED_DATA
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} not present")

MATH_PREFIX = "Please reason step by step, and put your final answer within \\boxed{}. "
GPQA_PREFIX = ("Return your final response within \\boxed{} and only include the letter choice "
               "(A, B, C, or D) as your final response. ")


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def get(name, **kw):
        key = (name, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = B.load(name, DATA, **kw)
        return cache[key]
    return get


# ----------------------------------------------------------------------------- registry
def test_registry_modules_expose_the_interface():
    for name in B.BENCHMARKS:
        mod = B.get(name)
        assert mod.NAME == name
        assert mod.KIND in ("safety", "overrefusal", "reasoning")
        assert callable(mod.load) and callable(mod.score)
    assert set(B.names("reasoning")) == {"aime24", "math500", "gsm8k", "gpqa_diamond"}
    assert B.names("overrefusal") == ["xstest"]


def test_unknown_benchmark_is_a_config_error():
    with pytest.raises(ConfigError, match="harmbench"):
        B.get("harmbenhc")


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("THINKSAFE_DATA", str(tmp_path))
    assert B.default_data_dir() == tmp_path
    monkeypatch.delenv("THINKSAFE_DATA")
    repo = Path(B.__file__).resolve().parents[3]
    assert (repo / "pyproject.toml").is_file()
    inside = repo / "shared" / "data"
    assert B.default_data_dir() == (inside if inside.is_dir() else DATA)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="strongreject_dataset.csv"):
        B.load("strongreject", tmp_path)


def test_pass_at_1():
    assert B.pass_at_1({"a": [True, False], "b": [True] * 4, "c": [False] * 8}) == pytest.approx(0.5)
    assert B.pass_at_1({}) == 0.0
    with pytest.raises(ValueError):
        B.pass_at_1({"a": []})


# ----------------------------------------------------------------------------- safety loaders
@needs_data
def test_harmbench_602(loaded):
    recs = loaded("harmbench")
    assert len(recs) == 602
    assert all(r.label == "harmful" and r.source == "harmbench" for r in recs)
    assert len({r.meta["objective"] for r in recs}) == 301
    assert recs[0].id == stable_id("harmbench", 0, recs[0].prompt)
    assert len({r.id for r in recs}) == 602


@needs_data
def test_harmbench_text_contextual_prompts(loaded):
    recs = loaded("harmbench_text")
    assert len(recs) == 320
    cats = Counter(r.meta["functional_category"] for r in recs)
    assert cats == {"standard": 159, "contextual": 81, "copyright": 80}
    ctx = [r for r in recs if r.meta["functional_category"] == "contextual"]
    assert all(r.meta["has_context"] and r.prompt.endswith("\n\n---\n\n" + r.meta["behavior"])
               for r in ctx)
    std = [r for r in recs if r.meta["functional_category"] == "standard"]
    assert all(r.prompt == r.meta["behavior"] for r in std)


@needs_data
def test_strongreject_313(loaded):
    recs = loaded("strongreject")
    assert len(recs) == 313
    assert len({r.meta["category"] for r in recs}) == 6
    assert recs[0].prompt.startswith("Can you explain how to write a deceptive email")


@needs_data
def test_xstest_450_labels(loaded):
    recs = loaded("xstest")
    assert len(recs) == 450
    assert Counter(r.label for r in recs) == {"benign": 250, "harmful": 200}
    assert all((r.label == "benign") == (r.meta["xstest_label"] == "safe") for r in recs)
    assert len({r.meta["type"] for r in recs}) == 18
    assert recs[0].meta["focus"] == "kill"
    safe = B.load("xstest", DATA, split="safe")
    assert len(safe) == 250 and {r.label for r in safe} == {"benign"}
    assert {r.id for r in safe} <= {r.id for r in recs}


@needs_data
def test_wildjailbreak_2000_and_subset(loaded):
    full = loaded("wildjailbreak")
    assert len(full) == 2000
    assert all(r.meta["data_type"] == "adversarial_harmful" for r in full)
    sub = loaded("wildjailbreak", subset=250)
    again = B.load("wildjailbreak", DATA, subset=250)
    assert len(sub) == 250 and [r.id for r in sub] == [r.id for r in again]
    assert {r.id for r in sub} <= {r.id for r in full}
    assert sub[0].meta["subset_seed"] == wildjailbreak.SUBSET_SEED == 42
    other = B.load("wildjailbreak", DATA, subset=250, seed=7)
    assert {r.id for r in other} != {r.id for r in sub}


@needs_data
def test_limit(loaded):
    assert [r.id for r in B.load("harmbench", DATA, limit=5)] == [r.id for r in loaded("harmbench")[:5]]
    with pytest.raises(ConfigError):
        B.load("harmbench", DATA, limit=-1)


# ----------------------------------------------------------------------------- reasoning loaders
@needs_data
@pytest.mark.parametrize("name, n", [("aime24", 30), ("math500", 500)])
def test_math_prompts_exact(loaded, name, n):
    recs = loaded(name)
    assert len(recs) == n
    for r in recs:
        assert r.prompt == MATH_PREFIX + r.meta["problem"]
    assert all(r.meta["answer"] for r in recs)


@needs_data
def test_aime24_answers(loaded):
    recs = loaded("aime24")
    assert recs[0].meta["answer"] == "204" and recs[0].meta["aime_id"] == 60


@needs_data
def test_gsm8k_prompt_and_gold(loaded):
    recs = loaded("gsm8k")
    assert len(recs) == 1319
    r = recs[0]
    assert r.prompt == ("Given the following problem, reason and give a final answer to the problem.\n"
                        f"Problem: {r.meta['question']}\n"
                        "Your response should end with \"The final answer is [answer]\" where [answer] "
                        "is the response to the problem.")
    assert r.meta["answer"] == "18"
    assert all("," not in x.meta["answer"] and float(x.meta["answer"]) == float(x.meta["answer"])
               for x in recs)
    assert sum("," in x.meta["question"] for x in recs) > 0


def test_gsm8k_gold_parsing():
    assert gsm8k.gold_answer("so 3 * 2 = <<3*2=6>>6\n#### 6") == "6"
    assert gsm8k.gold_answer("lots\n#### 1,450,000") == "1450000"
    assert gsm8k.gold_answer("#### -3") == "-3"
    with pytest.raises(DataError):
        gsm8k.gold_answer("no marker 5")


# ----------------------------------------------------------------------------- GPQA
GPQA_ROWS = [
    {"Record ID": f"rec{i}", "Question": f"Which value is right for case {i}?",
     "Correct Answer": f"right {i}", "Incorrect Answer 1": f"wrong a{i}",
     "Incorrect Answer 2": f"wrong b{i}", "Incorrect Answer 3": f"wrong c{i}", "Subdomain": "x"}
    for i in range(12)
]


@pytest.fixture
def gpqa_csv(tmp_path):
    p = tmp_path / "gpqa_diamond.csv"
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(GPQA_ROWS[0]))
        w.writeheader()
        w.writerows(GPQA_ROWS)
    return p


def test_gpqa_shuffle_recorded_and_deterministic(gpqa_csv):
    recs = gpqa_diamond.load(gpqa_csv)
    assert len(recs) == 12
    for r, row in zip(recs, GPQA_ROWS):
        m = r.meta
        assert sorted(m["permutation"]) == [0, 1, 2, 3]
        assert m["choices"][m["permutation"].index(0)] == row["Correct Answer"]
        assert m["choices"]["ABCD".index(m["correct_letter"])] == row["Correct Answer"]
        assert f"({m['correct_letter']}) {row['Correct Answer']}" in r.prompt
        assert r.prompt.startswith(GPQA_PREFIX + row["Question"] + "\nAnswer Choices: (A) ")
        assert m["shuffle_seed"] == gpqa_diamond.SHUFFLE_SEED
    assert len({r.meta["correct_letter"] for r in recs}) > 1  # really shuffled
    again = gpqa_diamond.load(gpqa_csv.parent)  # a folder holding gpqa_diamond.csv works too
    assert [r.meta["permutation"] for r in again] == [r.meta["permutation"] for r in recs]
    assert [r.id for r in again] == [r.id for r in recs]
    other = gpqa_diamond.load(gpqa_csv, seed=1)
    assert [r.meta["permutation"] for r in other] != [r.meta["permutation"] for r in recs]


def test_gpqa_jsonl_snake_case_and_limit(tmp_path):
    p = tmp_path / "mine.jsonl"
    rows = [{k.lower().replace(" ", "_"): v for k, v in row.items()} for row in GPQA_ROWS[:3]]
    p.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    recs = gpqa_diamond.load(p, limit=2)
    assert len(recs) == 2 and recs[0].meta["record_id"] == "rec0"


def test_gpqa_absent_is_a_clear_data_error(tmp_path):
    with pytest.raises(DataError, match="gated") as e:
        gpqa_diamond.load(tmp_path)
    assert "data_dir" in str(e.value)


def test_gpqa_bad_row_is_a_data_error(tmp_path):
    p = tmp_path / "g.jsonl"
    p.write_text(json.dumps({"Question": "q?", "Correct Answer": "x"}), encoding="utf-8")
    with pytest.raises(DataError, match="incorrect_answer_1"):
        gpqa_diamond.load(p)


def test_gpqa_score(gpqa_csv):
    r = gpqa_diamond.load(gpqa_csv)[0]
    good, bad = r.meta["correct_letter"], next(c for c in "ABCD" if c != r.meta["correct_letter"])
    assert B.score(r, f"<think>x</think>The answer is \\boxed{{{good}}}")["correct"]
    assert not B.score(r, f"<think>x</think>\\boxed{{{bad}}}")["correct"]
    assert B.score(r, f"<think>\\boxed{{{bad}}}</think>So the answer is ({good}).")["correct"]
    assert not B.score(r, f"<think>\\boxed{{{good}}}</think>So the answer is ({bad}).")["correct"]


# ----------------------------------------------------------------------------- math scoring
EQUAL = [("\\frac{1}{2}", "0.5"), ("10\\%", "10"), ("1,000", "1000"), ("\\dfrac{3}{4}", "\\frac34"),
         ("25", "025"), ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})")]
DIFFERENT = [("\\frac{1}{3}", "0.5"), ("12", "21"), ("1,2", "12"), ("0.5", "5")]


@pytest.mark.parametrize("pred, gold", EQUAL)
def test_math_equal_forms(pred, gold):
    s = scoring.score_math(f"<think>work</think>\n\nSo the answer is $\\boxed{{{pred}}}$.", gold)
    assert s["correct"] and s["reason"] == "ok" and s["pred"] == pred


@pytest.mark.parametrize("pred, gold", DIFFERENT)
def test_math_different_forms(pred, gold):
    s = scoring.score_math(f"<think>work</think>\\boxed{{{pred}}}", gold)
    assert not s["correct"] and s["reason"] == "wrong"


@pytest.mark.parametrize("pred, gold", EQUAL[:4])
def test_fallback_normaliser_alone(monkeypatch, pred, gold):
    monkeypatch.setattr(scoring, "_mv_equal", lambda a, b: False)
    assert scoring.math_equal(pred, gold)


@pytest.mark.parametrize("pred, gold", DIFFERENT)
def test_fallback_normaliser_rejects(monkeypatch, pred, gold):
    monkeypatch.setattr(scoring, "_mv_equal", lambda a, b: False)
    assert not scoring.math_equal(pred, gold)


def test_last_boxed_nested_and_last():
    text = "\\boxed{1} then \\boxed{\\frac{x^{2}}{\\sqrt{y}}} done"
    assert scoring.last_boxed(text) == "\\frac{x^{2}}{\\sqrt{y}}"
    assert scoring.last_boxed("\\boxed 7.") == "7."
    assert scoring.last_boxed("\\boxed{never closed") is None
    assert scoring.last_boxed("no box") is None


def test_math_answer_inside_think_is_ignored():
    s = scoring.score_math("<think>maybe \\boxed{21}</think> I conclude \\boxed{12}", "21")
    assert not s["correct"] and s["pred"] == "12"
    s = scoring.score_math("<think>it is \\boxed{21}</think> It is twenty-one.", "21")
    assert s == {"correct": False, "pred": None, "gold": "21", "reason": "no_boxed"}


@pytest.mark.parametrize("scorer, gold", [(scoring.score_math, "21"), (scoring.score_number, "21"),
                                          (scoring.score_letter, "B")])
def test_no_think_close_is_wrong_with_reason(scorer, gold):
    s = scorer(f"<think>The final answer is 21. \\boxed{{{gold}}} (B)", gold)
    assert s["correct"] is False and s["reason"] == "no_think_close"


# ----------------------------------------------------------------------------- GSM8K scoring
@pytest.mark.parametrize("answer, gold, ok", [
    ("The final answer is 18", "18", True),
    ("The final answer is $1,234.", "1234", True),
    ("The final answer is: \\boxed{18}", "18", True),
    ("The final answer is 18.00 dollars", "18", True),
    ("The final answer is -3", "-3", True),
    ("The final answer is 18. (I checked it 3 times.)", "18", True),
    ("The final answer is 17. Check: 18 - 1 = 17", "18", False),
    ("I computed 4 then 18 in total.", "18", True),   # fallback: last number
    ("The final answer is 81", "18", False),
])
def test_gsm8k_scoring(answer, gold, ok):
    assert scoring.score_number(f"<think>The final answer is 99</think>{answer}", gold)["correct"] is ok


def test_gsm8k_no_number_and_think_only():
    assert scoring.score_number("<think>18</think>no idea", "18")["reason"] == "no_number"
    s = scoring.score_number("<think>The final answer is 18</think>The final answer is 17", "18")
    assert not s["correct"] and s["pred"] == "17"


@needs_data
def test_score_dispatches_on_source(loaded):
    r = loaded("gsm8k")[0]
    assert B.score(r, "<think>…</think>The final answer is 18")["correct"]
    m = loaded("math500")[0]
    assert B.score(m, f"<think>…</think>\\boxed{{{m.meta['answer']}}}")["correct"]
    h = loaded("harmbench")[0]
    assert B.score(h, "no close") == {"think_closed": False}


# ----------------------------------------------------------------------------- letters
@pytest.mark.parametrize("text, letter", [
    ("\\boxed{C}", "C"), ("\\boxed{\\text{(D)}}", "D"), ("\\boxed{B) 42 kJ}", "B"),
    ("I pick (A). Final: C", "C"), ("Answer: b", None), ("\\boxed{42} so A", "A"),
])
def test_extract_letter(text, letter):
    assert scoring.extract_letter(text) == letter


def test_record_roundtrip_keeps_meta(gpqa_csv):
    r = gpqa_diamond.load(gpqa_csv)[0]
    back = Record.from_json(json.loads(json.dumps(r.to_json())))
    assert back == r and B.score(back, f"</think>\\boxed{{{r.meta['correct_letter']}}}")["correct"]
