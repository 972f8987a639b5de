"""Which cache scheme a policy holds: the one registry of schemes.

It imports every scheme (the generic ones in `schemes`, KVPR's and HybridServe's in
their own modules) and nothing imports it back but the block builder and the callers
above it, so adding a scheme is one import and one branch here.
"""

from __future__ import annotations

from ..specs import PointSpec, PolicyKind, PolicySpec
from .hybridserve import hybridserve_scheme
from .kvpr import kvpr_scheme
from .schemes import CacheScheme, Hybrid, KVOnly, TokenRecompute


def scheme_for(policy: PolicySpec, point: PointSpec | None = None) -> CacheScheme:
    """The cache scheme of a policy; kvpr and hybridserve need the whole `point`."""
    if policy.kind in (PolicyKind.kv_only, PolicyKind.flexgen):
        return KVOnly()
    if policy.kind is PolicyKind.kvpr:
        return kvpr_scheme(_need(point, policy))
    if policy.kind is PolicyKind.hybridserve:
        return hybridserve_scheme(_need(point, policy))
    if policy.kind is PolicyKind.token_recompute:
        return TokenRecompute(policy.kv_ratio)
    if policy.kind is PolicyKind.hybrid:
        return Hybrid(policy.kv_ratio)
    raise ValueError(f"no cache scheme for policy kind {policy.kind.value!r}")


def reads_hardware_rates(policy: PolicySpec) -> bool:
    """Whether the schedule of `policy` depends on the box's rates (bandwidths, FLOP/s), not
    only on its capacities: kvpr picks its split from them unless `split_tokens` fixes it."""
    return policy.kind is PolicyKind.kvpr and policy.split_tokens is None


def _need(point: PointSpec | None, policy: PolicySpec) -> PointSpec:
    if point is None:
        raise ValueError(f"the {policy.kind.value} scheme depends on the point (hardware, batch, lengths)")
    return point
