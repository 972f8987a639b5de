"""Figures drawn from a results table alone (no re-simulation).

Each builder takes a loaded results table (`results.load_results`) and returns a
`Drawn`, or raises `Skip` saying what the results lack. Lines and bars carry
their series' legend name as their matplotlib label, so tests can read back what
was plotted.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FixedLocator, FuncFormatter, PercentFormatter

from .results import (
    Skip,
    best_per_series,
    group_label,
    legend_label,
    lower_median,
    ok_rows,
    representative_workloads,
    select_workloads,
    varied_config,
    workload_columns,
)
from .style import (
    COLUMN_IN,
    PAGE_IN,
    SERIES_ORDER,
    Drawn,
    hide_unused,
    new_figure,
    series_colour,
    series_linestyle,
    series_marker,
    series_name,
    series_sort_key,
)

MAX_PANELS = 9
RESOURCE_NAMES = {"gpu_busy": "GPU", "h2d_busy": "H2D", "d2h_busy": "D2H", "cpu_busy": "CPU"}


def _ordered(series) -> list[str]:
    return sorted(set(series), key=series_sort_key)


def _figure_legend(fig: plt.Figure, axes: list[plt.Axes], ncol: int | None = None) -> None:
    """One legend for the whole figure, below the panels, without duplicates.

    Default columns: two on a one-column figure, four on a full-width one.
    """
    ncol = ncol or (2 if fig.get_figwidth() <= COLUMN_IN + 0.01 else 4)
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in handles and not lab.startswith("_"):
                handles[lab] = h
                labels.append(lab)
    labels.sort(key=_legend_rank)
    if labels:
        fig.legend([handles[lab] for lab in labels], labels, loc="outside lower center", ncol=ncol, frameon=False)


def _legend_rank(label: str) -> int:
    """Legend entries in the canonical series order; other entries (markers, unknown kinds) after them."""
    for i, series in enumerate(SERIES_ORDER):
        name = series_name(series)
        if label == name or label.startswith(name + ","):
            return i
    return len(SERIES_ORDER)


def _panel_grid(n: int, width_in: float) -> tuple[int, int]:
    ncols = 1 if n == 1 else (2 if n in (2, 4) or width_in <= COLUMN_IN else 3)
    return ncols, -(-n // ncols)


def _panels(keys: list, notes: list[str], what: str) -> list:
    if len(keys) > MAX_PANELS:
        notes.append(f"{len(keys)} {what}; the first {MAX_PANELS} are shown (all are in the tables)")
        return keys[:MAX_PANELS]
    return keys


# ---------------------------------------------------------------------- throughput vs prompt length


def throughput_vs_prompt(df: pd.DataFrame) -> Drawn:
    """Throughput against prompt length, one line per policy (HybridServe Fig. 3 / main result)."""
    ok = ok_rows(df, ["prompt_len", "throughput_tok_s"])
    best = best_per_series(ok)
    notes_by_series = varied_config(ok)
    site = [c for c in workload_columns(best) if c != "prompt_len"]
    sweeps = [k for k, g in best.groupby(site, sort=False, dropna=False) if g["prompt_len"].nunique() >= 2]
    if not sweeps:
        raise Skip("no prompt-length sweep: every (scenario, model, hardware, batch, gen_len) has one prompt")
    notes: list[str] = []
    sweeps = _panels(sweeps, notes, "prompt-length sweeps")
    width = COLUMN_IN if len(sweeps) == 1 else PAGE_IN
    ncols, nrows = _panel_grid(len(sweeps), width)
    fig, axes = new_figure(ncols, nrows, width_in=width, panel_height_in=1.8)
    multi_batch = best.groupby(["model", "hardware"])["batch"].nunique().max() > 1 if "batch" in best else False
    for ax, key in zip(axes, sweeps, strict=False):
        sel = dict(zip(site, key, strict=True))
        grp = best.loc[(best[site] == pd.Series(sel)).all(axis=1)]
        for series in _ordered(grp["series"]):
            s = grp[grp["series"] == series].sort_values("prompt_len")
            ax.plot(s["prompt_len"], s["throughput_tok_s"], label=legend_label(series, notes_by_series[series]),
                    color=series_colour(series), marker=series_marker(series), linestyle=series_linestyle(series))
        prompts = sorted(grp["prompt_len"].unique())
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(prompts))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(FixedLocator([]))
        ax.set_ylim(bottom=0)
        title = f"{sel.get('model', '')} · {sel.get('hardware', '')}"
        if multi_batch:
            title += f" · batch {sel['batch']}"
        ax.set_title(title)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel("throughput (tokens/s)")
    hide_unused(axes, len(sweeps))
    _figure_legend(fig, axes)
    return Drawn(fig, notes)


# ---------------------------------------------------------------- latency vs recomputation ratio


def _ratio_workload(grp: pd.DataFrame, wl: list[str]) -> tuple:
    """The workload of one model's panel: the most kv_ratio values, then the median prompt."""
    counts = grp.groupby(wl, sort=False, dropna=False)["kv_ratio"].nunique().rename("n").reset_index()
    med = lower_median(counts["prompt_len"]) if "prompt_len" in counts else 0
    counts["_dist"] = (counts["prompt_len"] - med).abs() if "prompt_len" in counts else 0
    counts = counts.sort_values(["n", "_dist"], ascending=[False, True], kind="stable")
    return tuple(counts.iloc[0][wl])


