"""One look for every figure: theme, sizes, policy names, colours and markers, saving.

Colours come from seaborn's colour-blind-safe palette and every policy also has its
own marker and line style, so a figure still reads in greyscale. Sizes are in
inches for a two-column paper: `COLUMN_IN` for one column, `PAGE_IN` for both.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

#: width of one column and of the full text block of a two-column paper, inches
COLUMN_IN = 3.5
PAGE_IN = 7.2

PALETTE = sns.color_palette("colorblind", 10)

#: series key -> (legend name as the papers call it, palette index, marker, line style)
_KNOWN: dict[str, tuple[str, int, str, str]] = {
    "kv-only": ("KV-only (FlexGen)", 0, "o", "-"),
    "kv-only cpu-attn": ("KV-only, CPU attention (FlexGen)", 4, "v", "--"),
    "token-recompute": ("Token recompute", 3, "s", "-."),
    "hybrid": ("KV+activation (HybridServe)", 2, "D", "-"),
    "flexgen": ("FlexGen", 7, "P", ":"),
    "kvpr": ("KVPR", 1, "X", "--"),
}
_SPARE_COLOURS = [5, 6, 8, 9]
_SPARE_MARKERS = ["^", "<", ">", "h", "*", "p"]

#: canonical order of series in legends and bar groups
SERIES_ORDER = list(_KNOWN)


def series_sort_key(series: str) -> tuple[int, str]:
    return (SERIES_ORDER.index(series) if series in _KNOWN else len(SERIES_ORDER), series)


def _spare_index(series: str) -> int:
    # deterministic across runs and processes (str hash is salted)
    return sum(series.encode()) % len(_SPARE_COLOURS)


def series_name(series: str) -> str:
    """Legend name of a policy series; an unknown kind keeps its own name."""
    return _KNOWN[series][0] if series in _KNOWN else series


def series_colour(series: str) -> tuple[float, float, float]:
    if series in _KNOWN:
        return PALETTE[_KNOWN[series][1]]
    return PALETTE[_SPARE_COLOURS[_spare_index(series)]]


def series_marker(series: str) -> str:
    if series in _KNOWN:
        return _KNOWN[series][2]
    return _SPARE_MARKERS[sum(series.encode()) % len(_SPARE_MARKERS)]


def series_linestyle(series: str) -> str:
    return _KNOWN[series][3] if series in _KNOWN else ":"


def kind_colours(kinds: list[str]) -> tuple[dict[str, tuple[float, float, float]], dict[str, str | None]]:
    """Colour and hatch per op kind, in the given order: past ten kinds the colours repeat with a hatch."""
    hatch_cycle = [None, "////", "....", "xxxx"]
    colours = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(kinds)}
    hatches = {k: hatch_cycle[(i // len(PALETTE)) % len(hatch_cycle)] for i, k in enumerate(kinds)}
    return colours, hatches


def apply_theme() -> None:
    """Seaborn 'paper' context at sizes that stay legible when printed one column wide."""
    sns.set_theme(
        context="paper",
        style="whitegrid",
        palette=PALETTE,
        font="DejaVu Sans",
        rc={
            "font.size": 7,
            "axes.titlesize": 7.5,
            "axes.labelsize": 7,
            "xtick.labelsize": 6.5,
            "ytick.labelsize": 6.5,
            "legend.fontsize": 6.5,
            "legend.title_fontsize": 6.5,
            "lines.linewidth": 1.2,
            "lines.markersize": 4,
            "grid.linewidth": 0.4,
            "axes.linewidth": 0.6,
            "pdf.fonttype": 42,
            "savefig.bbox": "tight",
            "savefig.pad_inches": 0.02,
        },
    )


def new_figure(ncols: int = 1, nrows: int = 1, width_in: float = COLUMN_IN, panel_height_in: float = 1.9,
               **kwargs) -> tuple[plt.Figure, list[plt.Axes]]:
    """A figure of `nrows x ncols` panels, returned with a flat list of axes."""
    apply_theme()
    fig, axes = plt.subplots(nrows, ncols, figsize=(width_in, panel_height_in * nrows), squeeze=False,
                             layout="constrained", **kwargs)
    return fig, list(axes.flat)


def hide_unused(axes: list[plt.Axes], used: int) -> None:
    for ax in axes[used:]:
        ax.set_visible(False)


def save_figure(fig: plt.Figure, out_dir: Path, name: str, dpi: int = 200) -> list[Path]:
    """Write `name.png` and `name.pdf` into `out_dir`; close the figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=dpi)
    plt.close(fig)
    return paths


class Drawn:
    """A finished figure and the notes its caption must carry (what was chosen, what was left out)."""

    def __init__(self, fig: plt.Figure, notes: list[str] | None = None) -> None:
        self.fig = fig
        self.notes = list(notes or [])
