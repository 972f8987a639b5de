"""Static facts the executor needs about a schedule, computed once before running it.

Host cache layout: per layer and micro-batch, each kind of held state ("kv" pairs,
"act" input activations) is an append-only list of token entries in position
order. Which positions a store writes and a load reads is derived from the
point's cache scheme (`scheme_for(point.policy, point)`, the scheme the schedule
was built from), never guessed from the op sizes:

- prefill: a scheme that keeps `a` of the prompt as activations keeps the prefix
  `[0, a)` (hybrid), a scheme that keeps `c` as K,V keeps the last `c` prompt
  positions (hybrid, token-recompute, KVPR: its activations are the prefix below the
  split, its K,V the positions from the smallest split on);
- decode: the token at position `past` is stored as the scheme says (FlexGen's
  CPU attention appends it to the K,V list itself);
- a decode load at `past` reads: KVPR, the activations of the prefix `[0, l)`
  and the K,V of `[l, past)` (`l = split(past)`); token-recompute, the K,V of
  `[prefix, past)` and the token ids of `[0, prefix)`; HybridServe, per
  sequence, the positions of its K,V blocks as K,V and the rest as activations;
  every other scheme, every entry of the kind stored before `past`.

Every count is checked against the op's own size. Uniform schemes hold the same
positions for every sequence of a GPU batch: their lists are token-major
(`[entries, gbs, width]`), so a load or store is one contiguous copy.
HybridServe's sequences differ (a request's blocks sit in the K,V pool or the
activation pool): its lists are sequence-major (`[gbs, entries, width]`, each
request's blocks contiguous, as in HybridServe's block pools) and its loads pack
the sequences' entries one after another into the load slot (`packed`), so the
bytes moved are exactly the op's; executor sequence `s` of GPU batch `j` plays
request `groups[j][s]` of the scheme's mini-batching. Token ids ("tokens") are
indexed by position; the prompt is written before the run, and the LM head of
step `t` writes position `prompt + t`.

Weights: `WeightPlan` maps each `load_weights` op to the ranges of the layer's
flat vector it moves (the streamed part), sized from the op's `link_bytes`.

`host_hazards` checks that the schedule itself orders every host-cache read after
the op that wrote it (stream order plus `deps` plus `after`, transitively). The
executor adds no synchronisation, so a schedule that fails this check would read
stale host memory on a real GPU; the executor refuses to run it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..sim.policies.block import effective_point
from ..sim.policies.hybridserve import HybridServe, block_flags, form_mini_batches, kv_prefix_tokens
from ..sim.policies.kvpr import KVPR
from ..sim.policies.registry import scheme_for
from ..sim.policies.schemes import CacheScheme, TokenRecompute
from ..sim.schedule import Op, OpKind, Schedule, Stream
from ..sim.specs import ModelSpec, PointSpec
from .weights import LayerLayout

LOAD_CLASS = {OpKind.load_kv: "kv", OpKind.load_act: "act", OpKind.load_tokens: "tokens"}
STORE_CLASS = {OpKind.store_kv: "kv", OpKind.store_act: "act"}
CACHE_LOADS = (OpKind.load_kv, OpKind.load_act)
STREAMS = tuple(Stream)
ALL_SEQS = -1  # a token-major segment: every sequence of the GPU batch at once


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


@dataclass(frozen=True)
class Segment:
    """One contiguous copy: entries `[start, stop)` of sequence `seq`'s host list
    (`ALL_SEQS`: the token-major list of every sequence) and, on the device side, rows
    from `row` on (a load: rows of the load slot, tokens if token-major; a store: rows
    of the attention's new K,V / activation output)."""

    seq: int
    start: int
    stop: int
    row: int

    @property
    def n(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class CacheAccess:
    """What one `load_kv`/`load_act`/`store_kv`/`store_act` moves."""

    cls: str
    layer: int
    micro_batch: int
    segments: tuple[Segment, ...]
    #: position of each slot row (token-major: of each token; packed: of each row)
    positions: np.ndarray
    #: packed only: the sequence (within the GPU batch) of each slot row
    seqs: np.ndarray | None = None

    @property
    def packed(self) -> bool:
        return self.seqs is not None

    def rows(self, gbs: int) -> int:
        """Rows of `[.., width]` the access moves (token-major: tokens x sequences)."""
        return len(self.positions) if self.packed else len(self.positions) * gbs

    def row_index(self, gbs: int) -> tuple[np.ndarray, np.ndarray]:
        """(position, sequence) of every moved row, in the slot's flat order."""
        if self.packed:
            return self.positions, self.seqs
        return np.repeat(self.positions, gbs), np.tile(np.arange(gbs), len(self.positions))


@dataclass(frozen=True)
class WeightPlan:
    """Which parts of a layer's flat weight vector stay on the device and which each
    `load_weights` op streams. Both sides are compact: `resident` and `streamed` list
    flat ranges in flat order; a streamed element's slot (and host) index is its rank
    among the streamed elements."""

    numel: int
    resident: tuple[tuple[int, int], ...]
    streamed: tuple[tuple[int, int], ...]
    #: load_weights op id -> ranges of the compact streamed vector it copies
    copies: dict[int, tuple[tuple[int, int], ...]]
    #: parameter name -> pieces ("r" resident | "s" streamed, compact start, compact stop)
    pieces: dict[str, tuple[tuple[str, int, int], ...]]
    shapes: dict[str, tuple[int, ...]]

    @property
    def n_resident(self) -> int:
        return sum(b - a for a, b in self.resident)

    @property
    def n_streamed(self) -> int:
        return sum(b - a for a, b in self.streamed)


@dataclass
class ExecPlan:
    schedule: Schedule
    prompt_len: int
    gbs: int = 1
    #: HybridServe: sequence-major host lists and packed load slots
    packed: bool = False
    #: kv/act loads and stores
    access: dict[int, CacheAccess] = field(default_factory=dict)
    #: host entries of each token-id load and CPU attention
    ranges: dict[int, HostRange] = field(default_factory=dict)
    #: entries each host list needs to hold, by class
    capacity: dict[str, int] = field(default_factory=dict)
    #: rows (of `[.., width]`) the biggest load of a kind moves; token ids: tokens per sequence
    max_rows: dict[OpKind, int] = field(default_factory=dict)
    #: ops whose writers must precede them: op id -> writer op ids
    writers: dict[int, tuple[int, ...]] = field(default_factory=dict)
    #: every position each host list holds after the run: (layer, mb, cls) -> [(seq, positions)]
    held: dict[tuple[int, int, str], list[tuple[int, np.ndarray]]] = field(default_factory=dict)
    weights: WeightPlan | None = None

    def item(self, op: Op) -> int:
        """The builder's item index ((step, layer, micro-batch) in program order)."""
        meta = self.schedule.meta
        return (op.step * meta.layers + op.layer) * meta.num_gpu_batches + op.micro_batch

    def past(self, step: int) -> int:
        return self.prompt_len + step - 1

    # compatibility: positions of a load's tokens (token-major) or rows (packed)
    @property
    def positions(self) -> dict[int, tuple[int, ...]]:
        return {i: tuple(int(p) for p in a.positions) for i, a in self.access.items()
                if self.schedule.ops[i].kind in CACHE_LOADS}


def _total(op: Op) -> int:
    """Tokens an op moves over its whole GPU batch."""
    s = op.shape_dict
    return s["tokens"] * s.get("batch", 1)


def _hybridserve_flags(point: PointSpec, scheme: HybridServe) -> np.ndarray:
    """flags[j, s, p]: position `p` of sequence `s` of GPU batch `j` sits in a K,V block.

    Rebuilds the scheme's per-request block placement and mini-batches (the scheme
    keeps only their per-batch sums) and checks the sums equal the scheme's."""
    pol, wl = point.policy, point.workload
    final = wl.prompt_len + wl.gen_len - 1
    flags = block_flags(wl.batch, wl.prompt_len, wl.gen_len, pol.block_tokens, pol.kv_ratio)
    per_request = kv_prefix_tokens(flags, pol.block_tokens, final)
    groups = form_mini_batches(per_request[:, wl.prompt_len], pol.num_gpu_batches, pol.mini_batching)
    if not np.array_equal(np.stack([per_request[g].sum(axis=0) for g in groups]), scheme.kv):
        raise ValueError("hybridserve: the per-request block placement does not reproduce the scheme's counts")
    per_token = np.repeat(flags, pol.block_tokens, axis=1)[:, :final]
    return np.stack([per_token[g] for g in groups])


def _runs(entries: np.ndarray, rows: np.ndarray) -> list[tuple[int, int, int]]:
    """Split (entry, row) pairs into runs where both advance by one: (entry0, entry1, row0)."""
    out: list[tuple[int, int, int]] = []
    if len(entries) == 0:
        return out
    breaks = np.flatnonzero((np.diff(entries) != 1) | (np.diff(rows) != 1)) + 1
    for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(entries)], strict=True):
        out.append((int(entries[a]), int(entries[b - 1]) + 1, int(rows[a])))
    return out


