"""Tables and the tornado figure of a sensitivity analysis (`sim.sensitivity`).

Tables (CSV in SI units at full precision; Markdown in readable units):

- `sensitivity_summary`: per workload point, the winner, its margin over the runner-up,
  whether it is robust, the share of joint draws it wins, and the figures that flip it;
- `sensitivity_figures`: per point and uncertain figure, its value, range and source,
  and where it changes the winner (or that it never does within its range);
- `sensitivity_spread`: per point and policy, the throughput at each end of every
  figure's range (one at a time) and over the joint draws (all at once).

The tornado figure of a point draws, per figure that changes anything, the winner's
margin over the best other policy at the two ends of the figure's range; a bar that
crosses zero is a figure that changes the winner.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..sim.sensitivity import FigureResult, PointSensitivity, Standing, winner_of
from .style import COLUMN_IN, PALETTE, new_figure, save_figure, series_name
from .tables import to_markdown

#: figure path suffix -> (unit shown, scale from SI)
_UNITS = (("_Bps", "GB/s", 1e-9), ("flops", "TFLOP/s", 1e-12), ("_s", "µs", 1e6))


def unit_of(path: str) -> tuple[str, float]:
    for suffix, unit, scale in _UNITS:
        if path.endswith(suffix):
            return unit, scale
    return "", 1.0


def shown(path: str, value: float | None) -> str:
    """A figure's value in readable units, e.g. `25 GB/s`, `0.5 TFLOP/s`, `10 µs`, `0.9`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    unit, scale = unit_of(path)
    return f"{value * scale:.4g} {unit}".strip()


def _margin_over_rest(standing: Standing, winner: str) -> float:
    """`winner`'s throughput over the best other kind's, minus one."""
    rest = [r.throughput_tok_s for k, r in standing.items() if k != winner]
    if not rest or winner not in standing:
        return math.nan
    return standing[winner].throughput_tok_s / max(rest) - 1


def _verdict(fr: FigureResult) -> str:
    if fr.figure.fixed:
        return "fixed"
    if not fr.effect:
        return "no effect at this point"
    parts = []
    for flip, side in ((fr.flip_below, "below"), (fr.flip_above, "above")):
        if flip is not None:
            parts.append(f"{side} {shown(fr.figure.path, flip.value)}: {flip.new_winner} wins")
    return "; ".join(parts) if parts else "never within its range"


def summary_frame(results: Sequence[PointSensitivity]) -> pd.DataFrame:
    rows = []
    for r in results:
        win, run = r.winner, r.runner_up
        flips = [f"{fr.figure.path} ({_verdict(fr)})" for fr in r.flipping]
        rows.append({
            **r.group,
            "winner": win, "winner_config": r.nominal[win].label,
            "winner_tok_s": r.nominal[win].throughput_tok_s,
            "runner_up": run or "", "runner_up_config": r.nominal[run].label if run else "",
            "runner_up_tok_s": r.nominal[run].throughput_tok_s if run else math.nan,
            "margin_pct": 100 * r.margin, "robust": r.robust,
            "winner_share_sampled": r.winner_share, "samples": len(r.samples), "seed": r.seed,
            "flipped_by": "; ".join(flips),
        })
    return pd.DataFrame(rows)


def figures_frame(results: Sequence[PointSensitivity]) -> pd.DataFrame:
    rows = []
    for r in results:
        for fr in r.figures:
            f = fr.figure
            rows.append({
                **r.group, "figure": f.path, "value": f.value, "lo": f.lo, "hi": f.hi,
                "source_kind": f.kind.value, "source": f.source, "effect": fr.effect,
                "flip_below": fr.flip_below.value if fr.flip_below else math.nan,
                "winner_below": fr.flip_below.new_winner if fr.flip_below else "",
                "flip_above": fr.flip_above.value if fr.flip_above else math.nan,
                "winner_above": fr.flip_above.new_winner if fr.flip_above else "",
                "margin_pct_at_lo": 100 * _margin_over_rest(fr.at_lo, r.winner),
                "margin_pct_at_hi": 100 * _margin_over_rest(fr.at_hi, r.winner),
                "verdict": _verdict(fr),
            })
    return pd.DataFrame(rows)


def spread_frame(results: Sequence[PointSensitivity]) -> pd.DataFrame:
    """Per point and policy kind: nominal throughput, the range over one-at-a-time ends, the joint draws."""
    rows = []
    for r in results:
        for kind, nom in sorted(r.nominal.items(), key=lambda kv: -kv[1].throughput_tok_s):
            ends = [s[kind].throughput_tok_s for fr in r.figures for s in (fr.at_lo, fr.at_hi) if kind in s]
            swing = max(r.figures, key=lambda fr: abs(fr.at_hi[kind].throughput_tok_s
                                                      - fr.at_lo[kind].throughput_tok_s), default=None)
            drawn = np.array([s[kind].throughput_tok_s for s in r.samples if kind in s])
            wins = sum(winner_of(s) == kind for s in r.samples)
            rows.append({
                **r.group, "policy": kind, "config": nom.label, "nominal_tok_s": nom.throughput_tok_s,
                "one_at_a_time_min_tok_s": min(ends, default=nom.throughput_tok_s),
                "one_at_a_time_max_tok_s": max(ends, default=nom.throughput_tok_s),
                "widest_figure": swing.figure.path if swing is not None and swing.effect else "",
                "joint_p5_tok_s": float(np.percentile(drawn, 5)) if len(drawn) else math.nan,
                "joint_median_tok_s": float(np.median(drawn)) if len(drawn) else math.nan,
                "joint_p95_tok_s": float(np.percentile(drawn, 95)) if len(drawn) else math.nan,
                "joint_win_share": wins / len(r.samples) if r.samples else math.nan,
            })
    return pd.DataFrame(rows)


