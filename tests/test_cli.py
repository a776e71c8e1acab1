"""The CLI: help text, and bad input -> one clear error line and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "thinksafe.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_help_lists_every_stage():
    r = _cli("--help")
    assert r.returncode == 0
    for cmd in ["generate", "judge", "dataset", "train", "evaluate", "report", "run", "demo", "organism"]:
        assert cmd in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["run", "does-not-exist.yaml"], "config file not found"),
    (["generate", "CFG", "--set", "train.lora.rank=4"], "Did you mean 'r'"),
    (["judge", "CFG"], "run `thinksafe generate` first"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"out: {tmp_path / 'run'}\n")
    args = [str(cfg) if a == "CFG" else a for a in args]
    r = _cli(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert needle in " ".join(r.stderr.split())
    assert "Traceback" not in r.stderr


def test_existing_outputs_survive_a_bad_rerun(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "generated.jsonl").write_text('{"id": "x"}\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"out: {run}\ngenerate: {{steering: 'no placeholder'}}\n")
    r = _cli("generate", str(cfg), cwd=tmp_path)
    assert r.returncode == 2
    assert (run / "generated.jsonl").read_text() == '{"id": "x"}\n'


def test_version_flag():
    from typer.testing import CliRunner

    from thinksafe import __version__
    from thinksafe.cli import app
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"thinksafe {__version__}"


# ----------------------------------------------------------------------------- one meaning per flag
def _commands():
    """(name, click command) for every command and subcommand."""
    import typer.main

    from thinksafe.cli import app
    root = typer.main.get_command(app)
    out, todo = [], [((), root)]
    while todo:
        path, cmd = todo.pop()
        out.append((" ".join(path), cmd))
        for name, sub in getattr(cmd, "commands", {}).items():
            todo.append(((*path, name), sub))
    return out


def _help(words: str) -> str:
    from typer.testing import CliRunner

    from thinksafe.cli import app
    r = CliRunner().invoke(app, [*words.split(), "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    return r.output


def _option_help(cmd, flag: str) -> str | None:
    for p in cmd.params:
        if flag in getattr(p, "opts", ()):
            return p.help
    return None


def test_help_has_no_type_labels():
    import re
    cmds = _commands()
    assert len(cmds) >= 20
    noise = re.compile(r"<(bool|int|str|path|float|list\[[^]]*\])>|\{[A-Za-z_]+\}|\b(TEXT|INTEGER|BOOLEAN|FLOAT|PATH)\b"
                       r"|--no-[a-z]|\[default: (no-|False|True|None)")
    for words, _ in cmds:
        text = _help(words)
        assert not noise.search(text), f"thinksafe {words} --help: {noise.search(text).group(0)!r}\n{text}"


def test_out_force_and_seed_mean_one_thing():
    from thinksafe.cli.common import FORCE_HELP, FORCE_STAGES_HELP, OUT_HELP, SEED_HELP
    seen = {"--out": 0, "--force": 0, "--seed": 0}
    for words, cmd in _commands():
        for flag, allowed in (("--out", {OUT_HELP}), ("--force", {FORCE_HELP, FORCE_STAGES_HELP}),
                              ("--seed", {SEED_HELP})):
            h = _option_help(cmd, flag)
            if h is not None:
                seen[flag] += 1
                assert h in allowed, f"thinksafe {words} {flag}: {h!r}"
    assert seen["--out"] >= 12 and seen["--force"] >= 8 and seen["--seed"] >= 4, seen
    assert FORCE_HELP.startswith("Rerun this stage") and FORCE_STAGES_HELP.startswith("Rerun this stage")
    for words in ("merge", "export", "perplexity", "organism build", "view"):
        cmd = dict(_commands())[words]
        assert _option_help(cmd, "--out") is None and _option_help(cmd, "--force") is None, words
        assert _option_help(cmd, "--seed") is None, words


def test_defaults_come_from_the_config_not_the_cli():
    """Options that stand for a config value (or a library default) default to None in the CLI."""
    for words, cmd in _commands():
        for p in cmd.params:
            name = (getattr(p, "opts", None) or [""])[0]
            if name in ("--out", "--seed", "--world-seed", "--family", "--batch-size", "--dtype", "--license"):
                assert p.default is None, f"thinksafe {words} {name} declares default {p.default!r}"


def test_demo_and_organism_check_take_out_and_seed_from_the_config(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from thinksafe.cli import app
    from thinksafe.organism import check as C
    seen = {}
    monkeypatch.setattr(C, "measure", lambda folder, **k: seen.update(k) or {})
    monkeypatch.setattr(C, "check", lambda m: [])
    monkeypatch.setattr("thinksafe.stages.report.print_table", lambda *a, **k: None)
    assert CliRunner().invoke(app, ["organism", "check"]).exit_code == 0
    assert seen == {"show": True}                      # measure's own defaults: CHECK_OUT, the config's seed
    CliRunner().invoke(app, ["organism", "check", "--out", str(tmp_path), "--seed", "3"])
    assert seen == {"show": True, "out": str(tmp_path), "seed": 3}


def test_organism_build_takes_its_folder_and_world_seed(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from thinksafe.cli import app
    from thinksafe.organism import build as B
    seen = {}
    monkeypatch.setattr(B, "build", lambda target, spec, log, teacher_spec, check:
                        seen.update(target=target, seed=spec.seed, teacher_seed=teacher_spec.seed) or {"seconds": 0})
    assert CliRunner().invoke(app, ["organism", "build", "--tiny", "--folder", str(tmp_path),
                                    "--world-seed", "7"]).exit_code == 0
    assert seen == {"target": tmp_path, "seed": 7, "teacher_seed": 7}
    assert CliRunner().invoke(app, ["organism", "build", "--tiny", "--folder", str(tmp_path)]).exit_code == 0
    assert seen["seed"] == B.TINY.seed                      # the spec's own seed when none is given
    assert CliRunner().invoke(app, ["organism", "build", "--seed", "7"]).exit_code == 2   # no such option
