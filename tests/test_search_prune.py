"""What lets a search skip a candidate unsimulated: its memory plan as far as it is known before
the step walk (never more than the full plan), and its throughput bound (never beaten)."""

from __future__ import annotations

import numpy as np
from conftest import make_point, small_points
from hypothesis import given, settings
from hypothesis import strategies as st

from hssim.errors import MemoryPlanError
from hssim.sim.api import run_point, throughput_bound_tok_s
from hssim.sim.policies import build_schedule, surely_does_not_fit
from hssim.sim.policies.block import known_plan, payload_counts


@st.composite
def memory_stressing_points(draw):
    kind = draw(st.sampled_from(["kv-only", "token-recompute", "hybrid", "flexgen", "hybridserve", "kvpr"]))
    k = draw(st.integers(1, 4))
    gbs = draw(st.sampled_from([1, 8, 64, 256]))
    policy = dict(kind=kind, num_gpu_batches=k, gpu_batch_size=gbs,
                  weights_gpu_percent=draw(st.sampled_from([0.0, 30.0, 70.0, 100.0])))
    if kind == "kv-only" and draw(st.booleans()):
        policy["cpu_attention"] = True
    elif kind in ("kv-only", "token-recompute", "hybrid"):
        policy["cache_gpu_percent"] = draw(st.sampled_from([0.0, 50.0, 100.0]))
    if kind in ("token-recompute", "hybrid", "hybridserve"):
        policy["kv_ratio"] = draw(st.sampled_from([0.0, 0.5, 1.0]))
    return make_point(draw(st.sampled_from(["opt-6.7b", "opt-30b", "llama-2-70b"])),
                      hardware=draw(st.sampled_from(["t4-pcie3", "rtx4090-pcie4"])),
                      batch=gbs * k, prompt_len=draw(st.sampled_from([32, 512, 2048])), gen_len=2, layers=2,
                      **policy)


@settings(max_examples=60, deadline=None)
@given(memory_stressing_points())
def test_the_plan_known_before_the_walk_never_exceeds_the_full_plan(point):
    full = build_schedule(point, check_memory=False).memory
    known = known_plan(point)
    assert known.gpu_bytes <= full.gpu_bytes
    assert known.host_bytes <= full.host_bytes
    if surely_does_not_fit(point):
        try:
            build_schedule(point)
        except MemoryPlanError:
            pass
        else:
            raise AssertionError("a candidate the search would skip fits")


@settings(max_examples=60, deadline=None)
@given(small_points(kinds=("kv-only", "token-recompute", "hybrid")))
def test_payload_counts_and_the_throughput_bound_match_the_built_schedule(point):
    """The counts the bound is priced from are the schedule's own, and no run beats the bound."""
    sched = build_schedule(point)
    payloads, counts = payload_counts(point)
    assert payloads == list(sched.payloads)
    assert np.array_equal(counts, np.bincount(sched.payload_index, minlength=len(payloads)))
    bound = throughput_bound_tok_s(point)
    got = run_point(point).metrics["throughput_tok_s"]
    assert got <= bound * (1 + 1e-12)
