"""One look for every figure: theme, sizes, policy names, colours and markers, saving.

Colours come from seaborn's colour-blind-safe palette and every policy also has its
own marker and line style, so a figure still reads in greyscale. Sizes are in
inches for a two-column paper: `COLUMN_IN` for one column, `PAGE_IN` for both.

A series key is a policy kind followed by the variants that make it a different
system (`flexgen cpu-attn`, `hybridserve naive`, `kvpr per-step`; see
`results.series_of`). The published systems carry their papers' names (FlexGen,
HybridServe, KVPR); the generic policies hssim adds are named for what they keep.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from ..sim.outfiles import atomic_path  # noqa: E402

#: width of one column and of the full text block of a two-column paper, inches
COLUMN_IN = 3.5
PAGE_IN = 7.2

PALETTE = sns.color_palette("colorblind", 10)

#: series key -> (legend name, palette index, marker, line style), in the canonical order of
#: legends, bar groups and panels: each paper's system sits next to its variants
_KNOWN: dict[str, tuple[str, int, str, str]] = {
    "kv-only": ("KV-only", 0, "o", "-"),
    "kv-only cpu-attn": ("KV-only, CPU attention", 9, "v", "--"),
    "flexgen": ("FlexGen", 3, "P", "-"),
    "flexgen cpu-attn": ("FlexGen, CPU attention", 1, "X", "--"),
    "token-recompute": ("Token recompute", 7, "s", "-."),
    "hybrid": ("KV+activation hybrid", 2, "D", "-"),
    "hybridserve": ("HybridServe", 4, "^", "-"),
    "hybridserve naive": ("HybridServe, naive mini-batches", 6, "<", "--"),
    "kvpr": ("KVPR", 5, "h", "-"),
    "kvpr per-step": ("KVPR, per-step split", 8, "p", "--"),
}
#: variant token of a series key -> what a legend says about it
VARIANT_NAMES = {
    "cpu-attn": "CPU attention",
    "naive": "naive mini-batches",
    "per-step": "per-step split",
    "fixed-l": "fixed split",
    "pinned-kv": "pinned KV",
    "no-barrier": "no step barrier",
}
_SPARE_MARKERS = [">", "d", "H", "8", "1", "2"]
_SPARE_STYLES = [":", (0, (5, 1, 1, 1)), (0, (1, 2)), (0, (3, 1, 1, 1, 1, 1))]

#: canonical order of series in legends and bar groups
SERIES_ORDER = list(_KNOWN)


def _parent(series: str) -> str | None:
    """The longest known series key that `series` is, or extends by whole variant tokens."""
    tokens = series.split(" ")
    for n in range(len(tokens), 0, -1):
        key = " ".join(tokens[:n])
        if key in _KNOWN:
            return key
    return None


def _variants(series: str, parent: str) -> list[str]:
    return series[len(parent):].split()


def series_sort_key(series: str) -> tuple[int, int, str]:
    """Canonical order: known series first, each variant right after the series it extends."""
    parent = _parent(series)
    if parent is None:
        return (len(SERIES_ORDER), 0, series)
    return (SERIES_ORDER.index(parent), 0 if parent == series else 1, series)


def _stable_index(series: str, n: int) -> int:
    # deterministic across runs and processes (str hash is salted)
    return sum(series.encode()) % n


def series_name(series: str) -> str:
    """Legend name of a policy series; an unknown kind keeps its own name."""
    parent = _parent(series)
    if parent is None:
        return series
    return ", ".join([_KNOWN[parent][0], *(VARIANT_NAMES.get(t, t) for t in _variants(series, parent))])


def legend_rank(label: str) -> tuple[int, int, str]:
    """Sort key of a legend entry named after a series (`series_name`, maybe with ', best r' after it).

    The longest series name the label starts with decides; other entries sort last.
    """
    best: tuple[int, str] | None = None
    for series in _KNOWN:
        name = _KNOWN[series][0]
        if (label == name or label.startswith(name + ",")) and (best is None or len(name) > best[0]):
            best = (len(name), series)
    if best is None:
        return (len(SERIES_ORDER) + 1, 0, label)
    return (SERIES_ORDER.index(best[1]), 0 if label == _KNOWN[best[1]][0] else 1, label)


def _mix(rgb, towards: float, amount: float) -> tuple[float, float, float]:
    return tuple(c + (towards - c) * amount for c in rgb)


def series_colour(series: str) -> tuple[float, float, float]:
    """Each known series its own palette colour; a variant a darker shade of its parent's."""
    parent = _parent(series)
    if parent is None:
        return _mix(PALETTE[_stable_index(series, len(PALETTE))], 0.0, 0.45)
    colour = PALETTE[_KNOWN[parent][1]]
    n = len(_variants(series, parent))
    return _mix(colour, 0.0, min(0.3 * n, 0.6)) if n else colour


