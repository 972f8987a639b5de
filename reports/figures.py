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
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, PercentFormatter
from matplotlib.transforms import offset_copy

from .results import (
    Skip,
    baseline_name,
    baseline_per_point,
    best_per_series,
    duplicate_series,
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
    Drawn,
    hide_unused,
    legend_rank,
    new_figure,
    series_colour,
    series_edge_colour,
    series_linestyle,
    series_marker,
    series_name,
    series_sort_key,
)

MAX_PANELS = 9
RESOURCE_NAMES = {"gpu_busy": "GPU", "h2d_busy": "H2D", "d2h_busy": "D2H", "cpu_busy": "CPU"}


def _ordered(series) -> list[str]:
    return sorted(set(series), key=series_sort_key)


def _figure_legend(fig: plt.Figure, axes: list[plt.Axes], ncol: int | None = None,
                   extra: list[tuple] | None = None) -> None:
    """One legend for the whole figure, below the panels, without duplicates; `extra` adds
    (handle, label) entries drawn on no axis (e.g. what a hatch means).

    Default columns: two on a one-column figure, four on a full-width one.
    """
    ncol = ncol or (2 if fig.get_figwidth() <= COLUMN_IN + 0.01 else 4)
    handles, labels = {}, []
    pairs = [pair for ax in axes for pair in zip(*ax.get_legend_handles_labels(), strict=True)]
    for h, lab in [*pairs, *(extra or [])]:
        if lab not in handles and not lab.startswith("_"):
            handles[lab] = h
            labels.append(lab)
    labels.sort(key=legend_rank)  # canonical series order; other entries (markers, unknown kinds) after
    if not labels:
        return
    # matplotlib fills a legend column by column; pad to a full grid and transpose so that it reads
    # row by row, in the canonical order (a paper's system next to its variants)
    ncol = min(ncol, len(labels))
    nrows = -(-len(labels) // ncol)
    grid = labels + [""] * (nrows * ncol - len(labels))
    ordered = [grid[r * ncol + c] for c in range(ncol) for r in range(nrows)]
    blank = Patch(facecolor="none", edgecolor="none")
    fig.legend([handles[lab] if lab else blank for lab in ordered], ordered, loc="outside lower center",
               ncol=ncol, frameon=False)


def _duplicates_note(dups: dict[tuple[str, str], list[str]], panels: int) -> list[str]:
    """'Left out' lines for series dropped from some panels because their run is another series' run."""
    out = []
    for (series, same), where in dups.items():
        place = "in every panel" if len(where) == panels else "in " + "; ".join(where)
        out.append(f"{series_name(series)} {place}: its best configuration is {series_name(same)}'s very run "
                   f"at every point there (e.g. recomputing nothing, r = 1), so its line would hide under that one")
    return out


def _coincident(curves: list[tuple[str, np.ndarray, np.ndarray]], rtol: float = 0.01) -> set[str]:
    """Series whose line a later-drawn one covers (same x, every y within `rtol`): drawn wider, to show."""
    under = set()
    for i, (series, x, y) in enumerate(curves):
        for _, x2, y2 in curves[i + 1:]:
            if len(x) == len(x2) and np.array_equal(x, x2) and np.allclose(y, y2, rtol=rtol):
                under.add(series)
    return under


def _plot_series(ax: plt.Axes, x, y, series: str, label: str, wide: bool = False, **kwargs) -> None:
    """One series' line; `wide` draws it thicker with larger markers, to show around a line drawn over it."""
    ax.plot(x, y, label=label, color=series_colour(series), marker=series_marker(series),
            markeredgecolor=series_edge_colour(series), markeredgewidth=0.5,
            linestyle=series_linestyle(series), **({"linewidth": 3.0, "markersize": 7.5} if wide else {}),
            **kwargs)


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
    multi_scenario = "scenario" in site and best["scenario"].nunique() > 1
    dups: dict[tuple[str, str], list[str]] = {}
    wide_any = any_infeasible = False
    for ax, key in zip(axes, sweeps, strict=False):
        sel = dict(zip(site, key, strict=True))
        grp = best.loc[(best[site] == pd.Series(sel)).all(axis=1)]
        for series, same in duplicate_series(grp).items():  # its line would lie exactly on another's
            dups.setdefault((series, same), []).append(" · ".join(str(sel[c]) for c in ("scenario", "model")
                                                                   if c in sel))
            grp = grp[grp["series"] != series]
        curves = [(series, s["prompt_len"].to_numpy(), s["throughput_tok_s"].to_numpy())
                  for series in _ordered(grp["series"])
                  for s in [grp[grp["series"] == series].sort_values("prompt_len")]]
        wide = _coincident(curves)
        wide_any |= bool(wide)
        for series, x, y in curves:
            _plot_series(ax, x, y, series, legend_label(series, notes_by_series[series]), wide=series in wide)
        infeasible = _infeasible_prompts(df, sel, grp)
        stacked: dict[int, int] = {}
        for series, xs in infeasible.items():  # where a line stops because the point does not fit
            for x in xs:  # on the axis; several series at one prompt stack upwards, never overprinted
                k = stacked.get(x, 0)
                stacked[x] = k + 1
                ax.plot([x], [0], linestyle="none", marker="X", markersize=5, clip_on=False, zorder=4,
                        color=series_colour(series), markeredgecolor="black", markeredgewidth=0.4,
                        label="_infeasible", gid=f"infeasible:{series}",
                        transform=offset_copy(ax.transData, fig=fig, y=6.5 * k, units="points"))
        any_infeasible |= bool(infeasible)
        prompts = sorted(set(grp["prompt_len"].unique()) | {x for xs in infeasible.values() for x in xs})
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(prompts))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(FixedLocator([]))
        ax.set_ylim(bottom=0)
        title = f"{sel.get('model', '')} · {sel.get('hardware', '')}"
        if multi_scenario:
            title = f"{sel['scenario']}\n{title}"
        if multi_batch:
            title += f" · batch {sel['batch']}"
        ax.set_title(title)
        ax.set_xlabel("prompt length (tokens, log₂ scale)")
        ax.set_ylabel("throughput (tokens/s)")
    hide_unused(axes, len(sweeps))
    if any_infeasible:
        axes[0].plot([], [], linestyle="none", marker="X", markersize=5, color="white", markeredgecolor="black",
                     markeredgewidth=0.6, label="does not fit in memory (infeasible)")
    _figure_legend(fig, axes)
    if wide_any:
        notes.append("a wide line under a narrow one marks two policies within 1% of each other at every prompt")
    return Drawn(fig, notes, _duplicates_note(dups, len(sweeps)))


