"""The CPU backend of the executor: real kernels and copies, one thread per stream."""

import numpy as np
import pytest

pytest.importorskip("torch")

from hssim.hw.executor import ExecutorError, measure_point, scaled_point  # noqa: E402
from hssim.sim.costs import RooflineCostModel  # noqa: E402
from hssim.sim.engine import TIMELINE_COLUMNS, simulate  # noqa: E402
from hssim.sim.metrics import run_metrics  # noqa: E402
from hssim.sim.policies import build_schedule  # noqa: E402
from hssim.sim.presets import HARDWARE, MODELS  # noqa: E402
from hssim.sim.schedule import OpKind, Stream  # noqa: E402
from hssim.sim.specs import ModelSpec, PointSpec, PolicySpec, WorkloadSpec  # noqa: E402

OPT = ModelSpec(name="opt-tiny", layers=2, hidden=64, heads=4, kv_heads=4, ffn=128, vocab=96, max_positions=64)
LLAMA = ModelSpec(name="llama-tiny-gqa", layers=2, hidden=64, heads=4, kv_heads=2, ffn=96, vocab=96,
                  max_positions=64, ffn_kind="swiglu", norm_kind="rmsnorm", bias=False)
POLICIES = [
    PolicySpec(kind="kv-only"),
    PolicySpec(kind="kv-only", cpu_attention=True),
    PolicySpec(kind="kv-only", weights_gpu_percent=30),
    PolicySpec(kind="kv-only", weights_gpu_percent=100),
    PolicySpec(kind="hybrid", kv_ratio=0.5),
    PolicySpec(kind="hybrid", kv_ratio=0.0),
    PolicySpec(kind="token-recompute", kv_ratio=0.5),
    PolicySpec(kind="flexgen", weights_gpu_percent=40),
    PolicySpec(kind="flexgen", cpu_attention=True),
    PolicySpec(kind="kvpr", split_tokens=3),
    PolicySpec(kind="kvpr", split_tokens=4, weights_gpu_percent=50),
    PolicySpec(kind="hybridserve", kv_ratio=0.4, block_tokens=2),
    PolicySpec(kind="hybridserve", kv_ratio=0.0, block_tokens=2, mini_batching="naive"),
]


def point(model, policy, k=2, dtype="fp32", prompt=6, gen=4):
    return PointSpec(scenario="t", model=model.model_copy(update={"dtype": dtype}),
                     hardware=HARDWARE["a100-40gb-pcie4"],
                     workload=WorkloadSpec(batch=2 * k, prompt_len=prompt, gen_len=gen),
                     policy=policy.model_copy(update={"num_gpu_batches": k}))


def assert_timeline_respects_schedule(meas):
    sched, res = meas.schedule, meas.result
    start, end = res.start_ns, res.end_ns
    assert len(start) == len(sched.ops) == len(set(res.timeline()["op_id"]))
    assert (start >= 0).all() and (end >= start).all()
    for op in sched.ops:
        for d in (*op.deps, *op.after):
            assert start[op.id] >= end[d], f"{op.label} started before its dependency {sched.ops[d].label} ended"
    for s in Stream:
        ids = [op.id for op in sched.stream_ops(s)]
        in_order = all(start[b] >= end[a] for a, b in zip(ids[:-1], ids[1:], strict=True))
        assert in_order, f"stream {s.value} out of order"


@pytest.mark.parametrize("model", [OPT, LLAMA], ids=lambda m: m.name)
def test_every_policy_runs_respects_the_schedule_and_generates_the_same_tokens(model):
    tokens = {}
    for policy in POLICIES:
        meas = measure_point(point(model, policy), "cpu", repeats=1, warmup=0, count_copies=True)
        assert_timeline_respects_schedule(meas)
        tokens[policy.label + f" w{policy.weights_gpu_percent}"] = meas.tokens
        assert_bytes_copied_are_link_bytes(meas)
    ref = tokens["kv-only w0.0"]
    assert ref.shape == (4, 4)
    for label, t in tokens.items():
        np.testing.assert_array_equal(t, ref, err_msg=label)


def assert_bytes_copied_are_link_bytes(meas, exact=False):
    """Every link op copied exactly its `link_bytes` (weights parts, packed loads, cache ops).

    The block builder sizes a partly resident layer's streamed share in bytes
    (`round(weight_bytes * share)`), which need not be whole parameters; the executor
    copies whole parameters, so such a weight load may differ by under half a parameter
    (`exact=True`: the case is chosen so that it does not)."""
    p = meas.point.model.dtype_bytes
    for op in meas.schedule.ops:
        if not op.link_bytes:
            continue
        got = meas.copied.get(op.id, 0)
        if op.kind is OpKind.load_weights and op.link_bytes % p and not exact:
            assert 2 * abs(got - op.link_bytes) <= p, (op.label, got)
        else:
            assert got == op.link_bytes, (op.label, op.shape, got)
    assert set(meas.copied) <= {op.id for op in meas.schedule.ops if op.link_bytes}


