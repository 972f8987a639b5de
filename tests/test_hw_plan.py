"""Static plan of a schedule for the executor: host ranges, the streamed weights and the happens-before check."""

import pytest

pytest.importorskip("torch")

from hssim.hw.plan import build_plan, happens_before, host_hazards, ready_clocks  # noqa: E402
from hssim.sim.policies import build_schedule, scheme_for  # noqa: E402
from hssim.sim.policies.block import effective_point  # noqa: E402
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
    PolicySpec(kind="flexgen"),
    PolicySpec(kind="flexgen", cpu_attention=True),
    PolicySpec(kind="kvpr", split_tokens=0),
    PolicySpec(kind="kvpr", split_tokens=3),
    PolicySpec(kind="kvpr", split_tokens=50),
    PolicySpec(kind="kvpr"),
    PolicySpec(kind="kvpr", split_rule="per-step"),
    PolicySpec(kind="hybridserve", kv_ratio=0.0, block_tokens=2),
    PolicySpec(kind="hybridserve", kv_ratio=0.4, block_tokens=2),
    PolicySpec(kind="hybridserve", kv_ratio=0.4, block_tokens=3, mini_batching="naive"),
    PolicySpec(kind="hybridserve", kv_ratio=1.0, block_tokens=4),
]


def _id(p):
    return p.label + (f" b{p.block_tokens}" if p.kind.value == "hybridserve" else "")


def point(policy, layers=2, k=2, prompt=5, gen=5, gbs=2):
    return PointSpec(scenario="t", model=TINY.model_copy(update={"layers": layers}), hardware=HARDWARE["t4-pcie3"],
                     workload=WorkloadSpec(batch=gbs * k, prompt_len=prompt, gen_len=gen),
                     policy=policy.model_copy(update={"num_gpu_batches": k}))


def plan_of(p):
    return build_plan(build_schedule(p), p)


@pytest.mark.parametrize("policy", POLICIES, ids=_id)
def test_loads_read_exactly_the_tokens_the_schedule_moves(policy):
    p = point(policy)
    sched = build_schedule(p)
    plan = build_plan(sched, p)
    for op in sched.ops:
        s = op.shape_dict
        if op.kind is OpKind.load_tokens:
            assert plan.ranges[op.id].tokens == s["tokens"]
        if op.kind in (OpKind.load_kv, OpKind.load_act, OpKind.store_kv, OpKind.store_act):
            acc = plan.access[op.id]
            assert acc.rows(plan.gbs) == s["tokens"] * s["batch"]
            moved = sum(sg.n * (plan.gbs if sg.seq < 0 else 1) for sg in acc.segments)
            assert moved == acc.rows(plan.gbs)
            assert all(sg.start >= 0 and sg.stop <= plan.capacity[acc.cls] for sg in acc.segments)
        if op.kind in (OpKind.load_kv, OpKind.load_act):
            pos, seq = plan.access[op.id].row_index(plan.gbs)
            # every row loaded lies in the past, and no (position, sequence) twice
            assert len(set(zip(pos.tolist(), seq.tolist(), strict=True))) == len(pos)
            assert pos.max() < plan.past(op.step)


@pytest.mark.parametrize("policy", POLICIES, ids=_id)
def test_each_past_position_is_held_exactly_once_per_step_and_sequence(policy):
    """Loaded K,V + rebuilt activations + recomputed prefix cover [0, past) of every sequence, once."""
    p = point(policy)
    sched = build_schedule(p)
    plan = build_plan(sched, p)
    gbs = plan.gbs
    for op in sched.ops:
        if op.kind is not OpKind.attention or op.step == 0:
            continue
        held = []
        for d in op.deps:
            dep = sched.ops[d]
            if dep.kind is OpKind.load_kv:
                held += zip(*(a.tolist() for a in plan.access[d].row_index(gbs)), strict=True)
            elif dep.kind is OpKind.recompute_kv:
                load = next(x for x in dep.deps if sched.ops[x].kind is OpKind.load_act)
                held += zip(*(a.tolist() for a in plan.access[load].row_index(gbs)), strict=True)
            elif dep.kind is OpKind.recompute_layer:
                held += [(t, s) for t in range(dep.shape_dict["tokens"]) for s in range(gbs)]
        past = plan.past(op.step)
        assert sorted(held) == [(t, s) for t in range(past) for s in range(gbs)], op.label


