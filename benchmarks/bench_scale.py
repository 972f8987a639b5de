"""How fast one point simulates, how that grows, and how long a paper-sized grid takes.

Run:  python benchmarks/bench_scale.py [--grid] [--out benchmarks/results/scale.md]

Per point it times the sweep's path (build the schedule, list-scheduling replay,
metrics) and, for the headline point, also the SimPy replay and a naive
one-process-per-op SimPy model, in the same process. `--grid` also runs the
HybridServe-style grid (OPT-6.7B/13B/30B/66B x prompt 256..2048 x r in 11 steps x
three policies, RTX 4090, batch 128, 128 output tokens) through `run_sweep` on all
local cores and reports its wall time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from bench_engine import naive_replay

from hssim.sim.api import run_point
from hssim.sim.costs import RooflineCostModel, durations_ns
from hssim.sim.engine import replay
from hssim.sim.policies import build_schedule
from hssim.sim.presets import hardware_preset, model_preset
from hssim.sim.specs import PointSpec, PolicySpec, WorkloadSpec
from hssim.sim.sweep import run_sweep


def point(model="opt-175b", hw="h100-80gb-pcie5", batch=64, k=8, prompt=512, gen=32, layers=None, **pol):
    m = model_preset(model)
    if layers:
        m = m.model_copy(update={"layers": layers})
    pol.setdefault("kind", "kv-only")
    return PointSpec(scenario="bench", model=m, hardware=hardware_preset(hw),
                     workload=WorkloadSpec(batch=batch, prompt_len=prompt, gen_len=gen),
                     policy=PolicySpec(num_gpu_batches=k, **pol))


def time_point(p, repeats=3) -> tuple[float, int]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run = run_point(p, engine="list")
        times.append(time.perf_counter() - t0)
    return min(times), run.metrics["ops"]


def stage_times(p) -> dict[str, float]:
    t0 = time.perf_counter()
    sched = build_schedule(p)
    t1 = time.perf_counter()
    dur = durations_ns(sched, RooflineCostModel(p.hardware))
    t2 = time.perf_counter()
    simpy_res = replay(sched, dur)
    t3 = time.perf_counter()
    naive = naive_replay(sched, dur)
    t4 = time.perf_counter()
    assert naive == simpy_res.makespan_ns
    return {"build": t1 - t0, "durations": t2 - t1, "simpy replay": t3 - t2, "naive SimPy replay": t4 - t3}


def grid_points():
    pts = []
    for model in ("opt-6.7b", "opt-13b", "opt-30b", "opt-66b"):
        for prompt in (256, 512, 1024, 2048):
            pts.append(point(model, "rtx4090-pcie4", 128, 8, prompt, 128, kind="kv-only"))
            for r in [i / 10 for i in range(11)]:
                for kind in ("hybrid", "token-recompute"):
                    pts.append(point(model, "rtx4090-pcie4", 128, 8, prompt, 128, kind=kind, kv_ratio=r))
    return pts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    lines = [f"# Simulator scale ({platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()})",
             "", f"Command: `python benchmarks/bench_scale.py{' --grid' if args.grid else ''}`", ""]

    head = point()
    t, ops = time_point(head)
    lines += ["## One OPT-175B point (96 layers, 8 GPU batches x 8, prompt 512, 32 output tokens, H100 PCIe 5.0)",
              "", f"Sweep path (build + list replay + metrics), best of 3: **{t:.2f} s** for {ops} ops "
              f"({ops / t:,.0f} ops/s).", "", "| stage | s |", "|---|---:|"]
    stages = stage_times(head)
    lines += [f"| {k} | {v:.2f} |" for k, v in stages.items()]
    lines += ["", f"SimPy replay vs naive per-op SimPy model: "
              f"{stages['naive SimPy replay'] / stages['simpy replay']:.1f}x (identical makespans).", ""]

    def growth(title, label, variants):
        nonlocal lines
        lines += [f"## Growth with {title}", "", f"| {label} | ops | s | us/op |", "|---:|---:|---:|---:|"]
        for value, p in variants:
            secs, n = time_point(p, repeats=2)
            lines.append(f"| {value} | {n} | {secs:.2f} | {secs / n * 1e6:.1f} |")
        lines.append("")

    growth("layers (OPT-175B shapes, 8 GPU batches, 32 tokens)", "layers",
           [(L, point(layers=L)) for L in (12, 24, 48, 96)])
    growth("output length (OPT-175B, 24 layers, 8 GPU batches)", "output tokens",
           [(g, point(layers=24, gen=g)) for g in (8, 16, 32, 64)])
    growth("micro-batches (OPT-175B, 24 layers, 32 tokens, batch 64)", "GPU batches",
           [(k, point(layers=24, k=k)) for k in (1, 2, 4, 8)])

    if args.grid:
        pts = grid_points()
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            df = run_sweep(pts, Path(d))
            wall = time.perf_counter() - t0
        ok = (df["status"] == "ok").sum()
        lines += ["## HybridServe-style grid", "",
                  f"{len(pts)} points (OPT-6.7B/13B/30B/66B x prompt 256/512/1024/2048 x r in 11 steps x "
                  f"kv-only, hybrid, token-recompute; RTX 4090, batch 128 = 8 x 16, 128 output tokens), "
                  f"{ok} ok, {len(pts) - ok} infeasible, {int(df['ops'].sum()):,} ops simulated: "
                  f"**{wall:.0f} s** wall on {os.cpu_count()} local cores "
                  f"(median point {statistics.median(df['makespan_s'].dropna()):.0f} s simulated).", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
