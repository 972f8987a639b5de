"""SimPy model of a serving engine: arrivals, iterations on the GPU, and the two link engines.

Processes: one for arrivals, one for the GPU's iteration loop, per iteration one for its KV
swaps, per tenant one that streams its remapped layers' weights, and one per weight reload of a
tenant whose weights were reclaimed. The H2D and D2H engines are separate resources (full
duplex); KV swap-ins, weight streaming and weight reloads share the H2D engine in issue order.

KV swaps follow vLLM V0 (v0.6.3.post1; `Worker.execute_worker` then `execute_model`): the
step's swap-in copies, then its swap-out copies, are issued on the compute stream before the
forward pass, so the iteration waits for all of them (`timing.kv_swap_s` prices them as
vLLM's per-block `cudaMemcpyAsync` calls). An iteration then computes layer by layer; a
remapped layer cannot start before its weights have arrived. Tokens emitted by an iteration
carry its end time. Time is integer nanoseconds (each layer's compute rounded once, so the
ring check below is exact).

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

Tenants (several models on one GPU) take turns: one iteration at a time, round robin over
the tenants that have requests (temporal sharing: separate engines on one GPU without MPS
are time-sliced by the driver, and a turn of one iteration keeps each iteration's cost that
of its model alone). Each has its own KV pool (a static partition, `specs.ServingPoint`).
Under Oneiros a tenant short of KV blocks first reclaims the weights of idle tenants (no
request queued or running; longest idle first, layer by layer, as many as it lacks): those
pages join its pool at once, since the weights are read-only and a copy stays in host
memory. When a request arrives for a tenant whose weights were reclaimed, the borrowers give
the pages back (their next iterations preempt what no longer fits), then its layers are
loaded back over H2D, and only then does it run: its first token pays for the reload. Only
after reclaiming does a tenant remap its own layers under its bound. vLLM's policies keep
the static partition and preempt as for one model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
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
from .timing import IterationCost, kv_swap_copies
from .workload import Request, workload_requests


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


@dataclass(frozen=True)
class ServingRun:
    point: ServingPoint
    requests: list[RequestState]
    iterations: pd.DataFrame
    metrics: dict[str, float]
    #: per tenant name, the same metrics over its own requests and iterations
    tenant_metrics: dict[str, dict[str, float]] = field(default_factory=dict)


class TenantSim:
    """One tenant's engine: its queues, KV pool, weight ring, and weights lent or borrowed."""

    def __init__(self, sim: ServingSim, index: int, requests: list[Request]) -> None:
        point = sim.point
        spec = point.tenants[index]
        self.sim, self.index, self.name, self.model = sim, index, spec.name, spec.model
        self.cost = IterationCost(spec.model, point.hardware)
        self.pool: KVPool = point.tenant_pool(index)
        self.limits = SchedulerLimits(point.engine.max_batched_tokens, point.engine.max_running,
                                      point.tenant_watermark_blocks(index))
        self.policy = point.policy
        limit_tokens = point.tenant_max_request_tokens(index)
        for r in requests:
            if r.prompt_len + r.output_len - 1 > limit_tokens:
                raise ServingCapacityError(
                    f"request {r.id} of {self.name} needs {r.prompt_len + r.output_len - 1} tokens of KV but the "
                    f"pool holds {limit_tokens} ({self.pool.base_kv_bytes / 1e9:.2f} GB at "
                    f"{self.pool.block_bytes} B/block)")
        self.states = [RequestState(r) for r in requests]
        self.queues = Queues()
        env = sim.env
        self.remapped: tuple[int, ...] = ()  # the layers the next iteration streams (decided by the last one)
        self.remapped_bound = (0, 0)  # (bound layers, per-layer compute ns) it was decided under
        self.h2d_ns = _ns(self.cost.layer_h2d_s)
        self.loads: simpy.Store = simpy.Store(env)
        self.ring_position = 0
        self.computed: dict[int, simpy.Event] = {}  # ring position -> its layer has been computed
        self._loaded: dict[int, simpy.Event] = {}  # ring position -> its weights are on the GPU
        self.finished = 0
        # weights shared between tenants (Oneiros only)
        self.reclaimed_layers = 0  # own layers whose pages another tenant's pool holds
        self.borrowed: dict[int, int] = {}  # lender index -> layers of its weights in this pool
        self.idle_since_ns = 0
        self.reloading = False
        self.reload_wait_ns = 0  # reload time not yet charged to an iteration row
        self.reloaded_layers = 0

    @property
    def busy(self) -> bool:
        return self.queues.busy

    @property
    def ready(self) -> bool:
        return self.busy and not self.reloading and self.reclaimed_layers == 0

    @property
    def borrowed_bytes(self) -> int:
        tenants = self.sim.tenants
        return sum(n * tenants[i].model.weight_bytes_per_layer for i, n in self.borrowed.items())

    def used_blocks(self) -> int:
        return sum(r.gpu_blocks for r in self.queues.running)

    def capacity_blocks(self) -> int:
        return self.pool.capacity_blocks(len(self.remapped), self.borrowed_bytes)

    # ------------------------------------------------------------------ planning
    def plan(self) -> tuple[StepPlan, int, int, int]:
        """The step plan, the layers the next iteration streams, and the bound (layers, per-layer ns) on them."""
        q, pool = self.queues, self.pool
        current = len(self.remapped)
        target = self._layers_wanted() if self.policy.remaps else 0
        while True:
            plan = plan_step(q.running, q.swapped, q.waiting, pool,
                             pool.capacity_blocks(min(current, target), self.borrowed_bytes), self.limits)
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
        borrowed = self.borrowed_bytes
        return min(n, self.pool.layers_for(self.pool.capacity_blocks(n, borrowed), borrowed))

    def _layers_wanted(self) -> int:
        """Oneiros: reclaim idle tenants' weights for the KV demand of the next step, then the own
        layers the rest needs, reverting only with headroom.

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
        short = pool.short_bytes(demand, self.borrowed_bytes)
        if short > 0:
            self.sim.reclaim_for(self, short)
        borrowed = self.borrowed_bytes
        layers = self.model.layers
        wanted = min(pool.layers_for(demand, borrowed), layers)
        current = len(self.remapped)
        if wanted < current:
            with_headroom = min(pool.layers_for(int(demand * (1 + self.policy.revert_headroom)), borrowed), layers)
            wanted = min(current, max(wanted, with_headroom))
        return self._useful_layers(wanted)

    # ------------------------------------------------------------------ the weight ring
    def enqueue_loads(self, layers: tuple[int, ...]) -> None:
        """Queue the loads of the next iteration's streamed layers, continuing the ring."""
        for layer in layers:
            pos = self.ring_position
            self.computed[pos] = self.sim.env.event()
            self._loaded[pos] = self.sim.env.event()
            self.loads.put((pos, layer))
            self.ring_position += 1

    def stream_weights(self) -> Iterator[simpy.Event]:
        """Loads in ring order; each into the staging buffer freed when position - 2 was computed."""
        env, h2d = self.sim.env, self.sim.h2d
        while True:
            pos, _layer = yield self.loads.get()
            gate = self.computed.get(pos - 2)
            if gate is not None:
                yield gate
            with h2d.request() as req:
                yield req
                yield env.timeout(self.h2d_ns)
            self._loaded[pos].succeed()


