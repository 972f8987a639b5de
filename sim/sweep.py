"""Sweeps: run many points on local cores or a Dask cluster, resumably and without loss.

Every point has a stable key (`point_key`: a hash of its fully resolved spec and the
hssim version). As each point finishes, its row is appended to `DIR/points.jsonl` and
fsync'd, so a sweep interrupted in any way (Ctrl-C, a killed worker, a crash) loses at
most the points that were running. Restarted with the same arguments, it skips the
points the journal already holds and recomputes only the rest; the results tables are
then rebuilt from the journal with every point exactly once. A point that fails records
its error (status `failed`), a point that does not fit records why (status
`infeasible`), and the sweep goes on; failed points are retried on the next run.
"""

from __future__ import annotations

import json
import math
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import ClusterUnreachable, require_distributed
from .api import POINT_COLUMNS, point_key, provenance, result_row, results_frame, run_point
from .memory import MemoryPlanError
from .outfiles import atomic_path, worker_setup
from .specs import PointSpec

#: columns that identify a workload point across policies (the ranking groups on them)
GROUP_COLUMNS = ["scenario", "model", "hardware", "batch", "prompt_len", "gen_len"]
JOURNAL = "points.jsonl"
#: statuses a rerun does not recompute
FINAL_STATUSES = frozenset({"ok", "infeasible"})


def simulate_row(point: PointSpec) -> dict[str, Any]:
    """A results row for one point. Never raises for a bad point: a point that does not
    fit is `infeasible`, any other error is `failed`, with the message in `error`."""
    try:
        run = run_point(point, engine="list")  # identical to the SimPy replay, several times faster
    except MemoryPlanError as e:
        return result_row(point, None, str(e), status="infeasible")
    except Exception as e:  # noqa: BLE001 - one bad point must not stop a sweep
        return result_row(point, None, f"{type(e).__name__}: {e}", status="failed")
    return result_row(point, run.metrics)


class Journal:
    """Append-only JSON-lines file of finished rows, one line per point, fsync'd.

    A line cut short by a crash is ignored when read back; a later line for the
    same key (a retried failure) replaces an earlier one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tail_checked = False

    def load(self) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return rows
        with self.path.open("rb") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a torn last line from an interrupted write
                if isinstance(row, dict) and "point_key" in row:
                    rows[row["point_key"]] = row
        return rows

    def append(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(row, allow_nan=True) + "\n").encode()
        if not self._tail_checked:  # a line torn by a crash must not swallow the next one
            self._tail_checked = True
            if self._torn_tail():
                data = b"\n" + data
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


    def _torn_tail(self) -> bool:
        try:
            with self.path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() == 0:
                    return False
                f.seek(-1, os.SEEK_END)
                return f.read(1) != b"\n"
        except FileNotFoundError:
            return False


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the parent, which stops them (a terminal sends it to the whole group),
    and end when the parent ends, however it ends (SIGKILL included)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker_setup()


def _run_pool(todo: list[PointSpec], jobs: int, emit: Callable[[dict], None]) -> list[PointSpec]:
    """Run `todo` on a pool of `jobs` processes; return the points a broken pool left unrun.

    Ctrl-C cancels what has not started and stops the workers at once, instead of
    letting the pool finish every queued point whose result nobody would collect.
    """
    finished: set[str] = set()
    pool = ProcessPoolExecutor(max_workers=jobs, initializer=_ignore_sigint)
    try:
        futures = {pool.submit(simulate_row, p): p for p in todo}
        for fut in as_completed(futures):
            row = fut.result()
            finished.add(row["point_key"])
            emit(row)
    except BrokenProcessPool:
        return [p for p in todo if point_key(p) not in finished]
    except BaseException:
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return []


def _run_local(points: Sequence[PointSpec], jobs: int, emit: Callable[[dict], None]) -> None:
    if jobs == 1:
        for p in points:
            emit(simulate_row(p))
        return
    # A worker killed from outside breaks the pool: try the rest once more on a new pool,
    # then one point per pool, so that a point that kills its worker fails alone.
    todo = _run_pool(list(points), jobs, emit)
    if todo:
        todo = _run_pool(todo, jobs, emit)
    for p in todo:
        if _run_pool([p], 1, emit):
            emit(result_row(p, None, "its worker process died while simulating it (three times)",
                            status="failed"))


def _run_dask(points: Sequence[PointSpec], address: str, emit: Callable[[dict], None]) -> None:
    require_distributed("--cluster")
    from distributed import Client
    from distributed import as_completed as dask_completed
    from distributed.client import FutureCancelledError

    try:
        client = Client(address, timeout="15s")
    except (OSError, TimeoutError) as e:
        raise ClusterUnreachable(f"--cluster {address}: no Dask scheduler answers ({type(e).__name__}); fix: "
                                 "check the address, or start one with `hssim cluster` or `dask scheduler`, "
                                 "or use --cluster local") from None
    with client:
        futures = client.map(simulate_row, list(points), pure=False)
        by_future = dict(zip(futures, points, strict=True))
        for fut in dask_completed(futures):
            try:
                row = fut.result()
            except (FutureCancelledError, Exception) as e:  # noqa: BLE001 - e.g. KilledWorker
                row = result_row(by_future[fut], None, f"{type(e).__name__}: {e}", status="failed")
            row["point_key"] = point_key(by_future[fut])  # a worker's hssim may differ: the client's key rules
            emit(row)


def run_sweep(
    points: Sequence[PointSpec],
    out_dir: Path,
    jobs: int | None = None,
    cluster: str | None = None,
    on_done: Callable[[dict[str, Any]], None] | None = None,
    on_skip: Callable[[int], None] | None = None,
    include_others: bool = False,
) -> pd.DataFrame:
    """Run the points not yet in `out_dir`'s journal; return every point's row, in order.

    `cluster` is a Dask scheduler address (tcp://host:port); None runs on local processes.
    With `include_others`, the rows the journal holds for other points (other sweeps that
    wrote to the same folder) follow, so that the tables hold every row the journal holds.
    """
    journal = Journal(Path(out_dir) / JOURNAL)
    done = {k: r for k, r in journal.load().items() if r.get("status") in FINAL_STATUSES}
    unique: dict[str, PointSpec] = {}
    for p in points:
        unique.setdefault(point_key(p), p)
    todo = [p for k, p in unique.items() if k not in done]
    if on_skip:
        on_skip(len(unique) - len(todo))

    def emit(row: dict[str, Any]) -> None:
        journal.append(row)
        done[row["point_key"]] = row
        if on_done:
            on_done(row)

    if todo:
        if cluster:
            _run_dask(todo, cluster, emit)
        else:
            _run_local(todo, jobs or os.cpu_count() or 1, emit)
    rows = [done[k] for k in unique if k in done]
    if include_others:
        rows += _other_rows(journal, set(unique))
    return results_frame(rows)


def _other_rows(journal: Journal, exclude: set[str]) -> list[dict[str, Any]]:
    """The journal's rows of other sweeps that wrote to the same folder, for this hssim's code
    (a row whose key this code no longer gives its point is stale and left out), in journal order."""
    rows = []
    for key, row in journal.load().items():
        if key in exclude:
            continue
        try:
            current = point_key(PointSpec.model_validate_json(row["point_json"])) == key
        except (KeyError, TypeError, ValueError):
            current = False
        if current:
            rows.append(row)
    return rows


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Raise ClusterUnreachable unless something listens at the scheduler address (tcp://host:port)."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        raise ClusterUnreachable(f"--cluster {address}: no Dask scheduler answers ({type(e).__name__}); fix: "
                                 "check the address, or start one with `hssim cluster` or `dask scheduler`, "
                                 "or use --cluster local") from None


def run_points(points: Sequence[PointSpec], jobs: int | None = 1) -> pd.DataFrame:
    """Rows for points, without a journal (for tests and small scripts)."""
    rows: list[dict] = []
    _run_local(points, jobs or 1, rows.append)
    order = {point_key(p): i for i, p in enumerate(points)}
    return results_frame(sorted(rows, key=lambda r: order[r["point_key"]]))


def write_atomic(df: pd.DataFrame, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write parquet or CSV to a temporary file and rename it into place; `metadata` goes into
    a parquet file's key-value metadata."""
    with atomic_path(Path(path), 0o666) as tmp:
        if Path(path).suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(df, preserve_index=False)
            if metadata:
                table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                       **{k.encode(): str(v).encode() for k, v in metadata.items()}})
            pq.write_table(table, tmp)
        else:
            df.to_csv(tmp, index=False)


