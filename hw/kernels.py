"""One decoder layer in PyTorch, split the way the schedule's op kinds split it.

Tensors are token-major: hidden states `[tokens, batch, hidden]`, a K,V pair
`[tokens, batch, 2 * kv_hidden]` (K then V), so that a range of tokens (what a
load or a store moves) is one contiguous block.

- OPT: pre-LayerNorm, learned positions, multi-head attention, ReLU FFN, biases;
- LLaMA: RMSNorm, rotary positions (Hugging Face's rotate-half convention, base
  10000), grouped-query attention (K,V heads repeated), SwiGLU, no biases.

`fused_qkv=True` runs Q, K and V as one GEMM over `[W_Q; W_K; W_V]`; `False` runs
three GEMMs over views of the same weights. Rebuilding K,V from activations
(`kv_proj`) is always one GEMM over `[W_K; W_V]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..sim.specs import FFNKind, ModelSpec, NormKind

ROPE_BASE = 10000.0
NORM_EPS = {NormKind.layernorm: 1e-5, NormKind.rmsnorm: 1e-6}


@dataclass(frozen=True)
class Rotary:
    """cos/sin tables `[max_positions, head_dim]` for rotary position embeddings."""

    cos: torch.Tensor
    sin: torch.Tensor

    @classmethod
    def of(cls, m: ModelSpec, device: torch.device, dtype: torch.dtype) -> Rotary:
        d = m.head_dim
        inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        freqs = torch.outer(torch.arange(m.max_positions, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return cls(emb.cos().to(device, dtype), emb.sin().to(device, dtype))

    def apply(self, x: torch.Tensor, heads: int, positions: torch.Tensor | slice) -> torch.Tensor:
        """Rotate `x` `[tokens, batch, heads * head_dim]` at `positions` (one per token)."""
        s, b, _ = x.shape
        xh = x.view(s, b, heads, -1)
        cos = self.cos[positions][:, None, None, :]
        sin = self.sin[positions][:, None, None, :]
        x1, x2 = xh.chunk(2, dim=-1)
        rotated = torch.cat((-x2, x1), dim=-1)
        return (xh * cos + rotated * sin).view(s, b, -1)


@dataclass(frozen=True)
class LayerKernels:
    """The pieces of one decoder layer of `model`; weights are passed per call."""

    model: ModelSpec
    rotary: Rotary | None = None
    fused_qkv: bool = True

    # -- pieces -------------------------------------------------------------------
    def norm(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        eps = NORM_EPS[self.model.norm_kind]
        if self.model.norm_kind is NormKind.layernorm:
            return F.layer_norm(x, (x.shape[-1],), w, b, eps)
        var = x.float().pow(2).mean(-1, keepdim=True)
        return w * (x.float() * torch.rsqrt(var + eps)).to(x.dtype)

    def _norm1(self, x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.norm(x, w["norm1_w"], w.get("norm1_b"))

    def qkv(self, x: torch.Tensor, w: dict[str, torch.Tensor],
            positions: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """LN(x) and the Q, K, V projection: returns (Q `[s,b,h]`, K,V `[s,b,2hk]`)."""
        m = self.model
        h = m.hidden
        xn = self._norm1(x, w)
        b_qkv = w.get("b_qkv")
        if self.fused_qkv:
            qkv = F.linear(xn, w["w_qkv"], b_qkv)
            q, kv = qkv[..., :h], qkv[..., h:]
        else:
            q = F.linear(xn, w["w_qkv"][:h], None if b_qkv is None else b_qkv[:h])
            k = F.linear(xn, w["w_qkv"][h:h + m.kv_hidden], None if b_qkv is None else b_qkv[h:h + m.kv_hidden])
            v = F.linear(xn, w["w_qkv"][h + m.kv_hidden:], None if b_qkv is None else b_qkv[h + m.kv_hidden:])
            kv = torch.cat((k, v), dim=-1)
        return self._rotate(q, kv, positions)

    def kv_proj(self, x: torch.Tensor, w: dict[str, torch.Tensor], positions: torch.Tensor | slice) -> torch.Tensor:
        """Rebuild K,V `[s,b,2hk]` from the layer's input activations: LN(x) . [W_K W_V]."""
        h = self.model.hidden
        b_qkv = w.get("b_qkv")
        kv = F.linear(self._norm1(x, w), w["w_qkv"][h:], None if b_qkv is None else b_qkv[h:])
        return self._rotate_kv(kv, positions)

    def _rotate(self, q: torch.Tensor, kv: torch.Tensor, positions) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rotary is None:
            return q, kv
        return self.rotary.apply(q, self.model.heads, positions), self._rotate_kv(kv, positions)

    def _rotate_kv(self, kv: torch.Tensor, positions) -> torch.Tensor:
        if self.rotary is None:
            return kv
        hk = self.model.kv_hidden
        k = self.rotary.apply(kv[..., :hk], self.model.kv_heads, positions)
        return torch.cat((k, kv[..., hk:]), dim=-1)

    def attend(self, q: torch.Tensor, context_kv: torch.Tensor) -> torch.Tensor:
        """Attention of the `new` queries `[new,b,h]` over `context_kv` `[past+new,b,2hk]`,
        whose last `new` tokens are the queries' own: causal among them. Returns `[new,b,h]`."""
        m = self.model
        new, b, _ = q.shape
        ctx = context_kv.shape[0]
        d, hk = m.head_dim, m.kv_hidden
        qh = q.view(new, b, m.heads, d).permute(1, 2, 0, 3)
        k = context_kv[..., :hk].reshape(ctx, b, m.kv_heads, d).permute(1, 2, 0, 3)
        v = context_kv[..., hk:].reshape(ctx, b, m.kv_heads, d).permute(1, 2, 0, 3)
        if m.kv_heads != m.heads:
            k = k.repeat_interleave(m.heads // m.kv_heads, dim=1)
            v = v.repeat_interleave(m.heads // m.kv_heads, dim=1)
        if new == 1:
            out = F.scaled_dot_product_attention(qh, k, v)
        elif new == ctx:
            out = F.scaled_dot_product_attention(qh, k, v, is_causal=True)
        else:
            past = ctx - new
            mask = torch.ones(new, ctx, dtype=torch.bool, device=q.device).tril(diagonal=past)
            out = F.scaled_dot_product_attention(qh, k, v, attn_mask=mask)
        return out.permute(2, 0, 1, 3).reshape(new, b, m.hidden)

    def out_proj(self, attn: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.linear(attn, w["w_o"], w.get("b_o"))

    def ffn(self, x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        """x + FFN(LN2(x))."""
        xn = self.norm(x, w["norm2_w"], w.get("norm2_b"))
        if self.model.ffn_kind is FFNKind.relu:
            inner = F.relu(F.linear(xn, w["w_fc1"], w.get("b_fc1")))
            return x + F.linear(inner, w["w_fc2"], w.get("b_fc2"))
        gate, up = F.linear(xn, w["w_gate_up"]).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, w["w_down"])

    # -- whole layer ----------------------------------------------------------------
    def forward(self, x: torch.Tensor, w: dict[str, torch.Tensor],
                past_kv: torch.Tensor | None, positions) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole layer over `x` `[new,b,h]` after `past_kv`: returns (output, new K,V)."""
        q, kv = self.qkv(x, w, positions)
        ctx = kv if past_kv is None else torch.cat((past_kv, kv), dim=0)
        y = x + self.out_proj(self.attend(q, ctx), w)
        return self.ffn(y, w), kv


@dataclass(frozen=True)
class HeadKernels:
    """Embedding (token + learned positions) and the LM head with greedy choice."""

    model: ModelSpec

    def embed(self, tokens: torch.Tensor, embed: torch.Tensor, positions_table: torch.Tensor | None,
              positions: slice) -> torch.Tensor:
        """Token ids `[s,b]` -> hidden `[s,b,h]` (plus learned positions `positions`)."""
        x = F.embedding(tokens.long(), embed)
        if positions_table is not None:
            x = x + positions_table[positions][:, None, :]
        return x

    def greedy(self, x: torch.Tensor, norm: dict[str, torch.Tensor], lm_head: torch.Tensor,
               layers: LayerKernels) -> torch.Tensor:
        """Final norm, LM head, argmax: hidden `[b,h]` -> next token ids `[b]` (int64)."""
        logits = F.linear(layers.norm(x, norm["w"], norm.get("b")), lm_head)
        return logits.argmax(dim=-1)
