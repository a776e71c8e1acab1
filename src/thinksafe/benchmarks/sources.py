"""Where each benchmark file lives upstream, and fetching it there when no local copy is found.

``SOURCES`` is the one table: per benchmark, the public file (repository, commit, path), the
URL it is fetched from and the sha256 it must have. The checksums are those of the files in this
project's ``shared/data`` (each byte-identical to the upstream file at the commit named; see
``shared/data/SOURCES.md``). A fetched file is checked against its sha256 before it is used and
cached under the Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``) in ``thinksafe-benchmarks/<benchmark>/<revision>/<file>``; a cached
file is checked again on every use.

``HF_HUB_OFFLINE=1``: only the cache is read; a file absent there is a one-line error.
``THINKSAFE_BENCHMARK_MIRROR``: a base URL (``http://…`` or ``file://…``) laid out as
``<owner>/<repo>/<revision>/<path>`` that replaces ``https://raw.githubusercontent.com`` (an
internal mirror; the offline tests serve ``shared/data`` this way).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from thinksafe.errors import DataError

RAW = "https://raw.githubusercontent.com"
MIRROR_ENV = "THINKSAFE_BENCHMARK_MIRROR"
CACHE_FOLDER = "thinksafe-benchmarks"


@dataclass(frozen=True)
class Source:
    benchmark: str
    file: str                 # where the loader looks under evaluate.data_dir (shared/data layout)
    repo: str                 # GitHub owner/name, or "hf:<dataset id>"
    revision: str | None      # commit; None = not known here (the file is then never fetched)
    path: str                 # path inside the repository
    sha256: str | None        # None = not recorded (never fetched)
    note: str = ""

    @property
    def fetchable(self) -> bool:
        return bool(self.revision and self.sha256 and not self.repo.startswith("hf:"))

    def url(self) -> str | None:
        if not self.fetchable:
            return None
        base = (os.environ.get(MIRROR_ENV) or RAW).rstrip("/")
        return f"{base}/{self.repo}/{self.revision}/{self.path}"

    def public_url(self) -> str | None:
        """The upstream URL (whatever the mirror), as recorded in a run."""
        return f"{RAW}/{self.repo}/{self.revision}/{self.path}" if self.fetchable else None


SOURCES: dict[str, Source] = {s.benchmark: s for s in [
    Source("harmbench", "safety/thinksafe_harmbench.json", "seanie12/ThinkSafe",
           "fa99448fa4b195939407c3654b5c84eedcb3bd19", "dataset/eval/harmbench.json",
           "bd2de5a1784869ec2ffd9624384952f452c607e6ac950235a81f108ebbe0b4d6",
           "the file the official THINKSAFE code evaluates on"),
    Source("harmbench_text", "safety/harmbench_behaviors_text_test.csv", "allenai/wildteaming",
           "0a94b909079cb6d59df2a6457251d0ff5bb6a026", "data/harmbench/harmbench_behaviors_text_test.csv",
           "75d257b3e7428c52eb7b0154318f455af3e01b09a3794b5e2f3d36054f3c0e29",
           "a vendored copy of centerforaisafety/HarmBench's text test split"),
    Source("strongreject", "safety/strongreject_dataset.csv", "busycalibrating/AdversariaLLM",
           "f970939273ea17b491fadf6001fddc36ed3ae3ff", "data/behavior_datasets/strongreject_dataset.csv",
           "4dd70357e4ff8b5d0ba5ebafecab5d6dd5633ce8046e3dd1c8bd93e64de44381",
           "a vendored copy of alexandrasouly/strongreject's 313-prompt set"),
    Source("wildjailbreak", "safety/wildjailbreak_eval.tsv", "allenai/wildteaming",
           "0897f74313db62bb55560bd9dc94c1d65e1f5456", "data/eval.tsv",
           "eeb7e43aafa0151588f5cb8994b99adc0ee34a57819d92f43a6084f0b7fe4fa4",
           "the WildJailbreak evaluation set (HF allenai/wildjailbreak, config eval)"),
    Source("xstest", "safety/xstest_prompts.csv", "paul-rottger/exaggerated-safety",
           "d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d", "xstest_prompts.csv",
           "11783fb294ed017473ee53c207d71f2161c7672c8d0b037501e78387f801cb5a", "XSTest v2"),
    Source("aime24", "reasoning/aime24_test.jsonl", "QwenLM/Qwen2.5-Math",
           "a45202bd16f1ec06f433442dc1152d0074773465", "evaluation/data/aime24/test.jsonl",
           "af2b8bd2aa911b6333ad0df32f3ca05c7ae8ed10f1731f4372c8ae26990bf7ac"),
    Source("math500", "reasoning/math500_test.jsonl", "Zhuofeng-Li/math-evaluation-harness",
           "1b9885d817962a8494728376625ce6605772edbd", "data/math500/test.jsonl",
           "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132"),
    Source("gsm8k", "reasoning/gsm8k_test.jsonl", "openai/grade-school-math",
           "3101c7d5072418e28b9008a6636bde82a006892c", "grade_school_math/data/test.jsonl",
           "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"),
    Source("gpqa_diamond", "reasoning/gpqa_diamond.csv", "hf:Idavidrein/gpqa", None, "gpqa_diamond.csv",
           None, "gated, and its authors ask that it not be redistributed in plain text: no revision "
                 "or checksum is recorded here and it is never fetched; place your own copy"),
]}
BY_FILE = {s.file: s for s in SOURCES.values()}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_root() -> Path:
    """The Hugging Face hub cache, read from the environment at call time."""
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if hub:
        return Path(hub).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def cached_path(src: Source) -> Path:
    return cache_root() / CACHE_FOLDER / src.benchmark / str(src.revision) / Path(src.path).name


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


class NotCached(DataError):
    """Offline (``HF_HUB_OFFLINE``) and the file is not in the cache."""


class NotFetched(DataError):
    """Raised inside ``no_download()`` where a file would be downloaded."""


_NO_DOWNLOAD: contextvars.ContextVar[bool] = contextvars.ContextVar("no_download", default=False)


@contextlib.contextmanager
def no_download():
    """Read the cache but download nothing (the preflight: seconds, no network)."""
    token = _NO_DOWNLOAD.set(True)
    try:
        yield
    finally:
        _NO_DOWNLOAD.reset(token)


def fetch(src: Source) -> Path:
    """The cached, checksum-verified copy of ``src`` (downloaded on first use)."""
    if not src.fetchable:
        raise DataError(f"benchmark {src.benchmark}: no pinned public source ({src.note}); set "
                        f"evaluate.data_dir to a folder holding {src.file}")
    dest = cached_path(src)
    if dest.is_file():
        got = sha256_of(dest)
        if got == src.sha256:
            return dest
        if offline():
            raise DataError(f"benchmark {src.benchmark}: checksum mismatch in the cache ({dest}: sha256 "
                            f"{got[:16]}…, expected {src.sha256[:16]}…); delete it and fetch again "
                            "without HF_HUB_OFFLINE")
    url = src.url()
    if offline():
        raise NotCached(f"benchmark {src.benchmark}: not in the cache ({dest}) and HF_HUB_OFFLINE is set; "
                        f"unset it to fetch {url}, or set evaluate.data_dir to a folder holding {src.file}")
    if _NO_DOWNLOAD.get():
        raise NotFetched(f"benchmark {src.benchmark}: will be fetched from {url} on first use")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            data = resp.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(f"benchmark {src.benchmark}: cannot fetch {url}: {reason}; check the network "
                        f"(or set evaluate.data_dir to a folder holding {src.file})") from None
    got = hashlib.sha256(data).hexdigest()
    if got != src.sha256:
        raise DataError(f"benchmark {src.benchmark}: checksum mismatch for {url}: sha256 {got[:16]}…, "
                        f"expected {src.sha256[:16]}… (not cached; the source changed or the download "
                        "is corrupt)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return dest


def provenance(benchmark: str, path: Path) -> dict:
    """What a run records about the file a benchmark was read from: where it came from, its sha256
    and whether that is the recorded one."""
    src = SOURCES.get(benchmark)
    digest = sha256_of(path)
    fetched = src is not None and src.fetchable and Path(path) == cached_path(src)
    out = {"file": str(path), "sha256": digest, "fetched": fetched}
    if src is not None:
        out["source"] = {k: v for k, v in asdict(src).items() if k not in {"benchmark", "file"}}
        out["source"]["url"] = src.public_url()
        out["checksum"] = ("not recorded" if src.sha256 is None else
                           "matches the recorded sha256" if digest == src.sha256 else
                           "differs from the recorded sha256 (a local file other than the pinned one)")
    return out


def data_table(benchmarks_by_model: dict[str, dict]) -> tuple[list[str], dict]:
    """The report's "Benchmark data" section (markdown lines) and its summary.json block: per
    benchmark, the file read, its source and sha256, from each model's ``metrics.json``."""
    seen: dict[str, dict] = {}
    for benchmarks in benchmarks_by_model.values():
        for name, m in benchmarks.items():
            if isinstance(m, dict) and m.get("data") and name not in seen:
                seen[name] = m["data"]
    if not seen:
        return [], {}
    lines = ["## Benchmark data", "",
             "| benchmark | source (repository @ commit : path) | sha256 | checksum | read from |",
             "|---|---|---|---|---|"]
    for name, d in seen.items():
        s = d.get("source") or {}
        where = (f"{s.get('repo')} @ {(s.get('revision') or 'revision not known')[:12]} : {s.get('path')}"
                 if s else "—")
        how = "fetched and cached" if d.get("fetched") else "local file"
        lines.append(f"| {name} | {where} | `{d['sha256'][:16]}` | {d.get('checksum', 'no recorded source')} | "
                     f"{how} |")
    return lines + [""], seen
