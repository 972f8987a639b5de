"""Static plan of a schedule for the executor: host ranges and the happens-before check."""

import pytest

pytest.importorskip("torch")

from hssim.hw.plan import build_plan, happens_before, host_hazards, ready_clocks  # noqa: E402
from hssim.sim.policies import build_schedule  # noqa: E402
from hssim.sim.presets import HARDWARE  # noqa: E402
from hssim.sim.schedule import OpKind  # noqa: E402
from hssim.sim.specs import ModelSpec, PointSpec, PolicySpec, WorkloadSpec  # noqa: E402

TINY = ModelSpec(name="tiny", layers=2, hidden=32, heads=4, kv_heads=4, ffn=64, vocab=100, max_positions=64)
POLICIES = [
    PolicySpec(kind="kv-only"),
    PolicySpec(kind="kv-only", cpu_attention=True),
    PolicySpec(kind="hybrid", kv_ratio=0.5),
    PolicySpec(kind="hybrid", kv_ratio=0.0),
    PolicySpec(kind="token-recompute", kv_ratio=0.4),
]


def point(policy, layers=2, k=2, prompt=5, gen=5):
    return PointSpec(scenario="t", model=TINY.model_copy(update={"layers": layers}), hardware=HARDWARE["t4-pcie3"],
                     workload=WorkloadSpec(batch=2 * k, prompt_len=prompt, gen_len=gen),
                     policy=policy.model_copy(update={"num_gpu_batches": k}))


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.label)
def test_loads_read_exactly_the_tokens_the_schedule_moves(policy):
    sched = build_schedule(point(policy))
    plan = build_plan(sched)
    for op in sched.ops:
        if op.kind in (OpKind.load_kv, OpKind.load_act, OpKind.load_tokens):
            r = plan.ranges[op.id]
            assert r.tokens == op.shape_dict["tokens"]
            assert r.start >= 0 and r.stop <= plan.capacity.get(r.cls, plan.past(op.step))
        if op.kind in (OpKind.load_kv, OpKind.load_act):
            positions = plan.positions[op.id]
            # every position loaded lies in the past, and none twice
            assert len(set(positions)) == len(positions) and max(positions) < plan.past(op.step)


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.label)
def test_each_past_position_is_held_exactly_once_per_step(policy):
    """Loaded K,V + loaded activations + recomputed prefix cover [0, past) without overlap."""
    sched = build_schedule(point(policy))
    plan = build_plan(sched)
    for op in sched.ops:
        if op.kind is not OpKind.attention or op.step == 0:
            continue
        held = []
        for d in op.deps:
            dep = sched.ops[d]
            if dep.kind is OpKind.load_kv:
                held += plan.positions[d]
            elif dep.kind is OpKind.recompute_kv:
                load = next(x for x in dep.deps if sched.ops[x].kind is OpKind.load_act)
                held += plan.positions[load]
            elif dep.kind is OpKind.recompute_layer:
                held += range(dep.shape_dict["tokens"])
        assert sorted(held) == list(range(plan.past(op.step))), op.label


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.label)
@pytest.mark.parametrize("layers,k", [(1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (3, 3)])
def test_every_host_read_is_ordered_after_its_write(policy, layers, k):
    """Whatever the block shape, a decode load follows the store that wrote what it reads."""
    assert host_hazards(build_plan(build_schedule(point(policy, layers=layers, k=k)))) == []


def test_happens_before_follows_streams_and_dependencies():
    sched = build_schedule(point(PolicySpec(kind="kv-only")))
    clocks = ready_clocks(sched)
    for op in sched.ops:
        for d in (*op.deps, *op.after):
            assert happens_before(sched, d, op.id, clocks)
        assert not happens_before(sched, op.id, op.id, clocks)
    same = sched.stream_ops(sched.ops[0].stream)
    assert happens_before(sched, same[0].id, same[-1].id, clocks)