@pytest.mark.parametrize("policy", [
    PolicySpec(kind="kvpr", split_tokens=2),
    PolicySpec(kind="kvpr", split_tokens=2, weights_gpu_percent=25),
    PolicySpec(kind="kv-only", weights_gpu_percent=25),
    PolicySpec(kind="flexgen", weights_gpu_percent=30),
    PolicySpec(kind="hybrid", kv_ratio=0.5, weights_gpu_percent=50),
    PolicySpec(kind="hybridserve", kv_ratio=0.5, block_tokens=3),
    PolicySpec(kind="token-recompute", kv_ratio=0.5),
    PolicySpec(kind="kv-only", cpu_attention=True),
], ids=lambda p: f"{p.label} w{p.weights_gpu_percent:g}")
def test_each_link_op_copies_exactly_its_link_bytes(policy):
    meas = measure_point(point(OPT, policy, dtype="fp16"), "cpu", repeats=1, warmup=0, count_copies=True)
    weights = [op for op in meas.schedule.ops if op.kind is OpKind.load_weights]
    assert weights and any(op.link_bytes for op in weights)
    assert_bytes_copied_are_link_bytes(meas, exact=True)


def test_host_memory_is_pinned_as_the_ops_say():
    from hssim.hw.buffers import host_pinning

    flex = build_schedule(point(OPT, PolicySpec(kind="flexgen")))
    kv = build_schedule(point(OPT, PolicySpec(kind="kv-only")))
    assert host_pinning(flex, "cuda", True)["weights"] and not host_pinning(flex, "cuda", True)["kv"]
    pinned = build_schedule(point(OPT, PolicySpec(kind="flexgen", cache_pinned=True)))
    assert host_pinning(pinned, "cuda", True)["kv"]
    assert all(host_pinning(kv, "cuda", True)[g] for g in ("weights", "kv"))
    assert not any(host_pinning(kv, "cpu", True).values())  # pinned memory needs CUDA
    meas = measure_point(point(OPT, PolicySpec(kind="flexgen")), "cpu", repeats=1, warmup=0)
    assert meas.host_memory == {"weights": "pageable", "cache": "pageable"}
    assert meas.host_bytes["weights"] > 0 and meas.host_bytes["cache"] > 0


def test_flexgen_cache_is_pageable_and_weights_pinned_on_cuda():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    meas = measure_point(point(OPT, PolicySpec(kind="flexgen")), "cuda", repeats=1, warmup=0)
    assert meas.host_memory == {"weights": "pinned", "cache": "pageable"}
    assert all(t.is_pinned() for t in meas.host.weights)
    assert not any(t.is_pinned() for t in meas.host.cache.values())


def test_fp16_model_runs_on_the_cpu():
    meas = measure_point(point(OPT, PolicySpec(kind="hybrid", kv_ratio=0.5), dtype="fp16"), "cpu",
                         repeats=1, warmup=0)
    assert_timeline_respects_schedule(meas)


def test_measured_timeline_and_metrics_have_the_simulator_schema():
    p = point(OPT, PolicySpec(kind="hybrid", kv_ratio=0.5))
    meas = measure_point(p, "cpu", repeats=3, warmup=1)
    sim = simulate(build_schedule(p), RooflineCostModel(p.hardware))
    tl = meas.result.timeline()
    assert list(tl.columns) == TIMELINE_COLUMNS
    assert tl["start_s"].min() >= 0 and tl["end_s"].max() == pytest.approx(meas.result.makespan_s)
    assert set(run_metrics(sim)) == set(meas.metrics())
    assert len(meas.runs_s) == 3 and meas.result.makespan_s == pytest.approx(sorted(meas.runs_s)[1])
    # the link bytes recorded are the schedule's, and the copies moved real data
    assert tl["link_bytes"].sum() == sum(op.link_bytes for op in meas.schedule.ops)


def test_executor_refuses_a_schedule_that_reads_the_host_cache_unordered():
    """Drop the store->load edges of a 1-layer, 1-batch schedule: its loads would race the stores."""
    from hssim.hw.executor import prepare_plan
    from hssim.sim.schedule import Schedule

    p = point(OPT.model_copy(update={"layers": 1}), PolicySpec(kind="kv-only"), k=1)
    good = build_schedule(p)
    ops = tuple(op._replace(deps=()) if op.kind is OpKind.load_kv else op for op in good.ops)
    with pytest.raises(ExecutorError, match="host-cache read"):
        prepare_plan(Schedule(good.meta, ops, good.memory), p)


def test_unsupported_cache_on_gpu_and_missing_cuda_fail_clearly():
    with pytest.raises(ExecutorError, match="cache_gpu_percent"):
        measure_point(point(OPT, PolicySpec(kind="kv-only", cache_gpu_percent=50)), "cpu")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ExecutorError, match="no CUDA device"):
            measure_point(point(OPT, PolicySpec(kind="kv-only")), "cuda")


def test_scaled_point_keeps_per_layer_shapes():
    full = PointSpec(scenario="s", model=MODELS["opt-175b"], hardware=HARDWARE["h100-80gb-pcie5"],
                     workload=WorkloadSpec(batch=8, prompt_len=16, gen_len=2), policy=PolicySpec(kind="kv-only"))
    scaled = scaled_point(full, 2)
    assert scaled.model.layers == 2
    assert scaled.model.weight_bytes_per_layer == full.model.weight_bytes_per_layer
    assert build_schedule(scaled).meta.layers == 2
    assert scaled_point(full, None) is full
    with pytest.raises(ExecutorError, match="96 layers"):
        scaled_point(full, 97)
