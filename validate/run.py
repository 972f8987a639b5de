"""One validation run: calibrate (or load a profile), measure the set, simulate it, compare.

Nothing here draws or writes a report (`report` does); `run_validation` returns
the joined op table, the per-point and per-step errors and the timelines.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..sim.costs import RooflineCostModel
from ..sim.costs.contention import simulate_profiled
from ..sim.costs.profile import HardwareProfile, ProfiledCostModel, load_profile
from ..sim.engine import simulate
from ..sim.specs import PointSpec
from .calibrate import measure_cold_dispatch, measure_dispatch, profile_from_bench
from .compare import join_ops, overlap, point_errors, repeat_spread
from .device import DeviceInfo, device_info
from .measure import WeightCache, measure
from .microbench import BenchResults, run_microbenchmarks
from .probe import drift_probe, drift_ratios
from .suite import ValidationSet, validation_set


@dataclass
class PointOutcome:
    point: PointSpec
    schedule: object
    sim_tl: pd.DataFrame
    meas_tl: pd.DataFrame
    ops: pd.DataFrame
    steps: pd.DataFrame
    row: dict


@dataclass
class ValidationRun:
    backend: str
    size: str
    info: DeviceInfo
    profile: HardwareProfile
    vset: ValidationSet
    bench: BenchResults | None
    outcomes: list[PointOutcome] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    #: 1-minute load average at the start and end of calibration (and per point: `points`)
    load: dict[str, float] = field(default_factory=dict)
    #: the drift probe's seconds per call at calibration (`probe`), the baseline of each point's ratios
    probe_baseline: dict[str, float] = field(default_factory=dict)

    @property
    def overloaded(self) -> bool:
        """The machine ran more runnable work than it has cores at some point of the run:
        on the CPU backend the executor's threads then share cores with strangers."""
        loads = list(self.load.values()) + [o.row.get("load_1min", 0.0) for o in self.outcomes]
        return max(loads, default=0.0) > self.info.cpu_count

    @property
    def max_load(self) -> float:
        loads = list(self.load.values()) + [o.row.get("load_1min", 0.0) for o in self.outcomes]
        return max(loads, default=0.0)

    @property
    def points(self) -> pd.DataFrame:
        return pd.DataFrame([o.row for o in self.outcomes])

    @property
    def ops(self) -> pd.DataFrame:
        return pd.concat([o.ops.assign(point=i) for i, o in enumerate(self.outcomes)], ignore_index=True)

    @property
    def steps(self) -> pd.DataFrame:
        return pd.concat([o.steps.assign(point=i) for i, o in enumerate(self.outcomes)], ignore_index=True)


