"""The figures a calibrated profile prices with, their ranges, and the profile with one changed.

A point on hardware read from a profile is priced by the profile's curves and fits,
not by the spec's figures, so its uncertain figures are the profile's own, named like
the spec's (value: what the profile prices with):

| figure | what of the profile it scales |
|---|---|
| `gpu.peak_flops` | the GEMM tables (best rate), attention tables' prefill rows, fits' per-FLOP term |
| `gpu.hbm_Bps` | the device-copy curve (elementwise rate), attention tables' decode rows, fits' per-byte term |
| `gpu.launch_overhead_s` | the launch cost and the per-op dispatch costs |
| `link.<dir>_<memory>_Bps` | that direction's copy curves of that memory kind, every condition |
| `host.memory_Bps` | the per-byte term of the CPU-attention fit (its rate is 1 / that term) |
| `cpu.flops` | the per-FLOP term of the CPU-attention fit |

Profiles store medians, not the spread of their repeats, so the spread is derived
from what they hold: for a curve, the scatter of the achieved rate over its points
at 1/16 of its largest size and above (where the rate has levelled off, so the
scatter is measurement noise); for the GEMM tables, the same scatter over the three
largest M of each (N, K), median over the shapes; for a fit, its median absolute
percentage error on its own benchmarks. The half-width is that relative spread, at
least `MIN_SPREAD`; a figure with nothing to derive it from (the launch cost) gets
the measured band of `uncertainty.RELATIVE_RANGE`.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping

from ..uncertainty import RELATIVE_RANGE, FigureRange, SourceKind
from .profile import AttentionTable, Curve, GemmTable, HardwareProfile, LinearFit

#: the least half-width of a calibrated figure: timer and run-to-run noise of a median of three rounds
MIN_SPREAD = 0.02
#: a curve's points from this fraction of its largest size up count as its plateau: the two
#: largest of a x4 size grid. At 1/16 the plateau reached into the last-level cache (a 33.5 MB
#: device copy on a 32 MB L3 ran at 2.4x the DRAM rate of the 134 and 537 MB ones), so it measured
#: the cache edge, not the scatter of one rate
PLATEAU_FRACTION = 1 / 4


def curve_spread(curve: Curve) -> float:
    """Relative half-width of the achieved rate over the curve's plateau."""
    top = curve.bytes[-1] * PLATEAU_FRACTION
    rates = [b / s for b, s in zip(curve.bytes, curve.seconds, strict=True) if b >= top]
    return _half_width(rates)


def gemm_spread(table: GemmTable) -> float:
    """Median over (N, K) of the relative half-width of the rate at the three largest M."""
    spreads = []
    for (n, k), (ms, ts) in table._groups.items():
        rates = [2 * m * n * k / t for m, t in zip(ms[-3:], ts[-3:], strict=True)]
        if len(rates) >= 2:
            spreads.append(_half_width(rates))
    return statistics.median(spreads) if spreads else 0.0


