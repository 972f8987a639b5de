"""Micro-benchmarks of what the executor does, on the device it runs on.

Each benchmark returns a DataFrame of raw timings (seconds per call):

- `copies`: host->device and device->host copies against size, pinned and
  pageable host memory (pinned needs CUDA; on the CPU backend both ends are
  ordinary memory and only pageable exists), each alone (`idle`), with the other
  direction copying at the same time (`duplex`) and with a decode GEMM running on
  the neighbour thread (`busy`);
- `device_copy`: device memory -> device memory (the rate of elementwise work);
- `gemm`: `F.linear` at the real (M, N, K) of every op kind of the benchmarked
  models, decode and prefill M values, alone (`idle`) and with a weight-sized copy
  running on the neighbour thread (`busy`);
- `attention`: the executor's attention (context concatenation + its attention
  kernel) against batch and context, decode (one new token, the past K,V cold) and
  prefill (causal);
- `cpu_attention`: FlexGen's host-side attention (fp32, host memory, the cache cold), as the
  executor runs it, alone and beside a copy;
  `bench_flexgen_cpu_attention` times FlexGen's own code of it step by step (not part of a profile);
- `launch`: the cost of one tiny kernel (launch overhead).

Intra-op threads are set the way the executor sets them, so the CPU rates are
the rates the executor's stream threads get.

Operands follow the executor's buffer life cycle, not a loop's: the executor reads
a host cache entry or a weight slot once, long after the copy that wrote it, so
its copies and GEMMs find their operands in memory, not in the last-level cache.
A benchmark that repeats one call on the same tensors measures the cache instead
(`hssim.validate.attribution` measures the difference in place). So each timed
call, and each call of a busy neighbour, takes the next slice of a `Sweep`: a
pool of operand copies larger than twice the last-level cache (`llc_bytes`), so
no call finds what it reads in the cache.

GEMMs, attention and host attention are timed interleaved (`timing.time_interleaved`):
their samples are taken in passes over all the shapes of a condition (attention: of a
batch), so a slow spell of a shared machine costs one sample of many shapes, not every
sample of a few.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..sim.specs import FFNKind, ModelSpec
from .device import executor_threads, require_torch
from .measure import attention_kernel
from .timing import busy_neighbour, time_interleaved, time_s

TORCH_DTYPE_NAMES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


@dataclass(frozen=True)
class BenchPlan:
    """What to benchmark: the models whose shapes matter, and the grids."""

    models: tuple[ModelSpec, ...]
    dtype: str
    gemm_m: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    lm_head_m: tuple[int, ...] = (1, 2, 4, 8, 16)
    attn_batch: tuple[int, ...] = (1, 2, 4, 8)
    attn_context: tuple[int, ...] = (16, 64, 128, 256, 512)
    prefill_tokens: tuple[int, ...] = (16, 32, 64, 128)
    copy_bytes: tuple[int, ...] = tuple(int(2**e) for e in range(12, 29, 2))
    min_total_s: float = 0.02


@dataclass
class BenchResults:
    backend: str
    dtype: str
    threads: int
    copies: pd.DataFrame
    device_copy: pd.DataFrame
    gemm: pd.DataFrame
    attention: pd.DataFrame
    cpu_attention: pd.DataFrame
    launch_s: float
    notes: list[str] = field(default_factory=list)


def gemm_shapes(m: ModelSpec) -> dict[str, tuple[int, int]]:
    """(N, K) of every weight GEMM of one layer (and the LM head), by name."""
    h, hk, f = m.hidden, m.kv_hidden, m.ffn
    up = f if m.ffn_kind is FFNKind.relu else 2 * f
    return {"qkv": (h + 2 * hk, h), "out": (h, h), "kv": (2 * hk, h), "ffn_up": (up, h), "ffn_down": (h, f),
            "lm_head": (m.vocab, h)}


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    torch = require_torch()
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _device(backend: str):
    torch = require_torch()
    return torch.device("cuda" if backend == "cuda" else "cpu")


def llc_bytes(backend: str) -> int:
    """The last-level cache the operands must not fit in: the GPU's L2 on CUDA
    (`torch.cuda.get_device_properties`), the largest CPU cache in sysfs on the CPU
    backend (32 MiB where the OS does not say)."""
    if backend == "cuda":
        return int(require_torch().cuda.get_device_properties(0).L2_cache_size)
    best = 0
    for idx in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (idx / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        with contextlib.suppress(ValueError):
            best = max(best, int(text.rstrip("KMG")) * unit)
    return best or 32 * 2**20


class Sweep:
    """`n` equal copies of a tensor in one allocation, handed out one after another (`next()`),
    so that together they exceed twice the last-level cache: each call's operand was last
    touched that many bytes ago."""

    def __init__(self, first, llc: int) -> None:
        nbytes = first.numel() * first.element_size()
        n = max(2, math.ceil(2 * llc / max(nbytes, 1)) + 1)
        pinned = first.device.type == "cpu" and first.is_pinned()
        block = first.new_empty((n, *first.shape), pin_memory=pinned)
        block.copy_(first.expand_as(block))
        self.pool = list(block.unbind(0))
        self.i = 0

    def next(self):
        self.i = (self.i + 1) % len(self.pool)
        return self.pool[self.i]


class Evictor:
    """Reads and writes a buffer of twice the last-level cache: afterwards nothing an op uses is
    cached on this core (its code paths and small tensors included), as after a layer's weights
    streamed through the caches."""

    def __init__(self) -> None:
        torch = require_torch()
        self.buf = torch.empty(2 * llc_bytes("cpu"), dtype=torch.uint8)

    def __call__(self) -> None:
        self.buf.add_(1)


def _empty(nbytes: int, device, pinned: bool = False, dtype=None):
    """`nbytes` of `dtype` elements (bytes where None). The executor copies tensors of the model's
    dtype, and on the CPU a copy's rate depends on it: a bf16 copy ran at 13 GB/s where a uint8
    copy of the same bytes ran at 8.6-10.2 GB/s, and slowed a GEMM beside it 1.6x against 1.3x."""
    torch = require_torch()
    dtype = dtype or torch.uint8
    n = max(1, nbytes // torch.empty((), dtype=dtype).element_size())
    return torch.empty(n, dtype=dtype, device=device, pin_memory=pinned)


def _copy_sweep(src: Sweep, dst: Sweep) -> Callable[[], object]:
    return lambda: dst.next().copy_(src.next(), non_blocking=True)


def _neighbour_matmul(backend: str, dtype, nk: tuple[int, int], llc: int, m: int = 8) -> Callable[[], object]:
    """A decode GEMM of the benchmarked model's largest streamed weight, its weights cold."""
    torch = require_torch()
    a = torch.randn(m, nk[1], dtype=dtype, device=_device(backend))
    w = Sweep(torch.randn(*nk, dtype=dtype, device=_device(backend)) * 0.02, llc)
    return lambda: torch.nn.functional.linear(a, w.next())


