"""`hssim optimize SCENARIO`: pick each paper's parameter by simulation and print the gain."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..errors import UserError
from ..sim.memory import MemoryPlanError
from ..sim.optimize.flexgen_search import search_flexgen
from ..sim.optimize.joint import search_joint
from ..sim.optimize.ratio import RATIOS, closed_form_ratio, search_ratio
from ..sim.optimize.search import SETTINGS, with_policy
from ..sim.optimize.split import search_split
from ..sim.scenario import ScenarioError, load_yaml, points_from_mapping
from ..sim.specs import PointSpec
from .common import Command

WHAT = ("flexgen", "ratio", "split", "joint")


def _fmt(x: float | None) -> str:
    return "does not fit" if x is None else f"{x:.2f} tok/s"


def _base_point(path: str, index: int) -> PointSpec:

    try:
        points = points_from_mapping(load_yaml(Path(path)), path, Path(path).stem)
    except ScenarioError as e:
        raise UserError(str(e)) from None
    if not 0 <= index < len(points):
        raise UserError(f"{path}: --point {index}: the scenario has {len(points)} points; "
                        f"fix: use 0..{len(points) - 1}")
    return points[index]


def _flexgen_lines(point: PointSpec) -> list[str]:
    res = search_flexgen(with_policy(point, kind="flexgen", kv_ratio=1.0))
    p = res.best.point.policy
    return [f"flexgen search: {p.gpu_batch_size}x{p.num_gpu_batches}, weights on GPU "
            f"{p.weights_gpu_percent:g}%, cache on GPU {p.cache_gpu_percent:g}%, cpu_attention "
            f"{p.cpu_attention}: {_fmt(res.best.throughput_tok_s)} ({len(res.feasible)} of "
            f"{len(res.tried)} configurations fit)"]


def _ratio_lines(point: PointSpec) -> list[str]:
    hs = with_policy(point, kind="hybridserve", cpu_attention=False, cache_gpu_percent=0.0)
    r_closed = round(closed_form_ratio(hs), 2)
    res = search_ratio(hs, ratios=tuple(sorted({*RATIOS, r_closed})))
    closed = next(c for c in res.tried if c.point.policy.kv_ratio == r_closed).throughput_tok_s
    kv = next(c for c in res.tried if c.point.policy.kv_ratio == 1.0).throughput_tok_s
    gain = f", {res.best.throughput_tok_s / kv:.2f}x over r=1" if kv else ""
    return [f"hybridserve r: simulated best r={res.best.point.policy.kv_ratio:.2f} "
            f"{_fmt(res.best.throughput_tok_s)}{gain}; closed-form balance r={r_closed:.2f} {_fmt(closed)}"]


def _split_lines(point: PointSpec) -> list[str]:
    rep = search_split(with_policy(point, kind="kvpr", cpu_attention=False, cache_gpu_percent=0.0))
    best = rep.simulated.best
    return [f"kvpr l: simulated best l={best.point.policy.split_tokens} {_fmt(best.throughput_tok_s)}; "
            f"closed form l={rep.closed_form_tokens} {_fmt(rep.closed_form_tok_s)}; "
            f"per-step rule {_fmt(rep.per_step_tok_s)}"]


def _joint_lines(point: PointSpec) -> list[str]:
    rep = search_joint(point)
    p = rep.joint.best.point.policy
    lines = [f"joint (block x placement x r): {p.label}, {p.gpu_batch_size}x{p.num_gpu_batches}, weights on "
             f"GPU {p.weights_gpu_percent:.3g}%, cache on GPU {p.cache_gpu_percent:.3g}%: "
             f"{_fmt(rep.joint.best.throughput_tok_s)}"]
    for rule, tput in rep.rules.items():
        gain = rep.gain_over(rule)
        lines.append(f"  vs {rule}: {_fmt(tput)}" + (f", joint gains {gain:.2f}x" if gain else ""))
    return lines


OPTIMISERS = {"flexgen": ("flexgen search", _flexgen_lines), "ratio": ("hybridserve r", _ratio_lines),
              "split": ("kvpr l", _split_lines), "joint": ("joint (block x placement x r)", _joint_lines)}


def report_lines(point: PointSpec, what: tuple[str, ...]) -> list[str]:
    """One block of lines per optimiser; one whose candidates all overflow memory says so."""
    wl = point.workload
    pol = point.policy
    lines = [f"{point.model.name} on {point.hardware.name}, batch {wl.batch}, prompt {wl.prompt_len}, "
             f"gen {wl.gen_len} (scenario block {point.gpu_batch_size}x{pol.num_gpu_batches}, weights on GPU "
             f"{pol.weights_gpu_percent:g}%)"]
    for key in WHAT:
        if key not in what:
            continue
        title, run = OPTIMISERS[key]
        try:
            lines += run(point)
        except MemoryPlanError as e:
            lines.append(f"{title}: no candidate fits in memory ({e})")
    return lines


@click.command(cls=Command)
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option("--point", "index", default=0, show_default=True, help="which point of the scenario to optimise")
@click.option("--what", "what", multiple=True, type=click.Choice(WHAT),
              help="optimisers to run (default: all)")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="processes that simulate candidates (default: all cores)")
def optimize(scenario: str, index: int, what: tuple[str, ...], jobs: int | None) -> None:
    """Pick FlexGen's block and placement, HybridServe's r, KVPR's l and a joint optimum by simulation.

    Every candidate is simulated through the one cost model; progress goes to stderr.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    point = _base_point(scenario, index)
    console = Console(stderr=True)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=console, transient=True)
    tasks: dict[str, int] = {}
    t0 = last = time.perf_counter()

    def hook(label: str, done: int, total: int) -> None:
        nonlocal last
        if label not in tasks:
            tasks[label] = progress.add_task(label, total=total)
        progress.update(tasks[label], completed=done)
        now = time.perf_counter()
        if not console.is_terminal and (done == total or now - last > 5):  # no live bar in a pipe or a log
            last = now
            click.echo(f"hssim optimize: {label}: {done}/{total} candidates ({now - t0:.0f} s)", err=True)

    SETTINGS.jobs, SETTINGS.progress = jobs, hook
    try:
        with progress:
            lines = report_lines(point, what or WHAT)
    except MemoryPlanError as e:
        raise UserError(str(e)) from None
    finally:
        SETTINGS.jobs, SETTINGS.progress = None, None
    for line in lines:
        click.echo(line)
