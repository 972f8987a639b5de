"""A joint search none of the papers does: block shape x weight placement x KV ratio r,
compared with each paper's own rule on the same workload and box.

The space holds the idealised (barrier-free) `hybrid` policy at every (shape, weight
placement, r) and, at r = 1, FlexGen's other placements: the K,V partly or wholly on the
GPU, or attention on the CPU. So it contains an idealised twin of every configuration
FlexGen's search tries on the same weight grid, and the joint optimum is never below it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..memory import MemoryPlanError
from ..policies.placement import flexgen_gpu_weight_percent
from ..specs import PointSpec, PolicySpec
from .flexgen_search import CACHE_PERCENTS, WEIGHT_PERCENTS, search_flexgen
from .ratio import closed_form_ratio
from .search import SearchResult, best_of, block_shapes, evaluate

RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class JointReport:
    joint: SearchResult
    rules: dict[str, float | None]  # each paper's rule -> its throughput (None: does not fit)

    def gain_over(self, rule: str) -> float | None:
        base = self.rules.get(rule)
        return self.joint.best.throughput_tok_s / base if base else None


def _point(point: PointSpec, **policy) -> PointSpec:
    """`point` under another policy kind, keeping the scenario's pinning (`pinned`, `cache_pinned`)."""
    keep = {k: getattr(point.policy, k) for k in ("pinned", "cache_pinned")}
    return point.model_copy(update={"policy": PolicySpec(**{**keep, **policy})})


def search_joint(point: PointSpec, weight_percents=WEIGHT_PERCENTS, ratios=RATIOS,
                 max_num_gpu_batches: int = 16) -> JointReport:
    shapes = block_shapes(point.workload.batch, max_num_gpu_batches)
    space = [_point(point, kind="hybrid", gpu_batch_size=g, num_gpu_batches=k, weights_gpu_percent=w, kv_ratio=r)
             for (g, k), w, r in itertools.product(shapes, weight_percents, ratios)]
    # FlexGen's placements, idealised: at each requested weight share and at the share its
    # whole-tensor rule really keeps on the GPU, so that every FlexGen candidate has a twin
    shares = sorted({*weight_percents, *(flexgen_gpu_weight_percent(point.model, w) for w in weight_percents)})
    for (g, k), w in itertools.product(shapes, shares):
        kv = dict(kind="kv-only", gpu_batch_size=g, num_gpu_batches=k, weights_gpu_percent=w)
        space.append(_point(point, cpu_attention=True, **kv))
        space += [_point(point, cache_gpu_percent=c, **kv) for c in CACHE_PERCENTS]
    joint = best_of(space, "joint search", prune=True)
    pol = point.policy
    base = dict(gpu_batch_size=point.gpu_batch_size, num_gpu_batches=pol.num_gpu_batches,
                weights_gpu_percent=pol.weights_gpu_percent)
    try:
        flexgen = search_flexgen(_point(point, kind="flexgen", **base),
                                 weight_percents=weight_percents, max_num_gpu_batches=max_num_gpu_batches,
                                 label="flexgen search (for the joint)").best.throughput_tok_s
    except MemoryPlanError:
        flexgen = None
    r_closed = round(closed_form_ratio(_point(point, kind="hybridserve", **base)), 2)
    rules = {
        "flexgen (its placement search)": flexgen,
        f"hybridserve (closed-form r={r_closed})": evaluate(
            _point(point, kind="hybridserve", kv_ratio=r_closed, **base)).throughput_tok_s,
        "kvpr (closed-form l)": evaluate(_point(point, kind="kvpr", **base)).throughput_tok_s,
    }
    return JointReport(joint, rules)
