"""The whole report of one results table: figures, tables and an index with captions.

Layout under `out_dir`: `figures/NAME.png|pdf`, `tables/NAME.csv|md` and
`README.md`, which lists every figure with its caption and every figure or table
left out with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import figures, timeline
from .results import Skip, load_results
from .style import Drawn, save_figure
from .tables import TABLES, to_markdown, write_table


@dataclass(frozen=True)
class FigureDef:
    name: str
    caption: str
    build: Callable[..., Drawn]
    needs_runs: bool = False


FIGURES = [
    FigureDef("throughput_vs_prompt", "Throughput (generated tokens / (prefill + decode time)) against prompt "
              "length, one line per policy at its best configuration (cf. HybridServe Fig. 3).",
              figures.throughput_vs_prompt),
    FigureDef("latency_vs_recompute_ratio", "Per-token decode latency relative to {baseline}, which "
              "recomputes nothing, against the recomputation ratio 1 − r, one panel per model; the star marks "
              "each policy's optimum, labelled where it beats the reference (cf. HybridServe Fig. 4).",
              figures.latency_vs_recompute_ratio),
    FigureDef("throughput_bars", "Throughput per model and policy (best configuration each); the number on a "
              "bar is its speed-up over the best configuration of {baseline} at that point (the better attention "
              "placement; its bar is hatched), named in each panel's title.", figures.throughput_bars),
    FigureDef("utilisation_traffic", "GPU busy fraction (top) and host↔GPU bytes moved, H2D + D2H (bottom, "
              "{traffic_scale}), per policy at its best configuration.", figures.utilisation_traffic),
    FigureDef("bound_distance", "Throughput as a fraction of the busiest-resource bound (the time the busiest "
              "engine alone needs); the label names that engine.", figures.bound_distance),
    FigureDef("gantt_decode_step", "One decode step of the smallest feasible point of the first scenario: "
              "streams as rows, op kinds as colours, one panel per policy (best configuration).",
              timeline.gantt_decode_step, needs_runs=True),
    FigureDef("memory_over_time", "GPU and host memory in use over the whole run of the same point, one line "
              "per policy.", timeline.memory_over_time, needs_runs=True),
]


@dataclass
class Report:
    """What a report wrote, and what it left out and why."""

    paths: list[Path] = field(default_factory=list)
    captions: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    #: figure name -> series it drew without (e.g. one whose run is another's)
    left_out: dict[str, list[str]] = field(default_factory=dict)


def build_report(results: pd.DataFrame | str | Path, out_dir: str | Path,
                 only: list[str] | None = None, progress: Callable[[str], None] | None = None) -> Report:
    """Write every figure and table that the results support; `only` limits the figures by name;
    `progress` is told what is drawn next ("figure 3 of 7: throughput_bars")."""
    df = load_results(results)
    out = Path(out_dir)
    rep = Report()
    runs_or_reason: tuple[list, list[str]] | str | None = None
    run_left_out: list[str] = []
    chosen = [fd for fd in FIGURES if only is None or fd.name in only]
    for i, fd in enumerate(chosen, 1):
        if progress is not None:
            progress(f"figure {i} of {len(chosen)}: {fd.name}"
                     + (" (re-simulates the timelines it draws)" if fd.needs_runs and runs_or_reason is None else ""))
        try:
            if fd.needs_runs:
                if runs_or_reason is None:
                    try:
                        picked = timeline.pick_timeline_rows(df)
                        runs_or_reason = timeline.resimulate(picked)
                        run_left_out = list(picked.attrs.get("left_out", []))
                    except Skip as e:
                        runs_or_reason = str(e)
                if isinstance(runs_or_reason, str):
                    raise Skip(runs_or_reason)
                runs, run_notes = runs_or_reason
                drawn = fd.build(runs)
                drawn.notes.extend(run_notes)
                drawn.left_out.extend(run_left_out)
            else:
                drawn = fd.build(df)
        except Skip as e:
            rep.skipped[fd.name] = str(e)
            continue
        rep.paths += save_figure(drawn.fig, out / "figures", fd.name)
        caption = fd.caption.format_map(_Fields(drawn.fields))
        rep.captions[fd.name] = caption + "".join(f" Note: {n}." for n in drawn.notes)
        if drawn.left_out:
            rep.left_out[fd.name] = drawn.left_out
    if progress is not None:
        progress(f"{len(TABLES)} tables")
    for name, (build, _) in TABLES.items():
        try:
            rep.paths += write_table(build(df), out / "tables", name)
        except Skip as e:
            rep.skipped[f"table {name}"] = str(e)
    rep.paths.append(_write_index(out, df, rep))
    return rep


class _Fields(dict):
    """Caption words a figure did not supply read as generic words, not as an error."""

    def __missing__(self, key: str) -> str:
        return {"baseline": "the baseline", "traffic_scale": "linear or log scale"}.get(key, key)


def _write_index(out: Path, df: pd.DataFrame, rep: Report) -> Path:
    n_ok = int((df["status"] == "ok").sum())
    lines = ["# hssim report", "",
             f"{len(df)} result rows ({n_ok} feasible) from the scenarios "
             f"{', '.join(map(str, dict.fromkeys(df['scenario'])))}.", "", "## Figures", ""]
    for name, caption in rep.captions.items():
        lines += [f"### {name}", "", f"![{name}](figures/{name}.png)", "", caption,
                  f"([PDF](figures/{name}.pdf))", ""]
    lines += ["## Tables", ""]
    for name, (_, desc) in TABLES.items():
        if f"table {name}" not in rep.skipped:
            lines.append(f"- [{name}.md](tables/{name}.md) / [{name}.csv](tables/{name}.csv): {desc}")
    if rep.skipped or rep.left_out:
        lines += ["", "## Left out", ""]
        lines += [f"- {name}: {reason}" for name, reason in rep.skipped.items()]
        lines += [f"- {name}, {what}" for name, whats in rep.left_out.items() for what in whats]
    summary = out / "tables" / "summary.md"
    if summary.is_file():
        lines += ["", "## Summary", "", summary.read_text()]
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_report(results: pd.DataFrame | str | Path, out_dir: str | Path) -> list[Path]:
    """Figures (PNG, PDF), tables (CSV, Markdown) and a README index under `out_dir`; returns the files."""
    return build_report(results, out_dir).paths


__all__ = ["FIGURES", "Report", "build_report", "make_report", "to_markdown"]
