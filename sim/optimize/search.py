"""Shared search machinery: evaluate candidate points with `run_point`, keep the best.

Candidates are independent, so `best_of` simulates them on all local cores (one
process each, as `hssim sweep` does) and reports progress through an optional
callback; the result does not depend on the number of processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from ..api import run_point
from ..memory import MemoryPlanError
from ..outfiles import worker_setup
from ..policies import surely_does_not_fit
from ..specs import PointSpec

#: called as (label, done, total) while a search runs
ProgressHook = Callable[[str, int, int], None]


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


@dataclass
class SearchSettings:
    """Process count and progress hook of every search in this process."""

    jobs: int | None = None  # None: all local cores
    progress: ProgressHook | None = None


SETTINGS = SearchSettings()


def evaluate(point: PointSpec) -> Candidate:
    if surely_does_not_fit(point):  # rejected without walking its steps: same verdict, see its docstring
        return Candidate(point, None)
    try:
        # the list replay gives the SimPy model's timeline exactly, several times faster
        return Candidate(point, run_point(point, engine="list").metrics["throughput_tok_s"])
    except MemoryPlanError:
        return Candidate(point, None)


def _evaluate_all(points: list[PointSpec], label: str) -> list[Candidate]:
    jobs = SETTINGS.jobs or os.cpu_count() or 1
    hook = SETTINGS.progress
    out: list[Candidate] = []
    if jobs == 1 or len(points) < 4:
        for p in points:
            out.append(evaluate(p))
            if hook:
                hook(label, len(out), len(points))
        return out
    with ProcessPoolExecutor(max_workers=min(jobs, len(points)), initializer=worker_setup) as pool:
        for cand in pool.map(evaluate, points, chunksize=max(1, len(points) // (8 * jobs))):
            out.append(cand)  # map keeps the input order, so ties resolve as in a serial run
            if hook:
                hook(label, len(out), len(points))
    return out


def best_of(points: Iterable[PointSpec], label: str = "searching") -> SearchResult:
    """Simulate every point; the fastest that fits wins (ties: the first)."""
    tried = tuple(_evaluate_all(list(points), label))
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