def point_title(group: dict) -> str:
    return (f"{group['model']} on {group['hardware']}, batch {group['batch']}, prompt {group['prompt_len']}, "
            f"{group['gen_len']} out")


def point_markdown(r: PointSensitivity, index: int, tornado: str | None) -> str:
    """One point's section: headline, the figures, the spread."""
    win, run = r.winner, r.runner_up
    lines = [f"## Point {index} ({r.group['scenario']}): {point_title(r.group)}", ""]
    head = f"Winner: **{series_name(win)}** ({r.nominal[win].label}, {r.nominal[win].throughput_tok_s:.4g} tok/s)"
    if run:
        head += (f", {100 * r.margin:.1f}% ahead of {series_name(run)} ({r.nominal[run].label}, "
                 f"{r.nominal[run].throughput_tok_s:.4g} tok/s)")
    lines.append(head + ".")
    share = f"; it wins {r.winner_share:.0%} of {len(r.samples)} joint draws (seed {r.seed})" if r.samples else ""
    if r.robust:
        lines.append(f"**Robust**: no figure alone changes the winner within its range{share}.")
    else:
        names = ", ".join(f"`{fr.figure.path}`" for fr in r.flipping) or "no figure alone"
        lines.append(f"**Not robust**: changed by {names}{share}.")
    if r.infeasible:
        lines.append(f"Not in the running (do not fit in memory): {'; '.join(r.infeasible)}.")
    lines.append("")
    if tornado:
        lines += [f"![tornado]({tornado})", ""]
    fig = pd.DataFrame([{
        "figure": fr.figure.path, "value": shown(fr.figure.path, fr.figure.value),
        "range": f"{shown(fr.figure.path, fr.figure.lo)} – {shown(fr.figure.path, fr.figure.hi)}",
        "source": fr.figure.source, "winner changes": _verdict(fr),
        "margin at low end": _pct(_margin_over_rest(fr.at_lo, win)),
        "margin at high end": _pct(_margin_over_rest(fr.at_hi, win)),
    } for fr in r.figures])
    lines += [to_markdown(fig)]
    return "\n".join(lines)


def _pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:+.1f}%"


def tornado(r: PointSensitivity):
    """The winner's margin over the best other policy at each end of every figure that changes anything."""
    win = r.winner
    rows = [(fr, _margin_over_rest(fr.at_lo, win), _margin_over_rest(fr.at_hi, win))
            for fr in r.figures if fr.effect]
    rows.sort(key=lambda x: abs(x[2] - x[1]))
    fig, (ax,) = new_figure(width_in=COLUMN_IN * 1.6, panel_height_in=0.45 + 0.22 * max(len(rows), 1))
    base = r.margin if not math.isnan(r.margin) else 0.0
    y = np.arange(len(rows))
    for (_fr, lo, hi), yy in zip(rows, y, strict=True):
        for value, colour, label, dy in ((lo, PALETTE[0], "low end of range", -0.18),
                                         (hi, PALETTE[1], "high end of range", 0.18)):
            ax.barh(yy + dy, 100 * (value - base), left=100 * base, color=colour, height=0.36, label=label)
    ax.set_yticks(y, [f"{fr.figure.path} [{shown(fr.figure.path, fr.figure.lo)} – "
                      f"{shown(fr.figure.path, fr.figure.hi)}]" for fr, _, _ in rows])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.axvline(100 * base, color="grey", linewidth=0.6, linestyle="--")
    ax.set_xlabel(f"margin of {series_name(win)} over the best other policy (%); < 0: the winner changes")
    ax.set_title(point_title(r.group))
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    if seen:
        ax.legend(seen.values(), seen.keys(), loc="lower right")
    return fig


def write_sensitivity(results: Sequence[PointSensitivity], out_dir: str | Path,
                      indices: Sequence[int] | None = None) -> list[Path]:
    """Write the three tables (CSV and Markdown), `sensitivity.md` and a tornado figure per point."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    indices = list(indices) if indices is not None else list(range(1, len(results) + 1))
    paths: list[Path] = []
    tables = {"sensitivity_summary": summary_frame(results), "sensitivity_figures": figures_frame(results),
              "sensitivity_spread": spread_frame(results)}
    for name, df in tables.items():
        csv = out / f"{name}.csv"
        df.to_csv(csv, index=False)
        paths.append(csv)
    spread = tables["sensitivity_spread"].drop(columns=["scenario"])
    md = out / "sensitivity_spread.md"
    md.write_text(to_markdown(spread))
    paths.append(md)
    sections = ["# Sensitivity of each verdict to the uncertain hardware figures", "",
                "One figure at a time: where in its range the winner changes (bisection), else "
                "\"never within its range\". All at once: seeded joint draws, log-uniform in every range.", ""]
    for r, i in zip(results, indices, strict=True):
        name = f"tornado_point{i}"
        if any(fr.effect for fr in r.figures) and len(r.nominal) > 1:
            paths += save_figure(tornado(r), out / "figures", name)
            rel = f"figures/{name}.png"
        else:
            rel = None
        sections.append(point_markdown(r, i, rel))
    summary_md = out / "sensitivity_summary.md"
    summary_md.write_text(to_markdown(tables["sensitivity_summary"].drop(columns=["scenario", "seed"])))
    doc = out / "sensitivity.md"
    doc.write_text("\n".join(sections))
    return [*paths, summary_md, doc]