def profile_name(info: DeviceInfo, threads: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", info.name.lower()).strip("-")[:40]
    return f"{info.backend}-{slug}-{info.cpu_count}cpu-{threads}t" if info.backend == "cpu" else f"cuda-{slug}"


def calibrate(backend: str, vset: ValidationSet, info: DeviceInfo,
              say: Callable[[str], None]) -> tuple[HardwareProfile, BenchResults]:
    bench = run_microbenchmarks(backend, vset.bench, progress=lambda m: say(f"micro-benchmark: {m}"))
    base = profile_from_bench(profile_name(info, bench.threads), info, bench)
    overhead = measure_dispatch(base, backend, base.hardware_spec(), progress=lambda m: say(f"micro-benchmark: {m}"))
    cold = measure_cold_dispatch(base, backend, base.hardware_spec(), progress=lambda m: say(f"micro-benchmark: {m}"))
    return base.model_copy(update={"op_overhead_s": overhead, "op_cold_s": cold}), bench


def load_1min() -> float:
    """The 1-minute load average (runnable + waiting tasks), NaN where the OS has none."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return float("nan")


def _label(p: PointSpec) -> str:
    w = p.workload
    return f"{p.model.name} L{p.model.layers} b{w.batch} p{w.prompt_len} g{w.gen_len} {p.policy.label}"


def run_validation(backend: str, size: str, profile: str | Path | None = None,
                   say: Callable[[str], None] = lambda _m: None) -> ValidationRun:
    info = device_info(backend)
    vset = validation_set(backend, size)
    t0 = time.perf_counter()
    bench = None
    load_before = load_1min()
    if profile is None:
        prof, bench = calibrate(backend, vset, info, say)
    else:
        prof = load_profile(profile, current=info.as_dict())
    run = ValidationRun(backend, size, info, prof, vset, bench)
    run.timings_s["calibration_s"] = time.perf_counter() - t0
    # the machine's drift since calibration (a loaded profile: since the start of the run); diagnostic only
    probe = drift_probe(backend, vset.bench)
    run.probe_baseline = probe.measure()
    run.load = {"calibration_start": load_before, "calibration_end": load_1min()}
    if max(run.load.values()) > info.cpu_count:
        say(f"warning: load average {max(run.load.values()):.1f} > {info.cpu_count} cores during calibration; "
            "CPU-backend timings are unreliable")
    hardware = prof.hardware_spec()
    weights = WeightCache()
    t1 = time.perf_counter()
    points = vset.points(hardware)
    for i, point in enumerate(points):
        load = load_1min()
        drift = drift_ratios(probe.measure(), run.probe_baseline)
        say(f"point {i + 1}/{len(points)}: {_label(point)} (load {load:.1f}, probe GEMM "
            f"{drift['probe_gemm_ratio']:.2f}x calibration)")
        meas = measure(point, backend, repeats=vset.repeats, warmup=vset.warmup, weights=weights)
        sim = simulate_profiled(meas.schedule, prof, point.model)
        sim_tl, meas_tl = sim.timeline(), meas.result.timeline()
        ops = join_ops(sim_tl, meas_tl)
        row, steps = point_errors(sim_tl, meas_tl)
        repeat_e2e, repeat_steps = repeat_spread(meas_tl, [r.timeline() for r in meas.repeats])
        steps["repeat_ape"] = steps["step"].map(repeat_steps)
        # what the same schedule costs under the roofline default and under idle (uncontended) rates
        roof = simulate(meas.schedule, RooflineCostModel(hardware)).makespan_s
        idle = simulate(meas.schedule, ProfiledCostModel(prof, point.model, contended=False)).makespan_s
        busy = simulate(meas.schedule, ProfiledCostModel(prof, point.model, contended=True)).makespan_s
        ov_sim, ov_meas = overlap(sim_tl), overlap(meas_tl)
        row = {"point": i, "label": _label(point), "model": point.model.name, "layers": point.model.layers,
               "batch": point.workload.batch, "prompt_len": point.workload.prompt_len,
               "gen_len": point.workload.gen_len, "policy": point.policy.label, "ops": len(meas.schedule.ops),
               **row, "repeat_e2e_ape": repeat_e2e, **drift, "runs_s": ";".join(f"{r:.4f}" for r in meas.runs_s),
               "host_memory": meas.host_memory,
               "host_cache_memory": meas.host_cache_memory, "load_1min": max(load, load_1min()),
               "roofline_makespan_s": roof, "roofline_e2e_ape": abs(roof - row["makespan_meas_s"])
               / row["makespan_meas_s"], "idle_rates_makespan_s": idle,
               "idle_rates_e2e_ape": abs(idle - row["makespan_meas_s"]) / row["makespan_meas_s"],
               "busy_rates_makespan_s": busy,
               "busy_rates_e2e_ape": abs(busy - row["makespan_meas_s"]) / row["makespan_meas_s"],
               "hidden_link_share_sim": ov_sim["hidden_link_share"],
               "hidden_link_share_meas": ov_meas["hidden_link_share"],
               "compute_busy_sim_s": ov_sim["compute_busy_s"], "compute_busy_meas_s": ov_meas["compute_busy_s"],
               "link_busy_sim_s": ov_sim["link_busy_s"], "link_busy_meas_s": ov_meas["link_busy_s"]}
        run.outcomes.append(PointOutcome(point, meas.schedule, sim_tl, meas_tl, ops, steps, row))
    run.timings_s["points_s"] = time.perf_counter() - t1
    return run
