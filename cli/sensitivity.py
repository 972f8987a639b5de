"""`hssim sensitivity SCENARIO`: how sure each verdict is, and which uncertain figure would flip it."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from .common import Command, select_points


def scenario_uncertainty(path: str):
    """The `uncertainty:` block of a scenario file (empty when it has none)."""
    from ..sim.scenario import load_yaml
    from ..sim.uncertainty import parse_uncertainty

    return parse_uncertainty(load_yaml(Path(path)).get("uncertainty"), path)


def analyse(groups, uncertainty, samples: int, seed: int, console, label: str = "",
            indices: list[int] | None = None) -> tuple[list, list[int]]:
    """`point_sensitivity` of every group, with a line per group on `console`; a group where no
    policy fits has no winner and is skipped with a line saying so. Returns the results and
    their points' numbers (from 1, in the scenario's order)."""
    from ..sim.sensitivity import NothingFits, point_sensitivity

    indices = indices or list(range(1, len(groups) + 1))
    results, kept = [], []
    for i, configs in zip(indices, groups, strict=True):
        p = configs[0]
        console.print(f"{label}point {i}: {p.model.name} on {p.hardware.name}, batch "
                      f"{p.workload.batch}, prompt {p.workload.prompt_len}, {p.workload.gen_len} out "
                      f"({len(configs)} configurations)")
        try:
            results.append(point_sensitivity(configs, uncertainty, samples=samples, seed=seed))
        except NothingFits as e:
            console.print(f"  skipped: {str(e).splitlines()[0]}")
            continue
        kept.append(i)
    return results, kept


def print_summary(results, console) -> None:
    from rich.table import Table

    from ..reports.sensitivity import summary_frame

    df = summary_frame(results)
    t = Table(title="Winner per point, its margin, and what would flip it")
    for col in ("model", "prompt", "winner", "tok/s", "runner-up", "margin", "robust", "wins draws", "flipped by"):
        t.add_column(col)
    for row in df.itertuples():
        t.add_row(row.model, str(row.prompt_len), row.winner_config, f"{row.winner_tok_s:.4g}",
                  row.runner_up_config or "-", f"{row.margin_pct:.1f}%", "yes" if row.robust else "no",
                  f"{row.winner_share_sampled:.0%}", row.flipped_by or "-")
    console.print(t)


@click.command(cls=Command)
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option("--point", "point_index", type=click.IntRange(min=1), default=None, metavar="N",
              help="analyse only the N-th workload point (counted from 1 in the scenario's order)")
@click.option("--policy", "policies", multiple=True, metavar="KIND_OR_LABEL",
              help="compare only these policies (repeatable; a label such as 'flexgen cpu-attn', else a kind)")
@click.option("--set", "sets", multiple=True, metavar="AXIS=VALUE",
              help="fix a field or sweep axis, e.g. --set policy.cache_pinned=true (repeatable)")
@click.option("--out", "out_dir", default="out/sensitivity", show_default=True, type=click.Path(file_okay=False),
              help="folder for the tables (CSV, Markdown), sensitivity.md and the tornado figures")
@click.option("--samples", type=click.IntRange(min=0, max=10_000), default=32, show_default=True,
              help="joint draws of every figure at once (0: one at a time only; each re-simulates every "
                   "configuration, so at most 10,000)")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="seed of the joint draws")
def sensitivity(scenario: str, point_index: int | None, policies: tuple[str, ...], sets: tuple[str, ...],
                out_dir: str, samples: int, seed: int) -> None:
    """For each workload point of SCENARIO: the winner, its margin, which uncertain hardware figure would
    change it and at what value, and each policy's spread over the figures' ranges.

    Figures' ranges come from the presets (sim/uncertainty.py), a calibrated profile's spread, or the
    scenario's `uncertainty:` block.
    """
    from rich.console import Console

    from ..reports.sensitivity import write_sensitivity
    from ..sim.sensitivity import workload_groups

    uncertainty = scenario_uncertainty(scenario)
    if policies:
        chosen = {p.model_dump_json(): p for pol in policies for p in select_points(scenario, pol, sets)}
        points = [p for p in select_points(scenario, None, sets) if p.model_dump_json() in chosen]
    else:
        points = select_points(scenario, None, sets)
    groups = workload_groups(points)
    indices = list(range(1, len(groups) + 1))
    if point_index is not None:
        if point_index > len(groups):
            raise UserError(f"{scenario}: --point {point_index}: the scenario has {len(groups)} workload points; "
                            f"fix: use 1..{len(groups)}")
        groups, indices = [groups[point_index - 1]], [point_index]
    console = Console(stderr=True)
    results, indices = analyse(groups, uncertainty, samples, seed, console, indices=indices)
    if not results:
        raise UserError(f"{scenario}: no policy fits at any point analysed; fix: pick a point where one fits "
                        "(hssim sweep lists them as infeasible)")
    paths = write_sensitivity(results, Path(out_dir), indices)
    out_console = Console()
    if not out_console.is_terminal:  # a log file: wide enough that no column is cut to "…"
        out_console = Console(width=max(out_console.width, 200))
    print_summary(results, out_console)
    console.print(f"{len(paths)} files -> {out_dir} (read: {Path(out_dir) / 'sensitivity.md'})")
