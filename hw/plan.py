"""Static facts the executor needs about a schedule, computed once before running it.

Host cache layout: per layer and micro-batch, each kind of held state ("kv" pairs,
"act" input activations) is an append-only list of token entries in position
order. A prefill store of `a` activations writes positions `[0, a)`; a prefill
store of `c` K,V pairs writes the last `c` prompt positions; a decode store (or
FlexGen's CPU attention, which appends K,V itself) writes position `past`. A load
of `T` tokens of a kind at a step takes the last `T` entries written for positions
before that step's `past`: a contiguous block. Token ids ("tokens") are indexed by
position; the prompt is written before the run, and the LM head of step `t`
writes position `prompt + t`.

`host_hazards` checks that the schedule itself orders every host-cache read after
the op that wrote it (stream order plus `deps` plus `after`, transitively). The
executor adds no synchronisation, so a schedule that fails this check would read
stale host memory on a real GPU; the executor refuses to run it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..sim.schedule import Op, OpKind, Schedule, Stream

LOAD_CLASS = {OpKind.load_kv: "kv", OpKind.load_act: "act", OpKind.load_tokens: "tokens"}
STORE_CLASS = {OpKind.store_kv: "kv", OpKind.store_act: "act"}
STREAMS = tuple(Stream)


@dataclass(frozen=True)
class HostRange:
    """Entries `[start, stop)` of one host list (`cls` of `layer`, `micro_batch`)."""

    cls: str
    layer: int
    micro_batch: int
    start: int
    stop: int

    @property
    def tokens(self) -> int:
        return self.stop - self.start


@dataclass
class ExecPlan:
    schedule: Schedule
    prompt_len: int
    #: host entries each load, store and CPU attention reads or writes
    ranges: dict[int, HostRange] = field(default_factory=dict)
    #: rows of the attention output a store copies, by store op id
    src_rows: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: positions of the tokens a load_act carries (rotary needs them), by load op id
    positions: dict[int, tuple[int, ...]] = field(default_factory=dict)
    #: entries each host list needs to hold, by class
    capacity: dict[str, int] = field(default_factory=dict)
    #: most tokens any one load of a kind carries
    max_load_tokens: dict[OpKind, int] = field(default_factory=dict)
    #: ops whose writers must precede them: op id -> writer op ids
    writers: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def item(self, op: Op) -> int:
        """The builder's item index ((step, layer, micro-batch) in program order)."""
        meta = self.schedule.meta
        return (op.step * meta.layers + op.layer) * meta.num_gpu_batches + op.micro_batch

    def past(self, step: int) -> int:
        return self.prompt_len + step - 1


