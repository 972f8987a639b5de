"""A calibrated hardware profile (saved as YAML) and the cost model that answers from it.

A profile holds what the micro-benchmarks measured, fitted into curves the cost
model can evaluate at any size:

- copy time against size per direction, host-memory kind and condition
  (`idle`, `duplex`, `busy`), interpolated log-log, measured with cold operands
  (`hssim.validate.microbench.Sweep`);
- the device-memory rate of elementwise work;
- a GEMM table of measured (M, N, K) -> seconds per condition, interpolated in M
  (log-log) within the nearest measured (N, K);
- the attention measurements (decode, prefill) per condition, interpolated like the GEMM
  table (`AttentionTable`); linear fits of the attention kernel time and of FlexGen's host
  attention against the context's K,V bytes, FLOPs and query rows;
- the per-op dispatch cost of the executor by op kind (with warm caches, and what an op
  costs more with the caches flushed, as the executor's weight streaming leaves them), and
  the kernel launch cost.

It records the device, driver, torch and CUDA versions, the date, the dtype and
the thread count it was measured with; using it on a different device warns.

`ProfiledCostModel(profile, model)` implements the `CostModel` protocol for every
op kind, so `simulate(schedule, cost)` and `run_point(point, cost=...)` use it;
the roofline stays the default everywhere else.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ...errors import ProfileError, ScenarioError
from ..schedule import Op, OpKind, Stream
from ..specs import DTYPE_BYTES, CPUSpec, FFNKind, GPUSpec, HardwareSpec, HostSpec, LinkSpec, ModelSpec
from ..yamlsafe import load_yaml_file

PROFILE_DIR = Path(__file__).resolve().parents[2] / "profiles"


class ProfileDeviceWarning(UserWarning):
    """A profile used on a device other than the one it was measured on."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


#: the longest any one measured call may take; a longer one is a corrupt profile, not a measurement
MAX_MEASURED_S = 3600.0


def _causal_pairs(new: int, past: int) -> int:
    return new * past + new * (new + 1) // 2


