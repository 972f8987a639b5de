"""What to do when the running requests' KV cache outgrows the GPU pool.

- `vllm-swap`: preempt the lowest-priority running request and copy its KV blocks to
  host memory (D2H); copy them back (H2D) when it resumes. Both link directions carry KV,
  block by block, layer by layer, K and V apart, as vLLM issues them (`timing.kv_swap_s`).
- `vllm-recompute`: preempt by dropping its KV blocks; it re-enters the queue and its
  prompt plus the tokens generated so far are prefilled again.
- `oneiros`: before preempting, free the GPU pages of `N` layers' (read-only) weights and
  give them to the KV pool; those layers are streamed from host memory before each use,
  one way (H2D), as a ring into two staging buffers (double-buffered: a layer is fetched
  during the compute of the layers before it, the first ones of an iteration during the
  tail of the previous one). `N` follows KV demand (and reverts when it drops), bounded so
  that the ring hides every load (`ring_hides`, which implies Oneiros' `N x per-layer H2D
  time <= compute time`); the `N` layers are spread over the layers, nested in `N`
  (`remap_order`). When even the bound is not enough, it preempts like `fallback` (swap by
  default). `respect_bound: false` drops the bound (N then follows demand alone): on a slow
  link the streaming no longer hides. With several tenants on one GPU, it first reclaims
  the weights of idle tenants (`engine`), and remaps its own layers only for what is left.
"""

from __future__ import annotations

from enum import Enum
from functools import lru_cache

from pydantic import Field, model_validator

from ..specs import Spec


class ServingPolicyKind(str, Enum):
    vllm_swap = "vllm-swap"
    vllm_recompute = "vllm-recompute"
    oneiros = "oneiros"


class Preemption(str, Enum):
    swap = "swap"
    recompute = "recompute"


class ServingPolicySpec(Spec):
    kind: ServingPolicyKind
    fallback: Preemption = Field(default=Preemption.swap, description="oneiros: how it preempts past its bound")
    respect_bound: bool = Field(
        default=True, description="oneiros: keep N x layer H2D time <= compute time; false remaps as many "
                                  "layers as KV demand asks (to show what streaming that does not hide costs)")
    revert_headroom: float = Field(
        default=0.1, ge=0, description="oneiros: revert layers only while the smaller pool keeps this "
                                       "fraction of spare blocks above demand")

    @model_validator(mode="after")
    def _check(self) -> ServingPolicySpec:
        oneiros_only = {"fallback", "respect_bound", "revert_headroom"} & self.model_fields_set
        if self.kind is not ServingPolicyKind.oneiros and oneiros_only:
            raise ValueError(f"{', '.join(sorted(oneiros_only))} applies to the oneiros policy only")
        return self

    @property
    def preemption(self) -> Preemption:
        if self.kind is ServingPolicyKind.vllm_swap:
            return Preemption.swap
        if self.kind is ServingPolicyKind.vllm_recompute:
            return Preemption.recompute
        return self.fallback

    @property
    def remaps(self) -> bool:
        return self.kind is ServingPolicyKind.oneiros

    @property
    def label(self) -> str:
        if self.kind is not ServingPolicyKind.oneiros:
            return self.kind.value
        parts = ["oneiros"]
        if not self.respect_bound:
            parts.append("unbounded")
        if self.fallback is not Preemption.swap:
            parts.append(f"fallback={self.fallback.value}")
        return " ".join(parts)


@lru_cache(maxsize=256)
def remap_order(layers: int) -> tuple[int, ...]:
    """Every layer, in the order Oneiros remaps them: the first `n` are the set for `n`.

    The set grows by splitting its longest stretch of the layer ring in two (ties: the
    stretch farthest from the layer added last, then the earliest), each remapped layer
    the last of its stretch, starting with the model's last layer. So the set for `n + 1`
    contains the set for `n` (growing frees one more layer, reverting loads back only the
    layers that leave) and the stretches stay within a factor of about two of `layers / n`.
    """
    chosen = [layers - 1]
    last = layers - 1
    while len(chosen) < layers:
        ring = sorted(chosen)
        best = None
        for idx, b in enumerate(ring):
            a = ring[idx - 1] - (layers if idx == 0 else 0)  # the stretch is a+1 .. b (wrapping)
            length = b - a
            if length < 2:
                continue
            mid = (a + length // 2) % layers
            dist = abs(mid - last)
            key = (length, min(dist, layers - dist), -((a + 1) % layers))
            if best is None or key > best[0]:
                best = (key, mid)
        last = best[1]
        chosen.append(last)
    return tuple(chosen)


def remapped_layer_ids(layers: int, remapped: int) -> tuple[int, ...]:
    """The `remapped` layers of the set (see `remap_order`), in layer order."""
    if not 0 <= remapped <= layers:
        raise ValueError(f"cannot remap {remapped} of {layers} layers")
    return tuple(sorted(remap_order(layers)[:remapped]))


def ring_hides(ids: tuple[int, ...], layers: int, layer_h2d: int, layer_compute: int) -> bool:
    """Whether double-buffered ring streaming of the layers `ids` never stalls the GPU.

    Times in any one unit (the engine uses integer nanoseconds). Every layer computes in
    `layer_compute`, one layer loads in `layer_h2d`, one load at a time; the load of the
    ring's `k`-th remapped layer may start once the layer two places before it in the
    ring (the previous user of its staging buffer, in the previous iteration for the first
    two) has been computed. Loads start as early as that allows, so the load of `k` ends
    at `max over j <= k of (compute end of j-2) + (k - j + 1) * layer_h2d`, and it hides
    iff that is no later than the start of `k`'s compute, for every chain `j..k`. Chains
    longer than the set are covered by `len(ids) * layer_h2d <= layers * layer_compute`
    (Oneiros' bound, N x per-layer transfer time <= compute time, which this implies).
    Gaps between iterations (LM head, swap waits, idling) only widen every window.
    """
    n = len(ids)
    if n == 0:
        return True
    if n * layer_h2d > layers * layer_compute:
        return False
    for k in range(n):
        for m in range(1, n + 1):
            q = k - m - 1  # the load of j = k - m + 1 waits for position j - 2 to be computed
            start_q = ids[q % n] + layers * (q // n)  # layer index, negative in earlier iterations
            if m * layer_h2d > (ids[k] - start_q - 1) * layer_compute:
                return False
    return True


def ring_bound(layers: int, layer_h2d: int, layer_compute: int) -> int:
    """Most layers whose streaming `ring_hides` at this per-layer compute time."""
    lo, order = 0, remap_order(layers)
    for n in range(1, layers + 1):  # nested sets: once one stalls, every larger one does
        if not ring_hides(tuple(sorted(order[:n])), layers, layer_h2d, layer_compute):
            break
        lo = n
    return lo
