"""Result rows of serving runs, and the Markdown comparison of policies against vLLM."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .engine import ServingRun
from .specs import ServingPoint

POINT_COLUMNS = ["scenario", "tenant", "tenants", "model", "layers", "hardware", "link", "policy", "policy_label",
                 "rate_rps", "requests_planned", "kv_pool_bytes", "kv_pool_tokens", "layer_h2d_s", "link_h2d_Bps",
                 "link_d2h_Bps"]
#: Oneiros' claims against vLLM on the GH200 (abstract, arXiv 2507.11507): metric -> (low, high) change in %
PAPER_CLAIMS = {"tbt_p99_s": (-82.5, -44.8), "ttft_p99_s": (-99.3, -20.7), "throughput_tok_s": (6.6, 86.7)}
GROUP_COLUMNS = ["scenario", "tenant", "model", "hardware", "rate_rps"]
#: the `tenant` of the row that sums a multi-tenant point over its tenants
ALL_TENANTS = "all"


def tenant_columns(point: ServingPoint, i: int) -> dict[str, Any]:
    from .timing import IterationCost

    pool = point.tenant_pool(i)
    tenant = point.tenants[i]
    wl = tenant.workload
    return {
        "scenario": point.scenario,
        "tenant": tenant.name,
        "tenants": len(point.tenants),
        "model": tenant.model.name,
        "layers": tenant.model.layers,
        "hardware": point.hardware.name,
        "link": point.hardware.link.name,
        "policy": point.policy.kind.value,
        "policy_label": point.policy.label,
        "rate_rps": wl.rate_rps if wl.rate_rps is not None else math.nan,
        "requests_planned": wl.requests if wl.requests is not None else -1,
        "kv_pool_bytes": pool.base_kv_bytes,
        "kv_pool_tokens": pool.capacity_blocks(0) * pool.block_tokens,
        "layer_h2d_s": IterationCost(tenant.model, point.hardware).layer_h2d_s,
        "link_h2d_Bps": point.hardware.link.h2d_pinned_Bps,
        "link_d2h_Bps": point.hardware.link.d2h_pinned_Bps,
    }


def point_columns(point: ServingPoint) -> dict[str, Any]:
    """The point's columns: its one tenant's, or for several tenants their sums under tenant `all`."""
    rows = [tenant_columns(point, i) for i in range(len(point.tenants))]
    if len(rows) == 1:
        return rows[0]
    models = list(dict.fromkeys(r["model"] for r in rows))
    return {**rows[0], "tenant": ALL_TENANTS, "model": "+".join(models),
            "layers": max(r["layers"] for r in rows),
            "rate_rps": sum(r["rate_rps"] for r in rows),
            "requests_planned": -1 if any(r["requests_planned"] < 0 for r in rows) else
            sum(r["requests_planned"] for r in rows),
            "kv_pool_bytes": sum(r["kv_pool_bytes"] for r in rows),
            "kv_pool_tokens": sum(r["kv_pool_tokens"] for r in rows),
            "layer_h2d_s": max(r["layer_h2d_s"] for r in rows)}


def result_rows(run: ServingRun) -> list[dict[str, Any]]:
    """One row per point; a multi-tenant point adds one row per tenant after its `all` row."""
    rows = [{**point_columns(run.point), **run.metrics}]
    if run.point.multi_tenant:
        rows += [{**tenant_columns(run.point, i), **run.tenant_metrics[t.name]}
                 for i, t in enumerate(run.point.tenants)]
    return rows


def result_row(run: ServingRun) -> dict[str, Any]:
    """The point's row (all tenants together)."""
    return result_rows(run)[0]


def _pct(new: float, base: float) -> str:
    if not base or math.isnan(base) or math.isnan(new):
        return "-"
    return f"{(new / base - 1) * 100:+.0f}%"


