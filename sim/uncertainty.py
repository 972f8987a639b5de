"""How sure each hardware figure is: a range per figure, with its source.

Every float figure of a `HardwareSpec` (`gpu.peak_flops`, `link.h2d_pinned_Bps`,
`host.memory_Bps`, `cpu.flops`, ...; capacities in bytes and names are facts, not
figures) gets a range from the first rule that names it:

1. the scenario's `uncertainty:` block (`Uncertainty`), which may also fix a figure;
2. a calibrated profile, for hardware read from one (`profile_ranges`): narrow ranges
   from the spread of its micro-benchmarks;
3. `PRESET_SOURCES`, keyed by preset name and figure path: where the preset's value
   comes from (a datasheet, a public measurement, an assumption);
4. otherwise "assumption (range guessed)": a figure nobody sourced, so any figure a
   spec gains later is covered without an entry here.

The width follows the kind of source (`RELATIVE_RANGE`): a datasheet or measured
figure a narrow band, an assumption a factor of two either way, unless a public
figure bounds it (an assumed CPU attention rate reaches down to FlexGen's measured
one); every range is then
clipped to what the field allows (an efficiency never above 1). A figure of a preset
that a scenario changed (`{preset: ..., link: {...}}`) is no longer the preset's
source: it gets the assumption's width unless the scenario's `uncertainty:` gives it
one.

Scenario syntax (every key is a figure path)::

    uncertainty:
      link.h2d_pinned_Bps: [2.0e10, 2.6e10]                # absolute bounds
      cpu.flops: {factor: [0.5, 4], source: "vendor peak, achieved unknown"}
      gpu.launch_overhead_s: fixed                         # not uncertain
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import annotated_types
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ..errors import ScenarioError
from .presets import HARDWARE
from .specs import HardwareSpec

#: the parts of a HardwareSpec whose float fields are figures
PARTS = ("gpu", "link", "host", "cpu")


class SourceKind(str, Enum):
    datasheet = "datasheet"  # a vendor's figure
    measured = "measured"  # a public measurement or a fit to measurements (FlexGen's cost model)
    calibrated = "calibrated"  # our micro-benchmarks (a profile): ranges from their spread
    assumption = "assumption"  # nobody measured it: range guessed
    scenario = "scenario"  # the scenario's uncertainty block


#: (low, high) factor on the figure's value, by kind of source. A datasheet rate still varies
#: by clocks and SKU (+-5%); a measurement by setup (+-10%); an assumption by 2x either way.
RELATIVE_RANGE: dict[SourceKind, tuple[float, float]] = {
    SourceKind.datasheet: (0.95, 1.05),
    SourceKind.measured: (0.9, 1.1),
    SourceKind.assumption: (0.5, 2.0),
}
ASSUMED = "assumption (range guessed)"


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    text: str
    #: absolute (low, high) where a source gives them; None: that end by `RELATIVE_RANGE` of the kind
    bounds: tuple[float | None, float | None] = (None, None)


def _d(text: str) -> Source:
    return Source(SourceKind.datasheet, text)


def _m(text: str) -> Source:
    return Source(SourceKind.measured, text)


#: FlexGen's CPU attention: `cpu.attention_speed` scales this project's per-thread rates of that code
_CPU_ATTENTION = Source(SourceKind.assumption, "assumption (range guessed): per-thread rates of FlexGen's CPU "
                        "attention code measured by this project on a quiet 2-core machine "
                        "(benchmarks/results/flexgen_cpu_attention.md), scaled to the box's cores; x0.5-x2",
                        (0.5, 2.0))
_PCIE4_MEASURED = _m("DESIGN.md: PCIe 4.0 x16 pinned achieved 25-26 GB/s (common measurements)")
_PCIE5_MEASURED = _m("DESIGN.md: PCIe 5.0 x16 pinned achieved 50-51 GB/s (common measurements)")

#: preset name -> figure path -> where the preset's value comes from (see sim/presets.py);
#: a figure not listed here is an assumption
PRESET_SOURCES: dict[str, dict[str, Source]] = {
    "t4-pcie3": {
        "gpu.peak_flops": _d("NVIDIA T4 datasheet: 65 TFLOPS mixed precision"),
        "gpu.hbm_Bps": _d("NVIDIA T4 datasheet: 320 GB/s"),
        "gpu.matmul_efficiency": _m("NVIDIA developer forum t/264462: sustained cuBLAS fp16 GEMM about 24 of 65 "
                                    "TFLOPS under the 70 W power cap"),
        "link.h2d_pinned_Bps": _m("FlexGen cost_model.py ctog_bdw (fitted)"),
        "link.d2h_pageable_Bps": _m("FlexGen cost_model.py gtoc_bdw_cache (fitted, unpinned)"),
        "cpu.attention_speed": _CPU_ATTENTION,
    },
    "rtx4090-pcie4": {
        "cpu.attention_speed": _CPU_ATTENTION,
        "gpu.peak_flops": _d("NVIDIA Ada whitepaper: FP16 tensor, FP32 accumulate, dense"),
        "gpu.hbm_Bps": _d("NVIDIA Ada whitepaper: 1008 GB/s"),
        "link.h2d_pinned_Bps": _PCIE4_MEASURED,
        "link.d2h_pinned_Bps": _PCIE4_MEASURED,
    },
    "a100-40gb-pcie4": {
        "cpu.attention_speed": _CPU_ATTENTION,
        "gpu.peak_flops": _d("NVIDIA A100 datasheet: FP16 tensor dense"),
        "gpu.hbm_Bps": _d("NVIDIA A100 40GB datasheet: 1555 GB/s"),
        "link.h2d_pinned_Bps": _PCIE4_MEASURED,
        "link.d2h_pinned_Bps": _PCIE4_MEASURED,
    },
    "h100-80gb-pcie5": {
        "cpu.attention_speed": _CPU_ATTENTION,
        "gpu.peak_flops": _d("NVIDIA H100 SXM datasheet: FP16 tensor dense"),
        "gpu.hbm_Bps": _d("NVIDIA H100 SXM datasheet: 3.35 TB/s"),
        "link.h2d_pinned_Bps": _PCIE5_MEASURED,
        "link.d2h_pinned_Bps": _PCIE5_MEASURED,
    },
    "gh200-c2c": {
        "cpu.attention_speed": _CPU_ATTENTION,
        "gpu.peak_flops": _d("NVIDIA GH200 datasheet: FP16 tensor dense"),
        "gpu.hbm_Bps": _d("NVIDIA GH200 datasheet: 4 TB/s"),
        "link.h2d_pinned_Bps": _m("Oneiros paper: NVLink-C2C CPU->GPU read-dominant, measured"),
        "link.d2h_pinned_Bps": _m("Oneiros paper: NVLink-C2C 1:1 read/write, measured"),
        "host.memory_Bps": _d("NVIDIA Grace datasheet: 512 GB/s LPDDR5X"),
    },
}


@dataclass(frozen=True)
class FigureRange:
    """One uncertain figure of a point's hardware: its value, its range and why."""

    path: str
    value: float
    lo: float
    hi: float
    kind: SourceKind
    source: str

    @property
    def fixed(self) -> bool:
        return self.lo == self.hi

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi


