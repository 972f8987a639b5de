"""Validated, immutable specifications: model, hardware, workload, policy.

All sizes are in bytes, rates in bytes/s or FLOP/s, times in seconds. Derived
quantities (weight bytes per layer, KV and activation bytes per token) are
properties, so a spec can never disagree with itself.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

GB = 10**9
GiB = 2**30


def _not_bool(value):
    """YAML's `true` is not the number 1: a boolean in a numeric field is refused."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


#: an integer field (booleans refused); give its range with Field(ge/gt, le)
Int = Annotated[int, BeforeValidator(_not_bool)]
#: a finite real field (booleans, inf and nan refused); give its range with Field(ge/gt, le)
Real = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]
#: a yes/no field: true or false only (not 1, "yes" or "on" as text)
Flag = Annotated[bool, Field(strict=True)]

# Ranges that every numeric field is held to: wide enough for any machine or model in
# sight, narrow enough that a typo (1e30 s, 1e-300 B/s, 9e18 tokens) is refused where
# it is written instead of overflowing or hanging a simulation.
MAX_COUNT = 2**20  # layers, heads, batch, GPU batches, block tokens
MAX_WIDTH = 2**22  # hidden and FFN widths
MAX_TOKENS = 2**24  # vocabulary, positions, prompt and output lengths (16 M)
MAX_BYTES = 10**16  # any memory capacity (10 PB)
MIN_RATE_BPS, MAX_RATE_BPS = 1e6, 1e15  # any link or memory bandwidth: 1 MB/s .. 1 PB/s
MIN_FLOPS, MAX_FLOPS = 1e6, 1e19  # any processor: 1 MFLOP/s .. 10 EFLOP/s
MAX_OVERHEAD_S = 1.0  # a launch overhead or link latency


class Spec(BaseModel):
    """Base of every spec: frozen, unknown fields rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


# ----------------------------------------------------------------------------- model


class FFNKind(str, Enum):
    relu = "relu"  # OPT: fc1 (h->f), ReLU, fc2 (f->h)
    swiglu = "swiglu"  # LLaMA: gate and up (h->f), SiLU*, down (f->h)


class NormKind(str, Enum):
    layernorm = "layernorm"  # weight + bias
    rmsnorm = "rmsnorm"  # weight only


DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}


class ModelSpec(Spec):
    """A decoder-only transformer, one entry per architectural fact."""

    name: str
    layers: Int = Field(gt=0, le=MAX_COUNT)
    hidden: Int = Field(gt=0, le=MAX_WIDTH)
    heads: Int = Field(gt=0, le=MAX_COUNT)
    kv_heads: Int = Field(gt=0, le=MAX_COUNT)
    ffn: Int = Field(gt=0, le=MAX_WIDTH, description="FFN inner size")
    ffn_kind: FFNKind = FFNKind.relu
    norm_kind: NormKind = NormKind.layernorm
    bias: Flag = True
    vocab: Int = Field(gt=0, le=MAX_TOKENS)
    max_positions: Int = Field(default=2048, gt=0, le=MAX_TOKENS)
    dtype: Literal["fp16", "bf16", "fp32"] = "fp16"

    @model_validator(mode="after")
    def _check_heads(self) -> ModelSpec:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be divisible by kv_heads ({self.kv_heads})")
        return self

    # -- derived sizes -----------------------------------------------------------
    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_hidden(self) -> int:
        """Width of K (and of V): kv_heads * head_dim; equals hidden for MHA."""
        return self.kv_heads * self.head_dim

    @property
    def attn_params(self) -> int:
        h, hk = self.hidden, self.kv_hidden
        w = h * h + 2 * h * hk + h * h  # Q, K, V, O
        b = (h + 2 * hk + h) if self.bias else 0
        return w + b

    @property
    def kv_proj_params(self) -> int:
        """W_K and W_V (and their biases): what rebuilding K,V from x needs."""
        return 2 * self.hidden * self.kv_hidden + (2 * self.kv_hidden if self.bias else 0)

    @property
    def ffn_params(self) -> int:
        h, f = self.hidden, self.ffn
        mats = 2 if self.ffn_kind is FFNKind.relu else 3
        b = (f + h) if self.bias and self.ffn_kind is FFNKind.relu else 0
        return mats * h * f + b

    @property
    def norm_params(self) -> int:
        per = 2 * self.hidden if self.norm_kind is NormKind.layernorm else self.hidden
        return 2 * per  # one before attention, one before the FFN

    @property
    def layer_params(self) -> int:
        return self.attn_params + self.ffn_params + self.norm_params

    @property
    def weight_bytes_per_layer(self) -> int:
        return self.layer_params * self.dtype_bytes

    @property
    def embedding_bytes(self) -> int:
        """Token embedding, positions, final norm and LM head (tied for OPT)."""
        tied = self.ffn_kind is FFNKind.relu
        emb = self.vocab * self.hidden * (1 if tied else 2)
        pos = self.max_positions * self.hidden if self.norm_kind is NormKind.layernorm else 0
        return (emb + pos + 2 * self.hidden) * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token in one layer."""
        return 2 * self.kv_hidden * self.dtype_bytes

    @property
    def act_bytes_per_token(self) -> int:
        """The layer's input activation of one token in one layer."""
        return self.hidden * self.dtype_bytes

    @property
    def total_weight_bytes(self) -> int:
        return self.layers * self.weight_bytes_per_layer + self.embedding_bytes


