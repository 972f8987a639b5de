"""KVPR (I/O-aware partial KV recomputation): per layer, the activations of the first
`l` tokens cross the link first and their K,V are rebuilt on the GPU while the K,V of
the remaining tokens stream.

The host keeps both the K,V and the input activation of every token (so any split
is possible at any step): each token is stored twice, as `store_kv` and `store_act`.
`l` is fixed (`split_tokens`), KVPR's closed form chosen once per run
(`split_rule: closed-form`), or chosen per decode step by the cost model
(`split_rule: per-step`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .. import costs
from ..schedule import OpKind, Stream
from ..specs import HardwareSpec, ModelSpec, PointSpec, SplitRule
from .schemes import CacheScheme


def kvpr_objective_s(l_tokens: int, seq_tokens: int, batch: int, hidden: int, dtype_bytes: int,
                     link_Bps: float, gpu_flops: float, kv_hidden: int | None = None) -> float:
    """KVPR's per-layer time: b·l·h·p/v_link + max(4·b·l·h²/v_gpu, 2·b·(s−l)·h·p/v_link).

    With grouped-query attention (`kv_hidden` = KV heads x head size < `hidden`) the K,V of a
    token are 2·h_kv values and rebuilding them costs 4·h·h_kv FLOP; KVPR's paper has h_kv = h.
    """
    b, h, p = batch, hidden, dtype_bytes
    hk = hidden if kv_hidden is None else kv_hidden
    act_s = b * l_tokens * h * p / link_Bps
    recompute_s = 4 * b * l_tokens * h * hk / gpu_flops
    kv_s = 2 * b * (seq_tokens - l_tokens) * hk * p / link_Bps
    return act_s + max(recompute_s, kv_s)


def kvpr_closed_form_split(seq_tokens: int, hidden: int, dtype_bytes: int, link_Bps: float,
                           gpu_flops: float, kv_hidden: int | None = None) -> int:
    """KVPR's split point: the l in [0, s] that minimises `kvpr_objective_s`.

    The objective is piecewise linear in l with one break, where rebuilding l tokens takes as
    long as sending the other s−l as K,V; its minimum is at that crossing (rounded either way)
    or at an end: l = 0 when an activation costs more link time than the K,V it replaces
    (grouped-query attention), l = s when even rebuilding all is cheaper than any K,V.
    """
    hk = hidden if kv_hidden is None else kv_hidden
    per_kv = 2 * hk * dtype_bytes / link_Bps
    per_rec = 4 * hidden * hk / gpu_flops
    cross = seq_tokens * per_kv / (per_rec + per_kv)
    lo = max(0, min(seq_tokens, math.floor(cross)))
    hi = max(0, min(seq_tokens, math.ceil(cross)))

    def f(l_tokens: int) -> float:
        return kvpr_objective_s(l_tokens, seq_tokens, 1, hidden, dtype_bytes, link_Bps, gpu_flops, hk)

    return min(dict.fromkeys((0, lo, hi, seq_tokens)), key=lambda n: (f(n), n))


def closed_form_split_for(m: ModelSpec, hw: HardwareSpec, seq_tokens: int) -> int:
    """KVPR's closed form with the box's fixed figures: pinned H2D rate, achieved GEMM rate."""
    return kvpr_closed_form_split(seq_tokens, m.hidden, m.dtype_bytes, hw.link.h2d_pinned_Bps,
                                  hw.gpu.peak_flops * hw.gpu.matmul_efficiency, m.kv_hidden)


def cost_model_layer_s(m: ModelSpec, hw: HardwareSpec, gbs: int, past: int, l_tokens: int) -> float:
    """One layer's KVPR critical path by the one cost model: activations in, then the
    longer of rebuilding their K,V and streaming the rest as K,V (HBM floor, launches
    and link latency included)."""
    act_s = costs.link_time_s(hw.link, gbs * l_tokens * m.act_bytes_per_token, Stream.h2d) if l_tokens else 0.0
    kv_s = (costs.link_time_s(hw.link, gbs * (past - l_tokens) * m.kv_bytes_per_token, Stream.h2d)
            if past > l_tokens else 0.0)
    rec_s = 0.0
    if l_tokens:
        w = costs.recompute_kv_work(m, gbs * l_tokens)
        rec_s = costs.gpu_time_s(hw.gpu, w.flops, w.hbm_bytes, w.kernels)
    return act_s + max(rec_s, kv_s)


def per_step_split(m: ModelSpec, hw: HardwareSpec, gbs: int, past: int) -> int:
    """The l in [0, past] with the shortest `cost_model_layer_s` (coarse scan, then refine)."""
    step = max(1, past // 64)
    best = min(range(0, past + 1, step), key=lambda n: (cost_model_layer_s(m, hw, gbs, past, n), n))
    lo, hi = max(0, best - step), min(past, best + step)
    return min(range(lo, hi + 1), key=lambda n: (cost_model_layer_s(m, hw, gbs, past, n), n))


@dataclass(frozen=True)
class KVPR(CacheScheme):
    """`split(past)` tokens as activations (a prefix), the rest as K,V; every token stored as both."""

    splits: dict[int, int] = field(default_factory=dict)
    fixed: int | None = None

    def split(self, past: int) -> int:
        if self.fixed is not None:
            return min(self.fixed, past)
        return self.splits.get(past, 0)

    def loads(self, past: int) -> dict[OpKind, int]:
        a = self.split(past)
        return {OpKind.load_act: a, OpKind.load_kv: past - a}

    def recompute(self, past: int) -> tuple[OpKind, int] | None:
        a = self.split(past)
        return (OpKind.recompute_kv, a) if a else None

    def prefill_stores(self, prompt: int) -> dict[OpKind, int]:
        return {OpKind.store_act: prompt, OpKind.store_kv: prompt}

    def new_token_stores(self, past: int) -> dict[OpKind, int]:
        return {OpKind.store_act: 1, OpKind.store_kv: 1}


def kvpr_scheme(point: PointSpec) -> KVPR:
    pol, wl, m, hw = point.policy, point.workload, point.model, point.hardware
    if pol.split_tokens is not None:
        return KVPR(fixed=pol.split_tokens)
    pasts = range(wl.prompt_len, wl.prompt_len + wl.gen_len)
    if pol.split_rule is SplitRule.closed_form:
        return KVPR(fixed=closed_form_split_for(m, hw, wl.prompt_len))
    return KVPR(splits={p: per_step_split(m, hw, point.gpu_batch_size, p) for p in pasts})
