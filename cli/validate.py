"""`hssim validate`: calibrate from micro-benchmarks, run the validation set on both executors, report the error."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import click

from ..errors import UserError
from .common import Command, check_output


def _command_line(gpu: bool, device: str | None, out: str | None, size: str, profile: str | None,
                  save_profile: str | None) -> str:
    parts = ["hssim validate"]
    if gpu:
        parts.append("--gpu")
    if device:
        parts.append(f"--device {device}")
    parts.append(f"--set {size}")
    if profile:
        parts.append(f"--profile {profile}")
    if save_profile:
        parts.append(f"--save-profile {save_profile}")
    if out:
        parts.append(f"--out {out}")
    return " ".join(parts)


@click.command(cls=Command)
@click.option("--gpu", is_flag=True, help="run on the CUDA GPU (fails if there is none)")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="backend: cpu (the executor's CPU threads) or cuda; default cpu unless --gpu")
@click.option("--out", "out_dir", default=None,
              help="report folder (default: out/validation/BACKEND)")
@click.option("--set", "size", type=click.Choice(["quick", "standard"]), default="standard", show_default=True,
              help="validation set: standard, or quick (the small CI set)")
@click.option("--profile", default=None, metavar="NAME|PATH",
              help="use this saved profile instead of calibrating (warns if measured on another device)")
@click.option("--save-profile", default=None,
              help="also save the calibrated profile here (e.g. profiles/NAME.yaml)")
def validate(gpu: bool, device: str | None, out_dir: str | None, size: str, profile: str | None,
             save_profile: str | None) -> None:
    """Calibrate the simulator from micro-benchmarks, run the validation set through the hw executor and
    the simulator, and report the error (tables, figures, Chrome traces)."""
    from ..sim.costs.profile import ProfileDeviceWarning, ProfileError
    from ..validate.device import DeviceError, resolve_backend
    from ..validate.measure import MeasureError

    check_output(out_dir, "--out", kind="dir")
    check_output(save_profile, "--save-profile", suffixes=(".yaml", ".yml"))
    try:
        backend = resolve_backend(gpu, device)
    except DeviceError as e:
        raise UserError(str(e)) from None
    if profile and save_profile:
        raise UserError("--profile loads a profile and --save-profile saves a calibrated one; fix: pass only one")
    from ..validate.report import write_report
    from ..validate.run import run_validation

    out = Path(out_dir or f"out/validation/{backend}")
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        click.echo(f"[{time.perf_counter() - t0:6.1f} s] {msg}", err=True)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProfileDeviceWarning)
        try:
            run = run_validation(backend, size, profile=profile, say=say)
        except (ProfileError, MeasureError) as e:
            raise UserError(str(e)) from None
    for w in caught:
        if issubclass(w.category, ProfileDeviceWarning):
            click.echo(f"warning: {w.message}", err=True)
    if save_profile:  # the profile takes the file's name, which is what a scenario's `hardware:` will say
        run.profile = run.profile.model_copy(update={"name": Path(save_profile).stem})
        run.profile.save(save_profile)
    command = _command_line(gpu, device, out_dir, size, profile, save_profile)
    write_report(run, out, command)
    from ..reports.validation import draw_validation_figures
    from ..validate.report import figure_inputs

    draw_validation_figures(out / "figures", **figure_inputs(run))
    from ..validate.compare import summary

    s = summary(run.points, run.steps)
    click.echo(f"{s['points']} points on {run.info.name} ({backend}): end-to-end APE median "
               f"{100 * s['e2e_ape_median']:.1f}% p95 {100 * s['e2e_ape_p95']:.1f}%; per-step APE median "
               f"{100 * s['step_ape_median']:.1f}% p95 {100 * s['step_ape_p95']:.1f}%; "
               f"report: {out / 'README.md'} ({time.perf_counter() - t0:.0f} s)")
