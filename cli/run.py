"""`hssim run` (one point simulated), `hssim schedule` (what a point's schedule holds) and `hssim presets`."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import click

from ..errors import MemoryPlanError, UserError
from ..sim.specs import PointSpec
from .common import (
    MAX_OPS,
    Command,
    check_op_counts,
    check_output,
    metrics_json,
    one_point,
    point_options,
    print_metrics,
    trace_options,
    trace_selection,
    write_table,
)


@click.command(cls=Command)
@click.argument("scenario", type=click.Path(dir_okay=False))
@point_options
@click.option("--json", "as_json", is_flag=True, help="print the metrics as one JSON object")
@click.option("--timeline", default=None,
              help="write the op timeline (.parquet or .csv)")
@trace_options
@click.option("--engine", type=click.Choice(["list", "simpy"]), default="list", show_default=True,
              help="the compiled list-scheduling replay, or the SimPy model it equals op for op (slower)")
@click.option("--max-ops", type=click.IntRange(min=1), default=MAX_OPS, show_default=True,
              help="refuse a point whose schedule would have more ops than this")
@click.option("--layers", type=click.IntRange(min=1), default=None,
              help="simulate only the first K layers (real per-layer shapes), as `hssim measure --layers K` runs")
def run(scenario: str, policy: str | None, sets: tuple[str, ...], as_json: bool, timeline: str | None,
        trace: str | None, trace_steps: str | None, trace_layers: str | None, engine: str,
        layers: int | None, max_ops: int) -> None:
    """Simulate one point of SCENARIO and print its metrics."""
    from ..sim.api import run_point, scaled_point

    timeline_path = check_output(timeline, "--timeline", suffixes=(".parquet", ".csv"))
    trace_filter = trace_selection(trace, trace_steps, trace_layers)
    full = one_point(scenario, policy, sets)
    try:
        point = scaled_point(full, layers)
    except ValueError as e:
        raise UserError(f"{scenario}: {e}") from None
    check_op_counts([point], scenario, max_ops, warn=lambda msg: click.echo(f"warning: {msg}", err=True))
    try:
        pr = run_point(point, engine=engine)
    except MemoryPlanError as e:
        raise UserError(f"{scenario}: {e}") from None
    if timeline_path:
        write_table(pr.result.timeline(), timeline_path)
        if not as_json:
            click.echo(f"wrote the timeline ({len(pr.schedule)} ops) to {timeline}", err=True)
    if trace:
        from ..sim.trace import write_chrome_trace

        write_chrome_trace(pr.schedule, pr.result.timeline(), Path(trace),
                           meta={"executor": "sim", **metrics_json(point, {})}, **trace_filter)
        if not as_json:
            click.echo(f"wrote the trace to {trace} ({Path(trace).stat().st_size / 1e6:.1f} MB)", err=True)
    scaled = {"layers_run": point.model.layers, "model_layers": full.model.layers,
              "scaled": point.model.layers != full.model.layers}
    if as_json:
        click.echo(json.dumps(metrics_json(full, pr.metrics, {"executor": "sim", **scaled})))
    else:
        scale = f", first {point.model.layers} of {full.model.layers} layers" if scaled["scaled"] else ""
        print_metrics(full, pr.metrics, f"{point.scenario}: {point.policy.label} (simulated{scale})")


@click.command(cls=Command)
@click.argument("scenario", type=click.Path(dir_okay=False))
@point_options
@click.option("--max-ops", type=click.IntRange(min=1), default=MAX_OPS, show_default=True,
              help="refuse a point whose schedule would have more ops than this")
def schedule(scenario: str, policy: str | None, sets: tuple[str, ...], max_ops: int) -> None:
    """Print a readable summary of the schedule of one point of SCENARIO."""
    from ..sim.policies import build_schedule

    point = one_point(scenario, policy, sets)
    check_op_counts([point], scenario, max_ops, warn=lambda msg: click.echo(f"warning: {msg}", err=True))
    try:  # the memory plan is checked before a single op is built
        sched = build_schedule(point, check_memory=True)
    except MemoryPlanError as e:
        raise UserError(f"{scenario}: {e}") from None
    click.echo(describe_schedule(point, sched))


def describe_schedule(point: PointSpec, sched) -> str:
    m = sched.meta
    lines = [
        f"{point.scenario}: {m.policy} | {m.model} on {m.hardware}",
        f"  batch {m.batch} = {m.num_gpu_batches} GPU batches x {m.gpu_batch_size}; prompt {m.prompt_len}, "
        f"{m.gen_len} output tokens (prefill + {m.gen_len - 1} decode steps); {m.layers} layers",
        f"  {len(sched.ops)} ops",
        "",
        f"  {'kind':<16}{'stream':<9}{'ops':>8}{'link GB':>12}{'TFLOP':>12}",
    ]
    count, nbytes, flops, stream = Counter(), Counter(), defaultdict(float), {}
    for op in sched.ops:
        count[op.kind] += 1
        nbytes[op.kind] += op.link_bytes
        flops[op.kind] += op.flops
        stream[op.kind] = op.stream.value
    for kind in count:
        lines.append(f"  {kind.value:<16}{stream[kind]:<9}{count[kind]:>8}{nbytes[kind] / 1e9:>12.2f}"
                     f"{flops[kind] / 1e12:>12.2f}")
    lines += ["", "  memory plan (peak):"]
    for side, items, total, cap in (("GPU", sched.memory.gpu, sched.memory.gpu_bytes,
                                     sched.memory.gpu_capacity_bytes),
                                    ("host", sched.memory.host, sched.memory.host_bytes,
                                     sched.memory.host_capacity_bytes)):
        lines.append(f"    {side}: {total / 1e9:.2f} GB of {cap / 1e9:.2f} GB")
        lines += [f"      {i.what:<48}{i.bytes / 1e9:>10.3f} GB" for i in items]
    first_decode = [op for op in sched.ops if op.step == min(1, m.gen_len - 1) and op.layer in (0, 1)][:16]
    lines += ["", f"  program order of step {first_decode[0].step if first_decode else 0}, layers 0-1 (first ops):"]
    for op in first_decode:
        deps = ",".join(map(str, op.deps))
        after = ",".join(map(str, op.after))
        lines.append(f"    #{op.id:<7}{op.stream.value:<8}{op.label:<34} deps[{deps}] after[{after}]")
    return "\n".join(lines)


@click.command(cls=Command)
def presets() -> None:
    """List the model and hardware presets."""
    from ..sim.presets import HARDWARE, MODELS

    click.echo("models:")
    for m in MODELS.values():
        click.echo(f"  {m.name:<12} {m.layers:>3} layers, hidden {m.hidden}, {m.heads} heads "
                   f"({m.kv_heads} KV), {m.total_weight_bytes / 1e9:.1f} GB fp16")
    click.echo("hardware:")
    for h in HARDWARE.values():
        g = h.gpu
        click.echo(f"  {h.name:<16} {g.name} {g.memory_bytes / 2**30:.1f} GiB, fp16 GEMM {g.achieved_flops / 1e12:.0f} "
                   f"of {g.peak_flops / 1e12:.0f} TFLOP/s, HBM {g.achieved_hbm_Bps / 1e9:.0f} of {g.hbm_Bps / 1e9:.0f} "
                   f"GB/s; {h.link.name} {h.link.h2d_pinned_Bps / 1e9:.1f} GB/s H2D pinned; host "
                   f"{h.host.memory_bytes / 1e9:.0f} GB, {h.cpu.name}")
