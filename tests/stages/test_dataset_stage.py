"""dataset stage: which judged samples are kept, every drop counted, original prompts kept."""

from __future__ import annotations

import json

import pytest

from thinksafe.config import load_config

from thinksafe import steering
from thinksafe.errors import DataError
from thinksafe.io import append_jsonl, read_jsonl
from thinksafe.organism import world
from thinksafe.stages import dataset
from thinksafe.types import SAFE, UNPARSED, UNSAFE, Completion, Record, Verdict


HARM_PROMPT = "How do I rob a bank?"
REFUSAL = world.think("The user wants to rob a bank. This is non-violent crimes (S2).", world.REFUSAL_ANSWER)
ANSWER = world.think("Start with 3. 3 + 2 = 5.", "The answer is 5.")


def rec(i, label="harmful", text=REFUSAL, finish="stop", verdict=SAFE, category="S2", steered=True,
        prompt=HARM_PROMPT, completion=True):
    return Record(
        id=f"r{i}", prompt=prompt, label=label, source="test",
        meta={"category": category} if category else {},
        steering="prefix" if steered and label == "harmful" else None,
        completion=Completion(text, finish, 10, 20) if completion else None,
        verdict=Verdict(verdict, 0.9 if verdict == SAFE else 0.1) if verdict else None)


def test_drop_reasons():
    assert dataset.drop_reason(rec(0)) is None
    assert dataset.drop_reason(rec(1, finish="length")) == "truncated"
    assert dataset.drop_reason(rec(2, text=REFUSAL.replace("</think>", ""))) == "no_think_close"
    assert dataset.drop_reason(rec(3, verdict=UNPARSED)) == "unparsed"
    assert dataset.drop_reason(rec(4, verdict=UNSAFE)) == "unsafe"
    assert dataset.drop_reason(rec(5, verdict=None)) == "no_verdict"
    assert dataset.drop_reason(rec(6, completion=False)) == "no_completion"
    assert dataset.drop_reason(rec(7, verdict="weird")) == "unsafe"    # anything but safe is dropped


def test_completeness_is_checked_before_the_verdict():
    # a truncated response that the guard called safe is still dropped, as truncated
    assert dataset.drop_reason(rec(0, finish="length", verdict=SAFE)) == "truncated"
    assert dataset.drop_reason(rec(1, finish="length", verdict=UNSAFE)) == "truncated"
    assert dataset.drop_reason(rec(2, text="<think>\nhmm", verdict=UNSAFE)) == "no_think_close"


def _records():
    return [
        rec(0),                                                               # kept harmful
        rec(1),                                                               # kept harmful
        rec(2, finish="length"),                                              # truncated
        rec(3, text=REFUSAL.split("</think>")[0]),                            # no_think_close
        rec(4, verdict=UNPARSED),                                             # unparsed
        rec(5, verdict=UNSAFE, category="S9"),                                # unsafe
        rec(6, label="benign", text=ANSWER, category=None, prompt="Tom has 3 apples."),   # kept
        rec(7, label="benign", text=ANSWER, category=None, verdict=UNSAFE),   # unsafe
        rec(8, label="benign", text=ANSWER, category=None, finish="length"),  # truncated
    ]


def test_build_stats():
    kept, stats = dataset.build(_records())
    assert [k["id"] for k in kept] == ["r0", "r1", "r6"]
    assert stats["total"] == 9
    assert stats["kept"] == 3
    assert stats["dropped"] == {"no_think_close": 1, "truncated": 2, "unparsed": 1, "unsafe": 2}
    assert sum(stats["dropped"].values()) + stats["kept"] == stats["total"]
    assert stats["acceptance"] == {"benign": pytest.approx(1 / 3), "harmful": pytest.approx(2 / 6)}
    g = stats["by_group"]
    assert g["harmful/S2"] == {"total": 5, "kept": 2, "truncated": 1, "no_think_close": 1, "unparsed": 1}
    assert g["harmful/S9"] == {"total": 1, "unsafe": 1}
    assert g["benign"] == {"total": 3, "kept": 1, "unsafe": 1, "truncated": 1}
    json.dumps(stats)                                                         # serialisable


def test_kept_row_holds_the_original_prompt():
    r = rec(0)
    steered_text, name = steering.apply("prefix", r.prompt, r.label)
    assert steered_text != r.prompt
    kept, _ = dataset.build([r])
    row = kept[0]
    assert row["prompt"] == HARM_PROMPT
    assert steering.PREFIX not in row["prompt"]
    assert "refuse to answer" not in row["prompt"]
    assert row["response"] == REFUSAL
    assert row["label"] == "harmful" and row["category"] == "S2"
    assert row["steering"] == name == "prefix"
    assert set(row) == {"id", "prompt", "response", "label", "category", "steering"}


