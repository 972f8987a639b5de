"""Shared search machinery: evaluate candidate points with `run_point`, keep the best."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..api import run_point
from ..memory import MemoryPlanError
from ..specs import PointSpec


@dataclass(frozen=True)
class Candidate:
    point: PointSpec
    throughput_tok_s: float | None  # None: does not fit in memory


@dataclass(frozen=True)
class SearchResult:
    best: Candidate
    tried: tuple[Candidate, ...]

    @property
    def feasible(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.tried if c.throughput_tok_s is not None)


def evaluate(point: PointSpec) -> Candidate:
    try:
        return Candidate(point, run_point(point).metrics["throughput_tok_s"])
    except MemoryPlanError:
        return Candidate(point, None)


def best_of(points: Iterable[PointSpec]) -> SearchResult:
    """Simulate every point; the fastest that fits wins (ties: the first)."""
    tried = tuple(evaluate(p) for p in points)
    fits = [c for c in tried if c.throughput_tok_s is not None]
    if not fits:
        raise MemoryPlanError(f"none of the {len(tried)} candidate configurations fits in memory")
    return SearchResult(max(fits, key=lambda c: c.throughput_tok_s), tried)


def with_policy(point: PointSpec, **changes) -> PointSpec:
    """`point` with policy fields changed (validated), e.g. a new block shape."""
    pol = type(point.policy).model_validate({**point.policy.model_dump(), **changes})
    return point.model_copy(update={"policy": pol})


def block_shapes(batch: int, max_num_gpu_batches: int = 16) -> list[tuple[int, int]]:
    """(gpu_batch_size, num_gpu_batches) pairs that multiply to `batch`."""
    return [(batch // k, k) for k in range(1, min(batch, max_num_gpu_batches) + 1) if batch % k == 0]
