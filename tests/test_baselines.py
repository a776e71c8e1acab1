"""Baseline training sets: exact DirectRefusal text, rejection sampling keeps all-safe prompts only,
no_reasoning strips the trace, external maps fields; all in the dataset stage's schema."""

from __future__ import annotations

import json

import pytest

from thinksafe import baselines
from thinksafe.errors import DataError
from thinksafe.types import Completion, Record, Verdict

FIELDS = {"id", "prompt", "response", "label", "category", "steering"}


def _rec(rid, label, prompt="p", cat="S1"):
    return Record(id=rid, prompt=prompt, label=label, source="t", meta={"category": cat})


def test_direct_refusal_exact_text_and_harmful_only():
    recs = [_rec("a", "harmful"), _rec("b", "benign", cat=""), _rec("c", "harmful", cat="S9")]
    rows, stats = baselines.direct_refusal(recs)
    assert [r["id"] for r in rows] == ["a", "c"]
    assert all(set(r) == FIELDS for r in rows)
    assert rows[0]["response"] == ("<think>\nI should not answer this question!\n</think>\n\n"
                                   "I'm sorry, but I can't help with that.")
    assert rows[1]["category"] == "S9" and stats["benign_included"] == 0
    benign = [{"id": "b", "prompt": "q", "response": "<think>x</think>\n\n4", "label": "benign",
               "category": "", "steering": ""}]
    rows2, stats2 = baselines.direct_refusal(recs, benign)
    assert len(rows2) == 3 and stats2["benign_included"] == 1


def _sample(pid, s, label):
    return Record(id=f"{pid}-{s}", prompt=f"prompt {pid}", label="harmful", source="t",
                  meta={"prompt_id": pid, "category": "S1"}, steering="none", sample=s,
                  completion=Completion(text=f"<think>t{s}</think>\n\nanswer {pid} {s}", finish_reason="stop"),
                  verdict=Verdict(label=label))


def test_no_steering_keeps_only_prompts_whose_k_samples_are_all_safe():
    judged = [_sample("a", s, "safe") for s in range(3)]
    judged += [_sample("b", 0, "safe"), _sample("b", 1, "unsafe"), _sample("b", 2, "safe")]
    judged += [_sample("c", s, "safe") for s in range(2)]            # only 2 of 3 samples
    judged += [_sample("d", 0, "safe"), _sample("d", 1, "unparsed"), _sample("d", 2, "safe")]
    rows, stats = baselines.select_all_safe(judged, 3, seed=0)
    assert [r["id"] for r in rows] == ["a"]
    assert rows[0]["response"] in {f"<think>t{s}</think>\n\nanswer a {s}" for s in range(3)}
    assert rows[0]["prompt"] == "prompt a" and set(rows[0]) == FIELDS
    assert stats["dropped"] == {"not_all_safe": 2, "missing_samples": 1}
    assert baselines.select_all_safe(judged, 3, seed=0) == (rows, stats)     # deterministic
    picks = {baselines.select_all_safe(judged, 3, seed=s)[0][0]["response"] for s in range(20)}
    assert len(picks) > 1                                                 # a random pick, by seed


def test_no_steering_drops_truncated_samples():
    judged = [_sample("a", 0, "safe"),
              Record(**{**_sample("a", 1, "safe").__dict__,
                        "completion": Completion(text="<think>cut", finish_reason="length")})]
    rows, _ = baselines.select_all_safe(judged, 2, seed=0)
    assert rows == []


def test_no_reasoning_strips_trace_of_harmful_rows_only():
    rows = [{"id": "h", "prompt": "p", "response": "<think>\nThis is harmful.\n</think>\n\nI can't help.",
             "label": "harmful", "category": "S1", "steering": "prefix"},
            {"id": "b", "prompt": "q", "response": "<think>\n2+2\n</think>\n\n4", "label": "benign",
             "category": "", "steering": ""}]
    out, stats = baselines.no_reasoning(rows)
    assert out[0]["response"] == "<think>\n\n</think>\n\nI can't help."
    assert out[1]["response"] == rows[1]["response"]
    assert stats["stripped"] == 1
    with pytest.raises(DataError):
        baselines.strip_reasoning("no trace here")


def test_external_maps_star1_fields(tmp_path, shared_data):
    f = tmp_path / "ext.jsonl"
    f.write_text(json.dumps({"id": "7", "question": "Q?", "response": "<think>r</think>\n\nA"}) + "\n"
                 + json.dumps({"question": "Q2", "response": "no trace"}) + "\n")
    rows, stats = baselines.external(f)
    assert rows[0] == {"id": "7", "prompt": "Q?", "response": "<think>r</think>\n\nA", "label": "harmful",
                       "category": "", "steering": "external"}
    assert stats["without_think_close"] == 1 and rows[1]["id"]
    with pytest.raises(DataError):
        baselines.external(f, prompt_field="instruction")
    star1 = shared_data / "train" / "star1.jsonl"
    if star1.exists():
        rows, stats = baselines.external(star1, limit=5)
        assert len(rows) == 5 and all(r["prompt"] and "</think>" in r["response"] for r in rows)


def test_write_refuses_an_empty_set(tmp_path):
    with pytest.raises(DataError):
        baselines.write(tmp_path, [], {})
    baselines.write(tmp_path / "x", [{"id": "a"}], {"kept": 1})
    assert (tmp_path / "x" / "sft.jsonl").exists() and (tmp_path / "x" / "dataset_stats.json").exists()
