"""Serving scenario files: YAML in, resolved `ServingPoint`s out.

::

    name: serving-gh200-opt13b                # default: the file name
    description: free text
    model: opt-13b                            # preset, {preset: .., layers: ..} or a full spec
    hardware: gh200-c2c                       # preset, or {preset: .., gpu: {memory_bytes: ..}}
    gpu_kv_bytes: 6.0e9                       # optional cap on the KV pool (default: all that is left)
    engine: {block_tokens: 16, max_batched_tokens: 2048, max_running: 256, watermark: 0.01}
    workload:                                 # Poisson arrivals ...
      requests: 400
      rate_rps: 4.0
      seed: 1
      prompt_len: {dist: lognormal, median: 600, sigma: 0.6, min: 16, max: 1500}
      output_len: {dist: uniform, min: 64, max: 400}     # or a bare integer: fixed
    # workload: {trace: traces/day1.csv}      # ... or a trace (path relative to this file)
    policies:
      - {kind: vllm-swap}
      - {kind: vllm-recompute}
      - {kind: oneiros}                       # optional: fallback: recompute, revert_headroom: 0.1
    sweep:                                    # cartesian product of the axes
      workload.rate_rps: [1, 2, 4, 8]         # also: model, hardware, gpu_kv_bytes, engine.<f>, policy.<f>

Several models on one GPU (tenants) replace `model`, `workload` and `gpu_kv_bytes` by a list;
each tenant's weights are resident to begin with, and a sweep's `workload.<f>` sets it in every
tenant's workload::

    tenants:
      - {name: chat, model: llama-2-7b, gpu_kv_bytes: 4.0e9,
         workload: {requests: 200, rate_rps: 6, bursts: {on_s: 10, period_s: 30, offset_s: 0}, ...}}
      - {name: code, model: llama-2-7b, workload: {...}}   # no gpu_kv_bytes: an equal share of the rest

Every problem is a one-line `ScenarioError` naming the file, the field and the fix.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..presets import HARDWARE, MODELS
from ..scenario import MAX_POINTS, ScenarioError, load_yaml, pydantic_error, resolve_preset
from ..specs import HardwareSpec, ModelSpec
from .policies import ServingPolicyKind, ServingPolicySpec
from .specs import ServingEngineSpec, ServingPoint, TenantSpec
from .workload import ServingWorkload, read_trace

TOP_KEYS = {"name", "description", "model", "hardware", "gpu_kv_bytes", "engine", "workload", "policies", "sweep",
            "tenants"}
REQUIRED = ("hardware", "policies")
SINGLE_KEYS = ("model", "workload")
TENANT_KEYS = {"name", "model", "workload", "gpu_kv_bytes"}
NESTED_AXES = {"workload": ServingWorkload, "engine": ServingEngineSpec, "policy": ServingPolicySpec}


def _check_axis(source: str, axis: str, values: Any, tenants: bool) -> None:
    field = f"sweep.{axis}"
    if not isinstance(values, list) or not values:
        raise ScenarioError(source, field, "must be a non-empty list", f"write '{axis}: [v1, v2, ...]'")
    head, _, rest = axis.partition(".")
    if tenants and head in ("model", "gpu_kv_bytes"):
        raise ScenarioError(source, field, "a scenario with tenants sets the model and gpu_kv_bytes per tenant",
                            "sweep hardware, workload.<field>, engine.<field> or policy.<field>, or write "
                            "one scenario per tenant list")
    known = (head in ("model", "hardware", "gpu_kv_bytes") and not rest) or (
        head in NESTED_AXES and rest in NESTED_AXES[head].model_fields and rest != "kind")
    if not known:
        raise ScenarioError(source, field, "unknown sweep axis",
                            "use model, hardware, gpu_kv_bytes, workload.<field>, engine.<field> or policy.<field>")


@lru_cache(maxsize=32)
def _trace_longest(path: str) -> tuple[int, int]:
    reqs = read_trace(Path(path))
    longest = max(reqs, key=lambda r: r.prompt_len + r.output_len)
    return longest.prompt_len, longest.output_len


def _validate(source: str, field: str, cls, value: Any):
    if not isinstance(value, Mapping):
        raise ScenarioError(source, field, "must be a mapping", f"write '{field}: {{...}}'")
    try:
        return cls.model_validate(value)
    except ValidationError as e:
        raise pydantic_error(source, field, e) from None


def _workload(source: str, base_dir: Path, value: Any, field: str = "workload") -> ServingWorkload:
    wl = _validate(source, field, ServingWorkload, value)
    if wl.trace is not None and not Path(wl.trace).is_absolute():
        wl = wl.model_copy(update={"trace": str((base_dir / wl.trace).resolve())})
    return wl


def _check_fits(source: str, point: ServingPoint, tenant_fields: bool) -> None:
    for i, tenant in enumerate(point.tenants):
        wl, model = tenant.workload, tenant.model
        prefix = f"tenants[{i}]." if tenant_fields else ""
        if wl.trace is not None:
            prompt, output = _trace_longest(wl.trace)
            field = f"{prefix}workload.trace"
        else:
            prompt, output = wl.prompt_len.upper, wl.output_len.upper
            field = f"{prefix}workload.prompt_len"
        tokens = prompt + output
        if tokens > model.max_positions:
            raise ScenarioError(source, field, f"a request of {prompt} + {output} tokens exceeds "
                                f"{model.name}'s {model.max_positions} positions",
                                "lower the longest prompt_len / output_len")
        limit = point.tenant_max_request_tokens(i)
        if tokens - 1 > limit:
            pool = point.tenant_pool(i)
            fix = (f"lower engine.block_tokens ({point.engine.block_tokens}): one block is larger than the pool"
                   if limit == 0 else f"raise {prefix}gpu_kv_bytes or lower the longest lengths")
            raise ScenarioError(source, field, f"a request of {prompt} + {output} tokens needs more KV than the "
                                f"pool's {limit} tokens ({pool.base_kv_bytes / 1e9:.2f} GB)", fix)


def _kv_bytes(source: str, value: Any, field: str = "gpu_kv_bytes") -> int | None:
    """gpu_kv_bytes as an int; YAML reads `6.0e9` (no sign in the exponent) as a string, so accept that."""
    if value is None:
        return None
    try:
        kv = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError, OverflowError):
        kv = -1.0
    if not kv >= 1 or kv == float("inf") or kv != int(kv):
        raise ScenarioError(source, field, f"must be a whole, positive number of bytes, got {str(value)[:40]!r}",
                            "write e.g. 'gpu_kv_bytes: 6.0e9' or leave it out")
    return int(kv)


def _set_dotted(data: dict, axis: str, value: Any) -> None:
    head, _, rest = axis.partition(".")
    if not rest:
        data[head] = value
    elif head == "policy":
        data["policies"] = [{**p, rest: value} if isinstance(p, Mapping) else p for p in data["policies"]]
    elif head == "workload" and "tenants" in data:
        data["tenants"] = [{**t, "workload": {**t["workload"], rest: value}} for t in data["tenants"]]
    else:
        section = data.get(head) or {}
        data[head] = {**section, rest: value} if isinstance(section, Mapping) else section


def _check_tenants(source: str, data: Mapping) -> None:
    """The shape of a `tenants:` list: mappings with a model and a workload, names distinct."""
    if "tenants" not in data:
        for key in SINGLE_KEYS:
            if key not in data:
                raise ScenarioError(source, key, "missing", f"add '{key}:' (or a 'tenants:' list)")
        return
    clash = [k for k in ("model", "workload", "gpu_kv_bytes") if k in data]
    if clash:
        raise ScenarioError(source, clash[0], "a scenario with tenants sets it per tenant",
                            f"move '{clash[0]}:' into each entry of 'tenants:'")
    tenants = data["tenants"]
    if not isinstance(tenants, list) or not tenants:
        raise ScenarioError(source, "tenants", "must be a non-empty list",
                            "write '- {name: .., model: .., workload: {..}}' per tenant")
    names: dict[str, int] = {}
    for i, t in enumerate(tenants):
        field = f"tenants[{i}]"
        if not isinstance(t, Mapping):
            raise ScenarioError(source, field, "must be a mapping", "write '- {name: .., model: .., workload: {..}}'")
        unknown = sorted(map(str, set(t) - TENANT_KEYS))
        if unknown:
            raise ScenarioError(source, f"{field}.{unknown[0]}", "unknown key",
                                f"use only: {', '.join(sorted(TENANT_KEYS))}")
        for key in ("model", "workload"):
            if t.get(key) is None:
                raise ScenarioError(source, f"{field}.{key}", "missing",
                                    f"give tenant {i} its own '{key}:'" + (
                                        " ({requests: .., rate_rps: .., prompt_len: .., output_len: ..} "
                                        "or {trace: FILE})" if key == "workload" else ""))
        name = t.get("name", t["model"] if isinstance(t["model"], str) else None)
        if not isinstance(name, str) or not name.strip():
            raise ScenarioError(source, f"{field}.name", "missing", "give the tenant a 'name:'")
        if name in names:
            raise ScenarioError(source, f"{field}.name", f"'{name}' is also the name of tenants[{names[name]}]",
                                "give each tenant its own name")
        names[name] = i


def _tenant_specs(source: str, chosen: Mapping, base_dir: Path) -> list[TenantSpec]:
    if "tenants" not in chosen:
        model = resolve_preset(source, "model", chosen["model"], MODELS, ModelSpec)
        return [TenantSpec(name=model.name, model=model, workload=_workload(source, base_dir, chosen["workload"]),
                           gpu_kv_bytes=_kv_bytes(source, chosen.get("gpu_kv_bytes")))]
    out = []
    for i, t in enumerate(chosen["tenants"]):
        field = f"tenants[{i}]"
        model = resolve_preset(source, f"{field}.model", t["model"], MODELS, ModelSpec)
        out.append(TenantSpec(name=str(t.get("name", model.name)), model=model,
                              workload=_workload(source, base_dir, t["workload"], f"{field}.workload"),
                              gpu_kv_bytes=_kv_bytes(source, t.get("gpu_kv_bytes"), f"{field}.gpu_kv_bytes")))
    return out


def points_from_mapping(data: Mapping, source: str, default_name: str, base_dir: Path) -> list[ServingPoint]:
    unknown = sorted(map(str, set(data) - TOP_KEYS))
    if unknown:
        raise ScenarioError(source, unknown[0], "unknown key", f"use only: {', '.join(sorted(TOP_KEYS))}")
    for key in REQUIRED:
        if key not in data:
            raise ScenarioError(source, key, "missing", f"add '{key}:' (see the serving scenario format)")
    _check_tenants(source, data)
    has_tenants = "tenants" in data
    policies = data["policies"]
    if not isinstance(policies, list) or not policies:
        raise ScenarioError(source, "policies", "must be a non-empty list", "write e.g. '- {kind: vllm-swap}'")
    kinds = ", ".join(k.value for k in ServingPolicyKind)
    for idx, pol in enumerate(policies):
        if not isinstance(pol, Mapping) or "kind" not in pol:
            raise ScenarioError(source, f"policies[{idx}]", "each policy needs a kind",
                                f"write '- {{kind: ...}}' with kind one of: {kinds}")
        if not isinstance(pol["kind"], str) or pol["kind"] not in {k.value for k in ServingPolicyKind}:
            raise ScenarioError(source, f"policies[{idx}].kind", f"unknown policy '{pol['kind']}'",
                                f"use one of: {kinds}")
    sweep = data.get("sweep") or {}
    if not isinstance(sweep, Mapping):
        raise ScenarioError(source, "sweep", "must be a mapping of axis: [values]",
                            "write e.g. 'workload.rate_rps: [1, 2, 4]'")
    for axis, values in sweep.items():
        _check_axis(source, str(axis), values, has_tenants)
    name = str(data.get("name", default_name))
    axes = [str(a) for a in sweep]
    policies = data.get("policies")
    count = math.prod(len(v) for v in sweep.values()) * (len(policies) if isinstance(policies, list) else 1)
    if count > MAX_POINTS:  # before anything is expanded: a sweep of millions would eat memory first
        sizes = " x ".join(str(len(v)) for v in sweep.values())
        raise ScenarioError(source, "sweep", f"{count} points ({sizes} values x policies) exceed the limit of "
                            f"{MAX_POINTS}", "narrow the sweep, or split it into several files")
    points: list[ServingPoint] = []
    for combo in itertools.product(*sweep.values()):
        chosen = copy.deepcopy(dict(data))
        for axis, value in zip(axes, combo, strict=True):
            _set_dotted(chosen, axis, value)
        tenants = _tenant_specs(source, chosen, base_dir)
        hardware = resolve_preset(source, "hardware", chosen["hardware"], HARDWARE, HardwareSpec)
        engine = _validate(source, "engine", ServingEngineSpec, chosen.get("engine") or {})
        for idx, pol in enumerate(chosen["policies"]):
            policy = _validate(source, f"policies[{idx}]", ServingPolicySpec, pol)
            try:
                point = ServingPoint(scenario=name, hardware=hardware, engine=engine, policy=policy,
                                     tenants=tuple(tenants))
            except ValidationError as e:
                msg = e.errors()[0]["msg"].removeprefix("Value error, ")
                if has_tenants:
                    field = "tenants"
                    fix = ("lower the tenants' gpu_kv_bytes" if "gpu_kv_bytes" in msg else
                           "drop a tenant, pick smaller models, or a GPU with more memory")
                else:
                    field = "gpu_kv_bytes" if "gpu_kv_bytes" in msg else "hardware"
                    fix = "lower gpu_kv_bytes, or pick a larger GPU or a smaller model"
                raise ScenarioError(source, field, msg, fix) from None
            _check_fits(source, point, has_tenants)
            points.append(point)
    return points


def load_serving_points(paths: Iterable[str | Path]) -> list[ServingPoint]:
    """All points of all serving scenario files, in file order."""
    points: list[ServingPoint] = []
    for p in paths:
        path = Path(p)
        points += points_from_mapping(load_yaml(path), str(path), path.stem, path.parent)
    return points
