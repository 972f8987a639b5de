"""Hardware rates and FlexGen's CPU attention: presets, the step model and its micro-benchmark."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hssim.sim.costs.cpu_attention import (
    PER_THREAD_S_PER_UNIT,
    flexgen_cpu_attention_s,
    flexgen_cpu_attention_steps,
)
from hssim.sim.presets import CUDA_CONTEXT_RESERVE_BYTES, HARDWARE, hardware_preset
from hssim.sim.specs import CPUSpec

GiB = 2**30


def test_every_gpu_preset_is_below_its_datasheet_and_its_nominal_capacity():
    for hw in HARDWARE.values():
        g = hw.gpu
        assert g.achieved_flops <= g.peak_flops and g.achieved_hbm_Bps <= g.hbm_Bps
        assert g.reserved_bytes == CUDA_CONTEXT_RESERVE_BYTES
        assert 0 < g.memory_bytes - g.reserved_bytes < g.memory_bytes
        assert hw.host.memory_Bps < hw.cpu.dram_peak_Bps  # sustained below the wire rate


def test_h200_preset_is_the_141_gb_hbm3e_part_on_pcie5():
    hw = hardware_preset("h200-141gb-pcie5")
    assert hw.gpu.hbm_Bps == 4.8e12
    assert 140 * GiB < hw.gpu.memory_bytes < 141 * GiB  # nvidia-smi's 143771 MiB, not 141e9 B or 141 GiB
    assert hw.link.h2d_pinned_Bps == hardware_preset("h100-80gb-pcie5").link.h2d_pinned_Bps


def test_cuda_reported_capacities_are_not_the_marketing_sizes():
    assert hardware_preset("rtx4090-pcie4").gpu.memory_bytes == 24564 * 2**20 < 24 * GiB
    assert hardware_preset("t4-pcie3").gpu.memory_bytes == 15 * GiB


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 64), n=st.sampled_from([8, 32, 56]), s=st.integers(2, 2048))
def test_flexgen_cpu_steps_move_at_least_five_times_the_fp16_kv(b, n, s):
    steps = {x.name: x for x in flexgen_cpu_attention_steps(b, n, 128, s)}
    fp16_kv = 2 * b * n * 128 * 2 * (s - 1)
    # the fp32 workspace copy reads the fp16 K,V once and writes it twice as wide
    assert steps["cast"].host_bytes == 3 * fp16_kv
    total = sum(x.host_bytes for x in steps.values())
    assert total >= 5 * fp16_kv
    flops = sum(x.flops for x in steps.values())
    assert flops >= 4 * b * n * 128 * s  # the two bmm's


def test_cpu_attention_scales_with_cores_until_dram_caps_it():
    hw = hardware_preset("rtx4090-pcie4")
    args = (16, 32, 128, 1024)

    def with_cores(cores: int) -> float:
        cpu = hw.cpu.model_copy(update={"sockets": 1, "cores_per_socket": cores})
        return flexgen_cpu_attention_s(hw.model_copy(update={"cpu": cpu}), *args)

    t1, t2, t_many = with_cores(1), with_cores(2), with_cores(100_000)
    assert t2 == pytest.approx(t1 / 2, rel=0.02)  # per-thread work dominates at 1-2 cores
    floor = sum(x.host_bytes for x in flexgen_cpu_attention_steps(*args)) / hw.host.memory_Bps
    assert t_many == pytest.approx(floor, rel=1e-9)  # every step at the DRAM rate
    assert all(v > 0 for v in PER_THREAD_S_PER_UNIT.values())


def test_a_fitted_cpu_rate_replaces_the_step_model():
    from hssim.sim.costs.roofline import cpu_time_s

    hw = hardware_preset("t4-pcie3")
    fitted = hw.model_copy(update={"cpu": CPUSpec(flops=1e10)})
    assert cpu_time_s(fitted, 1e10, 0.0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cpu_time_s(hw, 1e10, 0.0, {"batch": 1})


def test_micro_benchmark_runs_flexgens_code_and_its_steps_compute_attention():
    torch = pytest.importorskip("torch")

    from hssim.validate.microbench import bench_flexgen_cpu_attention, flexgen_cpu_attention_step_fns

    b, n, d, s = 2, 4, 16, 9
    fns, t = flexgen_cpu_attention_step_fns(b, n, d, s)
    for name in ("cast", "new_token", "bmm_qk", "mask", "softmax"):
        fns[name]()
    out = fns["bmm_av"]()
    # plain attention over the fp16 cache with the new token appended, in fp32
    k = torch.cat([t["k_home"][:s - 1], t["k_new"]]).float().permute(1, 0, 2)  # (b*n, s, d)
    v = torch.cat([t["v_home"][:s - 1], t["v_new"]]).float().permute(1, 0, 2)
    q = t["q"].float()
    want = torch.softmax(q @ k.transpose(1, 2), dim=2) @ v
    assert torch.allclose(out, want, atol=1e-4)
    df = bench_flexgen_cpu_attention(((b, n, d, s),), threads=1, min_total_s=0.001)
    assert set(df["step"]) == set(PER_THREAD_S_PER_UNIT)
    assert (df["seconds"] > 0).all() and all(math.isfinite(x) for x in df["seconds"])
