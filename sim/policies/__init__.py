"""Policies build schedules; they never run them.

- `schemes`: what host memory holds per past token (K,V, activations, token ids), the
  generic schemes (KV-only, token-recompute, hybrid);
- `hybridserve`, `kvpr`: the published systems' schemes; `registry.scheme_for` picks one;
- `placement`: FlexGen's whole-tensor weight placement;
- `block`: FlexGen's block schedule, built for any scheme.
"""

from .block import build_schedule, surely_does_not_fit
from .registry import reads_hardware_rates, scheme_for
from .schemes import CacheScheme

__all__ = ["CacheScheme", "build_schedule", "reads_hardware_rates", "scheme_for", "surely_does_not_fit"]
