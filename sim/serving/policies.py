"""What to do when the running requests' KV cache outgrows the GPU pool.

- `vllm-swap`: preempt the lowest-priority running request and copy its KV blocks to
  host memory (D2H); copy them back (H2D) when it resumes. Both link directions carry KV.
- `vllm-recompute`: preempt by dropping its KV blocks; it re-enters the queue and its
  prompt plus the tokens generated so far are prefilled again.
- `oneiros`: before preempting, free the GPU pages of `N` layers' (read-only) weights and
  give them to the KV pool; those layers are streamed from host memory before each use,
  one way (H2D), into two staging buffers (double-buffered). `N` follows KV demand (and
  reverts when it drops), bounded by `N x per-layer H2D time <= the iteration's compute
  time`; the `N` layers are spread evenly over the layers. When even the bound is not
  enough, it preempts like `fallback` (swap by default). `respect_bound: false` drops the
  bound (N then follows demand alone): on a slow link the streaming no longer hides.
"""

from __future__ import annotations

from enum import Enum

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


def remapped_layer_ids(layers: int, remapped: int) -> tuple[int, ...]:
    """`remapped` layers spread evenly over `layers`, each the last of its stretch of the ring.

    Layer `i` of the set is `floor((i + 1) * layers / remapped) - 1`: the stretch of
    `layers / remapped` resident layers computed before it is what hides its load, and
    the last one is the model's last layer.
    """
    if not 0 <= remapped <= layers:
        raise ValueError(f"cannot remap {remapped} of {layers} layers")
    return tuple((i + 1) * layers // remapped - 1 for i in range(remapped))


def layer_bound(compute_s: float, layer_h2d_s: float, layers: int) -> int:
    """Most layers whose one-way streaming fits in the compute time: N x layer_h2d_s <= compute_s."""
    if layer_h2d_s <= 0:
        return layers
    n = min(layers, int(compute_s // layer_h2d_s))
    # floor division of floats can be one off either way (0.5 // 0.02 == 24, 25 * 0.02 == 0.5)
    while n > 0 and n * layer_h2d_s > compute_s:
        n -= 1
    while n < layers and (n + 1) * layer_h2d_s <= compute_s:
        n += 1
    return n
