"""One call per point: build the schedule, replay it, measure it, make a result row."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from .costs import CostModel, RooflineCostModel
from .engine import SimResult, simulate
from .metrics import run_metrics
from .policies import build_schedule
from .schedule import Schedule
from .specs import PointSpec

#: the columns that identify a point in a results table, in order
POINT_COLUMNS = [
    "scenario", "model", "hardware", "policy", "policy_label", "batch", "prompt_len", "gen_len",
    "gpu_batch_size", "num_gpu_batches", "weights_gpu_percent", "cache_gpu_percent", "kv_ratio",
    "cpu_attention", "pinned", "cache_pinned", "block_tokens", "mini_batching", "split_tokens", "split_rule",
    "step_barrier",
]


@dataclass(frozen=True)
class PointRun:
    point: PointSpec
    schedule: Schedule
    result: SimResult
    metrics: dict[str, float]


@functools.cache
def model_fingerprint() -> str:
    """Hash of the simulator's own source (sim/: every cost model, calibrated ones included).

    Part of every point key, so a sweep rerun after the model changed recomputes its
    points instead of reusing results the old code made.
    """
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256(__version__.encode())
    for path in sorted((root / "sim").rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def point_key(point: PointSpec) -> str:
    """Stable key of a fully resolved point under this hssim version and model code (and, for
    hardware read from a calibrated profile, that profile's contents: a recalibration changes it)."""
    profile = point.hardware.profile
    digest = _file_digest(profile, Path(profile).stat().st_mtime_ns) if profile and Path(profile).exists() else ""
    blob = f"{model_fingerprint()}\n{digest}\n{point.model_dump_json()}".encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run_point(point: PointSpec, cost: CostModel | None = None, engine: str = "list") -> PointRun:
    """Simulate one point; raises MemoryPlanError if its schedule does not fit.

    engine: "list" (the SimPy model's timeline, computed directly by a compiled kernel) or
    "simpy" (the SimPy model itself).
    Hardware read from a calibrated profile is priced by that profile (with its
    contention blend) unless `cost` is given.
    """
    schedule = build_schedule(point)
    if cost is None and point.hardware.profile:
        from .costs.contention import simulate_profiled
        from .costs.profile import load_profile

        result = simulate_profiled(schedule, load_profile(point.hardware.profile), point.model)
    else:
        result = simulate(schedule, cost or RooflineCostModel(point.hardware), engine=engine)
    return PointRun(point, schedule, result, run_metrics(result))


def scaled_point(point: PointSpec, layers: int | None) -> PointSpec:
    """`point` with only the first `layers` layers of its model (the real per-layer shapes).

    A 66B or 175B layer can so be simulated, or measured on one GPU, at its true size.
    Raises ValueError when `layers` is not between 1 and the model's layer count.
    """
    if layers is None or layers == point.model.layers:
        return point
    if not 1 <= layers <= point.model.layers:
        raise ValueError(f"--layers {layers}: the model has {point.model.layers} layers; "
                         f"fix: use 1..{point.model.layers}")
    model = point.model.model_copy(update={"layers": layers})
    return PointSpec(scenario=point.scenario, model=model, hardware=point.hardware,
                     workload=point.workload, policy=point.policy)


def point_columns(point: PointSpec) -> dict[str, Any]:
    pol, wl = point.policy, point.workload
    return {
        "scenario": point.scenario,
        "model": point.model.name,
        "hardware": point.hardware.name,
        "policy": pol.kind.value,
        "policy_label": pol.label,
        "batch": wl.batch,
        "prompt_len": wl.prompt_len,
        "gen_len": wl.gen_len,
        "gpu_batch_size": point.gpu_batch_size,
        "num_gpu_batches": pol.num_gpu_batches,
        "weights_gpu_percent": pol.weights_gpu_percent,
        "cache_gpu_percent": pol.cache_gpu_percent,
        "kv_ratio": pol.kv_ratio,
        "cpu_attention": pol.cpu_attention,
        "pinned": pol.pinned,
        "cache_pinned": pol.cache_pinned,
        "block_tokens": pol.block_tokens,
        "mini_batching": pol.mini_batching.value,
        "split_tokens": pol.split_tokens,
        "split_rule": pol.split_rule.value,
        "step_barrier": pol.step_barrier,
    }


def result_row(point: PointSpec, metrics: dict[str, float] | None, error: str | None = None,
               status: str | None = None) -> dict[str, Any]:
    """One results-table row: the point's columns, its status, its metrics or its error.

    status: `ok`, `infeasible` (the schedule does not fit in memory) or `failed`.
    """
    row = point_columns(point)
    row["status"] = status or ("ok" if error is None else "failed")
    row["error"] = error or ""
    row.update(metrics or {})
    row["point_key"] = point_key(point)
    row["point_json"] = point.model_dump_json()
    return row
