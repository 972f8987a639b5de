"""Golden timelines: the simulator computes exactly what it computed when the reference was made.

For every point of every bundled scenario (`scenarios/*.yaml`, `scenarios/papers/*.yaml`),
cut to a few layers and output tokens, plus a few extra points for what the scenarios
leave out (cache and weights partly on the GPU, one layer x one GPU batch, a fixed KVPR
split, one output token), `tests/data/golden_timelines.json` holds hashes of:

- the op list (every `Op` field: id, stream, kind, layer, step, micro-batch, deps,
  after, sizes, FLOPs, pinned, shape),
- the memory plan (items in order, capacities, static bytes) and whether it fits
  (the `MemoryPlanError` message, word for word),
- the start and end ns of every op and the makespan, for both engines ("simpy", "list"),
- the run metrics (list engine).

Speed work on the schedule builder, the cost model, the replays and the metrics must
leave every hash unchanged. Regenerate (only when a change of *model* is intended):

    python tests/test_golden_timelines.py --write
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_point, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from hssim.sim.costs import RooflineCostModel
from hssim.sim.engine import simulate
from hssim.sim.memory import MemoryPlanError, plan_memory
from hssim.sim.metrics import run_metrics
from hssim.sim.policies import build_schedule, scheme_for
from hssim.sim.policies.block import effective_point
from hssim.sim.presets import hardware_preset, model_preset
from hssim.sim.scenario import load_points
from hssim.sim.schedule import Schedule
from hssim.sim.specs import PointSpec, PolicySpec, WorkloadSpec

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data" / "golden_timelines.json"
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml")) + sorted((ROOT / "scenarios" / "papers").glob("*.yaml"))
LAYERS = 3
GEN = 4
ENGINES = ("simpy", "list")


def _cut(p: PointSpec, layers: int = LAYERS, gen: int = GEN) -> PointSpec:
    return p.model_copy(update={
        "model": p.model.model_copy(update={"layers": min(p.model.layers, layers)}),
        "workload": p.workload.model_copy(update={"gen_len": min(p.workload.gen_len, gen)}),
    })


def _extra(model, hw, batch, k, prompt, gen, layers, **pol) -> PointSpec:
    m = model_preset(model).model_copy(update={"layers": layers})
    return PointSpec(scenario="golden-extra", model=m, hardware=hardware_preset(hw),
                     workload=WorkloadSpec(batch=batch, prompt_len=prompt, gen_len=gen),
                     policy=PolicySpec(num_gpu_batches=k, **pol))


def extra_points() -> list[PointSpec]:
    """What the bundled scenarios do not cover."""
    return [
        _extra("opt-6.7b", "rtx4090-pcie4", 16, 2, 64, 5, 3, kind="kv-only", cache_gpu_percent=50,
               weights_gpu_percent=30),
        _extra("opt-6.7b", "rtx4090-pcie4", 16, 2, 64, 5, 3, kind="hybrid", kv_ratio=0.3, cache_gpu_percent=25),
        _extra("opt-6.7b", "rtx4090-pcie4", 16, 4, 64, 5, 2, kind="token-recompute", kv_ratio=0.6,
               weights_gpu_percent=50, cache_gpu_percent=40),
        _extra("opt-1.3b", "rtx4090-pcie4", 4, 1, 17, 6, 1, kind="hybrid", kv_ratio=0.5),
        _extra("opt-1.3b", "rtx4090-pcie4", 4, 1, 17, 6, 1, kind="token-recompute", kv_ratio=0.5),
        _extra("opt-1.3b", "rtx4090-pcie4", 4, 1, 17, 6, 1, kind="kv-only", cpu_attention=True),
        _extra("opt-1.3b", "rtx4090-pcie4", 6, 3, 33, 1, 2, kind="hybrid", kv_ratio=0.5),
        _extra("opt-6.7b", "a100-40gb-pcie4", 32, 4, 100, 5, 3, kind="kvpr", split_tokens=40),
        _extra("opt-6.7b", "a100-40gb-pcie4", 32, 4, 100, 5, 3, kind="kvpr", split_rule="per-step",
               step_barrier=False),
        _extra("opt-6.7b", "rtx4090-pcie4", 24, 3, 40, 6, 3, kind="hybridserve", kv_ratio=0.0, block_tokens=8),
        _extra("opt-6.7b", "rtx4090-pcie4", 24, 3, 40, 6, 3, kind="hybridserve", kv_ratio=0.37, block_tokens=4,
               step_barrier=False),
        _extra("opt-6.7b", "t4-pcie3", 12, 3, 64, 4, 3, kind="flexgen", weights_gpu_percent=35,
               cache_gpu_percent=20),
        _extra("opt-6.7b", "t4-pcie3", 12, 3, 64, 4, 3, kind="flexgen", cpu_attention=True, cache_pinned=True),
        _extra("llama-2-70b", "h100-80gb-pcie5", 8, 2, 50, 4, 3, kind="hybrid", kv_ratio=0.25),
        # do not fit (host; GPU): only the message is compared
        _extra("opt-30b", "rtx4090-pcie4", 4096, 64, 2048, 8, 4, kind="kv-only"),
        _extra("opt-1.3b", "rtx4090-pcie4", 2048, 128, 2048, 8, 24, kind="kv-only"),
        _extra("opt-30b", "rtx4090-pcie4", 4, 1, 64, 4, 48, kind="hybrid", kv_ratio=0.5, weights_gpu_percent=100),
    ]


def golden_points() -> dict[str, PointSpec]:
    out: dict[str, PointSpec] = {}
    for path in SCENARIOS:
        for i, p in enumerate(load_points([path])):
            name = f"{path.parent.name}/{path.stem}#{i} {p.model.name} p{p.workload.prompt_len} {p.policy.label}"
            out[name] = _cut(p)
    for i, p in enumerate(extra_points()):
        out[f"extra#{i} {p.model.name} L{p.model.layers} {p.policy.label}"] = p
    return out


# ------------------------------------------------------------------------------- hashing
def _h(items) -> str:
    h = hashlib.sha256()
    for x in items:
        h.update(x if isinstance(x, bytes) else repr(x).encode())
        h.update(b"\n")
    return h.hexdigest()[:24]


def _num(x) -> str:
    return float(x).hex() if isinstance(x, float) else repr(int(x))


def ops_hash(sched) -> str:
    return _h(
        (op.id, op.stream.value, op.kind.value, op.layer, op.step, op.micro_batch, tuple(op.deps),
         tuple(op.after), int(op.link_bytes), float(op.flops).hex(), int(op.hbm_bytes), int(op.host_bytes),
         int(op.kernels), int(op.gpu_bytes), int(op.workspace_bytes), int(op.host_alloc_bytes), bool(op.pinned),
         tuple(op.shape))
        for op in sched.ops
    )


def plan_hash(sched) -> str:
    plan = sched.memory
    return _h([
        tuple((i.what, i.bytes) for i in plan.gpu), tuple((i.what, i.bytes) for i in plan.host),
        plan.gpu_capacity_bytes, plan.host_capacity_bytes, sched.gpu_static_bytes, sched.host_static_bytes,
        sched.meta,
    ])


def timeline_hash(res) -> str:
    return _h([np.asarray(res.start_ns, dtype="<i8").tobytes(), np.asarray(res.end_ns, dtype="<i8").tobytes(),
               np.asarray(res.duration_ns, dtype="<i8").tobytes(), int(res.makespan_ns)])


def metrics_hash(metrics: dict) -> str:
    def norm(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else v.hex()
        return _num(v)

    return _h(sorted((k, norm(v)) for k, v in metrics.items()))


def fingerprint(point: PointSpec) -> dict[str, str]:
    try:
        build_schedule(point)
        fits = ""
    except MemoryPlanError as e:
        fits = str(e)
    out = {"fits": fits}
    if fits and point.scenario == "golden-extra":
        return out  # a big point that exists to check the message only
    sched = build_schedule(point, check_memory=False)
    out["ops"] = ops_hash(sched)
    out["n_ops"] = len(sched)
    out["plan"] = plan_hash(sched)
    cost = RooflineCostModel(point.hardware)
    for engine in ENGINES:
        res = simulate(sched, cost, engine=engine)
        out[engine] = timeline_hash(res)
        out[f"{engine}_makespan_ns"] = res.makespan_ns
    out["metrics"] = metrics_hash(run_metrics(simulate(sched, cost, engine="list")))
    return out


def _load() -> dict:
    return json.loads(DATA.read_text())


POINTS = golden_points()


def test_golden_covers_every_point():
    assert set(_load()) == set(POINTS)
    kinds = {p.policy.kind.value for p in POINTS.values()}
    assert kinds == {"kv-only", "token-recompute", "hybrid", "flexgen", "hybridserve", "kvpr"}


@pytest.mark.parametrize("name", sorted(POINTS))
def test_identical_to_golden(name):
    want = _load()[name]
    got = fingerprint(POINTS[name])
    assert got == want


@st.composite
def any_points(draw) -> PointSpec:
    """Small points of every policy kind, including one layer x one GPU batch."""
    kind = draw(st.sampled_from(["kv-only", "token-recompute", "hybrid", "flexgen", "hybridserve", "kvpr"]))
    k, gbs = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    pol: dict = dict(kind=kind, num_gpu_batches=k, gpu_batch_size=gbs,
                     weights_gpu_percent=draw(st.sampled_from([0.0, 30.0, 100.0])))
    if kind in ("kv-only", "flexgen"):
        pol["cpu_attention"] = draw(st.booleans())
    if kind in ("token-recompute", "hybrid", "hybridserve"):
        pol["kv_ratio"] = draw(st.floats(0.0, 1.0))
    if kind == "hybridserve":
        pol["block_tokens"] = draw(st.integers(1, 8))
        pol["mini_batching"] = draw(st.sampled_from(["naive", "balanced"]))
    if kind == "kvpr":
        pol["split_rule"] = draw(st.sampled_from(["closed-form", "per-step"]))
    if kind in ("hybridserve", "kvpr"):
        pol["step_barrier"] = draw(st.booleans())
    if kind not in ("hybridserve", "kvpr") and not pol.get("cpu_attention"):
        pol["cache_gpu_percent"] = draw(st.sampled_from([0.0, 25.0]))
    model = tiny_model(layers=draw(st.integers(1, 3)), kv_heads=draw(st.sampled_from([None, 1])))
    return make_point(model, batch=gbs * k, prompt_len=draw(st.integers(1, 40)), gen_len=draw(st.integers(1, 5)),
                      **pol)


@settings(max_examples=150, deadline=None)
@given(any_points())
def test_plan_from_sizes_is_the_plan_of_the_ops(point):
    """The builder sizes the memory plan before it emits ops; the plan of the ops it then
    emits is the same, item for item and in the same order."""
    sched = build_schedule(point, check_memory=False)
    run = effective_point(point)
    plan, gpu_static, host_static = plan_memory(run, scheme_for(run.policy, run), sched.ops)
    assert (plan, gpu_static, host_static) == (sched.memory, sched.gpu_static_bytes, sched.host_static_bytes)
    assert Schedule(sched.meta, sched.ops, sched.memory, gpu_static, host_static) == sched


if __name__ == "__main__":
    if "--write" not in sys.argv:
        sys.exit("usage: python tests/test_golden_timelines.py --write")
    DATA.parent.mkdir(parents=True, exist_ok=True)
    data = {name: fingerprint(p) for name, p in sorted(POINTS.items())}
    DATA.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(data)} points to {DATA}")
