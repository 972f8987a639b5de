"""KVPR: what its code stores, what it overlaps, and its split point."""

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


@pytest.mark.parametrize("step_barrier", [True, False])
def test_the_rebuild_runs_after_its_own_kv_arrives_as_in_kvprs_code(step_barrier):
    """KVPR's code rebuilds a layer's K,V only once that layer's activations and K,V have both
    landed (its FlexGen fork syncs after every (sub)layer; its HF cache waits on the one
    prefetch stream): on a box where only FLOPs and link bytes cost time, a decode layer's
    cache phase takes activations + K,V + rebuild in series, not its formula's
    act + max(rebuild, K,V)."""
    m = tiny_model(layers=1, hidden=1024, heads=8)
    hw = _ideal_box()
    prompt, split = 400, 150
    p = make_point(m, batch=8, prompt_len=prompt, gen_len=2, kind="kvpr", split_tokens=split,
                   weights_gpu_percent=100.0, step_barrier=step_barrier).model_copy(update={"hardware": hw})
    ops = build_schedule(p).ops
    rec = next(op for op in ops if op.kind is OpKind.recompute_kv)
    kv = next(op for op in ops if op.kind is OpKind.load_kv and op.step == rec.step and op.layer == rec.layer)
    assert kv.id in rec.deps
    link, flops = hw.link.h2d_pinned_Bps, hw.gpu.peak_flops * hw.gpu.matmul_efficiency
    serial = (8 * split * m.act_bytes_per_token / link + 8 * (prompt - split) * m.kv_bytes_per_token / link
              + 4 * 8 * split * m.hidden * m.kv_hidden / flops)
    assert _layer_time_s(p) == pytest.approx(serial, rel=1e-3)
    assert serial > kvpr_objective_s(split, prompt, 8, m.hidden, 2, link, flops)


def test_a_layers_weights_are_one_load():
    """KVPR's early W_K/W_V load (`--load-partial-weight`) gains nothing behind its per-(sub)layer
    sync, and weights are prefetched a layer ahead: one weight op per layer."""
    p = make_point("opt-1.3b", layers=2, kind="kvpr", split_tokens=16, gen_len=3)
    ops = build_schedule(p).ops
    loads = [op for op in ops if op.kind is OpKind.load_weights and op.layer == 1 and op.step == 1]
    assert [op.link_bytes for op in loads] == [p.model.weight_bytes_per_layer]


@pytest.mark.parametrize("split", [10, 40, 41, 60])
def test_each_token_is_stored_in_one_form_with_a_fixed_split(split):
    """KVPR's HF cache holds the prompt's first l tokens only as activations and every later
    token only as K,V (`OffloadedStaticCache`); a split beyond the prompt keeps decode tokens
    below it as activations too."""
    batch, prompt, gen, layers = 2, 40, 3, 2
    p = make_point("opt-1.3b", layers=layers, kind="kvpr", split_tokens=split, prompt_len=prompt, gen_len=gen,
                   batch=batch)
    sched = build_schedule(p)
    m = p.model
    # positions 0 .. prompt + gen - 2 are stored; the last is read by no step: K,V, as in every scheme
    act = min(split, prompt + gen - 2)
    kv = prompt + gen - 1 - act
    stored_act = sum(op.link_bytes for op in sched.ops if op.kind is OpKind.store_act)
    stored_kv = sum(op.link_bytes for op in sched.ops if op.kind is OpKind.store_kv)
    assert stored_act == batch * layers * act * m.act_bytes_per_token
    assert stored_kv == batch * layers * kv * m.kv_bytes_per_token
    for step in (1, 2):
        past = prompt + step - 1
        loads = {op.kind: op.link_bytes for op in sched.ops if op.step == step and op.layer == 0}
        assert loads.get(OpKind.load_act, 0) == batch * min(split, past) * m.act_bytes_per_token
        assert loads.get(OpKind.load_kv, 0) == batch * (past - min(split, past)) * m.kv_bytes_per_token


def test_a_per_step_split_keeps_both_forms_only_between_its_smallest_and_largest_split():
    p = make_point("opt-1.3b", layers=2, kind="kvpr", split_rule="per-step", prompt_len=300, gen_len=6, batch=4,
                   hardware="a100-40gb-pcie4")
    from hssim.sim.policies.kvpr import kvpr_scheme

    scheme = kvpr_scheme(p)
    splits = [scheme.split(past) for past in range(300, 305)]
    lo, hi = min(splits), max(splits)
    assert scheme.prefill_stores(300) == {OpKind.store_act: min(hi, 300), OpKind.store_kv: 300 - min(lo, 300)}
    sched = build_schedule(p)  # every load reads only what was stored (the hw plan checks it)
    from hssim.hw.plan import build_plan

    build_plan(sched, p)


def test_kvpr_decodes_faster_than_flexgen_on_a_link_bound_box():
    """Same runtime (barriers), same block, both caches pinned: sending the first l tokens as
    activations (half the bytes of their K,V) and rebuilding them must pay on PCIe."""
    common = dict(layers=4, batch=32, num_gpu_batches=4, prompt_len=512, gen_len=3, hardware="a100-40gb-pcie4")
    per_step = run_point(make_point("opt-13b", kind="kvpr", split_rule="per-step", **common)).metrics
    flexgen = run_point(make_point("opt-13b", kind="flexgen", cache_pinned=True, **common)).metrics
    assert per_step["decode_tok_s"] > 1.1 * flexgen["decode_tok_s"]


def test_more_work_never_decodes_faster():
    """kvpr with l = 0 is flexgen's work (pinned, weights split by bytes): never faster, in
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
