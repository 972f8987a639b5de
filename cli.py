"""The `hssim` command line."""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import click
import yaml

from . import __version__
from .sim.memory import MemoryPlanError
from .sim.scenario import ScenarioError, load_yaml, points_from_mapping
from .sim.specs import PointSpec
from .sim.sweep import ClusterUnreachable


class UserError(click.ClickException):
    """A one-line error with exit status 2 and no traceback."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _fail_on_user_errors(fn):
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ScenarioError, MemoryPlanError, ClusterUnreachable) as e:
            raise UserError(str(e)) from None

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _parse_sets(sets: tuple[str, ...]) -> dict[str, object]:
    out = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UserError(f"--set {item}: expected KEY=VALUE, e.g. --set workload.prompt_len=512")
        out[key.strip()] = yaml.safe_load(value)
    return out


def select_points(path: str, policy: str | None, sets: tuple[str, ...]) -> list[PointSpec]:
    """The points of one scenario file, narrowed by --policy and --set."""
    data = load_yaml(Path(path))
    overrides = _parse_sets(sets)
    if overrides:
        sweep = dict(data.get("sweep") or {})
        sweep.update({k: [v] for k, v in overrides.items()})
        data = {**data, "sweep": sweep}
    points = points_from_mapping(data, path, Path(path).stem)
    if policy:
        by_label = [p for p in points if p.policy.label == policy]
        points = by_label or [p for p in points if p.policy.kind.value == policy]
        if not points:
            raise UserError(f"{path}: --policy {policy}: no policy of the scenario matches; "
                            "fix: use a kind or label that `hssim schedule` lists")
    return points


def one_point(path: str, policy: str | None, sets: tuple[str, ...]) -> PointSpec:
    points = select_points(path, policy, sets)
    if len(points) > 1:
        data = load_yaml(Path(path))
        axes = ", ".join(data.get("sweep") or {}) or "none"
        kinds = ", ".join(dict.fromkeys(p.policy.label for p in points))
        raise UserError(
            f"{path}: the scenario has {len(points)} points; fix: narrow to one with --policy "
            f"({kinds}) and --set AXIS=VALUE (axes: {axes})"
        )
    return points[0]


def metrics_json(point: PointSpec, metrics: dict, extra: dict | None = None) -> dict:
    """The JSON object `hssim run --json` prints: point columns, then metrics."""
    from .sim.api import point_columns

    out = {**point_columns(point), **(extra or {}), **metrics}
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def print_metrics(point: PointSpec, metrics: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_header=False)
    t.add_column("metric")
    t.add_column("value", justify="right")
    units = {"_s": "s", "_tok_s": "tok/s"}
    for key, value in metrics.items():
        if isinstance(value, float):
            text = f"{value:.4g}"
        elif isinstance(value, int) and key.endswith("_bytes"):
            text, key = f"{value / 1e9:.3f} GB", key
        else:
            text = str(value)
        unit = next((u for suf, u in sorted(units.items(), key=lambda x: -len(x[0])) if key.endswith(suf)), "")
        t.add_row(key, f"{text} {unit}".strip())
    Console().print(t)


def write_table(df, path: Path) -> None:
    from .sim.sweep import write_atomic

    if path.suffix not in (".parquet", ".csv"):
        raise UserError(f"{path}: unknown table format; fix: end the file name in .parquet or .csv")
    write_atomic(df, path)


class _Commands(click.Group):
    """The commands of the other parts load on first use: their modules import this one (and
    heavy libraries such as torch), so importing them here would be circular and slow."""

    lazy = {
        "measure": "hssim.hw.cli:measure",
        "optimize": "hssim.sim.optimize.cli:optimize",
        "report": "hssim.reports.cli:report",
        "serve": "hssim.sim.serving.cli:serve",
        "validate": "hssim.validate.cli:validate",
    }

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx, name):
        if name in self.lazy:
            import importlib

            module, attr = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hssim")
def main() -> None:
    """hssim: simulate LLM inference with host-memory offloading."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", default="out/sweep", show_default=True, type=click.Path(file_okay=False),
              help="folder for results.parquet, results.csv, ranking.csv and the points.jsonl journal")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="local worker processes (default: all cores)")
@click.option("--cluster", default=None, metavar="ADDRESS",
              help="run on a Dask cluster (tcp://host:8786), or 'local' to start one on this machine")