def _infeasible_prompts(df: pd.DataFrame, site: dict, drawn: pd.DataFrame) -> dict[str, list[int]]:
    """Per series drawn on a panel: the prompt lengths where it has only infeasible rows."""
    if "status" not in df or "series" not in df:
        return {}
    bad = df[(df["status"] == "infeasible") & df["series"].isin(set(drawn["series"]))]
    for col, value in site.items():
        bad = bad[bad[col] == value] if not pd.isna(value) else bad[bad[col].isna()]
    out: dict[str, list[int]] = {}
    for series, rows in bad.groupby("series", sort=False):
        ran = set(drawn.loc[drawn["series"] == series, "prompt_len"])
        xs = sorted(int(p) for p in set(rows["prompt_len"]) - ran)
        if xs:
            out[series] = xs
    return out


# ---------------------------------------------------------------- latency vs recomputation ratio


def _ratio_workload(grp: pd.DataFrame, wl: list[str]) -> tuple:
    """The workload of one model's panel: the most kv_ratio values, then the median prompt."""
    counts = grp.groupby(wl, sort=False, dropna=False)["kv_ratio"].nunique().rename("n").reset_index()
    med = lower_median(counts["prompt_len"]) if "prompt_len" in counts else 0
    counts["_dist"] = (counts["prompt_len"] - med).abs() if "prompt_len" in counts else 0
    counts = counts.sort_values(["n", "_dist"], ascending=[False, True], kind="stable")
    return tuple(counts.iloc[0][wl])


def _baseline_words(keys) -> str:
    """The exact baseline series ('KV-only, CPU attention'), or how it was picked when points differ."""
    names = [baseline_name(k) for k in dict.fromkeys(keys) if isinstance(k, str)]
    if not names:
        return "the baseline"
    if len(names) == 1:
        return names[0]
    return " or ".join(names) + ", the better at each point (the hatched bar, named on each panel)"


