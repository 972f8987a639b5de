"""Metrics of one replayed schedule, and memory occupancy over time.

Throughput follows FlexGen: generated tokens / (prefill + decode time). The
*bound* is the time the busiest engine alone needs: no schedule of these ops can
beat it, so `throughput / bound` says how close a policy sits to the hardware.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .engine import SimResult, critical_path_ns
from .schedule import PAYLOAD_FIELDS, Stream

if TYPE_CHECKING:
    import pandas as pd


def memory_occupancy(result: SimResult) -> pd.DataFrame:
    """GPU and host bytes in use over time (columns time_s, gpu_bytes, host_bytes).

    An op's output buffer lives from its start until its last data consumer ends (or
    starts, for a consumer that overwrites it in place: `schedule.IN_PLACE_KINDS`); its
    workspace lives while it runs; host memory grows as stores complete.
    `peak_memory_bytes` gives the two maxima without the table.
    """
    import pandas as pd

    sched = result.schedule
    start, end = result.start_ns, result.end_ns
    src, dst = sched.data_edges
    last_use = end.copy()
    np.maximum.at(last_use, src, np.where(sched.in_place_edges(), start[dst], end[dst]))
    gpu = sched.column("gpu_bytes")
    ws = sched.column("workspace_bytes")
    host = sched.column("host_alloc_bytes")
    g, w, h = gpu.nonzero()[0], ws.nonzero()[0], host.nonzero()[0]
    times = np.concatenate([[0], start[g], last_use[g], start[w], end[w], end[h]])
    zeros = np.zeros(len(g) * 2 + len(w) * 2, dtype=np.int64)
    gpu_delta = np.concatenate([[sched.gpu_static_bytes], gpu[g], -gpu[g], ws[w], -ws[w], np.zeros(len(h), np.int64)])
    host_delta = np.concatenate([[sched.host_static_bytes], zeros, host[h]])
    # what is freed and allocated at one instant counts as one change
    order = np.argsort(times, kind="stable")
    times, gpu_delta, host_delta = times[order], gpu_delta[order], host_delta[order]
    instants, first = np.unique(times, return_index=True)
    return pd.DataFrame({
        "time_s": instants / 1e9,
        "gpu_bytes": np.cumsum(np.add.reduceat(gpu_delta, first)),
        "host_bytes": np.cumsum(np.add.reduceat(host_delta, first)),
    })


def peak_memory_bytes(result: SimResult, compiled: bool | None = None) -> tuple[int, int]:
    """(peak GPU bytes, peak host bytes) in use: the maxima of `memory_occupancy`, from the
    arrays with no table (`replay_kernels.metrics_kernel`; compiled=False runs it as plain
    Python). Host memory only grows (stores keep their bytes for good), so its peak is what
    it holds at the end."""
    return _summary(result, compiled)["peak"]


def _summary(result: SimResult, compiled: bool | None = None) -> dict:
    """What `run_metrics` reads of a replay, in one kernel pass."""
    from .replay_kernels import metrics_kernel

    sched = result.schedule
    kernel = metrics_kernel.pick(compiled, len(sched))
    per = sched.payload_column
    busy, link, prefill_compute, prefill_any, rise = kernel(
        sched.stream_code, result.duration_ns, result.start_ns, result.end_ns, sched.step_col, sched.payload_index,
        per(PAYLOAD_FIELDS.index("gpu_bytes")), per(PAYLOAD_FIELDS.index("workspace_bytes")),
        per(PAYLOAD_FIELDS.index("link_bytes")), sched.in_place_code, sched.deps_ptr, sched.deps_idx,
        len(Stream))
    host = per(PAYLOAD_FIELDS.index("host_alloc_bytes"))
    assert host.min(initial=0) >= 0, "a negative host allocation"
    uses = np.bincount(sched.payload_index, minlength=len(host))
    return {
        "busy_ns": busy.tolist(), "link_bytes": link.tolist(),
        "prefill_end_ns": int(prefill_compute if prefill_compute >= 0 else prefill_any),
        "peak": (sched.gpu_static_bytes + int(rise), sched.host_static_bytes + int(host @ uses)),
    }


def throughput_tok_s(result: SimResult) -> float:
    """Generated tokens / (prefill + decode time), FlexGen's definition."""
    meta = result.schedule.meta
    return meta.batch * meta.gen_len / result.makespan_s


#: the keys of `run_metrics`, in order: every results table has these columns, null where a
#: point did not run (tested equal to what `run_metrics` returns)
METRIC_COLUMNS = (
    "makespan_s", "prefill_s", "decode_s", "throughput_tok_s", "decode_tok_s", "token_latency_s", "bound_s",
    "bound_tok_s", "critical_path_s", "gpu_busy", "h2d_busy", "d2h_busy", "cpu_busy", "h2d_bytes", "d2h_bytes",
    "peak_gpu_bytes", "peak_host_bytes", "planned_gpu_bytes", "planned_host_bytes", "ops",
)


def run_metrics(result: SimResult) -> dict[str, float]:
    sched = result.schedule
    meta = sched.meta
    dur = result.duration_ns
    makespan_s = result.makespan_s
    # Prefill ends when its last GPU compute (the first tokens' LM head) ends; its trailing
    # cache stores count in decode, which they delay (or not) like any other op.
    summary = _summary(result)
    prefill_s = summary["prefill_end_ns"] / 1e9
    decode_s = makespan_s - prefill_s
    busy_s = {s: ns / 1e9 for s, ns in zip(Stream, summary["busy_ns"], strict=True)}
    link_bytes = dict(zip(Stream, summary["link_bytes"], strict=True))
    bound_s = max(busy_s.values())
    generated = meta.batch * meta.gen_len
    decoded = meta.batch * (meta.gen_len - 1)
    peak_gpu, peak_host = summary["peak"]
    return {
        "makespan_s": makespan_s,
        "prefill_s": prefill_s,
        "decode_s": decode_s,
        "throughput_tok_s": throughput_tok_s(result),
        "decode_tok_s": decoded / decode_s if decoded and decode_s > 0 else math.nan,
        "token_latency_s": decode_s / (meta.gen_len - 1) if meta.gen_len > 1 else math.nan,
        "bound_s": bound_s,
        "bound_tok_s": generated / bound_s,
        "critical_path_s": (result.critical_ns if result.critical_ns is not None
                            else critical_path_ns(sched, dur)) / 1e9,
        "gpu_busy": busy_s[Stream.compute] / makespan_s,
        "h2d_busy": busy_s[Stream.h2d] / makespan_s,
        "d2h_busy": busy_s[Stream.d2h] / makespan_s,
        "cpu_busy": busy_s[Stream.cpu] / makespan_s,
        "h2d_bytes": link_bytes[Stream.h2d],
        "d2h_bytes": link_bytes[Stream.d2h],
        "peak_gpu_bytes": peak_gpu,
        "peak_host_bytes": peak_host,
        "planned_gpu_bytes": sched.memory.gpu_bytes,
        "planned_host_bytes": sched.memory.host_bytes,
        "ops": len(sched),
    }
