"""The schedule IR: the contract between policies, the simulator and the executors.

A `Schedule` is a DAG of `Op`s. Each op runs on one stream; ops of one stream run in
list order (like work queued on a CUDA stream); `deps` are data dependencies (the
op consumes their output) and `after` are ordering-only dependencies (a buffer may
be overwritten, a barrier). Both executors honour both; memory accounting uses
only `deps` to decide when a buffer dies.

Policies build schedules; they never run them. Everything here is plain data.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
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

    def check(self, what: str = "") -> None:
        """Raise `MemoryPlanError` naming what does not fit, by how much."""
        from .memory import check_plan

        check_plan(self, what)

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


@dataclass(frozen=True)
class Schedule:
    meta: ScheduleMeta
    ops: tuple[Op, ...]
    memory: MemoryPlan
    #: GPU memory that is resident for the whole run (weights kept on the GPU, ...)
    gpu_static_bytes: int = 0
    #: host memory that is resident for the whole run (offloaded weights, the prompt's cache)
    host_static_bytes: int = 0
    _by_stream: dict[Stream, tuple[Op, ...]] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        by: dict[Stream, list[Op]] = {s: [] for s in Stream}
        for op in self.ops:
            by[op.stream].append(op)
        object.__setattr__(self, "_by_stream", {s: tuple(v) for s, v in by.items()})

    def stream_ops(self, stream: Stream) -> tuple[Op, ...]:
        return self._by_stream[stream]

    def __len__(self) -> int:
        return len(self.ops)

    @cached_property
    def waits(self) -> list[tuple[int, ...]]:
        """Per op: everything it waits for (deps then after)."""
        return [op.deps + op.after if op.after else op.deps for op in self.ops]

    @cached_property
    def data_edges(self) -> tuple[np.ndarray, np.ndarray]:
        """(producer, consumer) op ids of every data dependency, as arrays."""
        src = [d for op in self.ops for d in op.deps]
        dst = [op.id for op in self.ops for _ in op.deps]
        return np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)

    def column(self, name: str, dtype=np.int64) -> np.ndarray:
        """One Op field of every op as an array (e.g. `gpu_bytes`), indexed by op id."""
        idx = Op._fields.index(name)
        return np.fromiter((op[idx] for op in self.ops), dtype=dtype, count=len(self.ops))

    def link_bytes(self, stream: Stream) -> int:
        return sum(op.link_bytes for op in self._by_stream[stream])

    def bytes_by_kind(self) -> dict[OpKind, int]:
        c: Counter[OpKind] = Counter()
        for op in self.ops:
            c[op.kind] += op.link_bytes
        return dict(c)

    def validate(self) -> None:
        """Check the DAG: ids are positions, dependencies point backwards."""
        for i, op in enumerate(self.ops):
            if op.id != i:
                raise ValueError(f"op at position {i} has id {op.id}")
            for d in (*op.deps, *op.after):
                if not 0 <= d < i:
                    raise ValueError(f"{op.label} depends on op {d}, which is not earlier")
