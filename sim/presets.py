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


MiB = 2**20

#: What the CUDA context, the loaded PyTorch kernels and one cuBLAS workspace keep on every GPU:
#: about 300-400 MB per process once the first CUDA tensor exists with CUDA >= 11.7's lazy module
#: loading (pytorch/pytorch issues #20532 and #107667, maintainer comment), plus the 8,519,680 B a
#: first cuBLAS GEMM leaves allocated (pytorch/pytorch issue #95668). The upper end, 400 MB, is kept.
CUDA_CONTEXT_RESERVE_BYTES = 400 * 10**6 + 8_519_680

#: Sustained share of the DRAM channels' wire rate a memory-bound multi-threaded kernel gets
#: (assumption: no STREAM measurement of these hosts' CPUs was found; 75% is the middle of the
#: 74-78% STREAM efficiency TI reports for DDR4 (SPRAD45A, Table 3-3), and is applied to every host).
DRAM_STREAM_EFFICIENCY = 0.75


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


def _host(memory_bytes: int, cpu: CPUSpec) -> HostSpec:
    """Host memory of `memory_bytes`, at the sustained share of its CPU's DRAM wire rate."""
    return HostSpec(memory_bytes=memory_bytes, memory_Bps=cpu.dram_peak_Bps * DRAM_STREAM_EFFICIENCY)


# GPU fp16 GEMM rates: "TORCH" is zzc0721/torch-performance-test-data, database.md (commit 0785868):
# best fp16 `torch.matmul` TFLOPS over square sizes 1024-10240 (test.py), one row per contributed run.

# FlexGen's host (Sheng et al. 2023, Sec. 6): a GCP VM with one T4 and 208 GB of DRAM. FlexGen names no
# machine type; n1-highmem-32 (32 vCPU x 6.5 GB = 208 GB, GCP machine-type docs) is the only predefined
# N1 type with 208 GB. 32 vCPUs are 16 physical cores (2 hyper-threads per core on N1). N1 zones with
# T4s run Intel Skylake Xeon (GCP "CPU platforms" doc; which platform FlexGen got is not published):
# assumption: one Skylake-SP socket's memory, 6 channels of DDR4-2666 (Intel ARK, Xeon Scalable 1st gen).
N1_HIGHMEM_32 = CPUSpec(name="GCP n1-highmem-32 (Skylake, 16 cores)", sockets=1, cores_per_socket=16,
                        dram_type="DDR4-2666", dram_channels_per_socket=6, dram_MTps=2666)
# HybridServe's host: dual-socket Xeon Gold 6326 (HybridServe paper, setup): 16 cores per socket,
# 8 channels DDR4-3200 per socket (Intel ARK, Xeon Gold 6326).
XEON_GOLD_6326_X2 = CPUSpec(name="2x Xeon Gold 6326", sockets=2, cores_per_socket=16, dram_type="DDR4-3200",
                            dram_channels_per_socket=8, dram_MTps=3200)
# KVPR's host: an AMD EPYC with 64 cores (KVPR paper, setup); the model is not named: assumption, one
# socket of EPYC 7763 (Milan, 64 cores) with its 8 channels of DDR4-3200 (AMD product page).
EPYC_64C = CPUSpec(name="EPYC 64-core (7763 assumed)", sockets=1, cores_per_socket=64, dram_type="DDR4-3200",
                   dram_channels_per_socket=8, dram_MTps=3200)
# H100/H200 servers: assumption, dual-socket Xeon Platinum 8480+ (Sapphire Rapids, 56 cores, 8 channels
# DDR5-4800 per socket, Intel ARK), the host of NVIDIA's HGX H100/H200 reference systems.
XEON_8480_X2 = CPUSpec(name="2x Xeon Platinum 8480+", sockets=2, cores_per_socket=56, dram_type="DDR5-4800",
                       dram_channels_per_socket=8, dram_MTps=4800)
# Grace (GH200 datasheet): 72 Neoverse V2 cores, 480 GB LPDDR5X at up to 512 GB/s; the datasheet gives the
# bandwidth, not channels: 32 channels x 2000 MT/s x 8 B reproduces its 512 GB/s (assumption).
GRACE_72C = CPUSpec(name="Grace 72-core", sockets=1, cores_per_socket=72, dram_type="LPDDR5X",
                    dram_channels_per_socket=32, dram_MTps=2000)

