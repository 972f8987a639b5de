"""SimPy replay of a schedule.

Each engine (GPU compute, the H2D copy engine, the D2H copy engine, the CPU) is one
SimPy process walking its stream's in-order op list, the way a CUDA stream drains
its queue; cross-stream dependencies are SimPy events, the way CUDA's
record/wait works. Durations are precomputed in integer nanoseconds before
`env.run()`, so ties and makespans are exact; DataFrames are built after it.

`unlimited=True` drops the in-order constraint (every op gets its own engine), so
the makespan becomes the schedule's critical path: a check, and a lower bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import simpy

from .costs import CostModel, durations_ns
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

    @property
    def makespan_ns(self) -> int:
        return int(self.end_ns.max(initial=0))

    @property
    def makespan_s(self) -> float:
        return self.makespan_ns / 1e9

    def timeline(self) -> pd.DataFrame:
        """One row per op in the shared Timeline schema (seconds from the start)."""
        ops = self.schedule.ops
        return pd.DataFrame(
            {
                "op_id": np.arange(len(ops)),
                "stream": [op.stream.value for op in ops],
                "kind": [op.kind.value for op in ops],
                "layer": np.fromiter((op.layer for op in ops), np.int64, len(ops)),
                "step": np.fromiter((op.step for op in ops), np.int64, len(ops)),
                "micro_batch": np.fromiter((op.micro_batch for op in ops), np.int64, len(ops)),
                "start_s": self.start_ns / 1e9,
                "end_s": self.end_ns / 1e9,
                "link_bytes": np.fromiter((op.link_bytes for op in ops), np.int64, len(ops)),
                "flops": np.fromiter((op.flops for op in ops), np.float64, len(ops)),
            },
            columns=TIMELINE_COLUMNS,
        )


def simulate(schedule: Schedule, cost: CostModel, unlimited: bool = False) -> SimResult:
    """Replay `schedule` with op durations from `cost`."""
    dur = durations_ns(schedule, cost)
    return replay(schedule, dur, unlimited=unlimited)


def replay(schedule: Schedule, dur: np.ndarray, unlimited: bool = False) -> SimResult:
    """Replay with given durations (ns, indexed by op id)."""
    ops = schedule.ops
    n = len(ops)
    env = simpy.Environment()
    done = [env.event() for _ in range(n)]
    start = np.zeros(n, dtype=np.int64)
    end = np.zeros(n, dtype=np.int64)
    durations = dur.tolist()
    waits = [op.deps + op.after for op in ops]

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
    finish = np.zeros(len(schedule.ops), dtype=np.int64)
    durations = dur.tolist()
    best = 0
    for op in schedule.ops:
        ready = 0
        for d in op.deps + op.after:
            if finish[d] > ready:
                ready = finish[d]
        finish[op.id] = ready + durations[op.id]
        best = max(best, finish[op.id])
    return int(best)
