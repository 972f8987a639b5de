"""Tables of a results table, written as CSV (full precision) and Markdown (rounded)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .figures import RESOURCE_NAMES
from .results import Skip, baseline_name, baseline_per_point, best_per_series, ok_rows, workload_columns
from .style import series_name, series_sort_key


def _binding(df: pd.DataFrame) -> pd.Series:
    cols = [c for c in RESOURCE_NAMES if c in df.columns]
    if not cols:
        return pd.Series("", index=df.index)
    return df[cols].astype(float).idxmax(axis=1).map(RESOURCE_NAMES)


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every workload point, each policy series at its best configuration, fastest first."""
    best = best_per_series(ok_rows(df))
    wl = workload_columns(best)
    out = best[wl].copy()
    out["policy"] = best["series"].map(series_name)
    out["configuration"] = best["policy_label"] if "policy_label" in best else best["series"]
    out["configs_tried"] = best["configs"]
    out["throughput_tok_s"] = best["throughput_tok_s"]
    out["speedup"] = best["speedup"]
    out["speedup_over"] = best["baseline"].map(lambda k: baseline_name(k) if isinstance(k, str) else "")
    for col in ("token_latency_s", "gpu_busy", "h2d_bytes", "d2h_bytes"):  # the results' own units
        if col in best:
            out[col] = best[col]
    if "bound_tok_s" in best:
        out["bound_fraction"] = best["throughput_tok_s"] / best["bound_tok_s"]
    out["binding_resource"] = _binding(best)
    out["_order"] = best["series"].map(series_sort_key)
    out = out.sort_values([*wl, "throughput_tok_s"], ascending=[True] * len(wl) + [False], kind="stable")
    return out.drop(columns="_order").reset_index(drop=True)


def ratio_table(df: pd.DataFrame) -> pd.DataFrame:
    """Token latency at every kv_ratio of every swept policy, normalised to the baseline at the same point.

    The baseline is KV-only, else FlexGen (`results.baseline_per_point`), named in `relative_to`.
    """
    every = ok_rows(df, ["token_latency_s"])  # the baselines too, which read no kv_ratio
    ok = ok_rows(every, ["kv_ratio"])
    wl = workload_columns(ok)
    swept = ok[ok.groupby([*wl, "series"], dropna=False)["kv_ratio"].transform("nunique") >= 2]
    if swept.empty:
        raise Skip("no kv_ratio sweep")
    base = baseline_per_point(every, "token_latency_s", lower_is_better=True)
    rows = swept.join(base.rename(columns={"baseline_value": "_base"}), on=wl)
    out = rows[wl].copy()
    out["policy"] = rows["series"].map(series_name)
    out["kv_ratio"] = rows["kv_ratio"]
    out["recompute_ratio"] = 1.0 - rows["kv_ratio"]
    out["token_latency_s"] = rows["token_latency_s"]
    out["latency_vs_baseline"] = rows["token_latency_s"] / rows["_base"]
    out["relative_to"] = rows["baseline"].map(lambda k: baseline_name(k) if isinstance(k, str) else "")
    out["throughput_tok_s"] = rows["throughput_tok_s"]
    return out.sort_values([*wl, "policy", "kv_ratio"], kind="stable").reset_index(drop=True)


def infeasible_table(df: pd.DataFrame) -> pd.DataFrame:
    """Points that do not fit in memory, with the first line of the reason."""
    bad = df[df["status"] != "ok"]
    if bad.empty:
        raise Skip("every point fits")
    cols = [c for c in [*workload_columns(df), "policy_label"] if c in bad.columns]
    out = bad[cols].copy()
    err = bad["error"] if "error" in bad else pd.Series("", index=bad.index)
    out["error"] = err.fillna("").astype(str).map(lambda e: e.splitlines()[0] if e else "")
    return out.reset_index(drop=True)


def _cell(v) -> str:
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "–"
        # '#' keeps trailing zeros: a speed-up of exactly 1 reads 1.00, not 1
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:#.3g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


#: columns that hold a fraction of 1 (the Markdown shows them in %)
FRACTION_COLUMNS = ("gpu_busy", "h2d_busy", "d2h_busy", "cpu_busy", "bound_fraction")


def readable(df: pd.DataFrame) -> pd.DataFrame:
    """The units a reader wants: seconds below 1 s as ms, fractions as %, bytes as GB; each header says
    which. The CSV keeps the results' own units (s, fractions, bytes)."""
    out = df.copy()
    for col in df.columns:
        if col.endswith("_bytes") and pd.api.types.is_numeric_dtype(df[col]):
            out = out.rename(columns={col: col.removesuffix("_bytes") + " (GB)"})
            out[col.removesuffix("_bytes") + " (GB)"] = df[col].astype(float) * 1e-9
        elif col in FRACTION_COLUMNS:
            out = out.rename(columns={col: col + " (%)"})
            out[col + " (%)"] = df[col].astype(float) * 100.0
        elif col.endswith("_s") and not col.endswith("_tok_s") and pd.api.types.is_numeric_dtype(df[col]) \
                and len(df) and float(df[col].abs().max()) < 1.0:
            out = out.rename(columns={col: col.removesuffix("_s") + " (ms)"})
            out[col.removesuffix("_s") + " (ms)"] = df[col].astype(float) * 1e3
    return out


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub Markdown table in readable units (`readable`), numbers rounded for reading (the CSV keeps
    full precision and the results' units)."""
    df = readable(df)
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(df[c]) else "---" for c in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    df.to_csv(csv, index=False)
    md.write_text(to_markdown(df))
    return [csv, md]


#: table name -> (builder, one-line description)
TABLES = {
    "summary": (summary_table, "each policy's best configuration at every workload point, with speed-up "
                               "over the baseline (KV-only, else FlexGen), GPU busy, traffic and distance to "
                               "the bound"),
    "recompute_ratio": (ratio_table, "token latency at every KV ratio r, normalised to the baseline (KV-only, "
                                     "else FlexGen)"),
    "infeasible": (infeasible_table, "points that do not fit in GPU or host memory, and why"),
}
