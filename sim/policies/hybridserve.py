"""HybridServe's host cache: K,V blocks and activation blocks in a fixed ratio, and
mini-batches that balance K,V transfer against activation transfer.

Host memory is split into a K,V pool holding `round(r · N)` blocks of `block_tokens`
tokens and an activation pool holding the rest, N being the blocks the run needs.
A request takes blocks as its tokens arrive (the prompt at prefill, one block each
time it crosses a block boundary), from the K,V pool while that has free blocks and
from the activation pool after (first fit, requests in arrival order). So a request's
tokens may be partly K,V and partly activations, and requests differ.

Mini-batches: `naive` takes requests in arrival order; `balanced` deals them,
largest K,V share first, to the GPU batch with the fewest K,V tokens so far, so that
each GPU batch's activation rebuild overlaps its own K,V transfer. `kv_ratio: 0` is
HybridServe's activation-only variant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..schedule import OpKind
from ..specs import MiniBatching, PointSpec
from .schemes import CacheScheme


def block_flags(batch: int, prompt_len: int, gen_len: int, block_tokens: int, kv_ratio: float) -> np.ndarray:
    """flags[request, block]: True where that block of the request sits in the K,V pool."""
    final = prompt_len + gen_len - 1  # tokens per request held on the host after the last step
    blocks_per_request = math.ceil(final / block_tokens)
    kv_free = round(kv_ratio * batch * blocks_per_request)
    flags = np.zeros((batch, blocks_per_request), dtype=bool)
    held = np.zeros(batch, dtype=np.int64)  # blocks each request holds so far
    for tokens in range(prompt_len, final + 1):
        need = math.ceil(tokens / block_tokens)
        for req in range(batch):
            while held[req] < need:
                if kv_free > 0:
                    flags[req, held[req]] = True
                    kv_free -= 1
                held[req] += 1
    return flags


def kv_prefix_tokens(flags: np.ndarray, block_tokens: int, max_tokens: int) -> np.ndarray:
    """kv[request, n]: how many of a request's first n tokens are held as K,V."""
    per_token = np.repeat(flags, block_tokens, axis=1)[:, :max_tokens]
    zeros = np.zeros((flags.shape[0], 1), dtype=np.int64)
    return np.concatenate([zeros, np.cumsum(per_token, axis=1)], axis=1)


def form_mini_batches(kv_tokens: np.ndarray, num_gpu_batches: int, rule: MiniBatching) -> list[list[int]]:
    """Request indices of each GPU batch (all of equal size)."""
    batch = len(kv_tokens)
    gbs = batch // num_gpu_batches
    if rule is MiniBatching.naive:
        return [list(range(j * gbs, (j + 1) * gbs)) for j in range(num_gpu_batches)]
    groups: list[list[int]] = [[] for _ in range(num_gpu_batches)]
    load = [0] * num_gpu_batches
    for req in sorted(range(batch), key=lambda r: (-int(kv_tokens[r]), r)):
        j = min((g for g in range(num_gpu_batches) if len(groups[g]) < gbs), key=lambda g: (load[g], g))
        groups[j].append(req)
        load[j] += int(kv_tokens[req])
    return groups


@dataclass(frozen=True, eq=False)
class HybridServe(CacheScheme):
    """Per GPU batch j: kv[j][n] = K,V tokens among its sequences' first n tokens (summed)."""

    kv: np.ndarray | None = None  # [num_gpu_batches, max_tokens + 1]
    gbs: int = 1

    def _kv(self, j: int, n: int) -> int:
        return int(self.kv[j, n])

    def mb_loads(self, past: int, j: int, gbs: int) -> dict[OpKind, int]:
        kv = self._kv(j, past)
        return {OpKind.load_act: gbs * past - kv, OpKind.load_kv: kv}

    def mb_recompute(self, past: int, j: int, gbs: int) -> tuple[OpKind, int] | None:
        act = gbs * past - self._kv(j, past)
        return (OpKind.recompute_kv, act) if act else None

    def mb_prefill_stores(self, prompt: int, j: int, gbs: int) -> dict[OpKind, int]:
        kv = self._kv(j, prompt)
        return {OpKind.store_act: gbs * prompt - kv, OpKind.store_kv: kv}

    def mb_new_token_stores(self, past: int, j: int, gbs: int) -> dict[OpKind, int]:
        kv = self._kv(j, past + 1) - self._kv(j, past)
        return {OpKind.store_act: gbs - kv, OpKind.store_kv: kv}

    def loads(self, past: int) -> dict[OpKind, int]:
        """Per-sequence average over the whole batch (what the memory plan sizes)."""
        kv = round(float(self.kv[:, past].sum()) / (self.gbs * len(self.kv)))
        return {OpKind.load_act: past - kv, OpKind.load_kv: kv}


def hybridserve_scheme(point: PointSpec) -> HybridServe:
    pol, wl = point.policy, point.workload
    final = wl.prompt_len + wl.gen_len - 1
    flags = block_flags(wl.batch, wl.prompt_len, wl.gen_len, pol.block_tokens, pol.kv_ratio)
    per_request = kv_prefix_tokens(flags, pol.block_tokens, final)
    groups = form_mini_batches(per_request[:, wl.prompt_len], pol.num_gpu_batches, pol.mini_batching)
    kv = np.stack([per_request[g].sum(axis=0) for g in groups])
    return HybridServe(kv_ratio=pol.kv_ratio, kv=kv, gbs=point.gpu_batch_size)
