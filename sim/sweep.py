"""Run many points on local cores; write the results table; rank policies per point."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pandas as pd

from .api import POINT_COLUMNS, result_row, run_point
from .memory import MemoryPlanError
from .specs import PointSpec

#: columns that identify a workload point across policies (the ranking groups on them)
GROUP_COLUMNS = ["scenario", "model", "hardware", "batch", "prompt_len", "gen_len"]


def simulate_row(point: PointSpec) -> dict[str, Any]:
    """A results row for one point; a point that does not fit records its error."""
    try:
        run = run_point(point)
    except MemoryPlanError as e:
        return result_row(point, None, str(e))
    return result_row(point, run.metrics)


def run_points(
    points: Sequence[PointSpec],
    jobs: int | None = None,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """Simulate every point (in parallel when jobs > 1); rows keep the input order."""
    jobs = jobs or os.cpu_count() or 1
    rows: list[dict[str, Any] | None] = [None] * len(points)
    if jobs == 1 or len(points) <= 1:
        for i, point in enumerate(points):
            rows[i] = simulate_row(point)
            if on_done:
                on_done(rows[i])
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(simulate_row, p): i for i, p in enumerate(points)}
            for fut in as_completed(futures):
                row = fut.result()
                rows[futures[fut]] = row
                if on_done:
                    on_done(row)
    return pd.DataFrame(rows)


def write_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write parquet or CSV to a temporary file and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_results(df: pd.DataFrame, out_dir: Path) -> tuple[Path, Path]:
    parquet, csv = out_dir / "results.parquet", out_dir / "results.csv"
    write_atomic(df, parquet)
    write_atomic(df, csv)
    return parquet, csv


def best_per_point(df: pd.DataFrame) -> pd.DataFrame:
    """For each workload point: every policy kind's best configuration, ranked.

    Columns: the group columns, rank, policy, policy_label, throughput_tok_s,
    speedup_vs_kv_only (against the best kv-only configuration of that point).
    """
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame(columns=[*GROUP_COLUMNS, "rank", "policy", "policy_label",
                                     "throughput_tok_s", "speedup_vs_kv_only"])
    best = ok.loc[ok.groupby([*GROUP_COLUMNS, "policy"], sort=False)["throughput_tok_s"].idxmax()]
    out = []
    for _, grp in best.groupby(GROUP_COLUMNS, sort=False):
        grp = grp.sort_values("throughput_tok_s", ascending=False).copy()
        kv = grp.loc[grp["policy"] == "kv-only", "throughput_tok_s"]
        base = kv.iloc[0] if len(kv) else math.nan
        grp["rank"] = range(1, len(grp) + 1)
        grp["speedup_vs_kv_only"] = grp["throughput_tok_s"] / base
        out.append(grp)
    cols = [*GROUP_COLUMNS, "rank", "policy", "policy_label", "throughput_tok_s", "speedup_vs_kv_only",
            "bound_tok_s", "gpu_busy"]
    return pd.concat(out)[cols].reset_index(drop=True)


__all__ = ["GROUP_COLUMNS", "POINT_COLUMNS", "best_per_point", "run_points", "simulate_row", "write_results"]