class _Cache:
    """Where each position sits: the scheme's answers, per GPU batch and sequence."""

    def __init__(self, point: PointSpec, scheme: CacheScheme, prompt: int, gbs: int) -> None:
        self.scheme, self.prompt, self.gbs = scheme, prompt, gbs
        self.flags = _hybridserve_flags(point, scheme) if isinstance(scheme, HybridServe) else None

    @property
    def lanes(self) -> tuple[int, ...]:
        return tuple(range(self.gbs)) if self.flags is not None else (ALL_SEQS,)

    def prefill_store(self, cls: str, j: int, seq: int, per_seq: int) -> np.ndarray:
        if self.flags is not None:
            kv = self.flags[j, seq, :self.prompt]
            return np.flatnonzero(kv if cls == "kv" else ~kv)
        # activations keep the prefix, K,V the suffix
        return np.arange(per_seq) if cls == "act" else np.arange(self.prompt - per_seq, self.prompt)

    def decode_store(self, cls: str, j: int, seq: int, past: int) -> bool:
        if self.flags is not None:
            return bool(self.flags[j, seq, past]) == (cls == "kv")
        return True

    def load(self, cls: str, j: int, seq: int, past: int, written: np.ndarray) -> np.ndarray:
        """Positions a decode load of `cls` reads at `past` (`written`: positions stored so far)."""
        s = self.scheme
        if isinstance(s, KVPR):
            split = s.split(past)
            return np.arange(split) if cls == "act" else np.arange(split, past)
        if isinstance(s, TokenRecompute) and cls == "kv":
            return np.arange(s.token_id_tokens(past), past)
        if self.flags is not None:
            kv = self.flags[j, seq, :past]
            return np.flatnonzero(kv if cls == "kv" else ~kv)
        return written[written < past]  # kv-only, hybrid: every entry of the kind stored so far