def _half_width(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    return (max(values) - min(values)) / 2 / statistics.median(values)


def _link_keys(profile: HardwareProfile) -> dict[str, str]:
    """Figure path -> copy-curve key prefix, for the (direction, memory kind) pairs measured."""
    out = {}
    for key in profile.copies:
        direction, memory, _ = key.split("/")
        out[f"link.{direction}_{memory}_Bps"] = f"{direction}/{memory}/"
    return dict(sorted(out.items()))


def profile_figures(profile: HardwareProfile) -> dict[str, float]:
    """Figure path -> the value the profile prices with (rates in bytes/s or FLOP/s, times in s)."""
    out = {"gpu.peak_flops": max(t.peak_flops for t in profile.gemm.values()),
           "gpu.hbm_Bps": profile.elementwise_Bps,
           "gpu.launch_overhead_s": profile.launch_s}
    for path, prefix in _link_keys(profile).items():
        idle = profile.copies.get(f"{prefix}idle") or next(c for k, c in profile.copies.items() if k.startswith(prefix))
        out[path] = idle.peak_Bps
    cpu = profile.cpu_attention
    if cpu.per_kv_byte_s > 0:
        out["host.memory_Bps"] = 1 / cpu.per_kv_byte_s
    if cpu.per_flop_s > 0:
        out["cpu.flops"] = 1 / cpu.per_flop_s
    return out


def profile_ranges(profile: HardwareProfile) -> dict[str, FigureRange]:
    """Every figure the profile prices with, and its range from the benchmarks' spread."""
    values = profile_figures(profile)
    name = f"profile {profile.name}"
    spreads: dict[str, tuple[float, str]] = {
        "gpu.peak_flops": (gemm_spread(profile.gemm_table("idle")),
                           "scatter of the GEMM rate over the three largest M of each shape"),
        "gpu.hbm_Bps": (curve_spread(profile.device_copy), "scatter of the device-copy rate over its plateau"),
    }
    for path, prefix in _link_keys(profile).items():
        curve = profile.copies.get(f"{prefix}idle") or next(c for k, c in profile.copies.items()
                                                            if k.startswith(prefix))
        spreads[path] = (curve_spread(curve), f"scatter of the {prefix}idle copy rate over its plateau")
    fit = profile.cpu_attention.median_ape
    for path in ("host.memory_Bps", "cpu.flops"):
        spreads[path] = (fit, "median error of the CPU-attention fit")
    out = {}
    for path, value in values.items():
        if path in spreads:
            half, how = spreads[path]
            half = max(half, MIN_SPREAD)
            lo, hi = 1 - min(half, 0.9), 1 + half
        else:
            lo, hi = RELATIVE_RANGE[SourceKind.measured]
            half, how = hi - 1, "no spread stored: the measured band"
        out[path] = FigureRange(path, value, value * lo, value * hi, SourceKind.calibrated,
                                f"{name}: {how} (+-{half:.1%})")
    return out


def _scale_curve(curve: Curve, time_factor: float) -> Curve:
    return Curve(bytes=curve.bytes, seconds=[s * time_factor for s in curve.seconds])


def _scale_fit(fit: LinearFit, per_byte: float = 1.0, per_flop: float = 1.0) -> LinearFit:
    return fit.model_copy(update={"per_kv_byte_s": fit.per_kv_byte_s * per_byte,
                                  "per_flop_s": fit.per_flop_s * per_flop})


def scaled_profile(profile: HardwareProfile, values: Mapping[str, float]) -> HardwareProfile:
    """`profile` as it would have measured with the figures `values` (paths of `profile_figures`)."""
    nominal = profile_figures(profile)
    unknown = set(values) - set(nominal)
    if unknown:
        raise ValueError(f"profile {profile.name} prices no figure {sorted(unknown)[0]}; "
                         f"it has: {', '.join(nominal)}")
    # time factor: a rate r -> r' multiplies times by r / r'; a time t -> t' by t' / t
    tf = {p: (v / nominal[p] if p.endswith("_s") else nominal[p] / v) for p, v in values.items()}
    update: dict = {}
    if "gpu.peak_flops" in tf or "gpu.hbm_Bps" in tf:
        flop, byte = tf.get("gpu.peak_flops", 1.0), tf.get("gpu.hbm_Bps", 1.0)
        update["gemm"] = {c: GemmTable(rows=[(m, n, k, s * flop) for m, n, k, s in t.rows])
                          for c, t in profile.gemm.items()}
        update["device_copy"] = _scale_curve(profile.device_copy, byte)
        for name in ("attention_decode", "attention_prefill", "attention_decode_busy", "attention_prefill_busy"):
            if getattr(profile, name) is not None:
                update[name] = _scale_fit(getattr(profile, name), byte, flop)
        if profile.attention:
            # decode attention streams the context's K,V (a byte rate); prefill is score FLOPs
            update["attention"] = {
                c: AttentionTable(rows=[(b, h, n, nk, new, ctx, s * (byte if new == 1 < ctx else flop))
                                        for b, h, n, nk, new, ctx, s in t.rows])
                for c, t in profile.attention.items()}
    if "gpu.launch_overhead_s" in tf:
        f = tf["gpu.launch_overhead_s"]
        update["launch_s"] = profile.launch_s * f
        update["op_overhead_s"] = {k: v * f for k, v in profile.op_overhead_s.items()}
        update["op_cold_s"] = {k: v * f for k, v in profile.op_cold_s.items()}
    links = _link_keys(profile)
    if any(p in tf for p in links):
        update["copies"] = {key: next((_scale_curve(c, tf[p]) for p, prefix in links.items()
                                       if p in tf and key.startswith(prefix)), c)
                            for key, c in profile.copies.items()}
    if "host.memory_Bps" in tf or "cpu.flops" in tf:
        update["cpu_attention"] = _scale_fit(profile.cpu_attention, tf.get("host.memory_Bps", 1.0),
                                             tf.get("cpu.flops", 1.0))
        if profile.cpu_attention_busy is not None:
            update["cpu_attention_busy"] = _scale_fit(profile.cpu_attention_busy, tf.get("host.memory_Bps", 1.0),
                                                      tf.get("cpu.flops", 1.0))
    return profile.model_copy(update=update)