def _neighbour_copy(backend: str, nbytes: int, llc: int, dtype) -> Callable[[], object]:
    """A host -> device copy of one layer's streamed weights (in the model's dtype, as the executor
    copies them), source and destination cold."""
    return _copy_sweep(Sweep(_empty(nbytes, "cpu", backend == "cuda", dtype), llc),
                       Sweep(_empty(nbytes, _device(backend), dtype=dtype), llc))


def _alone_and_beside_a_copy(backend: str, plan: BenchPlan, dtype, llc: int | None) -> dict[str, Callable | None]:
    """The conditions compute kernels are timed in: alone (`idle`) and with a copy of a layer's
    weights (at most twice the last-level cache per call) looping on the neighbour thread (`busy`)."""
    llc = llc_bytes(backend) if llc is None else llc
    _, layer = neighbour_shapes(plan.models)
    return {"idle": None, "busy": _neighbour_copy(backend, min(layer, 2 * llc), llc, dtype)}


def neighbour_shapes(models: tuple[ModelSpec, ...]) -> tuple[tuple[int, int], int]:
    """(N, K) of the largest weight GEMM and the bytes of the largest layer: what a stream's neighbour moves."""
    best = max(((nk, nk[0] * nk[1]) for m in models for name, nk in gemm_shapes(m).items() if name != "lm_head"),
               key=lambda t: t[1])[0]
    return best, int(max(m.weight_bytes_per_layer for m in models))


