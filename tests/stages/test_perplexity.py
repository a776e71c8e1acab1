"""perplexity: exp(mean NLL) of the response tokens, masked as in training. On the bundled organism,
its own sampled responses are far more likely than the same responses garbled or mismatched."""

from __future__ import annotations

import json
import math
import random

import pytest

from thinksafe.io import write_jsonl
from thinksafe.organism import ASSETS

BASE = ASSETS / "base"
pytestmark = pytest.mark.skipif(not (BASE / "model.safetensors").is_file(), reason="organism not built")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """A tiny self-generated SFT set from the organism, and two corrupted copies."""
    from thinksafe.backends.hf import HFBackend
    from thinksafe.families import get_family
    from thinksafe.prompts import organism_records
    from thinksafe.runtime import render_prompt
    from thinksafe.types import SamplingParams
    d = tmp_path_factory.mktemp("ppl")
    fam = get_family("organism")
    recs = organism_records(0, "train", 8, 8, 4)
    backend = HFBackend(str(BASE), batch_size=32)
    comps = backend.generate([render_prompt(backend.tokenizer, r.prompt, fam) for r in recs],
                             SamplingParams(temperature=0.6, top_p=0.95, top_k=20, max_new_tokens=120, seed=1))
    own = [{"id": r.id, "prompt": r.prompt, "response": c.text, "label": r.label}
           for r, c in zip(recs, comps) if c.finish_reason == "stop"]
    assert len(own) >= 10
    rng = random.Random(0)
    shifted = [dict(x, response=own[(i + 1) % len(own)]["response"]) for i, x in enumerate(own)]

    def garble(text: str) -> str:
        words = text.split(" ")
        rng.shuffle(words)
        return " ".join(words)
    garbled = [dict(x, response=garble(x["response"])) for x in own]
    paths = {}
    for name, rows in (("own", own), ("shifted", shifted), ("garbled", garbled)):
        paths[name] = d / f"{name}.jsonl"
        write_jsonl(paths[name], rows)
    return paths, own


def test_self_generated_is_lowest(sets, tmp_path):
    from thinksafe.stages.perplexity import perplexity
    paths, own = sets
    ppl = {name: perplexity(p, str(BASE), family="organism", out=tmp_path / f"{name}.jsonl", show=False)
           for name, p in paths.items()}
    assert ppl["own"]["perplexity"] < ppl["shifted"]["perplexity"]
    assert ppl["own"]["perplexity"] < ppl["garbled"]["perplexity"]
    assert ppl["own"]["perplexity"] < 3.0                       # its own samples at T 0.6
    assert ppl["own"]["scored"] == len(own) and ppl["own"]["skipped"] == 0


def test_per_example_rows_and_masking(sets, tmp_path):
    from thinksafe.backends.hf import load_tokenizer
    from thinksafe.families import get_family
    from thinksafe.stages.perplexity import perplexity, summary_path
    from thinksafe.trainers.examples import tokenize_example
    paths, own = sets
    out = tmp_path / "own.jsonl"
    s = perplexity(paths["own"], str(BASE), family="organism", out=out, batch_size=3, show=False)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == len(own) and [r["index"] for r in rows] == list(range(len(own)))
    tok = load_tokenizer(BASE)
    for row, ex in zip(rows, own):
        t = tokenize_example(tok, ex["prompt"], ex["response"], get_family("organism"))
        assert row["tokens"] == sum(x != -100 for x in t["labels"])    # response + EOS only
        assert row["perplexity"] == pytest.approx(math.exp(row["nll"] / row["tokens"]))
        assert row["id"] == ex["id"]
    total = sum(r["nll"] for r in rows) / sum(r["tokens"] for r in rows)
    assert s["perplexity"] == pytest.approx(math.exp(total))
    assert json.loads(summary_path(out).read_text())["perplexity"] == pytest.approx(s["perplexity"])
    assert set(s["by_label"]) == {"harmful", "benign"}
    # batching does not change the numbers
    s1 = perplexity(paths["own"], str(BASE), family="organism", out=tmp_path / "b1.jsonl", batch_size=1,
                    show=False)
    assert s1["perplexity"] == pytest.approx(s["perplexity"], rel=1e-4)


def test_max_length_and_bad_rows(sets, tmp_path):
    from thinksafe.errors import DataError
    from thinksafe.stages.perplexity import perplexity
    paths, own = sets
    s = perplexity(paths["own"], str(BASE), family="organism", out=tmp_path / "x.jsonl", max_length=40,
                   show=False)
    assert s["too_long"] > 0 and s["scored"] + s["too_long"] == len(own)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(DataError, match="response"):
        perplexity(bad, str(BASE), show=False)


def test_cli(sets, tmp_path):
    from typer.testing import CliRunner

    from thinksafe.cli import app
    paths, _ = sets
    out = tmp_path / "cli.jsonl"
    r = CliRunner().invoke(app, ["perplexity", str(paths["own"]), "--model", "organism", "--family", "organism",
                                 "--output-file", str(out), "--quiet", "--limit", "3"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["scored"] == 3
    assert len(out.read_text().splitlines()) == 3
