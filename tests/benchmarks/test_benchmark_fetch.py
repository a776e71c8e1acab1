"""Benchmarks fetched where they live: the pinned-source table, the fetch (checksum, cache,
offline), what a run records, and a fresh pip install (no shared/) evaluating the organism on
fetched-and-cached files. The network is never touched: a localhost HTTP server serves
``shared/data``'s files in the upstream layout (``<owner>/<repo>/<commit>/<path>``) and
``THINKSAFE_BENCHMARK_MIRROR`` points the fetch at it."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from thinksafe import benchmarks as B
from thinksafe.benchmarks import sources as S
from thinksafe.errors import DataError
from conftest import ROOT, SHARED_DATA

SHARED = SHARED_DATA
REPO = ROOT
PINNED = [s for s in S.SOURCES.values() if s.fetchable]


def _mirror(root: Path, corrupt: str | None = None) -> Path:
    """shared/data's benchmark files laid out as raw.githubusercontent.com serves them."""
    for s in PINNED:
        dest = root / s.repo / s.revision / s.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = (SHARED / s.file).read_bytes()
        dest.write_bytes(data + b"tampered\n" if s.benchmark == corrupt else data)
    return root


class _Server:
    def __init__(self, root: Path):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.requests: list[str] = []
        self.httpd.requests = self.requests
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        self.server.requests.append(self.path)


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A mirror server, an empty HF cache, and no local data (THINKSAFE_DATA points nowhere)."""
    server = _Server(_mirror(tmp_path / "mirror"))
    monkeypatch.setenv(S.MIRROR_ENV, server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("THINKSAFE_DATA", str(tmp_path / "nowhere"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield server
    server.close()


def test_the_table_records_shared_datas_files():
    """Every pinned checksum is that of the shared/data file (byte-identical to upstream), and the
    same prefix SOURCES.md records; every benchmark module has one row; gpqa has no invented pin."""
    assert set(S.SOURCES) == set(B.BENCHMARKS)
    sources_md = (SHARED / "SOURCES.md").read_text()
    for s in PINNED:
        assert hashlib.sha256((SHARED / s.file).read_bytes()).hexdigest() == s.sha256, s.benchmark
        assert f"sha256[:16]: {s.sha256[:16]}" in sources_md, s.benchmark
        assert f"`{s.repo}` @ `{s.revision}`" in sources_md and s.path in sources_md, s.benchmark
        assert B.get(s.benchmark).FILE == s.file
        assert re.fullmatch(r"[0-9a-f]{40}", s.revision)
    g = S.SOURCES["gpqa_diamond"]
    assert (g.revision, g.sha256, g.fetchable) == (None, None, False)


def test_fetch_verifies_caches_and_reads_offline(served, tmp_path, monkeypatch):
    recs = B.load("xstest", None, 3, split="safe")
    cached = S.cached_path(S.SOURCES["xstest"])
    assert cached.is_file() and str(cached).startswith(str(tmp_path / "hf-cache" / "thinksafe-benchmarks"))
    assert cached.read_bytes() == (SHARED / "safety/xstest_prompts.csv").read_bytes()
    assert recs == B.load("xstest", SHARED, 3, split="safe")          # same records as the local file
    assert served.requests == [f"/paul-rottger/exaggerated-safety/{S.SOURCES['xstest'].revision}/xstest_prompts.csv"]
    # second use: the cache, no request; offline, with the server gone, too
    B.load("xstest", None, 3, split="safe")
    served.close()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert B.load("xstest", None, 3, split="safe") == recs
    assert len(served.requests) == 1
    p = B.data_provenance("xstest", None)
    assert p["fetched"] and p["sha256"] == S.SOURCES["xstest"].sha256
    assert p["checksum"] == "matches the recorded sha256"
    assert p["source"]["url"].startswith("https://raw.githubusercontent.com/paul-rottger/exaggerated-safety/d7bb5bd")


def test_offline_without_the_cache_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("THINKSAFE_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(S.MIRROR_ENV, "http://127.0.0.1:9")            # never asked
    with pytest.raises(DataError) as e:
        B.load("gsm8k", None, 1)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("benchmark gsm8k: not in the cache") and "HF_HUB_OFFLINE" in msg


def test_a_tampered_cache_file_is_refetched_online_and_refused_offline(served, monkeypatch):
    B.load("gsm8k", None, 1)
    cached = S.cached_path(S.SOURCES["gsm8k"])
    cached.write_bytes(cached.read_bytes()[:-10])
    B.load("gsm8k", None, 1)                                          # refetched, verified
    assert S.sha256_of(cached) == S.SOURCES["gsm8k"].sha256 and len(served.requests) == 2
    cached.write_bytes(b"{}\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"^benchmark gsm8k: checksum mismatch in the cache"):
        B.load("gsm8k", None, 1)


def test_an_explicit_data_dir_is_never_replaced_by_a_fetch(served, tmp_path):
    with pytest.raises(DataError, match="leave evaluate.data_dir unset to fetch it"):
        B.load("gsm8k", tmp_path / "mine", 1)
    assert served.requests == []


def _demo(tmp_path: Path, benchmarks: str, limit: int = 2) -> Path:
    from thinksafe.config import demo_config_path
    data = yaml.safe_load(demo_config_path().read_text())
    data["out"] = str(tmp_path / "run")
    data["evaluate"].update({"benchmarks": benchmarks.split(","), "limit": limit, "samples": 1})
    p = tmp_path / "demo.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_a_checksum_mismatch_is_one_line_naming_the_benchmark_exit_2(tmp_path, monkeypatch):
    from thinksafe.cli import app
    server = _Server(_mirror(tmp_path / "mirror", corrupt="strongreject"))
    try:
        monkeypatch.setenv(S.MIRROR_ENV, server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setenv("THINKSAFE_DATA", str(tmp_path / "nowhere"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        r = CliRunner().invoke(app, ["evaluate", str(_demo(tmp_path, "strongreject")), "--quiet"])
    finally:
        server.close()
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 2, r.output
    assert len(errors) == 1, r.output
    assert errors[0].startswith("error: DataError: benchmark strongreject: checksum mismatch for "), r.output
    assert "Traceback" not in r.output
    assert not S.cached_path(S.SOURCES["strongreject"]).exists()     # nothing unverified is cached


def test_preflight_downloads_nothing_and_says_what_it_will_fetch(served, tmp_path):
    from thinksafe.config import load_config
    from thinksafe.preflight import preflight
    cfg = load_config(_demo(tmp_path, "organism,gsm8k"))
    pf = preflight(cfg, ["evaluate"])
    assert pf.ok, pf.problems
    assert any(n.startswith("benchmark gsm8k: will be fetched from ") for n in pf.notes), pf.notes
    assert served.requests == []


def test_dataset_stats_record_each_benchmarks_source(served, tmp_path):
    from thinksafe.config import load_config
    from thinksafe.decontam import evaluation_prompts
    cfg = load_config(_demo(tmp_path, "organism,harmbench,aime24"))
    _, info = evaluation_prompts(cfg)
    assert set(info["sources"]) == {"harmbench", "aime24"}
    for name, d in info["sources"].items():
        assert d["sha256"] == S.SOURCES[name].sha256 and d["fetched"], name
        assert d["source"]["revision"] == S.SOURCES[name].revision


@pytest.mark.slow
def test_a_fresh_pip_install_evaluates_on_fetched_benchmarks(tmp_path):
    """The package built and installed into a new venv outside the repository (its dependencies
    from this environment, nothing from an index), run from a folder with no shared/ anywhere:
    evaluate fetches the files from the (localhost) mirror, verifies and caches them; a second run
    offline, with the mirror gone, reads the cache; the report names each file's source and sha256."""
    pkg, wheels = tmp_path / "pkg", tmp_path / "wheels"       # built from a copy: nothing written here
    shutil.copytree(REPO / "src", pkg / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, pkg / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(wheels), str(pkg)], check=True, cwd=tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)      # pip from ensurepip
    site = next((venv / "lib").glob("python3*/site-packages"))
    outer = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "torch").is_dir())
    py = venv / "bin" / "python"
    wheel = next(wheels.glob("thinksafe-*.whl"))
    clean = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "THINKSAFE_DATA", "HF_HUB_OFFLINE"}}
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, cwd=tmp_path, env=clean)
    assert (site / "thinksafe" / "benchmarks" / "sources.py").is_file()
    # then this environment's packages (torch, transformers, ...), after the venv's own thinksafe
    (site / "_outer_env.pth").write_text(f"{outer}\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    server = _Server(_mirror(tmp_path / "mirror"))
    env = dict(clean)
    env.update({"HF_HUB_CACHE": str(tmp_path / "hf-cache"), S.MIRROR_ENV: server.url,
                "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    where = subprocess.run([str(py), "-c", "import thinksafe; print(thinksafe.__file__)"], env=env, cwd=work,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(site)), where
    cfg = _demo(work, "harmbench,gsm8k")
    try:
        r = subprocess.run([str(venv / "bin" / "thinksafe"), "evaluate", str(cfg), "--quiet"], env=env, cwd=work,
                           capture_output=True, text=True, timeout=900)
    finally:
        server.close()
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(server.requests) == 2, server.requests
    metrics = json.loads((work / "run" / "eval" / "base" / "metrics.json").read_text())
    for name in ("harmbench", "gsm8k"):
        d = metrics["benchmarks"][name]["data"]
        assert d["fetched"] and d["sha256"] == S.SOURCES[name].sha256, d
        assert Path(d["file"]).is_relative_to(tmp_path / "hf-cache")
    # offline, the mirror gone: a new run folder is evaluated from the cache alone
    env["HF_HUB_OFFLINE"] = "1"
    r = subprocess.run([str(venv / "bin" / "thinksafe"), "evaluate", str(cfg), "--quiet", "--out",
                        str(work / "run2")], env=env, cwd=work, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([str(venv / "bin" / "thinksafe"), "report", str(work / "run2"), "--quiet"], env=env,
                       cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    report = (work / "run2" / "report.md").read_text()
    assert "## Benchmark data" in report
    for name in ("harmbench", "gsm8k"):
        s = S.SOURCES[name]
        assert re.search(rf"\| {name} \| {re.escape(s.repo)} @ {s.revision[:12]} : {re.escape(s.path)} \| "
                         rf"`{s.sha256[:16]}` \| matches the recorded sha256 \| fetched and cached \|", report), report
    summary = json.loads((work / "run2" / "summary.json").read_text())
    assert summary["benchmark_data"]["gsm8k"]["sha256"] == S.SOURCES["gsm8k"].sha256


def test_a_file_url_mirror(tmp_path, monkeypatch):
    """THINKSAFE_BENCHMARK_MIRROR may be a file:// folder (an internal copy on a shared disk)."""
    mirror = _mirror(tmp_path / "mirror")
    monkeypatch.setenv(S.MIRROR_ENV, mirror.as_uri())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("THINKSAFE_DATA", str(tmp_path / "nowhere"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert B.load("aime24", None, 2) == B.load("aime24", SHARED, 2)
    assert S.cached_path(S.SOURCES["aime24"]).is_file()


def test_offline_with_an_empty_cache_is_one_line_for_all_benchmarks(tmp_path, monkeypatch):
    from thinksafe.config import load_config
    from thinksafe.preflight import preflight
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("THINKSAFE_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(_demo(tmp_path, "organism,harmbench,xstest,gsm8k"),
                      ["evaluate.refusal_guard_path=organism-guard", "evaluate.refusal_guard_kind=wildguard"])
    problems = [p for p in preflight(cfg, ["evaluate"]).problems if p.startswith("evaluate.data_dir")]
    assert len(problems) == 1, problems
    assert problems[0].startswith("evaluate.data_dir: 3 benchmark files are not in the cache (") and \
        "(harmbench, xstest, gsm8k)" in problems[0], problems
