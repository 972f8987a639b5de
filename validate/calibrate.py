"""Micro-benchmark results -> a `HardwareProfile`.

Only micro-benchmarks feed the profile: copy curves and the GEMM table are the
measurements themselves, and so is the attention table (what the cost model
prices attention from); the attention kernels are also summarised as
non-negative least-squares fits (relative error) of time against the context's
K,V bytes, FLOPs and query rows (FlexGen's host attention is priced from its
fit); the executor's dispatch cost per op kind is measured by running tiny
models (hidden 128: kernel time negligible, so what remains is the Python,
thread hand-off and launch cost per op) through the executor and subtracting the
profile's own prediction of their kernels. The validation set never feeds the
profile.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pandas as pd

from ..sim.costs.profile import (
    AttentionTable,
    Curve,
    GemmTable,
    HardwareProfile,
    LinearFit,
    ProfiledCostModel,
    overhead_key,
)
from ..sim.specs import HardwareSpec, ModelSpec, PointSpec, PolicySpec, WorkloadSpec
from .device import DeviceInfo, require_torch
from .measure import WeightCache, measure
from .microbench import BenchResults

FEATURES = ["kv_bytes", "flops", "rows"]


def nnls_relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares of `y ~ x @ coef`, minimising the relative error (active set)."""
    w = 1.0 / y
    a = x * w[:, None]
    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0
    a = a / scale
    active = list(range(x.shape[1]))
    coef = np.zeros(x.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(a[:, active], np.ones(len(y)), rcond=None)
        if (sol >= 0).all():
            coef[:] = 0
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    return coef / scale


def fit_linear(df: pd.DataFrame) -> LinearFit:
    x = np.column_stack([np.ones(len(df)), *[df[f].to_numpy(float) for f in FEATURES]])
    y = df["seconds"].to_numpy(float)
    c = nnls_relative(x, y)
    ape = np.abs(x @ c - y) / y
    return LinearFit(intercept_s=float(c[0]), per_kv_byte_s=float(c[1]), per_flop_s=float(c[2]),
                     per_row_s=float(c[3]), median_ape=float(np.median(ape)))


def _curve(df: pd.DataFrame) -> Curve:
    g = df.groupby("bytes", sort=True)["seconds"].median()
    return Curve(bytes=[int(b) for b in g.index], seconds=[float(s) for s in g.to_numpy()])


def _condition(df: pd.DataFrame, condition: str) -> pd.DataFrame:
    """The rows of one condition (tables measured before conditions existed are all `idle`)."""
    if "condition" not in df:
        return df if condition == "idle" else df.iloc[0:0]
    return df[df["condition"] == condition]


def _attention_table(df: pd.DataFrame) -> AttentionTable:
    return AttentionTable(rows=[(int(r.batch), int(r.hidden), int(r.heads), int(r.kv_heads), int(r.new),
                                 int(r.context), float(r.seconds)) for r in df.itertuples()])


def _memory_bytes(backend: str) -> tuple[int, int]:
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if backend == "cuda":
        return int(require_torch().cuda.get_device_properties(0).total_memory), int(host)
    return int(host), int(host)


def profile_from_bench(name: str, info: DeviceInfo, bench: BenchResults,
                       op_overhead_s: dict[str, float] | None = None) -> HardwareProfile:
    copies = {f"{d}/{m}/{c}": _curve(g) for (d, m, c), g in bench.copies.groupby(["direction", "memory", "condition"])}
    gemm = {c: GemmTable(rows=[(int(r.m), int(r.n), int(r.k), float(r.seconds)) for r in g.itertuples()])
            for c, g in bench.gemm.groupby("condition")}
    idle, busy = _condition(bench.attention, "idle"), _condition(bench.attention, "busy")
    dev_mem, host_mem = _memory_bytes(bench.backend)
    notes = list(bench.notes)
    notes.append("op_overhead_s: executor dispatch cost per op (Python, thread hand-off, launches), measured on "
                 "tiny models; key KIND:NORM is per model family; op_cold_s: what an op costs more with the caches "
                 "flushed (single ops of the tiny models after a flush, against right after themselves)")
    return HardwareProfile(
        name=name, device=info.as_dict(), dtype=bench.dtype, threads=bench.threads,
        contention="overlap",
        device_memory_bytes=dev_mem, host_memory_bytes=host_mem, launch_s=float(bench.launch_s),
        copies=copies, device_copy=_curve(bench.device_copy), gemm=gemm,
        attention_decode=fit_linear(idle[idle["phase"] == "decode"]),
        attention_prefill=fit_linear(idle[idle["phase"] == "prefill"]),
        attention_decode_busy=fit_linear(busy[busy["phase"] == "decode"]) if len(busy) else None,
        attention_prefill_busy=fit_linear(busy[busy["phase"] == "prefill"]) if len(busy) else None,
        attention={c: _attention_table(g) for c, g in (("idle", idle), ("busy", busy)) if len(g)},
        cpu_attention=fit_linear(_condition(bench.cpu_attention, "idle")),
        cpu_attention_busy=fit_linear(busy_cpu) if len(busy_cpu := _condition(bench.cpu_attention, "busy")) else None,
        op_overhead_s=dict(op_overhead_s or {}), notes=notes,
    )


def _tiny_models(dtype: str) -> list[ModelSpec]:
    opt = ModelSpec(name="dispatch-opt", layers=2, hidden=128, heads=4, kv_heads=4, ffn=512, vocab=256,
                    max_positions=64, dtype=dtype)
    llama = ModelSpec(name="dispatch-llama", layers=2, hidden=128, heads=4, kv_heads=4, ffn=344, vocab=256,
                      max_positions=64, ffn_kind="swiglu", norm_kind="rmsnorm", bias=False, dtype=dtype)
    return [opt, llama]


DISPATCH_POLICIES = (
    PolicySpec(kind="kv-only", num_gpu_batches=2),
    PolicySpec(kind="kv-only", cpu_attention=True, num_gpu_batches=2),
    PolicySpec(kind="hybrid", kv_ratio=0.5, num_gpu_batches=2),
    PolicySpec(kind="token-recompute", kv_ratio=0.5, num_gpu_batches=2),
    PolicySpec(kind="flexgen", num_gpu_batches=2),
    PolicySpec(kind="kvpr", split_tokens=4, num_gpu_batches=2),
    PolicySpec(kind="hybridserve", kv_ratio=0.5, block_tokens=4, num_gpu_batches=2),
)


def measure_dispatch(profile: HardwareProfile, backend: str, hardware: HardwareSpec, repeats: int = 3,
                     progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """Per op kind and model family: median(measured - predicted kernel time) over tiny-model runs, >= 0."""
    zero = profile.model_copy(update={"op_overhead_s": {}, "op_cold_s": {}, "launch_s": 0.0})
    residual: dict[str, list[float]] = {}
    weights = WeightCache()
    for model in _tiny_models(profile.dtype):
        if progress:
            progress(f"dispatch cost ({model.norm_kind.value} family)")
        cost = ProfiledCostModel(zero, model)
        for pol in DISPATCH_POLICIES:
            point = PointSpec(scenario="dispatch", model=model, hardware=hardware,
                              workload=WorkloadSpec(batch=4, prompt_len=8, gen_len=4), policy=pol)
            meas = measure(point, backend, repeats=repeats, warmup=1, weights=weights)
            dur = (meas.result.end_ns - meas.result.start_ns) / 1e9
            for op in meas.schedule.ops:
                residual.setdefault(overhead_key(op.kind.value, model), []).append(
                    float(dur[op.id]) - cost.duration_s(op))
    return {k: max(0.0, float(np.median(v))) for k, v in sorted(residual.items())}


def measure_cold_dispatch(profile: HardwareProfile, backend: str, hardware: HardwareSpec, rounds: int = 3,
                          progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """Per op kind and model family: what one op costs more when it finds this core's caches flushed
    (its code paths, the allocator's and dispatcher's data, its small tensors) than right after itself,
    median over single ops of the tiny models' schedules run on the executor's buffers, >= 0.

    In the executor the caches are flushed between two ops of a thread: every layer, a weight copy and
    the GEMMs over those weights stream tens of MB through them. The tiny models' dispatch runs
    (`measure_dispatch`) stream nothing, so they find the caches warm. Measured on the CPU backend
    only: on a GPU the weights stream through the device, not through the host's caches."""
    if backend != "cpu":
        return {}
    import time

    from .measure import harness
    from .microbench import Evictor

    torch = require_torch()
    evict = Evictor()
    penalty: dict[str, list[float]] = {}
    weights = WeightCache()
    before = torch.get_num_threads()
    try:
        for model in _tiny_models(profile.dtype):
            if progress:
                progress(f"dispatch cost with the caches flushed ({model.norm_kind.value} family)")
            for pol in DISPATCH_POLICIES:
                point = PointSpec(scenario="dispatch", model=model, hardware=hardware,
                                  workload=WorkloadSpec(batch=4, prompt_len=8, gen_len=4), policy=pol)
                h = harness(point, backend, weights)
                torch.set_num_threads(h.threads)
                with torch.inference_mode():
                    h.run_all()  # fills every buffer, as the executor's warm-up run does
                    chosen: dict[str, object] = {}
                    for op in sorted(h.schedule.ops, key=lambda o: (o.step != 2, o.id)):  # a decode step's first
                        chosen.setdefault(op.kind.value, op)
                    for _ in range(rounds):
                        for kind, op in chosen.items():
                            h.run_op(op)
                            t0 = time.perf_counter()
                            h.run_op(op)
                            warm = time.perf_counter() - t0
                            evict()
                            t0 = time.perf_counter()
                            h.run_op(op)
                            penalty.setdefault(overhead_key(kind, model), []).append(time.perf_counter() - t0 - warm)
    finally:
        torch.set_num_threads(before)
    return {k: max(0.0, float(np.median(v))) for k, v in sorted(penalty.items())}