def series_edge_colour(series: str) -> tuple[float, float, float]:
    """A darker shade of the series colour, for marker edges: pale colours stay visible on white."""
    return _mix(series_colour(series), 0.0, 0.35)


def series_marker(series: str) -> str:
    if series in _KNOWN:
        return _KNOWN[series][2]
    return _SPARE_MARKERS[_stable_index(series, len(_SPARE_MARKERS))]


def series_linestyle(series: str):
    if series in _KNOWN:
        return _KNOWN[series][3]
    return _SPARE_STYLES[_stable_index(series, len(_SPARE_STYLES))]


#: op kind -> colour, by family: host->GPU loads in blues, GPU->host stores in greens,
#: GPU compute in warm colours (reds, oranges, yellows, browns), CPU compute in purple
KIND_COLOURS: dict[str, str] = {
    "load_weights": "#08306b",
    "load_kv": "#2171b5",
    "load_act": "#6baed6",
    "load_tokens": "#9ecae1",
    "load_attn_out": "#17becf",
    "store_kv": "#006d2c",
    "store_act": "#41ab5d",
    "store_qkv": "#74c476",
    "attention": "#d55e00",
    "qkv_proj": "#8c2d04",
    "out_proj": "#fdae6b",
    "ffn": "#e69f00",
    "recompute_kv": "#f0e442",
    "recompute_layer": "#cc79a7",
    "lm_head": "#8c6d31",
    "cpu_attention": "#6a3d9a",
}
#: legend heading of each op-kind family, in legend order
KIND_FAMILIES = ["host → GPU", "GPU → host", "GPU compute", "CPU compute"]


def kind_family(kind: str) -> str:
    if kind.startswith("load_"):
        return KIND_FAMILIES[0]
    if kind.startswith("store_"):
        return KIND_FAMILIES[1]
    return KIND_FAMILIES[3] if kind.startswith("cpu_") else KIND_FAMILIES[2]


def kind_colours(kinds: list[str]) -> dict[str, str | tuple[float, float, float]]:
    """Colour per op kind, fixed by family so every kind reads the same in every figure.

    A kind not in `KIND_COLOURS` gets a grey.
    """
    greys = ["#4d4d4d", "#7f7f7f", "#b3b3b3"]
    extra = [k for k in kinds if k not in KIND_COLOURS]
    return {k: KIND_COLOURS.get(k) or greys[extra.index(k) % len(greys)] for k in kinds}


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
    try:
        for p in paths:  # atomically: a killed write leaves a temporary, never a truncated figure
            with atomic_path(p) as tmp:
                fig.savefig(tmp, dpi=dpi, format=p.suffix[1:])
    finally:
        plt.close(fig)
    return paths


class Drawn:
    """A finished figure, the notes its caption must carry (what was chosen), what it left out
    (for the report's "Left out" list) and the words its caption template needs (`fields`)."""

    def __init__(self, fig: plt.Figure, notes: list[str] | None = None, left_out: list[str] | None = None,
                 fields: dict[str, str] | None = None) -> None:
        self.fig = fig
        self.notes = list(notes or [])
        self.left_out = list(left_out or [])
        self.fields = dict(fields or {})
