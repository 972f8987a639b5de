"""Result rows of serving runs, and the Markdown comparison of policies against vLLM."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .engine import ServingRun
from .specs import ServingPoint

POINT_COLUMNS = ["scenario", "model", "layers", "hardware", "link", "policy", "policy_label", "rate_rps",
                 "requests_planned",
                 "kv_pool_bytes", "kv_pool_tokens", "layer_h2d_s"]
GROUP_COLUMNS = ["scenario", "model", "hardware", "rate_rps"]


def point_columns(point: ServingPoint) -> dict[str, Any]:
    from .timing import IterationCost

    pool = point.kv_pool
    wl = point.workload
    return {
        "scenario": point.scenario,
        "model": point.model.name,
        "layers": point.model.layers,
        "hardware": point.hardware.name,
        "link": point.hardware.link.name,
        "policy": point.policy.kind.value,
        "policy_label": point.policy.label,
        "rate_rps": wl.rate_rps if wl.rate_rps is not None else math.nan,
        "requests_planned": wl.requests if wl.requests is not None else -1,
        "kv_pool_bytes": pool.base_kv_bytes,
        "kv_pool_tokens": pool.capacity_blocks(0) * pool.block_tokens,
        "layer_h2d_s": IterationCost(point.model, point.hardware).layer_h2d_s,
    }


def result_row(run: ServingRun) -> dict[str, Any]:
    return {**point_columns(run.point), **run.metrics}


def _pct(new: float, base: float) -> str:
    if not base or math.isnan(base) or math.isnan(new):
        return "-"
    return f"{(new / base - 1) * 100:+.0f}%"


def markdown_table(df: pd.DataFrame) -> str:
    """One row per (scenario, rate, policy); Oneiros rows compare against vllm-swap and vllm-recompute."""
    cols = ["model", "box", "rate (req/s)", "policy", "TTFT p50 (s)", "TTFT p99 (s)", "TBT p50 (ms)", "TBT p99 (ms)",
            "tok/s", "layers remapped (mean / max)", "preempt.", "H2D GB (KV / weights)", "D2H GB",
            "vs vllm-swap: TTFT p99 / TBT p99 / tok/s", "vs vllm-recompute: TTFT p99 / TBT p99 / tok/s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, grp in df.groupby(GROUP_COLUMNS, sort=False):
        base = {p: grp[grp["policy_label"] == p].iloc[0] for p in ("vllm-swap", "vllm-recompute")
                if (grp["policy_label"] == p).any()}
        for _, r in grp.iterrows():
            versus = []
            for p in ("vllm-swap", "vllm-recompute"):
                b = base.get(p)
                if b is None or r["policy"] != "oneiros":
                    versus.append("")
                else:
                    versus.append(" / ".join(_pct(r[k], b[k]) for k in ("ttft_p99_s", "tbt_p99_s", "throughput_tok_s")))
            lines.append("| " + " | ".join([
                r["model"], f"{r['hardware']} ({r['link']})", f"{r['rate_rps']:g}", r["policy_label"],
                f"{r['ttft_p50_s']:.3f}", f"{r['ttft_p99_s']:.3f}", f"{r['tbt_p50_s'] * 1e3:.1f}",
                f"{r['tbt_p99_s'] * 1e3:.1f}", f"{r['throughput_tok_s']:.0f}",
                f"{r['remapped_layers_mean']:.1f} / {r['remapped_layers_max']}", str(r["preemptions"]),
                f"{r['h2d_kv_bytes'] / 1e9:.1f} / {r['h2d_weight_bytes'] / 1e9:.0f}", f"{r['d2h_bytes'] / 1e9:.1f}",
                *versus,
            ]) + " |")
    return "\n".join(lines)


def _range(values: list[float]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo:+.0f}%" if round(lo) == round(hi) else f"{lo:+.0f}% ... {hi:+.0f}%"


def summary_table(df: pd.DataFrame) -> str:
    """Per model and box: Oneiros (and its unbounded variant) against vllm-swap, over the rates where
    vllm-swap preempted (KV pressure)."""
    cols = ["model", "box", "rates with KV pressure", "policy", "TTFT p99", "TBT p99", "throughput",
            "layers remapped (mean, range over rates)", "GPU waited for weights (s, all rates)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for (model, hw), grp in df.groupby(["model", "hardware"], sort=False):
        swap = grp[grp["policy_label"] == "vllm-swap"].set_index("rate_rps")
        pressured = sorted(swap.index[swap["preemptions"] > 0])
        for label in [lbl for lbl in grp["policy_label"].unique() if lbl.startswith("oneiros")]:
            every = grp[grp["policy_label"] == label]
            rows = every[every["rate_rps"].isin(pressured)].set_index("rate_rps")
            delta = {k: [(rows.at[r, k] / swap.at[r, k] - 1) * 100 for r in rows.index]
                     for k in ("ttft_p99_s", "tbt_p99_s", "throughput_tok_s")}
            layers = rows["remapped_layers_mean"]
            lines.append("| " + " | ".join([
                model, f"{hw} ({grp['link'].iloc[0]})", ", ".join(f"{r:g}" for r in pressured) or "none", label,
                _range(delta["ttft_p99_s"]), _range(delta["tbt_p99_s"]), _range(delta["throughput_tok_s"]),
                f"{layers.min():.1f} ... {layers.max():.1f}" if len(layers) else "-",
                f"{every['weight_stall_s'].sum():.3g}",
            ]) + " |")
    return "\n".join(lines)


def _never_remapped(df: pd.DataFrame) -> list[str]:
    """Sentences for the boxes where the bound let bounded Oneiros remap nothing at any rate."""
    out = []
    for (model, hw), grp in df.groupby(["model", "hardware"], sort=False):
        bounded = grp[grp["policy_label"] == "oneiros"]
        if bounded.empty or bounded["remapped_layers_max"].max() > 0:
            continue
        out.append(f"{model} on {hw} (one layer loads in {grp['layer_h2d_s'].iloc[0] * 1e3:.1f} ms)")
    if not out:
        return []
    return [f"Where the link is slow the bound allows N = 0 at every rate, so bounded `oneiros` never remaps and "
            f"behaves exactly like `vllm-swap` (its fallback): {'; '.join(out)}. The case where parameter "
            "remapping loses there is `oneiros unbounded`, which remaps as KV demand asks and makes the GPU wait "
            "for weights.", ""]


def markdown_report(df: pd.DataFrame, command: str, figure: str | None = None) -> str:
    fig = ([f"![Layers remapped over time]({figure})", "",
            "Layers remapped over time (from the `--figures` output): one box per panel at one arrival rate with "
            "KV pressure; thin dotted line: the bound, the most layers the double-buffered ring hides at that "
            "moment's decode compute.", ""] if figure else [])
    return "\n".join([
        "# Serving: vLLM KV swapping / recomputation vs Oneiros parameter remapping (simulated)",
        "",
        f"Made by: `{command}`",
        "",
        "Changes against `vllm-swap` at the arrival rates where `vllm-swap` had to preempt (negative latency "
        "and positive throughput changes favour Oneiros). `oneiros` keeps its bound (every remapped layer's load "
        "hides behind the compute of the layers before it in the double-buffered ring, which implies N x "
        "per-layer H2D time <= decode compute time); `oneiros unbounded` remaps as many layers as KV demand asks. "
        "Last column: total time the GPU sat waiting for a remapped layer's weights.",
        "",
        summary_table(df),
        "",
        *_never_remapped(df),
        *fig,
        "All points (TTFT: time to first token; TBT: time between tokens; H2D weights: remapped layers streamed):",
        "",
        markdown_table(df),
        "",
    ])