# ------------------------------------------------------------------------- figures of a spec


def figure_paths(hw: HardwareSpec) -> list[str]:
    """Every float figure of `hw` that has a value, as `part.field` paths, in spec order."""
    out = []
    for part in PARTS:
        sub = getattr(hw, part)
        for name, info in type(sub).model_fields.items():
            value = getattr(sub, name)
            if isinstance(value, float) and not isinstance(value, bool) and _is_float_field(info):
                out.append(f"{part}.{name}")
    return out


def _is_float_field(info) -> bool:
    ann = info.annotation
    return ann is float or (getattr(ann, "__args__", None) is not None and float in ann.__args__)


def figure_value(hw: HardwareSpec, path: str) -> float:
    part, _, name = path.partition(".")
    return float(getattr(getattr(hw, part), name))


def field_bounds(path: str) -> tuple[float, float, bool]:
    """(lowest, highest, lowest is exclusive) a figure's field allows (its pydantic constraints)."""
    part, _, name = path.partition(".")
    sub_cls = HardwareSpec.model_fields[part].annotation
    lo, hi, open_lo = 0.0, math.inf, False
    for meta in sub_cls.model_fields[name].metadata:
        if isinstance(meta, annotated_types.Gt):
            lo, open_lo = float(meta.gt), True
        elif isinstance(meta, annotated_types.Ge):
            lo = float(meta.ge)
        elif isinstance(meta, annotated_types.Le):
            hi = float(meta.le)
        elif isinstance(meta, annotated_types.Lt):
            hi = float(meta.lt)
    return lo, hi, open_lo