def build_plan(schedule: Schedule) -> ExecPlan:
    meta = schedule.meta
    plan = ExecPlan(schedule, meta.prompt_len)
    prompt = meta.prompt_len
    # 1. every write to a host list: (layer, mb, cls) -> sorted [(position, writer op id)]
    written: dict[tuple[int, int, str], list[tuple[int, int]]] = {}
    for op in schedule.ops:
        key = (op.layer, op.micro_batch)
        if op.kind in STORE_CLASS:
            cls, tokens = STORE_CLASS[op.kind], op.shape_dict["tokens"]
            if op.step == 0:
                first = 0 if op.kind is OpKind.store_act else prompt - tokens
                rows = (first, first + tokens)
            else:
                rows = (0, 1)
            plan.src_rows[op.id] = rows
            pos0 = rows[0] if op.step == 0 else plan.past(op.step)
            written.setdefault((*key, cls), []).extend((pos0 + r, op.id) for r in range(rows[1] - rows[0]))
        elif op.kind is OpKind.cpu_attention:
            written.setdefault((*key, "kv"), []).append((plan.past(op.step), op.id))
    positions_of: dict[tuple[int, int, str], np.ndarray] = {}
    writer_of: dict[tuple[int, int, str], np.ndarray] = {}
    for key, entries in written.items():
        entries.sort()
        pos = np.array([p for p, _ in entries], dtype=np.int64)
        if len(np.unique(pos)) != len(pos):
            raise ValueError(f"host {key[2]} of layer {key[0]} mb {key[1]}: a position is stored twice")
        positions_of[key], writer_of[key] = pos, np.array([w for _, w in entries], dtype=np.int64)
        plan.capacity[key[2]] = max(plan.capacity.get(key[2], 0), len(pos))
    lm_heads = {(op.step, op.micro_batch): op.id for op in schedule.ops if op.kind is OpKind.lm_head}

    # 2. every read
    for op in schedule.ops:
        if op.kind in LOAD_CLASS:
            tokens = op.shape_dict["tokens"]
            plan.max_load_tokens[op.kind] = max(plan.max_load_tokens.get(op.kind, 0), tokens)
            cls = LOAD_CLASS[op.kind]
            if cls == "tokens":
                plan.ranges[op.id] = HostRange(cls, -1, op.micro_batch, 0, tokens)
                plan.writers[op.id] = tuple(lm_heads[(p - prompt, op.micro_batch)]
                                            for p in range(prompt, tokens) if (p - prompt, op.micro_batch) in lm_heads)
                continue
            key = (op.layer, op.micro_batch, cls)
            pos = positions_of.get(key, np.zeros(0, dtype=np.int64))
            stop = int(np.searchsorted(pos, plan.past(op.step)))
            if stop < tokens:
                raise ValueError(f"{op.label}: loads {tokens} {cls} tokens, only {stop} were stored before it")
            plan.ranges[op.id] = HostRange(cls, op.layer, op.micro_batch, stop - tokens, stop)
            plan.positions[op.id] = tuple(int(p) for p in pos[stop - tokens:stop])
            plan.writers[op.id] = tuple(int(w) for w in writer_of[key][stop - tokens:stop])
        elif op.kind is OpKind.cpu_attention:
            key = (op.layer, op.micro_batch, "kv")
            pos = positions_of[key]
            past = plan.past(op.step)
            here = int(np.searchsorted(pos, past))
            plan.ranges[op.id] = HostRange("kv", op.layer, op.micro_batch, 0, here + 1)
            plan.writers[op.id] = tuple(int(w) for w in writer_of[key][:here])
        elif op.kind in STORE_CLASS:
            key = (op.layer, op.micro_batch, STORE_CLASS[op.kind])
            first = plan.src_rows[op.id][0] if op.step == 0 else plan.past(op.step)
            start = int(np.searchsorted(positions_of[key], first))
            tokens = op.shape_dict["tokens"]
            plan.ranges[op.id] = HostRange(key[2], op.layer, op.micro_batch, start, start + tokens)
    return plan


# ------------------------------------------------------------------ happens-before


def ready_clocks(schedule: Schedule) -> tuple[np.ndarray, np.ndarray]:
    """Vector clocks: `ready[i, s]` = how many ops of stream `s` are complete, as far as
    the schedule guarantees, when op `i` may start; and each op's position in its stream."""
    n = len(schedule.ops)
    sidx = {s: k for k, s in enumerate(STREAMS)}
    ready = np.zeros((n, len(STREAMS)), dtype=np.int64)
    done = np.zeros((n, len(STREAMS)), dtype=np.int64)
    pos = np.zeros(n, dtype=np.int64)
    last: dict[Stream, int] = {}
    for op in schedule.ops:
        i, s = op.id, sidx[op.stream]
        clock = done[last[op.stream]].copy() if op.stream in last else np.zeros(len(STREAMS), dtype=np.int64)
        for d in (*op.deps, *op.after):
            np.maximum(clock, done[d], out=clock)
        ready[i] = clock
        pos[i] = (pos[last[op.stream]] + 1) if op.stream in last else 0
        clock = clock.copy()
        clock[s] = pos[i] + 1
        done[i] = clock
        last[op.stream] = i
    return ready, pos


def host_hazards(plan: ExecPlan) -> list[tuple[int, int]]:
    """(writer, reader) pairs where the schedule does not order the write before the read."""
    sched = plan.schedule
    ready, pos = ready_clocks(sched)
    sidx = {s: k for k, s in enumerate(STREAMS)}
    bad = []
    for reader, writers in plan.writers.items():
        latest: dict[Stream, int] = {}
        for w in writers:
            s = sched.ops[w].stream
            if w > latest.get(s, -1):
                latest[s] = w
        for s, w in latest.items():
            if ready[reader, sidx[s]] < pos[w] + 1:
                bad.append((w, reader))
    return bad


def happens_before(schedule: Schedule, a: int, b: int, clocks=None) -> bool:
    """Whether the schedule guarantees op `a` ends before op `b` starts."""
    ready, pos = clocks if clocks is not None else ready_clocks(schedule)
    return bool(ready[b, STREAMS.index(schedule.ops[a].stream)] >= pos[a] + 1)
