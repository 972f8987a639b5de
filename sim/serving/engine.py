"""SimPy model of a serving engine: arrivals, iterations on the GPU, and the two link engines.

Processes: one for arrivals, one for the GPU's iteration loop, and per iteration one per
link direction for KV swaps plus one that streams remapped layers' weights. The H2D and
D2H engines are separate resources (full duplex); KV swap-ins and weight loads share the
H2D engine in issue order. An iteration first waits for its swaps (vLLM blocks the step
on them), then computes layer by layer; a remapped layer cannot start before its weights
have arrived, and a staging buffer is reused only after the layer loaded into it two
loads earlier has been computed (double buffering). Tokens emitted by an iteration carry
its end time. Time is integer nanoseconds.

Layers that leave the remapped set (Oneiros reverting) are loaded once more, into their
own pages, in the iteration that reverts them; freeing a layer's pages is instant.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import simpy

from ..schedule import Stream
from .metrics import serving_metrics
from .paged import KVPool
from .policies import layer_bound, remapped_layer_ids
from .scheduler import Queues, RequestState, SchedulerLimits, StepPlan, commit_step, plan_step
from .specs import ServingPoint
from .timing import IterationCost
from .workload import Request, workload_requests


class ServingCapacityError(ValueError):
    """The workload cannot be served at all on this point (a request larger than the pool, host full)."""


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


@dataclass(frozen=True)
class ServingRun:
    point: ServingPoint
    requests: list[RequestState]
    iterations: pd.DataFrame
    metrics: dict[str, float]


class ServingSim:
    def __init__(self, point: ServingPoint, requests: list[Request]) -> None:
        self.point = point
        self.model = point.model
        self.cost = IterationCost(point.model, point.hardware)
        self.pool: KVPool = point.kv_pool
        self.limits = SchedulerLimits(point.engine.max_batched_tokens, point.engine.max_running,
                                      point.watermark_blocks)
        self.policy = point.policy
        self.host_kv_capacity_bytes = point.hardware.host.memory_bytes - point.model.total_weight_bytes
        limit_tokens = point.max_request_tokens()
        for r in requests:
            if r.prompt_len + r.output_len - 1 > limit_tokens:
                raise ServingCapacityError(
                    f"request {r.id} needs {r.prompt_len + r.output_len - 1} tokens of KV but the pool holds "
                    f"{limit_tokens} ({self.pool.base_kv_bytes / 1e9:.2f} GB at {self.pool.block_bytes} B/block)")
        self.states = [RequestState(r) for r in requests]
        self.queues = Queues()
        self.env = simpy.Environment()
        self.h2d = simpy.Resource(self.env, capacity=1)
        self.d2h = simpy.Resource(self.env, capacity=1)
        self.remapped: tuple[int, ...] = ()
        self.host_kv_bytes = 0
        self.rows: list[dict] = []
        self._wake: simpy.Event | None = None
        self._finished = 0

    # ------------------------------------------------------------------ processes
    def run(self) -> ServingRun:
        self.env.process(self._arrivals())
        self.env.process(self._gpu())
        self.env.run()
        if self._finished != len(self.states):
            raise RuntimeError(f"simulation stopped with {len(self.states) - self._finished} requests unfinished")
        iterations = pd.DataFrame(self.rows)
        return ServingRun(self.point, self.states, iterations,
                          serving_metrics(self.states, iterations, self.model.layers))

    def _arrivals(self) -> Iterator[simpy.Event]:
        for s in self.states:
            delay = _ns(s.request.arrival_s) - self.env.now
            if delay > 0:
                yield self.env.timeout(delay)
            self.queues.waiting.append(s)
            if self._wake is not None and not self._wake.triggered:
                self._wake.succeed()

    def _gpu(self) -> Iterator[simpy.Event]:
        while self._finished < len(self.states):
            if not self.queues.busy:
                self._wake = self.env.event()
                yield self._wake
                continue
            yield from self._iteration()

    def _copy(self, engine: simpy.Resource, durations_ns: list[int]) -> Iterator[simpy.Event]:
        for d in durations_ns:
            with engine.request() as req:
                yield req
                yield self.env.timeout(d)

    # ------------------------------------------------------------------ one iteration
    def _plan(self) -> tuple[StepPlan, tuple[int, ...], float, int]:
        """The step plan, the remapped layers, one layer's compute seconds and the layer bound."""
        q, pool = self.queues, self.pool
        layers = self.model.layers
        n = self._layers_wanted() if self.policy.remaps else 0
        while True:
            plan = plan_step(q.running, q.swapped, q.waiting, pool, pool.capacity_blocks(n), self.limits)
            seqs = plan.seqs
            layer_s = self.cost.layer_s(seqs) if seqs else 0.0
            if not self.policy.remaps:
                return plan, (), layer_s, 0
            bound = layer_bound(self.decode_compute_s(plan), self.cost.layer_h2d_s, layers)
            if n <= bound or not self.policy.respect_bound:
                return plan, remapped_layer_ids(layers, n), layer_s, bound
            n = self._useful_layers(bound)

    def decode_compute_s(self, plan: StepPlan) -> float:
        """Compute time of the plan's decode sequences alone: what bounds Oneiros' layers.

        Prefill chunks come and go from one iteration to the next; the decode batch is the
        steady part, so the bound holds for the next iterations too (and, being a part of
        the iteration, for this one).
        """
        decodes = [(n, past) for n, past in plan.seqs if n == 1]
        if not decodes:
            return 0.0
        return self.model.layers * self.cost.layer_s(decodes) + self.cost.lm_head_s(len(decodes))

    def _useful_layers(self, n: int) -> int:
        """The fewest layers that give the same pool as `n` (1 or 2 layers only fill the staging buffers)."""
        return min(n, self.pool.layers_for(self.pool.capacity_blocks(n)))

    def _layers_wanted(self) -> int:
        """Oneiros: the layers the KV demand of this step needs, reverting only with headroom."""
        q, pool = self.queues, self.pool
        demand = self.limits.watermark_blocks
        budget = self.limits.max_batched_tokens
        for r in q.running:
            n = min(r.pending, max(budget, 1))
            demand += max(pool.blocks(r.computed + n), r.gpu_blocks)
            budget -= n
        for r in q.swapped + q.waiting:
            n = min(r.pending, max(budget, 0))
            if r.computed + n == 0:
                break
            demand += pool.blocks(r.computed + n)
            budget -= n
        layers = self.model.layers
        wanted = min(pool.layers_for(demand), layers)
        current = len(self.remapped)
        if wanted < current:
            with_headroom = min(pool.layers_for(int(demand * (1 + self.policy.revert_headroom))), layers)
            wanted = min(current, max(wanted, with_headroom))
        return self._useful_layers(wanted)

    def _iteration(self) -> Iterator[simpy.Event]:
        env, pool, cost = self.env, self.pool, self.cost
        start_ns = env.now
        plan, remapped, layer_s, bound = self._plan()
        swap = self.policy.preemption.value == "swap"
        out_bytes = [r.gpu_blocks * pool.block_bytes for r in plan.preempted if swap and r.gpu_blocks]
        in_bytes = [r.host_blocks * pool.block_bytes for r in plan.swapped_in]
        self.host_kv_bytes += sum(out_bytes) - sum(in_bytes)
        if self.host_kv_bytes > self.host_kv_capacity_bytes:
            raise ServingCapacityError(
                f"swapped KV needs {self.host_kv_bytes / 1e9:.1f} GB of host memory; "
                f"{self.host_kv_capacity_bytes / 1e9:.1f} GB is left after the weights")
        lm_head_s = cost.lm_head_s(plan.emitting)  # before the commit moves the requests on
        leaving = tuple(sorted(set(self.remapped) - set(remapped)))
        self.remapped = remapped
        emitted = commit_step(plan, self.queues, swap)

        copies = []
        if in_bytes:
            copies.append(env.process(self._copy(self.h2d, [_ns(cost.kv_copy_s(b, Stream.h2d)) for b in in_bytes])))
        if out_bytes:
            copies.append(env.process(self._copy(self.d2h, [_ns(cost.kv_copy_s(b, Stream.d2h)) for b in out_bytes])))
        loads = sorted(set(remapped) | set(leaving))
        loaded = {layer: env.event() for layer in loads}
        computed = [env.event() for _ in remapped]
        if loads:
            env.process(self._stream_weights(loads, remapped, loaded, computed))
        if copies:
            yield env.all_of(copies)
        swap_wait_ns = env.now - start_ns

        slot = {layer: k for k, layer in enumerate(remapped)}
        layer_ns = _ns(layer_s)
        stall_ns = 0
        done_layers = 0
        for layer in loads:
            if layer > done_layers:
                yield env.timeout(_ns((layer - done_layers) * layer_s))
            t0 = env.now
            yield loaded[layer]
            stall_ns += env.now - t0
            yield env.timeout(layer_ns)
            if layer in slot:
                computed[slot[layer]].succeed()
            done_layers = layer + 1
        yield env.timeout(_ns((self.model.layers - done_layers) * layer_s + lm_head_s))

        for r in emitted:
            r.token_times_ns.append(env.now)
            if r.generated == r.request.output_len:
                self._finished += 1
        q = self.queues
        self.rows.append({
            "start_s": start_ns / 1e9, "end_s": env.now / 1e9,
            "compute_s": self.model.layers * layer_s + lm_head_s,
            "remapped_layers": len(remapped), "bound_layers": bound, "reverted_layers": len(leaving),
            "seqs": len(plan.batch), "tokens": sum(n for _, n in plan.batch), "emitted": len(emitted),
            "preempted": len(plan.preempted), "swapped_in": len(plan.swapped_in), "admitted": len(plan.admitted),
            "h2d_kv_bytes": sum(in_bytes), "d2h_kv_bytes": sum(out_bytes),
            "h2d_weight_bytes": len(loads) * self.model.weight_bytes_per_layer,
            "kv_blocks_used": plan.used_blocks, "kv_blocks_capacity": plan.capacity_blocks,
            "swap_wait_s": swap_wait_ns / 1e9, "weight_stall_s": stall_ns / 1e9,
            "running": len(q.running), "swapped": len(q.swapped), "waiting": len(q.waiting),
        })

    def _stream_weights(self, loads: list[int], remapped: tuple[int, ...], loaded: dict[int, simpy.Event],
                        computed: list[simpy.Event]) -> Iterator[simpy.Event]:
        slot = {layer: k for k, layer in enumerate(remapped)}
        load_ns = _ns(self.cost.layer_h2d_s)
        for layer in loads:
            k = slot.get(layer)
            if k is not None and k >= 2:
                yield computed[k - 2]  # its staging buffer is free once that layer has run
            with self.h2d.request() as req:
                yield req
                yield self.env.timeout(load_ns)
            loaded[layer].succeed()


def run_serving(point: ServingPoint, requests: list[Request] | None = None, base_dir: Path | None = None) -> ServingRun:
    """Simulate one serving point (its workload's requests unless `requests` is given)."""
    reqs = requests if requests is not None else workload_requests(point.workload, base_dir)
    return ServingSim(point, reqs).run()