def with_figure(hw: HardwareSpec, path: str, value: float) -> HardwareSpec:
    """`hw` with one figure set (validated: a value its field refuses raises ValueError)."""
    return with_figures(hw, {path: value})


def with_figures(hw: HardwareSpec, values: Mapping[str, float]) -> HardwareSpec:
    data = hw.model_dump()
    for path, value in values.items():
        part, _, name = path.partition(".")
        data[part][name] = float(value)
    return HardwareSpec.model_validate(data)


# ------------------------------------------------------------------------ scenario overrides


class RangeOverride(BaseModel):
    """One figure's range as a scenario gives it: absolute bounds or factors on its value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    range: tuple[float, float] | None = None
    factor: tuple[float, float] | None = None
    fixed: bool = False
    source: str = "set in the scenario"

    @model_validator(mode="after")
    def _one_form(self) -> RangeOverride:
        given = [k for k in ("range", "factor") if getattr(self, k) is not None]
        if self.fixed and given:
            raise ValueError("give either fixed or a range, not both")
        if not self.fixed and len(given) != 1:
            raise ValueError("give exactly one of range: [lo, hi] or factor: [lo, hi]")
        for key in given:
            lo, hi = getattr(self, key)
            if not (lo > 0 and hi >= lo):
                raise ValueError(f"{key} must be [lo, hi] with 0 < lo <= hi")
        if self.factor is not None and not self.factor[0] <= 1 <= self.factor[1]:
            raise ValueError("factor must contain 1 (the figure's own value)")
        return self


@dataclass(frozen=True)
class Uncertainty:
    """A scenario's `uncertainty:` block: figure path -> its range (or fixed)."""

    overrides: Mapping[str, RangeOverride]
    source: str = "scenario"

    @classmethod
    def empty(cls) -> Uncertainty:
        return cls({})


def known_paths() -> list[str]:
    """Every figure path a hardware spec can have (float fields of gpu, link, host, cpu)."""
    out = []
    for part in PARTS:
        sub_cls = HardwareSpec.model_fields[part].annotation
        out += [f"{part}.{n}" for n, info in sub_cls.model_fields.items() if _is_float_field(info)]
    return out


def parse_uncertainty(data: Any, source: str) -> Uncertainty:
    """The `uncertainty:` block of a scenario file (None: no block), checked field by field."""
    if data is None:
        return Uncertainty({}, source)
    if not isinstance(data, Mapping):
        raise ScenarioError(source, "uncertainty", "must be a mapping of figure path: range",
                            "write e.g. 'link.h2d_pinned_Bps: [2.0e10, 2.6e10]'")
    paths = known_paths()
    out: dict[str, RangeOverride] = {}
    for key, value in data.items():
        field = f"uncertainty.{key}"
        if key not in paths:
            close = difflib.get_close_matches(str(key), paths, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(paths)}"
            raise ScenarioError(source, field, "not a hardware figure", hint)
        if value == "fixed":
            value = {"fixed": True}
        elif isinstance(value, list):
            value = {"range": value}
        if not isinstance(value, Mapping):
            raise ScenarioError(source, field, f"expected [lo, hi], fixed or a mapping, got {value!r}",
                                "write [lo, hi], {factor: [lo, hi], source: ...} or fixed")
        try:
            out[key] = RangeOverride.model_validate(value)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            where = f"{field}.{loc}" if loc else field
            msg = first["msg"].removeprefix("Value error, ")
            raise ScenarioError(source, where, msg,
                                "write [lo, hi], {range: [lo, hi]}, {factor: [lo, hi]} or fixed") from None
    return Uncertainty(out, source)


