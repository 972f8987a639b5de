"""The paged KV cache (vLLM's block manager, as counts).

A block holds the K and V of `block_tokens` tokens in every layer, so a request with
`t` tokens in its cache holds `ceil(t / block_tokens)` blocks. The pool's size is the GPU
memory left for KV, plus (under Oneiros) the pages of remapped layers' weights less the
two staging buffers the streamed layers are loaded into, plus the pages of idle tenants'
weights it has reclaimed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..costs import attention_work, ffn_work, lm_head_work
from ..specs import GPUSpec, ModelSpec

#: streamed layers are double-buffered: two layers' worth of GPU memory to load into
STAGING_BUFFERS = 2


def blocks_for_tokens(tokens: int, block_tokens: int) -> int:
    return -(-tokens // block_tokens)


def workspace_bytes(model: ModelSpec, max_batched_tokens: int, max_running: int) -> int:
    """Activation workspace of the largest iteration, as the cost model sizes it."""
    return max(
        attention_work(model, 1, max_batched_tokens, 0).workspace_bytes,
        ffn_work(model, max_batched_tokens, 1).workspace_bytes,
        lm_head_work(model, max_running).workspace_bytes,
    )


def physical_kv_bytes(model: ModelSpec, gpu: GPUSpec, max_batched_tokens: int, max_running: int) -> int:
    """GPU memory left for KV: memory - runtime reserve - all weights - workspace (may be <= 0)."""
    return (gpu.memory_bytes - gpu.reserved_bytes - model.total_weight_bytes
            - workspace_bytes(model, max_batched_tokens, max_running))


@dataclass(frozen=True)
class KVPool:
    """Block arithmetic of one model's KV pool.

    base_kv_bytes: GPU bytes for KV with every layer's weights resident.
    """

    block_tokens: int
    block_bytes: int
    base_kv_bytes: int
    layer_weight_bytes: int
    layers: int

    @classmethod
    def for_model(cls, model: ModelSpec, block_tokens: int, base_kv_bytes: int) -> KVPool:
        return cls(block_tokens, block_tokens * model.kv_bytes_per_token * model.layers, base_kv_bytes,
                   model.weight_bytes_per_layer, model.layers)

    def freed_bytes(self, remapped_layers: int) -> int:
        """GPU bytes remapping `remapped_layers` layers adds to the pool (net of staging buffers)."""
        staging = min(remapped_layers, STAGING_BUFFERS)
        return (remapped_layers - staging) * self.layer_weight_bytes

    def capacity_blocks(self, remapped_layers: int = 0, borrowed_bytes: int = 0) -> int:
        """Blocks of the pool with `remapped_layers` of its own layers remapped and `borrowed_bytes`
        of other tenants' reclaimed weights added."""
        return (self.base_kv_bytes + self.freed_bytes(remapped_layers) + borrowed_bytes) // self.block_bytes

    def blocks(self, tokens: int) -> int:
        return blocks_for_tokens(tokens, self.block_tokens)

    def short_bytes(self, blocks_needed: int, borrowed_bytes: int = 0) -> int:
        """Bytes the pool lacks for `blocks_needed` with none of its own layers remapped (<= 0: none)."""
        return blocks_needed * self.block_bytes - self.base_kv_bytes - borrowed_bytes

    def layers_for(self, blocks_needed: int, borrowed_bytes: int = 0) -> int:
        """Fewest remapped layers whose pool holds `blocks_needed` (may exceed `layers`: not reachable)."""
        short_bytes = self.short_bytes(blocks_needed, borrowed_bytes)
        if short_bytes <= 0:
            return 0
        return STAGING_BUFFERS + -(-short_bytes // self.layer_weight_bytes)
