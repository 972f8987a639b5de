"""vLLM-style continuous batching over the paged KV pool: one step's plan, then its commit.

A request holds `known` tokens (its prompt plus the tokens it has generated) of which
`computed` have K,V in the cache. Each iteration feeds it `new` of the remaining
`known - computed` tokens (a prefill chunk, or the one last token when decoding); when
that reaches `known` the iteration emits its next token. A recompute-preempted request
drops its cache (`computed = 0`) and is prefilled again over prompt + generated tokens.

Order of a step (vLLM with chunked prefill, FCFS priority = arrival order):
1. shrink: while the running requests hold more blocks than the pool has, preempt the
   lowest-priority one (the pool can shrink when Oneiros reverts layers);
2. running requests, decodes before prefill chunks, in priority order; when one needs a
   block and none is free, preempt the lowest-priority running request not yet scheduled
   (possibly itself);
3. if nothing was preempted: swapped requests come back in order while blocks allow;
4. if no swapped request is left: waiting requests are admitted in order while blocks
   (less a watermark) and the token budget allow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from .paged import KVPool
from .workload import Request


class Where(str, Enum):
    waiting = "waiting"
    running = "running"
    swapped = "swapped"
    done = "done"


@dataclass(eq=False, slots=True)
class RequestState:
    request: Request
    computed: int = 0
    generated: int = 0
    gpu_blocks: int = 0
    host_blocks: int = 0
    where: Where = Where.waiting
    token_times_ns: list[int] = field(default_factory=list)
    preemptions: int = 0
    recomputed_tokens: int = 0

    @property
    def id(self) -> int:
        return self.request.id

    @property
    def known(self) -> int:
        return self.request.prompt_len + self.generated

    @property
    def pending(self) -> int:
        return self.known - self.computed


@dataclass(frozen=True)
class SchedulerLimits:
    max_batched_tokens: int
    max_running: int
    watermark_blocks: int


@dataclass
class StepPlan:
    """What one iteration does; `batch` holds (request, new tokens) in execution order."""

    capacity_blocks: int
    batch: list[tuple[RequestState, int]] = field(default_factory=list)
    preempted: list[RequestState] = field(default_factory=list)
    swapped_in: list[RequestState] = field(default_factory=list)
    admitted: list[RequestState] = field(default_factory=list)
    blocks_after: dict[int, int] = field(default_factory=dict)

    @property
    def seqs(self) -> list[tuple[int, int]]:
        """(new tokens, past tokens) of each scheduled sequence, for the cost model."""
        return [(n, r.computed) for r, n in self.batch]

    @property
    def emitting(self) -> int:
        return sum(1 for r, n in self.batch if r.computed + n == r.known)

    @property
    def used_blocks(self) -> int:
        return sum(self.blocks_after.values())


def plan_step(running: list[RequestState], swapped: list[RequestState], waiting: list[RequestState],
              pool: KVPool, capacity_blocks: int, limits: SchedulerLimits) -> StepPlan:
    """Plan one iteration without changing any request (queues are in priority order)."""
    plan = StepPlan(capacity_blocks)
    blocks = {r.id: r.gpu_blocks for r in running}
    used = sum(blocks.values())
    order = [r for r in running if r.pending == 1] + [r for r in running if r.pending > 1]
    while used > capacity_blocks and order:
        victim = order.pop()
        used -= blocks.pop(victim.id)
        plan.preempted.append(victim)
    budget = limits.max_batched_tokens
    i = 0
    while i < len(order) and budget > 0:
        r = order[i]
        n = min(r.pending, budget)
        need = pool.blocks(r.computed + n) - blocks[r.id]
        while need > capacity_blocks - used and order[-1] is not r:
            victim = order.pop()
            used -= blocks.pop(victim.id)
            plan.preempted.append(victim)
        if need > capacity_blocks - used:  # only r itself is left to give up its blocks
            order.pop()
            used -= blocks.pop(r.id)
            plan.preempted.append(r)
            break
        used += need
        blocks[r.id] += need
        plan.batch.append((r, n))
        budget -= n
        i += 1
    if not plan.preempted:
        for r in swapped:
            n = min(r.pending, budget)
            need = pool.blocks(r.computed + n)
            if n == 0 or len(blocks) >= limits.max_running or need > capacity_blocks - used:
                break
            plan.swapped_in.append(r)
            plan.batch.append((r, n))
            blocks[r.id] = need
            used += need
            budget -= n
    if not plan.preempted and len(plan.swapped_in) == len(swapped):
        for r in waiting:
            n = min(r.pending, budget)
            need = pool.blocks(r.computed + n)
            free = capacity_blocks - used - limits.watermark_blocks
            if n == 0 or len(blocks) >= limits.max_running or need > free:
                break
            plan.admitted.append(r)
            plan.batch.append((r, n))
            blocks[r.id] = need
            used += need
            budget -= n
    plan.blocks_after = blocks
    return plan


@dataclass
class Queues:
    """Requests by where they are, each list in priority (arrival) order."""

    running: list[RequestState] = field(default_factory=list)
    swapped: list[RequestState] = field(default_factory=list)
    waiting: list[RequestState] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return bool(self.running or self.swapped or self.waiting)


def _by_arrival(states: list[RequestState]) -> list[RequestState]:
    return sorted(states, key=lambda r: r.id)


def commit_step(plan: StepPlan, queues: Queues, swap_preempted: bool) -> list[RequestState]:
    """Apply a plan to the requests and queues; returns the requests that emit a token.

    Preempted requests go to `swapped` (their blocks now on the host) or, when not
    swapping, back to `waiting` with their cache dropped.
    """
    for r in plan.preempted:
        r.preemptions += 1
        if swap_preempted:
            r.host_blocks, r.gpu_blocks, r.where = r.gpu_blocks, 0, Where.swapped
        else:
            r.recomputed_tokens += r.computed
            r.computed, r.gpu_blocks, r.where = 0, 0, Where.waiting
    for r in plan.swapped_in:
        r.host_blocks, r.where = 0, Where.running
    for r in plan.admitted:
        r.where = Where.running
    by_id = {r.id: r for r in queues.running}
    by_id.update((r.id, r) for r in plan.swapped_in)
    by_id.update((r.id, r) for r in plan.admitted)
    for rid, nblocks in plan.blocks_after.items():
        by_id[rid].gpu_blocks = nblocks
    emitted = []
    for r, n in plan.batch:
        r.computed += n
        if r.computed == r.known:
            r.generated += 1
            emitted.append(r)
            if r.generated == r.request.output_len:
                r.where, r.gpu_blocks = Where.done, 0
    everyone = queues.running + queues.swapped + queues.waiting
    queues.running = _by_arrival([r for r in everyone if r.where is Where.running])
    queues.swapped = _by_arrival([r for r in everyone if r.where is Where.swapped])
    queues.waiting = _by_arrival([r for r in everyone if r.where is Where.waiting])
    return emitted
