"""Scenario files: YAML in, fully resolved points out.

A scenario names (or spells out) a model, a hardware box, a workload and a list of
policies, and may declare sweep axes whose cartesian product is run::

    name: hybridserve-opt30b
    model: opt-30b                       # preset, or {preset: opt-30b, layers: 8}, or a full spec
    hardware: rtx4090-pcie4              # preset, or {preset: ..., link: {h2d_pinned_Bps: 2.0e10}}
    workload: {batch: 128, prompt_len: 512, gen_len: 128}
    policy_defaults: {num_gpu_batches: 8}
    policies:
      - {kind: kv-only}
      - {kind: hybrid, kv_ratio: 0.5}
    sweep:
      workload.prompt_len: [256, 512, 1024]
      policy.kv_ratio: [0.0, 0.5, 1.0]   # applies to the policies that read kv_ratio
    uncertainty:                         # optional, for `hssim sensitivity` (see sim/uncertainty.py)
      link.h2d_pinned_Bps: [2.0e10, 2.6e10]

Every problem is a `ScenarioError` naming the file, the field and the fix.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ScenarioError
from .presets import HARDWARE, MODELS
from .specs import (
    COMMON_POLICY_PARAMS,
    POLICY_PARAMS,
    HardwareSpec,
    ModelSpec,
    PointSpec,
    PolicyKind,
    PolicySpec,
    WorkloadSpec,
)
from .uncertainty import parse_uncertainty

TOP_KEYS = {"name", "description", "model", "hardware", "workload", "policies", "policy_defaults", "sweep",
            "uncertainty"}
REQUIRED = ("model", "hardware", "workload", "policies")


def pydantic_error(source: str, prefix: str, err: ValidationError) -> ScenarioError:
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")  # typos first
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"])
    field = f"{prefix}.{loc}" if loc else prefix
    typ = first["type"]
    if typ == "extra_forbidden":
        known = [e["loc"][-1] for e in errors if e["type"] == "missing"]
        close = difflib.get_close_matches(str(first["loc"][-1]), [str(k) for k in known], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        fix = f"remove '{loc}' or check its spelling{hint}"
    elif typ == "missing":
        fix = f"add '{loc}'"
    else:
        fix = f"correct {field} (got {first.get('input')!r})"
    return ScenarioError(source, field, first["msg"], fix)


def _deep_merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def resolve_preset(source: str, field: str, value: Any, presets: Mapping[str, Any], cls):
    if isinstance(value, str):
        if value.lower() in presets:
            return presets[value.lower()]
        if cls is HardwareSpec:
            profiled = _hardware_from_profile(value)
            if profiled is not None:
                return profiled
        extra = " or a calibrated profile (profiles/NAME.yaml, or a .yaml path)" if cls is HardwareSpec else ""
        raise ScenarioError(source, field, f"unknown preset '{value}'", f"use one of: {', '.join(presets)}{extra}")
    if not isinstance(value, Mapping):
        raise ScenarioError(source, field, f"expected a preset name or a mapping, got {type(value).__name__}",
                            "write a preset name or a mapping of fields")
    value = dict(value)
    base: dict = {}
    if "preset" in value:
        name = value.pop("preset")
        if not isinstance(name, str) or name.lower() not in presets:
            raise ScenarioError(source, f"{field}.preset", f"unknown preset '{name}'",
                                f"use one of: {', '.join(presets)}")
        base = presets[name.lower()].model_dump(mode="json")
        value.setdefault("name", f"{base['name']}*" if value else base["name"])
    try:
        return cls.model_validate(_deep_merge(base, value))
    except ValidationError as e:
        raise pydantic_error(source, field, e) from None


def _hardware_from_profile(name: str) -> HardwareSpec | None:
    """A hardware spec from a calibrated profile named like a preset, or None if there is none."""
    from .costs.profile import ProfileError, find_profile, load_profile

    try:
        path = find_profile(name)
    except ProfileError:
        return None
    spec = load_profile(path).hardware_spec()
    return spec.model_copy(update={"profile": str(Path(path).resolve())})


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: Path) -> dict:
    source = str(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ScenarioError(source, "file", f"cannot read it ({e.strerror})", "check the path") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "file"
        raise ScenarioError(source, where, f"not valid YAML ({getattr(e, 'problem', e)})",
                            "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise ScenarioError(source, "file", "a scenario must be a YAML mapping",
                            "start with keys such as model:, hardware:, workload:, policies:")
    return data


def points_from_mapping(data: Mapping, source: str, default_name: str) -> list[PointSpec]:
    unknown = set(data) - TOP_KEYS
    if unknown:
        bad = sorted(unknown)[0]
        raise ScenarioError(source, bad, "unknown key", f"use only: {', '.join(sorted(TOP_KEYS))}")
    for key in REQUIRED:
        if key not in data:
            raise ScenarioError(source, key, "missing", f"add '{key}:' (see README, Scenario format)")
    name = str(data.get("name", default_name))
    parse_uncertainty(data.get("uncertainty"), source)  # checked here, used by `hssim sensitivity`
    sweep = data.get("sweep") or {}
    if not isinstance(sweep, Mapping):
        raise ScenarioError(source, "sweep", "must be a mapping of axis: [values]",
                            "write e.g. 'workload.prompt_len: [256, 512]'")
    axes: list[tuple[str, list]] = []
    for axis, values in sweep.items():
        field = f"sweep.{axis}"
        if not isinstance(values, list) or not values:
            raise ScenarioError(source, field, "must be a non-empty list", f"write '{axis}: [v1, v2, ...]'")
        head, _, rest = str(axis).partition(".")
        known = (
            (head in ("model", "hardware") and not rest)
            or (head == "workload" and rest in WorkloadSpec.model_fields)
            or (head == "policy" and rest in PolicySpec.model_fields and rest != "kind")
        )
        if not known:
            raise ScenarioError(source, field, "unknown sweep axis",
                                "use model, hardware, workload.<field> or policy.<field>")
        axes.append((str(axis), values))

    policies = data["policies"]
    if not isinstance(policies, list) or not policies:
        raise ScenarioError(source, "policies", "must be a non-empty list",
                            "write e.g. '- {kind: kv-only}'")
    defaults = data.get("policy_defaults") or {}
    if not isinstance(defaults, Mapping):
        raise ScenarioError(source, "policy_defaults", "must be a mapping", "write e.g. {num_gpu_batches: 4}")

    points: list[PointSpec] = []
    seen: set[str] = set()
    names = [a for a, _ in axes]
    for combo in itertools.product(*[v for _, v in axes]) if axes else [()]:
        chosen = dict(zip(names, combo, strict=True))
        model = resolve_preset(source, "model", chosen.get("model", data["model"]), MODELS, ModelSpec)
        hardware = resolve_preset(source, "hardware", chosen.get("hardware", data["hardware"]),
                                   HARDWARE, HardwareSpec)
        wl = data["workload"]
        if not isinstance(wl, Mapping):
            raise ScenarioError(source, "workload", "must be a mapping",
                                "write {batch: .., prompt_len: .., gen_len: ..}")
        wl = {**wl, **{a.split(".", 1)[1]: v for a, v in chosen.items() if a.startswith("workload.")}}
        try:
            workload = WorkloadSpec.model_validate(wl)
        except ValidationError as e:
            raise pydantic_error(source, "workload", e) from None
        positions = workload.prompt_len + workload.gen_len - 1  # the last token is generated, never fed in
        if positions > model.max_positions:
            swept = any(a.startswith("workload.") for a in chosen)
            where = "workload (with the sweep's values)" if swept else "workload"
            raise ScenarioError(source, where, f"prompt_len {workload.prompt_len} + gen_len {workload.gen_len} - 1 = "
                                f"{positions} positions exceed {model.name}'s {model.max_positions}",
                                f"keep prompt_len + gen_len <= {model.max_positions + 1}, or raise the model's "
                                "max_positions")
        for idx, pol in enumerate(policies):
            field = f"policies[{idx}]"
            if not isinstance(pol, Mapping) or "kind" not in pol:
                kinds = ", ".join(k.value for k in PolicyKind)
                raise ScenarioError(source, field, "each policy needs a kind",
                                    f"write '- {{kind: ...}}' with kind one of: {kinds}")
            kind_value = pol["kind"]
            try:
                kind = PolicyKind(kind_value)
            except ValueError:
                raise ScenarioError(source, f"{field}.kind", f"unknown policy '{kind_value}'",
                                    f"use one of: {', '.join(k.value for k in PolicyKind)}") from None
            reads = POLICY_PARAMS[kind] | COMMON_POLICY_PARAMS
            ignored = sorted(k for k in pol if k != "kind" and k in PolicySpec.model_fields and k not in reads)
            if ignored:
                uses = ", ".join(sorted(POLICY_PARAMS[kind])) or "none"
                raise ScenarioError(source, f"{field}.{ignored[0]}", f"the {kind.value} policy does not read it",
                                    f"remove it (fields of {kind.value}: {uses}, plus the common block and "
                                    "placement fields)")
            over = {a.split(".", 1)[1]: v for a, v in chosen.items()
                    if a.startswith("policy.") and a.split(".", 1)[1] in reads}
            merged = {**{k: v for k, v in defaults.items() if k in reads or k not in PolicySpec.model_fields},
                      **pol, **over}
            try:
                policy = PolicySpec.model_validate(merged)
            except ValidationError as e:
                raise pydantic_error(source, field, e) from None
            try:
                point = PointSpec(scenario=name, model=model, hardware=hardware, workload=workload, policy=policy)
            except ValidationError as e:
                first = e.errors()[0]
                msg = first["msg"].removeprefix("Value error, ")
                raise ScenarioError(source, f"{field} with workload", msg,
                                    "make gpu_batch_size x num_gpu_batches equal workload.batch") from None
            key = point.model_dump_json()
            if key not in seen:  # an axis a policy does not read yields the same point
                seen.add(key)
                points.append(point)
    return points


def load_points(paths: Iterable[str | Path]) -> list[PointSpec]:
    """All points of all scenario files, in file order."""
    points: list[PointSpec] = []
    for p in paths:
        path = Path(p)
        points += points_from_mapping(load_yaml(path), str(path), path.stem)
    return points