# -------------------------------------------------------------------------- hardware


class GPUSpec(Spec):
    """A GPU: datasheet peaks (what `bound_tok_s` uses) and the fractions of them that
    public micro-benchmarks achieve (what op durations use)."""

    name: str
    memory_bytes: Int = Field(gt=0, le=MAX_BYTES, description="what CUDA reports as the device's total memory, bytes")
    peak_flops: Real = Field(ge=MIN_FLOPS, le=MAX_FLOPS, description="datasheet dense fp16 tensor-core FLOP/s")
    hbm_Bps: Real = Field(ge=MIN_RATE_BPS, le=MAX_RATE_BPS, description="datasheet device memory bandwidth, bytes/s")
    launch_overhead_s: Real = Field(default=5e-6, ge=0, le=MAX_OVERHEAD_S)
    matmul_efficiency: Real = Field(
        default=1.0, gt=0, le=1, description="achieved fraction of peak_flops (large fp16 GEMM)"
    )
    hbm_efficiency: Real = Field(default=1.0, gt=0, le=1, description="achieved fraction of hbm_Bps")
    reserved_bytes: Int = Field(default=0, ge=0, le=MAX_BYTES, description="memory the runtime keeps for itself "
                                "(CUDA context, kernels, cuBLAS workspace)")

    @model_validator(mode="after")
    def _achieved_rates_in_range(self) -> GPUSpec:
        # the achieved rates price every op: held to the same ranges as any rate
        if self.achieved_flops < MIN_FLOPS:
            raise ValueError(f"peak_flops x matmul_efficiency is {self.achieved_flops:.3g} FLOP/s, below "
                             f"{MIN_FLOPS:.0e}: matmul_efficiency {self.matmul_efficiency:g} is a typo? "
                             "(it is the achieved fraction of the peak, e.g. 0.7)")
        if self.achieved_hbm_Bps < MIN_RATE_BPS:
            raise ValueError(f"hbm_Bps x hbm_efficiency is {self.achieved_hbm_Bps:.3g} B/s, below "
                             f"{MIN_RATE_BPS:.0e}: hbm_efficiency {self.hbm_efficiency:g} is a typo? "
                             "(it is the achieved fraction of hbm_Bps, e.g. 0.8)")
        return self

    @property
    def achieved_flops(self) -> float:
        return self.peak_flops * self.matmul_efficiency

    @property
    def achieved_hbm_Bps(self) -> float:
        return self.hbm_Bps * self.hbm_efficiency


class LinkSpec(Spec):
    """Host<->GPU link with separate engines per direction (full duplex)."""

    name: str
    h2d_pinned_Bps: Real = Field(ge=MIN_RATE_BPS, le=MAX_RATE_BPS)
    d2h_pinned_Bps: Real = Field(ge=MIN_RATE_BPS, le=MAX_RATE_BPS)
    h2d_pageable_Bps: Real = Field(ge=MIN_RATE_BPS, le=MAX_RATE_BPS)
    d2h_pageable_Bps: Real = Field(ge=MIN_RATE_BPS, le=MAX_RATE_BPS)
    latency_s: Real = Field(default=10e-6, ge=0, le=MAX_OVERHEAD_S)


class HostSpec(Spec):
    memory_bytes: Int = Field(gt=0, le=MAX_BYTES)
    memory_Bps: Real = Field(ge=MIN_RATE_BPS, le=MAX_RATE_BPS, description="host DRAM bandwidth, bytes/s")


