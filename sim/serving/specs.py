"""Specs of the serving regime: the batching engine's limits and one resolved point."""

from __future__ import annotations

from pydantic import Field, model_validator

from ..specs import MAX_BYTES, MAX_COUNT, MAX_TOKENS, HardwareSpec, Int, ModelSpec, Real, Spec
from .paged import KVPool, physical_kv_bytes
from .policies import ServingPolicySpec
from .workload import ServingWorkload


class ServingEngineSpec(Spec):
    """vLLM-like engine settings (defaults are vLLM's where it has one)."""

    block_tokens: Int = Field(default=16, gt=0, le=MAX_COUNT, description="tokens per KV block")
    max_batched_tokens: Int = Field(default=2048, gt=0, le=MAX_TOKENS,
                                    description="tokens per iteration (chunked prefill)")
    max_running: Int = Field(default=256, gt=0, le=MAX_COUNT,
                             description="most requests holding KV at once (max_num_seqs)")
    watermark: Real = Field(default=0.01, ge=0, lt=1, description="fraction of blocks kept free at admission")


class ServingPoint(Spec):
    """One simulation: a model on a box, a workload, an engine and a policy.

    `gpu_kv_bytes` caps the KV pool below what the GPU has left after weights and
    workspace (to create KV pressure on purpose); absent, the pool takes all of it.
    """

    scenario: str
    model: ModelSpec
    hardware: HardwareSpec
    workload: ServingWorkload
    engine: ServingEngineSpec = ServingEngineSpec()
    policy: ServingPolicySpec
    gpu_kv_bytes: Int | None = Field(default=None, gt=0, le=MAX_BYTES)

    @model_validator(mode="after")
    def _check_memory(self) -> ServingPoint:
        physical = self.physical_kv_bytes
        if physical <= 0:
            raise ValueError(
                f"{self.model.name} does not fit on {self.hardware.gpu.name}: weights "
                f"{self.model.total_weight_bytes / 1e9:.2f} GB + workspace leave {physical / 1e9:.2f} GB for KV "
                f"of {self.hardware.gpu.memory_bytes / 1e9:.2f} GB")
        if self.gpu_kv_bytes is not None and self.gpu_kv_bytes > physical:
            raise ValueError(f"gpu_kv_bytes ({self.gpu_kv_bytes / 1e9:.2f} GB) exceeds the "
                             f"{physical / 1e9:.2f} GB the GPU has left for KV")
        return self

    @property
    def physical_kv_bytes(self) -> int:
        e = self.engine
        return physical_kv_bytes(self.model, self.hardware.gpu, e.max_batched_tokens, e.max_running)

    @property
    def kv_pool(self) -> KVPool:
        base = self.gpu_kv_bytes if self.gpu_kv_bytes is not None else self.physical_kv_bytes
        return KVPool.for_model(self.model, self.engine.block_tokens, base)

    @property
    def watermark_blocks(self) -> int:
        return int(self.engine.watermark * self.kv_pool.capacity_blocks(0))

    def max_request_tokens(self) -> int:
        """Most tokens one request's cache can need and still fit in the pool alone (with the watermark)."""
        pool = self.kv_pool
        return (pool.capacity_blocks(0) - self.watermark_blocks) * pool.block_tokens
