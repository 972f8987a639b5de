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
import functools
import itertools
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import ValidationError

from ..errors import ProfileError, ScenarioError
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
from .yamlsafe import load_yaml_file, one_line, short_repr

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
        fix = f"remove '{one_line(loc, 60)}' or check its spelling{hint}"
    elif typ == "missing":
        fix = f"add '{loc}'"
    else:
        fix = f"correct {one_line(field, 80)} (got {short_repr(first.get('input'))})"
    return ScenarioError(source, one_line(field, 80), one_line(first["msg"].removeprefix("Value error, ")), fix)


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
            profiled = _hardware_from_profile(source, field, value)
            if profiled is not None:
                return profiled
        extra = " or a calibrated profile (profiles/NAME.yaml, or a .yaml path)" if cls is HardwareSpec else ""
        raise ScenarioError(source, field, f"unknown preset {short_repr(value)}",
                            f"use one of: {', '.join(presets)}{extra}")
    if not isinstance(value, Mapping):
        raise ScenarioError(source, field, f"expected a preset name or a mapping, got {type(value).__name__}",
                            "write a preset name or a mapping of fields")
    value = dict(value)
    if cls is HardwareSpec and "profile" in value:
        raise ScenarioError(source, f"{field}.profile", "a profile is named as the whole hardware, not as a field",
                            f"write '{field}: PATH.yaml' (or a profile's name)")
    base: dict = {}
    if "preset" in value:
        name = value.pop("preset")
        if not isinstance(name, str) or name.lower() not in presets:
            raise ScenarioError(source, f"{field}.preset", f"unknown preset {short_repr(name)}",
                                f"use one of: {', '.join(presets)}")
        base = presets[name.lower()].model_dump(mode="json")
        value.setdefault("name", f"{base['name']}*" if value else base["name"])
    try:
        return cls.model_validate(_deep_merge(base, value))
    except ValidationError as e:
        raise pydantic_error(source, field, e) from None


def _hardware_from_profile(source: str, field: str, name: str) -> HardwareSpec | None:
    """A hardware spec from a calibrated profile named like a preset, or None if there is none."""
    from .costs.profile import find_profile, load_profile

    relative = Path(name)
    if not relative.is_absolute() and relative.suffix in (".yaml", ".yml"):
        # a relative path is read from the scenario's folder first (as serving traces are), then
        # from the working directory
        beside = Path(source).parent / relative
        if beside.is_file():
            name = str(beside)
    try:
        path = find_profile(name)
    except ProfileError:
        if relative.suffix in (".yaml", ".yml"):
            raise ScenarioError(source, field, f"{short_repr(name)}: no such profile file (read from the scenario's "
                                "folder, then the working directory)",
                                "give the path of a profile written by `hssim validate --save-profile`, or "
                                "name a preset") from None
        return None
    try:
        spec = load_profile(path).hardware_spec()
    except ProfileError as e:
        raise ScenarioError(source, field, one_line(str(e).split("; fix:")[0]),
                            "name a hardware preset or a profile written by `hssim validate`") from None
    except ValidationError as e:
        raise pydantic_error(str(path), "hardware", e) from None
    except (ValueError, TypeError, KeyError, ArithmeticError) as e:
        raise ScenarioError(source, field, f"{path}: not a usable hssim profile ({one_line(e, 80)})",
                            "name a hardware preset or a profile written by `hssim validate`") from None
    return spec.model_copy(update={"profile": str(Path(path).resolve())})


def load_yaml(path: Path) -> dict:
    """A scenario file's top-level mapping, read with the bounds of `yamlsafe`."""
    source = str(path)
    data = load_yaml_file(path)
    if not isinstance(data, dict):
        raise ScenarioError(source, "file", "a scenario must be a YAML mapping",
                            "start with keys such as model:, hardware:, workload:, policies:")
    for key in data:
        if not isinstance(key, str):
            raise ScenarioError(source, short_repr(key), "a top-level key must be a name",
                                "use keys such as model:, hardware:, workload:, policies:")
    return data


#: most points a sweep may expand to unless the caller raises it (`hssim sweep --max-points`)
MAX_POINTS = 20_000


def count_points(data: Mapping) -> int:
    """An upper bound on the points `points_from_mapping` makes of `data` (axes x policies),
    computed without expanding anything; 0 when the file is too malformed to say."""
    sweep = data.get("sweep") or {}
    policies = data.get("policies")
    n = len(policies) if isinstance(policies, list) else 0
    if isinstance(sweep, Mapping):
        for values in sweep.values():
            n *= len(values) if isinstance(values, list) else 1
    return n


@functools.cache
def _field_adapter(cls, name: str):
    from pydantic import TypeAdapter

    info = cls.model_fields[name]
    return TypeAdapter(Annotated[info.annotation, info])