def latency_vs_recompute_ratio(df: pd.DataFrame) -> Drawn:
    """Token latency normalised to no recomputation against 1 - r, one panel per model (HybridServe Fig. 4)."""
    ok = ok_rows(df, ["kv_ratio", "token_latency_s"])
    wl = workload_columns(ok)
    swept = ok.groupby([*wl, "series"], dropna=False)["kv_ratio"].transform("nunique") >= 2
    ratio = ok[swept]
    if ratio.empty:
        raise Skip("no kv_ratio sweep: no policy has two or more kv_ratio values at one workload point")
    notes: list[str] = []
    sites = list(ratio.groupby(["model", "hardware"], sort=False).groups)
    sites = _panels(sites, notes, "(model, hardware) pairs with a kv_ratio sweep")
    panels = []
    for model, hardware in sites:
        grp = ratio[(ratio["model"] == model) & (ratio["hardware"] == hardware)]
        key = _ratio_workload(grp, wl)
        at = (ok[wl] == pd.Series(dict(zip(wl, key, strict=True)))).all(axis=1)
        base_rows = ok[at & (ok["series"] == "kv-only")]
        point = pd.Series(dict(zip(wl, key, strict=True)))
        panels.append((model, hardware, point.to_dict(), grp[(grp[wl] == point).all(axis=1)],
                       base_rows["token_latency_s"].min() if len(base_rows) else np.nan))
    width = COLUMN_IN if len(panels) == 1 else PAGE_IN
    ncols, nrows = _panel_grid(len(panels), width)
    fig, axes = new_figure(ncols, nrows, width_in=width, panel_height_in=1.8)
    for ax, (model, hardware, point, rows, base_s) in zip(axes, panels, strict=False):
        ax.axhline(1.0, color="0.4", linewidth=0.7, linestyle=":", zorder=1)
        for series in _ordered(rows["series"]):
            s = rows[rows["series"] == series].groupby("kv_ratio", as_index=False)["token_latency_s"].min()
            s = s.sort_values("kv_ratio", ascending=False)
            base = base_s
            if not np.isfinite(base):  # no kv-only run here: the series' own r = 1 point
                own = s.loc[s["kv_ratio"] == 1.0, "token_latency_s"]
                base = own.iloc[0] if len(own) else np.nan
            if not np.isfinite(base):
                notes.append(f"{model}: {series_name(series)} has neither a kv-only run nor r = 1; left out")
                continue
            x, y = 1.0 - s["kv_ratio"].to_numpy(), s["token_latency_s"].to_numpy() / base
            colour = series_colour(series)
            ax.plot(x, y, label=series_name(series), color=colour, marker=series_marker(series),
                    linestyle=series_linestyle(series), zorder=2)
            i = int(np.argmin(y))
            ax.plot([x[i]], [y[i]], marker="*", markersize=9, color=colour, markeredgecolor="black",
                    markeredgewidth=0.6, linestyle="none", zorder=3, label="_optimum", gid=f"optimum:{series}")
            if y[i] < 1.0 - 1e-6:  # recomputation pays off: say by how much, and where
                right = x[i] < 0.5
                ax.annotate(f"{y[i]:.2f}× at {x[i]:.2f}", (x[i], y[i]), xytext=(5 if right else -5, -6),
                            textcoords="offset points", ha="left" if right else "right", va="top", fontsize=6,
                            color=colour)
        ax.set_xlim(-0.05, 1.05)
        lo, hi = ax.get_ylim()
        ax.set_ylim(min(lo, 0.9) - 0.1 * (hi - lo), hi)
        ax.set_title(f"{model} · {hardware}\nbatch {point.get('batch', '?')}, prompt {point.get('prompt_len', '?')}")
        ax.set_xlabel("recomputation ratio 1 − r")
        ax.set_ylabel("token latency (× KV-only)" if ax.get_subplotspec().is_first_col() else "")
    hide_unused(axes, len(panels))
    axes[0].plot([], [], marker="*", markersize=9, color="white", markeredgecolor="black", markeredgewidth=0.6,
                 linestyle="none", label="optimum (lowest latency)")
    _figure_legend(fig, axes)
    return Drawn(fig, notes)


