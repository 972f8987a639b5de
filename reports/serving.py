"""Figures of the serving results: layers Oneiros keeps remapped over time, one panel per box;
and, for several models on one GPU, each tenant's queue and the idle tenants' weights it reclaimed.

For the first model of the results, each box (hardware) gets one panel at one arrival rate:
the median of the rates where `vllm-swap` had to preempt (KV pressure), or the highest rate
if it never did. A panel draws each Oneiros variant's remapped layers, averaged over one-
second bins with the range of the bin shaded, and the bounded variant's bound (the most
layers the link could hide at that moment) as a thin line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

#: Oneiros variant -> (legend name, colour-blind palette index, line style)
_VARIANTS = {
    "oneiros": ("Oneiros (bounded)", 2, "-"),
    "oneiros unbounded": ("Oneiros, unbounded", 3, "--"),
}


def pick_points(results: pd.DataFrame) -> list[tuple[str, str, float]]:
    """(model, hardware, rate) of each panel.

    The model where bounded Oneiros remaps the most (highest mean layers at any point), every
    box it ran on, and one common rate: the median of the rates at which `vllm-swap` had to
    preempt on every box (on any box if they share none; the highest rate if it never did).
    """
    bounded = results[results["policy_label"] == "oneiros"]
    source = bounded if not bounded.empty else results
    model = source.loc[source["remapped_layers_mean"].idxmax(), "model"]
    mine = results[results["model"] == model]
    swap = mine[(mine["policy_label"] == "vllm-swap") & (mine["preemptions"] > 0)]
    per_box = [set(g["rate_rps"]) for _, g in swap.groupby("hardware")]
    rates = sorted(set.intersection(*per_box) if per_box else set()) or sorted(swap["rate_rps"].unique()) \
        or sorted(mine["rate_rps"].unique())[-1:]
    rate = rates[(len(rates) - 1) // 2]
    return [(model, hw, rate) for hw in mine["hardware"].unique()]


def _binned(it: pd.DataFrame, column: str, bin_s: float) -> pd.DataFrame:
    """Time-weighted mean, min and max of `column` per bin of iteration start times."""
    dur = (it["end_s"] - it["start_s"]).clip(lower=1e-12)
    b = (it["start_s"] // bin_s).astype(int)
    frame = pd.DataFrame({"bin": b, "w": dur, "wv": it[column] * dur, "v": it[column]})
    g = frame.groupby("bin")
    out = pd.DataFrame({"mean": g["wv"].sum() / g["w"].sum(), "lo": g["v"].min(), "hi": g["v"].max()})
    out["t"] = (out.index + 0.5) * bin_s
    return out


def remapping_figure(results: pd.DataFrame, iterations: pd.DataFrame, out_dir: Path,
                     name: str = "remapping_over_time", bin_s: float = 1.0) -> Path:
    """Write NAME.png to `out_dir` and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    palette = sns.color_palette("colorblind", 10)
    picks = pick_points(results)
    sns.set_theme(style="whitegrid", context="paper", font_scale=0.9)
    fig, axes = plt.subplots(len(picks), 1, figsize=(7.2, 2.0 * len(picks) + 0.5), squeeze=False)
    for ax, (model, hw, rate) in zip(axes[:, 0], picks, strict=True):
        sel = iterations[(iterations["model"] == model) & (iterations["hardware"] == hw)
                         & np.isclose(iterations["rate_rps"], rate)]
        row = results[(results["model"] == model) & (results["hardware"] == hw)
                      & np.isclose(results["rate_rps"], rate)].iloc[0]
        top = 1
        for label, (legend, colour, style) in _VARIANTS.items():
            it = sel[sel["policy_label"] == label]
            if it.empty:
                continue
            b = _binned(it, "remapped_layers", bin_s)
            ax.fill_between(b["t"], b["lo"], b["hi"], step="mid", color=palette[colour], alpha=0.18, lw=0)
            ax.plot(b["t"], b["mean"], drawstyle="steps-mid", color=palette[colour], ls=style, lw=1.2,
                    label=legend)
            top = max(top, int(b["hi"].max()))
            if label == "oneiros":
                bound = _binned(it, "bound_layers", bin_s)
                ax.plot(bound["t"], bound["mean"], drawstyle="steps-mid", color="0.35", lw=0.7, ls=":",
                        label="bound: layers the link hides")
                top = max(top, int(bound["mean"].max()))
        ax.set_ylim(-0.04 * top - 0.3, top * 1.08 + 0.5)
        ax.set_xlim(left=0)
        ax.set_ylabel("layers remapped")
        h2d_ms = row["layer_h2d_s"] * 1e3
        bound_max = int(sel.loc[sel["policy_label"] == "oneiros", "bound_layers"].max()) \
            if (sel["policy_label"] == "oneiros").any() else 0
        ax.set_title(f"{model} on {hw} ({row['link']}), {rate:g} req/s: a layer loads in {h2d_ms:.2f} ms, "
                     f"bound <= {bound_max} of {row['layers']}", fontsize=8.5, loc="left")
    axes[-1, 0].set_xlabel(f"time (s); lines: mean per {bin_s:g} s bin, shaded: min to max in the bin")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    for ax in axes[1:, 0]:
        for h, lbl in zip(*ax.get_legend_handles_labels(), strict=True):
            if lbl not in labels:
                handles.append(h)
                labels.append(lbl)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncols=len(labels), fontsize=8, frameon=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{name}.png"
    fig.savefig(png, dpi=150)
    plt.close(fig)
    return png


