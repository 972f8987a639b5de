"""`hssim measure`: run one scenario point's schedule on real hardware and print its metrics.

The output has the shape of `hssim run` (same point columns and metric names, so
the `--json` objects of both can be diffed), plus what only a measurement has:
the executor and device, pinned or pageable host memory, the repeats, and, for a
scaled run, how many of the model's layers ran (`layers_run` of `model_layers`).

`--dtype auto` (the default) runs a fp16 model in bf16 on the CPU backend: a CPU has
native bf16 GEMMs but only emulates fp16 (many times slower, so the measurement
would time the emulation); bf16 moves the same bytes. `hssim validate` does the
same. The output says which dtype ran. Progress (warm-up / repeat i of n) goes to
stderr.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ..errors import UserError
from ..sim.memory import MemoryPlanError
from ..sim.scenario import ScenarioError
from .common import (
    Command,
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
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="run on CUDA streams or on CPU threads")
@click.option("--layers", type=click.IntRange(min=1), default=None,
              help="run only the first K layers (real per-layer shapes)")
@click.option("--repeats", type=click.IntRange(min=1, max=1000), default=3, show_default=True,
              help="timed runs; the median is reported")
@click.option("--warmup", type=click.IntRange(min=0, max=1000), default=1, show_default=True, help="untimed runs first")
@click.option("--dtype", type=click.Choice(["auto", "fp16", "bf16", "fp32"]), default="auto", show_default=True,
              help="dtype to run in; auto: the model's, except fp16 runs as bf16 on the CPU (fp16 is emulated there)")
@click.option("--json", "as_json", is_flag=True, help="print the metrics as one JSON object")
@click.option("--timeline", default=None,
              help="write the measured op timeline (.parquet or .csv)")
@trace_options
def measure(scenario: str, policy: str | None, sets: tuple[str, ...], device: str, layers: int | None,
            repeats: int, warmup: int, dtype: str, as_json: bool, timeline: str | None, trace: str | None,
            trace_steps: str | None, trace_layers: str | None) -> None:
    """Run one point of SCENARIO's schedule with real kernels and copies; print measured metrics."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError("hssim measure needs PyTorch; fix: pip install -e '.[hw]' (torch==2.13.0)") from None
    from ..hw.executor import ExecutorError, measure_point, scaled_point

    check_output(timeline, "--timeline", suffixes=(".parquet", ".csv"))
    trace_filter = trace_selection(trace, trace_steps, trace_layers)
    try:
        full = one_point(scenario, policy, sets)
        point = scaled_point(full, layers)
        if device == "cuda":
            _require_cuda()
        run_dtype = run_dtype_for(point.model.dtype, device, dtype)
        if run_dtype != point.model.dtype:
            point = point.model_copy(update={"model": point.model.model_copy(update={"dtype": run_dtype})})
            click.echo(f"note: running the {full.model.dtype} model in {run_dtype} on the {device} backend"
                       + (" (the CPU only emulates fp16; --dtype fp16 to force it)" if dtype == "auto" else ""),
                       err=True)

        t0 = time.perf_counter()
        started = [0]

        def progress(msg: str) -> None:
            elapsed = time.perf_counter() - t0
            done, total = started[0], warmup + repeats
            left = f", about {elapsed / done * (total - done):.0f} s left" if done else ""
            started[0] += 1
            click.echo(f"hssim measure: {msg} ({elapsed:.0f} s so far{left})", err=True)

        click.echo(f"hssim measure: {expected_length(point, device, repeats, warmup)}", err=True)

        meas = measure_point(point, device, repeats=repeats, warmup=warmup, progress=progress)
    except (ScenarioError, MemoryPlanError, ExecutorError) as e:
        raise UserError(str(e)) from None
    metrics = meas.metrics()
    extra = {
        "executor": f"hw-{device}", "device": meas.device_name,
        "host_memory": meas.host_memory["weights"],
        "host_memory_weights": meas.host_memory["weights"], "host_memory_cache": meas.host_memory["cache"],
        "host_bytes_weights": meas.host_bytes["weights"], "host_bytes_cache": meas.host_bytes["cache"],
        "dtype": point.model.dtype, "model_dtype": full.model.dtype,
        "layers_run": point.model.layers, "model_layers": full.model.layers,
        "scaled": point.model.layers != full.model.layers,
        "repeats": repeats, "runs_s": meas.runs_s,
    }
    if timeline:
        write_table(meas.result.timeline(), Path(timeline))
        click.echo(f"wrote the measured timeline to {timeline}", err=True)
    if trace:
        _write_trace(point, meas, Path(trace), trace_filter)
    if as_json:
        click.echo(json.dumps(metrics_json(full, metrics, extra)))
        return
    scale = (f", first {point.model.layers} of {full.model.layers} layers"
             if extra["scaled"] else "")
    dt = f", {point.model.dtype}" + (f" (model {full.model.dtype})" if point.model.dtype != full.model.dtype else "")
    print_metrics(full, metrics, f"{full.scenario}: {full.policy.label} (measured on {meas.device_name}{dt}, "
                                 f"host weights {meas.host_memory['weights']}, host cache {meas.host_memory['cache']}"
                                 f"{scale}; median of {repeats})")


def expected_length(point, device: str, repeats: int, warmup: int) -> str:
    """What the run will do, with the simulator's prediction of one run's length (of this
    point's hardware preset, not of this machine: the CPU backend runs several times slower)."""
    from ..sim.api import run_point

    try:
        predicted_s = run_point(point, engine="list").metrics["makespan_s"]
    except Exception:  # noqa: BLE001 - the estimate is a courtesy; measuring reports real errors
        predicted_s = None
    runs = warmup + repeats
    est = (f"; the simulator predicts {predicted_s:.3g} s per run on {point.hardware.name}"
           if predicted_s is not None else "")
    return (f"{runs} runs ({warmup} warm-up, {repeats} timed) of {point.model.layers} layers x "
            f"{point.workload.gen_len} tokens on the {device} backend{est} (this machine may be much slower: "
            "the time left is told after the first run); --layers K, --repeats and a smaller gen_len shorten it")


def _write_trace(point, meas, path: Path, trace_filter: dict) -> None:
    """The measured timeline and the simulator's of the same schedule, as two processes of one trace."""
    from ..sim.api import run_point
    from ..sim.trace import TracePart, write_trace

    sim = run_point(point)
    parts = [TracePart(meas.result.timeline(), meas.schedule, "measured", meas.device_name),
             TracePart(sim.result.timeline(), sim.schedule, "sim")]
    m = meas.schedule.meta
    write_trace(parts, path, meta={"model": m.model, "hardware": m.hardware, "policy": m.policy,
                                   "measured_on": meas.device_name}, **trace_filter)
    click.echo(f"wrote the measured and simulated trace to {path} ({path.stat().st_size / 1e6:.1f} MB)", err=True)


def run_dtype_for(model_dtype: str, device: str, requested: str) -> str:
    """The dtype a measurement runs in: `requested`, or for `auto` the model's, fp16 becoming bf16
    on the CPU backend."""
    if requested != "auto":
        return requested
    return "bf16" if device == "cpu" and model_dtype == "fp16" else model_dtype


def _require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"--device cuda: no CUDA device is available (torch {torch.__version__}); "
                        "use --device cpu")
