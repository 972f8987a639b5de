"""FlexGen-style policy search, by simulation: block shape x weight placement x cache placement
(x CPU attention), keeping only configurations whose memory plan fits."""

from __future__ import annotations

import itertools

from ..specs import PointSpec
from .search import SearchResult, best_of, block_shapes, with_policy

WEIGHT_PERCENTS = (0.0, 10.0, 20.0, 30.0, 50.0, 100.0)
CACHE_PERCENTS = (0.0, 50.0, 100.0)


def flexgen_candidates(point: PointSpec, weight_percents=WEIGHT_PERCENTS, cache_percents=CACHE_PERCENTS,
                       max_num_gpu_batches: int = 16) -> list[PointSpec]:
    out = []
    for (gbs, k), wg, cg in itertools.product(block_shapes(point.workload.batch, max_num_gpu_batches),
                                              weight_percents, cache_percents):
        for cpu_attn in ((False, True) if cg == 0 else (False,)):
            out.append(with_policy(point, gpu_batch_size=gbs, num_gpu_batches=k, weights_gpu_percent=wg,
                                   cache_gpu_percent=cg, cpu_attention=cpu_attn))
    return out


def search_flexgen(point: PointSpec, label: str = "flexgen search", **grid) -> SearchResult:
    """Best block shape and placement for `point`'s policy kind (flexgen or kv-only)."""
    return best_of(flexgen_candidates(point, **grid), label, prune=True)