def bench_copies(backend: str, plan: BenchPlan, dtype, llc: int | None = None) -> pd.DataFrame:
    """Copy time by direction, host memory, condition and size; every operand cold (`Sweep`)."""
    dev = _device(backend)
    llc = llc_bytes(backend) if llc is None else llc
    kinds = ["pinned", "pageable"] if backend == "cuda" else ["pageable"]
    nk, _ = neighbour_shapes(plan.models)
    mm = _neighbour_matmul(backend, dtype, nk, llc)
    rows = []
    for memory in kinds:
        pin = memory == "pinned"
        for nbytes in plan.copy_bytes:
            host, other = (Sweep(_empty(nbytes, "cpu", pin, dtype), llc) for _ in range(2))
            gpu, gpu2 = (Sweep(_empty(nbytes, dev, dtype=dtype), llc) for _ in range(2))
            h2d, d2h = _copy_sweep(host, gpu), _copy_sweep(gpu2, other)
            conditions: dict[str, dict[str, Callable | None]] = {
                "idle": {"h2d": None, "d2h": None},
                "duplex": {"h2d": d2h, "d2h": h2d},
                "busy": {"h2d": mm, "d2h": mm},
            }
            for cond, neighbours in conditions.items():
                for direction, fn in (("h2d", h2d), ("d2h", d2h)):
                    with busy_neighbour(neighbours[direction], backend):
                        t = time_s(fn, backend, plan.min_total_s)
                    rows.append({"direction": direction, "memory": memory, "condition": cond,
                                 "bytes": nbytes, "seconds": t})
            del host, other, gpu, gpu2
    return pd.DataFrame(rows)


def bench_device_copy(backend: str, plan: BenchPlan, dtype=None) -> pd.DataFrame:
    """Device memory -> device memory, in the model's dtype (the elementwise ops' rate)."""
    dev = _device(backend)
    rows = []
    for nbytes in plan.copy_bytes:
        a, b = _empty(nbytes, dev, dtype=dtype), _empty(nbytes, dev, dtype=dtype)
        moved = a.numel() * a.element_size()
        # a copy reads and writes: the bytes an elementwise op moves are 2 x nbytes
        rows.append({"bytes": 2 * moved, "seconds": time_s(lambda a=a, b=b: b.copy_(a), backend, plan.min_total_s)})
    return pd.DataFrame(rows)


def bench_gemm(backend: str, plan: BenchPlan, dtype, llc: int | None = None) -> pd.DataFrame:
    """`F.linear` time by shape and condition; weights cold (`Sweep`), as a streamed slot is."""
    torch = require_torch()
    F = torch.nn.functional
    dev = _device(backend)
    shapes: dict[tuple[int, int], tuple[bool, tuple[int, ...]]] = {}
    for m in plan.models:
        for name, nk in gemm_shapes(m).items():
            ms = plan.lm_head_m if name == "lm_head" else plan.gemm_m
            bias = m.bias and name != "lm_head"
            old = shapes.get(nk, (bias, ()))
            shapes[nk] = (bias, tuple(sorted(set(old[1]) | set(ms))))
    llc = llc_bytes(backend) if llc is None else llc
    conditions = _alone_and_beside_a_copy(backend, plan, dtype, llc)
    calls = []
    for (n, k), (bias, ms) in shapes.items():
        w = Sweep(torch.randn(n, k, dtype=dtype, device=dev) * 0.02, llc)
        b = torch.zeros(n, dtype=dtype, device=dev) if bias else None
        for mrows in ms:
            x = torch.randn(mrows, k, dtype=dtype, device=dev)
            calls.append(({"m": mrows, "n": n, "k": k}, lambda x=x, w=w, b=b: F.linear(x, w.next(), b)))
    rows = []
    for cond, neighbour in conditions.items():
        with busy_neighbour(neighbour, backend):  # every shape's samples spread over the whole condition
            times = time_interleaved([fn for _, fn in calls], backend, plan.min_total_s)
        rows += [{"condition": cond, **shape, "seconds": t} for (shape, _), t in zip(calls, times, strict=True)]
    return pd.DataFrame(rows)


