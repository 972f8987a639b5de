"""Weights of the real shapes: one flat vector per layer, plus the resident embeddings.

A layer's parameters are laid out in one flat vector (the unit `load_weights`
copies), in this order::

    norm1 (w[, b]) | W_Q; W_K; W_V (rows, so [W_K; W_V] is one fused K,V matrix)
    [| b_Q; b_K; b_V] | W_O [| b_O] | norm2 (w[, b]) | FFN matrices [| FFN biases]

Its length is exactly `ModelSpec.layer_params`, so the bytes the executor moves
equal the schedule's `link_bytes`. Conventions taken from the spec: a LayerNorm
model (OPT) has learned positions (token + position embedding) and a tied LM
head; an RMSNorm model (LLaMA) has rotary positions and an untied LM head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sim.specs import FFNKind, ModelSpec, NormKind

TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class LayerLayout:
    """Name -> (offset, shape) of every parameter in a layer's flat vector."""

    params: dict[str, tuple[int, tuple[int, ...]]]
    numel: int

    @classmethod
    def of(cls, m: ModelSpec) -> LayerLayout:
        h, hk, f = m.hidden, m.kv_hidden, m.ffn
        shapes: list[tuple[str, tuple[int, ...]]] = []
        norm = [("w", (h,)), ("b", (h,))] if m.norm_kind is NormKind.layernorm else [("w", (h,))]
        shapes += [(f"norm1_{n}", s) for n, s in norm]
        shapes.append(("w_qkv", (h + 2 * hk, h)))
        if m.bias:
            shapes.append(("b_qkv", (h + 2 * hk,)))
        shapes.append(("w_o", (h, h)))
        if m.bias:
            shapes.append(("b_o", (h,)))
        shapes += [(f"norm2_{n}", s) for n, s in norm]
        if m.ffn_kind is FFNKind.relu:
            shapes += [("w_fc1", (f, h)), ("w_fc2", (h, f))]
            if m.bias:
                shapes += [("b_fc1", (f,)), ("b_fc2", (h,))]
        else:
            shapes += [("w_gate_up", (2 * f, h)), ("w_down", (h, f))]
        params, off = {}, 0
        for name, shape in shapes:
            params[name] = (off, shape)
            off += _numel(shape)
        if off != m.layer_params:
            raise AssertionError(f"layout has {off} parameters, the spec {m.layer_params}")
        return cls(params, off)

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: flat[o:o + _numel(s)].view(s) for n, (o, s) in self.params.items()}


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass
class ModelWeights:
    """Host-side copy of every weight: `layers[l]` flat, embeddings as named tensors."""

    layers: list[torch.Tensor]
    embed: torch.Tensor  # [vocab, h]
    positions: torch.Tensor | None  # [max_positions, h] (learned positions only)
    final_norm: dict[str, torch.Tensor]  # w[, b]
    lm_head: torch.Tensor  # [vocab, h]; the embedding itself when tied


def random_weights(m: ModelSpec, seed: int = 0, std: float = 0.02) -> ModelWeights:
    """Random weights of the real shapes, made locally (norm weights 1, biases small)."""
    gen = torch.Generator().manual_seed(seed)
    dtype = TORCH_DTYPES[m.dtype]
    layout = LayerLayout.of(m)

    def rand(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype).normal_(0.0, std, generator=gen)

    layers = []
    for _ in range(m.layers):
        flat = rand(layout.numel)
        views = layout.views(flat)
        for name, v in views.items():
            if name.startswith("norm") and name.endswith("_w"):
                v.fill_(1.0)
        layers.append(flat)
    learned = m.norm_kind is NormKind.layernorm
    embed = rand(m.vocab, m.hidden)
    final = {"w": torch.ones(m.hidden, dtype=dtype)}
    if learned:
        final["b"] = torch.zeros(m.hidden, dtype=dtype)
    return ModelWeights(
        layers=layers, embed=embed,
        positions=rand(m.max_positions, m.hidden) if learned else None,
        final_norm=final, lm_head=embed if learned else rand(m.vocab, m.hidden),
    )
