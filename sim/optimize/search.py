"""Shared search machinery: evaluate candidate points with `run_point`, keep the best.

Candidates are independent, so `best_of` simulates them on all local cores (one
process each, as `hssim sweep` does) and reports progress through an optional
callback; the result does not depend on the number of processes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from ..api import run_point, throughput_bound_tok_s
from ..memory import MemoryPlanError
from ..outfiles import worker_setup
from ..policies import surely_does_not_fit
from ..specs import PointSpec

#: called as (label, done, total) while a search runs
ProgressHook = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Candidate:
    point: PointSpec
    throughput_tok_s: float | None  # None: does not fit in memory, or not simulated (`pruned`)
    #: an upper bound on its throughput (`api.throughput_bound_tok_s`); None: not computed
    bound_tok_s: float | None = None
    #: fits, but was not simulated: its bound is below a throughput the search already had
    pruned: bool = False


@dataclass(frozen=True)
class SearchResult:
    best: Candidate
    tried: tuple[Candidate, ...]

    @property
    def feasible(self) -> tuple[Candidate, ...]:
        """The candidates that fit in memory (simulated or pruned)."""
        return tuple(c for c in self.tried if c.throughput_tok_s is not None or c.pruned)


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


#: a bound that could not be computed (`None`): the candidate is simulated first
_UNBOUNDED = float("inf")


def bound(point: PointSpec) -> Candidate:
    """The candidate with its throughput bound and no simulation (None, None: does not fit)."""
    if surely_does_not_fit(point):
        return Candidate(point, None)
    try:
        ub = throughput_bound_tok_s(point)
    except MemoryPlanError:
        return Candidate(point, None)
    return Candidate(point, None, bound_tok_s=_UNBOUNDED if ub is None else ub, pruned=True)


@contextlib.contextmanager
def _mapper(n_points: int):
    """A `map(fn, points)` over `SETTINGS.jobs` processes (in order; one pool for the whole
    search), or in this process where one job or few points make a pool not worth starting."""
    jobs = SETTINGS.jobs or os.cpu_count() or 1
    if jobs == 1 or n_points < 4:
        yield lambda fn, pts: map(fn, pts)
        return
    with ProcessPoolExecutor(max_workers=min(jobs, n_points), initializer=worker_setup) as pool:
        yield lambda fn, pts: pool.map(fn, pts, chunksize=max(1, len(pts) // (8 * jobs)))


def _map(mapper, fn: Callable[[PointSpec], Candidate], points: list[PointSpec], label: str) -> list[Candidate]:
    """`fn` over `points` in order, with progress (map keeps the input order, so ties resolve
    as in a serial run)."""
    hook = SETTINGS.progress
    out: list[Candidate] = []
    for cand in mapper(fn, points):
        out.append(cand)
        if hook:
            hook(label, len(out), len(points))
    return out


def _evaluate_pruned(mapper, points: list[PointSpec], label: str) -> list[Candidate]:
    """Branch and bound: bound every candidate (cheap: no op emitted), then simulate them
    from the highest bound down, in rounds of one per process, until the next bound is
    below the best throughput found; the rest are `pruned`. A candidate whose throughput
    could equal the best has a bound at least the best, so it is simulated: the winner and
    its ties are exactly those of simulating everything."""
    cands = _map(mapper, bound, points, f"{label} (bounds)")
    order = sorted((i for i, c in enumerate(cands) if c.pruned), key=lambda i: -cands[i].bound_tok_s)
    jobs = SETTINGS.jobs or os.cpu_count() or 1
    best = -1.0
    pos = 0
    while pos < len(order) and cands[order[pos]].bound_tok_s >= best:
        batch = [i for i in order[pos:pos + jobs] if cands[i].bound_tok_s >= best]
        pos += jobs
        for i, done in zip(batch, _map(mapper, evaluate, [points[i] for i in batch], label), strict=True):
            cands[i] = Candidate(points[i], done.throughput_tok_s, bound_tok_s=cands[i].bound_tok_s)
            if done.throughput_tok_s is not None:
                best = max(best, done.throughput_tok_s)
    return cands


def best_of(points: Iterable[PointSpec], label: str = "searching", prune: bool = False) -> SearchResult:
    """The fastest candidate that fits (ties: the first). prune=False simulates every one;
    prune=True skips those whose throughput bound is below the best found (`_evaluate_pruned`):
    the same winner, with the skipped ones marked `pruned` (their throughput not computed)."""
    pts = list(points)
    with _mapper(len(pts)) as mapper:
        tried = tuple(_evaluate_pruned(mapper, pts, label) if prune else _map(mapper, evaluate, pts, label))
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