def write_results(df: pd.DataFrame, out_dir: Path) -> tuple[Path, Path]:
    parquet, csv = Path(out_dir) / "results.parquet", Path(out_dir) / "results.csv"
    write_atomic(df, parquet, metadata=provenance())
    write_atomic(df, csv)
    return parquet, csv


#: the baseline of a point's speed-ups, in order of preference: the first kind that ran there
BASELINE_KINDS = ("kv-only", "flexgen")


def best_per_point(df: pd.DataFrame) -> pd.DataFrame:
    """For each workload point: every policy kind's best configuration, ranked.

    Columns: the group columns, rank, policy, policy_label, throughput_tok_s, speedup
    (over the best configuration of kv-only at that point where it ran, else of flexgen,
    either attention placement; NaN where neither ran), baseline (that configuration's
    label, e.g. `kv-only cpu-attn`), bound_tok_s, gpu_busy.
    """
    cols = [*GROUP_COLUMNS, "rank", "policy", "policy_label", "throughput_tok_s", "speedup", "baseline",
            "bound_tok_s", "gpu_busy"]
    ok = df[df["status"] == "ok"] if "status" in df else df.iloc[0:0]
    if ok.empty:
        return pd.DataFrame(columns=cols)
    best = ok.loc[ok.groupby([*GROUP_COLUMNS, "policy"], sort=False)["throughput_tok_s"].idxmax()]
    out = []
    for _, grp in best.groupby(GROUP_COLUMNS, sort=False):
        grp = grp.sort_values("throughput_tok_s", ascending=False).copy()
        kind = next((k for k in BASELINE_KINDS if (grp["policy"] == k).any()), None)
        base_row = grp.loc[grp["policy"] == kind].iloc[0] if kind else None
        grp["rank"] = range(1, len(grp) + 1)
        grp["speedup"] = grp["throughput_tok_s"] / (base_row["throughput_tok_s"] if kind else math.nan)
        grp["baseline"] = base_row["policy_label"] if kind else None  # the exact configuration
        out.append(grp)
    return pd.concat(out)[cols].reset_index(drop=True)


__all__ = ["GROUP_COLUMNS", "POINT_COLUMNS", "Journal", "best_per_point", "run_points", "run_sweep",
           "simulate_row", "write_results"]