# -------------------------------------------------------------------- grouped bars per policy


def _bar_layout(n_series: int) -> tuple[float, np.ndarray]:
    width = 0.8 / max(n_series, 1)
    return width, (np.arange(n_series) - (n_series - 1) / 2) * width


def _draw_grouped(ax: plt.Axes, rows: pd.DataFrame, value: str, scale: float = 1.0,
                  text=None, text_inside: bool = False) -> list[str]:
    """Grouped bars: one group per workload point (rows' `_group`), one bar per series."""
    groups = list(dict.fromkeys(rows["_group"]))
    series_all = _ordered(rows["series"])
    width, offsets = _bar_layout(len(series_all))
    for off, series in zip(offsets, series_all, strict=True):
        s = rows[rows["series"] == series].set_index("_group")
        xs = [i + off for i, g in enumerate(groups) if g in s.index]
        hs = [float(s.loc[g, value]) * scale for g in groups if g in s.index]
        bars = ax.bar(xs, hs, width=width * 0.92, color=series_colour(series), label=rows.attrs["labels"][series],
                      edgecolor="white", linewidth=0.3)
        if text is not None:
            labels = [text(s.loc[g]) for g in groups if g in s.index]
            if text_inside:
                ax.bar_label(bars, labels=labels, rotation=90, fontsize=5.5, label_type="center", color="white")
            else:
                ax.bar_label(bars, labels=labels, rotation=90, fontsize=5.5, padding=1.5, label_type="edge")
    ax.set_xticks(range(len(groups)), groups)
    half = max(len(groups), 2) / 2  # a lone group keeps the bar width of two
    ax.set_xlim((len(groups) - 1) / 2 - half, (len(groups) - 1) / 2 + half)
    ax.grid(axis="x", visible=False)
    return groups