def _label_optima(ax: plt.Axes, optima: list[tuple[str, float, float]]) -> None:
    """Say 'latency× at 1 − r' of each optimum in a small key inside the panel, where the data leaves
    most room (matplotlib's `loc="best"`): one line per policy, never printed over another label."""
    if not optima:
        return
    handles = [Line2D([], [], linestyle="none", marker="*", markersize=7, color=series_colour(series),
                      markeredgecolor="black", markeredgewidth=0.5, gid=f"optimum-label:{series}")
               for series, _, _ in optima]
    texts = [f"{y:.2f}× at {x:.2f}" for _, x, y in optima]
    key = ax.legend(handles, texts, loc="best", fontsize=5.5, handlelength=1.0, handletextpad=0.3,
                    borderpad=0.3, labelspacing=0.2, framealpha=0.85, edgecolor="0.8", title="optimum",
                    title_fontsize=5.5)
    key.set_gid("optima")
    for text, (series, _, _) in zip(key.get_texts(), optima, strict=True):
        text.set_color(series_edge_colour(series))
        text.set_gid(f"optimum-label:{series}")


def latency_vs_recompute_ratio(df: pd.DataFrame) -> Drawn:
    """Token latency normalised to no recomputation against 1 - r, one panel per model (HybridServe Fig. 4).

    The reference is the baseline at the panel's point (KV-only, else FlexGen, see
    `baseline_per_point`), or, where neither ran, each policy's own r = 1 point; the
    y-axis label says which.
    """
    every = ok_rows(df, ["token_latency_s"])  # the baselines too, which read no kv_ratio
    ok = ok_rows(every, ["kv_ratio"])
    wl = workload_columns(ok)
    swept = ok.groupby([*wl, "series"], dropna=False)["kv_ratio"].transform("nunique") >= 2
    ratio = ok[swept]
    if ratio.empty:
        raise Skip("no kv_ratio sweep: no policy has two or more kv_ratio values at one workload point")
    notes: list[str] = []
    multi_scenario = ratio["scenario"].nunique() > 1
    site_cols = ["scenario", "model", "hardware"] if multi_scenario else ["model", "hardware"]
    sites = list(ratio.groupby(site_cols, sort=False).groups)
    sites = _panels(sites, notes, "(model, hardware) pairs with a kv_ratio sweep")
    base = baseline_per_point(every, "token_latency_s", lower_is_better=True)
    panels = []
    for site in sites:
        grp = ratio[(ratio[site_cols] == pd.Series(dict(zip(site_cols, site, strict=True)))).all(axis=1)]
        key = _ratio_workload(grp, wl)
        point = pd.Series(dict(zip(wl, key, strict=True)))
        found = base.loc[[key]] if key in base.index else None
        ref = (found["baseline"].iloc[0], float(found["baseline_value"].iloc[0])) if found is not None else None
        panels.append((point.to_dict(), grp[(grp[wl] == point).all(axis=1)], ref))
    width = COLUMN_IN if len(panels) == 1 else PAGE_IN
    ncols, nrows = _panel_grid(len(panels), width)
    fig, axes = new_figure(ncols, nrows, width_in=width, panel_height_in=1.9 if multi_scenario else 1.8)
    ylabels = []
    for ax, (point, rows, ref) in zip(axes, panels, strict=False):
        ax.axhline(1.0, color="0.4", linewidth=0.7, linestyle=":", zorder=1)
        optima: list[tuple[str, float, float]] = []
        for series in _ordered(rows["series"]):
            s = rows[rows["series"] == series].groupby("kv_ratio", as_index=False)["token_latency_s"].min()
            s = s.sort_values("kv_ratio", ascending=False)
            if ref is not None:
                ref_s = ref[1]
            else:  # neither KV-only nor FlexGen ran here: the series' own r = 1 point
                own = s.loc[s["kv_ratio"] == 1.0, "token_latency_s"]
                ref_s = own.iloc[0] if len(own) else np.nan
            if not np.isfinite(ref_s):
                notes.append(f"{point['model']}: {series_name(series)} has no baseline run and no r = 1; left out")
                continue
            x, y = 1.0 - s["kv_ratio"].to_numpy(), s["token_latency_s"].to_numpy() / ref_s
            colour = series_colour(series)
            _plot_series(ax, x, y, series, series_name(series), zorder=2)
            i = int(np.argmin(y))
            ax.plot([x[i]], [y[i]], marker="*", markersize=9, color=colour, markeredgecolor="black",
                    markeredgewidth=0.6, linestyle="none", zorder=3, label="_optimum", gid=f"optimum:{series}")
            if y[i] < 1.0 - 1e-6:  # recomputation pays off: say by how much, and where
                optima.append((series, float(x[i]), float(y[i])))
        ax.set_xlim(-0.05, 1.05)
        lo, hi = ax.get_ylim()
        ax.set_ylim(min(lo, 0.9) - 0.05 * (hi - lo), hi + 0.08 * len(optima) * (hi - lo))  # room for the key
        _label_optima(ax, optima)
        title = f"{point['model']} · {point['hardware']}"
        if multi_scenario:
            title = f"{point['scenario']}\n{title}"
        ax.set_title(f"{title}\nbatch {point.get('batch', '?')}, prompt {point.get('prompt_len', '?')}")
        ax.set_xlabel("recomputation ratio 1 − r")
        ylabels.append(f"token latency\n(× {baseline_name(ref[0])})" if ref is not None
                       else "token latency\n(× own r = 1)")
    one_label = len(set(ylabels)) == 1
    for ax, label in zip(axes, ylabels, strict=False):
        ax.set_ylabel(label if not one_label or ax.get_subplotspec().is_first_col() else "")
    hide_unused(axes, len(panels))
    axes[0].plot([], [], marker="*", markersize=9, color="white", markeredgecolor="black", markeredgewidth=0.6,
                 linestyle="none", label="optimum (lowest latency)")
    _figure_legend(fig, axes)
    refs = [ref[0] for _, _, ref in panels if ref is not None]
    words = _baseline_words(refs)
    if len(refs) < len(panels):
        words = (words + ", else " if refs else "") + "each policy's own r = 1 (no recomputation)"
    return Drawn(fig, notes, fields={"baseline": words})


