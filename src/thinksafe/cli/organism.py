"""``thinksafe organism build`` and ``thinksafe organism check``."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated

import typer

from thinksafe.cli.common import OutOpt, SeedOpt, console, friendly, given, organism_command

FolderOpt = Annotated[Path | None, typer.Option("--folder", metavar="FOLDER", help="The organism folder (its "
                                                "base/, guard/ and teacher/; default: the bundled one, or "
                                                "THINKSAFE_ORGANISM).")]


@organism_command("build")
@friendly
def organism_build(folder: FolderOpt = None,
                   world_seed: Annotated[int | None, typer.Option(
                       "--world-seed", metavar="N", help="Seed of the world, the tokenizer and the models' "
                                                         "training (default: the bundled build's, 0).")] = None,
                   tiny: Annotated[bool, typer.Option("--tiny", help="A tiny, fast, low-quality build (tests).")] = False,
                   verify: Annotated[bool, typer.Option("--verify", help="Build into a temporary folder and check that it "
                                                        "behaves like the one in --folder (and say whether "
                                                        "the bytes match).")] = False,
                   teacher_only: Annotated[bool, typer.Option("--teacher-only", help="Only (re)build teacher/, with the tokenizer "
                                                              "of the base already in the folder.")] = False,
                   guard_only: Annotated[bool, typer.Option("--guard-only", help="Only (re)build guard/, from the base already "
                                                            "in the folder (the guard a full build makes).")] = False):
    """Rebuild the organism (world, tokenizer, base, guard, teacher) from scratch, deterministically."""
    from thinksafe.organism import organism_dir, update_manifest
    from thinksafe.organism.build import TINY, BuildSpec, build, build_guard_into, build_teacher_into
    from thinksafe.organism.teacher import TINY_TEACHER, TeacherSpec
    seeded = given(seed=world_seed)
    spec = replace(TINY if tiny else BuildSpec(), **seeded)
    tspec = replace(TINY_TEACHER if tiny else TeacherSpec(), **seeded)
    log = lambda s: console.print(s, highlight=False)  # noqa: E731
    if teacher_only or guard_only:
        if verify or (teacher_only and guard_only):
            raise typer.BadParameter("--teacher-only, --guard-only and --verify do not go together")
        target = folder or organism_dir()
        if not (Path(target) / "base" / "config.json").is_file():
            raise typer.BadParameter(f"no base organism in {target} to take the tokenizer from")
        which = "teacher" if teacher_only else "guard"
        info = build_teacher_into(target, tspec, log) if teacher_only else build_guard_into(target, spec, log)
        update_manifest(target, {**info, **({"spec": asdict(spec)} if guard_only else {})}, create=False)
        console.print(f"{which} built in {info[which + '_seconds']}s -> {Path(target) / which}", highlight=False)
        return
    target = Path(tempfile.mkdtemp(prefix="organism-")) if verify else (folder or organism_dir())
    m = build(target, spec, log=log, teacher_spec=tspec, check=not tiny)
    console.print(f"organism built in {m['seconds']}s -> {target}", highlight=False)
    if m.get("check"):
        print_targets(m["check"]["targets"], m["check"])
    if verify:
        verify_against(target, folder or organism_dir(), m)


def verify_against(new: Path, ref: Path, manifest: dict) -> None:
    """Behaviour first (the organism check's numbers within tolerance), then bytes."""
    from thinksafe.organism import read_manifest
    from thinksafe.organism.build import compare_builds
    from thinksafe.organism.check import VERIFY_TOLERANCE, compare_behaviour
    ref_check = read_manifest(ref).get("check")
    if not ref_check:
        raise typer.BadParameter(f"{ref}/organism.json records no organism check to compare with")
    diffs = compare_builds(new, ref)
    console.print("bytes: identical to the reference build" if not diffs else
                  f"bytes: {len(diffs)} files differ from the reference build ({', '.join(diffs[:6])})",
                  highlight=False)
    off = compare_behaviour(manifest["check"], ref_check)
    if off:
        console.print(f"[red]behaviour differs by more than {VERIFY_TOLERANCE}:[/red] {'; '.join(off)}")
        raise typer.Exit(1)
    console.print(f"behaviour: every checked rate within {VERIFY_TOLERANCE} of the reference build",
                  highlight=False)


@organism_command("check")
@friendly
def organism_check(seed: SeedOpt = None, out: OutOpt = None, folder: FolderOpt = None,
                   strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when a design target is missed.")] = False,
                   record: Annotated[bool, typer.Option("--record", help="Write the result into the build's organism.json "
                                                        "(what `organism build --verify` compares with).")] = False):
    """Measure the base organism on held-out splits (no training) against its design targets: an
    evaluation of the base with the packaged demo.yaml, in runs/organism-check unless --out."""
    from thinksafe.organism import organism_dir, update_manifest
    from thinksafe.organism.check import check, measure, summary
    from thinksafe.stages.report import print_table
    folder = folder or organism_dir()
    m = measure(folder, show=True, **given(out=out, seed=seed))
    print_table({"base": m})
    rows = check(m)
    print_targets(rows, m)
    if record:
        console.print(f"recorded in {update_manifest(folder, {'check': summary(m)})}", highlight=False)
    if strict and not all(r["ok"] for r in rows):
        raise typer.Exit(1)


def print_targets(rows: list[dict], m: dict) -> None:
    from rich.table import Table
    t = Table(title="organism design targets (base, held-out split)")
    for col in ("property", "value", "target", ""):
        t.add_column(col)
    for r in rows:
        v = r["value"]
        t.add_row(r["property"], f"{v:.3f}" if isinstance(v, float) else str(v), r["band"],
                  "ok" if r["ok"] else "MISSED")
    console.print(t)
    cats = Table(title="by hazard category (oracle)")
    for col in ("category", "harmful plain", "harmful adversarial", "steered refusal"):
        cats.add_column(col, justify="right")
    groups, steer = m.get("harmful_by_group") or {}, m.get("steered_refusal_by_category") or {}
    for c in sorted(steer, key=lambda c: int(c[1:]) if c[1:].isdigit() else 99):
        cell = lambda g: f"{groups[g]['oracle']:.2f} (n={groups[g]['n']})" if g in groups else "–"  # noqa: E731
        cats.add_row(c, cell(f"{c}/plain"), cell(f"{c}/adversarial"),
                     f"{steer[c]['rate']:.2f} (n={steer[c]['n']})")
    console.print(cats)