def _loglog(xs: list[int], ys: list[float], x: float, work=lambda x: x) -> float:
    """`ys` at `x`, interpolated log-log between measured `xs` (sorted); below the smallest the
    smallest's time (a floor: fixed costs do not shrink), above the largest scaled by
    `work(x) / work(xs[-1])` (default: linearly in `x`)."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1] * work(x) / work(xs[-1])
    return float(np.exp(np.interp(math.log(x), np.log(xs), np.log(ys))))


class Curve(_Frozen):
    """Seconds against bytes, measured at increasing sizes."""

    bytes: list[int] = Field(min_length=1)
    seconds: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _measured(self) -> Curve:
        if len(self.bytes) != len(self.seconds):
            raise ValueError(f"{len(self.bytes)} sizes but {len(self.seconds)} times")
        if any(b <= 0 for b in self.bytes) or any(b >= c for b, c in zip(self.bytes, self.bytes[1:], strict=False)):
            raise ValueError("bytes must be positive and increasing")
        if any(not 0 < t <= MAX_MEASURED_S for t in self.seconds):
            raise ValueError(f"seconds must be in (0, {MAX_MEASURED_S:g}]")
        return self

    def time_s(self, nbytes: float) -> float:
        if nbytes <= 0:
            return 0.0
        return _loglog(self.bytes, self.seconds, nbytes)

    @property
    def peak_Bps(self) -> float:
        return max(b / s for b, s in zip(self.bytes, self.seconds, strict=True))


class LinearFit(_Frozen):
    """seconds = intercept + kv_bytes * per_kv_byte + flops * per_flop + rows * per_row (all >= 0)."""

    intercept_s: float = Field(ge=0, le=MAX_MEASURED_S)
    per_kv_byte_s: float = Field(ge=0, le=1e-3)  # slower than 1 kB/s is not a measurement
    per_flop_s: float = Field(ge=0, le=1e-3)
    per_row_s: float = Field(ge=0, le=1.0)
    median_ape: float = Field(description="median absolute percentage error of the fit on its benchmarks")

    def time_s(self, kv_bytes: float, flops: float, rows: float) -> float:
        return self.intercept_s + kv_bytes * self.per_kv_byte_s + flops * self.per_flop_s + rows * self.per_row_s


class GemmTable(_Frozen):
    """Measured `[m, n, k, seconds]` rows of `F.linear` (x `[m,k]`, W `[n,k]`)."""

    rows: list[tuple[int, int, int, float]] = Field(min_length=1)

    @model_validator(mode="after")
    def _measured(self) -> GemmTable:
        for m, n, k, t in self.rows:
            if min(m, n, k) <= 0 or not 0 < t <= MAX_MEASURED_S:
                raise ValueError(f"row [{m}, {n}, {k}, {t}]: m, n, k must be positive and seconds in "
                                 f"(0, {MAX_MEASURED_S:g}]")
        return self

    def time_s(self, m: int, n: int, k: int) -> float:
        if m <= 0 or n <= 0 or k <= 0:
            return 0.0
        groups = self._groups
        key = (n, k)
        scale = 1.0
        if key not in groups:
            key = min(groups, key=lambda g: abs(math.log(g[0] / n)) + abs(math.log(g[1] / k)))
            scale = (n * k) / (key[0] * key[1])
        ms, ts = groups[key]
        return _loglog(ms, ts, m) * scale

    @property
    def peak_flops(self) -> float:
        return max(2 * m * n * k / s for m, n, k, s in self.rows)

    @cached_property
    def _groups(self) -> dict[tuple[int, int], tuple[list[int], list[float]]]:
        """(N, K) -> (sorted M values, their seconds)."""
        by: dict[tuple[int, int], list[tuple[int, float]]] = {}
        for m, n, k, s in self.rows:
            by.setdefault((n, k), []).append((m, s))
        return {key: ([m for m, _ in sorted(v)], [s for _, s in sorted(v)]) for key, v in by.items()}


class AttentionTable(_Frozen):
    """Measured `[batch, hidden, heads, kv_heads, new, context, seconds]` rows of the executor's
    attention (context concatenation + kernel): decode rows (`new == 1`) and prefill rows
    (`new == context`, causal).

    Looked up like the GEMM table: within the measured (hidden, heads, kv_heads) nearest the
    model's, log-log between the measured contexts (decode) or prompt lengths (prefill) of each
    measured batch, then between batches. The time per K,V byte grows with the context as it
    leaves the caches (on a 2-vCPU EPYC: 0.8 ns at 0.5 MB, 1.2-1.5 ns at 4 MB), which one linear
    fit through every shape cannot follow; the table does.
    """

    rows: list[tuple[int, int, int, int, int, int, float]] = Field(min_length=1)

    @model_validator(mode="after")
    def _measured(self) -> AttentionTable:
        for b, h, n, nk, new, ctx, t in self.rows:
            if min(b, h, n, nk, new, ctx) <= 0 or new > ctx or not 0 < t <= MAX_MEASURED_S:
                raise ValueError(f"row [{b}, {h}, {n}, {nk}, {new}, {ctx}, {t}]: sizes must be positive, "
                                 f"new <= context and seconds in (0, {MAX_MEASURED_S:g}]")
            if new != 1 and new != ctx:
                raise ValueError(f"row [{b}, {h}, {n}, {nk}, {new}, {ctx}, {t}]: a row is decode (new 1) or "
                                 "prefill (new = context)")
        return self

    @cached_property
    def _groups(self) -> dict[tuple[bool, int, int, int], dict[int, tuple[list[int], list[float]]]]:
        """(decode, hidden, heads, kv_heads) -> batch -> (sorted tokens, median seconds at each)."""
        by: dict[tuple[bool, int, int, int], dict[int, dict[int, list[float]]]] = {}
        for b, h, n, nk, new, ctx, t in self.rows:
            decode = new == 1 and ctx > 1
            tokens = ctx if decode else new
            by.setdefault((decode, h, n, nk), {}).setdefault(b, {}).setdefault(tokens, []).append(t)
        return {key: {b: (sorted(ts), [float(np.median(ts[x])) for x in sorted(ts)]) for b, ts in batches.items()}
                for key, batches in by.items()}

    def time_s(self, batch: int, hidden: int, heads: int, kv_heads: int, new: int, past: int) -> float:
        if batch <= 0 or new <= 0:
            return 0.0
        decode = new == 1 and past > 0
        groups = [g for g in self._groups if g[0] == decode] or list(self._groups)
        key = (decode, hidden, heads, kv_heads)
        scale = 1.0
        if key not in self._groups:
            key = min(groups, key=lambda g: abs(math.log(g[1] / hidden)) + abs(math.log((g[2] / g[3]) /
                                                                                     (heads / kv_heads))))
            # the context's K,V bytes (decode) or the score FLOPs (prefill) scale with these widths
            scale = (hidden * kv_heads / heads) / (key[1] * key[3] / key[2]) if decode else hidden / key[1]
        by_batch = self._groups[key]
        if decode:
            tokens, work = past + 1, (lambda x: x)  # K,V bytes grow with the context
        else:
            tokens, work = new, (lambda x: _causal_pairs(x, 0))
        batches = sorted(by_batch)
        at = [_loglog(*by_batch[b], tokens, work) for b in batches]
        t = _loglog(batches, at, batch)
        if not decode and past > 0:  # new queries after a past: more pairs than a plain prefill of `new`
            t *= _causal_pairs(new, past) / _causal_pairs(new, 0)
        return t * scale


class HardwareProfile(_Frozen):
    name: str
    device: dict[str, str | int]
    dtype: str
    threads: int = Field(ge=1, description="torch intra-op threads per executor stream thread")
    contention: str = Field(pattern="^(overlap|idle)$",
                            description="overlap: blend idle, busy and (copies) duplex rates by simulated "
                                        "overlap (sim.costs.contention); idle: idle rates only")
    device_memory_bytes: int = Field(gt=0)
    host_memory_bytes: int = Field(gt=0)
    launch_s: float = Field(ge=0, le=1.0)
    copies: dict[str, Curve] = Field(description="key: direction/memory/condition, e.g. h2d/pinned/idle")
    device_copy: Curve
    gemm: dict[str, GemmTable] = Field(description="key: condition (idle, busy)")
    attention_decode: LinearFit
    attention_prefill: LinearFit
    #: the same kernels measured with the neighbour thread copying (None: not measured, idle is used)
    attention_decode_busy: LinearFit | None = None
    attention_prefill_busy: LinearFit | None = None
    #: the attention measurements themselves, key: condition (idle, busy); priced from where present,
    #: the fits above otherwise (profiles measured before the table existed)
    attention: dict[str, AttentionTable] | None = None
    cpu_attention: LinearFit
    #: FlexGen's host attention measured beside a copy (None: not measured, idle is used)
    cpu_attention_busy: LinearFit | None = None
    op_overhead_s: dict[str, float] = Field(description="executor dispatch cost per op, by op kind")
    #: what an op costs more when it finds the caches flushed, as in the executor (other streams move
    #: layers of weights through them between two ops of a thread), by op kind; empty: not measured
    op_cold_s: dict[str, float] = {}
    notes: list[str] = []

    @model_validator(mode="after")
    def _complete(self) -> HardwareProfile:
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype '{self.dtype}': expected one of {', '.join(DTYPE_BYTES)}")
        if "idle" not in self.gemm:
            raise ValueError("gemm: needs an 'idle' table")
        if self.attention is not None:
            idle = self.attention.get("idle")
            if idle is None or {g[0] for g in idle._groups} != {True, False}:
                raise ValueError("attention: needs an 'idle' table with decode and prefill rows")
        for direction in ("h2d", "d2h"):
            if not any(k.startswith(f"{direction}/") for k in self.copies):
                raise ValueError(f"copies: needs a {direction} curve")
        for name in ("op_overhead_s", "op_cold_s"):
            bad = [k for k, v in getattr(self, name).items() if not 0 <= v <= 1.0]
            if bad:
                raise ValueError(f"{name}: {bad[0]} must be in [0, 1] s")
        return self

    # -- lookups ----------------------------------------------------------------
    def copy_curve(self, direction: str, pinned: bool, condition: str) -> Curve:
        memory = "pinned" if pinned and any(k.split("/")[1] == "pinned" for k in self.copies) else "pageable"
        for cond in (condition, "idle"):
            key = f"{direction}/{memory}/{cond}"
            if key in self.copies:
                return self.copies[key]
        raise ProfileError(f"profile {self.name} has no {direction} copy curve")

    def attention_fit(self, decode: bool, condition: str) -> LinearFit:
        busy = self.attention_decode_busy if decode else self.attention_prefill_busy
        if condition == "busy" and busy is not None:
            return busy
        return self.attention_decode if decode else self.attention_prefill

    def attention_table(self, condition: str) -> AttentionTable | None:
        if not self.attention:
            return None
        return self.attention.get(condition) or self.attention.get("idle")

    def gemm_table(self, condition: str) -> GemmTable:
        return self.gemm.get(condition) or self.gemm["idle"]

    @property
    def elementwise_Bps(self) -> float:
        return self.device_copy.bytes[-1] / self.device_copy.seconds[-1]

    def hardware_spec(self) -> HardwareSpec:
        """Effective figures of this profile as a `HardwareSpec` (for memory plans and the roofline)."""
        h2d = self.copy_curve("h2d", True, "idle")
        d2h = self.copy_curve("d2h", True, "idle")
        h2d_pg = self.copy_curve("h2d", False, "idle")
        d2h_pg = self.copy_curve("d2h", False, "idle")
        cpu_flops = 1.0 / self.cpu_attention.per_flop_s if self.cpu_attention.per_flop_s > 0 else 1e11
        return HardwareSpec(
            name=self.name,
            gpu=GPUSpec(name=str(self.device.get("name", self.name)), memory_bytes=self.device_memory_bytes,
                        peak_flops=max(g.peak_flops for g in self.gemm.values()), hbm_Bps=self.elementwise_Bps,
                        launch_overhead_s=self.launch_s),
            link=LinkSpec(name=f"{self.name}-link", h2d_pinned_Bps=h2d.peak_Bps, d2h_pinned_Bps=d2h.peak_Bps,
                          h2d_pageable_Bps=h2d_pg.peak_Bps, d2h_pageable_Bps=d2h_pg.peak_Bps,
                          latency_s=min(h2d.seconds[0], d2h.seconds[0])),
            host=HostSpec(memory_bytes=self.host_memory_bytes, memory_Bps=self.elementwise_Bps),
            cpu=CPUSpec(name=f"{self.name}-host", flops=cpu_flops),
        )

    # -- files ------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.model_dump(mode="json")
        data["gemm"] = {c: {"rows": [list(r) for r in t["rows"]]} for c, t in data["gemm"].items()}
        with path.open("w") as f:
            f.write(f"# hssim hardware profile, measured by `hssim validate` on {self.device.get('date')}\n")
            yaml.safe_dump(data, f, sort_keys=False, default_flow_style=None, width=200)
        return path


def find_profile(name_or_path: str | Path) -> Path:
    """A profile file: an existing path, or `profiles/NAME.yaml` of this repository."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    candidate = PROFILE_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = ", ".join(sorted(q.stem for q in PROFILE_DIR.glob("*.yaml"))) or "none"
    raise ProfileError(f"no profile '{name_or_path}'; fix: pass a .yaml path or one of: {known}")


