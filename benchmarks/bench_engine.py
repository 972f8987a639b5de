"""Simulator speed: hssim's engines (the list-scheduling replay sweeps use, and the SimPy
model with one process per stream) against a naive model (one SimPy process and one
Resource request per op) replaying the same schedules.

Run:  python benchmarks/bench_engine.py [--out benchmarks/results/engine.md]

All replay identical durations; the script checks that their makespans are equal and
reports ops per CPU second of each (`time.process_time`, best of `--repeats`) and the
speed-ups, measured in the same process.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import simpy

from hssim.sim.costs import RooflineCostModel, durations_ns
from hssim.sim.engine import list_replay, replay
from hssim.sim.policies import build_schedule
from hssim.sim.presets import hardware_preset, model_preset
from hssim.sim.schedule import Stream
from hssim.sim.specs import PointSpec, PolicySpec, WorkloadSpec

CASES = [
    ("opt-30b kv-only, 4090, b128 (8x16), p512, g32", "opt-30b", "rtx4090-pcie4", 128, 8, 512, 32,
     dict(kind="kv-only")),
    ("opt-30b hybrid r=0.5, 4090, b128 (8x16), p512, g32", "opt-30b", "rtx4090-pcie4", 128, 8, 512, 32,
     dict(kind="hybrid", kv_ratio=0.5)),
    ("opt-13b token-recompute r=0.5, A100, b256 (8x32), p1024, g32", "opt-13b", "a100-40gb-pcie4", 256, 8, 1024,
     32, dict(kind="token-recompute", kv_ratio=0.5)),
    ("opt-175b kv-only, H100, b64 (8x8), p512, g32", "opt-175b", "h100-80gb-pcie5", 64, 8, 512, 32,
     dict(kind="kv-only")),
]


def naive_replay(schedule, dur) -> int:
    """One process per op; each engine a simpy.Resource; in-order per stream via events."""
    env = simpy.Environment()
    engines = {s: simpy.Resource(env, capacity=1) for s in Stream}
    done = [env.event() for _ in schedule.ops]
    prev_on_stream = {}
    pred = [None] * len(schedule.ops)
    for op in schedule.ops:
        pred[op.id] = prev_on_stream.get(op.stream)
        prev_on_stream[op.stream] = op.id
    end = [0] * len(schedule.ops)

    def run(op):
        waits = [done[d] for d in op.deps + op.after]
        if pred[op.id] is not None:
            waits.append(done[pred[op.id]])
        if waits:
            yield simpy.AllOf(env, waits)
        with engines[op.stream].request() as req:
            yield req
            yield env.timeout(int(dur[op.id]))
        end[op.id] = env.now
        done[op.id].succeed()

    for op in schedule.ops:
        env.process(run(op))
    env.run()
    return max(end)


def best_of(fn, repeats=3):
    """Best CPU time (s) of `repeats` calls, and the last value."""
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        value = fn()
        times.append(time.process_time() - t0)
    return min(times), value


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for label, model, hw, batch, k, prompt, gen, pol in CASES:
        point = PointSpec(scenario="bench", model=model_preset(model), hardware=hardware_preset(hw),
                          workload=WorkloadSpec(batch=batch, prompt_len=prompt, gen_len=gen),
                          policy=PolicySpec(num_gpu_batches=k, **pol))
        t_build, sched = best_of(lambda p=point: build_schedule(p, check_memory=False), 1)
        dur = durations_ns(sched, RooflineCostModel(point.hardware))
        t_list, lres = best_of(lambda s=sched, d=dur: list_replay(s, d), args.repeats)
        t_fast, res = best_of(lambda s=sched, d=dur: replay(s, d), args.repeats)
        t_naive, naive_makespan = best_of(lambda s=sched, d=dur: naive_replay(s, d), args.repeats)
        assert lres.makespan_ns == res.makespan_ns == naive_makespan, (label, res.makespan_ns, naive_makespan)
        n = len(sched)
        rows.append((label, n, t_build, n / t_list, n / t_fast, n / t_naive, t_naive / t_list, t_naive / t_fast,
                     res.makespan_ns / 1e9))
    lines = [
        f"# Engine speed ({platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"simpy {simpy.__version__})",
        "",
        "Command: `python benchmarks/bench_engine.py --out benchmarks/results/engine.md` "
        f"(CPU time, best of {args.repeats} replays each; makespans of the three models checked equal). "
        "list = the list-scheduling replay sweeps use (it also computes the critical path); "
        "SimPy = hssim's SimPy model, a process per stream; naive = a SimPy process and a Resource request per op.",
        "",
        "| case | ops | build CPU s | list ops/s | SimPy ops/s | naive ops/s | list vs naive | SimPy vs naive "
        "| makespan s (all) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, n, tb, lst, fast, naive, r_list, r_simpy, mk in rows:
        lines.append(f"| {label} | {n} | {tb:.3f} | {lst:,.0f} | {fast:,.0f} | {naive:,.0f} | {r_list:.1f}x | "
                     f"{r_simpy:.1f}x | {mk:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
