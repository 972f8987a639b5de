"""Where a layer's weights live: FlexGen's whole-tensor placement.

FlexGen (`flex_opt.py`, `init_weight_list`) places each weight tensor of a module
(the attention block, the MLP block) whole: a tensor goes to the GPU when the
midpoint of its share of the module's cumulative size falls past the CPU
percentage. So `weights_gpu_percent: 20` keeps only the tensors at the end of each
module's list on the GPU, which is rarely 20% of the bytes.
"""

from __future__ import annotations

from ..specs import FFNKind, ModelSpec, NormKind


def _norm_params(m: ModelSpec) -> int:
    return 2 * m.hidden if m.norm_kind is NormKind.layernorm else m.hidden


def attention_tensors(m: ModelSpec) -> list[tuple[str, int]]:
    """FlexGen's SelfAttention weight list, in order (parameters per tensor)."""
    h, hk = m.hidden, m.kv_hidden
    out: list[tuple[str, int]] = []
    for name, rows in (("w_q", h), ("w_k", hk), ("w_v", hk), ("w_out", h)):
        out.append((name, rows * h))
        if m.bias:
            out.append(("b" + name[1:], rows))
    out.append(("ln", _norm_params(m)))
    return out


def mlp_tensors(m: ModelSpec) -> list[tuple[str, int]]:
    """FlexGen's MLP weight list, in order (parameters per tensor)."""
    h, f = m.hidden, m.ffn
    if m.ffn_kind is FFNKind.relu:
        out = [("w_fc1", f * h)] + ([("b_fc1", f)] if m.bias else [])
        out += [("w_fc2", h * f)] + ([("b_fc2", h)] if m.bias else [])
    else:
        out = [("w_gate", f * h), ("w_up", f * h), ("w_down", h * f)]
    return out + [("ln", _norm_params(m))]


def gpu_tensor_params(tensors: list[tuple[str, int]], weights_gpu_percent: float) -> int:
    """Parameters of the tensors FlexGen's midpoint rule puts on the GPU (no disk tier)."""
    total = sum(n for _, n in tensors)
    cpu_percent = 100.0 - weights_gpu_percent
    on_gpu, cum = 0, 0
    for _, n in tensors:
        cum += n
        mid_percent = (cum - n / 2) / total * 100.0
        if not mid_percent < cpu_percent:
            on_gpu += n
    return on_gpu


def flexgen_gpu_weight_percent(m: ModelSpec, weights_gpu_percent: float) -> float:
    """The share of a layer's weight bytes FlexGen actually keeps on the GPU, in percent."""
    if weights_gpu_percent >= 100:
        return 100.0
    on_gpu = gpu_tensor_params(attention_tensors(m), weights_gpu_percent) + gpu_tensor_params(
        mlp_tensors(m), weights_gpu_percent)
    return 100.0 * on_gpu / m.layer_params

