"""Specs of the serving regime: the batching engine's limits, the tenants, and one resolved point.

A point serves one or more tenants, each a model with its own workload, on one GPU. Every
tenant's weights are resident to begin with. GPU memory left after the runtime reserve, every
tenant's weights and every tenant's activation workspace is the KV memory; a tenant's
`gpu_kv_bytes` caps its own pool, and the tenants without one share what the others leave in
equal parts (separate vLLM engines on one GPU each preallocate their pool at start-up, as
`gpu_memory_utilization` asks: a static partition).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from ..specs import HardwareSpec, ModelSpec, Spec
from .paged import KVPool, workspace_bytes
from .policies import ServingPolicySpec
from .workload import ServingWorkload


class ServingEngineSpec(Spec):
    """vLLM-like engine settings (defaults are vLLM's where it has one)."""

    block_tokens: int = Field(default=16, gt=0, description="tokens per KV block")
    max_batched_tokens: int = Field(default=2048, gt=0, description="tokens per iteration (chunked prefill)")
    max_running: int = Field(default=256, gt=0, description="most requests holding KV at once (max_num_seqs)")
    watermark: float = Field(default=0.01, ge=0, lt=1, description="fraction of blocks kept free at admission")
    #: Host cost of one cudaMemcpyAsync in vLLM's per-block swap loop (csrc/cache_kernels.cu::swap_blocks,
    #: with its block_mapping[i][j].item() reads). 2.3 us: measured per call for one copy per (layer, K/V,
    #: block) of a 32-layer, head_dim-128 model on an H20 host (taco-project/FlexKV PR #193,
    #: benchmarks/microbenchmark_ce_overhead.py). Other public figures: 5-7 us per call (DualPath,
    #: arXiv 2602.21548, Sec. 5.2). Measured on x86 hosts; on Grace it is an assumption within 2.3-7 us.
    memcpy_issue_s: float = Field(default=2.3e-6, ge=0, description="host cost per cudaMemcpyAsync of a KV swap")


class TenantSpec(Spec):
    """One model served on the shared GPU, with its own requests."""

    name: str = Field(min_length=1)
    model: ModelSpec
    workload: ServingWorkload
    gpu_kv_bytes: int | None = Field(default=None, gt=0, description="cap on this tenant's KV pool")


class ServingPoint(Spec):
    """One simulation: tenants (one or more models) on a box, an engine and a policy.

    The single-model form `ServingPoint(model=.., workload=.., gpu_kv_bytes=..)` is one tenant
    named after its model. `gpu_kv_bytes` caps a pool below what the GPU has left (to create KV
    pressure on purpose); absent, the pool takes its share of all of it.
    """

    scenario: str
    hardware: HardwareSpec
    engine: ServingEngineSpec = ServingEngineSpec()
    policy: ServingPolicySpec
    tenants: tuple[TenantSpec, ...] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _single_model(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "model" not in data:
            return data
        data = dict(data)
        model = data.pop("model")
        name = model.name if isinstance(model, ModelSpec) else dict(model).get("name", "model")
        data["tenants"] = ({"name": name, "model": model, "workload": data.pop("workload", None),
                            "gpu_kv_bytes": data.pop("gpu_kv_bytes", None)},)
        return data

    @model_validator(mode="after")
    def _check_memory(self) -> ServingPoint:
        names = [t.name for t in self.tenants]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"tenant name '{dup}' is used twice")
        left = self.free_kv_bytes
        if left <= 0:
            weights = sum(t.model.total_weight_bytes for t in self.tenants)
            what = " + ".join(t.model.name for t in self.tenants)
            raise ValueError(
                f"{what} do not fit on {self.hardware.gpu.name} with every weight resident: weights "
                f"{weights / 1e9:.2f} GB + workspace leave {left / 1e9:.2f} GB for KV "
                f"of {self.hardware.gpu.memory_bytes / 1e9:.2f} GB")
        given = sum(t.gpu_kv_bytes or 0 for t in self.tenants)
        if given > left:
            raise ValueError(f"gpu_kv_bytes ({given / 1e9:.2f} GB) exceeds the "
                             f"{left / 1e9:.2f} GB the GPU has left for KV")
        if given == left and any(t.gpu_kv_bytes is None for t in self.tenants):
            raise ValueError("gpu_kv_bytes leaves nothing for the tenants without one")
        return self

    # ------------------------------------------------------------------ memory
    @property
    def free_kv_bytes(self) -> int:
        """GPU memory left for KV: memory - runtime reserve - all weights - all workspaces (may be <= 0)."""
        e, gpu = self.engine, self.hardware.gpu
        return (gpu.memory_bytes - gpu.reserved_bytes
                - sum(t.model.total_weight_bytes + workspace_bytes(t.model, e.max_batched_tokens, e.max_running)
                      for t in self.tenants))

    def tenant_kv_bytes(self, i: int) -> int:
        t = self.tenants[i]
        if t.gpu_kv_bytes is not None:
            return t.gpu_kv_bytes
        unset = [x for x in self.tenants if x.gpu_kv_bytes is None]
        return (self.free_kv_bytes - sum(x.gpu_kv_bytes or 0 for x in self.tenants)) // len(unset)

    def tenant_pool(self, i: int) -> KVPool:
        return KVPool.for_model(self.tenants[i].model, self.engine.block_tokens, self.tenant_kv_bytes(i))

    def tenant_watermark_blocks(self, i: int) -> int:
        return int(self.engine.watermark * self.tenant_pool(i).capacity_blocks(0))

    def tenant_max_request_tokens(self, i: int) -> int:
        """Most tokens one request's cache can need and still fit in its tenant's pool alone (with the watermark)."""
        pool = self.tenant_pool(i)
        return (pool.capacity_blocks(0) - self.tenant_watermark_blocks(i)) * pool.block_tokens

    # ------------------------------------------------------------------ the single-model view
    @property
    def multi_tenant(self) -> bool:
        return len(self.tenants) > 1

    @property
    def model(self) -> ModelSpec:
        """The first tenant's model (the model, for a single-model point)."""
        return self.tenants[0].model

    @property
    def workload(self) -> ServingWorkload:
        return self.tenants[0].workload

    @property
    def gpu_kv_bytes(self) -> int | None:
        return self.tenants[0].gpu_kv_bytes

    @property
    def physical_kv_bytes(self) -> int:
        return self.free_kv_bytes

    @property
    def kv_pool(self) -> KVPool:
        return self.tenant_pool(0)

    @property
    def watermark_blocks(self) -> int:
        return self.tenant_watermark_blocks(0)

    def max_request_tokens(self) -> int:
        return self.tenant_max_request_tokens(0)
