"""HybridServe: block-granular KV/ACT pools, mini-batch balance, activation-only variant."""

from __future__ import annotations

import numpy as np
from conftest import make_point, tiny_model

from hssim.sim.api import run_point
from hssim.sim.policies import build_schedule
from hssim.sim.policies.hybridserve import block_flags, form_mini_batches, kv_prefix_tokens
from hssim.sim.schedule import OpKind
from hssim.sim.specs import MiniBatching


def test_pools_hold_the_fixed_ratio_of_blocks_and_requests_may_be_mixed():
    flags = block_flags(batch=8, prompt_len=40, gen_len=9, block_tokens=16, kv_ratio=0.4)
    assert flags.sum() == round(0.4 * flags.size)
    per_req = flags.sum(axis=1)
    assert per_req.max() == flags.shape[1] and per_req.min() == 0  # all-K,V and all-activation requests
    assert ((per_req > 0) & (per_req < flags.shape[1])).any()  # and one split between the two


def test_balanced_mini_batches_even_out_kv_tokens():
    flags = block_flags(batch=8, prompt_len=40, gen_len=9, block_tokens=16, kv_ratio=0.5)
    kv = kv_prefix_tokens(flags, 16, 48)[:, 40]
    spread = {}
    for rule in MiniBatching:
        groups = form_mini_batches(kv, 4, rule)
        assert sorted(sum(groups, [])) == list(range(8)) and all(len(g) == 2 for g in groups)
        loads = [int(kv[g].sum()) for g in groups]
        spread[rule] = max(loads) - min(loads)
    assert spread[MiniBatching.balanced] < spread[MiniBatching.naive]


def test_every_past_token_is_loaded_once_as_kv_or_activation():
    p = make_point(tiny_model(layers=2), kind="hybridserve", kv_ratio=0.5, batch=8, num_gpu_batches=4,
                   prompt_len=30, gen_len=5, block_tokens=8)
    sched = build_schedule(p)

    def tokens(kind):
        return sum(op.shape_dict["batch"] * op.shape_dict["tokens"] for op in sched.ops if op.kind is kind)

    past_total = sum(30 + t - 1 for t in range(1, 5)) * 8 * 2
    assert tokens(OpKind.load_kv) + tokens(OpKind.load_act) == past_total
    assert tokens(OpKind.recompute_kv) == tokens(OpKind.load_act)


def test_activation_only_variant_moves_no_kv():
    p = make_point("opt-1.3b", layers=2, kind="hybridserve", kv_ratio=0.0, gen_len=3)
    kinds = {op.kind for op in build_schedule(p).ops}
    assert OpKind.load_kv not in kinds and OpKind.store_kv not in kinds and OpKind.load_act in kinds


def test_gqa_model_never_prefers_activations():
    def tput(r):
        p = make_point("llama-2-70b", hardware="h100-80gb-pcie5", layers=2, batch=16, num_gpu_batches=2,
                       prompt_len=256, gen_len=3, kind="hybridserve", kv_ratio=r)
        return run_point(p).metrics["throughput_tok_s"]

    full = tput(1.0)
    assert all(tput(r) <= full for r in (0.0, 0.5))
    assert np.isfinite(full)
