"""Properties of the replay that any correct model of streams and dependencies must have."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_point, small_points, tiny_model
from hypothesis import given, settings

from hssim.sim.api import run_point
from hssim.sim.costs import RooflineCostModel, durations_ns
from hssim.sim.engine import critical_path_ns, replay, simulate
from hssim.sim.metrics import memory_occupancy, peak_memory_bytes
from hssim.sim.policies import build_schedule
from hssim.sim.schedule import Stream

FAST = settings(max_examples=40, deadline=None)


@FAST
@given(small_points())
def test_makespan_at_least_every_engine_and_the_critical_path(point):
    sched = build_schedule(point)
    dur = durations_ns(sched, RooflineCostModel(point.hardware))
    res = replay(sched, dur)
    for stream in Stream:
        ids = [op.id for op in sched.stream_ops(stream)]
        assert res.makespan_ns >= int(dur[ids].sum())
    assert res.makespan_ns >= critical_path_ns(sched, dur)


@FAST
@given(small_points())
def test_the_list_replay_computes_the_same_critical_path(point):
    sched = build_schedule(point)
    dur = durations_ns(sched, RooflineCostModel(point.hardware))
    res = simulate(sched, RooflineCostModel(point.hardware), engine="list")
    assert res.critical_ns == critical_path_ns(sched, dur)


@FAST
@given(small_points())
def test_unlimited_engines_reach_exactly_the_critical_path(point):
    sched = build_schedule(point)
    dur = durations_ns(sched, RooflineCostModel(point.hardware))
    assert replay(sched, dur, unlimited=True).makespan_ns == critical_path_ns(sched, dur)


@FAST
@given(small_points())
def test_timeline_respects_dependencies_and_stream_order(point):
    sched = build_schedule(point)
    res = simulate(sched, RooflineCostModel(point.hardware))
    start, end = res.start_ns, res.end_ns
    assert np.all(end - start == res.duration_ns)
    for op in sched.ops:
        for d in op.deps + op.after:
            assert start[op.id] >= end[d]
    for stream in Stream:
        q = sched.stream_ops(stream)
        for a, b in zip(q, q[1:], strict=False):
            assert start[b.id] >= end[a.id]  # one engine runs one op at a time, in order


@FAST
@given(small_points())
def test_simulated_memory_never_exceeds_the_plan(point):
    sched = build_schedule(point)
    res = simulate(sched, RooflineCostModel(point.hardware))
    occ = memory_occupancy(res)
    assert occ["gpu_bytes"].max() <= sched.memory.gpu_bytes
    assert occ["gpu_bytes"].min() >= 0
    # the host cache only grows, and ends exactly where the plan says
    assert occ["host_bytes"].is_monotonic_increasing
    assert occ["host_bytes"].iloc[-1] == sched.memory.host_bytes


@pytest.mark.parametrize("kv_heads", [1, 4])
@pytest.mark.parametrize("k", [1, 3])
def test_token_recompute_memory_stays_in_the_plan_when_hidden_rows_outweigh_kv(kv_heads, k):
    """A re-run layer writes the prefix's hidden state over its input; on a GQA model a
    hidden row outweighs a K,V row, so counting input and output both live overshoots the
    one prefix buffer the executor has."""
    model = tiny_model(layers=3, kv_heads=kv_heads)
    for prompt_len in (1, 2, 9):
        point = make_point(model, batch=k, prompt_len=prompt_len, gen_len=5, kind="token-recompute",
                           kv_ratio=0.0, num_gpu_batches=k, gpu_batch_size=1)
        sched = build_schedule(point)
        res = simulate(sched, RooflineCostModel(point.hardware))
        occ = memory_occupancy(res)
        assert occ["gpu_bytes"].max() <= sched.memory.gpu_bytes
        assert peak_memory_bytes(res)[0] == occ["gpu_bytes"].max()


@FAST
@given(small_points(kinds=("kv-only", "hybrid", "token-recompute")))
def test_more_link_bandwidth_never_makes_a_run_slower(point):
    hw = point.hardware
    link = hw.link
    faster = hw.model_copy(update={"link": link.model_copy(update={
        "h2d_pinned_Bps": link.h2d_pinned_Bps * 2, "d2h_pinned_Bps": link.d2h_pinned_Bps * 2,
        "h2d_pageable_Bps": link.h2d_pageable_Bps * 2, "d2h_pageable_Bps": link.d2h_pageable_Bps * 2,
    })})
    slow = run_point(point).metrics["makespan_s"]
    fast = run_point(point.model_copy(update={"hardware": faster})).metrics["makespan_s"]
    assert fast <= slow * (1 + 1e-12)


def test_a_faster_gpu_never_makes_a_run_slower():
    for kind, r in (("kv-only", 1.0), ("hybrid", 0.3), ("token-recompute", 0.5)):
        p = make_point(tiny_model(layers=2), kind=kind, kv_ratio=r, num_gpu_batches=2)
        gpu = p.hardware.gpu
        quick = p.hardware.model_copy(update={"gpu": gpu.model_copy(update={
            "peak_flops": gpu.peak_flops * 3, "hbm_Bps": gpu.hbm_Bps * 3})})
        assert run_point(p.model_copy(update={"hardware": quick})).metrics["makespan_s"] <= \
            run_point(p).metrics["makespan_s"]


def test_metrics_are_consistent():
    p = make_point("opt-1.3b", layers=4, batch=16, num_gpu_batches=2, prompt_len=128, gen_len=8)
    m = run_point(p).metrics
    assert m["makespan_s"] == m["prefill_s"] + m["decode_s"]
    assert abs(m["throughput_tok_s"] - 16 * 8 / m["makespan_s"]) < 1e-9
    assert abs(m["decode_tok_s"] - 16 * 7 / m["decode_s"]) < 1e-9
    assert m["throughput_tok_s"] <= m["bound_tok_s"]
    assert 0 < m["gpu_busy"] <= 1 and 0 < m["h2d_busy"] <= 1
    assert m["peak_gpu_bytes"] <= m["planned_gpu_bytes"]
