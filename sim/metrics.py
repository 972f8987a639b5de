"""Metrics of one replayed schedule, and memory occupancy over time.

Throughput follows FlexGen: generated tokens / (prefill + decode time). The
*bound* is the time the busiest engine alone needs: no schedule of these ops can
beat it, so `throughput / bound` says how close a policy sits to the hardware.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .engine import SimResult, critical_path_ns
from .schedule import Stream


def memory_occupancy(result: SimResult) -> pd.DataFrame:
    """GPU and host bytes in use over time (columns time_s, gpu_bytes, host_bytes).

    An op's output buffer lives from its start until its last data consumer ends;
    its workspace lives while it runs; host memory grows as stores complete.
    """
    sched = result.schedule
    start, end = result.start_ns, result.end_ns
    last_use = end.copy()
    for op in sched.ops:
        for d in op.deps:
            if end[op.id] > last_use[d]:
                last_use[d] = end[op.id]
    times, gpu_delta, host_delta = [0], [sched.gpu_static_bytes], [sched.host_static_bytes]
    for op in sched.ops:
        i = op.id
        if op.gpu_bytes:
            times += [start[i], last_use[i]]
            gpu_delta += [op.gpu_bytes, -op.gpu_bytes]
            host_delta += [0, 0]
        if op.workspace_bytes:
            times += [start[i], end[i]]
            gpu_delta += [op.workspace_bytes, -op.workspace_bytes]
            host_delta += [0, 0]
        if op.host_alloc_bytes:
            times.append(end[i])
            gpu_delta.append(0)
            host_delta.append(op.host_alloc_bytes)
    df = pd.DataFrame({"t": np.asarray(times, dtype=np.int64), "g": gpu_delta, "h": host_delta})
    # what is freed and allocated at one instant counts as one change (free first)
    df = df.groupby("t", sort=True)[["g", "h"]].sum().cumsum()
    return pd.DataFrame(
        {"time_s": df.index.to_numpy() / 1e9, "gpu_bytes": df["g"].to_numpy(),
         "host_bytes": df["h"].to_numpy()}
    )


def run_metrics(result: SimResult) -> dict[str, float]:
    sched = result.schedule
    meta = sched.meta
    dur = result.duration_ns
    makespan_s = result.makespan_s
    step0 = np.fromiter((op.step == 0 for op in sched.ops), bool, len(sched.ops))
    prefill_s = float(result.end_ns[step0].max()) / 1e9
    decode_s = makespan_s - prefill_s
    busy_s = {}
    link_bytes = {}
    for s in Stream:
        ids = [op.id for op in sched.stream_ops(s)]
        busy_s[s] = float(dur[ids].sum()) / 1e9 if ids else 0.0
        link_bytes[s] = sched.link_bytes(s)
    bound_s = max(busy_s.values())
    generated = meta.batch * meta.gen_len
    decoded = meta.batch * (meta.gen_len - 1)
    occ = memory_occupancy(result)
    return {
        "makespan_s": makespan_s,
        "prefill_s": prefill_s,
        "decode_s": decode_s,
        "throughput_tok_s": generated / makespan_s,
        "decode_tok_s": decoded / decode_s if decoded and decode_s > 0 else math.nan,
        "token_latency_s": decode_s / (meta.gen_len - 1) if meta.gen_len > 1 else math.nan,
        "bound_s": bound_s,
        "bound_tok_s": generated / bound_s,
        "critical_path_s": critical_path_ns(sched, dur) / 1e9,
        "gpu_busy": busy_s[Stream.compute] / makespan_s,
        "h2d_busy": busy_s[Stream.h2d] / makespan_s,
        "d2h_busy": busy_s[Stream.d2h] / makespan_s,
        "cpu_busy": busy_s[Stream.cpu] / makespan_s,
        "h2d_bytes": link_bytes[Stream.h2d],
        "d2h_bytes": link_bytes[Stream.d2h],
        "peak_gpu_bytes": int(occ["gpu_bytes"].max()),
        "peak_host_bytes": int(occ["host_bytes"].max()),
        "planned_gpu_bytes": sched.memory.gpu_bytes,
        "planned_host_bytes": sched.memory.host_bytes,
        "ops": len(sched.ops),
    }