def build_plan(schedule: Schedule, point: PointSpec) -> ExecPlan:
    """Host ranges of every cache op of `schedule`, built for `point` (as `build_schedule(point)`)."""
    meta = schedule.meta
    run = effective_point(point)
    cache = _Cache(run, scheme_for(run.policy, run), meta.prompt_len, meta.gpu_batch_size)
    gbs, prompt = meta.gpu_batch_size, meta.prompt_len
    plan = ExecPlan(schedule, prompt, gbs, packed=cache.flags is not None)

    # 1. every write to a host list: (layer, mb, cls, seq) -> [(position, writer op id)]
    written: dict[tuple[int, int, str, int], list[tuple[int, int]]] = {}
    store_writes: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}  # op -> [(seq, positions, rows)]
    for op in schedule.ops:
        j = op.micro_batch
        if op.kind in STORE_CLASS:
            cls, total = STORE_CLASS[op.kind], _total(op)
            lanes = []
            for seq in cache.lanes:
                if op.step == 0:
                    per_seq = total // gbs if seq == ALL_SEQS else 0
                    pos = cache.prefill_store(cls, j, seq, per_seq)
                    rows = pos
                else:
                    past = plan.past(op.step)
                    keep = cache.decode_store(cls, j, seq, past)
                    pos = np.array([past] if keep else [], dtype=np.int64)
                    rows = np.zeros(len(pos), dtype=np.int64)
                if len(pos):
                    lanes.append((seq, pos, rows))
                    written.setdefault((op.layer, j, cls, seq), []).extend((int(p), op.id) for p in pos)
            moved = sum(len(p) * (gbs if s == ALL_SEQS else 1) for s, p, _ in lanes)
            if moved != total:
                raise ValueError(f"{op.label}: the scheme stores {moved} tokens, the op moves {total}")
            store_writes[op.id] = lanes
        elif op.kind is OpKind.cpu_attention:
            written.setdefault((op.layer, j, "kv", ALL_SEQS), []).append((plan.past(op.step), op.id))
    positions_of: dict[tuple[int, int, str, int], np.ndarray] = {}
    writer_of: dict[tuple[int, int, str, int], np.ndarray] = {}
    for key, entries in written.items():
        entries.sort()
        pos = np.array([p for p, _ in entries], dtype=np.int64)
        if len(np.unique(pos)) != len(pos):
            raise ValueError(f"host {key[2]} of layer {key[0]} mb {key[1]}: a position is stored twice")
        positions_of[key], writer_of[key] = pos, np.array([w for _, w in entries], dtype=np.int64)
        plan.capacity[key[2]] = max(plan.capacity.get(key[2], 0), len(pos))
        plan.held.setdefault(key[:3], []).append((key[3], pos))
    lm_heads = {(op.step, op.micro_batch): op.id for op in schedule.ops if op.kind is OpKind.lm_head}
    empty = np.zeros(0, dtype=np.int64)

    # 2. every read, and where each store lands
    for op in schedule.ops:
        j = op.micro_batch
        if op.kind is OpKind.load_tokens:
            tokens = op.shape_dict["tokens"]
            plan.max_rows[op.kind] = max(plan.max_rows.get(op.kind, 0), tokens)
            plan.ranges[op.id] = HostRange("tokens", -1, j, 0, tokens)
            plan.writers[op.id] = tuple(lm_heads[(p - prompt, j)]
                                        for p in range(prompt, tokens) if (p - prompt, j) in lm_heads)
        elif op.kind in CACHE_LOADS:
            cls, past = LOAD_CLASS[op.kind], plan.past(op.step)
            segments, positions, seqs, writers = [], [], [], []
            row = 0
            for seq in cache.lanes:
                key = (op.layer, j, cls, seq)
                have = positions_of.get(key, empty)
                want = cache.load(cls, j, seq, past, have)
                entries = np.searchsorted(have, want)
                ok = entries < len(have)
                if not ok.all() or not (have[entries] == want).all() or (want >= past).any():
                    missing = sorted(set(want.tolist()) - set(have[have < past].tolist()))
                    raise ValueError(f"{op.label}: reads {cls} of position(s) {missing[:5]} never stored before it")
                for a, b, _ in _runs(entries, np.arange(len(entries))):
                    segments.append(Segment(seq, a, b, row))
                    row += b - a
                positions.append(want)
                seqs.append(np.full(len(want), seq, dtype=np.int64))
                writers.extend(int(w) for w in writer_of.get(key, empty)[entries])
            pos = np.concatenate(positions) if positions else empty
            acc = CacheAccess(cls, op.layer, j, tuple(segments), pos,
                              np.concatenate(seqs) if plan.packed else None)
            if acc.rows(gbs) != _total(op):
                raise ValueError(f"{op.label}: the scheme loads {acc.rows(gbs)} tokens, the op moves {_total(op)}")
            plan.access[op.id] = acc
            plan.max_rows[op.kind] = max(plan.max_rows.get(op.kind, 0), acc.rows(gbs))
            plan.writers[op.id] = tuple(writers)
        elif op.kind is OpKind.cpu_attention:
            key = (op.layer, j, "kv", ALL_SEQS)
            pos = positions_of[key]
            here = int(np.searchsorted(pos, plan.past(op.step)))
            plan.ranges[op.id] = HostRange("kv", op.layer, j, 0, here + 1)
            plan.writers[op.id] = tuple(int(w) for w in writer_of[key][:here])
        elif op.kind in STORE_CLASS:
            cls = STORE_CLASS[op.kind]
            segments, positions, seqs = [], [], []
            for seq, pos, rows in store_writes[op.id]:
                entries = np.searchsorted(positions_of[(op.layer, j, cls, seq)], pos)
                segments += [Segment(seq, a, b, r) for a, b, r in _runs(entries, rows)]
                positions.append(pos)
                seqs.append(np.full(len(pos), seq, dtype=np.int64))
            plan.access[op.id] = CacheAccess(cls, op.layer, j, tuple(segments),
                                             np.concatenate(positions) if positions else empty,
                                             np.concatenate(seqs) if plan.packed and seqs else
                                             (empty if plan.packed else None))
    plan.weights = weight_plan(schedule, point.model)
    return plan


