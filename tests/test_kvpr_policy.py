"""KVPR: split point, early W_K/W_V load, and the closed form against the simulation."""

from __future__ import annotations

import pytest
from conftest import make_point, tiny_model

from hssim.sim.api import run_point
from hssim.sim.policies import build_schedule
from hssim.sim.policies.kvpr import closed_form_split_for, kvpr_objective_s
from hssim.sim.presets import hardware_preset
from hssim.sim.schedule import OpKind
from hssim.sim.specs import PointSpec


def _ideal_box():
    """A box where only FLOPs and link bytes cost time: no HBM floor, latency or launches."""
    hw = hardware_preset("a100-40gb-pcie4")
    return hw.model_copy(update={
        "gpu": hw.gpu.model_copy(update={"hbm_Bps": 1e18, "launch_overhead_s": 0.0}),
        "link": hw.link.model_copy(update={"latency_s": 0.0}),
    })


def _layer_time_s(point: PointSpec) -> float:
    """Simulated critical path of the decode layer: activations in, then rebuild || K,V stream."""
    res = run_point(point)
    tl = res.result.timeline()
    dec = tl[tl["step"] == 1]
    kinds = dec[dec["kind"].isin(["load_act", "load_kv", "recompute_kv"])]
    return float(kinds["end_s"].max() - kinds["start_s"].min())


def test_closed_form_agrees_with_the_simulated_optimum_when_overlap_is_perfect():
    m = tiny_model(layers=1, hidden=1024, heads=8)
    hw = _ideal_box()
    prompt = 400

    def point(split):
        p = make_point(m, batch=8, prompt_len=prompt, gen_len=2, kind="kvpr", split_tokens=split,
                       weights_gpu_percent=100.0, step_barrier=True)
        return p.model_copy(update={"hardware": hw})

    times = {n: _layer_time_s(point(n)) for n in range(0, prompt + 1, 8)}
    best = min(times, key=times.get)
    closed = closed_form_split_for(m, hw, prompt)
    assert abs(best - closed) <= 8
    # and the simulated layer time is the formula's own value there
    f = kvpr_objective_s(closed, prompt, 8, m.hidden, 2, hw.link.h2d_pinned_Bps,
                         hw.gpu.peak_flops * hw.gpu.matmul_efficiency)
    assert _layer_time_s(point(closed)) == pytest.approx(f, rel=1e-3)


def test_kv_projection_weights_arrive_first_and_unblock_the_rebuild():
    p = make_point("opt-1.3b", layers=2, kind="kvpr", split_tokens=16, gen_len=3)
    ops = build_schedule(p).ops
    loads = [op for op in ops if op.kind is OpKind.load_weights and op.layer == 1 and op.step == 1]
    assert [op.shape_dict.get("kv_proj", 0) for op in loads] == [1, 0]
    assert sum(op.link_bytes for op in loads) == p.model.weight_bytes_per_layer
    rec = next(op for op in ops if op.kind is OpKind.recompute_kv and op.layer == 1 and op.step == 1)
    assert loads[0].id in rec.deps and loads[1].id not in rec.deps


def test_every_token_is_stored_as_both_kv_and_activation_and_split_is_respected():
    p = make_point("opt-1.3b", layers=2, kind="kvpr", split_tokens=10, prompt_len=40, gen_len=3, batch=2)
    ops = build_schedule(p).ops
    m = p.model
    act = sum(op.link_bytes for op in ops if op.kind is OpKind.load_act)
    kv = sum(op.link_bytes for op in ops if op.kind is OpKind.load_kv)
    steps = [40, 41]
    assert act == sum(2 * 10 * m.act_bytes_per_token * 2 for _ in steps)
    assert kv == sum(2 * (s - 10) * m.kv_bytes_per_token * 2 for s in steps)
    stored_act = sum(op.link_bytes for op in ops if op.kind is OpKind.store_act)
    assert stored_act == 2 * 42 * m.act_bytes_per_token * 2


def test_kvpr_decodes_faster_than_flexgen_on_a_link_bound_box():
    """Same runtime (barriers), same block, both caches pinned: sending the first l tokens as
    activations (half the bytes of their K,V) and rebuilding them must pay on PCIe."""
    common = dict(layers=4, batch=32, num_gpu_batches=4, prompt_len=512, gen_len=3, hardware="a100-40gb-pcie4")
    per_step = run_point(make_point("opt-13b", kind="kvpr", split_rule="per-step", **common)).metrics
    flexgen = run_point(make_point("opt-13b", kind="flexgen", cache_pinned=True, **common)).metrics
    assert per_step["decode_tok_s"] > 1.1 * flexgen["decode_tok_s"]


def test_more_work_never_decodes_faster():
    """kvpr with l = 0 is flexgen's work (pinned) plus the activation stores: never faster, in
    throughput or in decode throughput (prefill ends with its last GPU compute, not its stores)."""
    common = dict(layers=4, batch=32, num_gpu_batches=4, prompt_len=512, gen_len=4, hardware="a100-40gb-pcie4")
    kvpr0 = run_point(make_point("opt-13b", kind="kvpr", split_tokens=0, **common)).metrics
    flexgen = run_point(make_point("opt-13b", kind="flexgen", cache_pinned=True, **common)).metrics
    assert kvpr0["throughput_tok_s"] <= flexgen["throughput_tok_s"] * (1 + 1e-12)
    assert kvpr0["decode_tok_s"] <= flexgen["decode_tok_s"] * (1 + 1e-12)


def test_closed_form_never_sends_activations_on_a_gqa_model():
    """With 8 KV heads of 64 values, an activation (h values) is larger than the K,V it replaces."""
    from hssim.sim.presets import model_preset

    m = model_preset("llama-2-70b")
    for prompt in (128, 1024, 4000):
        assert closed_form_split_for(m, hardware_preset("h100-80gb-pcie5"), prompt) == 0
