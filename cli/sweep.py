"""`hssim sweep` (every point of scenario files, resumable, on local cores or Dask) and `hssim cluster`."""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path

import click
import numpy as np

from ..errors import UserError
from .common import Command, write_table


@click.command(cls=Command)
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", default="out/sweep", show_default=True, type=click.Path(file_okay=False),
              help="folder for results.parquet, results.csv, ranking.csv and the points.jsonl journal")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="local worker processes (default: all cores)")
@click.option("--cluster", default=None, metavar="ADDRESS",
              help="run on a Dask cluster (tcp://host:8786), or 'local' to start one on this machine")
@click.option("--fresh", is_flag=True, help="forget finished points in --out and run everything again")
@click.option("--no-report", is_flag=True, help="skip the figures and tables (OUT/report/)")
@click.option("--sensitivity", "with_sensitivity", is_flag=True,
              help="also analyse how sure each point's winner is (OUT/sensitivity/; adds `robust` to the ranking)")
def sweep(files: tuple[str, ...], out_dir: str, jobs: int | None, cluster: str | None, fresh: bool,
          no_report: bool, with_sensitivity: bool) -> None:
    """Run every point of the scenario FILES; write results and rank policies per point.

    Resumable: rerun the same command after an interruption and finished points are kept.
    """
    from rich.console import Console

    from ..sim.scenario import load_points
    from ..sim.sweep import JOURNAL, best_per_point, run_sweep, write_results

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
    if with_sensitivity:
        ranked = _with_sensitivity(files, ranked, out / "sensitivity", console)
    write_table(ranked, out / "ranking.csv")
    _print_ranking(ranked)
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    console.print(f"{len(df)} rows ({summary}; {progress.skipped} reused from an earlier run) -> {parquet}, {csv}")
    if counts.get("infeasible") or counts.get("failed"):
        console.print("rows that are not ok say why in the error column")
    if not no_report:
        from ..reports import build_report

        rep = build_report(df, out / "report")
        console.print(f"report: {len(rep.paths)} files in {out / 'report'} (index: {out / 'report' / 'README.md'})"
                      + (f"; left out: {', '.join(rep.skipped)}" if rep.skipped else ""))


def _with_sensitivity(files, ranked, out: Path, console):
    """Analyse every workload point of `files`, write OUT/sensitivity/, and add each point's `robust`,
    `margin_pct` and `flipped_by` to the ranking's rows."""
    import pandas as pd

    from ..reports.sensitivity import summary_frame, write_sensitivity
    from ..sim.scenario import load_points
    from ..sim.sensitivity import DEFAULT_SAMPLES, DEFAULT_SEED, GROUP_KEYS, workload_groups
    from .sensitivity import analyse, scenario_uncertainty

    results = []
    for f in files:
        groups = workload_groups(load_points([f]))
        results += analyse(groups, scenario_uncertainty(f), DEFAULT_SAMPLES, DEFAULT_SEED, console,
                           label=f"sensitivity of {f}, ")[0]
    if not results:
        return ranked
    write_sensitivity(results, out)
    console.print(f"sensitivity: {len(results)} points -> {out} (read: {out / 'sensitivity.md'})")
    summary = summary_frame(results)[[*GROUP_KEYS, "robust", "margin_pct", "flipped_by"]]
    return pd.merge(ranked, summary, on=list(GROUP_KEYS), how="left")


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


@click.command(cls=Command)
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


def _robust_cell(row) -> str:
    r = row["robust"]
    if not isinstance(r, (bool, np.bool_)):
        return "-"  # no policy fits there: nothing was analysed
    if r:
        return "yes"
    return f"no: {row['flipped_by']}" if row["flipped_by"] else "no: joint draws"


def _print_ranking(ranked) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Best policy per point (best configuration of each kind)")
    robust = "robust" in ranked.columns
    for col in ("scenario", "model", "hardware", "batch", "prompt", "gen", "winner", "tok/s", "speed-up",
                "runner-up", *(("robust",) if robust else ())):
        t.add_column(col)
    for key, grp in ranked.groupby(["scenario", "model", "hardware", "batch", "prompt_len", "gen_len"], sort=False):
        grp = grp.sort_values("rank")
        first = grp.iloc[0]
        second = grp.iloc[1] if len(grp) > 1 else None
        ratio = first["speedup"]
        t.add_row(*[str(k) for k in key], first["policy_label"], f"{first['throughput_tok_s']:.2f}",
                  "-" if math.isnan(ratio) else f"{ratio:.2f}x over {first['baseline']}",
                  "-" if second is None else f"{second['policy_label']} ({second['throughput_tok_s']:.2f})",
                  *((_robust_cell(first),) if robust else ()))
    console = Console()
    if not console.is_terminal:  # a log file: wide enough that no column is cut to "…"
        console = Console(width=max(console.width, 200))
    console.print(t)