@click.option("--fresh", is_flag=True, help="forget finished points in --out and run everything again")
@click.option("--no-report", is_flag=True, help="skip the figures and tables (OUT/report/)")
@_fail_on_user_errors
def sweep(files: tuple[str, ...], out_dir: str, jobs: int | None, cluster: str | None, fresh: bool,
          no_report: bool) -> None:
    """Run every point of the scenario FILES; write results and rank policies per point.

    Resumable: rerun the same command after an interruption and finished points are kept.
    """
    from rich.console import Console

    from .sim.scenario import load_points
    from .sim.sweep import JOURNAL, best_per_point, run_sweep, write_results

    points = load_points(files)
    out = Path(out_dir)
    if fresh and (out / JOURNAL).exists():
        (out / JOURNAL).unlink()
    console = Console(stderr=True)
    where = f"Dask cluster {cluster}" if cluster else f"{jobs or 'all'} local cores"
    console.print(f"hssim sweep: {len(points)} points from {len(files)} file(s) on {where}, out: {out}")
    with _local_cluster(cluster, jobs) as address, SweepProgress(console, len(points)) as progress:
        try:
            df = run_sweep(points, out, jobs=jobs, cluster=address, on_done=progress.done, on_skip=progress.skip)
        except KeyboardInterrupt:
            progress.stop()
            raise UserError(f"interrupted: {progress.finished} points are saved in {out / JOURNAL}; "
                            "fix: rerun the same command to resume") from None
    parquet, csv = write_results(df, out)
    ranked = best_per_point(df)
    write_table(ranked, out / "ranking.csv")
    _print_ranking(ranked)
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    console.print(f"{len(df)} rows ({summary}; {progress.skipped} reused from an earlier run) -> {parquet}, {csv}")
    if counts.get("infeasible") or counts.get("failed"):
        console.print("rows that are not ok say why in the error column")
    if not no_report:
        from .reports import build_report

        rep = build_report(df, out / "report")
        console.print(f"report: {len(rep.paths)} files in {out / 'report'} (index: {out / 'report' / 'README.md'})"
                      + (f"; left out: {', '.join(rep.skipped)}" if rep.skipped else ""))


