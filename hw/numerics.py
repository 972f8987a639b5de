"""Numerics: the executor's kernels against Hugging Face's OPT with the same weights.

A small OPT is built locally from `transformers`' `OPTConfig` (random weights,
nothing downloaded), its weights are copied into the executor's flat layout, and
the *same* executor that is timed (`executor.measure_point`, CPU backend) runs
greedy generation under a policy. The reference is Hugging Face's model run
token by token (full forward each step, argmax of the last logits); its K,V per
layer come from forward hooks on `k_proj` / `v_proj`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..sim.presets import HARDWARE
from ..sim.schedule import OpKind
from ..sim.specs import HardwareSpec, ModelSpec, PointSpec, PolicySpec, WorkloadSpec
from .executor import Measurement, measure_point
from .plan import build_plan
from .weights import LayerLayout, ModelWeights


def tiny_opt_spec(layers: int = 2, hidden: int = 64, heads: int = 4, vocab: int = 128,
                  max_positions: int = 64) -> ModelSpec:
    return ModelSpec(name=f"opt-tiny-{layers}x{hidden}", layers=layers, hidden=hidden, heads=heads,
                     kv_heads=heads, ffn=4 * hidden, vocab=vocab, max_positions=max_positions, dtype="fp32")


def hf_opt_model(m: ModelSpec, seed: int = 0, init_std: float = 0.1):
    """A random-weight `OPTForCausalLM` of spec `m` (fp32, eval mode), built locally."""
    try:
        from transformers import OPTConfig, OPTForCausalLM
    except ImportError:
        from ..errors import MissingExtra

        raise MissingExtra("the numerics check", "numerics", "transformers") from None

    config = OPTConfig(
        vocab_size=m.vocab, hidden_size=m.hidden, num_hidden_layers=m.layers, ffn_dim=m.ffn,
        num_attention_heads=m.heads, max_position_embeddings=m.max_positions, word_embed_proj_dim=m.hidden,
        do_layer_norm_before=True, activation_function="relu", enable_bias=True, dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0, init_std=init_std,
        pad_token_id=1, bos_token_id=2, eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = OPTForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a dropped one shows
        for name, p in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * init_std)
    return model


def weights_from_hf_opt(model, m: ModelSpec) -> ModelWeights:
    """Copy an `OPTForCausalLM`'s weights into the executor's layout."""
    dec = model.model.decoder
    layout = LayerLayout.of(m)
    layers = []
    for blk in dec.layers:
        a = blk.self_attn
        parts = {
            "norm1_w": blk.self_attn_layer_norm.weight, "norm1_b": blk.self_attn_layer_norm.bias,
            "w_qkv": torch.cat((a.q_proj.weight, a.k_proj.weight, a.v_proj.weight)),
            "b_qkv": torch.cat((a.q_proj.bias, a.k_proj.bias, a.v_proj.bias)),
            "w_o": a.out_proj.weight, "b_o": a.out_proj.bias,
            "norm2_w": blk.final_layer_norm.weight, "norm2_b": blk.final_layer_norm.bias,
            "w_fc1": blk.fc1.weight, "b_fc1": blk.fc1.bias, "w_fc2": blk.fc2.weight, "b_fc2": blk.fc2.bias,
        }
        flat = torch.empty(layout.numel)
        views = layout.views(flat)
        for name, value in parts.items():
            views[name].copy_(value.detach())
        layers.append(flat)
    embed = dec.embed_tokens.weight.detach().clone()
    # OPT's learned positions are offset by 2: position p uses row p + 2.
    positions = dec.embed_positions.weight.detach()[2:2 + m.max_positions].clone()
    final = {"w": dec.final_layer_norm.weight.detach().clone(), "b": dec.final_layer_norm.bias.detach().clone()}
    return ModelWeights(layers=layers, embed=embed, positions=positions, final_norm=final, lm_head=embed)


@torch.no_grad()
def hf_greedy(model, prompt_ids: torch.Tensor, gen_len: int) -> np.ndarray:
    """Greedy tokens `[batch, gen_len]` of `model` from `prompt_ids` `[prompt, batch]`."""
    ids = prompt_ids.T.long()
    out = []
    for _ in range(gen_len):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]
        nxt = logits.argmax(-1)
        out.append(nxt)
        ids = torch.cat((ids, nxt[:, None]), dim=1)
    return torch.stack(out, dim=1).numpy()


@torch.no_grad()
def hf_kv(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """K,V of every layer for the token sequence `ids` `[batch, seq]`: `[seq, batch, 2h]` each."""
    keys: dict[int, torch.Tensor] = {}
    values: dict[int, torch.Tensor] = {}
    hooks = []
    for i, blk in enumerate(model.model.decoder.layers):
        hooks.append(blk.self_attn.k_proj.register_forward_hook(lambda _m, _i, o, i=i: keys.__setitem__(i, o)))
        hooks.append(blk.self_attn.v_proj.register_forward_hook(lambda _m, _i, o, i=i: values.__setitem__(i, o)))
    try:
        model(input_ids=ids.long(), attention_mask=torch.ones_like(ids.long()))
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat((keys[i], values[i]), dim=-1).transpose(0, 1) for i in range(len(keys))]


@dataclass(frozen=True)
class NumericsReport:
    tokens: np.ndarray  # executor's greedy tokens [batch, gen]
    reference: np.ndarray  # Hugging Face's
    rebuilt_max_abs_err: float  # rebuilt K,V vs Hugging Face's K,V (0 if nothing rebuilt)
    rebuilt_tokens: int  # (token, layer, micro-batch) K,V rows compared
    cached_max_abs_err: float  # host-cached K,V vs Hugging Face's K,V
    measurement: Measurement

    @property
    def tokens_match(self) -> bool:
        return bool((self.tokens == self.reference).all())


def check_policy(model, m: ModelSpec, policy: PolicySpec, batch: int = 4, prompt_len: int = 8,
                 gen_len: int = 6, seed: int = 0, hardware: HardwareSpec | None = None) -> NumericsReport:
    """Generate greedily through the executor under `policy`; compare with Hugging Face.

    `hardware` (default the A100 preset) only shapes the schedule (e.g. KVPR's split)."""
    point = PointSpec(scenario="numerics", model=m, hardware=hardware or HARDWARE["a100-40gb-pcie4"],
                      workload=WorkloadSpec(batch=batch, prompt_len=prompt_len, gen_len=gen_len), policy=policy)
    gen = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(3, m.vocab, (prompt_len, batch), generator=gen, dtype=torch.int32)
    meas = measure_point(point, "cpu", repeats=1, warmup=0, weights=weights_from_hf_opt(model, m),
                         prompt_ids=prompt_ids, capture=True)
    reference = hf_greedy(model, prompt_ids, gen_len)
    # K,V of every position the cache ever holds: prompt + all generated tokens but the last
    seq = torch.cat((prompt_ids.T.long(), torch.from_numpy(reference[:, :-1]).long()), dim=1)
    ref_kv = hf_kv(model, seq)
    rebuilt_err, rows = _rebuilt_error(meas, ref_kv)
    return NumericsReport(meas.tokens, reference, rebuilt_err, rows, _cached_error(meas, ref_kv), meas)


def _rebuilt_error(meas: Measurement, ref_kv: list[torch.Tensor]) -> tuple[float, int]:
    """Every rebuilt K,V row (at its position and sequence) vs Hugging Face's."""
    sched, gbs = meas.schedule, meas.point.gpu_batch_size
    plan = build_plan(sched, meas.point)
    err, rows = 0.0, 0
    for op_id, rebuilt in meas.captured.items():
        op = sched.ops[op_id]
        if op.kind is OpKind.recompute_kv:
            load = next(sched.ops[d] for d in op.deps if sched.ops[d].kind is OpKind.load_act)
            pos, seq = plan.access[load.id].row_index(gbs)
        else:
            tokens = op.shape_dict["tokens"]
            pos, seq = np.repeat(np.arange(tokens), gbs), np.tile(np.arange(gbs), tokens)
        expected = ref_kv[op.layer][pos, op.micro_batch * gbs + seq]
        err = max(err, float((rebuilt.reshape(len(pos), -1) - expected).abs().max()))
        rows += len(pos)
    return err, rows


def _cached_error(meas: Measurement, ref_kv: list[torch.Tensor]) -> float:
    """Every K,V entry the host cache holds after the run vs Hugging Face's."""
    plan = build_plan(meas.schedule, meas.point)
    gbs = meas.point.gpu_batch_size
    err = 0.0
    for (layer, j, cls), lanes in plan.held.items():
        if cls != "kv":
            continue
        host = meas.host.cache[(layer, j, cls)]
        for seq, positions in lanes:
            if seq < 0:
                cached, seqs = host[:len(positions)], slice(j * gbs, (j + 1) * gbs)
            else:
                cached, seqs = host[seq, :len(positions)], j * gbs + seq
            err = max(err, float((cached - ref_kv[layer][positions, seqs]).abs().max()))
    return err
