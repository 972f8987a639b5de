"""How long one continuous-batching iteration and each transfer take, from the core cost model.

An iteration runs a ragged batch: request `i` feeds `new_i` tokens (a prefill chunk, a
re-prefill, or one decode token) on top of `past_i` cached ones. The core's
`attention_work(model, batch, new, past)` is affine in `batch` (weights and norms once, then
the same per-sequence part per sequence), so a ragged batch's attention work is the core's
work for one sequence of each shape's *increment* (work at batch 2 minus batch 1), plus the
batch-independent part once. Nothing here re-derives a FLOP or byte count. The FFN runs on
all tokens of the iteration at once (`ffn_work(model, tokens, 1)`), the LM head on the
sequences that emit a token. All layers have one shape, so a layer's time is the same for
every layer of an iteration.

KV swaps are priced as vLLM issues them (v0.6.3.post1, V0 engine; the same code through v0.8.5
V0): `CacheEngine.swap_in/swap_out` (vllm/worker/cache_engine.py) loop over the layers and call
the attention backend's `swap_blocks` for K and then for V (`PagedAttention.swap_blocks`,
vllm/attention/ops/paged_attn.py; `FlashAttentionBackend.swap_blocks`), and
`csrc/cache_kernels.cu::swap_blocks` loops over the block mapping on the host and issues one
`cudaMemcpyAsync` per block on the current (compute) stream, to or from pinned host blocks
(`CacheEngine._allocate_kv_cache`, `pin_memory=is_pin_memory_available()`). So a swap of `B`
blocks is `B x layers x 2` copies of one block of one layer's K (or V). The host issues them one
after another, each costing `memcpy_issue_s`; the copy engine moves each in bytes / bandwidth once
issued; the last lands the link's latency after it left. With copies of equal size that is
`latency + issue + wire + (copies - 1) x max(issue, wire)`: the per-call issue cost, not the link's
bandwidth, sets the rate when blocks are small (a LLaMA-3-8B copy is 32 KiB: 0.08 us on NVLink-C2C,
1.3 us on PCIe 4.0, against 2.3 us to issue). The link's latency (an assumption of 5-10 us per
isolated copy in the presets) is paid once per swap, not per copy: per copy it would contradict
the 2.3 us per call measured end to end for such loops (taco-project/FlexKV PR #193).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..costs import attention_work, ffn_work, gpu_time_s, link_time_s, lm_head_work
from ..schedule import Stream
from ..specs import HardwareSpec, ModelSpec


class IterationCost:
    """Per-iteration GPU times and per-transfer link times for one model on one box."""

    def __init__(self, model: ModelSpec, hardware: HardwareSpec) -> None:
        self.model, self.hardware = model, hardware
        one = attention_work(model, 1, 1, 0)
        inc_f, inc_h = self._increment(1, 0)
        self._fixed_flops = one.flops - inc_f
        self._fixed_hbm = one.hbm_bytes - inc_h
        self._attn_kernels = one.kernels
        self._increments: dict[tuple[int, int], tuple[float, int]] = {}
        self._lm_head_s: dict[int, float] = {}
        self._ffn_s: dict[int, float] = {}
        self.layer_h2d_s = link_time_s(hardware.link, model.weight_bytes_per_layer, Stream.h2d, pinned=True)

    def _increment(self, new_tokens: int, past_tokens: int) -> tuple[float, int]:
        two = attention_work(self.model, 2, new_tokens, past_tokens)
        one = attention_work(self.model, 1, new_tokens, past_tokens)
        return two.flops - one.flops, two.hbm_bytes - one.hbm_bytes

    def attention_s(self, seqs: Iterable[tuple[int, int]]) -> float:
        """One layer's attention block over sequences given as (new_tokens, past_tokens)."""
        flops, hbm = self._fixed_flops, self._fixed_hbm
        cache = self._increments
        for key in seqs:
            inc = cache.get(key)
            if inc is None:
                inc = cache[key] = self._increment(*key)
            flops += inc[0]
            hbm += inc[1]
        return gpu_time_s(self.hardware.gpu, flops, hbm, self._attn_kernels)

    def ffn_s(self, tokens: int) -> float:
        t = self._ffn_s.get(tokens)
        if t is None:
            w = ffn_work(self.model, tokens, 1)
            t = self._ffn_s[tokens] = gpu_time_s(self.hardware.gpu, w.flops, w.hbm_bytes, w.kernels)
        return t

    def lm_head_s(self, emitting: int) -> float:
        if emitting == 0:
            return 0.0
        t = self._lm_head_s.get(emitting)
        if t is None:
            w = lm_head_work(self.model, emitting)
            t = self._lm_head_s[emitting] = gpu_time_s(self.hardware.gpu, w.flops, w.hbm_bytes, w.kernels)
        return t

    def layer_s(self, seqs: list[tuple[int, int]]) -> float:
        """One transformer layer of the iteration: attention block then FFN block."""
        return self.attention_s(seqs) + self.ffn_s(sum(n for n, _ in seqs))

    def kv_swap_s(self, copies: int, copy_bytes: int, direction: Stream, issue_s: float) -> float:
        """`copies` back-to-back cudaMemcpyAsync calls of `copy_bytes` each, pinned host memory.

        The copy engine runs copy k from max(issued_k, end of copy k-1); the host issues one per
        `issue_s`. The first copy's `link_time_s` carries the link's latency once.
        """
        if copies == 0:
            return 0.0
        first_s = issue_s + link_time_s(self.hardware.link, copy_bytes, direction, pinned=True)
        wire_s = link_time_s(self.hardware.link, copy_bytes, direction, pinned=True) - self.hardware.link.latency_s
        return first_s + (copies - 1) * max(issue_s, wire_s)


def kv_swap_copies(blocks: int, model: ModelSpec, block_tokens: int) -> tuple[int, int]:
    """(cudaMemcpyAsync calls, bytes per call) of swapping `blocks` KV blocks, as vLLM issues them:
    one call per block, per layer, for K and for V separately."""
    return blocks * model.layers * 2, block_tokens * model.kv_bytes_per_token // 2
