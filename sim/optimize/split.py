"""KVPR's split point l: the closed form once per run, the per-step rule, and the simulated optimum."""

from __future__ import annotations

from dataclasses import dataclass

from ..policies.kvpr import closed_form_split_for
from ..specs import PointSpec
from .search import SearchResult, best_of, evaluate, with_policy


@dataclass(frozen=True)
class SplitReport:
    closed_form_tokens: int
    closed_form_tok_s: float | None
    per_step_tok_s: float | None
    simulated: SearchResult


def split_grid(max_tokens: int, steps: int = 16) -> list[int]:
    """`steps + 1` split points from 0 to `max_tokens`, evenly spaced."""
    return sorted({round(max_tokens * i / steps) for i in range(steps + 1)})


def search_split(point: PointSpec, steps: int = 32) -> SplitReport:
    """l over the whole context: the past grows to prompt + gen − 1 tokens, and a fixed l
    above the current past means 'all of it as activations' for the early steps."""
    wl = point.workload
    l_closed = closed_form_split_for(point.model, point.hardware, wl.prompt_len)
    grid = sorted(set(split_grid(wl.prompt_len + wl.gen_len - 1, steps)) | {l_closed})
    sim = best_of((with_policy(point, split_tokens=n) for n in grid), "split search")
    closed = next(c for c in sim.tried if c.point.policy.split_tokens == l_closed)
    per_step = evaluate(with_policy(point, split_tokens=None, split_rule="per-step"))
    return SplitReport(l_closed, closed.throughput_tok_s, per_step.throughput_tok_s, sim)