def _check_field(source: str, where: str, cls, name: str, value: Any) -> None:
    """Validate one value of `cls.name` on its own (a sweep value or a policy default)."""
    try:
        _field_adapter(cls, name).validate_python(value)
    except ValidationError as e:
        first = e.errors()[0]
        raise ScenarioError(source, where, one_line(first["msg"].removeprefix("Value error, ")),
                            f"correct it (got {short_repr(value)})") from None


def _resolver(source: str, field: str, presets, cls):
    """`resolve_preset` for one field, each distinct value resolved once."""
    cache: dict[str, Any] = {}

    def resolve(value: Any):
        key = repr(value)
        if key not in cache:
            cache[key] = resolve_preset(source, field, value, presets, cls)
        return cache[key]

    return resolve


def points_from_mapping(data: Mapping, source: str, default_name: str,
                        max_points: int | None = MAX_POINTS) -> list[PointSpec]:
    """Every point of a scenario mapping. Each value is checked where it is written (a policy's
    own fields even where a sweep axis overrides them), and the number of points is bounded
    by `max_points` before anything is expanded (None: no bound)."""
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        bad = sorted(unknown, key=str)[0]
        raise ScenarioError(source, short_repr(bad) if not isinstance(bad, str) else one_line(bad, 60),
                            "unknown key", f"use only: {', '.join(sorted(TOP_KEYS))}")
    for key in REQUIRED:
        if key not in data:
            raise ScenarioError(source, key, "missing", f"add '{key}:' (see README, Scenario format)")
    name = data.get("name", default_name)
    if not isinstance(name, str | int | float) or isinstance(name, bool):
        raise ScenarioError(source, "name", f"must be a short text, got {type(name).__name__}",
                            "write e.g. 'name: my-scenario'")
    name = one_line(str(name), 120)
    parse_uncertainty(data.get("uncertainty"), source)  # checked here, used by `hssim sensitivity`
    sweep = data.get("sweep") or {}
    if not isinstance(sweep, Mapping):
        raise ScenarioError(source, "sweep", "must be a mapping of axis: [values]",
                            "write e.g. 'workload.prompt_len: [256, 512]'")
    axes: list[tuple[str, list]] = []
    for axis, values in sweep.items():
        field = f"sweep.{one_line(axis, 60)}"
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
    count = count_points(data)
    if max_points is not None and count > max_points:
        sizes = " x ".join(str(len(v)) for _, v in axes) or "1"
        raise ScenarioError(source, "sweep", f"{count} points ({sizes} values x {len(policies)} policies) exceed "
                            f"the limit of {max_points}",
                            "narrow the sweep, split it into several files, or raise the limit (--max-points)")
    defaults = data.get("policy_defaults") or {}
    if not isinstance(defaults, Mapping):
        raise ScenarioError(source, "policy_defaults", "must be a mapping", "write e.g. {num_gpu_batches: 4}")
    for key, value in defaults.items():
        where = f"policy_defaults.{one_line(key, 60)}"
        if key == "kind":
            raise ScenarioError(source, where, "defaults cannot set the kind",
                                "give each policy its own kind under policies:")
        if key not in PolicySpec.model_fields:
            close = difflib.get_close_matches(str(key), list(PolicySpec.model_fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ScenarioError(source, where, "unknown policy field", f"remove it or check its spelling{hint}")
        _check_field(source, where, PolicySpec, key, value)
    wl = data["workload"]
    if not isinstance(wl, Mapping):
        raise ScenarioError(source, "workload", "must be a mapping",
                            "write {batch: .., prompt_len: .., gen_len: ..}")
    # every sweep value on its own, where it is written
    for axis, values in axes:
        head, _, rest = axis.partition(".")
        for i, value in enumerate(values):
            where = f"sweep.{axis}[{i}]"
            if head == "workload":
                _check_field(source, where, WorkloadSpec, rest, value)
            elif head == "policy":
                _check_field(source, where, PolicySpec, rest, value)

    # each policy as written (with the defaults it reads), before any axis overrides a field
    kinds = ", ".join(k.value for k in PolicyKind)
    written: list[tuple[PolicyKind, frozenset[str], dict]] = []
    for idx, pol in enumerate(policies):
        field = f"policies[{idx}]"
        if not isinstance(pol, Mapping) or "kind" not in pol:
            raise ScenarioError(source, field, "each policy needs a kind",
                                f"write '- {{kind: ...}}' with kind one of: {kinds}")
        kind_value = pol["kind"]
        try:
            kind = PolicyKind(kind_value)
        except (ValueError, TypeError):
            raise ScenarioError(source, f"{field}.kind", f"unknown policy {short_repr(kind_value)}",
                                f"use one of: {kinds}") from None
        reads = POLICY_PARAMS[kind] | COMMON_POLICY_PARAMS
        ignored = sorted(str(k) for k in pol if k != "kind" and k in PolicySpec.model_fields and k not in reads)
        if ignored:
            uses = ", ".join(sorted(POLICY_PARAMS[kind])) or "none"
            raise ScenarioError(source, f"{field}.{ignored[0]}", f"the {kind.value} policy does not read it",
                                f"remove it (fields of {kind.value}: {uses}, plus the common block and "
                                "placement fields)")
        merged = {**{k: v for k, v in defaults.items() if k in reads}, **pol}
        try:
            PolicySpec.model_validate(merged)
        except ValidationError as e:
            raise pydantic_error(source, field, e) from None
        written.append((kind, reads, merged))
    for axis, values in axes:
        param = axis.split(".", 1)[1] if axis.startswith("policy.") else None
        if param is not None and len(values) > 1 and not any(param in reads for _, reads, _ in written):
            kinds = ", ".join(sorted({kind for kind, _, _ in written}))
            raise ScenarioError(source, f"sweep.{axis}", f"no policy of this scenario reads {param} "
                                f"(policies: {kinds}), so the axis would change nothing",
                                f"drop the axis, or add a policy kind that reads {param}")

    model_of = _resolver(source, "model", MODELS, ModelSpec)
    hardware_of = _resolver(source, "hardware", HARDWARE, HardwareSpec)
    points: list[PointSpec] = []
    seen: set[tuple[str, str, str, str]] = set()
    names = [a for a, _ in axes]
    # distinct values are validated once: a sweep repeats each of them many times
    workloads: dict[str, WorkloadSpec] = {}
    policy_cache: dict[tuple[int, str], PolicySpec] = {}
    json_of: dict[int, str] = {}

    def as_json(spec) -> str:  # specs are cached, so one dump per distinct object
        if id(spec) not in json_of:
            json_of[id(spec)] = spec.model_dump_json()
        return json_of[id(spec)]

    for combo in itertools.product(*[v for _, v in axes]) if axes else [()]:
        chosen = dict(zip(names, combo, strict=True))
        model = model_of(chosen.get("model", data["model"]))
        hardware = hardware_of(chosen.get("hardware", data["hardware"]))
        wl_values = {**wl, **{a.split(".", 1)[1]: v for a, v in chosen.items() if a.startswith("workload.")}}
        wl_key = repr(sorted(wl_values.items(), key=lambda kv: str(kv[0])))
        workload = workloads.get(wl_key)
        if workload is None:
            try:
                workload = workloads[wl_key] = WorkloadSpec.model_validate(wl_values)
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
        for idx, (_kind, reads, merged) in enumerate(written):
            field = f"policies[{idx}]"
            over = {a.split(".", 1)[1]: v for a, v in chosen.items()
                    if a.startswith("policy.") and a.split(".", 1)[1] in reads}
            pol_key = (idx, repr(over))
            policy = policy_cache.get(pol_key)
            if policy is None:
                try:
                    policy = policy_cache[pol_key] = PolicySpec.model_validate({**merged, **over})
                except ValidationError as e:
                    raise pydantic_error(source, f"{field} (with the sweep's values)", e) from None
            key = (as_json(model), as_json(hardware), as_json(workload), as_json(policy))
            if key in seen:  # an axis a policy does not read yields the same point
                continue
            try:
                point = PointSpec(scenario=name, model=model, hardware=hardware, workload=workload, policy=policy)
            except ValidationError as e:
                first = e.errors()[0]
                msg = first["msg"].removeprefix("Value error, ")
                fix = ("lower policy.split_tokens" if "split_tokens" in msg
                       else "make gpu_batch_size x num_gpu_batches equal workload.batch")
                raise ScenarioError(source, f"{field} with workload", msg, fix) from None
            seen.add(key)
            points.append(point)
    return points


def load_points(paths: Iterable[str | Path], max_points: int | None = MAX_POINTS,
                each: Callable[[str, list[PointSpec]], None] | None = None) -> list[PointSpec]:
    """All points of all scenario files, in file order; at most `max_points` in all (None: no bound).
    `each(path, points)` is called with each file's points as it is read (to check them)."""
    points: list[PointSpec] = []
    for p in paths:
        path = Path(p)
        left = None if max_points is None else max_points - len(points)
        if left is not None and left <= 0:
            raise ScenarioError(str(path), "sweep", f"the files before it already hold {len(points)} points, the "
                                "limit", "run fewer files at once, or raise the limit (--max-points)")
        file_points = points_from_mapping(load_yaml(path), str(path), path.stem, left)
        if each is not None:
            each(str(path), file_points)
        points += file_points
    return points