def _per_policy_rows(df: pd.DataFrame, needs: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Best configuration per series at one representative workload per (scenario, model, hardware)."""
    ok = ok_rows(df, needs)
    best = best_per_series(ok)
    chosen = representative_workloads(ok)
    rows = select_workloads(best, chosen).copy()
    multi_hw = rows["hardware"].nunique() > 1
    rows["_group"] = [group_label(r, multi_hardware=multi_hw) for _, r in rows.iterrows()]
    varied = varied_config(ok)
    rows.attrs["labels"] = {s: legend_label(s, varied.get(s, "")) for s in rows["series"].unique()}
    notes = []
    if len(chosen) < best.groupby(workload_columns(best), dropna=False).ngroups:
        notes.append("one workload point per (scenario, model, hardware): the one most policies ran at, "
                     "prompt length nearest the median; every point is in summary.csv")
    return rows, notes


def _fmt_speedup(row: pd.Series) -> str:
    v = row["speedup_vs_kv_only"]
    return f"{v:.2f}×" if np.isfinite(v) else ""


def throughput_bars(df: pd.DataFrame) -> Drawn:
    """Throughput per model and policy, grouped bars, speed-up over KV-only written on each bar."""
    rows, notes = _per_policy_rows(df, ["throughput_tok_s"])
    panels = list(rows.groupby(["scenario", "hardware"], sort=False).groups)
    panels = _panels(panels, notes, "(scenario, hardware) panels")
    width = COLUMN_IN if len(panels) == 1 else PAGE_IN
    ncols, nrows = _panel_grid(len(panels), width)
    fig, axes = new_figure(ncols, nrows, width_in=width, panel_height_in=2.0)
    for ax, (scenario, hardware) in zip(axes, panels, strict=False):
        sub = rows[(rows["scenario"] == scenario) & (rows["hardware"] == hardware)].copy()
        sub["_group"] = [group_label(r, multi_hardware=False) for _, r in sub.iterrows()]
        sub.attrs = rows.attrs
        _draw_grouped(ax, sub, "throughput_tok_s", text=_fmt_speedup)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.22)  # room for the speed-up labels
        ax.set_title(f"{scenario} · {hardware}")
        ax.set_ylabel("throughput (tokens/s)")
    hide_unused(axes, len(panels))
    if rows["speedup_vs_kv_only"].isna().all():
        notes.append("no kv-only run at these points: no speed-ups written")
    _figure_legend(fig, axes)
    return Drawn(fig, notes)


# ------------------------------------------------------------ utilisation and traffic per policy


def utilisation_traffic(df: pd.DataFrame) -> Drawn:
    """GPU busy fraction (top) and host<->GPU bytes (bottom, log scale when they span decades), per policy."""
    rows, notes = _per_policy_rows(df, ["gpu_busy", "h2d_bytes", "d2h_bytes"])
    rows["link_bytes"] = rows["h2d_bytes"] + rows["d2h_bytes"]
    n_groups = rows["_group"].nunique()
    fig, axes = new_figure(1, 2, width_in=COLUMN_IN if n_groups <= 2 else PAGE_IN, panel_height_in=1.7,
                           sharex=True)
    _draw_grouped(axes[0], rows, "gpu_busy", scale=100.0)
    axes[0].set_ylim(0, 100)
    axes[0].yaxis.set_major_formatter(PercentFormatter())
    axes[0].set_ylabel("GPU busy (% of run)")
    unit, scale = ("GB", 1e-9) if rows["link_bytes"].max() >= 1e9 else ("MB", 1e-6)
    _draw_grouped(axes[1], rows, "link_bytes", scale=scale)
    positive = rows.loc[rows["link_bytes"] > 0, "link_bytes"]
    if len(positive) and positive.max() > 20 * positive.min():  # orders of magnitude apart: log scale
        axes[1].set_yscale("log")
        axes[1].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axes[1].yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    axes[1].set_ylabel(f"host↔GPU traffic\n({unit}, H2D + D2H)")
    axes[0].tick_params(labelbottom=False)
    _figure_legend(fig, axes)
    return Drawn(fig, notes)


# --------------------------------------------------------------------------- distance to bound


def _binding_resource(row: pd.Series) -> str:
    busy = {name: row[col] for col, name in RESOURCE_NAMES.items() if col in row and np.isfinite(row[col])}
    return max(busy, key=busy.get) if busy else ""


def bound_distance(df: pd.DataFrame) -> Drawn:
    """Throughput as a fraction of the busiest-resource bound, per policy; the binding resource on the bar."""
    rows, notes = _per_policy_rows(df, ["throughput_tok_s", "bound_tok_s"])
    rows["bound_fraction"] = rows["throughput_tok_s"] / rows["bound_tok_s"]
    n_groups = rows["_group"].nunique()
    fig, axes = new_figure(1, 1, width_in=COLUMN_IN if n_groups <= 2 else PAGE_IN, panel_height_in=2.0)
    ax = axes[0]
    _draw_grouped(ax, rows, "bound_fraction", scale=100.0, text=_binding_resource, text_inside=True)
    ax.set_ylim(0, 105)
    ax.axhline(100, color="0.4", linewidth=0.7, linestyle=":")
    ax.yaxis.set_major_formatter(PercentFormatter())
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("throughput / bound (%)")
    _figure_legend(fig, axes)
    return Drawn(fig, notes)