class CPUSpec(Spec):
    """The host CPU that runs FlexGen-style CPU attention.

    Without `flops`, CPU attention is priced step by step from FlexGen's code
    (`costs.cpu_attention`): per-thread rates from this project's micro-benchmark,
    one thread per physical core, capped by the host's DRAM bandwidth. `flops` (a
    calibrated profile's fitted rate) replaces that with one FLOP/s figure."""

    name: str = "cpu"
    sockets: Int = Field(default=1, gt=0, le=64)
    cores_per_socket: Int = Field(default=8, gt=0, le=4096, description="physical cores")
    dram_type: str = Field(default="DDR4", description="e.g. DDR4-3200")
    dram_channels_per_socket: Int = Field(default=2, gt=0, le=64)
    dram_MTps: Real = Field(default=3200, ge=100, le=100_000, description="DRAM transfer rate, mega-transfers/s")
    attention_speed: Real = Field(default=1.0, ge=0.01, le=100, description="speed of FlexGen's CPU attention code "
                                  "per thread relative to this project's micro-benchmark of it (1: as measured)")
    flops: Real | None = Field(default=None, ge=MIN_FLOPS, le=MAX_FLOPS, description="achieved FLOP/s of attention "
                               "on the CPU, when a calibrated profile fixes it")

    @property
    def cores(self) -> int:
        return self.sockets * self.cores_per_socket

    @property
    def dram_peak_Bps(self) -> float:
        """Wire rate of every channel: channels x MT/s x 8 bytes (64-bit channel), all sockets."""
        return self.sockets * self.dram_channels_per_socket * self.dram_MTps * 1e6 * 8


class HardwareSpec(Spec):
    name: str
    gpu: GPUSpec
    link: LinkSpec
    host: HostSpec
    cpu: CPUSpec
    #: path of the calibrated profile (`hssim validate`) this spec was read from, if any;
    #: points on such hardware are priced by the profile instead of the roofline
    profile: str | None = None


# -------------------------------------------------------------------------- workload


class WorkloadSpec(Spec):
    batch: Int = Field(gt=0, le=MAX_COUNT, description="sequences generated together")
    prompt_len: Int = Field(gt=0, le=MAX_TOKENS)
    gen_len: Int = Field(gt=0, le=MAX_TOKENS, description="output tokens per sequence, the first from prefill")


# ---------------------------------------------------------------------------- policy


class PolicyKind(str, Enum):
    kv_only = "kv-only"
    token_recompute = "token-recompute"
    hybrid = "hybrid"
    flexgen = "flexgen"  # FlexGen's runtime as it schedules: barriers, whole-tensor placement, unpinned KV
    hybridserve = "hybridserve"  # HybridServe: KV/ACT host blocks in a fixed ratio, balanced mini-batches
    kvpr = "kvpr"  # KVPR: activations of the first l tokens, K,V of the rest, rebuilt after both arrive


class SplitRule(str, Enum):
    """How the kvpr policy picks its split point l when `split_tokens` is not given."""

    closed_form = "closed-form"  # KVPR's formula, once per run, from fixed bandwidth and FLOP figures
    per_step = "per-step"  # at each decode step, the l the cost model says is fastest for that step


class MiniBatching(str, Enum):
    """How the hybridserve policy forms GPU batches from requests."""

    naive = "naive"  # consecutive requests, in arrival order
    balanced = "balanced"  # each GPU batch gets the same mix of K,V and activation tokens


#: which policy parameters each kind reads; sweeps skip an axis a kind ignores.
POLICY_PARAMS: dict[PolicyKind, frozenset[str]] = {
    PolicyKind.kv_only: frozenset({"cpu_attention"}),
    PolicyKind.token_recompute: frozenset({"kv_ratio"}),
    PolicyKind.hybrid: frozenset({"kv_ratio"}),
    PolicyKind.flexgen: frozenset({"cpu_attention", "cache_pinned"}),
    PolicyKind.hybridserve: frozenset({"kv_ratio", "block_tokens", "mini_batching", "step_barrier"}),
    PolicyKind.kvpr: frozenset({"split_tokens", "split_rule", "step_barrier"}),
}
COMMON_POLICY_PARAMS = frozenset(
    {"gpu_batch_size", "num_gpu_batches", "weights_gpu_percent", "cache_gpu_percent", "pinned"}
)


