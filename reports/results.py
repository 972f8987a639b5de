"""Read a sweep's results table and pick what the figures compare.

A *series* is what a figure legend names: a policy kind, split by CPU attention
(FlexGen's variant). Several configurations of one series at one workload point
(a kv_ratio sweep, other block shapes) collapse to the one with the highest
throughput, and the legend says so ("best r"). Unknown policy kinds and extra
columns pass through untouched.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..sim.sweep import GROUP_COLUMNS

#: columns every figure needs; the rest are checked figure by figure
REQUIRED_COLUMNS = ["scenario", "model", "hardware", "policy", "status", "throughput_tok_s"]
#: policy parameters that may take several values per series at one workload point
CONFIG_COLUMNS = ["kv_ratio", "gpu_batch_size", "num_gpu_batches", "weights_gpu_percent", "cache_gpu_percent",
                  "pinned"]
FIX = "fix: pass the results.parquet or results.csv that `hssim sweep --out DIR` wrote"


class Skip(Exception):
    """The results lack what a figure needs; the message says what."""


def _user_error(msg: str) -> Exception:
    from ..cli import UserError  # imported late: hssim.cli imports this package

    return UserError(msg)


def _read(path: Path) -> pd.DataFrame:
    if path.is_dir():
        for name in ("results.parquet", "results.csv"):
            if (path / name).is_file():
                return _read(path / name)
        raise _user_error(f"{path}: no results.parquet or results.csv in this folder; {FIX}")
    if not path.is_file():
        raise _user_error(f"{path}: no such file; {FIX}")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix == ".csv":
            return pd.read_csv(path)
    except Exception as e:  # any reader failure means the file is not a results table
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _user_error(f"{path}: cannot read it as a {path.suffix[1:]} table ({first}); {FIX}") from None
    raise _user_error(f"{path}: unknown table format; {FIX}")


def load_results(source: pd.DataFrame | str | Path) -> pd.DataFrame:
    """A results table from a DataFrame, a results file, or a sweep's output folder.

    Raises `hssim.cli.UserError` when the file is missing, unreadable or lacks the
    columns of a results table. Adds the `series` column.
    """
    name = "results table" if isinstance(source, pd.DataFrame) else str(source)
    df = source.copy() if isinstance(source, pd.DataFrame) else _read(Path(source))
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise _user_error(f"{name}: not a results table, it lacks the columns {', '.join(missing)}; {FIX}")
    df["series"] = series_of(df)
    return df.reset_index(drop=True)


def series_of(df: pd.DataFrame) -> pd.Series:
    """Series key per row: the policy kind, with ' cpu-attn' when attention runs on the CPU."""
    kind = df["policy"].astype(str)
    if "cpu_attention" not in df.columns:
        return kind
    cpu = df["cpu_attention"].map(lambda v: str(v).strip().lower() in ("true", "1", "1.0"))
    return kind.where(~cpu, kind + " cpu-attn")


def ok_rows(df: pd.DataFrame, needs: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """Rows that simulated, with every column in `needs` present and finite."""
    missing = [c for c in needs if c not in df.columns]
    if missing:
        raise Skip(f"the results have no {', '.join(missing)} column")
    ok = df[df["status"] == "ok"]
    for c in needs:
        keep = ok[c].notna()
        if pd.api.types.is_numeric_dtype(ok[c]):
            keep &= np.isfinite(ok[c].astype(float))
        ok = ok[keep]
    if ok.empty:
        raise Skip("no feasible points" + (f" with {', '.join(needs)}" if needs else ""))
    return ok


def workload_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in GROUP_COLUMNS if c in df.columns]


def best_per_series(ok: pd.DataFrame) -> pd.DataFrame:
    """Each series' highest-throughput configuration at each workload point.

    Adds `configs` (how many configurations competed) and `speedup_vs_kv_only`
    (against the best kv-only configuration, either attention placement, at that point).
    """
    keys = [*workload_columns(ok), "series"]
    counts = ok.groupby(keys, sort=False, dropna=False)["throughput_tok_s"].transform("size")
    ok = ok.assign(configs=counts)
    idx = ok.groupby(keys, sort=False, dropna=False)["throughput_tok_s"].idxmax()
    best = ok.loc[idx].copy()
    wl = workload_columns(ok)
    kv = ok[ok["policy"] == "kv-only"].groupby(wl, dropna=False)["throughput_tok_s"].max().rename("kv_only_tok_s")
    best = best.join(kv, on=wl)
    best["speedup_vs_kv_only"] = best["throughput_tok_s"] / best["kv_only_tok_s"]
    return best.reset_index(drop=True)


def varied_config(ok: pd.DataFrame) -> dict[str, str]:
    """Per series, what its legend must say was optimised: 'best r', 'best config' or ''."""
    keys = [*workload_columns(ok), "series"]
    out: dict[str, str] = {}
    for series, grp in ok.groupby("series", sort=False):
        per_point = grp.groupby(keys[:-1], dropna=False)
        if per_point.size().max() <= 1:
            out[series] = ""
            continue
        varied = [c for c in CONFIG_COLUMNS if c in grp.columns and per_point[c].nunique().max() > 1]
        out[series] = "best r" if varied == ["kv_ratio"] else "best config"
    return out


def legend_label(series: str, note: str) -> str:
    from .style import series_name

    return f"{series_name(series)}, {note}" if note else series_name(series)


def lower_median(values) -> float:
    vals = sorted(set(values))
    return vals[(len(vals) - 1) // 2] if vals else math.nan


def representative_workloads(ok: pd.DataFrame) -> pd.DataFrame:
    """One workload per (scenario, model, hardware) for the per-policy bar figures.

    The one where the most series ran, then the prompt length nearest the group's
    (lower) median, then the largest batch. Returns the workload columns.
    """
    wl = workload_columns(ok)
    site = [c for c in ("scenario", "model", "hardware") if c in wl]
    points = ok.groupby(wl, sort=False, dropna=False)["series"].nunique().rename("n_series").reset_index()
    chosen = []
    for _, grp in points.groupby(site, sort=False, dropna=False):
        grp = grp.copy()
        if "prompt_len" in grp:
            grp["_dist"] = (grp["prompt_len"] - lower_median(grp["prompt_len"])).abs()
        else:
            grp["_dist"] = 0
        grp["_batch"] = grp.get("batch", 0)
        grp = grp.sort_values(["n_series", "_dist", "_batch"], ascending=[False, True, False], kind="stable")
        chosen.append(grp.iloc[0][wl])
    return pd.DataFrame(chosen).reset_index(drop=True)


def select_workloads(best: pd.DataFrame, workloads: pd.DataFrame) -> pd.DataFrame:
    """Rows of `best` at the given workload points, in the order of `workloads`."""
    wl = list(workloads.columns)
    order = workloads.assign(_order=range(len(workloads)))
    return best.merge(order, on=wl, how="inner").sort_values("_order", kind="stable").drop(columns="_order")


def group_label(row: pd.Series, multi_hardware: bool = True) -> str:
    """Tick label of a workload point: model, hardware, prompt length."""
    parts = [str(row["model"])]
    if multi_hardware:
        parts.append(str(row["hardware"]))
    if "prompt_len" in row:
        parts.append(f"prompt {int(row['prompt_len'])}")
    return "\n".join(parts)