def attention_features(batch: int, heads: int, kv_hidden: int, hidden: int, new: int, context: int,
                       dtype_bytes: int) -> dict[str, float]:
    """What an attention call touches: context K,V bytes and score/value FLOPs."""
    pairs = new * (context - new) + new * (new + 1) // 2
    return {"kv_bytes": float(batch * context * 2 * kv_hidden * dtype_bytes),
            "flops": float(4 * batch * pairs * hidden), "rows": float(batch * heads * new)}


def bench_attention(backend: str, plan: BenchPlan, dtype, llc: int | None = None) -> pd.DataFrame:
    """The executor's attention (context concatenation + kernel) by shape, alone (`idle`) and with
    a weight-sized copy running on the neighbour thread (`busy`), as GEMMs are: in the executor
    the attention of a layer runs while the next layer's weights and cache are copied."""
    torch = require_torch()
    dev = _device(backend)
    p = torch.empty((), dtype=dtype).element_size()
    llc = llc_bytes(backend) if llc is None else llc
    conditions = _alone_and_beside_a_copy(backend, plan, dtype, llc)
    rows = []
    seen = set()
    for m in plan.models:
        key = (m.hidden, m.heads, m.kv_heads)
        if key in seen:
            continue
        seen.add(key)
        attend = attention_kernel(m)
        h, hk2 = m.hidden, 2 * m.kv_hidden
        for b in plan.attn_batch:
            calls = []
            for ctx in plan.attn_context:
                q = torch.randn(1, b, h, dtype=dtype, device=dev)
                # the past K,V is a load slot the executor filled long before (weights streamed
                # through the caches since): cold; the new token's Q, K, V were just computed: warm
                past = Sweep(torch.randn(ctx - 1, b, hk2, dtype=dtype, device=dev), llc)
                kv = torch.randn(1, b, hk2, dtype=dtype, device=dev)
                fn = lambda q=q, past=past, kv=kv, attend=attend: attend(q, torch.cat((past.next(), kv)))  # noqa: E731
                calls.append(({"phase": "decode", "new": 1, "context": ctx,
                               **attention_features(b, m.heads, m.kv_hidden, h, 1, ctx, p)}, fn))
            for new in plan.prefill_tokens:  # Q, K, V just computed by the op's QKV GEMM: warm
                q = torch.randn(new, b, h, dtype=dtype, device=dev)
                kv = torch.randn(new, b, hk2, dtype=dtype, device=dev)
                calls.append(({"phase": "prefill", "new": new, "context": new,
                               **attention_features(b, m.heads, m.kv_hidden, h, new, new, p)},
                              lambda q=q, kv=kv, attend=attend: attend(q, kv)))
            for cond, neighbour in conditions.items():
                with busy_neighbour(neighbour, backend):
                    times = time_interleaved([fn for _, fn in calls], backend, plan.min_total_s)
                rows += [{"condition": cond, "batch": b, "hidden": h, "heads": m.heads, "kv_heads": m.kv_heads,
                          **features, "seconds": t} for (features, _), t in zip(calls, times, strict=True)]
    return pd.DataFrame(rows)


