"""Work: how much each piece of a layer is (FLOPs, device-memory bytes, kernel launches).

Work depends only on the model's shapes and is what policies write into ops; durations
depend on the hardware and are asked of a `CostModel` (`roofline`, `profile`).

Work functions are pure and memoised: a schedule asks the same question once per
layer and micro-batch. Conventions: a multiply-add is 2 FLOPs; attention is fused (no materialised score
matrix, FlashAttention-style), so its workspace is Q, K, V and the output only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..specs import FFNKind, ModelSpec
from .cpu_attention import flexgen_cpu_attention_steps

TOKEN_ID_BYTES = 4  # int32 token ids


@dataclass(frozen=True, slots=True)
class Work:
    flops: float
    hbm_bytes: int
    kernels: int
    workspace_bytes: int = 0


def attended_pairs(new_tokens: int, past_tokens: int) -> int:
    """(query, key) pairs under a causal mask: each new token sees the past and itself."""
    return new_tokens * past_tokens + new_tokens * (new_tokens + 1) // 2


@lru_cache(maxsize=65536)
def attention_work(m: ModelSpec, batch: int, new_tokens: int, past_tokens: int) -> Work:
    """LN, QKV projection, causal attention over past + new tokens, output projection."""
    p = m.dtype_bytes
    h, hk = m.hidden, m.kv_hidden
    tokens = batch * new_tokens
    proj_params = h * (h + 2 * hk) + h * h
    pairs = attended_pairs(new_tokens, past_tokens)
    # QK^T and PV: each pair costs 2*head_dim FLOPs per query head, twice.
    bmm_flops = 2 * 2 * batch * pairs * h
    flops = 2 * tokens * proj_params + bmm_flops
    kv_read = batch * (past_tokens + new_tokens) * m.kv_bytes_per_token
    act = tokens * (h + h + 2 * hk + h + h) * p  # x in, Q, K, V, attn out, y out
    hbm = m.attn_params * p + kv_read + act + m.hidden * 2 * p
    workspace = tokens * (h + 2 * hk + h) * p
    return Work(flops, hbm, kernels=7, workspace_bytes=workspace)


@lru_cache(maxsize=65536)
def qkv_proj_work(m: ModelSpec, batch: int, new_tokens: int) -> Work:
    p = m.dtype_bytes
    tokens = batch * new_tokens
    n = m.hidden + 2 * m.kv_hidden
    return Work(
        2 * tokens * m.hidden * n,
        (m.hidden * n) * p + tokens * (m.hidden + n) * p,
        kernels=2,
        workspace_bytes=tokens * n * p,
    )


@lru_cache(maxsize=65536)
def out_proj_work(m: ModelSpec, batch: int, new_tokens: int) -> Work:
    p = m.dtype_bytes
    tokens = batch * new_tokens
    return Work(
        2 * tokens * m.hidden * m.hidden,
        m.hidden * m.hidden * p + 3 * tokens * m.hidden * p,
        kernels=2,
        workspace_bytes=tokens * m.hidden * p,
    )


@lru_cache(maxsize=65536)
def ffn_work(m: ModelSpec, batch: int, new_tokens: int) -> Work:
    p = m.dtype_bytes
    tokens = batch * new_tokens
    mats = 2 if m.ffn_kind is FFNKind.relu else 3
    inner = 1 if m.ffn_kind is FFNKind.relu else 2  # SwiGLU holds gate and up
    flops = 2 * tokens * mats * m.hidden * m.ffn
    hbm = m.ffn_params * p + tokens * (3 * m.hidden + 2 * inner * m.ffn) * p
    return Work(flops, hbm, kernels=5, workspace_bytes=tokens * inner * m.ffn * p)


@lru_cache(maxsize=65536)
def recompute_kv_work(m: ModelSpec, tokens: int) -> Work:
    """Rebuild K,V from held input activations: LN(x) . [W_K W_V]."""
    p = m.dtype_bytes
    flops = 2 * tokens * m.hidden * 2 * m.kv_hidden
    hbm = m.kv_proj_params * p + tokens * m.act_bytes_per_token * 2 + tokens * m.kv_bytes_per_token
    return Work(flops, hbm, kernels=2, workspace_bytes=tokens * m.act_bytes_per_token)


@lru_cache(maxsize=65536)
def recompute_layer_work(m: ModelSpec, batch: int, tokens: int, last_layer: bool) -> Work:
    """Re-run a layer for `tokens` recomputed tokens per sequence (a causal prefix).

    Every layer but the last runs whole (its output feeds the next layer); the last
    needs only this layer's K,V.
    """
    if last_layer:
        return recompute_kv_work(m, batch * tokens)
    a = attention_work(m, batch, tokens, 0)
    f = ffn_work(m, batch, tokens)
    return Work(
        a.flops + f.flops,
        a.hbm_bytes + f.hbm_bytes,
        a.kernels + f.kernels,
        max(a.workspace_bytes, f.workspace_bytes),
    )


@lru_cache(maxsize=65536)
def lm_head_work(m: ModelSpec, batch: int) -> Work:
    p = m.dtype_bytes
    return Work(
        2 * batch * m.hidden * m.vocab,
        m.vocab * m.hidden * p + batch * (m.hidden + m.vocab) * p,
        kernels=3,
        workspace_bytes=batch * m.vocab * p,
    )


@lru_cache(maxsize=65536)
def cpu_attention_work(m: ModelSpec, batch: int, context: int) -> tuple[float, int]:
    """Decode attention of one new token per sequence over `context` host-held tokens, as
    FlexGen's CPU path runs it (fp32 workspace copy, bmm, mask, softmax, bmm: see
    `cpu_attention.flexgen_cpu_attention_steps`).

    Returns (FLOPs, host-memory bytes read and written).
    """
    steps = flexgen_cpu_attention_steps(batch, m.heads, m.head_dim, context, m.kv_heads)
    return sum(st.flops for st in steps), int(sum(st.host_bytes for st in steps))
