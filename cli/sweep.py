"""`hssim sweep` (every point of scenario files, resumable, on local cores or Dask) and `hssim cluster`."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import click
import numpy as np

from ..errors import UserError, require_distributed
from ..sim.api import point_key
from ..sim.scenario import MAX_POINTS
from .common import MAX_OPS, Command, check_cluster, check_op_counts, check_output, write_table


@click.command(cls=Command)
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", default="out/sweep", show_default=True,
              help="folder for results.parquet, results.csv, ranking.csv and the points.jsonl journal")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="local worker processes (default: all cores)")
@click.option("--cluster", default=None, metavar="ADDRESS",
              help="run on a Dask cluster (tcp://host:8786), or 'local' to start one on this machine")
@click.option("--fresh", is_flag=True, help="forget finished points in --out and run everything again")
@click.option("--no-report", is_flag=True, help="skip the figures and tables (OUT/report/)")
@click.option("--dry-run", is_flag=True, help="list the points and policy labels the FILES expand to, and stop")
@click.option("--max-points", type=click.IntRange(min=1), default=MAX_POINTS, show_default=True,
              help="refuse scenario files that expand to more points than this")
@click.option("--max-ops", type=click.IntRange(min=1), default=MAX_OPS, show_default=True,
              help="refuse points whose schedule would have more ops than this (each takes memory and time)")
@click.option("--sensitivity", "with_sensitivity", is_flag=True,
              help="also analyse how sure each point's winner is (OUT/sensitivity/; adds `robust` to the ranking)")
def sweep(files: tuple[str, ...], out_dir: str, jobs: int | None, cluster: str | None, fresh: bool,
          no_report: bool, dry_run: bool, max_points: int, max_ops: int, with_sensitivity: bool) -> None:
    """Run every point of the scenario FILES; write results and rank policies per point.

    Resumable: rerun the same command after an interruption and finished points are kept.
    Sweeps of different files may share one --out: the tables hold every point its journal holds.
    """
    from rich.console import Console

    from ..sim.outfiles import FolderLock
    from ..sim.scenario import load_points
    from ..sim.sweep import JOURNAL, best_per_point, check_reachable, run_sweep, write_results

    if dry_run:
        click.echo(describe_points(load_points(files, max_points=max_points)))
        return
    out = check_output(out_dir, "--out", kind="dir", contents=SWEEP_FILES)
    folders = ([] if no_report else ["report", "report/figures", "report/tables"]) + (
        ["sensitivity"] if with_sensitivity else [])
    for sub in folders:  # before any point runs: a file where a folder goes would fail the last step
        if (out / sub).exists() and not (out / sub).is_dir():
            raise UserError(f"--out {out_dir}: {sub} inside it is a file, where the sweep writes a folder; "
                            "fix: move it away or use another folder")
    cluster = check_cluster(cluster)
    console = Console(stderr=True)
    points = load_points(files, max_points=max_points, each=lambda path, pts: check_op_counts(
        pts, path, max_ops, warn=lambda msg: console.print(f"warning: {msg}")))
    if cluster and cluster != "local":
        check_reachable(cluster)  # before --fresh forgets anything, and before the folder is made
    with FolderLock(out):
        where = f"Dask cluster {cluster}" if cluster else f"{jobs or 'all'} local cores"
        console.print(f"hssim sweep: {len(points)} points from {len(files)} file(s) on {where}, out: {out}")
        with _local_cluster(cluster, jobs) as address:
            if fresh and (out / JOURNAL).exists():
                (out / JOURNAL).unlink()
            with SweepProgress(console, len(points)) as progress:
                try:
                    df = run_sweep(points, out, jobs=jobs, cluster=address, on_done=progress.done,
                                   on_skip=progress.skip, include_others=True)
                except KeyboardInterrupt:
                    progress.stop()
                    raise UserError(f"interrupted: {progress.finished} points are saved in {out / JOURNAL}; "
                                    "fix: rerun the same command to resume") from None
        others = len(df) - len({p for p in map(point_key, points)})
        parquet, csv = write_results(df, out)
        ranked = best_per_point(df)
        if with_sensitivity:
            ranked = _with_sensitivity(files, ranked, out / "sensitivity", console)
        write_table(ranked, out / "ranking.csv")
        _print_ranking(ranked)
        counts = df["status"].value_counts().to_dict() if len(df) else {}
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        console.print(f"{len(df)} rows ({summary}; {progress.skipped} reused from an earlier run"
                      + (f"; {others} from other sweeps into this folder" if others > 0 else "")
                      + f") -> {parquet}, {csv}")
        if counts.get("infeasible") or counts.get("failed"):
            console.print("rows that are not ok say why in the error column")
        if not no_report:
            from ..reports import build_report

            console.print(f"report: drawing figures and tables into {out / 'report'}")
            rep = build_report(df, out / "report", progress=lambda msg: console.print(f"report: {msg}"))
            console.print(f"report: {len(rep.paths)} files in {out / 'report'} (index: {out / 'report' / 'README.md'})"
                          + (f"; left out: {', '.join(rep.skipped)}" if rep.skipped else ""))


#: what a sweep writes into its --out folder
SWEEP_FILES = ("results.parquet", "results.csv", "ranking.csv", "points.jsonl")


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


def _stop_http(dask_scheduler=None, dask_worker=None) -> None:
    """Close a Dask server's HTTP port (its dashboard and status pages): hssim asks none of them."""
    server = dask_scheduler if dask_scheduler is not None else dask_worker
    http = getattr(server, "http_server", None)
    if http is not None:
        http.stop()


