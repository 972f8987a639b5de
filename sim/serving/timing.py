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

    def kv_copy_s(self, nbytes: int, direction: Stream) -> float:
        """One swap copy of a request's KV blocks (pinned host buffers, as vLLM allocates them)."""
        return link_time_s(self.hardware.link, nbytes, direction, pinned=True)