# -------------------------------------------------------------------- grouped bars per policy


def _bar_layout(n_series: int) -> tuple[float, np.ndarray]:
    width = 0.8 / max(n_series, 1)
    return width, (np.arange(n_series) - (n_series - 1) / 2) * width


BASELINE_HATCH = "/////"


def _draw_grouped(ax: plt.Axes, rows: pd.DataFrame, value: str, scale: float = 1.0,
                  text=None, text_inside: bool = False, mark_baseline: bool = False,
                  dots: bool = False) -> list[str]:
    """Grouped bars: one group per workload point (rows' `_group`), one bar per series.

    `mark_baseline` hatches the bar of each group's baseline series; `dots` draws a marker at
    each value instead of a bar (for a log axis, where a bar's length means nothing).
    """
    groups = list(dict.fromkeys(rows["_group"]))
    series_all = _ordered(rows["series"])
    width, offsets = _bar_layout(len(series_all))
    for off, series in zip(offsets, series_all, strict=True):
        s = rows[rows["series"] == series].set_index("_group")
        xs = [i + off for i, g in enumerate(groups) if g in s.index]
        hs = [float(s.loc[g, value]) * scale for g in groups if g in s.index]
        if dots:
            ax.plot(xs, hs, linestyle="none", marker=series_marker(series), markersize=5,
                    color=series_colour(series), markeredgecolor=series_edge_colour(series), markeredgewidth=0.6,
                    label=rows.attrs["labels"][series])
            continue
        bars = ax.bar(xs, hs, width=width * 0.92, color=series_colour(series), label=rows.attrs["labels"][series],
                      edgecolor="white", linewidth=0.3)
        if mark_baseline and "baseline" in s.columns:
            for bar, g in zip(bars, [g for g in groups if g in s.index], strict=True):
                if s.loc[g, "baseline"] == series:
                    bar.set_hatch(BASELINE_HATCH)
                    bar.set_edgecolor(series_edge_colour(series))
        if text is not None:
            labels = [text(s.loc[g]) for g in groups if g in s.index]
            if text_inside:
                r, g, b = series_colour(series)[:3]
                light = 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.55  # dark text on pale bars
                ax.bar_label(bars, labels=labels, rotation=90, fontsize=5.5, label_type="center",
                             color="0.15" if light else "white")
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
    v = row["speedup"]
    return f"{v:.2f}×" if np.isfinite(v) else ""


