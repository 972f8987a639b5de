"""KVPR (I/O-aware partial KV recomputation): per layer, the activations of the first
`l` tokens cross the link and their K,V are rebuilt on the GPU; the K,V of the
remaining tokens cross as K,V.

What the host keeps follows KVPR's released code (github.com/chaoyij/KVPR, read at the
fork AndreaLeang/KVPR, commit 1712a52, the authors' first commit). Its patched HF cache
(`transformers/src/transformers/cache_utils.py`, `OffloadedStaticCache.__init__` and
`update`) holds the prompt's first `l` tokens *only* as activations
(`activations[layer].copy_(hidden_states[:, :recompute_len])` at prefill) and every later
token *only* as K,V (a host K,V of `max_cache_len - recompute_len` positions; each decode
token is written there by `index_copy_`). `l` is chosen once per run
(`run_hf_ds.py`, `run_generation`; `flexgen/flex_opt.py`, `run_flexgen`:
`utils.get_optimal_split_point`), so one form per token suffices. (The FlexGen-fork path,
`flexgen/flex_opt.py` `SelfAttention.store_cache`, also writes the K,V of `[0, l)` into a
full-length home that it never reads, and never fills its activation block,
`init_hidden_compute_one_gpu_batch`: its outputs are not a model's; hssim keeps the HF
path's forms, which the FlexGen path's loads read the same way: `load_hidden_compute`
the whole `[0, l)` block, `load_cache` path 0 `slice(recompute_len, prompt_len + i)`.)

`l` is fixed (`split_tokens`), KVPR's closed form chosen once per run
(`split_rule: closed-form`), or chosen per decode step by the cost model
(`split_rule: per-step`, hssim's extension: KVPR's code has no such rule). A token is
stored in each form some later step reads it in: with one `l` for the run (KVPR's
rules) that is one form per token, activations below `l` and K,V from `l` on; a
per-step `l` keeps both forms for the tokens between its smallest and largest split.
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
    """`split(past)` tokens as activations (a prefix), the rest as K,V; each token stored
    in the forms that a later step loads it in.

    Decode steps see `past` from `first_past` (the prompt) to `final_past` (prompt + gen
    − 2); a token no step reads (the last one) is stored as K,V, as every scheme stores it."""

    splits: dict[int, int] = field(default_factory=dict)
    fixed: int | None = None
    first_past: int = 0
    final_past: int = 0

    def split(self, past: int) -> int:
        if self.fixed is not None:
            return min(self.fixed, past)
        return self.splits.get(past, 0)

    def _split_range_after(self, position: int) -> tuple[int, int] | None:
        """(smallest, largest) split of the decode steps that read `position` (those with
        past > position); None if none does."""
        first = max(position + 1, self.first_past)
        if first > self.final_past:
            return None
        if self.fixed is not None:  # split(past) = min(l, past) is non-decreasing in past
            return self.split(first), self.split(self.final_past)
        got = [self.split(p) for p in range(first, self.final_past + 1)]
        return min(got), max(got)

    def _forms(self, position: int) -> dict[OpKind, int]:
        """{store kind: 1} for each form in which the token at `position` is read later."""
        rng = self._split_range_after(position)
        if rng is None:
            return {OpKind.store_kv: 1}
        lo, hi = rng
        out = {}
        if position < hi:
            out[OpKind.store_act] = 1
        if position >= lo:
            out[OpKind.store_kv] = 1
        return out

    def loads(self, past: int) -> dict[OpKind, int]:
        a = self.split(past)
        return {OpKind.load_act: a, OpKind.load_kv: past - a}

    def recompute(self, past: int) -> tuple[OpKind, int] | None:
        a = self.split(past)
        return (OpKind.recompute_kv, a) if a else None

    def prefill_stores(self, prompt: int) -> dict[OpKind, int]:
        # every prompt position is read by the same steps (all of them), so the prompt's
        # activations are a prefix and its K,V a suffix (as hw's host layout expects)
        rng = self._split_range_after(prompt - 1) if prompt else None
        if rng is None:
            return {OpKind.store_kv: prompt}
        lo, hi = min(rng[0], prompt), min(rng[1], prompt)
        return {OpKind.store_act: hi, OpKind.store_kv: prompt - lo}

    def new_token_stores(self, past: int) -> dict[OpKind, int]:
        return self._forms(past)


def kvpr_scheme(point: PointSpec) -> KVPR:
    pol, wl, m, hw = point.policy, point.workload, point.model, point.hardware
    steps = dict(first_past=wl.prompt_len, final_past=wl.prompt_len + wl.gen_len - 2)
    if pol.split_tokens is not None:
        return KVPR(fixed=pol.split_tokens, **steps)
    if pol.split_rule is SplitRule.closed_form:
        return KVPR(fixed=closed_form_split_for(m, hw, wl.prompt_len), **steps)
    pasts = range(wl.prompt_len, wl.prompt_len + wl.gen_len)
    return KVPR(splits={p: per_step_split(m, hw, point.gpu_batch_size, p) for p in pasts}, **steps)
