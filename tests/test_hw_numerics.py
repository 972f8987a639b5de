"""Greedy generation through the executor's kernels equals Hugging Face's, on the CPU."""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch  # noqa: E402

from hssim.hw.executor import measure_point  # noqa: E402
from hssim.hw.numerics import check_policy, hf_greedy, hf_opt_model, tiny_opt_spec  # noqa: E402
from hssim.hw.weights import LayerLayout, ModelWeights  # noqa: E402
from hssim.sim.presets import HARDWARE  # noqa: E402
from hssim.sim.specs import ModelSpec, PointSpec, PolicySpec, WorkloadSpec  # noqa: E402

FP32_TOL = 1e-4


@pytest.fixture(scope="module")
def opt():
    m = tiny_opt_spec(layers=2, hidden=64, heads=4, vocab=128)
    return m, hf_opt_model(m, seed=0)


POLICIES = [
    PolicySpec(kind="kv-only"),
    PolicySpec(kind="kv-only", cpu_attention=True),
    PolicySpec(kind="hybrid", kv_ratio=0.0),
    PolicySpec(kind="hybrid", kv_ratio=0.3),
    PolicySpec(kind="hybrid", kv_ratio=0.5),
    PolicySpec(kind="hybrid", kv_ratio=0.8),
    PolicySpec(kind="token-recompute", kv_ratio=0.0),
    PolicySpec(kind="token-recompute", kv_ratio=0.5),
    PolicySpec(kind="flexgen"),
    PolicySpec(kind="flexgen", cpu_attention=True),
    # KVPR: the first l tokens held as activations and rebuilt, the rest held and loaded as K,V
    PolicySpec(kind="kvpr", split_tokens=0),
    PolicySpec(kind="kvpr", split_tokens=3),
    PolicySpec(kind="kvpr", split_tokens=8),  # = prompt: every prompt token rebuilt at step 1
    PolicySpec(kind="kvpr", split_tokens=40),  # > every past: everything rebuilt
    PolicySpec(kind="kvpr", split_rule="closed-form"),
    PolicySpec(kind="kvpr", split_rule="per-step"),
    # HybridServe: block-granular, sequences of one GPU batch differ
    PolicySpec(kind="hybridserve", kv_ratio=0.0, block_tokens=4),
    PolicySpec(kind="hybridserve", kv_ratio=0.3, block_tokens=4),
    PolicySpec(kind="hybridserve", kv_ratio=0.5, block_tokens=4),
    PolicySpec(kind="hybridserve", kv_ratio=0.5, block_tokens=4, mini_batching="naive"),
    PolicySpec(kind="hybridserve", kv_ratio=0.7, block_tokens=3),
    PolicySpec(kind="hybridserve", kv_ratio=0.7, block_tokens=3, mini_batching="naive"),
]


def _label(p):
    extra = f" b{p.block_tokens}" if p.kind.value == "hybridserve" else ""
    return p.label + extra


#: a slow link and a slow GPU, so that KVPR's split lands strictly inside the context
#: (closed form: 6 of 8; per step: 6, 7, 7, 8, 9, 10 as the context grows)
SLOW = HARDWARE["a100-40gb-pcie4"].model_copy(update={
    "gpu": HARDWARE["a100-40gb-pcie4"].gpu.model_copy(update={"peak_flops": 1e9}),
    "link": HARDWARE["a100-40gb-pcie4"].link.model_copy(update={"h2d_pinned_Bps": 1e7, "d2h_pinned_Bps": 1e7})})


def _rebuilds(policy) -> bool:
    kind = policy.kind.value
    if kind in ("kv-only", "flexgen"):
        return False
    if kind == "kvpr":
        return policy.split_tokens != 0
    return policy.kv_ratio < 1


@pytest.mark.parametrize("policy", POLICIES, ids=_label)
def test_greedy_tokens_and_kv_match_hugging_face(opt, policy):
    m, model = opt
    hardware = SLOW if policy.kind.value == "kvpr" else None
    rep = check_policy(model, m, policy.model_copy(update={"num_gpu_batches": 2}), batch=4, prompt_len=8, gen_len=6,
                       hardware=hardware)
    np.testing.assert_array_equal(rep.tokens, rep.reference)
    assert rep.cached_max_abs_err < FP32_TOL
    if _rebuilds(policy):
        assert rep.rebuilt_tokens > 0  # K,V really were rebuilt, and equal the cached ones
    assert rep.rebuilt_max_abs_err < FP32_TOL


