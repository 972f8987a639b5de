"""`hssim measure`: run one scenario point's schedule on real hardware and print its metrics.

The output has the shape of `hssim run` (same point columns and metric names, so
the `--json` objects of both can be diffed), plus what only a measurement has:
the executor and device, pinned or pageable host memory, the repeats, and, for a
scaled run, how many of the model's layers ran (`layers_run` of `model_layers`).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..cli import UserError, metrics_json, one_point, point_options, print_metrics, write_table
from ..sim.memory import MemoryPlanError
from ..sim.scenario import ScenarioError


@click.command()
@click.argument("scenario", type=click.Path(dir_okay=False))
@point_options
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="run on CUDA streams or on CPU threads")
@click.option("--layers", type=int, default=None, help="run only the first K layers (real per-layer shapes)")
@click.option("--repeats", type=int, default=3, show_default=True, help="timed runs; the median is reported")
@click.option("--warmup", type=int, default=1, show_default=True, help="untimed runs first")
@click.option("--json", "as_json", is_flag=True, help="print the metrics as one JSON object")
@click.option("--timeline", type=click.Path(dir_okay=False), default=None,
              help="write the measured op timeline (.parquet or .csv)")
def measure(scenario: str, policy: str | None, sets: tuple[str, ...], device: str, layers: int | None,
            repeats: int, warmup: int, as_json: bool, timeline: str | None) -> None:
    """Run one point of SCENARIO's schedule with real kernels and copies; print measured metrics."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError("hssim measure needs PyTorch; fix: pip install -e '.[hw]' (torch==2.13.0)") from None
    from .executor import ExecutorError, measure_point, scaled_point

    if timeline and Path(timeline).suffix not in (".parquet", ".csv"):
        raise UserError(f"{timeline}: unknown table format; fix: end the file name in .parquet or .csv")
    try:
        full = one_point(scenario, policy, sets)
        point = scaled_point(full, layers)
        if device == "cuda":
            _require_cuda()
        meas = measure_point(point, device, repeats=repeats, warmup=warmup)
    except (ScenarioError, MemoryPlanError, ExecutorError) as e:
        raise UserError(str(e)) from None
    metrics = meas.metrics()
    extra = {
        "executor": f"hw-{device}", "device": meas.device_name,
        "host_memory": "pinned" if meas.pinned else "pageable",
        "layers_run": point.model.layers, "model_layers": full.model.layers,
        "scaled": point.model.layers != full.model.layers,
        "repeats": repeats, "runs_s": meas.runs_s,
    }
    if timeline:
        write_table(meas.result.timeline(), Path(timeline))
    if as_json:
        click.echo(json.dumps(metrics_json(full, metrics, extra)))
        return
    scale = (f", first {point.model.layers} of {full.model.layers} layers"
             if extra["scaled"] else "")
    print_metrics(full, metrics, f"{full.scenario}: {full.policy.label} (measured on {meas.device_name}, "
                                 f"{extra['host_memory']} host memory{scale}; median of {repeats})")


def _require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"--device cuda: no CUDA device is available (torch {torch.__version__}); "
                        "use --device cpu")