def load_profile(name_or_path: str | Path, current: dict | None = None) -> HardwareProfile:
    """Read a profile; warn (`ProfileDeviceWarning`) if `current` (a DeviceInfo dict) is another device."""
    path = find_profile(name_or_path)
    try:
        data = load_yaml_file(path)
    except ScenarioError as e:
        raise ProfileError(f"{path}: not a valid hssim profile ({e.field}: {e.message}); fix: recalibrate with "
                           "hssim validate") from None
    try:
        profile = HardwareProfile.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "profile"
        raise ProfileError(f"{path}: not a valid hssim profile ({where}: {err['msg'].removeprefix('Value error, ')}); "
                           "fix: recalibrate with hssim validate") from None
    except (ValueError, TypeError) as e:
        first = str(e).splitlines()[0]
        raise ProfileError(f"{path}: not a valid hssim profile ({first}); fix: recalibrate with hssim validate") \
            from None
    if current is not None:
        check_device(profile, current)
    return profile


def check_device(profile: HardwareProfile, current: dict) -> None:
    keys = ("backend", "name", "driver", "torch_version", "cuda_version")
    diff = [f"{k} {profile.device.get(k)!s} -> {current.get(k)!s}" for k in keys
            if str(profile.device.get(k)) != str(current.get(k))]
    if diff:
        warnings.warn(f"profile {profile.name} was measured on another device or stack ({'; '.join(diff)}); "
                      "its predictions may not hold here: recalibrate with hssim validate",
                      ProfileDeviceWarning, stacklevel=2)


