"""Durations: the `CostModel` protocol every pricer follows, and the roofline default.

The simulator, the optimisers and serving ask a `CostModel` for an op's duration; the
roofline here prices from a `HardwareSpec`'s figures, `profile.ProfiledCostModel` from a
calibrated profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from ..schedule import Op, Schedule, Stream
from ..specs import GPUSpec, HardwareSpec, LinkSpec
from .cpu_attention import flexgen_cpu_attention_s


class CostModel(Protocol):
    """Anything that turns an op into a duration in seconds."""

    def duration_s(self, op: Op) -> float: ...


def gpu_time_s(gpu: GPUSpec, flops: float, hbm_bytes: float, kernels: int) -> float:
    """Roofline: at least max(FLOPs / achieved peak, bytes / achieved HBM rate), plus launches."""
    return max(
        flops / (gpu.peak_flops * gpu.matmul_efficiency),
        hbm_bytes / (gpu.hbm_Bps * gpu.hbm_efficiency),
    ) + kernels * gpu.launch_overhead_s


def link_time_s(link: LinkSpec, nbytes: float, direction: Stream, pinned: bool = True) -> float:
    """One copy: latency + bytes / bandwidth of that direction's engine and memory kind."""
    if direction is Stream.h2d:
        bw = link.h2d_pinned_Bps if pinned else link.h2d_pageable_Bps
    elif direction is Stream.d2h:
        bw = link.d2h_pinned_Bps if pinned else link.d2h_pageable_Bps
    else:
        raise ValueError(f"not a link direction: {direction}")
    return link.latency_s + nbytes / bw


def cpu_time_s(hw: HardwareSpec, flops: float, host_bytes: float, shape: dict | None = None) -> float:
    """CPU attention: with a fitted `cpu.flops` (a calibrated profile), at least max(FLOPs / that
    rate, bytes / host bandwidth); otherwise FlexGen's code step by step (`cpu_attention`), from
    the op's shape (batch, heads, kv_heads, head_dim, past_tokens)."""
    if hw.cpu.flops is not None:
        return max(flops / hw.cpu.flops, host_bytes / hw.host.memory_Bps)
    if not shape or "head_dim" not in shape:
        raise ValueError("a CPU op priced by FlexGen's step model needs batch, heads, head_dim and past_tokens "
                         "in its shape")
    return flexgen_cpu_attention_s(hw, shape["batch"], shape["heads"], shape["head_dim"],
                                   shape["past_tokens"] + 1, shape.get("kv_heads"))


@dataclass(frozen=True)
class RooflineCostModel:
    """Roofline default: compute at least max(FLOPs/peak, bytes/HBM) plus launches;
    a copy is latency + bytes/bandwidth at the pinned or pageable rate; CPU work at
    least max(FLOPs/CPU rate, bytes/host bandwidth)."""

    hardware: HardwareSpec
    #: durations depend on an op's payload only (see `durations_ns`)
    sizes_only: ClassVar[bool] = True

    def duration_s(self, op: Op) -> float:
        hw = self.hardware
        if op.stream is Stream.compute:
            return gpu_time_s(hw.gpu, op.flops, op.hbm_bytes, op.kernels)
        if op.stream is Stream.cpu:
            return cpu_time_s(hw, op.flops, op.host_bytes, op.shape_dict)
        return link_time_s(hw.link, op.link_bytes, op.stream, op.pinned)


def payload_durations_ns(payloads, cost: CostModel) -> np.ndarray:
    """The duration in integer nanoseconds of one op of each payload (`schedule.PAYLOAD_FIELDS`
    tuples), for a cost model with `sizes_only = True`."""
    return np.fromiter(
        (round(cost.duration_s(Op(0, p[0], p[1], 0, 0, 0, (), (), *p[2:])) * 1e9) for p in payloads),
        dtype=np.int64,
        count=len(payloads),
    )


def durations_ns(schedule: Schedule, cost: CostModel) -> np.ndarray:
    """Every op's duration in integer nanoseconds, indexed by op id.

    A cost model whose durations depend only on an op's payload (stream, kind, sizes,
    pinned, shape: `schedule.PAYLOAD_FIELDS`) says so with `sizes_only = True`; each
    distinct payload is then priced once (a schedule has a few hundred), with exactly
    the same arithmetic."""
    if getattr(cost, "sizes_only", False):
        return payload_durations_ns(schedule.payloads, cost)[schedule.payload_index]
    return np.fromiter(
        (round(cost.duration_s(op) * 1e9) for op in schedule.ops),
        dtype=np.int64,
        count=len(schedule),
    )
