"""FlexGen's CPU attention, step by step: the work of each step and its price on a host CPU.

The steps follow FlexGen 0.1.8 as it runs a decode step with the cache on the host
(`--cpu-cache-compute`), per layer and GPU batch of `b` sequences, `n` heads of `d`,
over `s` tokens (the new one included), N = b*n*d values per token:

1. `cast`: `flex_opt.py` `SelfAttention.load_cache` path 1: `general_copy` of the fp16 K and V
   of the `s-1` past tokens into the fp32 workspace (`init_attention_compute_workspace`), a
   converting copy: read 2 B, write 4 B per value;
2. `new_token`: `pytorch_backend.py` `TorchDevice.mha_gen`: `k[src_s-1:src_s] = k_new` (and V)
   into the fp32 workspace, and `q.float().cpu()`;
3. `bmm_qk`: `_attention_weights`: `torch.bmm(q, k)` over K permuted to (b*n, d, s) (a strided
   view, no copy), fp32: 2*N*s FLOPs, reads 4*N*s B;
4. `mask`: `torch.where(mask, attn_weights, -1e4)` over (b, n, 1, s) fp32: a new tensor;
5. `softmax`: `F.softmax(attn_weights, dim=2)`, fp32: a new tensor;
6. `bmm_av`: `_attention_value`: `torch.bmm(attn_weights, v)` over V permuted to (b*n, s, d):
   2*N*s FLOPs, reads 4*N*s B.

Each step's time on a host is `max(units x per-thread seconds per unit / threads, bytes / DRAM
rate)`: the per-thread rate of that code comes from this project's micro-benchmark of it
(`benchmarks/bench_flexgen_cpu_attention.py`, results in
`benchmarks/results/flexgen_cpu_attention.md`), it scales linearly with the threads PyTorch
uses (one per physical core, its default) until the host's sustained DRAM bandwidth caps it.
The rule was checked by running the benchmark at 1 and 2 threads (same results file).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..specs import HardwareSpec

FP16, FP32 = 2, 4


@dataclass(frozen=True, slots=True)
class CPUStep:
    """One step of FlexGen's CPU attention: `units` of its kind of work (values or FLOPs),
    the host-memory bytes it moves and its FLOPs."""

    name: str
    units: float
    host_bytes: float
    flops: float


#: per-thread seconds per unit of each step (values for cast / new_token / mask / softmax,
#: FLOPs for the two bmm's), measured at 1 thread by `benchmarks/bench_flexgen_cpu_attention.py`
#: on an AMD EPYC virtual core (AVX-512) with PyTorch 2.13.0, the fastest of at least 15 calls on
#: a quiet machine (load average 0.9 on 2 cores); the same run checks the 2-thread rule (-4.6%
#: over its shapes): benchmarks/results/flexgen_cpu_attention.md
PER_THREAD_S_PER_UNIT: dict[str, float] = {
    "cast": 2.208e-10,
    "new_token": 9.365e-11,
    "bmm_qk": 2.593e-10,
    "mask": 6.535e-10,
    "softmax": 6.437e-10,
    "bmm_av": 2.104e-10,
}


@lru_cache(maxsize=65536)
def flexgen_cpu_attention_steps(batch: int, heads: int, head_dim: int, context: int,
                                kv_heads: int | None = None) -> tuple[CPUStep, ...]:
    """The steps of one decode-step attention over `context` tokens (the new one included).
    FlexGen's code is multi-head (OPT); `kv_heads < heads` (GQA) shrinks the K,V read, not the FLOPs."""
    b, n, d, s = batch, heads, head_dim, context
    nd = b * n * d  # query values; FLOPs per token of each bmm are 2 * nd
    kd = b * (kv_heads or n) * d  # values of K (or V) per token
    scores = b * n * s
    past = max(s - 1, 0)
    return (
        CPUStep("cast", 2 * kd * past, 2 * kd * past * (FP16 + FP32), 0.0),
        CPUStep("new_token", 2 * kd + nd, (2 * kd + nd) * (FP16 + FP32), 0.0),
        CPUStep("bmm_qk", 2 * nd * s, kd * s * FP32 + nd * FP32 + scores * FP32, 2 * nd * s),
        CPUStep("mask", scores, 2 * scores * FP32 + b * s, scores),
        CPUStep("softmax", scores, 2 * scores * FP32, 5 * scores),
        CPUStep("bmm_av", 2 * nd * s, kd * s * FP32 + scores * FP32 + nd * FP32, 2 * nd * s),
    )


def step_time_s(step: CPUStep, threads: int, dram_Bps: float, per_unit_s: dict[str, float] | None = None) -> float:
    """One step: the per-thread work spread over `threads`, at least its bytes at the DRAM rate."""
    rate = (per_unit_s or PER_THREAD_S_PER_UNIT)[step.name]
    return max(step.units * rate / threads, step.host_bytes / dram_Bps)


def flexgen_cpu_attention_s(hw: HardwareSpec, batch: int, heads: int, head_dim: int, context: int,
                            kv_heads: int | None = None) -> float:
    """FlexGen's CPU attention on `hw`'s host: every step, one after the other (each is one
    blocking PyTorch call on the host thread)."""
    steps = flexgen_cpu_attention_steps(batch, heads, head_dim, context, kv_heads)
    # `attention_speed` scales the measured per-thread rates (the sensitivity analysis varies it)
    return sum(step_time_s(st, hw.cpu.cores * hw.cpu.attention_speed, hw.host.memory_Bps) for st in steps)
