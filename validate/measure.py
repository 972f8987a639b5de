"""The one coupling to the hw executor: run a point's schedule and get its measured timeline.

Everything validate needs from `hssim.hw` goes through here: `measure_point`
(the executor), `random_weights` (shared by the points of one model, so a set
of points does not regenerate them), and the executor's own attention kernel
(`LayerKernels.attend`) for the attention micro-benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..sim.engine import SimResult
from ..sim.schedule import Schedule
from ..sim.specs import ModelSpec, PointSpec


class MeasureError(UserError):
    """The executor cannot run a point; the message says why."""


@dataclass(frozen=True)
class Measured:
    point: PointSpec
    schedule: Schedule
    result: SimResult  # the median run, in the simulator's Timeline schema
    runs_s: tuple[float, ...]
    device_name: str
    host_memory: str  # the streamed weights' host memory: "pinned" or "pageable"
    host_cache_memory: str = "pinned"  # the host K,V / activations: "pinned", "pageable" (FlexGen) or "mixed"
    repeats: tuple[SimResult, ...] = ()  # every timed run, `result` among them


class WeightCache:
    """Random weights of the real shapes, made once per model (all layers a point may use)."""

    def __init__(self) -> None:
        self._by_key: dict[str, object] = {}

    def get(self, model: ModelSpec):
        from ..hw.weights import ModelWeights, random_weights

        full = model.model_copy(update={"name": model.name, "layers": 1})
        key = full.model_dump_json()
        have = self._by_key.get(key)
        if have is None or len(have.layers) < model.layers:
            have = random_weights(model.model_copy(update={"layers": max(model.layers, 1)}), seed=0)
            self._by_key[key] = have
        return ModelWeights(layers=have.layers[:model.layers], embed=have.embed, positions=have.positions,
                            final_norm=have.final_norm, lm_head=have.lm_head)


def measure(point: PointSpec, backend: str, repeats: int, warmup: int, weights: WeightCache | None = None) -> Measured:
    from ..hw.executor import ExecutorError, measure_point

    try:
        m = measure_point(point, backend, repeats=repeats, warmup=warmup,
                          weights=weights.get(point.model) if weights else None)
    except ExecutorError as e:
        raise MeasureError(str(e)) from None
    return Measured(point=point, schedule=m.schedule, result=m.result, runs_s=tuple(m.runs_s),
                    device_name=m.device_name, host_memory=m.host_memory["weights"],
                    host_cache_memory=m.host_memory["cache"], repeats=tuple(m.repeats))


def attention_kernel(model: ModelSpec):
    """The executor's attention over a context: `attend(q [new,b,h], context [ctx,b,2hk])`."""
    from ..hw.kernels import LayerKernels

    return LayerKernels(model, None).attend


@dataclass
class Harness:
    """A point's schedule set up on the executor's buffers, for timing single ops in place.

    `run_all()` runs the whole schedule once (every stream thread, as `measure_point`
    does) and returns (start_ns, end_ns); `run_op(op)` runs one op on the calling thread
    with the same buffers and kernels. `threads` is the executor's torch intra-op
    thread count per stream thread; callers set it (`torch.set_num_threads`).
    """

    point: PointSpec
    schedule: Schedule
    runner: object
    backend_name: str
    threads: int

    def run_all(self):
        from ..hw.executor import make_backend, run_once

        return run_once(self.schedule, self.runner, make_backend(self.backend_name, self.schedule))

    def run_op(self, op) -> None:
        self.runner.run(op)


def harness(point: PointSpec, backend: str = "cpu", weights: WeightCache | None = None, seed: int = 0) -> Harness:
    """The executor's setup of `point` (schedule, plan, host and device buffers, op runner), not yet run."""
    import os

    import torch

    from ..hw.buffers import DeviceBuffers, HostBuffers, host_pinning
    from ..hw.executor import ExecutorError, check_supported, make_backend, prepare_plan
    from ..hw.runner import OpRunner
    from ..hw.weights import random_weights
    from ..sim.policies import build_schedule
    from ..sim.schedule import Stream

    try:
        check_supported(point)
        schedule = build_schedule(point)
        schedule.validate()
        plan = prepare_plan(schedule, point)
        device = make_backend(backend, schedule).device
    except ExecutorError as e:
        raise MeasureError(str(e)) from None
    m, wl = point.model, point.workload
    gen = torch.Generator().manual_seed(seed + 1)
    prompt_ids = torch.randint(0, m.vocab, (wl.prompt_len, wl.batch), generator=gen, dtype=torch.int32)
    w = weights.get(m) if weights else random_weights(m, seed)
    pinning = host_pinning(schedule, backend, point.policy.pinned)
    host = HostBuffers.allocate(point, plan, w, prompt_ids, pinning)
    dev = DeviceBuffers.allocate(point, plan, w, prompt_ids, device)
    active = sum(1 for s in Stream if schedule.stream_ops(s))
    threads = torch.get_num_threads() if backend == "cuda" else max(1, (os.cpu_count() or 1) // active)
    return Harness(point, schedule, OpRunner(point, plan, host, dev), backend, threads)
