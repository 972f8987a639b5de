"""One call per point: build the schedule, replay it, measure it, make a result row."""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from .costs import CostModel, RooflineCostModel
from .engine import SimResult, simulate
from .metrics import METRIC_COLUMNS, run_metrics
from .policies import build_schedule
from .schedule import Schedule, Stream
from .specs import POLICY_PARAMS, PointSpec, PolicyKind

if TYPE_CHECKING:
    import pandas as pd

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


#: most ops one (step, layer, GPU batch) of the block schedule issues: weight parts (2), loads of
#: K,V, activations and token ids (3), a rebuild, attention (4 with CPU attention: QKV, out, in,
#: attention), FFN, LM head, stores of K,V and activations (2); checked by tests/test_bad_input.py
OPS_PER_ITEM = 14


def estimate_ops(point: PointSpec) -> int:
    """An upper bound on the ops of `point`'s schedule, known before building it."""
    return point.workload.gen_len * point.model.layers * point.policy.num_gpu_batches * OPS_PER_ITEM


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


def throughput_bound_tok_s(point: PointSpec, cost: CostModel | None = None) -> float | None:
    """An upper bound on `run_point(point).metrics["throughput_tok_s"]`, from the busiest
    stream's total work (ops on one stream run one at a time, so the makespan is at least
    that), priced per payload with no op emitted or replayed. None where durations depend on
    more than an op's payload (a calibrated profile's contention blend, or a `cost` without
    `sizes_only`). Raises `MemoryPlanError` as `run_point` does."""
    if cost is None:
        if point.hardware.profile:
            return None
        cost = RooflineCostModel(point.hardware)
    if not getattr(cost, "sizes_only", False):
        return None
    from .costs import payload_durations_ns
    from .policies.block import payload_counts

    payloads, counts = payload_counts(point)
    stream_idx = {s: i for i, s in enumerate(Stream)}
    streams = np.fromiter((stream_idx[p[0]] for p in payloads), dtype=np.int64, count=len(payloads))
    busy_ns = np.zeros(len(Stream), dtype=np.int64)  # integers: exactly what the replay sums
    np.add.at(busy_ns, streams, counts * payload_durations_ns(payloads, cost))
    longest_ns = int(busy_ns.max(initial=0))
    if longest_ns <= 0:
        return None
    return point.workload.batch * point.workload.gen_len / (longest_ns / 1e9)


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


#: policy fields only some kinds read: a row of a kind that does not read one holds null there
POLICY_FIELD_COLUMNS = ("kv_ratio", "cpu_attention", "cache_pinned", "block_tokens", "mini_batching",
                        "split_tokens", "split_rule", "step_barrier")
#: integer columns (counts and bytes), nullable where a point did not run
INT_COLUMNS = ("batch", "prompt_len", "gen_len", "gpu_batch_size", "num_gpu_batches", "block_tokens", "split_tokens",
               "h2d_bytes", "d2h_bytes", "peak_gpu_bytes", "peak_host_bytes", "planned_gpu_bytes",
               "planned_host_bytes", "ops")
BOOL_COLUMNS = ("cpu_attention", "pinned", "cache_pinned", "step_barrier")


def kvpr_split(point: PointSpec) -> tuple[int | None, str]:
    """KVPR's split as a results row records it: (`l`, rule). A fixed `l` is rule `fixed`; the
    closed form's `l` is the one it chose for this point; the per-step rule has no single `l`."""
    from .policies.kvpr import closed_form_split_for

    pol = point.policy
    if pol.split_tokens is not None:
        return pol.split_tokens, "fixed"
    if pol.split_rule.value == "closed-form":
        return closed_form_split_for(point.model, point.hardware, point.workload.prompt_len), "closed-form"
    return None, pol.split_rule.value


def point_columns(point: PointSpec) -> dict[str, Any]:
    """The columns that identify a point; null for the policy fields its kind does not read
    (`POLICY_PARAMS`), and for KVPR the split it ran with (`kvpr_split`)."""
    pol, wl = point.policy, point.workload
    row = {
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
    reads = POLICY_PARAMS[pol.kind]
    for name in POLICY_FIELD_COLUMNS:
        if name not in reads:
            row[name] = None
    if pol.kind is PolicyKind.kvpr:
        row["split_tokens"], row["split_rule"] = kvpr_split(point)
    return row


def result_row(point: PointSpec, metrics: dict[str, float] | None, error: str | None = None,
               status: str | None = None) -> dict[str, Any]:
    """One results-table row: the point's columns, its status, its metrics or its error.

    status: `ok`, `infeasible` (the schedule does not fit in memory) or `failed`.
    """
    row = point_columns(point)
    row["status"] = status or ("ok" if error is None else "failed")
    row["error"] = error or None
    row.update(metrics or {})
    row["point_key"] = point_key(point)
    row["point_json"] = point.model_dump_json()
    return row


def results_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Results rows as a typed table: nullable integers for counts and bytes, nullable booleans,
    null (not '') for a missing error."""
    import pandas as pd

    df = pd.DataFrame(rows)
    for col in METRIC_COLUMNS:  # a table where no point ran still has every metric column, null
        if col not in df.columns:
            df[col] = math.nan
    for col in INT_COLUMNS:
        if col in df.columns:
            df[col] = pd.array([None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
                                for v in df[col]], dtype="Int64")
    for col in BOOL_COLUMNS:
        if col in df.columns:
            df[col] = pd.array([None if v is None or (isinstance(v, float) and math.isnan(v)) else bool(v)
                                for v in df[col]], dtype="boolean")
    if "error" in df.columns:
        df["error"] = df["error"].map(lambda v: None if v is None or v == "" or (isinstance(v, float) and
                                                                                 math.isnan(v)) else v)
    return df


@functools.cache
def provenance() -> dict[str, str]:
    """The hssim version and, where the package sits in a git checkout, its commit (`+dirty`
    when the work tree has changes): what a results file records of the code that made it."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    out = {"hssim_version": __version__, "hssim_commit": "unknown"}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        out["hssim_commit"] = commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out
