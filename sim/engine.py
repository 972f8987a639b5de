"""SimPy replay of a schedule.

Each engine (GPU compute, the H2D copy engine, the D2H copy engine, the CPU) is one
SimPy process walking its stream's in-order op list, the way a CUDA stream drains
its queue; cross-stream dependencies are SimPy events, the way CUDA's
record/wait works. Durations are precomputed in integer nanoseconds before
`env.run()`, so ties and makespans are exact; DataFrames are built after it.

`unlimited=True` drops the in-order constraint (every op gets its own engine), so
the makespan becomes the schedule's critical path: a check, and a lower bound.

`list_replay` computes the very same timeline without SimPy, by list scheduling in op
order (an op starts when its stream's previous op and everything it waits for have
ended: exactly the SimPy model's rule, since ops are in topological order and each
stream's queue is in op order). Sweeps use it for speed; a test holds the two equal
op for op on every bundled scenario.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import simpy

from .costs.roofline import CostModel, durations_ns
from .schedule import Schedule, Stream

TIMELINE_COLUMNS = [
    "op_id", "stream", "kind", "layer", "step", "micro_batch", "start_s", "end_s",
    "link_bytes", "flops",
]


@dataclass(frozen=True)
class SimResult:
    schedule: Schedule
    duration_ns: np.ndarray
    start_ns: np.ndarray
    end_ns: np.ndarray
    #: the schedule's critical path (`critical_path_ns`), where the replay computed it on the way
    critical_ns: int | None = field(default=None, compare=False)

    @property
    def makespan_ns(self) -> int:
        return int(self.end_ns.max(initial=0))

    @property
    def makespan_s(self) -> float:
        return self.makespan_ns / 1e9

    def timeline(self) -> pd.DataFrame:
        """One row per op in the shared Timeline schema (seconds from the start)."""
        sched = self.schedule
        streams = np.array([p[0].value for p in sched.payloads], dtype=object)
        kinds = np.array([p[1].value for p in sched.payloads], dtype=object)
        idx = sched.payload_index
        return pd.DataFrame(
            {
                "op_id": np.arange(len(sched)),
                "stream": streams[idx].tolist(),
                "kind": kinds[idx].tolist(),
                "layer": sched.column("layer"),
                "step": sched.column("step"),
                "micro_batch": sched.column("micro_batch"),
                "start_s": self.start_ns / 1e9,
                "end_s": self.end_ns / 1e9,
                "link_bytes": sched.column("link_bytes"),
                "flops": sched.column("flops", np.float64),
            },
            columns=TIMELINE_COLUMNS,
        )


ENGINES = ("simpy", "list")


def simulate(schedule: Schedule, cost: CostModel, unlimited: bool = False, engine: str = "simpy") -> SimResult:
    """Replay `schedule` with op durations from `cost` on the SimPy model (or its
    identical list-scheduling form, engine="list")."""
    dur = durations_ns(schedule, cost)
    if engine == "list" and not unlimited:
        return list_replay(schedule, dur)
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; use one of {ENGINES}")
    return replay(schedule, dur, unlimited=unlimited)


def list_replay(schedule: Schedule, dur: np.ndarray) -> SimResult:
    """The SimPy model's timeline, computed directly (see the module docstring); the
    critical path (`critical_path_ns`) comes out of the same pass."""
    n = len(schedule)
    end = [0] * n
    chain = [0] * n  # longest dependency chain ending with each op
    free = [0] * len(Stream)
    i = 0
    for s, waits, d in zip(schedule.stream_codes, schedule.waits, dur.tolist(), strict=True):
        t = free[s]
        c = 0
        for w in waits:
            e = end[w]
            if e > t:
                t = e
            e = chain[w]
            if e > c:
                c = e
        end[i] = free[s] = t + d
        chain[i] = c + d
        i += 1  # noqa: SIM113 - a counter is faster than enumerate in this loop
    end_ns = np.asarray(end, dtype=np.int64)
    return SimResult(schedule, dur, end_ns - dur, end_ns, critical_ns=max(chain, default=0))


def replay(schedule: Schedule, dur: np.ndarray, unlimited: bool = False) -> SimResult:
    """Replay with given durations (ns, indexed by op id)."""
    ops = schedule.ops
    n = len(ops)
    env = simpy.Environment()
    done = [env.event() for _ in range(n)]
    start = np.zeros(n, dtype=np.int64)
    end = np.zeros(n, dtype=np.int64)
    durations = dur.tolist()
    waits = schedule.waits

    def engine(queue):
        for op in queue:
            i = op.id
            for d in waits[i]:
                ev = done[d]
                if ev.callbacks is not None:  # not yet processed
                    yield ev
            start[i] = env.now
            if durations[i]:
                yield env.timeout(durations[i])
            end[i] = env.now
            done[i].succeed()

    if unlimited:
        for op in ops:
            env.process(engine((op,)))
    else:
        for stream in Stream:
            queue = schedule.stream_ops(stream)
            if queue:
                env.process(engine(queue))
    env.run()
    unfinished = [i for i in range(n) if not done[i].triggered]
    if unfinished:
        raise RuntimeError(
            f"schedule deadlocked: {len(unfinished)} ops never ran, first "
            f"{ops[unfinished[0]].label} (a dependency waits on an op queued behind it)"
        )
    return SimResult(schedule, dur, start, end)


def critical_path_ns(schedule: Schedule, dur: np.ndarray) -> int:
    """Longest dependency chain; ops are in topological order by construction."""
    durations = dur.tolist()
    finish = [0] * len(durations)
    for i, waits in enumerate(schedule.waits):
        ready = 0
        for d in waits:
            if finish[d] > ready:
                ready = finish[d]
        finish[i] = ready + durations[i]
    return max(finish, default=0)
