"""SimPy model of a serving engine: arrivals, iterations on the GPU, and the two link engines.

Processes: one for arrivals, one for the GPU's iteration loop, per iteration one per link
direction for KV swaps, and one for the whole run that streams remapped layers' weights.
The H2D and D2H engines are separate resources (full duplex); KV swap-ins and weight loads
share the H2D engine in issue order. An iteration first waits for its swaps (vLLM blocks
the step on them), then computes layer by layer; a remapped layer cannot start before its
weights have arrived. Tokens emitted by an iteration carry its end time. Time is integer
nanoseconds (each layer's compute rounded once, so the ring check below is exact).

Oneiros streams like a ring (policies.ring_hides): the remapped layers of consecutive
iterations form one sequence of loads into two staging buffers; a load starts once the
layer two places before it in that sequence has been computed, so a layer is fetched
during the compute of the layers before it, and the first two of an iteration during the
tail of the previous one. For that, the set an iteration streams is decided at the start
of the iteration before it:

- growing: the layers joining the set stay resident for the deciding iteration (its KV
  pool does not grow yet) and are freed once computed in it; from the next iteration the
  pool is larger and they are streamed;
- reverting: the layers leaving the set are streamed once more in the deciding iteration,
  into their own pages rather than a staging buffer (the pool shrinks at once), so a
  revert costs no load beyond the streaming the set already had.

Every iteration's loads are thus exactly the set it streams, which was checked against
the bound when it was decided: no stall, as long as the per-layer compute assumed then
holds (it can fall only when that iteration preempts a decoding request).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import simpy

from ...errors import ServingCapacityError
from ..schedule import Stream
from .metrics import serving_metrics
from .paged import KVPool
from .policies import remapped_layer_ids, ring_bound
from .scheduler import Queues, RequestState, SchedulerLimits, StepPlan, commit_step, plan_step
from .specs import ServingPoint
from .timing import IterationCost
from .workload import Request, workload_requests


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
        self.remapped: tuple[int, ...] = ()  # the layers the next iteration streams (decided by the last one)
        self.remapped_bound = (0, 0)  # (bound layers, per-layer compute ns) it was decided under
        self.h2d_ns = _ns(self.cost.layer_h2d_s)
        self.loads: simpy.Store = simpy.Store(self.env)
        self.ring_position = 0
        self.computed: dict[int, simpy.Event] = {}  # ring position -> its layer has been computed
        self._loaded: dict[int, simpy.Event] = {}  # ring position -> its weights are on the GPU
        self.host_kv_bytes = 0
        self.rows: list[dict] = []
        self._wake: simpy.Event | None = None
        self._finished = 0

    # ------------------------------------------------------------------ processes
    def run(self) -> ServingRun:
        self.env.process(self._arrivals())
        self.env.process(self._gpu())
        self.env.process(self._stream_weights())
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
    def _plan(self) -> tuple[StepPlan, int, int, int]:
        """The step plan, the layers the next iteration streams, and the bound (layers, per-layer ns) on them."""
        q, pool = self.queues, self.pool
        current = len(self.remapped)
        target = self._layers_wanted() if self.policy.remaps else 0
        while True:
            plan = plan_step(q.running, q.swapped, q.waiting, pool, pool.capacity_blocks(min(current, target)),
                             self.limits)
            if not self.policy.remaps:
                return plan, 0, 0, 0
            layer_ns = self.bound_layer_ns(plan)
            bound = ring_bound(self.model.layers, self.h2d_ns, layer_ns)
            if target <= bound or not self.policy.respect_bound:
                return plan, target, bound, layer_ns
            target = self._useful_layers(bound)

    def bound_layer_ns(self, plan: StepPlan) -> int:
        """Per-layer compute the next iteration is sure to have: what bounds its streamed layers.

        The requests that decode next are those of this plan that emit a token and are not
        done; their decode (one token each on the cache they will have) is the next
        iteration's steady part (prefill chunks come and go). Capped by this iteration's own
        per-layer compute, whose tail hides the next iteration's first loads.
        """
        nxt = [(1, r.computed + n) for r, n in plan.batch
               if r.computed + n == r.known and r.generated + 1 < r.request.output_len]
        if not nxt:
            return 0
        return min(_ns(self.cost.layer_s(nxt)), _ns(self.cost.layer_s(plan.seqs)))

    def _useful_layers(self, n: int) -> int:
        """The fewest layers that give the same pool as `n` (1 or 2 layers only fill the staging buffers)."""
        return min(n, self.pool.layers_for(self.pool.capacity_blocks(n)))

    def _layers_wanted(self) -> int:
        """Oneiros: the layers the KV demand of the next step needs, reverting only with headroom.

        Demand: the blocks the running requests hold after this step's tokens plus one more
        token each (the next step), and the swapped and waiting requests that the token
        budget would take.
        """
        q, pool = self.queues, self.pool
        demand = self.limits.watermark_blocks
        budget = self.limits.max_batched_tokens
        for r in q.running:
            n = min(r.pending, max(budget, 1))
            demand += max(pool.blocks(r.computed + n + 1), r.gpu_blocks)
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
        streamed, (bound_now, bound_layer_ns) = self.remapped, self.remapped_bound
        plan, target, bound, next_layer_ns = self._plan()
        seqs = plan.seqs
        layer_s = cost.layer_s(seqs) if seqs else 0.0
        swap = self.policy.preemption.value == "swap"
        out_bytes = [r.gpu_blocks * pool.block_bytes for r in plan.preempted if swap and r.gpu_blocks]
        in_bytes = [r.host_blocks * pool.block_bytes for r in plan.swapped_in]
        self.host_kv_bytes += sum(out_bytes) - sum(in_bytes)
        if self.host_kv_bytes > self.host_kv_capacity_bytes:
            raise ServingCapacityError(
                f"swapped KV needs {self.host_kv_bytes / 1e9:.1f} GB of host memory; "
                f"{self.host_kv_capacity_bytes / 1e9:.1f} GB is left after the weights")
        lm_head_s = cost.lm_head_s(plan.emitting)  # before the commit moves the requests on
        emitted = commit_step(plan, self.queues, swap)
        positions = {layer: self.ring_position - len(streamed) + k for k, layer in enumerate(streamed)}
        self.remapped = remapped_layer_ids(self.model.layers, target)
        self.remapped_bound = (bound, next_layer_ns)
        self._enqueue_loads(self.remapped)

        copies = []
        if in_bytes:
            copies.append(env.process(self._copy(self.h2d, [_ns(cost.kv_copy_s(b, Stream.h2d)) for b in in_bytes])))
        if out_bytes:
            copies.append(env.process(self._copy(self.d2h, [_ns(cost.kv_copy_s(b, Stream.d2h)) for b in out_bytes])))
        if copies:
            yield env.all_of(copies)
        swap_wait_ns = env.now - start_ns

        layer_ns = _ns(layer_s)
        stall_ns = 0
        done_layers = 0
        for layer in streamed:
            if layer > done_layers:
                yield env.timeout((layer - done_layers) * layer_ns)
            t0 = env.now
            yield self._loaded[positions[layer]]
            stall_ns += env.now - t0
            yield env.timeout(layer_ns)
            self.computed.pop(positions[layer]).succeed()
            del self._loaded[positions[layer]]
            done_layers = layer + 1
        yield env.timeout((self.model.layers - done_layers) * layer_ns + _ns(lm_head_s))

        for r in emitted:
            r.token_times_ns.append(env.now)
            if r.generated == r.request.output_len:
                self._finished += 1
        q = self.queues
        self.rows.append({
            "start_s": start_ns / 1e9, "end_s": env.now / 1e9,
            "compute_s": self.model.layers * layer_s + lm_head_s, "layer_s": layer_s,
            "remapped_layers": len(streamed), "bound_layers": bound_now, "bound_layer_s": bound_layer_ns / 1e9,
            "next_remapped_layers": target, "reverted_layers": max(len(streamed) - target, 0),
            "seqs": len(plan.batch), "tokens": sum(n for _, n in plan.batch), "emitted": len(emitted),
            "preempted": len(plan.preempted), "swapped_in": len(plan.swapped_in), "admitted": len(plan.admitted),
            "h2d_kv_bytes": sum(in_bytes), "d2h_kv_bytes": sum(out_bytes),
            "h2d_weight_bytes": len(streamed) * self.model.weight_bytes_per_layer,
            "kv_blocks_used": plan.used_blocks, "kv_blocks_capacity": plan.capacity_blocks,
            "swap_wait_s": swap_wait_ns / 1e9, "weight_stall_s": stall_ns / 1e9,
            "running": len(q.running), "swapped": len(q.swapped), "waiting": len(q.waiting),
        })

    # ------------------------------------------------------------------ the weight ring
    def _enqueue_loads(self, layers: tuple[int, ...]) -> None:
        """Queue the loads of the next iteration's streamed layers, continuing the ring."""
        for layer in layers:
            pos = self.ring_position
            self.computed[pos] = self.env.event()
            self._loaded[pos] = self.env.event()
            self.loads.put((pos, layer))
            self.ring_position += 1

    def _stream_weights(self) -> Iterator[simpy.Event]:
        """Loads in ring order; each into the staging buffer freed when position - 2 was computed."""
        while True:
            pos, _layer = yield self.loads.get()
            gate = self.computed.get(pos - 2)
            if gate is not None:
                yield gate
            with self.h2d.request() as req:
                yield req
                yield self.env.timeout(self.h2d_ns)
            self._loaded[pos].succeed()


def run_serving(point: ServingPoint, requests: list[Request] | None = None, base_dir: Path | None = None) -> ServingRun:
    """Simulate one serving point (its workload's requests unless `requests` is given)."""
    reqs = requests if requests is not None else workload_requests(point.workload, base_dir)
    return ServingSim(point, reqs).run()
