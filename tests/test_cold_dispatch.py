"""What an op costs more when it finds the caches flushed: measured on tiny models, charged per op."""

from __future__ import annotations

import pytest
from conftest import make_point, tiny_model
from test_validate import synthetic_profile

from hssim.sim.costs.profile import HardwareProfile, ProfiledCostModel
from hssim.sim.costs.profile_ranges import scaled_profile
from hssim.sim.policies import build_schedule
from hssim.sim.schedule import OpKind


def test_every_op_is_charged_its_kinds_cold_cost_on_top_of_its_dispatch():
    model = tiny_model(layers=2, hidden=256)
    p = make_point(model, batch=4, prompt_len=16, gen_len=3, num_gpu_batches=2, kind="kv-only")
    warm = synthetic_profile(op_overhead_s={"ffn": 1e-4, "attention:layernorm": 2e-4})
    cold = synthetic_profile(op_overhead_s={"ffn": 1e-4, "attention:layernorm": 2e-4},
                             op_cold_s={"ffn": 3e-4, "attention:layernorm": 5e-4})
    for op in build_schedule(p).ops:
        extra = ProfiledCostModel(cold, model).duration_s(op) - ProfiledCostModel(warm, model).duration_s(op)
        want = {OpKind.ffn: 3e-4, OpKind.attention: 5e-4}.get(op.kind, 0.0)
        assert extra == pytest.approx(want, abs=1e-12)
    # a profile without it (measured before it existed) loads and charges nothing for it
    assert HardwareProfile.model_validate(warm.model_dump()).op_cold_s == {}
    # it is a dispatch cost: it scales with the launch overhead figure
    doubled = scaled_profile(cold, {"gpu.launch_overhead_s": 2 * cold.launch_s})
    assert doubled.op_cold_s == {"ffn": 6e-4, "attention:layernorm": 1e-3}


def test_a_negative_or_absurd_cold_cost_is_refused():
    with pytest.raises(ValueError, match="op_cold_s"):
        synthetic_profile(op_cold_s={"ffn": -1e-4})
    with pytest.raises(ValueError, match="op_cold_s"):
        synthetic_profile(op_cold_s={"ffn": 5.0})


def test_cold_dispatch_is_measured_on_the_cpu_backend_for_every_kind_of_the_tiny_schedules():
    pytest.importorskip("torch")
    from hssim.validate.calibrate import DISPATCH_POLICIES, _tiny_models, measure_cold_dispatch

    prof = synthetic_profile(dtype="bf16")
    cold = measure_cold_dispatch(prof, "cpu", prof.hardware_spec(), rounds=1)
    kinds = set()
    for m in _tiny_models("bf16"):
        for pol in DISPATCH_POLICIES:
            p = make_point(m, batch=4, prompt_len=8, gen_len=4, **pol.model_dump(exclude_defaults=True))
            kinds |= {f"{op.kind.value}:{m.norm_kind.value}" for op in build_schedule(p).ops}
    assert set(cold) == kinds
    assert all(v >= 0 for v in cold.values()) and any(v > 0 for v in cold.values())
    # on a GPU the weights do not stream through the host's caches: nothing to charge
    assert measure_cold_dispatch(prof, "cuda", prof.hardware_spec()) == {}