@pytest.mark.parametrize("split", [0, 2, 5, 7, 50])
def test_kvpr_rebuilds_the_prefix_and_loads_the_rest(split):
    """l = split(past): activations of [0, l), K,V of [l, past) (not the last entries stored)."""
    p = point(PolicySpec(kind="kvpr", split_tokens=split))
    sched = build_schedule(p)
    plan = build_plan(sched, p)
    scheme = scheme_for(p.policy, p)
    seen = 0
    for op in sched.ops:
        if op.kind in (OpKind.load_act, OpKind.load_kv) and op.step > 0:
            past = plan.past(op.step)
            cut = scheme.split(past)
            want = range(cut) if op.kind is OpKind.load_act else range(cut, past)
            assert plan.access[op.id].positions.tolist() == list(want), op.label
            seen += 1
    assert seen > 0


def test_hybridserve_loads_each_sequence_its_own_blocks():
    """Sequences of one GPU batch hold different positions as K,V; each load reads exactly the
    positions of its sequence's blocks of that kind (as the scheme's per-batch counts say)."""
    for rule in ("balanced", "naive"):
        p = point(PolicySpec(kind="hybridserve", kv_ratio=0.4, block_tokens=2, mini_batching=rule), gbs=3, k=2)
        run = effective_point(p)
        scheme = scheme_for(run.policy, run)
        sched = build_schedule(p)
        plan = build_plan(sched, p)
        differ = 0
        for op in sched.ops:
            if op.kind not in (OpKind.load_kv, OpKind.load_act) or op.step == 0:
                continue
            acc = plan.access[op.id]
            assert acc.packed
            per_seq = [acc.positions[acc.seqs == s].tolist() for s in range(plan.gbs)]
            differ += len({tuple(x) for x in per_seq}) > 1
            past = plan.past(op.step)
            kv = int(scheme.kv[op.micro_batch, past])
            assert sum(map(len, per_seq)) == (kv if op.kind is OpKind.load_kv else plan.gbs * past - kv)
            bt = p.policy.block_tokens
            for pos in per_seq:  # a block is wholly K,V or wholly activations
                whole = {q for b in {x // bt for x in pos} for q in range(b * bt, min((b + 1) * bt, past))}
                assert set(pos) == whole, (op.label, pos)
        assert differ > 0, rule  # the case is not uniform by luck


def test_a_streamed_layer_is_one_copy_of_its_last_elements():
    p = point(PolicySpec(kind="kvpr", split_tokens=2, weights_gpu_percent=30.0))
    sched = build_schedule(p)
    wp = build_plan(sched, p).weights
    loads = [op for op in sched.ops if op.kind is OpKind.load_weights and (op.step, op.layer) == (0, 1)]
    assert len(loads) == 1
    assert wp.n_resident + wp.n_streamed == wp.numel
    assert wp.streamed == ((wp.numel - wp.n_streamed, wp.numel),)  # the layer's tail, as one range
    assert wp.n_streamed * p.model.dtype_bytes == loads[0].link_bytes


@pytest.mark.parametrize("policy", POLICIES, ids=_id)
@pytest.mark.parametrize("layers,k", [(1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (3, 3)])
def test_every_host_read_is_ordered_after_its_write(policy, layers, k):
    """Whatever the block shape, a decode load follows the store that wrote what it reads."""
    assert host_hazards(plan_of(point(policy, layers=layers, k=k))) == []


def test_happens_before_follows_streams_and_dependencies():
    sched = build_schedule(point(PolicySpec(kind="kv-only")))
    clocks = ready_clocks(sched)
    for op in sched.ops:
        for d in (*op.deps, *op.after):
            assert happens_before(sched, d, op.id, clocks)
        assert not happens_before(sched, op.id, op.id, clocks)
    same = sched.stream_ops(sched.ops[0].stream)
    assert happens_before(sched, same[0].id, same[-1].id, clocks)
