"""The README and the docs site: short, built strictly, and naming only commands that exist.

- README.md is at most 12 KB (the manual lives in docs/);
- every `thinksafe COMMAND [SUBCOMMAND]` in a code span or code block of the README or the docs is a
  command of the CLI, and every `--option` written after it on the same line is one of its options;
  every `make TARGET` is a target of the Makefile;
- every config key (`train.micro_batch_tokens`, ...) named in code there is a key of config.py;
- the configuration reference (generated from config.py by docs/gen_config_ref.py) holds every field
  and every comment of config.py;
- `mkdocs build --strict` passes (skipped without mkdocs, unless THINKSAFE_REQUIRE_DOCS=1).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from conftest import ROOT
README_LIMIT = 12 * 1024


def _doc_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _gen():
    spec = importlib.util.spec_from_file_location("gen_config_ref", ROOT / "docs" / "gen_config_ref.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------- README size
def test_readme_is_at_most_12_kb():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes (limit {README_LIMIT}): move detail into docs/"


# ----------------------------------------------------------------------------- commands
def _code_lines(text: str) -> list[str]:
    """The lines of fenced code blocks (continuation backslashes joined) and every inline code span."""
    out: list[str] = []
    in_block, pending = False, ""
    for line in text.splitlines():
        if line.strip().startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if in_block:
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            out.append(re.sub(r"(^|\s)#.*", "", pending + line))     # not the shell comments
            pending = ""
        else:
            out += re.findall(r"`([^`\n]+)`", line)
    return out


_CMD = re.compile(r"(?:^|[\s(])(?:thinksafe|-m thinksafe\.cli|\$\(BIN\)/thinksafe)\s+([a-z][a-z-]*)(.*)$")


def _mentions(text: str) -> list[tuple[str, list[str]]]:
    """(command words, option names) for every `thinksafe ...` invocation in the code of ``text``."""
    found = []
    for line in _code_lines(text):
        for m in _CMD.finditer(line):
            rest = re.split(r"&&|\|\||;|\s#|\s&(?:\s|$)|\|", m.group(2))[0]
            words = [m.group(1)]
            nxt = re.match(r"\s+([a-z][a-z-]*)(?=\s|$)", rest)
            if nxt:
                words.append(nxt.group(1))
            found.append((words, re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest)))
    return found


def _cli():
    import typer.main
    from thinksafe.cli import app
    return typer.main.get_command(app)


def _options(cmd) -> set[str]:
    opts = {"--help"}
    for p in cmd.params:
        opts.update(getattr(p, "opts", []))
        opts.update(getattr(p, "secondary_opts", []))
    return opts


def test_mention_parser_reads_code_only():
    text = ("thinksafe ships a model organism.\n`thinksafe run CONFIG --force train` and "
            "`thinksafe organism check --strict`\n```bash\naccelerate launch --num_processes 2 \\\n"
            "    -m thinksafe.cli train c.yaml --set a=1   # --not-this\n```\n")
    assert _mentions(text) == [(["run"], ["--force"]), (["organism", "check"], ["--strict"]),
                               (["train"], ["--set"])]


def test_every_thinksafe_command_in_the_docs_exists():
    cli = _cli()
    seen, bad = 0, []
    for path in _doc_files():
        for words, options in _mentions(path.read_text()):
            cmd = cli.commands.get(words[0])
            where = f"{path.relative_to(ROOT)}: thinksafe {' '.join(words)}"
            if cmd is None:
                bad.append(f"{where}: no command '{words[0]}'")
                continue
            if hasattr(cmd, "commands") and len(words) > 1 and words[1] in cmd.commands:
                cmd = cmd.commands[words[1]]
            elif hasattr(cmd, "commands") and len(words) > 1 and not words[1].isupper():
                bad.append(f"{where}: no subcommand '{words[1]}' of '{words[0]}'")
                continue
            bad += [f"{where}: no option {o}" for o in options if o not in _options(cmd)]
            seen += 1
    assert seen > 30, "the parser found too few commands: is it still reading the docs?"
    assert not bad, "\n".join(bad)


def test_every_make_target_in_the_docs_exists():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    bad = []
    for path in _doc_files():
        for line in _code_lines(path.read_text()):
            bad += [f"{path.relative_to(ROOT)}: make {t}" for t in re.findall(r"\bmake ([a-z][a-z-]*)", line)
                    if t not in targets]
    assert not bad, "\n".join(bad)


# ----------------------------------------------------------------------------- config reference
def test_config_reference_has_every_field_default_and_comment():
    from thinksafe import config as cfg_mod
    gen = _gen()
    page = gen.render()
    rows = {}
    for line in page.splitlines():
        m = re.match(r"\| `([a-z_.]+)` \| `[^`]*` \| `([^`]*)` \| [^|]*\| (.*) \|$", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3))
    keys = []
    for prefix, cls in gen.sections(cfg_mod):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not dataclasses.is_dataclass(hints[f.name]):
                key = f"{prefix}.{f.name}" if prefix else f.name
                keys.append(key)
                default = f.default_factory() if f.default is dataclasses.MISSING else f.default
                assert key in rows, f"{key} is missing from the configuration reference"
                assert rows[key][0] == gen._yaml(default), key
    assert set(rows) == set(keys)
    assert "train.lora.r" in rows and "grpo.vllm_mode" in rows and "seed" in rows

    # every comment inside a config dataclass of config.py reaches the page
    source = gen.CONFIG_PY.read_text()
    classes = {cls.__name__ for _, cls in gen.sections(cfg_mod)}
    plain = re.sub(r"\\(.)", r"\1", page).replace("&gt;", ">").replace("&lt;", "<").replace("&amp;", "&")
    plain = " ".join(plain.split())
    current, missing = None, []
    for line in source.splitlines():
        m = re.match(r"class (\w+)", line)
        if m:
            current = m.group(1) if m.group(1) in classes else None
            continue
        if current and not line.startswith((" ", "\t")) and line.strip():
            current = None
        if current and "#" in line:
            comment = " ".join(line.split("#", 1)[1].split())
            if comment and comment not in plain:
                missing.append(f"{current}: {comment}")
    assert not missing, "comments of config.py missing from the reference:\n" + "\n".join(missing)


def test_field_comments_reads_trailing_above_and_continued_comments():
    gen = _gen()
    src = ("class A:\n"
           "    # above\n"
           "    x: int = 1      # trailing\n"
           "                    # continued\n"
           "    y: int = 2\n"
           "    # about z, not y\n"
           "    z: str = 'a'  # z's own\n")
    got = gen.field_comments(src)
    assert got[("A", "x")] == "above trailing continued"
    assert got[("A", "y")] == ""
    assert got[("A", "z")] == "about z, not y z's own"


# ----------------------------------------------------------------------------- mkdocs
def test_mkdocs_build_strict(tmp_path):
    try:
        import material  # noqa: F401  (mkdocs-material)
        import mkdocs  # noqa: F401
    except ImportError:
        if os.environ.get("THINKSAFE_REQUIRE_DOCS") == "1":
            pytest.fail("mkdocs-material is not installed (pip install -e '.[docs]')")
        pytest.skip("mkdocs-material is not installed (pip install -e '.[docs]'; make docs)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(tmp_path / "site")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    page = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    assert "train.micro_batch_tokens" in page
    assert "Benchmarks" in (tmp_path / "site" / "benchmarks" / "index.html").read_text()


def test_readme_links_point_at_files():
    text = (ROOT / "README.md").read_text()
    links = [u.split("#")[0] for u in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in u]
    assert "docs/pipeline.md" in links
    missing = [u for u in links if u and not (ROOT / u).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


_KEY = re.compile(r"(?<![\w./-])((?:model|guard|prompts|generate|dataset|train|evaluate|compare|grpo)"
                  r"(?:\.[a-z_]+)+)(?![\w/(-]|\.[a-z])")
_FILE = re.compile(r"\.(md|json|jsonl|yaml|py|csv|png)$")   # compare.md is a file, not a key


def test_every_config_key_in_the_docs_exists():
    """`train.micro_batch_tokens`, `guard.server_url`, ... named in code in the README or the docs are
    keys of config.py (or its sections)."""
    from thinksafe.config import RunConfig

    def exists(dotted: str) -> bool:
        cls = RunConfig
        for part in dotted.split("."):
            if not dataclasses.is_dataclass(cls):
                return False
            hints = typing.get_type_hints(cls)
            if part not in hints:
                return False
            cls = hints[part]
        return True

    seen, bad = 0, []
    for path in _doc_files():
        for line in _code_lines(path.read_text()):
            for key in (k for k in _KEY.findall(line) if not _FILE.search(k)):
                seen += 1
                if not exists(key):
                    bad.append(f"{path.relative_to(ROOT)}: {key}")
    assert seen > 50
    assert not bad, "config keys named in the docs that config.py does not have:\n" + "\n".join(bad)