def tenants_figure(results: pd.DataFrame, iterations: pd.DataFrame, out_dir: Path,
                   name: str = "tenants_over_time", bin_s: float = 1.0) -> Path:
    """Multi-tenant points under Oneiros, one row of panels per box at its highest total rate: requests
    queued or running per tenant (left), and GB of idle tenants' weights held in each tenant's KV pool
    (right). Write NAME.png to `out_dir` and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    palette = sns.color_palette("colorblind", 10)
    totals = results[results["tenant"] == "all"]
    picks = [(scenario, hw, grp["rate_rps"].max())
             for (scenario, hw), grp in totals.groupby(["scenario", "hardware"], sort=False)]
    sns.set_theme(style="whitegrid", context="paper", font_scale=0.9)
    fig, axes = plt.subplots(len(picks), 2, figsize=(9.0, 2.2 * len(picks) + 0.6), squeeze=False)
    for (left, right), (scenario, hw, rate) in zip(axes, picks, strict=True):
        sel = iterations[(iterations["scenario"] == scenario) & (iterations["hardware"] == hw)
                         & np.isclose(iterations["rate_rps"], rate) & (iterations["policy_label"] == "oneiros")]
        end_s = float(sel["end_s"].max()) if len(sel) else 1.0
        grid = np.arange(0.0, end_s + bin_s, bin_s)
        for k, tenant in enumerate(sel["tenant"].unique()):
            it = sel[sel["tenant"] == tenant].assign(queued=lambda d: d["running"] + d["swapped"] + d["waiting"],
                                                     borrowed_gb=lambda d: d["borrowed_bytes"] / 1e9)
            bins = (it["start_s"] // bin_s).astype(int)
            for ax, column, agg in ((left, "queued", "mean"), (right, "borrowed_gb", "max")):
                per_bin = it.groupby(bins)[column].agg(agg).reindex(range(len(grid)), fill_value=0)
                ax.plot(grid + bin_s / 2, per_bin.to_numpy(), drawstyle="steps-mid", lw=1.1,
                        color=palette[k % 10], label=tenant)
        left.set_ylabel("requests queued or running")
        right.set_ylabel("reclaimed GB in its pool")
        left.set_title(f"{scenario} on {hw}, {rate:g} req/s in all (oneiros)", fontsize=8.5, loc="left")
        for ax in (left, right):
            ax.set_xlim(left=0)
            ax.set_ylim(bottom=0)
    for ax in axes[-1]:
        ax.set_xlabel(f"time (s), per {bin_s:g} s bin")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncols=max(len(labels), 1), fontsize=8, frameon=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{name}.png"
    fig.savefig(png, dpi=150)
    plt.close(fig)
    return png
