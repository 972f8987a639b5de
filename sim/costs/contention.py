"""Simulation with contention between the executor's stream threads (two passes or more).

On the CPU backend the "GPU" and the "link" are threads sharing cores and memory
bandwidth: a GEMM runs slower while a copy is running on the neighbour thread,
and a copy runs slower while a GEMM is. The profile has both rates (`idle`,
measured alone; `busy`, measured with the neighbour thread always busy). The
cost model alone cannot know whether an op will have a busy neighbour, so this
replays the schedule with idle durations, measures for every op the share `f` of
its interval during which the other side (compute vs. copies) was busy, sets its
duration to `idle + f * (busy - idle)`, and replays again, a fixed number of
times. Every rate comes from the micro-benchmarks; the schedule only decides
how much of each op overlaps.
"""

from __future__ import annotations

import numpy as np

from ..engine import SimResult, replay
from ..schedule import Schedule, Stream
from ..specs import ModelSpec
from .profile import HardwareProfile, ProfiledCostModel
from .roofline import durations_ns

ITERATIONS = 3


def _busy_before(starts: np.ndarray, ends: np.ndarray, ivs: np.ndarray) -> np.ndarray:
    """Total length of the union intervals `ivs` before each time in `starts`/`ends` -> (before_start, before_end)."""
    if len(ivs) == 0:
        return np.zeros_like(starts), np.zeros_like(ends)
    lo, hi = ivs[:, 0], ivs[:, 1]
    cum = np.concatenate([[0], np.cumsum(hi - lo)])

    def f(t: np.ndarray) -> np.ndarray:
        i = np.searchsorted(lo, t, side="right")  # intervals starting at or before t
        full = cum[np.maximum(i - 1, 0)]
        part = np.where(i > 0, np.minimum(t, hi[np.maximum(i - 1, 0)]) - lo[np.maximum(i - 1, 0)], 0)
        return np.where(i > 0, full + part, 0)

    return f(starts), f(ends)


def union_intervals(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Merge intervals [start, end) into disjoint, sorted ones (an (n, 2) array, input dtype)."""
    keep = end > start
    iv = np.column_stack([start[keep], end[keep]])
    if len(iv) == 0:
        return iv.reshape(0, 2)
    iv = iv[np.argsort(iv[:, 0])]
    out = [list(iv[0])]
    for s, e in iv[1:]:
        if s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return np.asarray(out, dtype=iv.dtype)


def overlap_share(schedule: Schedule, result: SimResult) -> np.ndarray:
    """Per op: share of its interval during which the other side (compute vs. link) was busy."""
    streams = np.array([op.stream is Stream.compute for op in schedule.ops])
    links = np.array([op.stream in (Stream.h2d, Stream.d2h) for op in schedule.ops])
    s, e = result.start_ns, result.end_ns
    comp = union_intervals(s[streams], e[streams])
    link = union_intervals(s[links], e[links])
    share = np.zeros(len(schedule.ops))
    dur = np.maximum(e - s, 1)
    for mask, other in ((streams, link), (links, comp)):
        a, b = _busy_before(s[mask], e[mask], other)
        share[mask] = np.clip((b - a) / dur[mask], 0.0, 1.0)
    return share


def simulate_contended(schedule: Schedule, profile: HardwareProfile, model: ModelSpec,
                       iterations: int = ITERATIONS) -> SimResult:
    idle = durations_ns(schedule, ProfiledCostModel(profile, model, contended=False))
    busy = durations_ns(schedule, ProfiledCostModel(profile, model, contended=True))
    result = replay(schedule, idle)
    for _ in range(iterations):
        f = overlap_share(schedule, result)
        result = replay(schedule, np.round(idle + f * (busy - idle)).astype(np.int64))
    return result


def simulate_profiled(schedule: Schedule, profile: HardwareProfile, model: ModelSpec) -> SimResult:
    """The profile's prediction: contention-blended where the profile says so, else idle rates."""
    if profile.contention == "overlap" and "busy" in profile.gemm:
        return simulate_contended(schedule, profile, model)
    return replay(schedule, durations_ns(schedule, ProfiledCostModel(profile, model)))