class ServingSim:
    def __init__(self, point: ServingPoint, requests: Mapping[str, list[Request]]) -> None:
        self.point = point
        self.env = simpy.Environment()
        self.h2d = simpy.Resource(self.env, capacity=1)
        self.d2h = simpy.Resource(self.env, capacity=1)
        self.tenants = [TenantSim(self, i, requests[t.name]) for i, t in enumerate(point.tenants)]
        self.engine = point.engine
        self.host_kv_capacity_bytes = point.hardware.host.memory_bytes - sum(
            t.model.total_weight_bytes for t in point.tenants)
        self.host_kv_bytes = 0
        self.rows: list[dict] = []
        self._wake: simpy.Event | None = None
        self._iteration_end = self.env.event()
        self._turn = -1
        self._total = sum(len(t.states) for t in self.tenants)
        self._finished = 0

    # ------------------------------------------------------------------ processes
    def run(self) -> ServingRun:
        self.env.process(self._arrivals())
        self.env.process(self._gpu())
        for t in self.tenants:
            self.env.process(t.stream_weights())
        self.env.run()
        if self._finished != self._total:
            raise RuntimeError(f"simulation stopped with {self._total - self._finished} requests unfinished")
        iterations = pd.DataFrame(self.rows)
        states = [s for t in self.tenants for s in t.states]
        layers = max(t.model.layers for t in self.tenants)
        per_tenant = {t.name: serving_metrics(t.states, iterations[iterations["tenant"] == t.name], t.model.layers)
                      for t in self.tenants}
        return ServingRun(self.point, states, iterations, serving_metrics(states, iterations, layers), per_tenant)

    def _wake_gpu(self) -> None:
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _arrivals(self) -> Iterator[simpy.Event]:
        arrivals = sorted(((s.request.arrival_s, t.index, s.id, t, s) for t in self.tenants for s in t.states),
                          key=lambda a: a[:3])
        for arrival_s, _, _, t, s in arrivals:
            delay = _ns(arrival_s) - self.env.now
            if delay > 0:
                yield self.env.timeout(delay)
            t.queues.waiting.append(s)
            if t.reclaimed_layers and not t.reloading:
                self.env.process(self._reload(t))
            self._wake_gpu()

    def _next_tenant(self) -> TenantSim | None:
        n = len(self.tenants)
        for k in range(1, n + 1):
            t = self.tenants[(self._turn + k) % n]
            if t.ready:
                self._turn = t.index
                return t
        return None

    def _gpu(self) -> Iterator[simpy.Event]:
        while self._finished < self._total:
            t = self._next_tenant()
            if t is None:
                self._wake = self.env.event()
                yield self._wake
                continue
            yield from self._iteration(t)
            if not t.busy:
                t.idle_since_ns = self.env.now
            done, self._iteration_end = self._iteration_end, self.env.event()
            done.succeed()

    # ------------------------------------------------------------------ weights between tenants
    def reclaim_for(self, borrower: TenantSim, short_bytes: int) -> None:
        """Give `borrower` the pages of idle tenants' layers, longest idle first, until it lacks nothing."""
        idle = sorted((t for t in self.tenants if t is not borrower and not t.busy and not t.reloading
                       and not t.remapped and t.reclaimed_layers < t.model.layers),
                      key=lambda t: (t.idle_since_ns, t.index))
        for t in idle:
            per = t.model.weight_bytes_per_layer
            k = min(t.model.layers - t.reclaimed_layers, -(-short_bytes // per))
            t.reclaimed_layers += k
            borrower.borrowed[t.index] = borrower.borrowed.get(t.index, 0) + k
            short_bytes -= k * per
            if short_bytes <= 0:
                return

    def _reload(self, t: TenantSim) -> Iterator[simpy.Event]:
        """Take `t`'s pages back from its borrowers (once their iterations have shrunk into what they
        keep), then load its reclaimed layers over H2D."""
        env = self.env
        t.reloading = True
        start_ns = env.now
        borrowers = [b for b in self.tenants if t.index in b.borrowed]
        for b in borrowers:
            del b.borrowed[t.index]
        while any(b.used_blocks() > b.capacity_blocks() for b in borrowers):
            yield self._iteration_end
        for _ in range(t.reclaimed_layers):
            with self.h2d.request() as req:
                yield req
                yield env.timeout(t.h2d_ns)
        t.reloaded_layers += t.reclaimed_layers
        t.reclaimed_layers = 0
        t.reloading = False
        t.reload_wait_ns += env.now - start_ns
        self._wake_gpu()

    # ------------------------------------------------------------------ one iteration
    def _swap(self, copies_in: int, copies_out: int, copy_bytes: int, cost: IterationCost) -> Iterator[simpy.Event]:
        """vLLM's swap-in, then swap-out copies, one after the other on the compute stream."""
        issue_s = self.engine.memcpy_issue_s
        for engine, copies, direction in ((self.h2d, copies_in, Stream.h2d), (self.d2h, copies_out, Stream.d2h)):
            if copies:
                with engine.request() as req:
                    yield req
                    yield self.env.timeout(_ns(cost.kv_swap_s(copies, copy_bytes, direction, issue_s)))

    def _iteration(self, t: TenantSim) -> Iterator[simpy.Event]:
        env, pool, cost, model = self.env, t.pool, t.cost, t.model
        start_ns = env.now
        streamed, (bound_now, bound_layer_ns) = t.remapped, t.remapped_bound
        plan, target, bound, next_layer_ns = t.plan()
        seqs = plan.seqs
        layer_s = cost.layer_s(seqs) if seqs else 0.0
        swap = t.policy.preemption.value == "swap"
        blocks_out = sum(r.gpu_blocks for r in plan.preempted if swap)
        blocks_in = sum(r.host_blocks for r in plan.swapped_in)
        self.host_kv_bytes += (blocks_out - blocks_in) * pool.block_bytes
        if self.host_kv_bytes > self.host_kv_capacity_bytes:
            raise ServingCapacityError(
                f"swapped KV needs {self.host_kv_bytes / 1e9:.1f} GB of host memory; "
                f"{self.host_kv_capacity_bytes / 1e9:.1f} GB is left after the weights")
        lm_head_s = cost.lm_head_s(plan.emitting)  # before the commit moves the requests on
        emitted = commit_step(plan, t.queues, swap)
        positions = {layer: t.ring_position - len(streamed) + k for k, layer in enumerate(streamed)}
        t.remapped = remapped_layer_ids(model.layers, target)
        t.remapped_bound = (bound, next_layer_ns)
        t.enqueue_loads(t.remapped)

        copies_in, copy_bytes = kv_swap_copies(blocks_in, model, pool.block_tokens)
        copies_out, _ = kv_swap_copies(blocks_out, model, pool.block_tokens)
        if copies_in or copies_out:
            yield env.process(self._swap(copies_in, copies_out, copy_bytes, cost))
        swap_wait_ns = env.now - start_ns

        layer_ns = _ns(layer_s)
        stall_ns = 0
        done_layers = 0
        for layer in streamed:
            if layer > done_layers:
                yield env.timeout((layer - done_layers) * layer_ns)
            t0 = env.now
            yield t._loaded[positions[layer]]
            stall_ns += env.now - t0
            yield env.timeout(layer_ns)
            t.computed.pop(positions[layer]).succeed()
            del t._loaded[positions[layer]]
            done_layers = layer + 1
        yield env.timeout((model.layers - done_layers) * layer_ns + _ns(lm_head_s))

        for r in emitted:
            r.token_times_ns.append(env.now)
            if r.generated == r.request.output_len:
                t.finished += 1
                self._finished += 1
        q = t.queues
        self.rows.append({
            "tenant": t.name,
            "start_s": start_ns / 1e9, "end_s": env.now / 1e9,
            "compute_s": model.layers * layer_s + lm_head_s, "layer_s": layer_s,
            "remapped_layers": len(streamed), "bound_layers": bound_now, "bound_layer_s": bound_layer_ns / 1e9,
            "next_remapped_layers": target, "reverted_layers": max(len(streamed) - target, 0),
            "seqs": len(plan.batch), "tokens": sum(n for _, n in plan.batch), "emitted": len(emitted),
            "preempted": len(plan.preempted), "swapped_in": len(plan.swapped_in), "admitted": len(plan.admitted),
            "h2d_kv_bytes": blocks_in * pool.block_bytes, "d2h_kv_bytes": blocks_out * pool.block_bytes,
            "kv_copies": copies_in + copies_out,
            "h2d_weight_bytes": len(streamed) * model.weight_bytes_per_layer,
            "kv_blocks_used": plan.used_blocks, "kv_blocks_capacity": plan.capacity_blocks,
            "borrowed_bytes": t.borrowed_bytes,
            "reloaded_layers": t.reloaded_layers,
            "h2d_reload_bytes": t.reloaded_layers * model.weight_bytes_per_layer,
            "reload_wait_s": t.reload_wait_ns / 1e9,
            "swap_wait_s": swap_wait_ns / 1e9, "weight_stall_s": stall_ns / 1e9,
            "running": len(q.running), "swapped": len(q.swapped), "waiting": len(q.waiting),
        })
        t.reloaded_layers = 0
        t.reload_wait_ns = 0


def run_serving(point: ServingPoint, requests: list[Request] | Mapping[str, list[Request]] | None = None,
                base_dir: Path | None = None) -> ServingRun:
    """Simulate one serving point: each tenant's workload's requests, unless `requests` gives them
    (a list for a single-model point, or a list per tenant name)."""
    if requests is None:
        per_tenant = {t.name: workload_requests(t.workload, base_dir) for t in point.tenants}
    elif isinstance(requests, Mapping):
        per_tenant = {t.name: list(requests.get(t.name, [])) for t in point.tenants}
    else:
        if point.multi_tenant:
            raise ValueError("a multi-tenant point takes its requests as {tenant name: [Request, ...]}")
        per_tenant = {point.tenants[0].name: list(requests)}
    return ServingSim(point, per_tenant).run()
