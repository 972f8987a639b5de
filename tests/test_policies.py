"""Bytes and FLOPs of each policy are the real ones for the model's shapes."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import make_point, small_points, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from hssim.sim import costs
from hssim.sim.api import run_point
from hssim.sim.policies import build_schedule
from hssim.sim.policies.schemes import held_as_other
from hssim.sim.schedule import OpKind


def bytes_by_kind(point):
    return build_schedule(point).bytes_by_kind()


def tokens_moved(sched, kind):
    """Total (sequence, token, layer) triples an op kind moves, from op shapes."""
    return sum(op.shape_dict["batch"] * op.shape_dict["tokens"] for op in sched.ops if op.kind is kind)


def test_hybrid_r1_moves_exactly_what_kv_only_moves():
    a = build_schedule(make_point("opt-1.3b", layers=4, kind="kv-only", num_gpu_batches=2))
    b = build_schedule(make_point("opt-1.3b", layers=4, kind="hybrid", kv_ratio=1.0, num_gpu_batches=2))
    assert [(o.kind, o.link_bytes, o.flops) for o in a.ops] == [(o.kind, o.link_bytes, o.flops) for o in b.ops]


def test_hybrid_r0_moves_half_the_kv_bytes_on_an_mha_model():
    kv = bytes_by_kind(make_point("opt-6.7b", layers=2, kind="kv-only", prompt_len=100, gen_len=6))
    act = bytes_by_kind(make_point("opt-6.7b", layers=2, kind="hybrid", kv_ratio=0.0, prompt_len=100, gen_len=6))
    assert OpKind.load_kv not in act and OpKind.store_kv not in act
    assert act[OpKind.load_act] * 2 == kv[OpKind.load_kv]
    assert act[OpKind.store_act] * 2 == kv[OpKind.store_kv]
    assert act[OpKind.load_weights] == kv[OpKind.load_weights]


def test_activations_are_larger_than_kv_on_a_gqa_model():
    m = tiny_model(hidden=512, heads=8, kv_heads=1)
    kv = bytes_by_kind(make_point(m, kind="kv-only"))
    act = bytes_by_kind(make_point(m, kind="hybrid", kv_ratio=0.0))
    assert act[OpKind.load_act] == 4 * kv[OpKind.load_kv]  # h vs 2*h/8


@settings(max_examples=60, deadline=None)
@given(small_points(kinds=("hybrid", "token-recompute")))
def test_every_past_token_is_accounted_for_at_every_layer_and_step(point):
    """Loaded K,V + loaded activations (or recomputed tokens) = all past tokens."""
    if point.policy.cache_gpu_percent:
        return
    sched = build_schedule(point)
    wl, m = point.workload, point.model
    past_total = sum(wl.prompt_len + t - 1 for t in range(1, wl.gen_len)) * wl.batch * m.layers
    kv = tokens_moved(sched, OpKind.load_kv)
    if point.policy.kind.value == "hybrid":
        other = tokens_moved(sched, OpKind.load_act)
    else:
        other = sum(op.shape_dict["batch"] * op.shape_dict["tokens"] for op in sched.ops
                    if op.kind is OpKind.recompute_layer)
    assert kv + other == past_total
    # what is stored is what is later loaded: the host cache has one entry per token and layer
    stored_kv = tokens_moved(sched, OpKind.store_kv)
    stored_act = tokens_moved(sched, OpKind.store_act)
    final = wl.prompt_len + wl.gen_len - 1
    held = held_as_other(final, point.policy.kv_ratio)
    if point.policy.kind.value == "hybrid":
        assert stored_act == held * wl.batch * m.layers
        assert stored_kv == (final - held) * wl.batch * m.layers


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 5000), st.floats(0, 1))
def test_held_as_other_grows_by_at_most_one_token_per_token(past, r):
    a, b = held_as_other(past, r), held_as_other(past + 1, r)
    assert 0 <= a <= past and b - a in (0, 1)


def test_bytes_are_conserved_against_a_closed_form():
    """h2d bytes = streamed weights per layer per step + every past token's K,V per layer."""
    p = make_point("opt-1.3b", layers=3, batch=8, num_gpu_batches=2, prompt_len=50, gen_len=5,
                   weights_gpu_percent=25)
    m, wl = p.model, p.workload
    weights = m.layers * wl.gen_len * round(m.weight_bytes_per_layer * 0.75)
    kv = sum(wl.prompt_len + t - 1 for t in range(1, wl.gen_len)) * wl.batch * m.layers * m.kv_bytes_per_token
    metrics = run_point(p).metrics
    assert metrics["h2d_bytes"] == weights + kv
    stored = (wl.prompt_len + wl.gen_len - 1) * wl.batch * m.layers * m.kv_bytes_per_token
    assert metrics["d2h_bytes"] == stored


