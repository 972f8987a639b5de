"""The standard validation sets: each policy, several models scaled by layers, several batch and context sizes.

Sized per backend so that the whole `hssim validate` (calibration included)
stays within budget: `standard` under 8 minutes on an H100 and under 10 on a
2-core CPU; `quick` is the CI set (under a minute on 2 CPU cores).
On the CPU backend the models run in bf16 (the CPU has native bf16 GEMMs; fp16
is emulated there and would measure the emulation), on CUDA in their own fp16.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..sim.presets import MODELS
from ..sim.specs import HardwareSpec, ModelSpec, PointSpec, PolicySpec, WorkloadSpec
from .microbench import BenchPlan

SIZES = ("quick", "standard")


def _policies(k: int, prompt_len: int) -> tuple[PolicySpec, ...]:
    """Each policy kind: KVPR with a fixed split (half the prompt: half the context rebuilt at
    the first decode step), HybridServe with half its blocks in the K,V pool."""
    block = max(1, min(16, prompt_len // 4))
    return (
        PolicySpec(kind="kv-only", num_gpu_batches=k),
        PolicySpec(kind="kv-only", cpu_attention=True, num_gpu_batches=k),
        PolicySpec(kind="hybrid", kv_ratio=0.5, num_gpu_batches=k),
        PolicySpec(kind="token-recompute", kv_ratio=0.5, num_gpu_batches=k),
        PolicySpec(kind="flexgen", num_gpu_batches=k),
        PolicySpec(kind="kvpr", split_tokens=prompt_len // 2, num_gpu_batches=k),
        PolicySpec(kind="hybridserve", kv_ratio=0.5, block_tokens=block, num_gpu_batches=k),
    )


@dataclass(frozen=True)
class ValidationSet:
    name: str
    backend: str
    dtype: str
    cases: tuple[tuple[ModelSpec, WorkloadSpec, PolicySpec], ...]
    repeats: int
    warmup: int
    bench: BenchPlan

    def points(self, hardware: HardwareSpec) -> list[PointSpec]:
        return [PointSpec(scenario=f"validate-{self.name}", model=m, hardware=hardware, workload=w, policy=p)
                for m, w, p in self.cases]

    @property
    def models(self) -> tuple[ModelSpec, ...]:
        return tuple(dict.fromkeys(m for m, _, _ in self.cases))


def _scaled(name: str, layers: int, dtype: str) -> ModelSpec:
    return MODELS[name].model_copy(update={"layers": layers, "dtype": dtype})


def validation_set(backend: str, size: str) -> ValidationSet:
    if size not in SIZES:
        raise ValueError(f"unknown validation set {size!r}; use one of: {', '.join(SIZES)}")
    if backend == "cuda":
        dtype = "fp16"
        models = [_scaled("opt-6.7b", 4, dtype), _scaled("llama-2-7b", 4, dtype), _scaled("opt-13b", 4, dtype),
                  _scaled("llama-3-8b", 4, dtype)]
        workloads = [WorkloadSpec(batch=16, prompt_len=512, gen_len=8),
                     WorkloadSpec(batch=64, prompt_len=1024, gen_len=8)]
        bench = BenchPlan(models=tuple(models), dtype=dtype, gemm_m=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024,
                                                                     2048, 4096, 8192, 16384, 32768),
                          lm_head_m=(1, 2, 4, 8, 16, 32, 64), attn_batch=(1, 4, 8, 16, 32),
                          attn_context=(128, 256, 512, 1024, 2048), prefill_tokens=(128, 256, 512, 1024),
                          copy_bytes=tuple(int(2**e) for e in range(12, 31, 2)))
        if size == "quick":
            models, workloads = models[:1], workloads[:1]
            models = [m.model_copy(update={"layers": 2}) for m in models]
        cases = [(m, w, p) for m in models for w in workloads for p in _policies(2, w.prompt_len)]
        return ValidationSet(size, backend, dtype, tuple(cases), repeats=3 if size == "standard" else 1,
                             warmup=1, bench=bench)
    dtype = "bf16"
    if size == "quick":
        m = _scaled("opt-1.3b", 2, dtype)
        w = WorkloadSpec(batch=2, prompt_len=16, gen_len=3)
        cases = [(m, w, p) for p in _policies(2, w.prompt_len)]
        bench = BenchPlan(models=(m,), dtype=dtype, gemm_m=(1, 2, 4, 8, 16, 32), lm_head_m=(1, 2),
                          attn_batch=(1,), attn_context=(16, 32), prefill_tokens=(16,),
                          copy_bytes=tuple(int(2**e) for e in range(12, 27, 2)), min_total_s=0.01)
        return ValidationSet(size, backend, dtype, tuple(cases), repeats=1, warmup=1, bench=bench)
    opt2, opt4, llama = _scaled("opt-1.3b", 2, dtype), _scaled("opt-1.3b", 4, dtype), _scaled("llama-2-7b", 2, dtype)
    small, mid = WorkloadSpec(batch=4, prompt_len=32, gen_len=6), WorkloadSpec(batch=8, prompt_len=96, gen_len=6)
    cases = ([(opt2, w, p) for w in (small, mid) for p in _policies(2, w.prompt_len)]
             + [(opt4, small, p) for p in _policies(2, small.prompt_len)]
             + [(llama, small, p) for p in _policies(2, small.prompt_len)])
    bench = BenchPlan(models=(opt2, llama), dtype=dtype, gemm_m=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
                      lm_head_m=(1, 2, 4, 8), attn_batch=(1, 2, 4), attn_context=(16, 32, 64, 128, 256),
                      prefill_tokens=(16, 32, 64, 128))
    return ValidationSet(size, backend, dtype, tuple(cases), repeats=2, warmup=1, bench=bench)
