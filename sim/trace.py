"""Chrome / Perfetto trace of a timeline, in the shape torch.profiler writes.

One complete event (`ph: "X"`, microseconds) per op, one thread (track) per
stream, process and thread names as metadata events. Opens in chrome://tracing
and ui.perfetto.dev; a simulated and a measured timeline of the same schedule
open side by side because both use the shared Timeline schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from .schedule import Schedule, Stream

#: track id per stream, in the order a trace viewer lists them
STREAM_TIDS = {s.value: i for i, s in enumerate(Stream)}
PID = 0
TIMELINE_NEEDS = ["op_id", "stream", "kind", "layer", "step", "micro_batch", "start_s", "end_s"]


def op_name(kind: str, layer: int, micro_batch: int) -> str:
    """Event name: kind, layer and micro-batch, e.g. `load_kv L3 mb1`."""
    where = f" L{layer}" if layer >= 0 else ""
    return f"{kind}{where} mb{micro_batch}"


def _op_args(schedule: Schedule | None, row: dict[str, Any]) -> dict[str, Any]:
    args: dict[str, Any] = {"op_id": row["op_id"], "layer": row["layer"], "step": row["step"],
                            "micro_batch": row["micro_batch"]}
    if schedule is not None and 0 <= row["op_id"] < len(schedule.ops):
        op = schedule.ops[row["op_id"]]
        args.update(link_bytes=op.link_bytes, flops=op.flops, hbm_bytes=op.hbm_bytes, host_bytes=op.host_bytes,
                    pinned=op.pinned, deps=list(op.deps), after=list(op.after))
        if op.shape:
            args["shape"] = op.shape_dict
    else:
        for col in ("link_bytes", "flops"):
            if col in row:
                args[col] = row[col]
    return args


def chrome_trace_events(schedule: Schedule | None, timeline_df: pd.DataFrame, process_name: str) -> list[dict]:
    """Metadata events, then one `X` event per timeline row."""
    missing = [c for c in TIMELINE_NEEDS if c not in timeline_df.columns]
    if missing:
        raise ValueError(f"timeline lacks the columns {', '.join(missing)}")
    streams = list(dict.fromkeys(timeline_df["stream"]))
    tids = {s: STREAM_TIDS.get(s, len(STREAM_TIDS) + i) for i, s in enumerate(streams)}
    events: list[dict] = [
        {"name": "process_name", "ph": "M", "pid": PID, "tid": 0, "args": {"name": process_name}},
        {"name": "process_sort_index", "ph": "M", "pid": PID, "tid": 0, "args": {"sort_index": 0}},
    ]
    for s, tid in sorted(tids.items(), key=lambda kv: kv[1]):
        events.append({"name": "thread_name", "ph": "M", "pid": PID, "tid": tid, "args": {"name": s}})
        events.append({"name": "thread_sort_index", "ph": "M", "pid": PID, "tid": tid, "args": {"sort_index": tid}})
    for row in timeline_df.to_dict("records"):
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        start_us = row["start_s"] * 1e6
        events.append({
            "ph": "X",
            "cat": row["kind"],
            "name": op_name(row["kind"], row["layer"], row["micro_batch"]),
            "pid": PID,
            "tid": tids[row["stream"]],
            "ts": round(start_us, 3),
            "dur": round(row["end_s"] * 1e6 - start_us, 3),
            "args": _op_args(schedule, row),
        })
    return events


def write_chrome_trace(schedule: Schedule | None, timeline_df: pd.DataFrame, path: str | Path,
                       meta: dict | None = None) -> Path:
    """Write `timeline_df` (the Timeline schema) as a Chrome trace JSON file at `path`.

    `schedule` supplies each op's bytes, FLOPs, shape and dependencies as event
    arguments (None: only the timeline's own `link_bytes` and `flops`); `meta`
    lands in the trace's `otherData` (shown by Perfetto under trace info).
    """
    path = Path(path)
    meta = dict(meta or {})
    if schedule is not None:
        m = schedule.meta
        meta.setdefault("model", m.model)
        meta.setdefault("hardware", m.hardware)
        meta.setdefault("policy", m.policy)
        process = f"hssim: {m.model} on {m.hardware}, {m.policy}"
    else:
        process = "hssim: " + ", ".join(f"{k}={v}" for k, v in meta.items()) if meta else "hssim"
    trace = {
        "schemaVersion": 1,
        "displayTimeUnit": "ms",
        "otherData": {k: (v if isinstance(v, (str, int, float, bool)) or v is None else str(v))
                      for k, v in meta.items()},
        "traceEvents": chrome_trace_events(schedule, timeline_df, process),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        json.dump(trace, f, separators=(",", ":"))
    return path
