"""HybridServe's KV:activation ratio r: by simulation, and the closed-form balance point.

The closed form (the thing compared, not used to decide): per layer at the mean past
length, link time falls as r falls (an activation is h values, a K,V pair 2·h_kv) and
GPU time rises (rebuilding K,V costs 4·h·h_kv FLOP per token); the balance is the r
where the two meet, clipped to [0, 1].
"""

from __future__ import annotations

from .. import costs
from ..specs import PointSpec
from .search import SearchResult, best_of, with_policy

RATIOS = tuple(i / 10 for i in range(11))


def search_ratio(point: PointSpec, ratios=RATIOS) -> SearchResult:
    return best_of((with_policy(point, kv_ratio=r) for r in ratios), "ratio search")


def closed_form_ratio(point: PointSpec) -> float:
    """r where per-layer GPU time equals per-layer link time (roofline FLOP and byte rates)."""
    m, hw, wl, pol = point.model, point.hardware, point.workload, point.policy
    gpu = hw.gpu.peak_flops * hw.gpu.matmul_efficiency
    link = hw.link.h2d_pinned_Bps
    b, s = wl.batch, wl.prompt_len + wl.gen_len / 2
    weights = m.weight_bytes_per_layer * (1 - pol.weights_gpu_percent / 100)
    # one new token per sequence through the layer's GEMMs; all past tokens' K,V rebuilt (the one cost model)
    layer_flops = sum(w(m, b, 1).flops for w in (costs.qkv_proj_work, costs.out_proj_work, costs.ffn_work))
    rebuild_flops = costs.recompute_kv_work(m, round(b * s)).flops
    kv, act = m.kv_bytes_per_token * b * s, m.act_bytes_per_token * b * s
    # link(r) = (weights + act + r·(kv − act)) / link ; gpu(r) = (layer + (1 − r)·rebuild) / gpu
    a_link, c_link = (kv - act) / link, (weights + act) / link
    a_gpu, c_gpu = -rebuild_flops / gpu, (layer_flops + rebuild_flops) / gpu
    if a_link == a_gpu:
        return 1.0
    r = (c_gpu - c_link) / (a_link - a_gpu)
    return min(1.0, max(0.0, r))
