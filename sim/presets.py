"""Named models and hardware boxes. Every number carries its source.

"assumption" marks a figure that no cited measurement fixes; change it in a
scenario (`hardware: {preset: ..., link: {...}}`) or with a calibrated profile.
"""

from __future__ import annotations

from .specs import (
    GB,
    CPUSpec,
    FFNKind,
    GiB,
    GPUSpec,
    HardwareSpec,
    HostSpec,
    LinkSpec,
    ModelSpec,
    NormKind,
)

TFLOPS = 1e12


def _opt(name: str, layers: int, hidden: int, heads: int) -> ModelSpec:
    # OPT (Zhang et al. 2022, Table 1 / HF configs facebook/opt-*): FFN = 4h, ReLU,
    # pre-LayerNorm with biases, vocab 50272, 2048 learned positions, tied LM head.
    return ModelSpec(
        name=name, layers=layers, hidden=hidden, heads=heads, kv_heads=heads,
        ffn=4 * hidden, ffn_kind=FFNKind.relu, norm_kind=NormKind.layernorm, bias=True,
        vocab=50272, max_positions=2048,
    )


def _llama(name: str, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int,
           vocab: int = 32000, max_positions: int = 4096) -> ModelSpec:
    # LLaMA-2 (Touvron et al. 2023; HF configs meta-llama/Llama-2-*-hf): RMSNorm, SwiGLU,
    # no biases, rotary positions (no position table), untied LM head.
    return ModelSpec(
        name=name, layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, ffn=ffn,
        ffn_kind=FFNKind.swiglu, norm_kind=NormKind.rmsnorm, bias=False,
        vocab=vocab, max_positions=max_positions,
    )


MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in [
        _opt("opt-1.3b", 24, 2048, 32),
        _opt("opt-6.7b", 32, 4096, 32),
        _opt("opt-13b", 40, 5120, 40),
        _opt("opt-30b", 48, 7168, 56),
        _opt("opt-66b", 64, 9216, 72),
        _opt("opt-175b", 96, 12288, 96),
        _llama("llama-2-7b", 32, 4096, 32, 32, 11008),
        _llama("llama-2-13b", 40, 5120, 40, 40, 13824),
        _llama("llama-2-70b", 80, 8192, 64, 8, 28672),  # GQA: 8 KV heads of 128
        # LLaMA-3-8B (HF config meta-llama/Meta-Llama-3-8B): GQA 8 KV heads, 128k vocab.
        _llama("llama-3-8b", 32, 4096, 32, 8, 14336, vocab=128256, max_positions=8192),
    ]
}


def _pcie(name: str, pinned_Bps: float, pageable_fraction: float = 0.5) -> LinkSpec:
    # Pageable copies are staged through a pinned bounce buffer by the driver;
    # bandwidthTest-style runs typically reach about half the pinned rate (assumption).
    return LinkSpec(
        name=name,
        h2d_pinned_Bps=pinned_Bps,
        d2h_pinned_Bps=pinned_Bps,
        h2d_pageable_Bps=pinned_Bps * pageable_fraction,
        d2h_pageable_Bps=pinned_Bps * pageable_fraction,
        latency_s=10e-6,  # per cudaMemcpyAsync issue + DMA setup (assumption)
    )


