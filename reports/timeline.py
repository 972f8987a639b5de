"""Figures that need a replayed timeline: a Gantt chart of one decode step and memory over time.

Only one small workload point is re-simulated: the cheapest feasible point of the
first scenario in the results, with each series' best configuration there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.patches import Patch, Rectangle

from ..sim.schedule import OpKind, Stream
from .results import Skip, best_per_series, duplicate_series, ok_rows, workload_columns
from .style import (
    KIND_FAMILIES,
    PAGE_IN,
    Drawn,
    kind_colours,
    kind_family,
    new_figure,
    series_colour,
    series_linestyle,
    series_name,
    series_sort_key,
)

STREAM_ORDER = [s.value for s in Stream]
KIND_ORDER = [k.value for k in OpKind]


@dataclass(frozen=True)
class TimelineRun:
    """One re-simulated configuration: its series, label, point and the replay."""

    series: str
    policy_label: str
    run: object  # hssim.sim.api.PointRun

    @property
    def timeline(self) -> pd.DataFrame:
        return self.run.result.timeline()


def pick_timeline_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Best row per series at the cheapest feasible workload point of the first scenario.

    A series whose best row there is the same run as an earlier series' (e.g. token
    recompute at r = 1 and KV-only) is left out; `attrs["left_out"]` says which and why.
    """
    ok = ok_rows(df, ["point_json"])
    first = ok["scenario"].iloc[0]
    ok = ok[ok["scenario"] == first]
    best = best_per_series(ok)
    cost = "ops" if "ops" in best.columns else "makespan_s"
    wl = workload_columns(best)
    size = best.groupby(wl, sort=False, dropna=False)[cost].max().sort_values(kind="stable")
    point = pd.Series(dict(zip(wl, size.index[0], strict=True)))
    rows = best[(best[wl] == point).all(axis=1)]
    dup = duplicate_series(rows)
    left_out = []
    for series, same in dup.items():
        label = rows.loc[rows["series"] == series, "policy_label"].iloc[0] if "policy_label" in rows else series
        left_out.append(f"{series_name(series)}: its best configuration here ({label}) runs exactly as "
                        f"{series_name(same)}'s, so its panel and line would repeat that one")
    rows = rows[~rows["series"].isin(dup)]
    rows = rows.sort_values("series", key=lambda s: s.map(series_sort_key), kind="stable")
    rows.attrs["left_out"] = left_out
    return rows


def resimulate(rows: pd.DataFrame) -> tuple[list[TimelineRun], list[str]]:
    """Replay each row's point; rows whose point no longer loads or fits are noted, not fatal."""
    from ..sim.api import run_point
    from ..sim.memory import MemoryPlanError
    from ..sim.specs import PointSpec

    runs, notes = [], []
    for _, row in rows.iterrows():
        try:
            point = PointSpec.model_validate_json(row["point_json"])
            runs.append(TimelineRun(row["series"], point.policy.label, run_point(point)))
        except (ValueError, MemoryPlanError) as e:
            first = str(e).splitlines()[0]
            notes.append(f"{row.get('policy_label', row['series'])}: not re-simulated ({first})")
    if not runs:
        raise Skip("no point could be re-simulated: " + "; ".join(notes))
    return runs, notes


def _point_title(runs: list[TimelineRun]) -> str:
    p = runs[0].run.point
    w = p.workload
    return (f"{p.scenario}: {p.model.name} on {p.hardware.name}, batch {w.batch} "
            f"({p.policy.num_gpu_batches}×{p.gpu_batch_size}), prompt {w.prompt_len}, {w.gen_len} output tokens")


#: words of a policy label that the series name already says
_SAID_BY_SERIES = {"cpu-attn", "naive", "balanced", "l=closed-form", "l=per-step"}


def config_title(r: TimelineRun) -> str:
    """Legend name of the series plus what its label adds, e.g. `KV+activation hybrid, r=0.50`."""
    kind = r.run.point.policy.kind.value
    words = r.policy_label.split()
    extra = " ".join(w for w in (words[1:] if words[:1] == [kind] else words) if w not in _SAID_BY_SERIES)
    return f"{series_name(r.series)}, {extra}" if extra else series_name(r.series)


def decode_step_of(gen_len: int) -> int:
    """The decode step the Gantt chart shows: the middle one (step 0 is the prefill)."""
    if gen_len < 2:
        raise Skip("gen_len 1: the run has no decode step")
    return 1 + (gen_len - 1) // 2