def test_kvpr_splits_are_inside_the_context():
    """The closed-form and per-step cases above really split (not all-or-nothing)."""
    from hssim.sim.policies.kvpr import kvpr_scheme

    m = tiny_opt_spec(layers=2, hidden=64, heads=4, vocab=128)
    wl = WorkloadSpec(batch=4, prompt_len=8, gen_len=6)
    for rule in ("closed-form", "per-step"):
        s = kvpr_scheme(PointSpec(scenario="n", model=m, hardware=SLOW, workload=wl,
                                  policy=PolicySpec(kind="kvpr", split_rule=rule, num_gpu_batches=2)))
        splits = [s.split(p) for p in range(8, 14)]
        assert all(0 < x < p for x, p in zip(splits, range(8, 14), strict=True)), (rule, splits)
    assert len({kvpr_scheme(PointSpec(scenario="n", model=m, hardware=SLOW, workload=wl, policy=PolicySpec(
        kind="kvpr", split_rule="per-step", num_gpu_batches=2))).split(p) for p in range(8, 14)}) > 1


def test_a_wrong_weight_is_caught(opt):
    """The comparison is sensitive: the same run with one wrong FFN matrix per layer differs."""
    m, model = opt
    point = PointSpec(scenario="n", model=m, hardware=HARDWARE["a100-40gb-pcie4"],
                      workload=WorkloadSpec(batch=4, prompt_len=8, gen_len=6),
                      policy=PolicySpec(kind="kv-only", num_gpu_batches=2))
    prompt = torch.randint(3, m.vocab, (8, 4), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    tokens = measure_point(point, "cpu", repeats=1, warmup=0, weights=_perturbed(model, m), prompt_ids=prompt).tokens
    assert not (tokens == hf_greedy(model, prompt, 6)).all()


def _perturbed(model, m):
    from hssim.hw.numerics import weights_from_hf_opt

    w = weights_from_hf_opt(model, m)
    for flat in w.layers:
        LayerLayout.of(m).views(flat)["w_fc2"].mul_(-3.0)
    return w


def test_llama_gqa_greedy_tokens_match_hugging_face():
    transformers = pytest.importorskip("transformers")
    m = ModelSpec(name="llama-tiny", layers=2, hidden=64, heads=4, kv_heads=2, ffn=96, vocab=128,
                  max_positions=64, ffn_kind="swiglu", norm_kind="rmsnorm", bias=False, dtype="fp32")
    cfg = transformers.LlamaConfig(
        vocab_size=m.vocab, hidden_size=m.hidden, intermediate_size=m.ffn, num_hidden_layers=m.layers,
        num_attention_heads=m.heads, num_key_value_heads=m.kv_heads, max_position_embeddings=m.max_positions,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False, attention_bias=False,
        initializer_range=0.1)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    layout = LayerLayout.of(m)
    layers = []
    for blk in model.model.layers:
        a, f = blk.self_attn, blk.mlp
        flat = torch.empty(layout.numel)
        v = layout.views(flat)
        v["norm1_w"].copy_(blk.input_layernorm.weight.detach() + 0.1 * torch.randn(m.hidden))
        v["w_qkv"].copy_(torch.cat((a.q_proj.weight, a.k_proj.weight, a.v_proj.weight)).detach())
        v["w_o"].copy_(a.o_proj.weight.detach())
        v["norm2_w"].copy_(blk.post_attention_layernorm.weight.detach())
        v["w_gate_up"].copy_(torch.cat((f.gate_proj.weight, f.up_proj.weight)).detach())
        v["w_down"].copy_(f.down_proj.weight.detach())
        with torch.no_grad():
            blk.input_layernorm.weight.copy_(v["norm1_w"])
        layers.append(flat)
    weights = ModelWeights(layers=layers, embed=model.model.embed_tokens.weight.detach().clone(), positions=None,
                           final_norm={"w": model.model.norm.weight.detach().clone()},
                           lm_head=model.lm_head.weight.detach().clone())
    prompt = torch.randint(0, m.vocab, (8, 4), generator=torch.Generator().manual_seed(1), dtype=torch.int32)
    reference = hf_greedy(model, prompt, 5)
    for policy in (PolicySpec(kind="kv-only"), PolicySpec(kind="hybrid", kv_ratio=0.4),
                   PolicySpec(kind="token-recompute", kv_ratio=0.5),
                   # rotary: rebuilt K,V must be rotated at their own positions (KVPR's prefix,
                   # HybridServe's per-sequence blocks)
                   PolicySpec(kind="kvpr", split_tokens=5),
                   PolicySpec(kind="hybridserve", kv_ratio=0.3, block_tokens=4)):
        point = PointSpec(scenario="n", model=m, hardware=HARDWARE["a100-40gb-pcie4"],
                          workload=WorkloadSpec(batch=4, prompt_len=8, gen_len=5),
                          policy=policy.model_copy(update={"num_gpu_batches": 2}))
        tokens = measure_point(point, "cpu", repeats=1, warmup=0, weights=weights, prompt_ids=prompt).tokens
        np.testing.assert_array_equal(tokens, reference, err_msg=policy.label)
