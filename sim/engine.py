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
stream's queue is in op order), in a compiled kernel over the schedule's arrays
(`replay_kernels.list_replay_kernel`; plain Python where numba is missing). `hssim run`,
sweeps and searches use it; tests hold it equal to the SimPy model op for op on every
bundled scenario, compiled and as plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .costs.roofline import CostModel, durations_ns
from .schedule import Schedule, Stream

if TYPE_CHECKING:
    import pandas as pd

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
        import pandas as pd

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


def simulate(schedule: Schedule, cost: CostModel, unlimited: bool = False, engine: str = "list") -> SimResult:
    """Replay `schedule` with op durations from `cost`: engine="list" (the default) computes
    the SimPy model's timeline directly, engine="simpy" runs the SimPy model itself."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; use one of {ENGINES}")
    dur = durations_ns(schedule, cost)
    if engine == "list" and not unlimited:
        return list_replay(schedule, dur)
    return replay(schedule, dur, unlimited=unlimited)


def list_replay(schedule: Schedule, dur: np.ndarray, compiled: bool | None = None) -> SimResult:
    """The SimPy model's timeline, computed directly (see the module docstring); the
    critical path (`critical_path_ns`) comes out of the same pass. compiled=False runs the
    kernel as plain Python (the fallback where numba is missing), True compiled, None as
    `sim.compiled.Kernel.auto` decides."""
    from .replay_kernels import list_replay_kernel

    kernel = list_replay_kernel.pick(compiled, len(schedule))
    dur = np.ascontiguousarray(dur, dtype=np.int64)
    end_ns, crit = kernel(schedule.stream_code, dur, schedule.deps_ptr, schedule.deps_idx, schedule.after_ptr,
                          schedule.after_idx, len(Stream))
    return SimResult(schedule, dur, end_ns - dur, end_ns, critical_ns=int(crit))


def replay(schedule: Schedule, dur: np.ndarray, unlimited: bool = False) -> SimResult:
    """Replay with given durations (ns, indexed by op id) on the SimPy model."""
    import simpy

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
    """Longest dependency chain (deps and after; ops are in topological order by construction)."""
    return list_replay(schedule, dur).critical_ns