# ------------------------------------------------------------------------------------- Gantt


ZOOM_LAYERS = 2
#: height of one stream row and of a panel's title, inches
ROW_IN, TITLE_IN = 0.17, 0.3


def _fmt_duration(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _draw_ops(ax, t: pd.DataFrame, t0_s: float, streams: list[str], kinds: list[str], colours,
              edges: bool, min_width_ms: float) -> None:
    """Bars of the ops in `t`; ops narrower than `min_width_ms` are widened to it so that they stay visible."""
    for row, stream in enumerate(streams):
        on = t[t["stream"] == stream]
        for kind in kinds:
            ops = on[on["kind"] == kind]
            if ops.empty:
                continue
            widths = ((ops["end_s"] - ops["start_s"]) * 1e3).clip(lower=min_width_ms)
            spans = list(zip((ops["start_s"] - t0_s) * 1e3, widths, strict=True))
            ax.broken_barh(spans, (row - 0.38, 0.76), facecolors=colours[kind],
                           edgecolor="white" if edges else "none", linewidth=0.3 if edges else 0,
                           label=kind, gid=f"{stream}:{kind}")
    ax.set_yticks(range(len(streams)), streams)
    ax.set_ylim(len(streams) - 0.5, -0.5)
    ax.grid(axis="y", visible=False)


#: above this many ops in a step, the whole-step panel shows busy shares per time slice, not single ops
BIN_ABOVE_OPS = 300
#: time slices of a binned whole-step panel
GANTT_BINS = 240


def busy_shares(t: pd.DataFrame, t0_s: float, span_ms: float, bins: int = GANTT_BINS) -> dict[str, np.ndarray]:
    """Per op kind: the share of each of `bins` equal time slices of [0, span_ms] that its ops cover."""
    width = span_ms / bins
    out: dict[str, np.ndarray] = {}
    for kind, ops in t.groupby("kind", sort=False):
        busy = np.zeros(bins)
        for s, e in zip((ops["start_s"] - t0_s) * 1e3, (ops["end_s"] - t0_s) * 1e3, strict=True):
            b0, b1 = min(int(s // width), bins - 1), min(int(e // width), bins - 1)
            if b0 == b1:
                busy[b0] += e - s
                continue
            busy[b0] += (b0 + 1) * width - s
            busy[b0 + 1:b1] += width
            busy[b1] += e - b1 * width
        out[kind] = np.clip(busy / width, 0.0, 1.0)
    return out


def _draw_binned(ax, t: pd.DataFrame, t0_s: float, streams: list[str], kinds: list[str], colours,
                 span_ms: float) -> None:
    """Each stream's row as stacked bars per time slice: height = the share of the slice each kind keeps
    the stream busy (a full-height bar: busy throughout), so thousands of ops read as a load profile."""
    width = span_ms / GANTT_BINS
    x = (np.arange(GANTT_BINS) + 0.5) * width
    for row, stream in enumerate(streams):
        shares = busy_shares(t[t["stream"] == stream], t0_s, span_ms)
        top = np.zeros(GANTT_BINS)
        for kind in kinds:
            if kind not in shares:
                continue
            h = shares[kind] * 0.76
            # rows run downwards (the y-axis is inverted): stack each kind above the previous ones
            ax.bar(x, h, width=width, bottom=row + 0.38 - top - h, color=colours[kind], linewidth=0,
                   label=kind, gid=f"binned:{stream}:{kind}")
            top += h
    ax.set_yticks(range(len(streams)), streams)
    ax.set_ylim(len(streams) - 0.5, -0.5)
    ax.grid(axis="y", visible=False)


LEGEND_KINDS_PER_COLUMN = 4


def _kind_legend(kinds: list[str], colours) -> tuple[list[Patch], list[str], int]:
    """Legend entries in columns by op-kind family, each family headed by its name.

    A family of more than `LEGEND_KINDS_PER_COLUMN` kinds continues in the next column.
    Returns handles, labels and the number of columns.
    """
    columns: list[tuple[str, list[str]]] = []
    for fam in KIND_FAMILIES:
        members = [k for k in kinds if kind_family(k) == fam]
        for i in range(0, len(members), LEGEND_KINDS_PER_COLUMN):
            columns.append((fam if i == 0 else "", members[i:i + LEGEND_KINDS_PER_COLUMN]))
    depth = 1 + max(len(col) for _, col in columns)
    blank = {"facecolor": "none", "edgecolor": "none"}
    handles, labels = [], []
    for head, col in columns:  # matplotlib fills a legend column by column
        handles.append(Patch(**blank))
        labels.append(head)
        for k in col:
            handles.append(Patch(facecolor=colours[k], edgecolor="white", label=k))
            labels.append(k)
        handles += [Patch(**blank) for _ in range(depth - 1 - len(col))]
        labels += [""] * (depth - 1 - len(col))
    return handles, labels, len(columns)


def gantt_decode_step(runs: list[TimelineRun]) -> Drawn:
    """One decode step per configuration: streams as rows, op kinds as colours, time in ms.

    Left: the whole step. Right (when the model has more than two layers): the
    step's first two layers, zoomed, where single ops and their overlap show.
    """
    step = decode_step_of(runs[0].run.point.workload.gen_len)
    steps = []
    for r in runs:
        t = r.timeline
        if (t["step"] == step).any():
            steps.append((r, t[t["step"] == step]))
    if not steps:
        raise Skip(f"no op belongs to decode step {step}")
    kinds_present = {k for _, t in steps for k in t["kind"]}
    kinds = [k for k in KIND_ORDER if k in kinds_present] + sorted(kinds_present - set(KIND_ORDER))
    colours = kind_colours(kinds)  # fixed per kind, by family: loads blue, stores green, GPU warm, CPU purple
    zoom = runs[0].run.point.model.layers > ZOOM_LAYERS
    ncols = 2 if zoom else 1
    streams_of = [[s for s in STREAM_ORDER if s in set(t["stream"])] + sorted(set(t["stream"]) - set(STREAM_ORDER))
                  for _, t in steps]
    # each panel as tall as its rows need (a stream row stays taller than its tick label), plus its title
    heights = [ROW_IN * len(s) + TITLE_IN for s in streams_of]
    grid = {"height_ratios": heights} | ({"width_ratios": [1.5, 1]} if zoom else {})
    # the figure also holds the suptitle, the time axis and the legend (a header and up to four kinds)
    legend_rows = 1 + min(LEGEND_KINDS_PER_COLUMN, max(sum(kind_family(k) == f for k in kinds) for f in KIND_FAMILIES))
    total = sum(heights) + 0.2 + 0.4 + 0.14 * legend_rows
    fig, axes = new_figure(ncols, len(steps), width_in=PAGE_IN, panel_height_in=total / len(heights),
                           gridspec_kw=grid)
    longest_ms = max((t["end_s"].max() - t["start_s"].min()) * 1e3 for _, t in steps)
    binned = False
    for i, (r, t) in enumerate(steps):
        t0 = t["start_s"].min()
        streams = streams_of[i]
        ax = axes[i * ncols]
        ax.set_gid(f"step:{r.series}")
        if i:
            ax.sharex(axes[0])
        if len(t) > BIN_ABOVE_OPS:
            _draw_binned(ax, t, t0, streams, kinds, colours, span_ms=(t["end_s"].max() - t0) * 1e3)
            binned = True
        else:
            _draw_ops(ax, t, t0, streams, kinds, colours, edges=not zoom, min_width_ms=longest_ms * 1e-3)
        ax.set_title(f"{config_title(r)}: decode step {step} takes {_fmt_duration(t['end_s'].max() - t0)}",
                     loc="left")
        if zoom:
            first = t[(t["layer"] >= 0) & (t["layer"] < ZOOM_LAYERS)]
            lo, hi = (first["start_s"].min() - t0) * 1e3, (first["end_s"].max() - t0) * 1e3
            window = t[((t["end_s"] - t0) * 1e3 > lo) & ((t["start_s"] - t0) * 1e3 < hi)]
            zax = axes[i * ncols + 1]
            zax.set_gid(f"zoom:{r.series}")
            _draw_ops(zax, window, t0, streams, kinds, colours, edges=True, min_width_ms=(hi - lo) * 4e-3)
            zax.set_xlim(lo, hi)
            zax.tick_params(labelleft=False)
            zax.set_title(f"layers 0–{ZOOM_LAYERS - 1}, zoomed", loc="left")
            # the zoomed window, outlined on the whole step so that the eye finds it
            ax.add_patch(Rectangle((lo, -0.5), hi - lo, len(streams), fill=False, edgecolor="0.1", linewidth=1.0,
                                   zorder=5, clip_on=False, gid="zoom-window"))
            ax.annotate("zoomed →", (hi, -0.5), xytext=(2, -1), textcoords="offset points", ha="left",
                        va="top", fontsize=6, color="0.1", annotation_clip=False,
                        bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    for ax in axes[:-ncols]:
        ax.tick_params(labelbottom=False)
    for ax in axes[-ncols:]:
        ax.set_xlabel("time since the step's first op (ms)")
    fig.suptitle(_point_title(runs), fontsize=7)
    handles, labels, ncol = _kind_legend(kinds, colours)
    leg = fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False)
    for text in leg.get_texts():
        if text.get_text() in KIND_FAMILIES:
            text.set_fontweight("bold")
    notes = [f"decode step {step} of {runs[0].run.point.workload.gen_len - 1}"]
    if binned:
        notes.append(f"the whole-step panels cut the step into {GANTT_BINS} time slices; a bar's height is the "
                     "share of its slice each op kind keeps the stream busy (full height: busy throughout); "
                     "the zoomed panels show single ops")
    return Drawn(fig, notes)


# ------------------------------------------------------------------------------ memory occupancy


MEMORY_BINS = 400


def occupancy_envelope(time_s: np.ndarray, value: np.ndarray, end_s: float, bins: int = MEMORY_BINS):
    """Min and max of a step function (value holds from each time to the next) over equal time bins.

    Returns (bin start times, min per bin, max per bin); a dense oscillation reads as a band.
    """
    edges = np.linspace(0.0, max(end_s, float(time_s.max(initial=0.0)), 1e-12), bins + 1)
    # value in force at each bin's start, then every change inside the bin
    carried = value[np.clip(np.searchsorted(time_s, edges[:-1], side="right") - 1, 0, None)]
    which = np.clip(np.searchsorted(edges, time_s, side="right") - 1, 0, bins - 1)
    lo, hi = carried.astype(float), carried.astype(float)
    np.minimum.at(lo, which, value)
    np.maximum.at(hi, which, value)
    return edges[:-1], lo, hi


def memory_over_time(runs: list[TimelineRun]) -> Drawn:
    """GPU (left) and host (right) memory in use over the whole run, one band per configuration.

    The band spans the least and most memory in use within each of `MEMORY_BINS` time bins;
    its upper edge is drawn as a line.
    """
    from ..sim.metrics import memory_occupancy

    fig, axes = new_figure(2, 1, width_in=PAGE_IN, panel_height_in=2.0)
    hw = runs[0].run.point.hardware
    peak_gb = {}
    for r in runs:
        occ = memory_occupancy(r.run.result)
        peak_gb[r.policy_label] = float(occ["gpu_bytes"].max()) / 1e9
        t = occ["time_s"].to_numpy()
        for ax, col in zip(axes, ("gpu_bytes", "host_bytes"), strict=True):
            x, lo, hi = occupancy_envelope(t, occ[col].to_numpy(), r.run.result.makespan_s)
            colour = series_colour(r.series)
            ax.fill_between(x, lo / 1e9, hi / 1e9, step="post", color=colour, alpha=0.25, linewidth=0)
            ax.plot(x, hi / 1e9, drawstyle="steps-post", label=config_title(r), color=colour,
                    linestyle=series_linestyle(r.series), linewidth=0.9)
    for ax, what, cap in ((axes[0], "GPU", hw.gpu.memory_bytes), (axes[1], "host", hw.host.memory_bytes)):
        top = max(line.get_ydata().max() for line in ax.get_lines())
        if cap / 1e9 <= 1.6 * top:
            ax.axhline(cap / 1e9, color="0.3", linewidth=0.7, linestyle=":", label="_capacity")
            ax.annotate(f"{what} capacity {cap / 1e9:.0f} GB", (0.99, cap / 1e9), xycoords=("axes fraction", "data"),
                        ha="right", va="bottom", fontsize=6, color="0.3")
            ax.set_ylim(0, cap / 1e9 * 1.1)
        else:
            ax.set_ylim(0, top * 1.1 if top > 0 else 1)
        ax.set_xlim(left=0)
        ax.set_xlabel("time (s)")
        ax.set_ylabel(f"{what} memory in use (GB)")
    fig.suptitle(_point_title(runs), fontsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), frameon=False)
    return Drawn(fig, ["bands span the least and most memory in use per time bin",
                       "peak GPU memory: " + ", ".join(f"{k} {v:.2f} GB" for k, v in peak_gb.items())])