def throughput_bars(df: pd.DataFrame) -> Drawn:
    """Throughput per model and policy, grouped bars, speed-up over the baseline written on each bar.

    The baseline is KV-only where it ran, else FlexGen (`baseline_per_point`); the y-axis
    label names it, or, when one panel's points have different baselines, every bar does.
    """
    rows, notes = _per_policy_rows(df, ["throughput_tok_s"])
    panels = _scenario_panels(rows, notes)
    width = COLUMN_IN if len(panels) == 1 else PAGE_IN
    ncols, nrows = _panel_grid(len(panels), width)
    fig, axes = new_figure(ncols, nrows, width_in=width, panel_height_in=2.0)
    for ax, (title, sub) in zip(axes, panels, strict=False):
        bases = list(dict.fromkeys(sub["baseline"].dropna()))
        _draw_grouped(ax, sub, "throughput_tok_s", text=_fmt_speedup, mark_baseline=True)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.25)  # room for the speed-up labels
        over = (f"speed-up over {baseline_name(bases[0])}" if len(bases) == 1
                else "speed-up over the hatched bar" if bases else "")
        ax.set_title(title + (f"\n{over}" if over else ""))
        ax.set_ylabel("throughput (tokens/s)")
    hide_unused(axes, len(panels))
    extra = [(Patch(facecolor="white", edgecolor="0.3", hatch=BASELINE_HATCH), "baseline of the speed-ups")] \
        if rows["baseline"].notna().any() else []
    if rows["speedup"].isna().all():
        notes.append("neither KV-only nor FlexGen ran at these points: no speed-ups written")
    elif rows["speedup"].isna().any():
        notes.append("no speed-up on panels where neither KV-only nor FlexGen ran")
    _figure_legend(fig, axes, extra=extra)
    return Drawn(fig, notes, fields={"baseline": _baseline_words(rows["baseline"].dropna())})


# ------------------------------------------------------------ utilisation and traffic per policy


