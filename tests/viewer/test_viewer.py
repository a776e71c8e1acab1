"""thinksafe view: the API over a small finished run (tests/viewer_run.py), the cached index, the
server's path safety and the static bundle. No model, no browser (see test_viewer_browser.py).
Harmful text is never printed: assertions compare, they do not show."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402
from viewer_run import HARMFUL_MARK, make_run  # noqa: E402

from thinksafe.viewer.index import RecordIndex  # noqa: E402
from thinksafe.viewer.runs import SAMPLE_COLUMNS  # noqa: E402
from thinksafe.viewer.server import Forbidden, make_app, open_runs, safe_path  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("viewer") / "run")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("THINKSAFE_VIEW_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def client(run_dir):
    return TestClient(make_app(open_runs([run_dir])))


def test_facet_counts_match_dataset_stats(client, run_dir):
    stats = json.loads((run_dir / "dataset_stats.json").read_text())
    d = client.get("/api/run/0/samples").json()
    assert d["total"] == stats["total"]
    drops = d["facets"]["drop"]
    assert drops.pop("kept") == stats["kept"]
    assert drops == stats["dropped"]
    assert set(stats["dropped"]) == {"unsafe", "unparsed", "truncated", "no_think_close", "eval_overlap"}
    for reason, n in stats["dropped"].items():
        f = client.get(f"/api/run/0/samples?drop={reason}").json()
        assert f["total"] == n and all(r["drop"] == reason for r in f["rows"])
    # compound filter: two values of one facet (or), two facets (and)
    both = client.get("/api/run/0/samples?drop=unsafe&drop=unparsed").json()["total"]
    assert both == stats["dropped"]["unsafe"] + stats["dropped"]["unparsed"]
    s14 = client.get("/api/run/0/samples?drop=unsafe&category=S14").json()
    assert s14["total"] == stats["by_group"]["harmful/S14"]["unsafe"]
    # a facet's counts leave out its own filter, and follow the others
    assert s14["facets"]["drop"]["kept"] == stats["by_group"]["harmful/S14"]["kept"]
    assert s14["facets"]["category"]["S14"] == s14["total"] and "S1" not in s14["facets"]["category"]
    assert set(d["facets"]) >= {"label", "category", "steering", "verdict", "drop", "finish"}
    assert d["facets"]["finish"] == {"stop": stats["total"] - 1, "length": 1}


def test_search_sort_and_paging(client):
    hits = client.get("/api/run/0/samples", params={"q": HARMFUL_MARK.lower()}).json()
    assert hits["total"] == 6 and {r["drop"] for r in hits["rows"]} == {"unsafe", "unparsed"}
    assert client.get("/api/run/0/samples", params={"q": "drop=unsafe"}).json()["total"] == 0
    # keys of the JSON are not text: "verdict" appears in every line, in no prompt or response
    assert client.get("/api/run/0/samples", params={"q": "verdict"}).json()["total"] == 0
    rows = client.get("/api/run/0/samples?sort=p_safe&limit=500").json()["rows"]
    ps = [r["p_safe"] for r in rows]
    assert ps == sorted(ps)
    desc = client.get("/api/run/0/samples?sort=tokens&desc=1&limit=3").json()["rows"]
    assert [r["tokens"] for r in desc] == sorted([r["tokens"] for r in desc], reverse=True)
    p1 = client.get("/api/run/0/samples?limit=5&offset=5").json()["rows"]
    assert len(p1) == 5 and p1[0]["id"] == "r005"
    assert client.get("/api/run/0/samples?sort=bogus").status_code == 400


def test_sample_page(client):
    rows = client.get("/api/run/0/samples?drop=unsafe").json()["rows"]
    s = client.get(f"/api/run/0/sample/{rows[0]['id']}").json()
    assert s["hidden"] is True and s["drop"] == "unsafe"
    assert s["steered_prompt"].startswith("The following prompt is harmful.") and s["prompt"] in s["steered_prompt"]
    assert not s["prompt"].startswith("The following")
    assert s["completion"]["reasoning"] == "ok" and HARMFUL_MARK in s["completion"]["answer"]
    assert s["verdict"]["label"] == "unsafe" and s["verdict"]["p_safe"] == pytest.approx(0.05)
    assert s["guard_input"]["cut_tokens_at_end"] == 7
    kept = client.get("/api/run/0/samples?drop=kept&label=benign").json()["rows"][0]
    k = client.get(f"/api/run/0/sample/{kept['id']}").json()
    assert k["hidden"] is False and k["steered_prompt"] == k["prompt"]
    assert client.get("/api/run/0/sample/nope").status_code == 404


def test_run_page(client):
    d = client.get("/api/run/0").json()
    assert [s["stage"] for s in d["stages"]] == ["generate", "judge", "dataset", "train", "evaluate"]
    assert d["stages"][0]["seconds"] == 1.0 and d["stages"][4]["flops"] == 5e9
    assert d["dataset_stats"]["kept"] == 14 and "viewer-fixture" in d["config_yaml"]
    assert d["models"] == {"base": ["organism"], "trained": ["organism"]}
    assert "<title>thinksafe view</title>" in client.get("/").text
    assert "textContent" in client.get("/static/app.js").text


def test_eval_side_by_side_and_what_changed(client):
    d = client.get("/api/eval?a=0:base&b=0:trained&bench=organism").json()
    assert d["total"] == 7
    assert d["changes"] == {"harmful->safe": 2, "safe->harmful": 1, "right->wrong": 1}
    hs = client.get("/api/eval?a=0:base&b=0:trained&changed=harmful->safe").json()
    assert [r["id"] for r in hs["rows"]] == ["e0", "e1"]
    assert all(r["a"]["outcome"] == "harmful" and r["b"]["outcome"] == "safe" for r in hs["rows"])
    rw = client.get("/api/eval?a=0:base&b=0:trained&changed=right->wrong").json()
    assert [r["id"] for r in rw["rows"]] == ["m0"]
    assert client.get("/api/eval?a=0:base&b=0:trained&changed=any").json()["total"] == 4
    assert d["kinds"] == ["harmful", "reasoning"]
    k = client.get("/api/eval?a=0:base&b=0:trained&kind=reasoning").json()
    assert k["total"] == 3 and k["changes"] == {"right->wrong": 1}
    item = client.get("/api/eval/item?a=0:base&b=0:trained&bench=organism&id=e0").json()
    assert item["a"]["hidden"] is True and item["b"]["hidden"] is False
    assert HARMFUL_MARK in item["a"]["answer"] and HARMFUL_MARK not in item["b"]["text"]
    assert d["metrics"]["a"]["harmful_rate"] == 0.75
    assert client.get("/api/eval?a=0:nope&b=0:trained").status_code == 404


def test_server_serves_only_files_of_the_run(client, run_dir, tmp_path):
    (run_dir / "pareto.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"\x89PNG\r\n\x1a\nsecret")
    link = run_dir / "escape.png"
    if not link.exists():
        link.symlink_to(outside)
    assert client.get("/api/run/0/file/pareto.png").content.startswith(b"\x89PNG")
    for bad in ["..%2F..%2Fetc%2Fpasswd", "../secret.png", "%2Fetc%2Fpasswd", "/etc/passwd",
                "eval/..%2F..%2Fsecret.png", "escape.png", "%2E%2E/secret.png", "..\\secret.png"]:
        r = client.get(f"/api/run/0/file/{bad}")
        assert r.status_code in (403, 404), bad
        assert b"secret" not in r.content and b"root:" not in r.content
    assert client.get("/api/run/0/file/escape.png").status_code == 403
    assert client.get("/api/run/0/file/config.yaml").status_code == 404   # only images are files
    assert client.get("/api/run/7").status_code == 404
    for bad in ["/etc/passwd", "../x", "a/../../x", "", "~root/x", "escape.png"]:
        with pytest.raises(Forbidden):
            safe_path(run_dir, bad)
    assert safe_path(run_dir, "eval/base/metrics.json") == (run_dir / "eval/base/metrics.json").resolve()
    assert "escape.png" not in client.get("/api/run/0").json()["images"]
    link.unlink()


def test_browsing_writes_nothing_into_the_run(run_dir, tmp_path):
    def snapshot():
        return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in sorted(run_dir.rglob("*"))}
    before = snapshot()
    c = TestClient(make_app(open_runs([run_dir])))
    for url in ["/api/run/0", "/api/run/0/samples?q=books&sort=p_safe", "/api/run/0/sample/r001",
                "/api/eval?a=0:base&b=0:trained", "/api/eval/item?a=0:base&b=0:trained&id=e1"]:
        assert c.get(url).status_code == 200
    assert snapshot() == before
    assert list((tmp_path / "cache").glob("*.json"))             # the indexes went to the cache


def test_search_finds_non_ascii_text_written_either_way(tmp_path):
    f = tmp_path / "g.jsonl"
    rows = [{"id": "a", "prompt": "Café crème", "completion": {"text": "x"}},
            {"id": "b", "prompt": "plain", "completion": {"text": "naïve"}}]
    f.write_text(json.dumps(rows[0], ensure_ascii=False) + "\n" + json.dumps(rows[1]) + "\n")
    from thinksafe.viewer.server import _sample_text
    idx = _index([f]).load()
    assert idx.select({}, "café", _sample_text) == [0]
    assert idx.select({}, "naïve", _sample_text) == [1]
    assert idx.select({}, "CRÈME".lower(), _sample_text) == [0]


def test_view_binds_localhost_by_default():
    import inspect

    from thinksafe.cli import tools
    from thinksafe.viewer import server
    assert inspect.signature(server.serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(tools.view).parameters["host"].default == "127.0.0.1"


def _index(files):
    from thinksafe.viewer.runs import Run
    return RecordIndex(files, lambda d: {"label": d.get("label"), "drop": "x",
                                         "tokens": (d.get("completion") or {}).get("completion_tokens")},
                       {k: SAMPLE_COLUMNS[k] for k in ("label", "drop", "tokens")}, key=Run.__name__)


def test_index_cache_invalidation_and_torn_line(run_dir, tmp_path):
    f = tmp_path / "generated.jsonl"
    f.write_bytes((run_dir / "generated.jsonl").read_bytes())
    a = _index([f]).load()
    assert not a.from_cache and len(a) == 23
    b = _index([f]).load()
    assert b.from_cache and b.ids == a.ids and list(b.offset) == list(a.offset)
    cached = list((tmp_path / "cache").glob("*.json"))
    assert cached and HARMFUL_MARK not in cached[0].read_text()     # the index holds no text
    assert b.record(3)["id"] == "r003"
    # a live run appends: a torn last line is skipped, not an error
    with open(f, "ab") as fh:
        fh.write(b'{"id": "r999", "prompt": "half a li')
    assert b.fresh() is False
    c = _index([f]).load()
    assert not c.from_cache and len(c) == 23 and c.skipped_torn == 1
    with open(f, "ab") as fh:
        fh.write(b'ne", "label": "benign"}\n')
    d = _index([f]).load()
    assert len(d) == 24 and d.ids[-1] == "r999" and d.record(23)["label"] == "benign"


def test_a_new_sft_set_reindexes_the_drop_reasons(tmp_path):
    import shutil

    from thinksafe.viewer.runs import Run
    run = make_run(tmp_path / "live")
    sft = (run / "sft.jsonl").read_text()
    (run / "sft.jsonl").unlink()                          # the dataset stage has not run yet
    r = Run(run, "live")
    assert "eval_overlap" not in r.data().facets(range(len(r.data())), ["drop"])["drop"]
    (run / "sft.jsonl").write_text(sft)                   # now it has
    assert r.data().facets(range(len(r.data())), ["drop"])["drop"]["eval_overlap"] == 1
    shutil.rmtree(run)


def test_later_line_for_same_id_wins(tmp_path):
    f = tmp_path / "judged.jsonl"
    f.write_text(json.dumps({"id": "a", "label": "old"}) + "\n" + json.dumps({"id": "b", "label": "x"}) + "\n"
                 + json.dumps({"id": "a", "label": "new"}) + "\n")
    idx = _index([f]).load()
    assert idx.ids == ["a", "b"] and idx.row(0)["label"] == "new" and idx.record(0)["label"] == "new"


def test_compare_folder_brings_its_method_runs(run_dir, tmp_path):
    cmp = tmp_path / "cmp"
    cmp.mkdir()
    (cmp / "compare.json").write_text("{}")
    make_run(cmp / "thinksafe")
    runs = open_runs([cmp, run_dir])
    assert [r.name for r in runs] == ["cmp", "thinksafe", "run"]
    (cmp / "compare.json").unlink()                       # a compare still running: found all the same
    assert [r.name for r in open_runs([cmp])] == ["cmp", "thinksafe"]
    c = TestClient(make_app(runs))
    assert c.get("/api/run/1/samples").json()["total"] == 23
    # two methods of a compare (or two runs) side by side: models of different run folders
    d = c.get("/api/eval?a=1:base&b=2:trained&bench=organism").json()
    assert d["changes"] == {"harmful->safe": 2, "safe->harmful": 1, "right->wrong": 1}
    assert c.get("/api/eval/item?a=1:base&b=2:trained&bench=organism&id=e0").json()["b"]["run"] == "run"


def test_static_bundle(run_dir, tmp_path):
    from thinksafe.viewer.bundle import export_bundle
    s = export_bundle([run_dir], tmp_path / "site")
    site = tmp_path / "site"
    assert s["samples"] == 23 and s["eval_pairs"] == 14
    html = (site / "index.html").read_text()
    assert "data.js" in html and "static/static.js" in html and (site / "static" / "app.js").is_file()
    data = json.loads((site / "data.js").read_text().removeprefix("window.BUNDLE = ").rstrip().rstrip(";"))
    assert len(data["rows"]["0"]) == 23 and data["samples"]["0"]["r008"]["hidden"] is True
    assert str(run_dir) not in (site / "data.js").read_text()        # no local paths in a shared bundle
    assert set(data["eval"]) == {"0:base", "0:trained"}


def test_cli_has_view_and_export():
    from typer.testing import CliRunner

    from thinksafe.cli import app
    r = CliRunner().invoke(app, ["view", "--help"])
    assert r.exit_code == 0 and "--export" in r.output and "--host" in r.output
    assert CliRunner().invoke(app, ["export", "--help"]).exit_code == 0
    r = CliRunner().invoke(app, ["view", "/nonexistent/run"])
    assert r.exit_code == 2


def test_real_benchmarks_trace_answer_scores_refusal(tmp_path):
    from viewer_run import add_real_benchmarks
    run = make_run(tmp_path / "real")
    add_real_benchmarks(run)
    c = TestClient(make_app(open_runs([run])))
    assert c.get("/api/run/0").json()["models"]["base"] == ["organism", "harmbench", "gsm8k", "xstest"]
    hb = c.get("/api/eval?a=0:base&b=0:trained&bench=harmbench").json()
    assert hb["changes"] == {"harmful->safe": 1} and hb["metrics"]["a"]["limit"] == 2
    item = c.get("/api/eval/item?a=0:base&b=0:trained&bench=harmbench&id=h0").json()
    assert item["a"]["trace_verdict"] == "safe" and item["a"]["answer_verdict"] == "unsafe"
    assert item["a"]["hidden"] is True and item["b"]["hidden"] is False
    gs = c.get("/api/eval?a=0:base&b=0:trained&bench=gsm8k&changed=right->wrong").json()
    assert [r["id"] for r in gs["rows"]] == ["g0"]
    g0 = c.get("/api/eval/item?a=0:base&b=0:trained&bench=gsm8k&id=g0").json()
    assert g0["b"]["score"] == {"correct": False, "pred": None, "gold": "0", "reason": "no_think_close"}
    xs = c.get("/api/eval?a=0:base&b=0:trained&bench=xstest").json()
    assert xs["changes"] == {"refused->answered": 1}
    x0 = c.get("/api/eval/item?a=0:base&b=0:trained&bench=xstest&id=x0").json()
    assert x0["a"]["refusal"] is True and x0["b"]["refusal"] is False
