"""What each policy keeps on the host per past token, and what it rebuilds.

A scheme answers, for a sequence with `past` tokens already generated or
prompted (or, through the `mb_*` methods, for the `gbs` sequences of GPU batch `j`
together, where sequences may differ): how many tokens' state must be loaded (and as what), how many must be
rebuilt on the GPU (and how), and as what the newest token is stored. The block
builder turns those answers into ops; it knows nothing policy-specific beyond them.

Counts follow a fixed ratio `r` (the policy's `kv_ratio`): of `past` tokens,
`held_as_other(past, r)` are held as something other than K,V (activations or
token ids), the rest as K,V. Each new token is stored so that this stays exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..schedule import OpKind


def held_as_other(past: int, kv_ratio: float) -> int:
    """Tokens of `past` held as activations / token ids: round((1 - r) * past)."""
    return min(past, math.floor((1.0 - kv_ratio) * past + 0.5 + 1e-9))


@dataclass(frozen=True)
class CacheScheme:
    """Base: the KV-only scheme (every past token as K,V)."""

    kv_ratio: float = 1.0

    def loads(self, past: int) -> dict[OpKind, int]:
        """Tokens per sequence loaded host->GPU at each layer, by load kind."""
        return {OpKind.load_kv: past}

    def recompute(self, past: int) -> tuple[OpKind, int] | None:
        """(kind, tokens per sequence) rebuilt on the GPU at each layer, if any."""
        return None

    def prefill_stores(self, prompt: int) -> dict[OpKind, int]:
        """Tokens per sequence of the prompt stored GPU->host at each layer."""
        return {OpKind.store_kv: prompt}

    def new_token_store(self, past: int) -> OpKind | None:
        """How the token generated at position `past` is stored (None: not stored)."""
        return OpKind.store_kv

    def token_id_tokens(self, past: int) -> int:
        """Token ids per sequence sent to the GPU before layer 0."""
        return 0

    def new_token_stores(self, past: int) -> dict[OpKind, int]:
        """Tokens per sequence stored, by kind, for the token at position `past`."""
        kind = self.new_token_store(past)
        return {kind: 1} if kind is not None else {}

    # -- per GPU batch: totals over its `gbs` sequences (uniform schemes multiply) --
    def mb_loads(self, past: int, j: int, gbs: int) -> dict[OpKind, int]:
        return {k: gbs * n for k, n in self.loads(past).items()}

    def mb_recompute(self, past: int, j: int, gbs: int) -> tuple[OpKind, int] | None:
        plan = self.recompute(past)
        return (plan[0], gbs * plan[1]) if plan else None

    def mb_prefill_stores(self, prompt: int, j: int, gbs: int) -> dict[OpKind, int]:
        return {k: gbs * n for k, n in self.prefill_stores(prompt).items()}

    def mb_new_token_stores(self, past: int, j: int, gbs: int) -> dict[OpKind, int]:
        return {k: gbs * n for k, n in self.new_token_stores(past).items()}


@dataclass(frozen=True)
class KVOnly(CacheScheme):
    pass


@dataclass(frozen=True)
class TokenRecompute(CacheScheme):
    """The first `held_as_other(past)` tokens (a causal prefix) are re-run from their
    token ids through every layer; the rest are loaded as K,V."""

    def _prefix(self, past: int) -> int:
        return held_as_other(past, self.kv_ratio)

    def loads(self, past: int) -> dict[OpKind, int]:
        return {OpKind.load_kv: past - self._prefix(past)}

    def recompute(self, past: int) -> tuple[OpKind, int] | None:
        m = self._prefix(past)
        return (OpKind.recompute_layer, m) if m else None

    def token_id_tokens(self, past: int) -> int:
        return self._prefix(past)

    def prefill_stores(self, prompt: int) -> dict[OpKind, int]:
        return {OpKind.store_kv: prompt - self._prefix(prompt)}

    def new_token_store(self, past: int) -> OpKind | None:
        # Token ids are always on the host; K,V are needed only if the token will sit
        # outside the recomputed prefix at the next step. The prefix only grows, so a
        # token stored once stays outside it until the prefix overtakes it.
        return OpKind.store_kv if self._prefix(past + 1) <= past else None


@dataclass(frozen=True)
class Hybrid(CacheScheme):
    """`held_as_other(past)` tokens kept as input activations (rebuilt to K,V by
    LN(x).[W_K W_V] on the GPU), the rest as K,V."""

    def loads(self, past: int) -> dict[OpKind, int]:
        a = held_as_other(past, self.kv_ratio)
        return {OpKind.load_act: a, OpKind.load_kv: past - a}

    def recompute(self, past: int) -> tuple[OpKind, int] | None:
        a = held_as_other(past, self.kv_ratio)
        return (OpKind.recompute_kv, a) if a else None

    def prefill_stores(self, prompt: int) -> dict[OpKind, int]:
        a = held_as_other(prompt, self.kv_ratio)
        return {OpKind.store_act: a, OpKind.store_kv: prompt - a}

    def new_token_store(self, past: int) -> OpKind | None:
        grows = held_as_other(past + 1, self.kv_ratio) > held_as_other(past, self.kv_ratio)
        return OpKind.store_act if grows else OpKind.store_kv
