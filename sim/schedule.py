"""The schedule IR: the contract between policies, the simulator and the executors.

A `Schedule` is a DAG of `Op`s. Each op runs on one stream; ops of one stream run in
list order (like work queued on a CUDA stream); `deps` are data dependencies (the
op consumes their output) and `after` are ordering-only dependencies (a buffer may
be overwritten, a barrier). Both executors honour both; memory accounting uses
only `deps` to decide when a buffer dies: at the end of its last consumer, or at the
start of a consumer that overwrites it in place (`IN_PLACE_KINDS`).

Policies build schedules; they never run them. Everything here is plain data.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import NamedTuple

import numpy as np


class Stream(str, Enum):
    compute = "compute"
    h2d = "h2d"
    d2h = "d2h"
    cpu = "cpu"


class OpKind(str, Enum):
    # host -> GPU
    load_weights = "load_weights"
    load_kv = "load_kv"
    load_act = "load_act"
    load_tokens = "load_tokens"
    load_attn_out = "load_attn_out"
    # GPU -> host
    store_kv = "store_kv"
    store_act = "store_act"
    store_qkv = "store_qkv"
    # GPU compute
    attention = "attention"  # LN, QKV projection, attention over the context, out projection
    qkv_proj = "qkv_proj"  # LN and QKV projection only (CPU-attention variant)
    out_proj = "out_proj"  # output projection only (CPU-attention variant)
    ffn = "ffn"  # LN and the feed-forward block
    recompute_kv = "recompute_kv"  # LN(x) . [W_K W_V] for activation-held tokens
    recompute_layer = "recompute_layer"  # whole-layer forward of token-recompute tokens
    lm_head = "lm_head"
    # CPU compute
    cpu_attention = "cpu_attention"


LINK_KINDS = frozenset(
    {
        OpKind.load_weights, OpKind.load_kv, OpKind.load_act, OpKind.load_tokens,
        OpKind.load_attn_out, OpKind.store_kv, OpKind.store_act, OpKind.store_qkv,
    }
)

#: kinds whose output overwrites, in place, the output of a producer of the same kind that
#: they read: a token-recompute re-run writes the prefix's hidden state over its input
#: (hw/runner.py `_recompute_layer`, `prefix.copy_(y)`), so the input is dead once it starts
IN_PLACE_KINDS = frozenset({OpKind.recompute_layer})

#: the stream every kind runs on
KIND_STREAM: dict[OpKind, Stream] = {
    **{k: Stream.h2d for k in LINK_KINDS if k.value.startswith("load")},
    **{k: Stream.d2h for k in LINK_KINDS if k.value.startswith("store")},
    OpKind.cpu_attention: Stream.cpu,
    **{
        k: Stream.compute
        for k in OpKind
        if k not in LINK_KINDS and k is not OpKind.cpu_attention
    },
}


class Op(NamedTuple):
    """One unit of work on one stream (immutable; a NamedTuple because schedules hold
    hundreds of thousands of them and a frozen dataclass is several times slower to build).

    step 0 is the prefill; step t >= 1 is the t-th decode step. `layer` is -1 for
    ops outside the layer stack (the LM head is layer == model.layers).
    Sizes: `link_bytes` cross host<->GPU; `hbm_bytes` are read/written in device
    memory by a kernel; `host_bytes` read/written in host memory by the CPU;
    `gpu_bytes` is the buffer the op's output occupies on the GPU until its last
    consumer ends; `workspace_bytes` is scratch held only while the op runs;
    `host_alloc_bytes` is host memory the op's output keeps for good.
    """

    id: int
    stream: Stream
    kind: OpKind
    layer: int
    step: int
    micro_batch: int
    deps: tuple[int, ...] = ()
    after: tuple[int, ...] = ()
    link_bytes: int = 0
    flops: float = 0.0
    hbm_bytes: int = 0
    host_bytes: int = 0
    kernels: int = 0
    gpu_bytes: int = 0
    workspace_bytes: int = 0
    host_alloc_bytes: int = 0
    pinned: bool = True
    shape: tuple[tuple[str, int], ...] = ()

    @property
    def shape_dict(self) -> dict[str, int]:
        return dict(self.shape)

    @property
    def label(self) -> str:
        return f"{self.kind.value} L{self.layer} s{self.step} mb{self.micro_batch}"


@dataclass(frozen=True)
class MemoryItem:
    what: str
    bytes: int


@dataclass(frozen=True)
class MemoryPlan:
    """Peak GPU and host memory a schedule needs, itemised."""

    gpu: tuple[MemoryItem, ...]
    host: tuple[MemoryItem, ...]
    gpu_capacity_bytes: int
    host_capacity_bytes: int

    @property
    def gpu_bytes(self) -> int:
        return sum(i.bytes for i in self.gpu)

    @property
    def host_bytes(self) -> int:
        return sum(i.bytes for i in self.host)

    @property
    def fits(self) -> bool:
        return (
            self.gpu_bytes <= self.gpu_capacity_bytes
            and self.host_bytes <= self.host_capacity_bytes
        )


@dataclass(frozen=True)
class ScheduleMeta:
    model: str
    hardware: str
    policy: str
    layers: int
    batch: int
    gpu_batch_size: int
    num_gpu_batches: int
    prompt_len: int
    gen_len: int


#: the fields of an `Op` that say what it is and how big, in `Op` order (everything but
#: id, layer, step, micro-batch and dependencies): ops that share them share a payload
PAYLOAD_FIELDS = (
    "stream", "kind", "link_bytes", "flops", "hbm_bytes", "host_bytes", "kernels", "gpu_bytes",
    "workspace_bytes", "host_alloc_bytes", "pinned", "shape",
)
_STREAMS = tuple(Stream)
_STREAM_CODE = {s: i for i, s in enumerate(_STREAMS)}


def payload_of(op: Op) -> tuple:
    """The payload of an op: `PAYLOAD_FIELDS` as a tuple."""
    return (op.stream, op.kind) + tuple(op[8:])


def _csr(lists: Sequence[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """(ptr, idx) of a list of int tuples: list i is idx[ptr[i]:ptr[i + 1]]."""
    lens = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    ptr = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lens, out=ptr[1:])
    idx = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64, count=int(ptr[-1]))
    return ptr, idx


def _tuples(ptr: np.ndarray, idx: np.ndarray) -> list[tuple[int, ...]]:
    """The int tuples of a CSR (ptr, idx) pair."""
    flat = idx.tolist()
    bounds = ptr.tolist()
    return [tuple(flat[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class Schedule:
    """A schedule: its metadata, its ops, its memory plan.

    Held as flat arrays: each op is a payload (what it is and how big; the few distinct
    payloads are stored once, `payloads`), an index into them (`payload`), its step, layer
    and micro-batch (`step_col`, `layer_col`, `mb_col`), and its deps and `after` lists as
    CSR index arrays (op i's deps are `deps_idx[deps_ptr[i]:deps_ptr[i + 1]]`, sorted).
    `ops` (and `deps`, `after`, `waits` as tuples) are views made on first use for the
    executors and for printing; replays, durations and metrics read the arrays. Build one
    from `ops`, or from arrays with `Schedule.from_arrays` (what the block builder does).
    """

    def __init__(self, meta: ScheduleMeta, ops: Iterable[Op] = (), memory: MemoryPlan | None = None,
                 gpu_static_bytes: int = 0, host_static_bytes: int = 0) -> None:
        ops = tuple(ops)
        index: dict[tuple, int] = {}
        payload = [index.setdefault(payload_of(op), len(index)) for op in ops]
        deps_ptr, deps_idx = _csr([op.deps for op in ops])
        after_ptr, after_idx = _csr([op.after for op in ops])
        self._init(meta, memory, gpu_static_bytes, host_static_bytes, tuple(index), payload,
                   [op.layer for op in ops], [op.step for op in ops], [op.micro_batch for op in ops],
                   deps_ptr, deps_idx, after_ptr, after_idx)
        self.__dict__["ops"] = ops

    @classmethod
    def from_arrays(cls, meta: ScheduleMeta, memory: MemoryPlan, payloads: Sequence[tuple], payload: np.ndarray,
                    layer: np.ndarray, step: np.ndarray, micro_batch: np.ndarray, deps_ptr: np.ndarray,
                    deps_idx: np.ndarray, after_ptr: np.ndarray, after_idx: np.ndarray,
                    gpu_static_bytes: int = 0, host_static_bytes: int = 0) -> Schedule:
        """A schedule from arrays: op i is `payloads[payload[i]]` at (layer[i], step[i],
        micro_batch[i]); its deps and `after` lists are CSR slices of sorted, earlier op ids."""
        self = cls.__new__(cls)
        self._init(meta, memory, gpu_static_bytes, host_static_bytes, tuple(payloads), payload, layer, step,
                   micro_batch, deps_ptr, deps_idx, after_ptr, after_idx)
        return self

    def _init(self, meta, memory, gpu_static_bytes, host_static_bytes, payloads, payload, layer, step,
              micro_batch, deps_ptr, deps_idx, after_ptr, after_idx) -> None:
        self.meta = meta
        self.memory = memory
        self.gpu_static_bytes = gpu_static_bytes
        self.host_static_bytes = host_static_bytes
        self.payloads = payloads
        self.payload_index = np.asarray(payload, dtype=np.int64)
        self.layer_col = np.asarray(layer, dtype=np.int64)
        self.step_col = np.asarray(step, dtype=np.int64)
        self.mb_col = np.asarray(micro_batch, dtype=np.int64)
        self.deps_ptr = np.asarray(deps_ptr, dtype=np.int64)
        self.deps_idx = np.asarray(deps_idx, dtype=np.int64)
        self.after_ptr = np.asarray(after_ptr, dtype=np.int64)
        self.after_idx = np.asarray(after_idx, dtype=np.int64)

    # -------------------------------------------------------------------- ops view
    @cached_property
    def deps(self) -> list[tuple[int, ...]]:
        """Per op: its data dependencies, as sorted tuples (a view of the CSR arrays)."""
        return _tuples(self.deps_ptr, self.deps_idx)

    @cached_property
    def after(self) -> list[tuple[int, ...]]:
        """Per op: its ordering-only dependencies, as sorted tuples."""
        return _tuples(self.after_ptr, self.after_idx)

    @cached_property
    def ops(self) -> tuple[Op, ...]:
        new = tuple.__new__
        pl = self.payloads
        return tuple(
            new(Op, (i, p[0], p[1], ly, st, mb, d, a) + p[2:])
            for i, (p, ly, st, mb, d, a) in enumerate(zip(
                (pl[x] for x in self.payload_index.tolist()), self.layer_col.tolist(), self.step_col.tolist(),
                self.mb_col.tolist(), self.deps,
                self.after, strict=True))
        )

    @cached_property
    def _by_stream(self) -> dict[Stream, tuple[Op, ...]]:
        by: dict[Stream, list[Op]] = {s: [] for s in Stream}
        for op in self.ops:
            by[op.stream].append(op)
        return {s: tuple(v) for s, v in by.items()}

    def stream_ops(self, stream: Stream) -> tuple[Op, ...]:
        return self._by_stream[stream]

    def __len__(self) -> int:
        return len(self.payload_index)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return (self.meta, self.memory, self.gpu_static_bytes, self.host_static_bytes, self.ops) == (
            other.meta, other.memory, other.gpu_static_bytes, other.host_static_bytes, other.ops)

    def __hash__(self) -> int:
        return hash((self.meta, len(self)))

    def __repr__(self) -> str:
        return f"Schedule(meta={self.meta!r}, ops=<{len(self)} ops>, memory={self.memory!r})"

    # -------------------------------------------------------------------- columns
    @cached_property
    def waits(self) -> list[tuple[int, ...]]:
        """Per op: everything it waits for (deps then after)."""
        return [d + a if a else d for d, a in zip(self.deps, self.after, strict=True)]

    @cached_property
    def stream_code(self) -> np.ndarray:
        """Per op: its stream's position in `Stream` (compute 0, h2d 1, d2h 2, cpu 3), as an array."""
        return self.payload_column(0, lambda s: _STREAM_CODE[s])[self.payload_index]

    def payload_column(self, field: int, of=None, dtype=np.int64) -> np.ndarray:
        """Field `field` of every distinct payload (`PAYLOAD_FIELDS` order), mapped by `of`."""
        values = (p[field] for p in self.payloads) if of is None else (of(p[field]) for p in self.payloads)
        return np.fromiter(values, dtype=dtype, count=len(self.payloads))

    @cached_property
    def in_place_code(self) -> np.ndarray:
        """Per payload: 0, or 1 + the index of its kind in `OpKind` when the kind is in
        `IN_PLACE_KINDS`. A data edge overwrites its producer's output in place when both
        ends have the same non-zero code."""
        kinds = tuple(OpKind)
        return self.payload_column(PAYLOAD_FIELDS.index("kind"),
                                   of=lambda k: kinds.index(k) + 1 if k in IN_PLACE_KINDS else 0)

    def in_place_edges(self) -> np.ndarray:
        """Per data edge (`data_edges` order): whether the consumer overwrites the producer's
        output in place, so the producer's output dies when the consumer starts."""
        src, dst = self.data_edges
        code = self.in_place_code[self.payload_index]
        return (code[src] == code[dst]) & (code[src] != 0)

    @cached_property
    def data_edges(self) -> tuple[np.ndarray, np.ndarray]:
        """(producer, consumer) op ids of every data dependency, as arrays."""
        dst = np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.deps_ptr))
        return self.deps_idx, dst

    def column(self, name: str, dtype=np.int64) -> np.ndarray:
        """One Op field of every op as an array (e.g. `gpu_bytes`), indexed by op id."""
        if name == "id":
            return np.arange(len(self), dtype=dtype)
        if name in ("layer", "step", "micro_batch"):
            col = {"layer": self.layer_col, "step": self.step_col, "micro_batch": self.mb_col}[name]
            return col.astype(dtype, copy=False)
        if name in PAYLOAD_FIELDS:
            return self.payload_column(PAYLOAD_FIELDS.index(name), dtype=dtype)[self.payload_index]
        idx = Op._fields.index(name)
        return np.fromiter((op[idx] for op in self.ops), dtype=dtype, count=len(self))

    @cached_property
    def _payload_counts(self) -> list[int]:
        """How many ops use each payload."""
        return np.bincount(self.payload_index, minlength=len(self.payloads)).tolist()

    def link_bytes(self, stream: Stream) -> int:
        return sum(p[2] * c for p, c in zip(self.payloads, self._payload_counts, strict=True) if p[0] is stream)

    def bytes_by_kind(self) -> dict[OpKind, int]:
        c: Counter[OpKind] = Counter()
        for p, n in zip(self.payloads, self._payload_counts, strict=True):
            if n:
                c[p[1]] += p[2] * n
        return dict(c)

    def validate(self) -> None:
        """Check the DAG: ids are positions, dependencies point backwards."""
        for i, op in enumerate(self.ops):
            if op.id != i:
                raise ValueError(f"op at position {i} has id {op.id}")
            for d in (*op.deps, *op.after):
                if not 0 <= d < i:
                    raise ValueError(f"{op.label} depends on op {d}, which is not earlier")