# ---------------------------------------------------------------------- weights


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _take(ranges: list[tuple[int, int]], n: int, from_end: bool) -> tuple[list, list]:
    """Split `ranges` (flat order) into (first total-n elements, last n elements)."""
    total = sum(b - a for a, b in ranges)
    cut = total - n if from_end else n
    head, tail, seen = [], [], 0
    for a, b in ranges:
        if seen + (b - a) <= cut:
            head.append((a, b))
        elif seen >= cut:
            tail.append((a, b))
        else:
            head.append((a, a + cut - seen))
            tail.append((a + cut - seen, b))
        seen += b - a
    return head, tail


def weight_plan(schedule: Schedule, m: ModelSpec) -> WeightPlan:
    """Which flat ranges each `load_weights` op streams, sized from its `link_bytes`.

    A layer keeps its first elements resident and streams its last `link_bytes /
    dtype_bytes` elements (all of them when nothing is kept on the device)."""
    layout = LayerLayout.of(m)
    p = m.dtype_bytes
    loads = [op for op in schedule.ops if op.kind is OpKind.load_weights]
    resident, streamed = _take([(0, layout.numel)], round(loads[0].link_bytes / p) if loads else 0,
                               from_end=True)
    resident, streamed = _merge(resident), _merge(streamed)

    def compact(ranges_in: list[tuple[int, int]], space: list[tuple[int, int]]) -> list[tuple[int, int]]:
        out, base = [], 0
        for a, b in space:
            for c, d in ranges_in:
                lo, hi = max(a, c), min(b, d)
                if lo < hi:
                    out.append((base + lo - a, base + hi - a))
            base += b - a
        return _merge(out)

    whole = tuple(compact(streamed, streamed))
    copies = {}
    for op in loads:
        if p * sum(b - a for a, b in whole) != op.link_bytes and op.link_bytes % p == 0:
            raise ValueError(f"{op.label}: moves {op.link_bytes} bytes, the streamed part has "
                             f"{p * sum(b - a for a, b in whole)}")
        copies[op.id] = whole
    pieces = {}
    for name, (off, shape) in layout.params.items():
        size = int(np.prod(shape))
        got = [("r", a, b) for a, b in compact([(off, off + size)], resident)]
        got += [("s", a, b) for a, b in compact([(off, off + size)], streamed)]
        # order the pieces by flat offset: map back through the spaces
        got.sort(key=lambda x: _flat_of(x, resident, streamed))
        pieces[name] = tuple(got)
    shapes = {name: shape for name, (_, shape) in layout.params.items()}
    return WeightPlan(layout.numel, tuple(resident), tuple(streamed), copies, pieces, shapes)


def _flat_of(piece: tuple[str, int, int], resident, streamed) -> int:
    """Flat offset of a compact piece's first element."""
    where, a, _ = piece
    base = 0
    for lo, hi in resident if where == "r" else streamed:
        if a < base + hi - lo:
            return lo + a - base
        base += hi - lo
    raise AssertionError(piece)


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