# ---------------------------------------------------------------------------------- ranges


def preset_name(hw: HardwareSpec) -> str:
    """The preset `hw` was made from (a scenario's changed preset is named `NAME*`)."""
    return hw.name.rstrip("*").lower()


def _clip(path: str, lo: float, hi: float) -> tuple[float, float]:
    f_lo, f_hi, open_lo = field_bounds(path)
    lo, hi = max(lo, f_lo), min(hi, f_hi)
    if open_lo and lo <= f_lo:
        lo = f_lo + (hi - f_lo) * 1e-6  # the field excludes its bound
    return lo, hi


def _relative(path: str, value: float, kind: SourceKind, text: str,
              factor: tuple[float, float] | None = None) -> FigureRange:
    f_lo, f_hi = factor or RELATIVE_RANGE[kind]
    if value == 0:  # an additive figure at zero (a latency, an overhead): nothing to scale
        return FigureRange(path, value, 0.0, 0.0, kind, text)
    lo, hi = _clip(path, value * f_lo, value * f_hi)
    return FigureRange(path, value, lo, hi, kind, text)


def _source(hw: HardwareSpec, path: str) -> Source:
    """Where `hw`'s value of a figure comes from: its preset's source, unless a scenario changed it."""
    name = preset_name(hw)
    preset = HARDWARE.get(name)
    if preset is not None and path in figure_paths(preset) and figure_value(preset, path) != figure_value(hw, path):
        return Source(SourceKind.assumption, "set in the scenario (range guessed)")
    if preset is not None:
        return PRESET_SOURCES.get(name, {}).get(path) or Source(SourceKind.assumption, ASSUMED)
    return Source(SourceKind.assumption, ASSUMED)


def figure_ranges(hw: HardwareSpec, uncertainty: Uncertainty | None = None,
                  calibrated: Mapping[str, FigureRange] | None = None) -> list[FigureRange]:
    """The range of every figure of `hw`, by the rules of the module docstring.

    `calibrated`: ranges a profile gives (`profile_ranges`); only those figures are
    uncertain then, since the profile prices the point, not the spec's other figures.
    Raises ScenarioError when an absolute range leaves out the point's own value.
    """
    unc = uncertainty or Uncertainty.empty()
    paths = list(calibrated) if calibrated is not None else figure_paths(hw)
    out = []
    for path in paths:
        value = calibrated[path].value if calibrated is not None else figure_value(hw, path)
        over = unc.overrides.get(path)
        if over is not None:
            out.append(_override_range(path, value, over, unc.source))
        elif calibrated is not None:
            out.append(calibrated[path])
        else:
            src = _source(hw, path)
            fig = _relative(path, value, src.kind, src.text)
            lo, hi = src.bounds
            if lo is not None or hi is not None:  # a source's own ends, never leaving out the value
                lo = fig.lo if lo is None else min(lo, value)
                hi = fig.hi if hi is None else max(hi, value)
                fig = FigureRange(path, value, *_clip(path, lo, hi), src.kind, src.text)
            out.append(fig)
    return out


def _override_range(path: str, value: float, over: RangeOverride, source: str) -> FigureRange:
    if over.fixed:
        return FigureRange(path, value, value, value, SourceKind.scenario, over.source)
    if over.factor is not None:
        return _relative(path, value, SourceKind.scenario, over.source, over.factor)
    lo, hi = over.range
    if not lo <= value <= hi:
        raise ScenarioError(source, f"uncertainty.{path}", f"range [{lo:g}, {hi:g}] leaves out the point's "
                            f"value {value:g}", "widen the range, or give factor: [lo, hi] instead")
    clipped = _clip(path, lo, hi)
    if clipped != (lo, hi):
        f_lo, f_hi, _ = field_bounds(path)
        raise ScenarioError(source, f"uncertainty.{path}", f"range [{lo:g}, {hi:g}] goes beyond what the field "
                            f"allows ({f_lo:g}..{f_hi:g})", "keep the range inside the field's bounds")
    return FigureRange(path, value, lo, hi, SourceKind.scenario, over.source)
