"""Figures of a validation report (`hssim validate`), in the style of every other hssim figure.

Drawn from the report's tables alone (the per-op join, the per-point table and the two
timelines of one point), so that `validate/` writes numbers and `reports/` draws them:

    scatter_by_kind.png     simulated against measured op durations, one panel per op kind
    gantt_decode_step.png   one decode step of one point, simulated above measured
    overlap_by_policy.png   link time hidden under compute per policy, simulated and measured
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, PercentFormatter

from .style import COLUMN_IN, PAGE_IN, PALETTE, hide_unused, kind_colours, new_figure, save_figure
from .timeline import KIND_ORDER, STREAM_ORDER, _draw_ops, _kind_legend

#: the two timelines of a validation, in one colour each wherever they sit side by side
TIMELINE_COLOURS = {"simulated": PALETTE[0], "measured": PALETTE[1]}


def _ms(v: float, _pos=None) -> str:
    return f"{v:g}"


def _log_axis(axis, lo: float, hi: float) -> None:
    """Plain tick labels (0.1, 1, 10 ms) at decades, or at 1-2-5 steps when the axis spans less than
    two decades (so that every panel has labelled ticks); no minor labels to overprint them."""
    narrow = hi / lo < 100
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if narrow else (1.0,), numticks=8))
    axis.set_major_formatter(FuncFormatter(_ms))
    axis.set_minor_formatter(NullFormatter())


def scatter_by_kind(ops: pd.DataFrame, path: Path) -> Path:
    """Per op kind: simulated against measured duration (ms, log-log), the line y = x dashed."""
    kinds = list(ops.groupby("kind")["dur_meas_s"].sum().sort_values(ascending=False).index)
    colours = kind_colours(kinds)
    ncols = min(4, len(kinds))
    nrows = math.ceil(len(kinds) / ncols)
    fig, axes = new_figure(ncols, nrows, width_in=PAGE_IN, panel_height_in=1.75)
    for ax, kind in zip(axes, kinds, strict=False):
        d = ops[ops["kind"] == kind]
        x, y = (d["dur_meas_s"] * 1e3).to_numpy(), (d["dur_sim_s"] * 1e3).to_numpy()
        keep = (x > 0) & (y > 0)
        x, y = x[keep], y[keep]
        ax.scatter(x, y, s=6, alpha=0.6, color=colours[kind], linewidths=0)
        if len(x):
            lo = min(x.min(), y.min()) / 1.5
            hi = max(x.max(), y.max()) * 1.5
            ax.plot([lo, hi], [lo, hi], color="0.4", linewidth=0.7, linestyle="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        if len(x):
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            _log_axis(ax.xaxis, lo, hi)
            _log_axis(ax.yaxis, lo, hi)
        ape = d["ape"].median() if "ape" in d else float("nan")
        ax.set_title(f"{kind}\nn={len(d)}, median APE " + ("n/a" if not np.isfinite(ape) else f"{100 * ape:.0f}%"))
        ax.set_xlabel("measured (ms, log)")
        ax.set_ylabel("simulated (ms, log)")
    hide_unused(axes, len(kinds))
    fig.suptitle("Op durations, simulated (calibrated profile) against measured; dashed: equal", fontsize=7)
    save_figure(fig, path.parent, path.stem)
    return path


def _step_window(tl: pd.DataFrame, step: int) -> tuple[pd.DataFrame, float]:
    """The ops of `step`, and the time the previous step ended (where the step's clock starts)."""
    ends = tl.groupby("step")["end_s"].max()
    t0 = float(ends.loc[step - 1]) if step - 1 in ends.index else 0.0
    return tl[tl["step"] == step], t0


def gantt_decode_step(sim_tl: pd.DataFrame, meas_tl: pd.DataFrame, label: str, step: int, path: Path) -> Path:
    """One decode step of one point: the simulated timeline above the measured one, on one time axis."""
    kinds_present = set(sim_tl["kind"]) | set(meas_tl["kind"])
    kinds = [k for k in KIND_ORDER if k in kinds_present] + sorted(kinds_present - set(KIND_ORDER))
    colours = kind_colours(kinds)
    streams = [s for s in STREAM_ORDER if s in set(sim_tl["stream"])]
    fig, axes = new_figure(1, 2, width_in=PAGE_IN, panel_height_in=0.28 * len(streams) + 0.45, sharex=True)
    for ax, (title, tl) in zip(axes, (("simulated", sim_tl), ("measured", meas_tl)), strict=True):
        d, t0 = _step_window(tl, step)
        span_ms = (d["end_s"].max() - t0) * 1e3
        _draw_ops(ax, d, t0, streams, kinds, colours, edges=True, min_width_ms=span_ms * 2e-3)
        ax.set_title(f"{title}: decode step {step} takes {span_ms:.1f} ms", loc="left")
    axes[0].tick_params(labelbottom=False)
    axes[1].set_xlabel(f"time since the end of step {step - 1} (ms)")
    axes[1].set_xlim(left=0)
    fig.suptitle(label, fontsize=7)
    handles, labels, ncol = _kind_legend(kinds, colours)
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False)
    save_figure(fig, path.parent, path.stem)
    return path


def overlap_by_policy(points: pd.DataFrame, path: Path) -> Path:
    """Per policy (one row each, so long names never overprint): the share of link time hidden under
    compute in decode, simulated and measured, mean over the set's points."""
    d = points.groupby("policy", sort=False)[["hidden_link_share_sim", "hidden_link_share_meas"]].mean()
    fig, axes = new_figure(1, 1, width_in=max(COLUMN_IN, PAGE_IN * 0.6), panel_height_in=0.22 * len(d) + 0.7)
    ax = axes[0]
    y = np.arange(len(d))
    h = 0.38
    for off, (name, col) in zip((-h / 2, h / 2), (("simulated", "hidden_link_share_sim"),
                                                  ("measured", "hidden_link_share_meas")), strict=True):
        ax.barh(y + off, d[col].to_numpy() * 100, height=h, color=TIMELINE_COLOURS[name], label=name)
    ax.set_yticks(y, list(d.index))
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.xaxis.set_major_formatter(PercentFormatter())
    ax.set_xlabel("link time hidden under compute in decode (mean over the points)")
    ax.grid(axis="y", visible=False)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, frameon=False)
    save_figure(fig, path.parent, path.stem)
    return path


def draw_validation_figures(out_dir: Path, ops: pd.DataFrame, points: pd.DataFrame, sim_tl: pd.DataFrame,
                            meas_tl: pd.DataFrame, label: str, step: int) -> list[Path]:
    """The three figures of a validation report into `out_dir` (PNG and PDF each)."""
    out_dir = Path(out_dir)
    return [scatter_by_kind(ops, out_dir / "scatter_by_kind.png"),
            gantt_decode_step(sim_tl, meas_tl, label, step, out_dir / "gantt_decode_step.png"),
            overlap_by_policy(points, out_dir / "overlap_by_policy.png")]
