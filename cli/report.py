"""`hssim report RESULTS [--out DIR]`: a sweep's results as figures and tables."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from .common import Command, check_output


@click.command(cls=Command)
@click.argument("results", type=click.Path())
@click.option("--out", "out_dir", default=None,
              help="output folder (default: a 'report' folder beside RESULTS)")
@click.option("--figure", "only", multiple=True, metavar="NAME",
              help="draw only this figure (repeatable); tables are always written")
def report(results: str, out_dir: str | None, only: tuple[str, ...]) -> None:
    """Turn RESULTS (a results.parquet/.csv or a sweep's --out folder) into figures and tables."""
    from ..reports.report import FIGURES, build_report

    names = [f.name for f in FIGURES]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise UserError(f"--figure {unknown[0]}: no such figure; fix: use one of {', '.join(names)}")
    src = Path(results)
    out = Path(out_dir) if out_dir is not None else (src if src.is_dir() else src.parent) / "report"
    check_output(str(out), "--out", kind="dir", contents=("README.md",))
    rep = build_report(src, out, only=list(only) or None)
    figs = sorted({p.stem for p in rep.paths if p.parent.name == "figures"})
    click.echo(f"hssim report: {len(figs)} figures, {len(rep.paths)} files -> {out}")
    for name, reason in rep.skipped.items():
        click.echo(f"  left out {name}: {reason}")
    click.echo(f"  index: {out / 'README.md'}")