HARDWARE: dict[str, HardwareSpec] = {
    # FlexGen's box (Sheng et al. 2023, Sec. 6): GCP, one T4 16 GB, 208 GB DRAM, PCIe 3.0.
    "t4-pcie3": HardwareSpec(
        name="t4-pcie3",
        gpu=GPUSpec(
            name="T4-16GB",
            memory_bytes=16 * GB,  # NVIDIA T4 datasheet: 16 GB GDDR6
            peak_flops=65 * TFLOPS,  # T4 datasheet: 65 TFLOPS mixed precision
            hbm_Bps=320 * GB,  # T4 datasheet: 320 GB/s
            # FlexGen's fitted GEMM rate on this box: 21.24 TFLOP/s of 65 (cost_model.py).
            matmul_efficiency=21.24 / 65,
            launch_overhead_s=5e-6,  # typical CUDA kernel launch (assumption)
        ),
        link=LinkSpec(
            name="pcie3-x16",
            h2d_pinned_Bps=12.89 * GiB,  # FlexGen cost_model.py ctog_bdw (fitted)
            d2h_pinned_Bps=12.89 * GiB,  # symmetric PCIe 3.0 x16 (assumption: same as H2D)
            h2d_pageable_Bps=12.89 * GiB * 0.5,  # about half of pinned (assumption)
            d2h_pageable_Bps=0.97 * GiB,  # FlexGen cost_model.py gtoc_bdw_cache (unpinned)
            latency_s=10e-6,  # assumption
        ),
        host=HostSpec(
            memory_bytes=208 * GB,  # FlexGen paper, Sec. 6 setup
            memory_Bps=60 * GB,  # n1 host, two DDR4 channels per socket (assumption)
        ),
        cpu=CPUSpec(name="n1-32vcpu", flops=0.0123 * TFLOPS),  # FlexGen cost_model.py cpu_flops
    ),
    # HybridServe's box: one RTX 4090 on PCIe 4.0 x16.
    "rtx4090-pcie4": HardwareSpec(
        name="rtx4090-pcie4",
        gpu=GPUSpec(
            name="RTX4090-24GB",
            memory_bytes=24 * GB,  # NVIDIA Ada whitepaper: 24 GB GDDR6X
            peak_flops=165.2 * TFLOPS,  # Ada whitepaper: FP16 tensor, FP32 accumulate, dense
            hbm_Bps=1008 * GB,  # Ada whitepaper: 1008 GB/s
            launch_overhead_s=5e-6,  # assumption
        ),
        link=_pcie("pcie4-x16", 25 * GB),  # DESIGN.md: PCIe 4.0 x16 pinned achieved 25-26 GB/s
        host=HostSpec(memory_bytes=512 * GB, memory_Bps=80 * GB),  # assumption: workstation DDR5
        cpu=CPUSpec(name="desktop-cpu", flops=0.5 * TFLOPS),  # assumption
    ),
    # KVPR's box: A100 40 GB on PCIe 4.0 x16.
    "a100-40gb-pcie4": HardwareSpec(
        name="a100-40gb-pcie4",
        gpu=GPUSpec(
            name="A100-40GB",
            memory_bytes=40 * GB,  # A100 datasheet
            peak_flops=312 * TFLOPS,  # A100 datasheet: FP16 tensor dense
            hbm_Bps=1555 * GB,  # A100 40GB datasheet: 1555 GB/s
            launch_overhead_s=5e-6,  # assumption
        ),
        link=_pcie("pcie4-x16", 25 * GB),  # DESIGN.md: 25-26 GB/s achieved
        host=HostSpec(memory_bytes=512 * GB, memory_Bps=150 * GB),  # assumption: 2-socket server
        cpu=CPUSpec(name="server-cpu", flops=1 * TFLOPS),  # assumption
    ),
    "h100-80gb-pcie5": HardwareSpec(
        name="h100-80gb-pcie5",
        gpu=GPUSpec(
            name="H100-80GB",
            memory_bytes=80 * GB,  # H100 SXM datasheet
            peak_flops=989.4 * TFLOPS,  # H100 SXM datasheet: FP16 tensor dense
            hbm_Bps=3350 * GB,  # H100 SXM datasheet: 3.35 TB/s
            launch_overhead_s=4e-6,  # assumption
        ),
        link=_pcie("pcie5-x16", 50 * GB),  # DESIGN.md: PCIe 5.0 x16 pinned achieved 50-51 GB/s
        host=HostSpec(memory_bytes=1024 * GB, memory_Bps=300 * GB),  # assumption: 2-socket DDR5
        cpu=CPUSpec(name="server-cpu", flops=2 * TFLOPS),  # assumption
    ),
    # Oneiros' box: GH200, H100 96 GB with Grace over NVLink-C2C.
    "gh200-c2c": HardwareSpec(
        name="gh200-c2c",
        gpu=GPUSpec(
            name="GH200-H100-96GB",
            memory_bytes=96 * GB,  # GH200 datasheet: 96 GB HBM3
            peak_flops=989.4 * TFLOPS,  # GH200 datasheet: FP16 tensor dense
            hbm_Bps=4000 * GB,  # GH200 datasheet: 4 TB/s
            launch_overhead_s=4e-6,  # assumption
        ),
        link=LinkSpec(
            name="nvlink-c2c",
            h2d_pinned_Bps=427 * GB,  # Oneiros paper: CPU->GPU read-dominant, measured
            d2h_pinned_Bps=366 * GB,  # Oneiros paper: 1:1 read/write figure (conservative)
            # C2C is cache-coherent; pageable copies avoid the PCIe bounce buffer (assumption:
            # 80% of pinned).
            h2d_pageable_Bps=427 * GB * 0.8,
            d2h_pageable_Bps=366 * GB * 0.8,
            latency_s=5e-6,  # assumption
        ),
        host=HostSpec(memory_bytes=480 * GB, memory_Bps=512 * GB),  # Grace datasheet: 480 GB LPDDR5X, 512 GB/s
        cpu=CPUSpec(name="grace-72c", flops=3 * TFLOPS),  # assumption: 72 Neoverse V2 cores
    ),
}


def model_preset(name: str) -> ModelSpec:
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown model preset '{name}'; known: {', '.join(MODELS)}") from None


def hardware_preset(name: str) -> HardwareSpec:
    try:
        return HARDWARE[name.lower()]
    except KeyError:
        raise KeyError(f"unknown hardware preset '{name}'; known: {', '.join(HARDWARE)}") from None
