"""Read a sweep's results table and pick what the figures compare.

A *series* is what a figure legend names: a policy kind, split by the variants
the papers plot as separate systems (CPU attention for KV-only and FlexGen,
naive mini-batches for HybridServe, the per-step or a fixed split for KVPR,
pinned K,V for FlexGen, no step barrier for HybridServe and KVPR). Several
configurations of one series at one workload point (a kv_ratio sweep, other block
shapes) collapse to the one with the highest throughput, and the legend says so
("best r"). Speed-ups are over a *baseline*: KV-only where it ran at that point,
else FlexGen (the better attention placement of each). Unknown policy kinds and
extra columns pass through untouched.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..sim.sweep import GROUP_COLUMNS

#: columns every figure needs; the rest are checked figure by figure
REQUIRED_COLUMNS = ["scenario", "model", "hardware", "policy", "status", "throughput_tok_s"]
#: policy parameters that may take several values per series at one workload point
CONFIG_COLUMNS = ["kv_ratio", "gpu_batch_size", "num_gpu_batches", "weights_gpu_percent", "cache_gpu_percent",
                  "pinned", "cache_pinned", "block_tokens", "mini_batching", "split_tokens", "split_rule",
                  "step_barrier"]
#: baseline series in order of preference (the first that ran at a point is used) and their names
BASELINES = {"kv-only": ("kv-only", "kv-only cpu-attn"), "flexgen": ("flexgen", "flexgen cpu-attn")}
#: metrics that must all match for two series' points to count as the same run
SAME_RUN_COLUMNS = ["throughput_tok_s", "token_latency_s", "h2d_bytes", "d2h_bytes", "gpu_busy", "makespan_s"]
FIX = "fix: pass the results.parquet or results.csv that `hssim sweep --out DIR` wrote"


class Skip(Exception):
    """The results lack what a figure needs; the message says what."""


def _read(path: Path) -> pd.DataFrame:
    if path.is_dir():
        for name in ("results.parquet", "results.csv"):
            if (path / name).is_file():
                return _read(path / name)
        raise UserError(f"{path}: no results.parquet or results.csv in this folder; {FIX}")
    if not path.is_file():
        raise UserError(f"{path}: no such file; {FIX}")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix == ".csv":
            return pd.read_csv(path)
    except Exception as e:  # any reader failure means the file is not a results table
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: cannot read it as a {path.suffix[1:]} table ({first}); {FIX}") from None
    raise UserError(f"{path}: unknown table format; {FIX}")


def load_results(source: pd.DataFrame | str | Path) -> pd.DataFrame:
    """A results table from a DataFrame, a results file, or a sweep's output folder.

    Raises `hssim.errors.UserError` when the file is missing, unreadable or lacks the
    columns of a results table. Adds the `series` column.
    """
    name = "results table" if isinstance(source, pd.DataFrame) else str(source)
    df = source.copy() if isinstance(source, pd.DataFrame) else _read(Path(source))
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{name}: not a results table, it lacks the columns {', '.join(missing)}; {FIX}")
    df["series"] = series_of(df)
    return df.reset_index(drop=True)


def _flag(df: pd.DataFrame, column: str, default: bool) -> pd.Series:
    """A boolean column read from parquet (bool) or CSV (text); missing values take `default`."""
    if column not in df.columns:
        return pd.Series(default, index=df.index)
    return df[column].map(lambda v: default if pd.isna(v) else str(v).strip().lower() in ("true", "1", "1.0"))


def _text(df: pd.DataFrame, column: str) -> pd.Series:
    if column not in df.columns:
        return pd.Series("", index=df.index)
    return df[column].map(lambda v: "" if pd.isna(v) else str(v))


def series_of(df: pd.DataFrame) -> pd.Series:
    """Series key per row: the policy kind, then its variant tokens (see `style.VARIANT_NAMES`).

    `kv-only cpu-attn`, `flexgen cpu-attn`, `flexgen pinned-kv`, `hybridserve naive`,
    `kvpr per-step`, `kvpr fixed-l`, `hybridserve no-barrier`; the paper's own setting
    (GPU attention, balanced mini-batches, KVPR's closed-form split, FlexGen's unpinned
    K,V, the step barrier) adds nothing.
    """
    kind = df["policy"].astype(str)
    key = kind.copy()
    key = key.where(~_flag(df, "cpu_attention", False), key + " cpu-attn")
    key = key.where(~((kind == "flexgen") & _flag(df, "cache_pinned", False)), key + " pinned-kv")
    key = key.where(~((kind == "hybridserve") & (_text(df, "mini_batching") == "naive")), key + " naive")
    # a fixed l is rule `fixed`; the closed form records the l it chose beside its own rule
    rule = _text(df, "split_rule")
    fixed = rule == "fixed"
    is_kvpr = kind == "kvpr"
    key = key.where(~(is_kvpr & fixed), key + " fixed-l")
    key = key.where(~(is_kvpr & (rule == "per-step")), key + " per-step")
    barrier_kinds = kind.isin(["hybridserve", "kvpr"])
    return key.where(~(barrier_kinds & ~_flag(df, "step_barrier", True)), key + " no-barrier")


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


def baseline_per_point(ok: pd.DataFrame, value: str = "throughput_tok_s", lower_is_better: bool = False
                       ) -> pd.DataFrame:
    """The baseline at each workload point: KV-only if it ran there, else FlexGen.

    Either attention placement counts, the better one is used, and named: indexed by the
    workload columns; columns `baseline` (the exact series key of the better placement,
    e.g. `kv-only` or `kv-only cpu-attn`) and `baseline_value` (its best `value`). Points
    with neither policy are absent.
    """
    wl = workload_columns(ok)
    series = ok["series"] if "series" in ok.columns else series_of(ok)
    found = []
    for members in BASELINES.values():
        rows = ok[series.isin(members)].assign(_series=series).dropna(subset=[value])
        if rows.empty:
            continue
        pick = rows.groupby(wl, dropna=False)[value].idxmin() if lower_is_better else \
            rows.groupby(wl, dropna=False)[value].idxmax()
        best = rows.loc[pick.to_numpy()]
        found.append(pd.DataFrame({"baseline": best["_series"].to_numpy(),
                                   "baseline_value": best[value].to_numpy()}, index=pick.index))
    if not found:
        return pd.DataFrame({"baseline": pd.Series(dtype=object), "baseline_value": pd.Series(dtype=float)},
                            index=pd.MultiIndex.from_tuples([], names=wl) if len(wl) > 1 else None)
    both = pd.concat(found)
    both = both[np.isfinite(both["baseline_value"].astype(float))]
    return both[~both.index.duplicated(keep="first")]


def baseline_name(key: str) -> str:
    """What a speed-up or a normalised axis is 'over': 'KV-only' or 'FlexGen'."""
    from .style import series_name

    return series_name(key)


def best_per_series(ok: pd.DataFrame) -> pd.DataFrame:
    """Each series' highest-throughput configuration at each workload point.

    Adds `configs` (how many configurations competed), `baseline` (`kv-only` or
    `flexgen`, see `baseline_per_point`), `baseline_tok_s` and `speedup` (over the
    baseline's best configuration, either attention placement, at that point; NaN
    where neither ran).
    """
    keys = [*workload_columns(ok), "series"]
    counts = ok.groupby(keys, sort=False, dropna=False)["throughput_tok_s"].transform("size")
    ok = ok.assign(configs=counts)
    idx = ok.groupby(keys, sort=False, dropna=False)["throughput_tok_s"].idxmax()
    best = ok.loc[idx].copy()
    wl = workload_columns(ok)
    base = baseline_per_point(ok).rename(columns={"baseline_value": "baseline_tok_s"})
    best = best.drop(columns=[c for c in ("baseline", "baseline_tok_s", "speedup") if c in best], errors="ignore")
    best = best.join(base, on=wl)
    best["speedup"] = best["throughput_tok_s"] / best["baseline_tok_s"]
    return best.reset_index(drop=True)


def _same_run(a: pd.Series, b: pd.Series) -> bool:
    cols = [c for c in SAME_RUN_COLUMNS if c in a.index and c in b.index]
    return bool(cols) and all(
        (pd.isna(a[c]) and pd.isna(b[c])) or (not pd.isna(a[c]) and not pd.isna(b[c])
                                               and math.isclose(float(a[c]), float(b[c]), rel_tol=1e-9))
        for c in cols)


def duplicate_series(best: pd.DataFrame) -> dict[str, str]:
    """Series whose best configuration is, at every point where it ran, the same run as another's.

    E.g. token recompute whose best ratio is r = 1 everywhere: it stores only K,V and its
    run is KV-only's. Maps each such series to the series it repeats (the earlier one in
    the canonical order); a line or Gantt panel of it would only hide or repeat that one.
    """
    from .style import series_sort_key

    wl = workload_columns(best)
    order = sorted(best["series"].unique(), key=series_sort_key)
    by_series = {s: best[best["series"] == s].set_index(wl) for s in order}
    out: dict[str, str] = {}
    for i, s in enumerate(order):
        mine = by_series[s]
        for other in order[:i]:
            if other in out:
                continue
            theirs = by_series[other]
            if not mine.index.isin(theirs.index).all():
                continue
            if all(_same_run(mine.loc[[k]].iloc[0], theirs.loc[[k]].iloc[0]) for k in mine.index):
                out[s] = other
                break
    return out


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
        out[series] = {("kv_ratio",): "best r", ("split_tokens",): "best l"}.get(tuple(varied), "best config")
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