def test_gemm_flops_match_24h2_per_token_for_opt():
    """OPT layer: QKV+O = 4h^2 and FFN = 8h^2 weights: 24h^2 GEMM FLOPs per token, plus attention."""
    m = tiny_model(hidden=512)
    p = make_point(m, batch=4, prompt_len=10, gen_len=2)
    sched = build_schedule(p)
    h = m.hidden
    ffn = [op for op in sched.ops if op.kind is OpKind.ffn and op.step == 1]
    assert all(op.flops == 2 * 4 * 8 * h * h for op in ffn)
    attn = [op for op in sched.ops if op.kind is OpKind.attention and op.step == 1]
    past = 10
    assert all(op.flops == 2 * 4 * 4 * h * h + 4 * 4 * (past + 1) * h for op in attn)


def test_recompute_kv_costs_4h2_per_token_on_mha():
    m = tiny_model(hidden=512)
    p = make_point(m, batch=2, prompt_len=20, gen_len=2, kind="hybrid", kv_ratio=0.5)
    rec = [op for op in build_schedule(p).ops if op.kind is OpKind.recompute_kv]
    assert rec and all(op.flops == 2 * 2 * 10 * 512 * 1024 for op in rec)


def test_token_recompute_reruns_every_earlier_layer():
    m = tiny_model(layers=4)
    p = make_point(m, batch=2, prompt_len=20, gen_len=2, kind="token-recompute", kv_ratio=0.5)
    sched = build_schedule(p)
    rec = [op for op in sched.ops if op.kind is OpKind.recompute_layer]
    assert [op.layer for op in rec] == [0, 1, 2, 3]
    for prev, op in zip(rec, rec[1:], strict=False):
        assert prev.id in op.deps  # layer l's recompute consumes layer l-1's output
    full = costs.recompute_layer_work(m, 2, 10, last_layer=False).flops
    assert rec[0].flops == full and rec[-1].flops < full


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75])
def test_no_ratio_below_one_beats_kv_only_on_a_gqa_model(ratio):
    """LLaMA-2-70B: an activation (8192 values) outweighs its K,V (2048): the hybrid cannot win."""
    def tput(r):
        p = make_point("llama-2-70b", hardware="h100-80gb-pcie5", layers=4, batch=16, num_gpu_batches=2,
                       prompt_len=256, gen_len=4, kind="hybrid", kv_ratio=r)
        return run_point(p).metrics["throughput_tok_s"]

    assert tput(ratio) <= tput(1.0)


def test_the_hybrid_wins_somewhere_on_an_mha_model_when_the_link_is_the_bottleneck():
    """Not a special case either way: on OPT the best r < 1 beats KV-only on a PCIe box."""
    def tput(r):
        p = make_point("opt-13b", hardware="a100-40gb-pcie4", layers=4, batch=64, num_gpu_batches=4,
                       prompt_len=1024, gen_len=4, kind="hybrid", kv_ratio=r)
        return run_point(p).metrics["throughput_tok_s"]

    assert max(tput(r) for r in (0.0, 0.25, 0.5, 0.75)) > tput(1.0)


def test_cpu_attention_moves_no_kv_over_the_link():
    p = make_point("opt-1.3b", layers=2, kind="kv-only", cpu_attention=True, gen_len=4)
    kinds = Counter(op.kind for op in build_schedule(p).ops)
    assert kinds[OpKind.load_kv] == 0
    assert kinds[OpKind.cpu_attention] == kinds[OpKind.store_qkv] == 2 * 3 * 1
