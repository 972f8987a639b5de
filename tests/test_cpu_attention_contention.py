"""FlexGen's host attention beside the weight copies: measured in both conditions, blended by overlap."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_point, tiny_model
from test_validate import synthetic_profile

from hssim.sim.costs.contention import overlap_shares, simulate_contended
from hssim.sim.costs.profile import HardwareProfile, LinearFit, ProfiledCostModel
from hssim.sim.engine import simulate
from hssim.sim.policies import build_schedule
from hssim.sim.schedule import OpKind, Stream

SLOW = LinearFit(intercept_s=2e-3, per_kv_byte_s=1e-8, per_flop_s=1e-10, per_row_s=0.0, median_ape=0.0)


def _point():
    return make_point(tiny_model(layers=2), batch=4, prompt_len=16, gen_len=4, num_gpu_batches=2, kind="kv-only",
                      cpu_attention=True)


def test_host_attention_is_priced_busy_beside_a_copy_and_idle_without_a_busy_fit():
    p = _point()
    ops = [op for op in build_schedule(p).ops if op.kind is OpKind.cpu_attention]
    assert ops
    with_busy, without = synthetic_profile(cpu_attention_busy=SLOW), synthetic_profile()
    for op in ops:
        idle = ProfiledCostModel(with_busy, p.model, contended=False).duration_s(op)
        assert ProfiledCostModel(with_busy, p.model, contended=True).duration_s(op) > idle
        assert ProfiledCostModel(without, p.model, contended=True).duration_s(op) == idle
    assert HardwareProfile.model_validate(with_busy.model_dump()).cpu_attention_busy == SLOW


def test_host_stream_ops_count_the_link_as_their_neighbour():
    p = _point()
    sched = build_schedule(p)
    prof = synthetic_profile()
    res = simulate(sched, ProfiledCostModel(prof, p.model))
    side, duplex = overlap_shares(sched, res)
    host = np.array([op.stream is Stream.cpu for op in sched.ops])
    links = [op for op in sched.ops if op.stream in (Stream.h2d, Stream.d2h)]
    for i in np.flatnonzero(host):
        s, e = res.start_ns[i], res.end_ns[i]
        covered = sum(max(0, min(e, res.end_ns[o.id]) - max(s, res.start_ns[o.id])) for o in links)
        if covered == 0:
            assert side[i] == 0
        assert duplex[i] == 0
    assert (side[host] >= 0).all() and (side[host] <= 1).all()


def test_blend_prices_the_host_attention_between_its_idle_and_busy_fits():
    p = _point()
    sched = build_schedule(p)
    prof = synthetic_profile(contention="overlap", cpu_attention_busy=SLOW)
    res = simulate_contended(sched, prof, p.model)
    idle_cost = ProfiledCostModel(prof, p.model, contended=False)
    busy_cost = ProfiledCostModel(prof, p.model, contended=True)
    side, _ = overlap_shares(sched, res)
    host = [op for op in sched.ops if op.kind is OpKind.cpu_attention]
    for op in host:
        dur = (res.end_ns[op.id] - res.start_ns[op.id]) / 1e9
        lo, hi = idle_cost.duration_s(op), busy_cost.duration_s(op)
        assert lo - 1e-9 <= dur <= hi + 1e-9
    # something overlapped a copy and was charged for it; without a busy fit nothing changes
    assert any(side[op.id] > 0 for op in host)
    plain = synthetic_profile(contention="overlap")
    assert simulate_contended(sched, plain, p.model).makespan_ns <= res.makespan_ns


def test_cpu_attention_benchmark_measures_both_conditions_with_the_cache_cold():
    torch = pytest.importorskip("torch")
    from hssim.validate.calibrate import profile_from_bench  # noqa: F401 - the consumer of these rows
    from hssim.validate.microbench import BenchPlan, bench_cpu_attention

    m = tiny_model(layers=1, hidden=128).model_copy(update={"dtype": "bf16"})
    plan = BenchPlan(models=(m,), dtype="bf16", attn_batch=(1, 2), attn_context=(8, 16), min_total_s=0.001)
    with torch.inference_mode():
        df = bench_cpu_attention("cpu", plan, torch.bfloat16, llc=2**20)
    assert set(df["condition"]) == {"idle", "busy"}
    assert len(df) == 2 * 2 * 2 and (df["seconds"] > 0).all()
