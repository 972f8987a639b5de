"""`hssim optimize SCENARIO`: pick each paper's parameter by simulation and print the gain."""

from __future__ import annotations

from pathlib import Path

import click

from ..memory import MemoryPlanError
from ..scenario import ScenarioError, load_yaml, points_from_mapping
from ..specs import PointSpec
from .flexgen_search import search_flexgen
from .joint import search_joint
from .ratio import closed_form_ratio, search_ratio
from .search import SETTINGS, with_policy
from .split import search_split

WHAT = ("flexgen", "ratio", "split", "joint")


def _fmt(x: float | None) -> str:
    return "does not fit" if x is None else f"{x:.2f} tok/s"


def _base_point(path: str, index: int) -> PointSpec:
    from ...cli import UserError

    try:
        points = points_from_mapping(load_yaml(Path(path)), path, Path(path).stem)
    except ScenarioError as e:
        raise UserError(str(e)) from None
    if not 0 <= index < len(points):
        raise UserError(f"{path}: --point {index}: the scenario has {len(points)} points; "
                        f"fix: use 0..{len(points) - 1}")
    return points[index]


def report_lines(point: PointSpec, what: tuple[str, ...]) -> list[str]:
    wl = point.workload
    lines = [f"{point.model.name} on {point.hardware.name}, batch {wl.batch}, prompt {wl.prompt_len}, "
             f"gen {wl.gen_len}"]
    if "flexgen" in what:
        res = search_flexgen(with_policy(point, kind="flexgen", kv_ratio=1.0))
        p = res.best.point.policy
        lines.append(f"flexgen search: {p.gpu_batch_size}x{p.num_gpu_batches}, weights on GPU "
                     f"{p.weights_gpu_percent:g}%, cache on GPU {p.cache_gpu_percent:g}%, cpu_attention "
                     f"{p.cpu_attention}: {_fmt(res.best.throughput_tok_s)} ({len(res.feasible)} of "
                     f"{len(res.tried)} configurations fit)")
    if "ratio" in what:
        hs = with_policy(point, kind="hybridserve", cpu_attention=False, cache_gpu_percent=0.0)
        res = search_ratio(hs)
        r_closed = closed_form_ratio(hs)
        closed = search_ratio(hs, ratios=(round(r_closed, 2),)).best.throughput_tok_s
        kv = next(c for c in res.tried if c.point.policy.kv_ratio == 1.0).throughput_tok_s
        gain = f", {res.best.throughput_tok_s / kv:.2f}x over r=1" if kv else ""
        lines.append(f"hybridserve r: simulated best r={res.best.point.policy.kv_ratio:.1f} "
                     f"{_fmt(res.best.throughput_tok_s)}{gain}; closed-form balance r={r_closed:.2f} "
                     f"{_fmt(closed)}")
    if "split" in what:
        rep = search_split(with_policy(point, kind="kvpr", cpu_attention=False, cache_gpu_percent=0.0))
        best = rep.simulated.best
        lines.append(f"kvpr l: simulated best l={best.point.policy.split_tokens} {_fmt(best.throughput_tok_s)}; "
                     f"closed form l={rep.closed_form_tokens} {_fmt(rep.closed_form_tok_s)}; "
                     f"per-step rule {_fmt(rep.per_step_tok_s)}")
    if "joint" in what:
        rep = search_joint(point)
        p = rep.joint.best.point.policy
        lines.append(f"joint (block x placement x r): {p.label}, {p.gpu_batch_size}x{p.num_gpu_batches}, weights on "
                     f"GPU {p.weights_gpu_percent:g}%, cache on GPU {p.cache_gpu_percent:g}%: "
                     f"{_fmt(rep.joint.best.throughput_tok_s)}")
        for rule, tput in rep.rules.items():
            gain = rep.gain_over(rule)
            lines.append(f"  vs {rule}: {_fmt(tput)}" + (f", joint gains {gain:.2f}x" if gain else ""))
    return lines


@click.command()
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

    from ...cli import UserError

    point = _base_point(scenario, index)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=True)
    tasks: dict[str, int] = {}

    def hook(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = progress.add_task(label, total=total)
        progress.update(tasks[label], completed=done)

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