def _scenario_panels(rows: pd.DataFrame, notes: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """Per-policy rows split into one panel per (scenario, hardware), titled, with per-panel tick labels.

    A prompt length shared by a panel's every group goes into its title, not onto each tick.
    """
    keys = list(rows.groupby(["scenario", "hardware"], sort=False).groups)
    keys = _panels(keys, notes, "(scenario, hardware) panels")
    out = []
    for scenario, hardware in keys:
        sub = rows[(rows["scenario"] == scenario) & (rows["hardware"] == hardware)].copy()
        title = f"{scenario}\n{hardware}"
        one_prompt = "prompt_len" in sub and sub["prompt_len"].nunique() == 1
        if one_prompt:
            title += f", prompt {int(sub['prompt_len'].iloc[0])}"
        sub["_group"] = [group_label(r.drop("prompt_len") if one_prompt else r, multi_hardware=False)
                         for _, r in sub.iterrows()]
        sub.attrs = rows.attrs
        out.append((title, sub))
    return out


def _traffic_axis(ax: plt.Axes, rows: pd.DataFrame, long: bool = True, unit: tuple[str, float] | None = None
                  ) -> bool:
    """Host<->GPU bytes per series in `unit` (default: the one that suits them): bars on a linear axis;
    when they span more than 20x, markers on a log axis (a bar's length means nothing on a log scale)."""
    unit, scale = unit or byte_unit(rows["link_bytes"].max())
    positive = rows.loc[rows["link_bytes"] > 0, "link_bytes"]
    log = bool(len(positive) and positive.max() > 20 * positive.min())  # orders of magnitude apart
    _draw_grouped(ax, rows, "link_bytes", scale=scale, dots=log)
    if log:
        ax.set_yscale("log")
        ax.grid(axis="x", visible=True, which="major", linewidth=0.3)
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_ylabel(f"host↔GPU traffic\n({unit}, H2D + D2H{', log' if log else ''})" if long
                  else f"H2D + D2H ({unit}{', log' if log else ''})")
    return log


def _busy_axis(ax: plt.Axes, rows: pd.DataFrame, long: bool = True) -> None:
    _draw_grouped(ax, rows, "gpu_busy", scale=100.0)
    ax.set_ylim(0, 100)
    ax.yaxis.set_major_formatter(PercentFormatter())
    ax.set_ylabel("GPU busy (% of run)" if long else "GPU busy")
    ax.tick_params(labelbottom=False)


def _scale_words(logs: list[bool]) -> str:
    if all(logs):
        return "markers on a log scale"
    if not any(logs):
        return "linear scale"
    return "markers on a log scale where a panel's traffic spans more than 20×, else bars on a linear scale"


def utilisation_traffic(df: pd.DataFrame) -> Drawn:
    """GPU busy fraction (top) and host<->GPU bytes (bottom, log scale when they span decades), per policy.

    One pair of panels per (scenario, hardware) when the results hold several.
    `fields["traffic_scale"]` says which scale the traffic panels took, for the caption.
    """
    rows, notes = _per_policy_rows(df, ["gpu_busy", "h2d_bytes", "d2h_bytes"])
    rows["link_bytes"] = (rows["h2d_bytes"] + rows["d2h_bytes"]).astype(float)
    unit = byte_unit(rows["link_bytes"].max())  # one unit on every panel
    panels = _scenario_panels(rows, notes)
    if len(panels) == 1:
        n_groups = rows["_group"].nunique()
        fig, axes = new_figure(1, 2, width_in=COLUMN_IN if n_groups <= 2 else PAGE_IN, panel_height_in=1.7,
                               sharex=True)
        _busy_axis(axes[0], panels[0][1])
        axes[0].set_title(panels[0][0].replace("\n", " · "))
        logs = [_traffic_axis(axes[1], panels[0][1], unit=unit)]
        _figure_legend(fig, axes)
        return Drawn(fig, notes, fields={"traffic_scale": _scale_words(logs)})
    ncols, nrows = _panel_grid(len(panels), PAGE_IN)
    fig, axes = new_figure(ncols, 2 * nrows, width_in=PAGE_IN, panel_height_in=1.2)
    logs = []
    for i, (title, sub) in enumerate(panels):
        row, col = divmod(i, ncols)
        top, bottom = axes[2 * row * ncols + col], axes[(2 * row + 1) * ncols + col]
        bottom.sharex(top)
        _busy_axis(top, sub, long=False)
        top.set_title(title)
        logs.append(_traffic_axis(bottom, sub, long=False, unit=unit))
    for i in range(len(panels), nrows * ncols):
        row, col = divmod(i, ncols)
        axes[2 * row * ncols + col].set_visible(False)
        axes[(2 * row + 1) * ncols + col].set_visible(False)
    fig.align_ylabels(axes)
    _figure_legend(fig, axes)
    return Drawn(fig, notes, fields={"traffic_scale": _scale_words(logs)})


def byte_unit(largest: float) -> tuple[str, float]:
    """The unit a byte axis reads in, so that its numbers stay below about a thousand, and its scale."""
    for unit, scale in (("TB", 1e-12), ("GB", 1e-9), ("MB", 1e-6)):
        if largest >= 1 / scale:
            return unit, scale
    return "kB", 1e-3


# --------------------------------------------------------------------------- distance to bound


def _binding_resource(row: pd.Series) -> str:
    busy = {name: row[col] for col, name in RESOURCE_NAMES.items() if col in row and np.isfinite(row[col])}
    return max(busy, key=busy.get) if busy else ""


def _bound_axis(ax: plt.Axes, rows: pd.DataFrame) -> None:
    _draw_grouped(ax, rows, "bound_fraction", scale=100.0, text=_binding_resource, text_inside=True)
    ax.set_ylim(0, 105)
    ax.axhline(100, color="0.4", linewidth=0.7, linestyle=":")
    ax.yaxis.set_major_formatter(PercentFormatter())
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("throughput / bound (%)")


def bound_distance(df: pd.DataFrame) -> Drawn:
    """Throughput as a fraction of the busiest-resource bound, per policy; the binding resource on the bar.

    One panel per (scenario, hardware) when the results hold several.
    """
    rows, notes = _per_policy_rows(df, ["throughput_tok_s", "bound_tok_s"])
    rows["bound_fraction"] = rows["throughput_tok_s"] / rows["bound_tok_s"]
    panels = _scenario_panels(rows, notes)
    if len(panels) == 1:
        n_groups = rows["_group"].nunique()
        fig, axes = new_figure(1, 1, width_in=COLUMN_IN if n_groups <= 2 else PAGE_IN, panel_height_in=2.0)
        _bound_axis(axes[0], panels[0][1])
        axes[0].set_title(panels[0][0].replace("\n", " · "))
    else:
        ncols, nrows = _panel_grid(len(panels), PAGE_IN)
        fig, axes = new_figure(ncols, nrows, width_in=PAGE_IN, panel_height_in=1.9)
        for ax, (title, sub) in zip(axes, panels, strict=False):
            _bound_axis(ax, sub)
            ax.set_title(title)
        hide_unused(axes, len(panels))
    _figure_legend(fig, axes)
    return Drawn(fig, notes)