def start_local_cluster(workers: int, host: str = "127.0.0.1", port: int = 0):
    """A Dask LocalCluster of `workers` processes listening on `host` only, with no HTTP port open:
    Dask starts the scheduler's on 8787 (and one per worker) even with `dashboard_address=None`,
    so they are closed once it is up. Worker processes end with the process that started them."""
    from distributed import Client, LocalCluster

    from ..sim.outfiles import exit_with_parent

    lc = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host=host, scheduler_port=port,
                      dashboard_address=None, worker_dashboard_address=None)
    try:
        with Client(lc) as client:
            client.run_on_scheduler(_stop_http)
            client.run(_stop_http)
            client.run(exit_with_parent)
    except BaseException:
        lc.close()
        raise
    return lc


class _local_cluster:
    """`--cluster local` starts a Dask LocalCluster on loopback for the sweep's duration."""

    def __init__(self, cluster: str | None, jobs: int | None) -> None:
        self.cluster, self.jobs, self.local = cluster, jobs, None

    def __enter__(self) -> str | None:
        if self.cluster is None:
            return None
        require_distributed("hssim sweep --cluster")
        if self.cluster != "local":
            return self.cluster
        self.local = start_local_cluster(self.jobs or 2)
        return self.local.scheduler_address

    def __exit__(self, *exc) -> None:
        if self.local is not None:
            self.local.close()


@click.command(cls=Command)
@click.option("--workers", type=click.IntRange(min=1, max=1024), default=2, show_default=True,
              help="worker processes")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8786, show_default=True,
              help="scheduler port (0: any free one)")
def cluster(workers: int, host: str, port: int) -> None:
    """Start a local Dask cluster to try `hssim sweep --cluster ADDRESS`; Ctrl-C stops it."""
    require_distributed("hssim cluster")
    try:
        lc = start_local_cluster(workers, host, port)
    except OSError as e:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); fix: pick another "
                        "port, or a local address") from None
    with lc:
        click.echo(f"Dask scheduler at {lc.scheduler_address} with {workers} workers; "
                   f"run: hssim sweep FILES --cluster {lc.scheduler_address}   (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            click.echo("stopped")


def describe_points(points) -> str:
    """What `--dry-run` prints: one line per workload point with the policy labels it runs, and the count."""
    from ..sim.api import point_columns

    by_site: dict[tuple, list[str]] = {}
    for p in points:
        c = point_columns(p)
        site = (c["scenario"], c["model"], c["hardware"], c["batch"], c["prompt_len"], c["gen_len"])
        by_site.setdefault(site, []).append(p.policy.label)
    lines = []
    for (scenario, model, hardware, batch, prompt, gen), labels in by_site.items():
        lines.append(f"{scenario}: {model} on {hardware}, batch {batch}, prompt {prompt}, {gen} tokens: "
                     f"{len(labels)} point(s): {'; '.join(labels)}")
    lines.append(f"{len(points)} points at {len(by_site)} workload points; nothing was run")
    return "\n".join(lines)


#: the ranking's columns; the point's where it is printed once per scenario as a heading
RANK_COLUMNS = ("model", "hardware", "batch", "prompt", "gen", "winner", "tok/s", "speed-up", "runner-up")


def _robust_cell(row) -> str:
    r = row["robust"]
    if not isinstance(r, (bool, np.bool_)):
        return "-"  # no policy fits there: nothing was analysed
    if r:
        return "yes"
    return f"no: {row['flipped_by']}" if row["flipped_by"] else "no: joint draws"


def _print_ranking(ranked) -> None:
    """One table per scenario, narrow enough for a 100-column terminal (labels wrap, never cut)."""
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    console = Console(width=100) if not Console().is_terminal else Console()
    point_cols = {"model": "model", "hardware": "hardware", "batch": "batch", "prompt": "prompt_len",
                  "gen": "gen_len"}
    for scenario, rows in ranked.groupby("scenario", sort=False):
        # a column that holds one value in this scenario goes into the title instead
        same = {c: rows[k].iloc[0] for c, k in point_cols.items() if rows[k].nunique() == 1}
        varied = [c for c in point_cols if c not in same]
        fixed = ", ".join(f"{v}" if c in ("model", "hardware") else f"{c} {v}" for c, v in same.items())
        t = Table(title=f"Best policy per point of {scenario}" + (f" ({fixed})" if fixed else ""),
                  caption="best configuration of each kind; speed-up over the baseline named", title_justify="left",
                  pad_edge=False, padding=(0, 1))
        robust = "robust" in rows.columns
        for col in [*varied, *RANK_COLUMNS[5:], *(("robust",) if robust else ())]:
            right = col in ("batch", "prompt", "gen", "tok/s")
            t.add_column(col, overflow="fold", justify="right" if right else "left")
        for key, grp in rows.groupby([point_cols[c] for c in varied] or ["scenario"], sort=False):
            key = key if isinstance(key, tuple) else (key,)
            grp = grp.sort_values("rank")
            first = grp.iloc[0]
            second = grp.iloc[1] if len(grp) > 1 else None
            ratio = first["speedup"]
            t.add_row(*([str(k) for k in key] if varied else []), first["policy_label"],
                      f"{first['throughput_tok_s']:.2f}",
                      "-" if pd.isna(ratio) else f"{ratio:.2f}x over {first['baseline']}",
                      "-" if second is None else f"{second['policy_label']} ({second['throughput_tok_s']:.2f})",
                      *((_robust_cell(first),) if robust else ()))
        console.print(t)