def bench_cpu_attention(backend: str, plan: BenchPlan, dtype, llc: int | None = None) -> pd.DataFrame:
    """FlexGen's host attention as the executor runs it (`hw/runner.py` `_cpu_attention`): append the
    new token's K,V to the host cache, attend in fp32 over it, write the result for the load back.
    The cache is cold (a host cache entry was last written a step before, layers of weights ago); the
    new Q, K, V are warm (just stored). Alone (`idle`) and beside a copy of a layer's weights on
    the neighbour thread (`busy`): in the executor the host attention runs while the next layer's
    weights are loaded."""
    torch = require_torch()
    llc = llc_bytes("cpu") if llc is None else llc
    conditions = _alone_and_beside_a_copy(backend, plan, dtype, llc if backend == "cpu" else None)
    rows = []
    seen = set()
    for m in plan.models:
        if (m.hidden, m.heads, m.kv_heads) in seen:
            continue
        seen.add((m.hidden, m.heads, m.kv_heads))
        attend = attention_kernel(m)
        h, hk2 = m.hidden, 2 * m.kv_hidden
        p = torch.empty((), dtype=dtype).element_size()
        for b in plan.attn_batch:
            calls = []
            for ctx in plan.attn_context:
                qkv = torch.randn(b, h + hk2, dtype=dtype)
                cache = Sweep(torch.randn(ctx, b, hk2, dtype=dtype), llc)
                out = torch.empty(b, h, dtype=dtype)

                def fn(qkv=qkv, cache=cache, out=out, attend=attend, h=h):
                    kv = cache.next()
                    kv[-1].copy_(qkv[:, h:])
                    out.copy_(attend(qkv[None, :, :h].float(), kv.float())[0])

                calls.append(({"batch": b, "hidden": h, "heads": m.heads, "kv_heads": m.kv_heads, "context": ctx,
                               **attention_features(b, m.heads, m.kv_hidden, h, 1, ctx, p)}, fn))
            for cond, neighbour in conditions.items():
                with busy_neighbour(neighbour, backend):
                    times = time_interleaved([fn for _, fn in calls], "cpu", plan.min_total_s)
                rows += [{"condition": cond, **features, "seconds": t}
                         for (features, _), t in zip(calls, times, strict=True)]
    return pd.DataFrame(rows)


def flexgen_cpu_attention_step_fns(batch: int, heads: int, head_dim: int,
                                   context: int) -> tuple[dict[str, Callable], dict[str, object]]:
    """FlexGen 0.1.8's CPU attention, one callable per step, on the host (see
    `sim.costs.cpu_attention`): the code of `flex_opt.py` `SelfAttention.load_cache` (path 1) and
    `pytorch_backend.py` `TorchDevice.mha_gen` (branch `not k.is_cuda`), `_attention_weights` and
    `_attention_value`, with the GPU tensors (q, the new K and V) already on the host.
    Returns the steps by name and the tensors they work on."""
    torch = require_torch()
    import torch.nn.functional as F

    b, n, d, s = batch, heads, head_dim, context
    bn = b * n
    k_home = torch.randn(s, bn, d, dtype=torch.float16)  # fp16 host cache, unpinned
    v_home = torch.randn(s, bn, d, dtype=torch.float16)
    k_buf = torch.empty(s, bn, d, dtype=torch.float32)  # the fp32 workspace
    v_buf = torch.empty(s, bn, d, dtype=torch.float32)
    q16 = torch.randn(bn, 1, d, dtype=torch.float16)
    k_new = torch.randn(1, bn, d, dtype=torch.float16)
    v_new = torch.randn(1, bn, d, dtype=torch.float16)
    mask = torch.ones(b, s, dtype=torch.bool)
    idx = (slice(0, s - 1), slice(0, bn))
    k, v = k_buf[:s], v_buf[:s]
    kp = k.permute(1, 2, 0).reshape(bn, d, s)  # a view: strides (d, 1, bn*d)
    vp = v.permute(1, 0, 2).reshape(bn, s, d)
    state: dict[str, object] = {}

    def cast():
        k_buf[idx].copy_(k_home[idx])
        v_buf[idx].copy_(v_home[idx])

    def new_token():
        k[s - 1:s] = k_new
        v[s - 1:s] = v_new
        state["q"] = q16.float()

    def bmm_qk():
        state["w"] = torch.bmm(state["q"], kp)

    def mask_():
        state["m"] = torch.where(mask.view(b, 1, 1, s), state["w"].view(b, n, 1, s), -1e4).view(bn, 1, s)

    def softmax():
        state["p"] = F.softmax(state["m"], dim=2)

    def bmm_av():
        state["out"] = torch.bmm(state["p"], vp)
        return state["out"]

    fns = {"cast": cast, "new_token": new_token, "bmm_qk": bmm_qk, "mask": mask_, "softmax": softmax,
           "bmm_av": bmm_av}
    for fn in fns.values():  # one pass, so that each step's inputs exist
        fn()
    return fns, {"k_home": k_home, "v_home": v_home, "k_new": k_new, "v_new": v_new, "q": q16}