class PolicySpec(Spec):
    """What a policy is and every parameter the papers tune.

    `kv_ratio` (HybridServe's `r`) is the fraction of past tokens kept as K,V;
    the rest are kept as token ids (token-recompute) or input activations (hybrid).
    """

    kind: PolicyKind
    gpu_batch_size: Int | None = Field(default=None, gt=0, le=MAX_COUNT)
    num_gpu_batches: Int = Field(default=1, gt=0, le=MAX_COUNT)
    weights_gpu_percent: Real = Field(default=0.0, ge=0, le=100)
    cache_gpu_percent: Real = Field(default=0.0, ge=0, le=100)
    kv_ratio: Real = Field(default=1.0, ge=0, le=1)
    cpu_attention: Flag = False
    pinned: Flag = True
    cache_pinned: Flag = Field(
        default=False, description="flexgen: host K,V in pinned memory (FlexGen's runtime does not pin it)")
    block_tokens: Int = Field(default=16, gt=0, le=MAX_COUNT, description="hybridserve: tokens per host cache block")
    mini_batching: MiniBatching = MiniBatching.balanced
    split_tokens: Int | None = Field(
        default=None, ge=0, le=MAX_TOKENS,
        description="kvpr: fixed split point l (tokens per sequence sent as activations)")
    split_rule: SplitRule = SplitRule.closed_form
    step_barrier: Flag = Field(
        default=True, description="hybridserve, kvpr: FlexGen's sync after every (layer, GPU batch) step "
        "(both systems are built on FlexGen's runtime); flexgen always syncs, kv-only and hybrid never")

    @model_validator(mode="after")
    def _check_kind_params(self) -> PolicySpec:
        if self.cpu_attention and self.kind not in (PolicyKind.kv_only, PolicyKind.flexgen):
            raise ValueError("cpu_attention applies to the kv-only and flexgen policies only")
        if self.cpu_attention and self.cache_gpu_percent > 0:
            raise ValueError("cpu_attention needs the whole KV cache on the host (cache_gpu_percent: 0)")
        if self.kind in (PolicyKind.hybridserve, PolicyKind.kvpr) and self.cache_gpu_percent > 0:
            raise ValueError(f"{self.kind.value} keeps the whole cache on the host (cache_gpu_percent: 0)")
        return self

    @property
    def label(self) -> str:
        """Short human name, e.g. `hybrid r=0.40`, `kv-only cpu-attn`, `kvpr l=per-step`."""
        if self.kind is PolicyKind.kv_only:
            return "kv-only cpu-attn" if self.cpu_attention else "kv-only"
        if self.kind is PolicyKind.flexgen:
            return "flexgen cpu-attn" if self.cpu_attention else "flexgen"
        if self.kind is PolicyKind.kvpr:
            split = self.split_tokens if self.split_tokens is not None else self.split_rule.value
            return f"kvpr l={split}"
        if self.kind is PolicyKind.hybridserve:
            variant = "act-only" if self.kv_ratio == 0 else f"r={self.kv_ratio:.2f}"
            return f"hybridserve {variant} {self.mini_batching.value}"
        return f"{self.kind.value} r={self.kv_ratio:.2f}"


# -------------------------------------------------------------------------- scenario


class PointSpec(Spec):
    """One fully resolved simulation point: what a sweep runs and a result row keys on."""

    scenario: str
    model: ModelSpec
    hardware: HardwareSpec
    workload: WorkloadSpec
    policy: PolicySpec

    @model_validator(mode="after")
    def _check_block(self) -> PointSpec:
        gbs = self.policy.gpu_batch_size
        if gbs is not None and gbs * self.policy.num_gpu_batches != self.workload.batch:
            raise ValueError(
                f"policy.gpu_batch_size ({gbs}) x policy.num_gpu_batches "
                f"({self.policy.num_gpu_batches}) must equal workload.batch ({self.workload.batch})"
            )
        if gbs is None and self.workload.batch % self.policy.num_gpu_batches:
            raise ValueError(
                f"workload.batch ({self.workload.batch}) is not divisible by "
                f"policy.num_gpu_batches ({self.policy.num_gpu_batches})"
            )
        split = self.policy.split_tokens
        if split is not None and split > self.model.max_positions:
            # a split past the context keeps every token as activations (allowed); past the model's
            # positions it names a token no run of this model can have
            raise ValueError(f"policy.split_tokens ({split}) is beyond the model's {self.model.max_positions} "
                             f"positions; use at most {self.model.max_positions}")
        return self

    @property
    def gpu_batch_size(self) -> int:
        return self.policy.gpu_batch_size or self.workload.batch // self.policy.num_gpu_batches
