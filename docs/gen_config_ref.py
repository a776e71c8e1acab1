"""The configuration reference, generated from ``src/thinksafe/config.py``.

Keys, types and defaults come from the dataclasses themselves, the descriptions from the comments
beside each field (and the class docstrings), the valid values from ``RANGES`` / ``CHOICES`` of
``thinksafe.validation``: one source, nothing copied by hand. Used two ways:

- as a mkdocs hook (``hooks:`` in mkdocs.yml): the page ``reference/config.md`` is added to the site
  at build time, so it cannot fall behind config.py;
- as a script: ``python docs/gen_config_ref.py`` prints the page.

``tests/test_docs.py`` checks that every field and every comment of config.py is in the page.
"""

from __future__ import annotations

import ast
import dataclasses
import html
import importlib
import io
import sys
import tokenize
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_PY = ROOT / "src" / "thinksafe" / "config.py"
PAGE = "reference/config.md"


def _config_module():
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    return importlib.import_module("thinksafe.config")


def field_comments(source: str) -> dict[tuple[str, str], str]:
    """(class name, field name) -> its comment: the comment lines right above the field, the comment
    at the end of its line, and comment-only lines below it that are indented past the field (the
    continuation of that comment)."""
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()

    def only_comment(n: int) -> bool:      # 1-based line n holds nothing but a comment
        return n in comments and lines[n - 1].lstrip().startswith("#")

    out: dict[tuple[str, str], str] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            parts: list[str] = []
            above, n = [], stmt.lineno - 1
            while n >= 1 and only_comment(n) and _indent(lines[n - 1]) == stmt.col_offset:
                above.insert(0, comments[n])
                n -= 1
            parts += above
            end = stmt.end_lineno or stmt.lineno
            if end in comments and not only_comment(end):
                parts.append(comments[end])
            n = end + 1
            while n <= len(lines) and only_comment(n) and _indent(lines[n - 1]) > stmt.col_offset:
                parts.append(comments[n])
                n += 1
            out[(node.name, stmt.target.id)] = " ".join(p for p in parts if p)
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _type_text(t) -> str:
    if isinstance(t, type) and not typing.get_args(t):
        return t.__name__
    text = str(t).replace("typing.", "")
    return text.replace("NoneType", "None")


def _yaml(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_yaml(x) if not isinstance(x, str) else x for x in v) + "]"
    return repr(v)


def _cell(text: str) -> str:
    """Comment text as a table cell: no HTML, no emphasis, no column breaks."""
    text = html.escape(text, quote=False)
    for ch in ("\\", "*", "_", "|", "`", "[", "]"):
        text = text.replace(ch, "\\" + ch)
    return text


def _valid(key: str) -> str:
    v = importlib.import_module("thinksafe.validation")
    if key in v.RANGES:
        return v.range_text(key)
    if key in v.CHOICES:
        return "one of " + v.choice_text(key)
    return ""


def _comment(comments: dict[tuple[str, str], str], cls: type, name: str) -> str:
    """The comment of a field where it is declared: the class itself, else the shared settings class
    it inherits the field from (``Sampling``, ``VLLMEngine``)."""
    for klass in cls.__mro__:
        if (klass.__name__, name) in comments:
            return comments[(klass.__name__, name)]
    return ""


def sections(cfg_mod=None) -> list[tuple[str, type]]:
    """("", RunConfig) for the top-level keys, then (section path, dataclass) for each section,
    nested ones (train.lora) after their parent."""
    cfg_mod = cfg_mod or _config_module()
    out: list[tuple[str, type]] = []

    def walk(prefix: str, cls: type) -> None:
        out.append((prefix, cls))
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(f"{prefix}.{f.name}" if prefix else f.name, hints[f.name])
    walk("", cfg_mod.RunConfig)
    return out


def render() -> str:
    cfg_mod = _config_module()
    comments = field_comments(CONFIG_PY.read_text())
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from src/thinksafe/config.py by docs/gen_config_ref.py at build time. "
        "Edit the comments in config.py, not this page. -->",
        "",
        "Every key a run config (YAML, or `--set key.sub=value`) accepts, with its default. "
        "Generated from `src/thinksafe/config.py`: the descriptions are the comments beside each "
        "field there, the valid values are `RANGES` / `CHOICES` of `src/thinksafe/validation.py`, checked "
        "(with the rules that tie values together) when a config loads. "
        "An unknown key is an error with a did-you-mean hint. How configs are read: "
        "[Configuration](../configuration.md).",
        "",
    ]
    for prefix, cls in sections(cfg_mod):
        hints = typing.get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            typ = hints[f.name]
            if dataclasses.is_dataclass(typ):
                continue
            key = f"{prefix}.{f.name}" if prefix else f.name
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            rows.append(f"| `{key}` | `{_type_text(typ)}` | `{_yaml(default)}` | {_valid(key)} | "
                        f"{_cell(_comment(comments, cls, f.name))} |")
        if not rows:
            continue
        lines += [f"## `{prefix}`" if prefix else "## Top level", ""]
        doc = cls.__doc__ or ""
        if doc and not doc.startswith(cls.__name__ + "("):     # dataclasses invent a signature
            lines += [" ".join(doc.split()), ""]
        lines += ["| key | type | default | valid | description |", "|---|---|---|---|---|", *rows, ""]
    return "\n".join(lines)


def on_files(files, config):
    """mkdocs hook: add the generated page to the site."""
    from mkdocs.structure.files import File
    files.append(File.generated(config, PAGE, content=render()))
    return files


if __name__ == "__main__":
    sys.stdout.write(render())