def _min_time_s(fn: Callable[[], object], min_total_s: float, rounds: int = 7) -> float:
    """Fastest of `rounds` timed calls after a warm-up: on a shared machine the minimum is the
    run least disturbed by other processes."""
    fn()
    best, spent, calls = math.inf, 0.0, 0
    while calls < rounds or spent < min_total_s:
        t0 = time.perf_counter()
        fn()
        took = time.perf_counter() - t0
        best, spent, calls = min(best, took), spent + took, calls + 1
    return best


def bench_flexgen_cpu_attention(shapes: tuple[tuple[int, int, int, int], ...], threads: int,
                                min_total_s: float = 0.2, rounds: int = 7) -> pd.DataFrame:
    """Seconds per call of each step of FlexGen's CPU attention at `threads` intra-op threads,
    one row per (batch, heads, head_dim, context, step), with the step's units and bytes."""
    from ..sim.costs.cpu_attention import flexgen_cpu_attention_steps

    torch = require_torch()
    rows = []
    with _threads(threads), torch.inference_mode():
        for b, n, d, s in shapes:
            fns, _ = flexgen_cpu_attention_step_fns(b, n, d, s)
            for step in flexgen_cpu_attention_steps(b, n, d, s):
                rows.append({"threads": threads, "batch": b, "heads": n, "head_dim": d, "context": s,
                             "step": step.name, "units": step.units, "host_bytes": step.host_bytes,
                             "seconds": _min_time_s(fns[step.name], min_total_s, rounds)})
    return pd.DataFrame(rows)


def bench_host_copy_Bps(threads: int, nbytes: int = 512 * 2**20) -> float:
    """Host DRAM rate of a large fp32 copy at `threads` threads (bytes read + written per second)."""
    torch = require_torch()
    src = torch.randn(nbytes // 4)
    dst = torch.empty_like(src)
    with _threads(threads):
        return 2 * nbytes / time_s(lambda: dst.copy_(src), "cpu", 0.5, rounds=5)


def bench_launch(backend: str) -> float:
    torch = require_torch()
    x = torch.zeros(1, device=_device(backend))
    return time_s(lambda: x.add_(1.0), backend, 0.02, max_iters=2000)


def run_microbenchmarks(backend: str, plan: BenchPlan, progress: Callable[[str], None] | None = None) -> BenchResults:
    """Every micro-benchmark of `plan` on `backend`, with the executor's thread count."""
    torch = require_torch()
    dtype = getattr(torch, TORCH_DTYPE_NAMES[plan.dtype])
    say = progress or (lambda _msg: None)
    threads = executor_threads(backend)
    np.random.seed(0)
    torch.manual_seed(0)
    with _threads(threads), torch.inference_mode():
        say("launch overhead")
        launch = bench_launch(backend)
        say("copies")
        copies = bench_copies(backend, plan, dtype)
        say("device memory")
        dcopy = bench_device_copy(backend, plan, dtype)
        say("GEMMs")
        gemm = bench_gemm(backend, plan, dtype)
        say("attention")
        attn = bench_attention(backend, plan, dtype)
    # FlexGen's CPU attention runs on the host with the host's threads (all of them next to a GPU)
    with _threads(threads if backend == "cpu" else torch.get_num_threads()), torch.inference_mode():
        say("CPU attention")
        cpu_attn = bench_cpu_attention(backend, plan, dtype)
    notes = []
    if backend == "cpu":
        notes.append("CPU backend: host and 'device' are the same memory; pinned memory needs CUDA, so only "
                     "pageable copies exist and the profile uses them for both")
    return BenchResults(backend, plan.dtype, threads, copies, dcopy, gemm, attn, cpu_attn, launch, notes)
