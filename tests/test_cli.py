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
