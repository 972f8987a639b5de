"""Run a schedule with one issuing thread per stream, on CUDA or on the CPU; measure it.

Both backends share the loop: the thread of stream `s` walks `schedule.stream_ops(s)`
in order; before an op it waits for the op's `deps` and `after`, then runs it
(`runner.OpRunner`) between two timestamps. Nothing else is synchronised: the only
ordering is the schedule's stream order and its dependencies.

- CUDA: each stream is a `torch.cuda.Stream`; a thread *enqueues* its ops. A
  dependency on a GPU op is `wait_event` on that op's end event (the thread first
  waits, on the host, only until that event has been *recorded*, never until it
  completes); a dependency on the `cpu` stream is a host wait (the CPU work must
  have happened before the GPU may read its output). CPU-stream ops wait for
  their GPU dependencies with `Event.synchronize()`. Each op is bracketed by
  timing-enabled CUDA events; all times are `elapsed_time` from one origin event
  that every stream waits on. CPU-stream ops are stamped by recording events on
  an idle side stream, so all ops share the GPU's clock.
- CPU: "device" buffers are ordinary memory; each thread runs its ops itself and
  a dependency is a host wait on the op's completion; times from
  `time.perf_counter_ns`. Torch's intra-op threads are capped so the stream
  threads together use the machine's cores once.

`measure_point` builds the schedule, runs it `warmup` times untimed and `repeats`
times timed, and returns the median run (by makespan) as a `SimResult`, so the
measured timeline has the simulator's schema and metrics.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UserError
from ..sim.engine import SimResult
from ..sim.metrics import run_metrics
from ..sim.policies import build_schedule
from ..sim.schedule import Op, Schedule, Stream
from ..sim.specs import PointSpec
from .buffers import DeviceBuffers, HostBuffers, host_pinning
from .plan import ExecPlan, build_plan, host_hazards
from .runner import OpRunner
from .threads import adopt_threads
from .weights import ModelWeights, random_weights

WAIT_POLL_S = 0.05


class ExecutorError(UserError):
    """A schedule or a point the executor cannot run; the message says why."""


class _Aborted(Exception):
    pass


def _wait(flag: threading.Event, abort: threading.Event) -> None:
    while not flag.wait(WAIT_POLL_S):
        if abort.is_set():
            raise _Aborted


class CpuBackend:
    name = "cpu"

    def __init__(self, schedule: Schedule) -> None:
        n = len(schedule.ops)
        self.ops = schedule.ops
        self.device = torch.device("cpu")
        self.start_ns = np.zeros(n, dtype=np.int64)
        self.end_ns = np.zeros(n, dtype=np.int64)
        self.done = [threading.Event() for _ in range(n)]
        self.origin_ns = 0

    def begin_run(self) -> None:
        self.origin_ns = time.perf_counter_ns()

    def scope(self, stream: Stream):
        return contextlib.nullcontext()

    def wait_deps(self, op: Op, abort: threading.Event) -> None:
        for d in (*op.deps, *op.after):
            _wait(self.done[d], abort)

    def mark_start(self, op: Op) -> None:
        self.start_ns[op.id] = time.perf_counter_ns()

    def mark_end(self, op: Op) -> None:
        self.end_ns[op.id] = time.perf_counter_ns()
        self.done[op.id].set()

    def times_ns(self) -> tuple[np.ndarray, np.ndarray]:
        return self.start_ns - self.origin_ns, self.end_ns - self.origin_ns


class CudaBackend:
    name = "cuda"

    def __init__(self, schedule: Schedule) -> None:
        n = len(schedule.ops)
        self.ops = schedule.ops
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.streams = {s: torch.cuda.Stream() for s in Stream if s is not Stream.cpu}
        self.side = torch.cuda.Stream()  # stamps CPU-stream ops on the GPU clock
        self.start_ev = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        self.end_ev = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        self.recorded = [threading.Event() for _ in range(n)]
        self.origin = torch.cuda.Event(enable_timing=True)

    def begin_run(self) -> None:
        torch.cuda.synchronize()
        self.origin.record(self.side)
        for s in self.streams.values():
            s.wait_event(self.origin)

    def scope(self, stream: Stream):
        return contextlib.nullcontext() if stream is Stream.cpu else torch.cuda.stream(self.streams[stream])

    def wait_deps(self, op: Op, abort: threading.Event) -> None:
        for d in (*op.deps, *op.after):
            _wait(self.recorded[d], abort)
            if self.ops[d].stream is Stream.cpu:
                continue  # recorded after the host work: already complete
            if op.stream is Stream.cpu:
                self.end_ev[d].synchronize()
            else:
                self.streams[op.stream].wait_event(self.end_ev[d])

    def _stamp(self, ev: torch.cuda.Event, op: Op) -> None:
        ev.record(self.side if op.stream is Stream.cpu else self.streams[op.stream])

    def mark_start(self, op: Op) -> None:
        self._stamp(self.start_ev[op.id], op)

    def mark_end(self, op: Op) -> None:
        self._stamp(self.end_ev[op.id], op)
        self.recorded[op.id].set()

    def times_ns(self) -> tuple[np.ndarray, np.ndarray]:
        torch.cuda.synchronize()
        start = np.array([round(self.origin.elapsed_time(e) * 1e6) for e in self.start_ev], dtype=np.int64)
        end = np.array([round(self.origin.elapsed_time(e) * 1e6) for e in self.end_ev], dtype=np.int64)
        return start, end


def make_backend(device: str, schedule: Schedule):
    if device == "cpu":
        return CpuBackend(schedule)
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ExecutorError("--device cuda: no CUDA device is available to torch "
                                f"{torch.__version__}; use --device cpu")
        return CudaBackend(schedule)
    raise ExecutorError(f"unknown device {device!r}: expected cpu or cuda")


@contextlib.contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_once(schedule: Schedule, runner: OpRunner, backend) -> tuple[np.ndarray, np.ndarray]:
    """Run every op once, one thread per non-empty stream; returns (start_ns, end_ns) from t=0."""
    streams = [s for s in Stream if schedule.stream_ops(s)]
    abort = threading.Event()
    errors: list[BaseException] = []
    gate = threading.Barrier(len(streams) + 1)
    intra_op = torch.get_num_threads()

    def worker(stream: Stream) -> None:
        try:
            adopt_threads(intra_op)  # a fresh thread's oneDNN GEMMs would use every CPU (hw/threads.py)
            gate.wait()
            with backend.scope(stream), torch.inference_mode():
                for op in schedule.stream_ops(stream):
                    backend.wait_deps(op, abort)
                    backend.mark_start(op)
                    runner.run(op)
                    backend.mark_end(op)
        except _Aborted:
            pass
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)
            abort.set()

    threads = [threading.Thread(target=worker, args=(s,), name=f"hssim-{s.value}") for s in streams]
    for t in threads:
        t.start()
    backend.begin_run()
    gate.wait()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return backend.times_ns()


@dataclass
class Measurement:
    point: PointSpec
    schedule: Schedule
    result: SimResult  # the median run
    device: str
    device_name: str
    pinned: bool  # the streamed weights' host memory was pinned
    host_memory: dict[str, str]  # "weights" / "cache" -> "pinned" | "pageable"
    host_bytes: dict[str, int]  # "weights" / "cache" -> host bytes allocated
    runs_s: list[float]
    tokens: np.ndarray  # generated token ids [batch, gen_len] (of the last run)
    captured: dict[int, torch.Tensor] = field(default_factory=dict)
    host: HostBuffers | None = None  # the host buffers after the last run (cache, token ids)
    copied: dict[int, int] = field(default_factory=dict)  # link op id -> bytes it copied (last run)
    #: every timed run, in the order run (the median one among them): how far repeats differ
    repeats: list[SimResult] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return run_metrics(self.result)


def check_supported(point: PointSpec) -> None:
    if point.policy.cache_gpu_percent not in (0, 0.0):
        raise ExecutorError(f"cache_gpu_percent {point.policy.cache_gpu_percent}: the hw executor keeps the "
                            "whole cache on the host; fix: --set policy.cache_gpu_percent=0")
    need = point.workload.prompt_len + point.workload.gen_len
    if need > point.model.max_positions:
        raise ExecutorError(f"prompt_len + gen_len = {need} exceeds the model's {point.model.max_positions} "
                            "positions")


def prepare_plan(schedule: Schedule, point: PointSpec) -> ExecPlan:
    try:
        plan = build_plan(schedule, point)
    except ValueError as e:
        raise ExecutorError(f"cannot map the schedule onto host buffers: {e}") from None
    hazards = host_hazards(plan)
    if hazards:
        w, r = hazards[0]
        raise ExecutorError(
            f"the schedule does not order {len(hazards)} host-cache read(s) after their writes, e.g. "
            f"{schedule.ops[r].label} (op {r}) may read before {schedule.ops[w].label} (op {w}) has written; "
            "the schedule is malformed: its cache loads must depend on the stores they read")
    return plan


def measure_point(point: PointSpec, device: str = "cpu", repeats: int = 3, warmup: int = 1,
                  weights: ModelWeights | None = None, prompt_ids: torch.Tensor | None = None,
                  seed: int = 0, capture: bool = False, fused_qkv: bool = True,
                  progress: Callable[[str], None] | None = None, count_copies: bool = False) -> Measurement:
    """Build `point`'s schedule, run it on `device`, return the median of `repeats` timed runs.

    `prompt_ids` `[prompt_len, batch]` (default: random ids); `weights` default to
    random weights of the real shapes. `capture=True` keeps every rebuilt K,V
    (recompute ops) on the host, which synchronises: for numerics, not timing.
    `progress` is told "warm-up i of n" / "repeat i of n" before each run.
    `count_copies=True` records the bytes every link op copied (`Measurement.copied`,
    last run), a little host work inside each timed op: for tests, not timing.
    """
    if repeats < 1 or warmup < 0:
        raise ExecutorError("repeats must be >= 1 and warmup >= 0")
    check_supported(point)
    schedule = build_schedule(point)
    schedule.validate()
    plan = prepare_plan(schedule, point)
    backend = make_backend(device, schedule)
    m, wl = point.model, point.workload
    if prompt_ids is None:
        gen = torch.Generator().manual_seed(seed + 1)
        prompt_ids = torch.randint(0, m.vocab, (wl.prompt_len, wl.batch), generator=gen, dtype=torch.int32)
    weights = weights or random_weights(m, seed)
    # each host buffer pinned or pageable as the ops that move it say (FlexGen: pageable K,V)
    pinning = host_pinning(schedule, device, point.policy.pinned)
    host = HostBuffers.allocate(point, plan, weights, prompt_ids, pinning)
    dev = DeviceBuffers.allocate(point, plan, weights, prompt_ids, backend.device)
    captured: dict[int, torch.Tensor] = {}
    copied: dict[int, int] = {}
    runner = OpRunner(point, plan, host, dev, fused_qkv=fused_qkv, capture=captured if capture else None,
                      copied=copied if count_copies else None)
    active = sum(1 for s in Stream if schedule.stream_ops(s))
    threads = torch.get_num_threads() if device == "cuda" else (os.cpu_count() or 1) // active
    runs = []
    with _torch_threads(threads):
        for i in range(warmup + repeats):
            if i:
                backend = make_backend(device, schedule)
            copied.clear()
            if progress is not None:
                progress(f"warm-up {i + 1} of {warmup}" if i < warmup else f"repeat {i - warmup + 1} of {repeats}")
            start, end = run_once(schedule, runner, backend)
            if i >= warmup:
                runs.append((int(end.max()), start, end))
    median_ns = statistics.median_low([r[0] for r in runs])
    _, start, end = next(r for r in runs if r[0] == median_ns)
    result = SimResult(schedule, duration_ns=end - start, start_ns=start, end_ns=end)
    tokens = torch.stack(host.tokens, dim=1)[wl.prompt_len:]  # [gen, k, gbs]
    return Measurement(
        point=point, schedule=schedule, result=result, device=device,
        device_name=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        pinned=pinning["weights"], host_memory=host.memory(), host_bytes=host.nbytes(),
        runs_s=[r[0] / 1e9 for r in runs],
        repeats=[SimResult(schedule, duration_ns=e - s, start_ns=s, end_ns=e) for _, s, e in runs],
        tokens=tokens.reshape(wl.gen_len, wl.batch).T.numpy().copy(),
        captured=captured, host=host, copied=dict(copied),
    )


def scaled_point(point: PointSpec, layers: int | None) -> PointSpec:
    """`point` with only the first `layers` layers of its model (see `hssim.sim.api.scaled_point`)."""
    from ..sim.api import scaled_point as scale

    try:
        return scale(point, layers)
    except ValueError as e:
        raise ExecutorError(str(e)) from None
