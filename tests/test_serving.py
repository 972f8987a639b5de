"""Serving regime: conservation of requests and tokens, policy equivalence without pressure,
Oneiros' layer bound, and timings that come from the core cost model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hssim.sim.costs import attention_work, ffn_work, gpu_time_s
from hssim.sim.presets import hardware_preset
from hssim.sim.serving.engine import ServingCapacityError, run_serving
from hssim.sim.serving.policies import ServingPolicySpec, remapped_layer_ids, ring_hides
from hssim.sim.serving.specs import ServingEngineSpec, ServingPoint
from hssim.sim.serving.timing import IterationCost
from hssim.sim.serving.workload import Request, ServingWorkload
from tests.conftest import tiny_model

KINDS = ["vllm-swap", "vllm-recompute", "oneiros"]
POLICIES = [{"kind": k} for k in KINDS] + [{"kind": "oneiros", "respect_bound": False},
                                           {"kind": "oneiros", "fallback": "recompute"}]
MODEL = tiny_model(layers=6, hidden=256, heads=4)
BLOCK_BYTES = 16 * MODEL.kv_bytes_per_token * MODEL.layers


def point(policy: dict, kv_blocks: int | None = 40, hardware: str = "gh200-c2c", hw=None, **engine) -> ServingPoint:
    wl = ServingWorkload(requests=1, rate_rps=1.0, prompt_len=8, output_len=8)  # requests are passed explicitly
    return ServingPoint(
        scenario="test", model=MODEL, hardware=hw or hardware_preset(hardware), workload=wl,
        engine=ServingEngineSpec(**{"max_batched_tokens": 256, **engine}), policy=ServingPolicySpec(**policy),
        gpu_kv_bytes=None if kv_blocks is None else kv_blocks * BLOCK_BYTES,
    )


def burst(n: int, prompt: int = 120, output: int = 40, gap_s: float = 1e-4) -> list[Request]:
    return [Request(i, i * gap_s, prompt + 7 * (i % 5), output + 3 * (i % 7)) for i in range(n)]


requests_strategy = st.lists(
    st.tuples(st.floats(0, 5e-3), st.integers(1, 200), st.integers(1, 60)), min_size=1, max_size=25,
).map(lambda rows: [Request(i, a, p, o) for i, (a, p, o) in enumerate(sorted(rows))])


def check_conservation(run, requests: list[Request]) -> None:
    assert len(run.requests) == len(requests)
    assert sorted(s.id for s in run.requests) == [r.id for r in requests]  # every request once
    for s in run.requests:
        times = np.asarray(s.token_times_ns)
        assert s.generated == s.request.output_len == len(times)  # every token exactly once
        assert (np.diff(times) > 0).all()  # one token per iteration, in order
        assert times[0] / 1e9 > s.request.arrival_s  # never before it arrived
        assert s.gpu_blocks == 0 and s.host_blocks == 0  # everything freed
    it = run.iterations
    assert it["emitted"].sum() == sum(r.output_len for r in requests)
    assert (it["kv_blocks_used"] <= it["kv_blocks_capacity"]).all()
    assert it["h2d_kv_bytes"].sum() == it["d2h_kv_bytes"].sum()  # whatever was swapped out came back
    assert (it["start_s"].to_numpy()[1:] >= it["end_s"].to_numpy()[:-1]).all()  # one iteration at a time


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=requests_strategy, policy=st.sampled_from(POLICIES), kv_blocks=st.integers(18, 60))
def test_no_request_lost_or_served_twice_and_every_token_once(requests, policy, kv_blocks):
    run = run_serving(point(policy, kv_blocks), requests)
    check_conservation(run, requests)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=requests_strategy)
def test_without_memory_pressure_all_policies_give_the_same_latencies(requests):
    runs = [run_serving(point({"kind": k}, kv_blocks=None, hw=_huge_gpu()), requests) for k in KINDS]
    times = [[s.token_times_ns for s in r.requests] for r in runs]
    assert times[0] == times[1] == times[2]
    for r in runs:
        assert r.metrics["preemptions"] == 0 and r.metrics["remapped_layers_max"] == 0
        assert r.metrics["h2d_bytes"] == r.metrics["d2h_bytes"] == 0


def _huge_gpu():
    hw = hardware_preset("gh200-c2c")
    return hw.model_copy(update={"gpu": hw.gpu.model_copy(update={"memory_bytes": 10**13})})


def _link(hardware: str, h2d_Bps: float | None):
    hw = hardware_preset(hardware)
    if h2d_Bps is None:
        return hw
    return hw.model_copy(update={"link": hw.link.model_copy(update={"h2d_pinned_Bps": h2d_Bps})})


#: the boxes' own links, and links at which the bound lets the 6-layer model remap 1 ... 5 layers
LINKS = st.tuples(st.sampled_from(["gh200-c2c", "a100-40gb-pcie4"]),
                  st.sampled_from([None, 1.5e10, 3e10, 6e10, 1.2e11]))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=requests_strategy, kv_blocks=st.integers(18, 40), link=LINKS)
def test_oneiros_never_exceeds_its_layer_bound(requests, kv_blocks, link):
    hw = _link(*link)
    run = run_serving(point({"kind": "oneiros"}, kv_blocks, hw=hw), requests)
    it = run.iterations
    h2d_ns = round(IterationCost(MODEL, hw).layer_h2d_s * 1e9)
    assert (it["remapped_layers"] <= it["bound_layers"]).all()
    assert (it["remapped_layers"] <= MODEL.layers).all()
    for n, layer_s in zip(it["remapped_layers"], it["bound_layer_s"], strict=True):
        # N x per-layer H2D <= the compute it was decided under, and the double-buffered ring hides
        assert ring_hides(remapped_layer_ids(MODEL.layers, n), MODEL.layers, h2d_ns, round(layer_s * 1e9))
        assert n * h2d_ns <= MODEL.layers * round(layer_s * 1e9)
    calm = it[it["preempted"] == 0]  # then the iteration computes at least what its set was decided under
    assert (calm["remapped_layers"] * h2d_ns / 1e9 <= calm["compute_s"] * (1 + 1e-9)).all()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=requests_strategy, kv_blocks=st.integers(18, 60), link=LINKS,
       fallback=st.sampled_from(["swap", "recompute"]))
def test_bounded_oneiros_streams_without_stalling(requests, kv_blocks, link, fallback):
    """What the bound guarantees: the set an iteration streams is decided one iteration ahead and
    checked (ring_hides) against a per-layer compute time that the deciding iteration has and the
    next one's decodes alone need, so the ring prefetches its first layers and hides every load. The
    premise can fail only in an iteration that preempts a decoding request (its batch shrinks), and
    only there may it stall; with no preemption, a bounded run never waits for weights, the first
    iteration that streams included (its first loads were prefetched during the iteration before)."""
    run = run_serving(point({"kind": "oneiros", "fallback": fallback}, kv_blocks, hw=_link(*link)), requests)
    it = run.iterations
    layer_s = it["layer_s"].to_numpy()
    prev_s = np.concatenate(([np.inf], layer_s[:-1]))
    premise = (np.round(layer_s * 1e9) >= np.round(it["bound_layer_s"] * 1e9)) & \
              (np.round(prev_s * 1e9) >= np.round(it["bound_layer_s"] * 1e9))
    premise |= it["remapped_layers"].to_numpy() == 0
    assert (it["weight_stall_s"][premise] == 0).all()
    assert (it["preempted"][~premise] > 0).all()


def test_oneiros_remaps_under_pressure_and_reverts_when_demand_drops():
    reqs = burst(30) + [Request(30, 0.5, 20, 5)]  # a burst, then one small request long after
    run = run_serving(point({"kind": "oneiros"}), reqs)
    it = run.iterations
    assert it["remapped_layers"].max() >= 3
    assert it["remapped_layers"].iloc[-1] == 0
    assert run.metrics["layer_reverts"] > 0
    assert run.metrics["h2d_weight_bytes"] % MODEL.weight_bytes_per_layer == 0


def test_unbounded_remapping_breaks_the_bound_on_a_slow_link():
    """The bound is what keeps streaming hidden; dropping it on a slow link must show it."""
    slow = hardware_preset("a100-40gb-pcie4")
    slow = slow.model_copy(update={"link": slow.link.model_copy(update={"h2d_pinned_Bps": 1e8})})
    reqs = burst(30)
    bounded = run_serving(point({"kind": "oneiros"}, hw=slow), reqs)
    unbounded = run_serving(point({"kind": "oneiros", "respect_bound": False}, hw=slow), reqs)
    swap = run_serving(point({"kind": "vllm-swap"}, hw=slow), reqs)
    assert bounded.metrics["remapped_layers_max"] == 0
    assert [s.token_times_ns for s in bounded.requests] == [s.token_times_ns for s in swap.requests]
    it = unbounded.iterations
    layer_h2d_s = IterationCost(MODEL, slow).layer_h2d_s
    assert (it["remapped_layers"] * layer_h2d_s > it["compute_s"]).any()
    assert unbounded.metrics["weight_stall_s"] > 0
    assert unbounded.metrics["tbt_p99_s"] > swap.metrics["tbt_p99_s"]


def test_swap_moves_kv_both_ways_recompute_moves_none_oneiros_mostly_one_way():
    reqs = burst(30)
    swap = run_serving(point({"kind": "vllm-swap"}), reqs).metrics
    recompute = run_serving(point({"kind": "vllm-recompute"}), reqs).metrics
    oneiros = run_serving(point({"kind": "oneiros"}), reqs).metrics
    assert swap["preemptions"] > 0 and swap["d2h_bytes"] > 0 and swap["h2d_kv_bytes"] == swap["d2h_bytes"]
    assert swap["d2h_bytes"] % BLOCK_BYTES == 0
    assert recompute["h2d_bytes"] == recompute["d2h_bytes"] == 0 and recompute["recomputed_tokens"] > 0
    assert oneiros["d2h_bytes"] < swap["d2h_bytes"] and oneiros["h2d_weight_bytes"] > 0
    assert oneiros["ttft_p99_s"] < swap["ttft_p99_s"]


def test_ttft_is_never_below_the_prefill_compute_of_that_prompt_alone():
    reqs = burst(12, prompt=200)
    cost = IterationCost(MODEL, hardware_preset("gh200-c2c"))
    for policy in POLICIES:
        run = run_serving(point(policy), reqs)
        for s in run.requests:
            alone_s = MODEL.layers * cost.layer_s([(s.request.prompt_len, 0)]) + cost.lm_head_s(1)
            assert s.token_times_ns[0] / 1e9 - s.request.arrival_s >= alone_s * (1 - 1e-9)


@pytest.mark.parametrize("new,past,batch", [(1, 0, 1), (1, 500, 7), (64, 100, 3), (512, 0, 2)])
def test_ragged_batch_time_equals_the_core_cost_model_on_a_uniform_batch(new, past, batch):
    gpu = hardware_preset("gh200-c2c").gpu
    cost = IterationCost(MODEL, hardware_preset("gh200-c2c"))
    a = attention_work(MODEL, batch, new, past)
    f = ffn_work(MODEL, batch * new, 1)
    expected = gpu_time_s(gpu, a.flops, a.hbm_bytes, a.kernels) + gpu_time_s(gpu, f.flops, f.hbm_bytes, f.kernels)
    assert cost.layer_s([(new, past)] * batch) == pytest.approx(expected, rel=1e-12)


def test_a_decode_iteration_reads_the_weights_once_not_once_per_request():
    cost = IterationCost(MODEL, hardware_preset("gh200-c2c"))
    one, many = cost.attention_s([(1, 100)]), cost.attention_s([(1, 100)] * 64)
    assert many < 64 * one


@given(layers=st.integers(1, 96), data=st.data())
def test_remapped_layers_are_nested_spread_and_end_at_the_last_layer(layers, data):
    n = data.draw(st.integers(1, layers))
    ids = remapped_layer_ids(layers, n)
    assert len(set(ids)) == n and ids[-1] == layers - 1 and list(ids) == sorted(ids)
    assert set(remapped_layer_ids(layers, n - 1)) <= set(ids)  # growing frees one layer, reverting loads one
    gaps = np.diff((-1, *ids))  # the stretch of layers each remapped layer ends
    assert gaps.max() <= 2 * gaps.min() + 1 and 2 * gaps.min() >= layers // n


def test_a_request_larger_than_the_pool_is_an_error_with_numbers():
    with pytest.raises(ServingCapacityError, match="needs 1999 tokens"):
        run_serving(point({"kind": "vllm-swap"}, kv_blocks=20), [Request(0, 0.0, 1000, 1000)])