class SweepProgress:
    """A live bar: points done, infeasible and failed, rate, ETA."""

    def __init__(self, console, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TextColumn("{task.fields[rate]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console)
        self.task = self.progress.add_task("sweep", total=total, status="", rate="")
        self.counts: Counter = Counter()
        self.skipped = 0
        self.finished = 0
        self.total = total
        self.console = console
        self.t0 = self.last_line = time.perf_counter()

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def stop(self) -> None:
        self.progress.stop()

    def skip(self, n: int) -> None:
        self.skipped = n
        self.finished += n
        self.progress.update(self.task, advance=n)

    def done(self, row: dict) -> None:
        self.counts[row["status"]] += 1
        self.finished += 1
        ran = sum(self.counts.values())
        rate = ran / max(time.perf_counter() - self.t0, 1e-9)
        status = f"{self.counts['infeasible']} infeasible, {self.counts['failed']} failed"
        self.progress.update(self.task, advance=1, status=status, rate=f"{rate:.2f} pt/s")
        now = time.perf_counter()
        if not self.console.is_terminal and (now - self.last_line > 10 or self.finished == self.total):
            # no live bar in a log file: a line every 10 s instead
            self.last_line = now
            eta = (self.total - self.finished) / rate if rate else float("nan")
            self.console.print(f"simulated {self.finished}/{self.total} ({status}), {rate:.2f} pt/s, "
                               f"ETA {eta:.0f} s")


class _local_cluster:
    """`--cluster local` starts a Dask LocalCluster on loopback for the sweep's duration."""

    def __init__(self, cluster: str | None, jobs: int | None) -> None:
        self.cluster, self.jobs, self.local = cluster, jobs, None

    def __enter__(self) -> str | None:
        if self.cluster != "local":
            return self.cluster
        from distributed import LocalCluster

        self.local = LocalCluster(n_workers=self.jobs or 2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None)
        return self.local.scheduler_address

    def __exit__(self, *exc) -> None:
        if self.local is not None:
            self.local.close()


@main.command()
@click.option("--workers", type=int, default=2, show_default=True, help="worker processes")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=int, default=8786, show_default=True, help="scheduler port")
def cluster(workers: int, host: str, port: int) -> None:
    """Start a local Dask cluster to try `hssim sweep --cluster ADDRESS`; Ctrl-C stops it."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host=host,
                      scheduler_port=port, dashboard_address=None) as lc:
        click.echo(f"Dask scheduler at {lc.scheduler_address} with {workers} workers; "
                   f"run: hssim sweep FILES --cluster {lc.scheduler_address}   (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            click.echo("stopped")


def _print_ranking(ranked) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Best policy per point (best configuration of each kind)")
    for col in ("scenario", "model", "hardware", "batch", "prompt", "gen", "winner", "tok/s", "speed-up",
                "runner-up"):
        t.add_column(col)
    for key, grp in ranked.groupby(["scenario", "model", "hardware", "batch", "prompt_len", "gen_len"], sort=False):
        grp = grp.sort_values("rank")
        first = grp.iloc[0]
        second = grp.iloc[1] if len(grp) > 1 else None
        ratio = first["speedup"]
        t.add_row(*[str(k) for k in key], first["policy_label"], f"{first['throughput_tok_s']:.2f}",
                  "-" if math.isnan(ratio) else f"{ratio:.2f}x over {first['baseline']}",
                  "-" if second is None else f"{second['policy_label']} ({second['throughput_tok_s']:.2f})")
    console = Console()
    if not console.is_terminal:  # a log file: wide enough that no column is cut to "…"
        console = Console(width=max(console.width, 200))
    console.print(t)


_point_options = [
    click.option("--policy", default=None, help="policy kind or label to pick (e.g. hybrid, 'hybrid r=0.50')"),
    click.option("--set", "sets", multiple=True, metavar="AXIS=VALUE",
                 help="fix a field or sweep axis, e.g. --set workload.prompt_len=512 (repeatable)"),
]


def point_options(fn):
    for opt in reversed(_point_options):
        fn = opt(fn)
    return fn


@main.command()
@click.argument("scenario", type=click.Path(dir_okay=False))
@point_options
@click.option("--json", "as_json", is_flag=True, help="print the metrics as one JSON object")
@click.option("--timeline", type=click.Path(dir_okay=False), default=None,
              help="write the op timeline (.parquet or .csv)")
@click.option("--trace", type=click.Path(dir_okay=False), default=None,
              help="write a Chrome/Perfetto trace (.json): one track per stream")
@click.option("--engine", type=click.Choice(["simpy", "list"]), default="simpy", show_default=True,
              help="SimPy replay, or the identical list-scheduling replay (faster)")
@click.option("--layers", type=int, default=None,
              help="simulate only the first K layers (real per-layer shapes), as `hssim measure --layers K` runs")
@_fail_on_user_errors
def run(scenario: str, policy: str | None, sets: tuple[str, ...], as_json: bool, timeline: str | None,
        trace: str | None, engine: str, layers: int | None) -> None:
    """Simulate one point of SCENARIO and print its metrics."""
    from .sim.api import run_point, scaled_point

    full = one_point(scenario, policy, sets)
    try:
        point = scaled_point(full, layers)
    except ValueError as e:
        raise UserError(f"{scenario}: {e}") from None
    try:
        pr = run_point(point, engine=engine)
    except MemoryPlanError as e:
        raise UserError(f"{scenario}: {e}") from None
    if timeline:
        write_table(pr.result.timeline(), Path(timeline))
    if trace:
        from .reports.trace import write_chrome_trace

        write_chrome_trace(pr.schedule, pr.result.timeline(), Path(trace),
                           meta={"executor": "sim", **metrics_json(point, {})})
    scaled = {"layers_run": point.model.layers, "model_layers": full.model.layers,
              "scaled": point.model.layers != full.model.layers}
    if as_json:
        click.echo(json.dumps(metrics_json(full, pr.metrics, {"executor": "sim", **scaled})))
    else:
        scale = f", first {point.model.layers} of {full.model.layers} layers" if scaled["scaled"] else ""
        print_metrics(full, pr.metrics, f"{point.scenario}: {point.policy.label} (simulated{scale})")


@main.command()
@click.argument("scenario", type=click.Path(dir_okay=False))
@point_options
@_fail_on_user_errors
def schedule(scenario: str, policy: str | None, sets: tuple[str, ...]) -> None:
    """Print a readable summary of the schedule of one point of SCENARIO."""
    from .sim.policies import build_schedule

    point = one_point(scenario, policy, sets)
    sched = build_schedule(point, check_memory=False)
    click.echo(describe_schedule(point, sched))
    sched.memory.check(f"{scenario}: {point.model.name} on {point.hardware.name}, {point.policy.label}")


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


@main.command()
def presets() -> None:
    """List the model and hardware presets."""
    from .sim.presets import HARDWARE, MODELS

    click.echo("models:")
    for m in MODELS.values():
        click.echo(f"  {m.name:<12} {m.layers:>3} layers, hidden {m.hidden}, {m.heads} heads "
                   f"({m.kv_heads} KV), {m.total_weight_bytes / 1e9:.1f} GB fp16")
    click.echo("hardware:")
    for h in HARDWARE.values():
        click.echo(f"  {h.name:<16} {h.gpu.name} {h.gpu.memory_bytes / 1e9:.0f} GB, {h.link.name} "
                   f"{h.link.h2d_pinned_Bps / 1e9:.1f} GB/s H2D pinned, host {h.host.memory_bytes / 1e9:.0f} GB")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
