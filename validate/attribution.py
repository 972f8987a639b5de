"""Where an op's time inside the executor differs from what the micro-benchmarks measured.

For chosen ops of one point (one op per kind, from a middle decode step), every round
times each condition once, in an order that rotates from round to round, so that the
load of a shared machine falls on all conditions alike; medians over the rounds are
compared:

- `bench`: the op's kernels as a micro-benchmark loop calls them (its GEMMs at its shapes
  and its attention kernel, or one copy of its bytes), operands fixed and warm;
- `bench_cold`: the same with every operand swept (`microbench.Sweep`), as the
  micro-benchmarks now measure;
- `hot`: the op on the executor's buffers, run again right after itself (operands warm
  in the caches, no neighbour): the micro-benchmarks' condition, plus the executor's
  Python dispatch;
- `cold`: the same after the last-level cache was evicted (the executor's buffer life
  cycle: a weight slot is read once, long after the copy that filled it);
- `neighbour`: `cold` while another thread loops the op of another stream that overlapped
  this op most in the executor (contention for cores and memory bandwidth);
- `executor`: the op's duration in a whole run of the schedule, every stream thread
  running (the in-place time the validation compares against);

and, priced once from micro-benchmarks run in the same process just before (not
interleaved), `profile`: the profile's time for the op without any dispatch cost (idle
rates). The gaps between consecutive rungs attribute the difference: dispatch and the
elementwise glue (`hot - bench`), buffer life cycle (`cold - hot`), contention
(`neighbour - cold`) and the rest of the executor (`executor - neighbour`: more threads
than the two isolated ones, the GIL, hand-offs).
Separately, `wake` is the share of each run's makespan spent on the critical path
between an op becoming ready (its dependencies and its stream predecessor done) and its
start: thread wake-ups, which the simulator does not charge.

    python -m hssim.validate.attribution --out reports/validation/DIR/attribution
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ..sim.costs.profile import ProfiledCostModel
from ..sim.schedule import Op, Schedule, Stream
from ..sim.specs import PointSpec
from .calibrate import profile_from_bench
from .device import device_info, require_torch
from .measure import Harness, attention_kernel, harness
from .microbench import BenchPlan, Evictor, Sweep, gemm_shapes, llc_bytes, run_microbenchmarks
from .run import load_1min
from .suite import validation_set
from .timing import busy_neighbour

CONDITIONS = ("bench", "bench_cold", "hot", "cold", "neighbour", "executor")


def pick_ops(schedule: Schedule, step: int) -> list[Op]:
    """One op per kind: the first of `step` (the prefill's for kinds that only it has)."""
    chosen: dict[str, Op] = {}
    for op in schedule.ops:
        if op.step == step and op.kind.value not in chosen:
            chosen[op.kind.value] = op
    for op in schedule.ops:
        if op.kind.value not in chosen:
            chosen[op.kind.value] = op
    return list(chosen.values())


def neighbours(schedule: Schedule, start: np.ndarray, end: np.ndarray) -> dict[int, int | None]:
    """For every op: the op of another stream overlapping it longest in a measured run (None: ran alone)."""
    out: dict[int, int | None] = {}
    ops = schedule.ops
    for op in ops:
        s, e = start[op.id], end[op.id]
        best, best_ov = None, 0
        for other in ops:
            if other.stream is op.stream:
                continue
            ov = min(e, end[other.id]) - max(s, start[other.id])
            if ov > best_ov:
                best, best_ov = other.id, ov
        out[op.id] = best
    return out


def wake_share(schedule: Schedule, start: np.ndarray, end: np.ndarray) -> tuple[float, float]:
    """(seconds, share of the makespan) spent on the critical path between ready and start."""
    prev: dict[int, int] = {}
    for s in Stream:
        ops = schedule.stream_ops(s)
        for a, b in zip(ops, ops[1:], strict=False):
            prev[b.id] = a.id
    op_id = int(np.argmax(end))
    gap = 0
    while True:
        op = schedule.ops[op_id]
        preds = [*op.deps, *op.after] + ([prev[op_id]] if op_id in prev else [])
        if not preds:
            gap += int(start[op_id])  # from the run's origin
            break
        p = max(preds, key=lambda i: end[i])
        gap += max(0, int(start[op_id] - end[p]))
        op_id = p
    makespan = float(end.max())
    return gap / 1e9, gap / makespan


def bench_calls(point: PointSpec, op: Op, cold: bool) -> Callable[[], None] | None:
    """The op's kernels as the micro-benchmarks call them: its GEMMs (`F.linear` at its shapes), its
    attention kernel, or one copy of its bytes; operands fixed (`cold=False`, a loop's warm caches) or
    swept (`cold=True`, `microbench.Sweep`). None for kinds made of small elementwise work only."""
    torch = require_torch()
    F = torch.nn.functional
    m = point.model
    dtype = {2: torch.bfloat16, 4: torch.float32}.get(m.dtype_bytes, torch.bfloat16)
    llc = llc_bytes("cpu")

    def operand(t):
        if not cold:
            return lambda: t
        sw = Sweep(t, llc)
        return sw.next

    if op.stream in (Stream.h2d, Stream.d2h):
        if op.link_bytes <= 0:
            return None
        src, dst = operand(torch.ones(op.link_bytes, dtype=torch.uint8)), operand(torch.empty(op.link_bytes,
                                                                                             dtype=torch.uint8))
        return lambda: dst().copy_(src())
    s, g = op.shape_dict, gemm_shapes(m)
    rows = s.get("batch", 1) * s.get("new_tokens", s.get("tokens", 1))
    names = {"ffn": ["ffn_up", "ffn_down"], "attention": ["qkv", "out"], "lm_head": ["lm_head"],
             "recompute_kv": ["kv"], "qkv_proj": ["qkv"], "out_proj": ["out"]}.get(op.kind.value)
    if names is None:
        return None
    gemms = []
    for name in names:
        n, k = g[name]
        gemms.append((torch.randn(rows if name != "lm_head" else s.get("batch", 1), k, dtype=dtype),
                      operand(torch.randn(n, k, dtype=dtype) * 0.02)))
    attend = None
    if op.kind.value == "attention":
        new, past = s["new_tokens"], s["past_tokens"]
        kern = attention_kernel(m)
        q = torch.randn(new, s["batch"], m.hidden, dtype=dtype)
        ctx_kv = torch.randn(past + new, s["batch"], 2 * m.kv_hidden, dtype=dtype)
        ctx = operand(ctx_kv) if past else (lambda: ctx_kv)  # a prefill's K,V were just computed: warm
        attend = lambda: kern(q, ctx())  # noqa: E731

    def call() -> None:
        for x, w in gemms:
            F.linear(x, w())
        if attend is not None:
            attend()

    return call


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def attribute(h: Harness, ops: list[Op], rounds: int, say: Callable[[str], None]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw timings (one row per op, condition and round) and per-run wake-up shares."""
    torch = require_torch()
    evict = Evictor()
    rows, runs = [], []
    h.run_all()  # warm-up (as measure_point's), fills the caches' contents
    start, end = h.run_all()
    near = neighbours(h.schedule, start, end)
    bench = {(op.id, c): bench_calls(h.point, op, cold=c) for op in ops for c in (False, True)}
    for r in range(rounds):
        load = load_1min()
        say(f"round {r + 1}/{rounds} (load {load:.2f})")
        order = CONDITIONS[r % len(CONDITIONS):] + CONDITIONS[:r % len(CONDITIONS)]
        for cond in order:
            if cond == "executor":
                start, end = h.run_all()
                wake_s, share = wake_share(h.schedule, start, end)
                runs.append({"round": r, "makespan_s": float(end.max()) / 1e9, "wake_s": wake_s,
                             "wake_share": share, "load_1min": load})
                rows += [{"op_id": op.id, "kind": op.kind.value, "condition": cond, "round": r, "load_1min": load,
                          "seconds": (end[op.id] - start[op.id]) / 1e9} for op in ops]
                continue
            for op in ops:
                run = lambda op=op: h.run_op(op)  # noqa: E731
                with torch.inference_mode():
                    if cond in ("bench", "bench_cold"):
                        fn = bench[(op.id, cond == "bench_cold")]
                        if fn is None:
                            continue
                        fn()  # as time_s: one untimed call first
                        t = _timed(fn)
                    elif cond == "hot":
                        run()
                        t = _timed(run)
                    elif cond == "cold":
                        evict()
                        t = _timed(run)
                    else:
                        nb = near[op.id]
                        beside = None if nb is None else (lambda nb=nb: h.run_op(h.schedule.ops[nb]))
                        with busy_neighbour(beside, "cpu"):
                            evict()
                            t = _timed(run)
                rows.append({"op_id": op.id, "kind": op.kind.value, "condition": cond, "round": r,
                             "load_1min": load, "seconds": t})
    return pd.DataFrame(rows), pd.DataFrame(runs)


def kernel_prices(point: PointSpec, ops: list[Op], say: Callable[[str], None]) -> dict[int, float]:
    """Each op's price from micro-benchmarks of this point's shapes run now, without dispatch cost."""
    info = device_info("cpu")
    wl = point.workload
    plan = BenchPlan(models=(point.model,), dtype=point.model.dtype,
                     gemm_m=tuple(sorted({1, 2, wl.batch // 2, wl.batch, wl.prompt_len * wl.batch // 2})),
                     lm_head_m=(1, 2, max(1, wl.batch // 2)), attn_batch=(1, 2, max(1, wl.batch // 2)),
                     attn_context=(16, 32, 64, 128), prefill_tokens=(16, 32, 64))
    bench = run_microbenchmarks("cpu", plan, progress=lambda m: say(f"micro-benchmark: {m}"))
    prof = profile_from_bench("attribution", info, bench).model_copy(update={"launch_s": 0.0})
    cost = ProfiledCostModel(prof, point.model, contended=False)
    return {op.id: cost.duration_s(op) for op in ops}


def summarise(raw: pd.DataFrame, kernels: dict[int, float]) -> pd.DataFrame:
    med = raw.groupby(["op_id", "kind", "condition"])["seconds"].median().unstack("condition")
    med["profile"] = med.index.get_level_values("op_id").map(kernels)
    med = med.reset_index()
    out = pd.DataFrame({"op_id": med["op_id"], "kind": med["kind"]})
    for c in ("profile", *CONDITIONS):
        out[f"{c}_ms"] = med.get(c, np.nan) * 1e3
    out["dispatch_ms"] = out["hot_ms"] - out["bench_ms"]
    out["life_cycle_ms"] = out["cold_ms"] - out["hot_ms"]
    out["contention_ms"] = out["neighbour_ms"] - out["cold_ms"]
    out["in_place_rest_ms"] = out["executor_ms"] - out["neighbour_ms"]
    out["bench_over_executor"] = out["bench_ms"] / out["executor_ms"]
    out["bench_cold_over_executor"] = out["bench_cold_ms"] / out["executor_ms"]
    return out.sort_values("executor_ms", ascending=False)


def standard_point(index: int) -> PointSpec:
    """Point `index` of the CPU backend's standard validation set (0: opt-1.3b L2, batch 4, prompt 32, kv-only)."""
    from ..sim.presets import HARDWARE

    points = validation_set("cpu", "standard").points(HARDWARE["rtx4090-pcie4"])
    if not 0 <= index < len(points):
        raise SystemExit(f"error: --point {index}: the standard set has points 0 to {len(points) - 1}")
    return points[index].model_copy(update={"scenario": "attribution"})


def _markdown(point: PointSpec, table: pd.DataFrame, runs: pd.DataFrame, loads: dict[str, float], rounds: int,
              threads: int, command: str) -> str:
    def fmt(v: float) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    tot = table[[c for c in cols if c.endswith("_ms")]].sum(min_count=1)
    w = runs["wake_share"]
    return "\n".join([
        f"# Attribution: {point.model.name} L{point.model.layers} b{point.workload.batch} "
        f"p{point.workload.prompt_len} g{point.workload.gen_len} {point.policy.label}",
        "",
        "```", command, "```", "",
        f"{rounds} interleaved rounds, {threads} torch thread(s) per stream thread; 1-minute load average: "
        f"start {loads['start']:.2f}, after the micro-benchmarks {loads['bench']:.2f}, end {loads['end']:.2f} "
        f"(rounds: {runs['load_1min'].min():.2f} to {runs['load_1min'].max():.2f}); {os.cpu_count()} CPUs. "
        "Medians over the rounds, milliseconds.",
        "",
        *lines,
        "",
        f"Sum over these ops: warm micro-benchmark {tot['bench_ms']:.2f} ms, cold micro-benchmark "
        f"{tot['bench_cold_ms']:.2f}, hot {tot['hot_ms']:.2f}, cold "
        f"{tot['cold_ms']:.2f}, neighbour {tot['neighbour_ms']:.2f}, executor {tot['executor_ms']:.2f}: "
        f"dispatch {tot['dispatch_ms']:+.2f}, life cycle {tot['life_cycle_ms']:+.2f}, contention "
        f"{tot['contention_ms']:+.2f}, in-place rest {tot['in_place_rest_ms']:+.2f}.",
        "",
        f"Wake-ups: on the critical path of each whole run, {w.median():.1%} of the makespan (median of "
        f"{len(w)} runs; {w.min():.1%} to {w.max():.1%}) passes between an op becoming ready and its start; "
        f"median makespan {runs['makespan_s'].median():.3f} s.",
        "",
    ])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (attribution.md, raw.csv, runs.csv, summary.csv)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--point", type=int, default=0, help="index into the CPU standard validation set (0 to 27)")
    ap.add_argument("--step", type=int, default=3, help="decode step whose ops are timed")
    args = ap.parse_args(argv)
    torch = require_torch()
    point = standard_point(args.point)
    say = lambda m: print(m, flush=True)  # noqa: E731
    loads = {"start": load_1min()}
    h = harness(point, "cpu")
    ops = pick_ops(h.schedule, args.step)
    before = torch.get_num_threads()
    torch.set_num_threads(h.threads)
    try:
        with torch.inference_mode():
            kernels = kernel_prices(point, ops, say)
        loads["bench"] = load_1min()
        raw, runs = attribute(h, ops, args.rounds, say)
    finally:
        torch.set_num_threads(before)
    loads["end"] = load_1min()
    table = summarise(raw, kernels)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw.to_csv(out / "raw.csv", index=False)
    runs.to_csv(out / "runs.csv", index=False)
    table.to_csv(out / "summary.csv", index=False)
    command = (f"python -m hssim.validate.attribution --out {args.out} --rounds {args.rounds} --point {args.point} "
               f"--step {args.step}")
    text = _markdown(point, table, runs, loads, args.rounds, h.threads, command)
    (out / "attribution.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