def markdown_table(df: pd.DataFrame) -> str:
    """One row per (scenario, rate, policy); Oneiros rows compare against vllm-swap and vllm-recompute."""
    cols = ["model", "tenant", "box", "rate (req/s)", "policy", "TTFT p50 (s)", "TTFT p99 (s)", "TBT p50 (ms)",
            "TBT p99 (ms)", "tok/s", "layers remapped (mean / max)", "preempt.", "H2D GB (KV / weights / reloads)",
            "D2H GB", "swap copies / wait (s)", "reloads / wait (s)",
            "vs vllm-swap: TTFT p99 / TBT p99 / tok/s", "vs vllm-recompute: TTFT p99 / TBT p99 / tok/s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, grp in df.groupby(GROUP_COLUMNS, sort=False, dropna=False):
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
                r["model"], r["tenant"] if r["tenants"] > 1 else "", f"{r['hardware']} ({r['link']})",
                f"{r['rate_rps']:g}", r["policy_label"],
                f"{r['ttft_p50_s']:.3f}", f"{r['ttft_p99_s']:.3f}", f"{r['tbt_p50_s'] * 1e3:.1f}",
                f"{r['tbt_p99_s'] * 1e3:.1f}", f"{r['throughput_tok_s']:.0f}",
                f"{r['remapped_layers_mean']:.1f} / {r['remapped_layers_max']}", str(r["preemptions"]),
                f"{r['h2d_kv_bytes'] / 1e9:.1f} / {r['h2d_weight_bytes'] / 1e9:.0f} / "
                f"{r['h2d_reload_bytes'] / 1e9:.1f}", f"{r['d2h_bytes'] / 1e9:.1f}",
                f"{r['kv_copies']} / {r['swap_wait_s']:.3f}", f"{r['weight_reloads']} / {r['reload_wait_s']:.3f}",
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
    cols = ["model", "tenant", "box", "rates with KV pressure", "policy", "TTFT p99", "TBT p99", "throughput",
            "layers remapped (mean, range over rates)", "GPU waited for weights (s, all rates)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for (_, tenant, model, hw), grp in df.groupby(["scenario", "tenant", "model", "hardware"], sort=False):
        swap = grp[grp["policy_label"] == "vllm-swap"].set_index("rate_rps")
        pressured = sorted(swap.index[swap["preemptions"] > 0])
        for label in [lbl for lbl in grp["policy_label"].unique() if lbl.startswith("oneiros")]:
            every = grp[grp["policy_label"] == label]
            rows = every[every["rate_rps"].isin(pressured)].set_index("rate_rps")
            delta = {k: [(rows.at[r, k] / swap.at[r, k] - 1) * 100 for r in rows.index]
                     for k in ("ttft_p99_s", "tbt_p99_s", "throughput_tok_s")}
            layers = rows["remapped_layers_mean"]
            lines.append("| " + " | ".join([
                model, tenant if grp["tenants"].iloc[0] > 1 else "", f"{hw} ({grp['link'].iloc[0]})",
                ", ".join(f"{r:g}" for r in pressured) or "none", label,
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
        if grp["tenants"].iloc[0] > 1:
            continue
        out.append(f"{model} on {hw} (one layer loads in {grp['layer_h2d_s'].iloc[0] * 1e3:.1f} ms)")
    if not out:
        return []
    return [f"Where the link is slow the bound allows N = 0 at every rate, so bounded `oneiros` never remaps and "
            f"behaves exactly like `vllm-swap` (its fallback): {'; '.join(out)}. The case where parameter "
            "remapping loses there is `oneiros unbounded`, which remaps as KV demand asks and makes the GPU wait "
            "for weights.", ""]


def swap_table(df: pd.DataFrame) -> str:
    """vllm-swap's wait per swapped GB against the link's bulk rate, per box and model."""
    cols = ["model", "box", "swapped GB (both ways)", "cudaMemcpyAsync calls", "bytes per call",
            "iteration waited per swapped GB (ms)", "bulk copy at the link's rate (ms per GB)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    swap = df[(df["policy_label"] == "vllm-swap") & (df["kv_copies"] > 0)
              & df["tenant"].eq(df["tenant"].where(df["tenants"] == 1, ALL_TENANTS))]
    for (_, model, hw), grp in swap.groupby(["scenario", "model", "hardware"], sort=False):
        gb = (grp["h2d_kv_bytes"] + grp["d2h_bytes"]).sum() / 1e9
        copies = int(grp["kv_copies"].sum())
        r = grp.iloc[0]
        bulk_ms = 0.5 * (1e9 / r["link_h2d_Bps"] + 1e9 / r["link_d2h_Bps"]) * 1e3
        lines.append("| " + " | ".join([
            model, f"{hw} ({r['link']})", f"{gb:.2f}", str(copies), f"{gb * 1e9 / copies:.0f}",
            f"{grp['swap_wait_s'].sum() / gb * 1e3:.1f}", f"{bulk_ms:.1f}"]) + " |")
    return "\n".join(lines)


def claims_table(df: pd.DataFrame) -> str:
    """Bounded Oneiros against vllm-swap on the GH200 at the rates where vllm-swap preempted, beside the
    paper's ranges; one row per scenario (multi-tenant: all tenants together)."""
    cols = ["scenario", "metric", "paper (GH200, vs vLLM)", "hssim (vs vllm-swap)", "overlap"]
    names = {"tbt_p99_s": "TBT p99", "ttft_p99_s": "TTFT p99", "throughput_tok_s": "throughput"}
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    gh = df[df["hardware"].str.startswith("gh200") & df["tenant"].eq(df["tenant"].where(df["tenants"] == 1,
                                                                                          ALL_TENANTS))]
    for scenario, grp in gh.groupby("scenario", sort=False):
        swap = grp[grp["policy_label"] == "vllm-swap"].set_index("rate_rps")
        pressured = swap.index[swap["preemptions"] > 0]
        one = grp[(grp["policy_label"] == "oneiros") & grp["rate_rps"].isin(pressured)].set_index("rate_rps")
        for key, (lo, hi) in PAPER_CLAIMS.items():
            delta = [(one.at[r, key] / swap.at[r, key] - 1) * 100 for r in one.index]
            meets = bool(delta) and max(delta) >= lo and min(delta) <= hi
            overlap = ("yes" if meets else "no") if delta else "no KV pressure"
            lines.append("| " + " | ".join([scenario, names[key], f"{lo:+.1f}% ... {hi:+.1f}%", _range(delta),
                                             overlap]) + " |")
    return "\n".join(lines)


def tenants_table(df: pd.DataFrame) -> str:
    """Multi-tenant points: each tenant and all together, per box, rate and policy."""
    cols = ["scenario", "box", "rate (req/s)", "policy", "tenant", "TTFT p99 (s)", "TBT p99 (ms)", "tok/s",
            "preempt.", "weight reloads / wait (s)", "most reclaimed GB in its pool", "swap wait (s)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    multi = df[df["tenants"] > 1]
    for (scenario, hw, policy), grp in multi.groupby(["scenario", "hardware", "policy_label"], sort=False):
        for _, r in grp.iterrows():
            lines.append("| " + " | ".join([
                scenario, f"{hw} ({r['link']})", f"{r['rate_rps']:g}", policy, r["tenant"],
                f"{r['ttft_p99_s']:.3f}", f"{r['tbt_p99_s'] * 1e3:.1f}", f"{r['throughput_tok_s']:.0f}",
                str(r["preemptions"]), f"{r['weight_reloads']} / {r['reload_wait_s']:.3f}",
                f"{r['borrowed_bytes_max'] / 1e9:.1f}", f"{r['swap_wait_s']:.3f}"]) + " |")
    return "\n".join(lines)


def markdown_report(df: pd.DataFrame, command: str, figure: str | None = None,
                    tenant_figure: str | None = None) -> str:
    fig = ([f"![Layers remapped over time]({figure})", "",
            "Layers remapped over time (from the `--figures` output): one box per panel at one arrival rate with "
            "KV pressure; thin dotted line: the bound, the most layers the double-buffered ring hides at that "
            "moment's decode compute.", ""] if figure else [])
    multi = (df["tenants"] > 1).any()
    tenants = ([
        "## Several models on one GPU", "",
        "Tenants take turns on the GPU one iteration at a time; each has its own KV pool. `oneiros` first "
        "reclaims the weights of idle tenants (their pages join its pool; the owner's next request waits until "
        "they are loaded back: `weight reloads / wait`), then remaps its own layers under its bound; `vllm-swap` "
        "and `vllm-recompute` keep the static partition and preempt. Rows `all`: every tenant's requests together.",
        "", tenants_table(df), "",
        *([f"![Tenants over time]({tenant_figure})", "",
           "Per box at the highest rate: requests queued or running per tenant (top), and the GB of idle tenants' "
           "weights `oneiros` holds in each tenant's KV pool (bottom).", ""] if tenant_figure else []),
    ] if multi else [])
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
        "## Against the paper's claims", "",
        "Bounded `oneiros` against `vllm-swap` on the GH200, at the rates where `vllm-swap` had to preempt; "
        "`overlap`: whether hssim's range meets the paper's.", "",
        claims_table(df), "",
        "## vLLM's swaps, block by block", "",
        "`vllm-swap` issues one cudaMemcpyAsync per KV block, per layer, for K and for V (vLLM v0.6.3.post1, "
        "`CacheEngine.swap_in/swap_out` -> `csrc/cache_kernels.cu::swap_blocks`) on the compute stream before "
        "the forward pass; each costs the host `engine.memcpy_issue_s`. The wait per swapped GB is set by those "
        "calls, not by the link's rate, wherever one call's bytes cross the link faster than the host issues the "
        "next. (Which vLLM release the Oneiros paper ran is not stated in the material at hand; swapping exists "
        "only in vLLM's V0 engine, where the code path is the same from v0.6.3.post1 to v0.8.5, and is used only "
        "with `--preemption-mode swap`: by default V0 recomputes single-sequence requests.)", "",
        swap_table(df), "",
        *tenants,
        "All points (TTFT: time to first token; TBT: time between tokens; H2D weights: remapped layers streamed):",
        "",
        markdown_table(df),
        "",
    ])
