"""Simulation with contention between the executor's streams (two passes or more).

On the CPU backend the "GPU" and the "link" are threads sharing cores and memory
bandwidth: a GEMM (and FlexGen's host attention) runs slower while a copy is running on the
neighbour thread, and a copy runs slower while a GEMM is. On a GPU a kernel and a copy share the
HBM, and an H2D and a D2H copy share the link and the host's memory (the
`duplex` curves). The profile has each rate (`idle`, measured alone; `busy`,
measured with the other side always busy; for copies also `duplex`, with the
opposite direction copying). The cost model alone cannot know whether an op will
have a busy neighbour, so this replays the schedule with idle durations,
measures for every op the share `f` of its interval during which the other side
(compute vs. copies) was busy and, for a copy, the share `g` during which the
opposite direction was, sets its duration to
`idle + f * (busy - idle) + g * (duplex - idle)` (each slowdown as its
micro-benchmark measured it, counted once per neighbour; never below the
fastest of the three measured rates), and replays again, a
fixed number of times. Every rate comes from the micro-benchmarks; the schedule
only decides how much of each op overlaps.
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


def _share(s: np.ndarray, e: np.ndarray, mask: np.ndarray, other: np.ndarray) -> np.ndarray:
    a, b = _busy_before(s[mask], e[mask], other)
    return np.clip((b - a) / np.maximum(e[mask] - s[mask], 1), 0.0, 1.0)


def overlap_shares(schedule: Schedule, result: SimResult) -> tuple[np.ndarray, np.ndarray]:
    """Per op: (share of its interval during which the other side, compute vs. link, was busy (for
    a host-stream op, the link); for a copy, the share during which the opposite link direction
    was busy, else 0). Copies count only the compute stream as their other side: their `busy`
    rate was measured beside a GEMM."""
    stream = np.array([op.stream.value for op in schedule.ops])
    s, e = result.start_ns, result.end_ns
    comp, h2d, d2h = stream == Stream.compute.value, stream == Stream.h2d.value, stream == Stream.d2h.value
    host = stream == Stream.cpu.value
    links = h2d | d2h
    side, duplex = np.zeros(len(stream)), np.zeros(len(stream))
    link_ivs = union_intervals(s[links], e[links])
    if comp.any():
        side[comp] = _share(s, e, comp, link_ivs)
    if host.any():  # host attention shares the host's memory with the copies (its `busy` fit: beside one)
        side[host] = _share(s, e, host, link_ivs)
    if links.any():
        side[links] = _share(s, e, links, union_intervals(s[comp], e[comp]))
    for mask, other in ((h2d, d2h), (d2h, h2d)):
        if mask.any():
            duplex[mask] = _share(s, e, mask, union_intervals(s[other], e[other]))
    return side, duplex


def overlap_share(schedule: Schedule, result: SimResult) -> np.ndarray:
    """Per op: share of its interval during which the other side (compute vs. link) was busy."""
    return overlap_shares(schedule, result)[0]


def simulate_contended(schedule: Schedule, profile: HardwareProfile, model: ModelSpec,
                       iterations: int = ITERATIONS) -> SimResult:
    idle = durations_ns(schedule, ProfiledCostModel(profile, model, contended=False))
    busy = durations_ns(schedule, ProfiledCostModel(profile, model, contended=True))
    duplex = durations_ns(schedule, ProfiledCostModel(profile, model, condition_name="duplex"))
    # two slowdowns measured as speed-ups (noise) must not add up to less than any measured rate
    floor = np.minimum(np.minimum(idle, busy), duplex)
    result = replay(schedule, idle)
    for _ in range(iterations):
        f, g = overlap_shares(schedule, result)
        blend = np.maximum(idle + f * (busy - idle) + g * (duplex - idle), floor)
        result = replay(schedule, np.round(blend).astype(np.int64))
    return result


def simulate_profiled(schedule: Schedule, profile: HardwareProfile, model: ModelSpec) -> SimResult:
    """The profile's prediction: contention-blended where the profile says so, else idle rates."""
    if profile.contention == "overlap":
        return simulate_contended(schedule, profile, model)
    return replay(schedule, durations_ns(schedule, ProfiledCostModel(profile, model)))