# ------------------------------------------------------------------------------- cost model


def overhead_key(kind: str, model: ModelSpec) -> str:
    """Dispatch costs are kept per op kind and model family (rotary LLaMA ops do more small work)."""
    return f"{kind}:{model.norm_kind.value}"


@dataclass(frozen=True)
class ProfiledCostModel:
    """Op durations from a calibrated profile, for the ops of `model`'s schedules.

    Compute ops are the sum of their GEMMs (measured table), their attention
    kernel (fitted), their elementwise bytes at the device-memory rate and the
    executor's dispatch cost for that op kind; copies follow the measured copy
    curve of their direction and host-memory kind; FlexGen's host attention
    follows its own fit. `contended=True` picks the rates measured with the
    neighbour thread busy, `condition_name="duplex"` the copies' rates with the
    opposite direction copying (default: idle rates; `costs.contention` blends
    them by how much each op overlaps the other side).
    """

    profile: HardwareProfile
    model: ModelSpec
    contended: bool | None = None
    #: a measured condition by name (`idle`, `busy`, `duplex`); overrides `contended`. Where the
    #: profile lacks it for an op (GEMMs have no `duplex`), the op gets its idle rate.
    condition_name: str | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.model.dtype != self.profile.dtype:
            warnings.warn(f"profile {self.profile.name} measured {self.profile.dtype} kernels; the model is "
                          f"{self.model.dtype}: GEMM and attention times are scaled by byte width only",
                          ProfileDeviceWarning, stacklevel=2)

    @property
    def condition(self) -> str:
        if self.condition_name is not None:
            return self.condition_name
        return "busy" if self.contended else "idle"

    def duration_s(self, op: Op) -> float:
        key = (op.kind, op.link_bytes, op.shape, op.pinned)
        t = self._cache.get(key)
        if t is None:
            t = self._cache[key] = self._duration_s(op)
        return t

    # -- pieces -----------------------------------------------------------------
    def _p(self) -> int:
        return self.model.dtype_bytes

    def _width_scale(self) -> float:
        return self.model.dtype_bytes / DTYPE_BYTES[self.profile.dtype]

    def _gemm(self, m: int, n: int, k: int) -> float:
        return self.profile.gemm_table(self.condition).time_s(m, n, k) * self._width_scale()

    def _elem(self, nbytes: float) -> float:
        return nbytes / self.profile.elementwise_Bps

    def _overhead(self, op: Op) -> float:
        """Dispatch cost of one op of this kind (per model family where the profile has it), with the
        caches as the executor leaves them (`op_cold_s`, where measured)."""
        key = overhead_key(op.kind.value, self.model)
        table, cold = self.profile.op_overhead_s, self.profile.op_cold_s
        warm = table[key] if key in table else table.get(op.kind.value, self.profile.launch_s * op.kernels)
        return warm + cold.get(key, cold.get(op.kind.value, 0.0))

    def _attention_kernel(self, batch: int, new: int, past: int) -> float:
        m = self.model
        table = self.profile.attention_table(self.condition)
        if table is not None:
            return table.time_s(batch, m.hidden, m.heads, m.kv_heads, new, past) * self._width_scale()
        kv_bytes = batch * (past + new) * 2 * m.kv_hidden * self._p()
        flops = 4 * batch * _causal_pairs(new, past) * m.hidden
        fit = self.profile.attention_fit(new == 1, self.condition)
        return fit.time_s(kv_bytes, flops, batch * m.heads * new)

    def _attention_block(self, batch: int, new: int, past: int, store_x: bool = True) -> float:
        m, p = self.model, self._p()
        rows = batch * new
        h, hk = m.hidden, m.kv_hidden
        rotary = 8 * rows * (h + hk) * p if m.norm_kind.value == "rmsnorm" else 0
        elem = p * rows * (9 * h + 4 * hk + (2 * h if store_x else 0)) + rotary
        return (self._gemm(rows, h + 2 * hk, h) + self._attention_kernel(batch, new, past) + self._gemm(rows, h, h)
                + self._elem(elem))

    def _ffn_block(self, rows: int) -> float:
        m, p = self.model, self._p()
        if m.ffn_kind is FFNKind.relu:
            return (self._gemm(rows, m.ffn, m.hidden) + self._gemm(rows, m.hidden, m.ffn)
                    + self._elem(p * rows * (7 * m.hidden + 2 * m.ffn)))
        return (self._gemm(rows, 2 * m.ffn, m.hidden) + self._gemm(rows, m.hidden, m.ffn)
                + self._elem(p * rows * (7 * m.hidden + 5 * m.ffn)))

    def _kv_proj(self, rows: int) -> float:
        m, p = self.model, self._p()
        rotary = 8 * rows * m.kv_hidden * p if m.norm_kind.value == "rmsnorm" else 0
        return self._gemm(rows, 2 * m.kv_hidden, m.hidden) + self._elem(p * rows * (2 * m.hidden + 4 * m.kv_hidden)
                                                                         + rotary)

    def _duration_s(self, op: Op) -> float:
        if op.stream in (Stream.h2d, Stream.d2h):
            curve = self.profile.copy_curve(op.stream.value, op.pinned, self.condition)
            return curve.time_s(op.link_bytes) + self._overhead(op)
        s = op.shape_dict
        m = self.model
        b = s.get("batch", 1)
        kind = op.kind
        if kind is OpKind.cpu_attention:
            past = s["past_tokens"]
            ctx = past + 1
            busy = self.profile.cpu_attention_busy
            f = busy if self.condition == "busy" and busy is not None else self.profile.cpu_attention
            t = f.time_s(b * ctx * 2 * m.kv_hidden * self._p(), 4 * b * ctx * m.hidden, b * m.heads)
        elif kind is OpKind.attention:
            t = self._attention_block(b, s["new_tokens"], s["past_tokens"])
        elif kind is OpKind.ffn:
            t = self._ffn_block(b * s["new_tokens"])
        elif kind is OpKind.recompute_kv:
            t = self._kv_proj(b * s["tokens"])
        elif kind is OpKind.recompute_layer:
            tokens = s["tokens"]
            if s.get("last_layer"):
                t = self._kv_proj(b * tokens)
            else:
                t = self._attention_block(b, tokens, 0, store_x=False) + self._ffn_block(b * tokens)
        elif kind is OpKind.lm_head:
            t = self._gemm(b, m.vocab, m.hidden) + self._elem(self._p() * b * (2 * m.vocab + 4 * m.hidden))
        elif kind is OpKind.qkv_proj:
            n = m.hidden + 2 * m.kv_hidden
            t = self._gemm(b, n, m.hidden) + self._elem(self._p() * b * (2 * m.hidden + 3 * n))
        elif kind is OpKind.out_proj:
            t = self._gemm(b, m.hidden, m.hidden) + self._elem(self._p() * b * 5 * m.hidden)
        else:
            raise ValueError(f"ProfiledCostModel: no rule for op kind {kind.value}")
        return t + self._overhead(op)


def profiled_cost(profile: HardwareProfile, model: ModelSpec, contended: bool | None = None) -> ProfiledCostModel:
    return ProfiledCostModel(profile, model, contended)