def test_unsteered_benign_row():
    kept, _ = dataset.build([rec(0, label="benign", text=ANSWER, category=None, prompt="Q")])
    assert kept[0]["steering"] == "" and kept[0]["category"] == ""


def test_empty_build():
    kept, stats = dataset.build([])
    assert kept == [] and stats["total"] == 0 and stats["kept"] == 0 and stats["acceptance"] == {}


def test_all_dropped_acceptance_zero():
    kept, stats = dataset.build([rec(0, verdict=UNSAFE), rec(1, verdict=UNPARSED)])
    assert kept == []
    assert stats["acceptance"] == {"harmful": 0.0}


NO_DECONTAM = load_config(None, ["dataset.decontaminate=false"])


def test_run_writes_outputs_and_refuses_empty(tmp_path):
    with pytest.raises(DataError, match="missing or empty"):
        dataset.run(NO_DECONTAM, tmp_path, show=False)
    append_jsonl(tmp_path / dataset.INPUT, [r.to_json() for r in _records()])
    stats = dataset.run(NO_DECONTAM, tmp_path, show=False)
    assert stats["kept"] == 3
    rows = read_jsonl(tmp_path / dataset.OUTPUT)
    assert [r["prompt"] for r in rows] == [HARM_PROMPT, HARM_PROMPT, "Tom has 3 apples."]
    assert json.loads((tmp_path / dataset.STATS).read_text())["dropped"]["unsafe"] == 2


def test_run_all_dropped_is_an_error(tmp_path):
    append_jsonl(tmp_path / dataset.INPUT, [rec(0, verdict=UNSAFE).to_json()])
    with pytest.raises(DataError, match="every sample was dropped"):
        dataset.run(NO_DECONTAM, tmp_path, show=False)


def test_record_json_round_trip():
    r = rec(0)
    assert Record.from_json(json.loads(json.dumps(r.to_json()))) == r


def test_decontamination_drops_training_prompts_that_overlap_evaluation(tmp_path):
    from thinksafe.decontam import Decontaminator
    from thinksafe.evalsets import eval_records
    cfg = load_config(None, ["evaluate.n_harmful=10", "evaluate.n_reasoning=5", "evaluate.n_borderline=5"])
    leaked = eval_records(cfg)[0].prompt
    long_eval = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    d = Decontaminator([leaked, long_eval], n=13)
    assert d.overlaps(leaked.upper())                                    # same text, other case
    assert d.overlaps("Prefix: two three four five six seven eight nine ten eleven twelve thirteen fourteen!")
    assert not d.overlaps("three four five six seven eight nine ten eleven twelve thirteen fourteen")  # 12 words
    records = [rec(0), Record("leak", leaked, "benign", "t", {"kind": "reasoning"}, None, 0,
                              rec(0).completion, rec(0).verdict)]
    append_jsonl(tmp_path / dataset.INPUT, [r.to_json() for r in records])
    stats = dataset.run(cfg, tmp_path, show=False)
    assert stats["dropped"] == {"eval_overlap": 1}
    assert stats["decontamination"]["eval_prompts"] == 20
    assert leaked not in (tmp_path / dataset.OUTPUT).read_text()


def test_a_family_without_a_reasoning_block_is_judged_on_its_whole_answer(tmp_path):
    plain = "I cannot help with robbing a bank."
    assert dataset.drop_reason(rec(0, text=plain)) == "no_think_close"            # a thinking family
    assert dataset.drop_reason(rec(0, text=plain), thinks=False) is None
    assert dataset.drop_reason(rec(1, text=plain, verdict=UNSAFE), thinks=False) == "unsafe"
    assert dataset.drop_reason(rec(2, text=plain, finish="length"), thinks=False) == "truncated"
    kept, stats = dataset.build([rec(i, text=plain) for i in range(3)], thinks=False)
    assert len(kept) == 3 and stats["kept"] == 3
    run = tmp_path / "run"
    run.mkdir()
    append_jsonl(run / "judged.jsonl", [rec(i, text=plain).to_json() for i in range(2)])
    for family, n in (("generic", 2), ("qwen3", 0)):
        cfg = load_config(None, [f"out={run}", f"model.family={family}", "dataset.decontaminate=false"])
        if n:
            assert dataset.run(cfg, run, show=False)["kept"] == n
        else:
            with pytest.raises(DataError):
                dataset.run(cfg, run, show=False)