HARDWARE: dict[str, HardwareSpec] = {
    # FlexGen's box (Sheng et al. 2023, Sec. 6): GCP, one T4 16 GB, 208 GB DRAM, PCIe 3.0.
    "t4-pcie3": HardwareSpec(
        name="t4-pcie3",
        gpu=GPUSpec(
            name="T4-16GB",
            memory_bytes=15360 * MiB,  # nvidia-smi "15360MiB" on a Tesla T4 (not 16 GiB: ECC and driver)
            reserved_bytes=CUDA_CONTEXT_RESERVE_BYTES,
            peak_flops=65 * TFLOPS,  # T4 datasheet: 65 TFLOPS mixed precision
            hbm_Bps=320 * GB,  # T4 datasheet: 320 GB/s
            # Sustained, not burst: cuBLAS fp16 4096^3 GEMM timed over 100 iterations on a T4 gives
            # about 24 TFLOPS, the 70 W power cap lowering the clock under continuous matrix work
            # (NVIDIA developer forum, "About GPU peak performance", t/264462, answer by NVIDIA staff).
            # A short burst reaches 41.91 (TORCH: Google Colab T4, PyTorch 2.8.0; Kaggle: 42.71), but an
            # offloaded run keeps the GEMM units busy for minutes, so the capped rate is the one it meets.
            matmul_efficiency=24.0 / 65,
            # Jia et al., "Dissecting the NVidia Turing T4 GPU via Microbenchmarking" (arXiv:1903.07486),
            # global-memory throughput: about 220 GB/s of 320
            hbm_efficiency=220 / 320,
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
        host=_host(208 * GB, N1_HIGHMEM_32),  # FlexGen paper, Sec. 6 setup: 208 GB
        cpu=N1_HIGHMEM_32,
    ),
    # HybridServe's box: one RTX 4090 on PCIe 4.0 x16, dual Xeon Gold 6326.
    "rtx4090-pcie4": HardwareSpec(
        name="rtx4090-pcie4",
        gpu=GPUSpec(
            name="RTX4090-24GB",
            memory_bytes=24564 * MiB,  # nvidia-smi "24564MiB" on an RTX 4090 (public dumps)
            reserved_bytes=CUDA_CONTEXT_RESERVE_BYTES,
            peak_flops=165.2 * TFLOPS,  # Ada whitepaper: FP16 tensor, FP32 accumulate, dense
            hbm_Bps=1008 * GB,  # Ada whitepaper: 1008 GB/s
            # TORCH: RTX 4090 24GB, 165.08 TFLOPS (PyTorch 2.4.0; other 24 GB rows 162-171): at the spec
            # peak, so 1.0
            matmul_efficiency=1.0,
            # tinygrad/open-gpu-kernel-modules issue #6, p2pBandwidthLatencyTest on 3x RTX 4090, device-local
            # diagonal 918.31-923.74 GB/s: 918 of 1008
            hbm_efficiency=918 / 1008,
            launch_overhead_s=5e-6,  # assumption
        ),
        link=_pcie("pcie4-x16", 25 * GB),  # DESIGN.md: PCIe 4.0 x16 pinned achieved 25-26 GB/s
        host=_host(512 * GB, XEON_GOLD_6326_X2),  # host memory size: assumption
        cpu=XEON_GOLD_6326_X2,
    ),
    # KVPR's box: A100 40 GB on PCIe 4.0 x16, AMD EPYC 64 cores.
    "a100-40gb-pcie4": HardwareSpec(
        name="a100-40gb-pcie4",
        gpu=GPUSpec(
            name="A100-40GB",
            # cudaMemGetInfo total 41,459,908,608 B on an A100-SXM4-40GB with ECC on (ekondis/mixbench #18)
            memory_bytes=41_459_908_608,
            reserved_bytes=CUDA_CONTEXT_RESERVE_BYTES,
            peak_flops=312 * TFLOPS,  # A100 datasheet: FP16 tensor dense
            hbm_Bps=1555 * GB,  # A100 40GB datasheet: 1555 GB/s
            matmul_efficiency=247.63 / 312,  # TORCH: NVIDIA A100 40GB, 247.63 TFLOPS (PyTorch 2.2.0)
            # ekondis/mixbench issue #18, A100-SXM4-40GB, FP64 streaming at 1-2 FLOP/byte: 1410-1417 GB/s
            hbm_efficiency=1410 / 1555,
            launch_overhead_s=5e-6,  # assumption
        ),
        link=_pcie("pcie4-x16", 25 * GB),  # DESIGN.md: 25-26 GB/s achieved
        host=_host(512 * GB, EPYC_64C),  # host memory size: assumption
        cpu=EPYC_64C,
    ),
    "h100-80gb-pcie5": HardwareSpec(
        name="h100-80gb-pcie5",
        gpu=GPUSpec(
            name="H100-80GB",
            # nvidia-smi / device plugin "81559Mi" for "NVIDIA H100 80GB HBM3" (Karpenter NVIDIA-DRA example)
            memory_bytes=81559 * MiB,
            reserved_bytes=CUDA_CONTEXT_RESERVE_BYTES,
            peak_flops=989.4 * TFLOPS,  # H100 SXM datasheet: FP16 tensor dense
            hbm_Bps=3350 * GB,  # H100 SXM datasheet: 3.35 TB/s
            matmul_efficiency=761.84 / 989.4,  # TORCH: NVIDIA H100 80GB HBM3, 761.84 TFLOPS (PyTorch 2.8.0)
            # no public H100 SXM HBM measurement found: A100-40GB's measured share (mixbench #18, 1410 of
            # 1555) is used, the closest measured HBM sibling (assumption)
            hbm_efficiency=1410 / 1555,
            launch_overhead_s=4e-6,  # assumption
        ),
        link=_pcie("pcie5-x16", 50 * GB),  # DESIGN.md: PCIe 5.0 x16 pinned achieved 50-51 GB/s
        host=_host(1024 * GB, XEON_8480_X2),  # host memory size: assumption
        cpu=XEON_8480_X2,
    ),
    # H200 SXM 141 GB (HBM3e) on PCIe 5.0: the GPU validation runs meet.
    "h200-141gb-pcie5": HardwareSpec(
        name="h200-141gb-pcie5",
        gpu=GPUSpec(
            name="H200-141GB",
            memory_bytes=143771 * MiB,  # nvidia-smi "143771MiB" on H200 (NVIDIA/cuda-samples issue #311)
            reserved_bytes=CUDA_CONTEXT_RESERVE_BYTES,
            peak_flops=989.4 * TFLOPS,  # H200 datasheet: FP16 tensor dense, as H100 SXM
            hbm_Bps=4800 * GB,  # H200 datasheet: 4.8 TB/s HBM3e
            matmul_efficiency=759.40 / 989.4,  # TORCH: NVIDIA H200, 759.40 TFLOPS
            # no public H200 HBM measurement found: A100-40GB's measured share, as for H100 (assumption)
            hbm_efficiency=1410 / 1555,
            launch_overhead_s=4e-6,  # assumption, as H100
        ),
        link=_pcie("pcie5-x16", 50 * GB),  # DESIGN.md: PCIe 5.0 x16 pinned achieved 50-51 GB/s
        host=_host(2048 * GB, XEON_8480_X2),  # host memory size: assumption
        cpu=XEON_8480_X2,
    ),
    # Oneiros' box: GH200, H100 96 GB with Grace over NVLink-C2C.
    "gh200-c2c": HardwareSpec(
        name="gh200-c2c",
        gpu=GPUSpec(
            name="GH200-H100-96GB",
            # GH200 datasheet: 96 GB HBM3; no CUDA-reported total found: 96 GiB scaled by H100's reported
            # / nominal ratio (81559 of 81920 MiB) (assumption)
            memory_bytes=round(96 * GiB * 81559 / 81920),
            reserved_bytes=CUDA_CONTEXT_RESERVE_BYTES,
            peak_flops=989.4 * TFLOPS,  # GH200 datasheet: FP16 tensor dense
            hbm_Bps=4000 * GB,  # GH200 datasheet: 4 TB/s
            # stas00/ml-engineering "Maximum Achievable Matmul FLOPS" table: GH200, 828.6 TFLOPS BF16 (v2)
            matmul_efficiency=828.6 / 989.4,
            hbm_efficiency=1410 / 1555,  # no public measurement found: A100's share (assumption)
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
        # Grace datasheet: 480 GB LPDDR5X, 512 GB/s
        host=HostSpec(memory_bytes=480 * GB, memory_Bps=512 * GB * DRAM_STREAM_EFFICIENCY),
        cpu=GRACE_72C,
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
