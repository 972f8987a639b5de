"""Chrome / Perfetto trace of a timeline, in the shape torch.profiler writes.

The Trace Event Format (the JSON that chrome://tracing, ui.perfetto.dev and
torch.profiler's `export_chrome_trace` share), laid out as torch.profiler lays
out a GPU run:

- one *process* per device (`pid`), one *thread* per stream (`tid`): the GPU's
  `compute`, `h2d` and `d2h` streams under the GPU's process, the `cpu` stream under
  the host's. Each executor has its own pids and process names (simulated:
  `SIM_PIDS`, measured: `MEASURED_PIDS`), so traces of both concatenate into one
  trace without colliding (`write_trace` with two parts does exactly that);
- one complete event (`ph: "X"`, microseconds) per op, named `KIND L<layer> s<step>
  mb<micro-batch>` (`lm_head s<step> mb<micro-batch>` for ops outside the layer stack),
  with `cat` the category torch.profiler gives such an event: `kernel` for GPU
  compute, `gpu_memcpy` for copies, `cpu_op` for host compute; the op kind, layer,
  step, sizes and shape are in `args`;
- a flow (`ph: "s"` at the producer, `ph: "f"`, `bp: "e"` at the consumer, as
  torch.profiler writes its `ac2g` flows) for every dependency between ops on
  different streams: `data` for data dependencies, `buffer reuse` for ordering-only
  ones (within a stream the order is the track itself);
- counter tracks (`ph: "C"`): GPU and host memory in use (bytes, the simulator's
  occupancy model applied to the timeline), and the H2D / D2H link bandwidth
  (bytes/s moved by the copy running at each instant).

`steps` and `layers` keep only those decode steps (0 is the prefill) and layers (the
LM head, outside the layer stack, stays with its step); the counters then cover the
time the kept ops span. A path ending in `.json.gz` is written gzip-compressed,
which Perfetto and chrome://tracing open as it is.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UserError
from .engine import SimResult
from .metrics import memory_occupancy
from .schedule import Schedule

TIMELINE_NEEDS = ["op_id", "stream", "kind", "layer", "step", "micro_batch", "start_s", "end_s"]
TRACE_SUFFIXES = (".json", ".json.gz")

#: (pid of the GPU, pid of the host) per executor: distinct, so traces of both merge cleanly
SIM_PIDS = (1, 2)
MEASURED_PIDS = (11, 12)
EXECUTOR_PIDS = {"sim": SIM_PIDS, "measured": MEASURED_PIDS}
EXECUTOR_WORDS = {"sim": "simulated", "measured": "measured"}

#: stream -> (device: 0 the GPU, 1 the host; tid), in the order a trace viewer lists them
STREAM_PLACE = {"compute": (0, 1), "h2d": (0, 2), "d2h": (0, 3), "cpu": (1, 1)}
#: torch.profiler's event categories (Kineto's `ActivityType` names) per stream
STREAM_CAT = {"compute": "kernel", "h2d": "gpu_memcpy", "d2h": "gpu_memcpy", "cpu": "cpu_op"}
#: link bandwidth counter track per copy stream
LINK_COUNTERS = {"h2d": "H2D link", "d2h": "D2H link"}
#: the op kind outside the layer stack (the schedule files it under the last layer)
OUTSIDE_STACK = "lm_head"


def op_name(kind: str, layer: int, step: int, micro_batch: int, in_stack: bool = True) -> str:
    """Event name, e.g. `load_kv L3 s5 mb1`; ops outside the layer stack (the LM head) carry no layer."""
    where = f" L{layer}" if in_stack and layer >= 0 else ""
    return f"{kind}{where} s{step} mb{micro_batch}"


@dataclass(frozen=True)
class Selection:
    """Steps or layers to keep, as inclusive ranges (`--trace-steps 0,2-4`); never expanded, so a
    range of any length costs nothing."""

    ranges: tuple[tuple[int, int], ...]
    option: str = ""

    def mask(self, values) -> np.ndarray:
        values = np.asarray(values)
        out = np.zeros(values.shape, dtype=bool)
        for lo, hi in self.ranges:
            out |= (values >= lo) & (values <= hi)
        return out

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and any(lo <= value <= hi for lo, hi in self.ranges)

    def __str__(self) -> str:
        return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ranges)


def parse_selection(text: str | None, option: str) -> Selection | None:
    """`"0,2-4"` -> the ranges 0 and 2-4; None stays None (keep everything)."""
    if text is None:
        return None
    ranges: list[tuple[int, int]] = []
    for part in str(text).split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if dash else a
        except ValueError:
            raise UserError(f"{option} {text}: expected numbers and ranges such as 0,2-4") from None
        if a < 0 or b < a:
            raise UserError(f"{option} {text}: a range runs from a smaller to a larger number >= 0, e.g. 2-4")
        ranges.append((a, b))
    return Selection(tuple(sorted(ranges)), option)


def _mask(selection, values) -> np.ndarray:
    """Which `values` a selection keeps (a `Selection`, or any collection of ints)."""
    if isinstance(selection, Selection):
        return selection.mask(values)
    return np.isin(values, list(selection))


def _describe(selection) -> str:
    if isinstance(selection, Selection):
        return str(selection)
    return ",".join(map(str, sorted(selection)))


def _selectable(tl: pd.DataFrame, col: str) -> np.ndarray:
    """The steps, or the layers of the layer stack (the LM head has none), of a timeline's ops."""
    values = tl[col].to_numpy()
    return values[_in_stack(tl["kind"].to_numpy(), values)] if col == "layer" else values


def _check_selection_keeps_ops(parts, steps, layers) -> None:
    """Refuse a step or layer selection that keeps no op of any part, naming what the run has."""
    for sel, col, what in ((steps, "step", "steps"), (layers, "layer", "layers")):
        if sel is None:
            continue
        have = np.concatenate([_selectable(p.timeline, col) for p in parts] or [np.zeros(0, int)])
        if len(have) and not _mask(sel, have).any():
            option = getattr(sel, "option", "") or f"--trace-{what}"
            raise UserError(f"{option} {_describe(sel)}: the run has {what} {int(have.min())}-{int(have.max())}, "
                            f"so the trace would hold no op; fix: pick {what} in that range")


def check_trace_path(path: str | Path, option: str = "--trace") -> Path:
    """Refuse, before anything runs, a trace path whose format is not one this module writes."""
    path = Path(path)
    if not path.name.endswith(TRACE_SUFFIXES):
        raise UserError(f"{option} {path}: a trace is Chrome-trace JSON; fix: end the file name in .json "
                        "or .json.gz")
    return path


@dataclass(frozen=True)
class TracePart:
    """One executor's timeline of one schedule: what a trace shows as a GPU and a host process."""

    timeline: pd.DataFrame
    schedule: Schedule | None = None
    executor: str = "sim"  # "sim" or "measured"
    device: str = ""  # e.g. "cpu" or the CUDA device name, for a measured timeline


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _process_names(part: TracePart) -> tuple[str, str]:
    word = EXECUTOR_WORDS[part.executor]
    on = f" on {part.device}" if part.device else ""
    what = ""
    if part.schedule is not None:
        m = part.schedule.meta
        what = f": {m.model} on {m.hardware}, {m.policy}"
    return f"GPU ({word}{on}){what}", f"host CPU ({word}{on})"


def _in_stack(kind, layer):
    """Ops of a layer of the stack; the LM head (which the schedule files under the last layer) is not."""
    return (kind != OUTSIDE_STACK) & (layer >= 0)


def _keep(tl: pd.DataFrame, steps, layers) -> np.ndarray:
    keep = np.ones(len(tl), dtype=bool)
    if steps is not None:
        keep &= _mask(steps, tl["step"].to_numpy())
    if layers is not None:
        layer = tl["layer"].to_numpy()
        keep &= ~_in_stack(tl["kind"].to_numpy(), layer) | _mask(layers, layer)
    return keep


def _counter(name: str, pid: int, key: str, t_us: np.ndarray, values: np.ndarray) -> list[dict]:
    return [{"ph": "C", "name": name, "pid": pid, "ts": round(float(t), 3), "args": {key: _plain(v)}}
            for t, v in zip(t_us, values, strict=True)]


def _window(times_us: np.ndarray, values: np.ndarray, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
    """The counter samples inside [t0, t1], led by the value in force at t0."""
    if not len(times_us):
        return times_us, values
    inside = (times_us >= t0) & (times_us <= t1)
    before = np.nonzero(times_us < t0)[0]
    if len(before):
        lead = before[-1]
        return np.concatenate([[t0], times_us[inside]]), np.concatenate([[values[lead]], values[inside]])
    return times_us[inside], values[inside]


def _link_rate(tl: pd.DataFrame, stream: str) -> tuple[np.ndarray, np.ndarray]:
    """(time_us, bytes/s) of one copy stream: the rate of the copy running, 0 between copies."""
    rows = tl[tl["stream"] == stream]
    if not len(rows) or "link_bytes" not in rows:
        return np.array([]), np.array([])
    start, end = rows["start_s"].to_numpy() * 1e6, rows["end_s"].to_numpy() * 1e6
    dur_s = (end - start) / 1e6
    rate = np.where(dur_s > 0, rows["link_bytes"].to_numpy() / np.where(dur_s > 0, dur_s, 1.0), 0.0)
    # ends first, starts after: a copy starting as the previous one ends wins the instant
    t = np.round(np.concatenate([end, start]), 3)
    v = np.concatenate([np.zeros(len(end)), rate])
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    last = np.append(t[1:] != t[:-1], True)
    return t[last], np.round(v[last], 1)


def _memory(part: TracePart) -> pd.DataFrame | None:
    if part.schedule is None or len(part.timeline) != len(part.schedule):
        return None
    tl = part.timeline.sort_values("op_id")
    start = np.rint(tl["start_s"].to_numpy() * 1e9).astype(np.int64)
    end = np.rint(tl["end_s"].to_numpy() * 1e9).astype(np.int64)
    return memory_occupancy(SimResult(part.schedule, duration_ns=end - start, start_ns=start, end_ns=end))


def _op_args(schedule: Schedule | None, row: dict[str, Any], device: int) -> dict[str, Any]:
    args: dict[str, Any] = {"kind": row["kind"], "stream": row["stream"], "device": device, "op_id": row["op_id"],
                            "layer": row["layer"], "step": row["step"], "micro_batch": row["micro_batch"]}
    if schedule is not None and 0 <= row["op_id"] < len(schedule):
        op = schedule.ops[row["op_id"]]
        args.update(link_bytes=op.link_bytes, flops=op.flops, hbm_bytes=op.hbm_bytes, host_bytes=op.host_bytes,
                    pinned=op.pinned)
        if op.shape:
            args["shape"] = op.shape_dict
    else:
        for col in ("link_bytes", "flops"):
            if col in row:
                args[col] = row[col]
    return args


def trace_events(part: TracePart, steps: frozenset[int] | None = None,
                 layers: frozenset[int] | None = None, flow_base: int = 0) -> list[dict]:
    """Metadata, op, flow and counter events of one part (see the module docstring)."""
    tl = part.timeline
    missing = [c for c in TIMELINE_NEEDS if c not in tl.columns]
    if missing:
        raise ValueError(f"timeline lacks the columns {', '.join(missing)}")
    if part.executor not in EXECUTOR_PIDS:
        raise ValueError(f"executor {part.executor!r}: expected one of {', '.join(EXECUTOR_PIDS)}")
    pids = EXECUTOR_PIDS[part.executor]
    unknown = sorted(set(tl["stream"]) - set(STREAM_PLACE))
    if unknown:
        raise ValueError(f"timeline has unknown streams {', '.join(unknown)}")
    names = _process_names(part)
    events: list[dict] = []
    used_devices = sorted({STREAM_PLACE[s][0] for s in tl["stream"]} | {0})
    for dev in used_devices:
        pid = pids[dev]
        events.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": names[dev]}})
        events.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
    for stream in sorted(set(tl["stream"]), key=lambda s: STREAM_PLACE[s]):
        dev, tid = STREAM_PLACE[stream]
        events.append({"name": "thread_name", "ph": "M", "pid": pids[dev], "tid": tid,
                       "args": {"name": f"stream {stream}"}})
        events.append({"name": "thread_sort_index", "ph": "M", "pid": pids[dev], "tid": tid,
                       "args": {"sort_index": tid}})

    keep = _keep(tl, steps, layers)
    kept = tl[keep]
    if not len(kept):
        return events
    where: dict[int, tuple[int, int, float]] = {}  # op id -> (pid, tid, midpoint us) for flows
    for row in kept.to_dict("records"):
        row = {k: _plain(v) for k, v in row.items()}
        dev, tid = STREAM_PLACE[row["stream"]]
        start_us, end_us = row["start_s"] * 1e6, row["end_s"] * 1e6
        layer = row["layer"]
        in_stack = bool(_in_stack(row["kind"], layer))
        events.append({
            "ph": "X",
            "cat": STREAM_CAT[row["stream"]],
            "name": op_name(row["kind"], layer, row["step"], row["micro_batch"], in_stack),
            "pid": pids[dev],
            "tid": tid,
            "ts": round(start_us, 3),
            "dur": round(end_us - start_us, 3),
            "args": _op_args(part.schedule, row, dev),
        })
        where[row["op_id"]] = (pids[dev], tid, round((start_us + end_us) / 2, 3))

    if part.schedule is not None:
        flow_id = flow_base
        sched = part.schedule
        for dst, (dpid, dtid, dts) in where.items():
            if dst >= len(sched):
                continue
            for name, srcs in (("data", sched.deps[dst]), ("buffer reuse", sched.after[dst])):
                for src in srcs:
                    s = where.get(src)
                    if s is None or (s[0], s[1]) == (dpid, dtid):
                        continue
                    flow_id += 1
                    common = {"name": name, "cat": "dependency", "id": flow_id}
                    events.append({**common, "ph": "s", "pid": s[0], "tid": s[1], "ts": s[2]})
                    events.append({**common, "ph": "f", "bp": "e", "pid": dpid, "tid": dtid, "ts": dts})

    t0 = float(kept["start_s"].min()) * 1e6
    t1 = float(kept["end_s"].max()) * 1e6
    occ = _memory(part)
    if occ is not None:
        t_us = np.round(occ["time_s"].to_numpy() * 1e6, 3)
        for dev, col, name in ((0, "gpu_bytes", "GPU memory"), (1, "host_bytes", "host memory")):
            t, v = _window(t_us, occ[col].to_numpy(), t0, t1)
            events += _counter(name, pids[dev], "bytes", t, v)
    for stream, name in LINK_COUNTERS.items():
        t, v = _window(*_link_rate(tl, stream), t0, t1)
        events += _counter(name, pids[0], "bytes_per_s", t, v)
    return events


def write_trace(parts: Iterable[TracePart], path: str | Path, meta: dict | None = None,
                steps: frozenset[int] | None = None, layers: frozenset[int] | None = None) -> Path:
    """Write the parts (e.g. a simulated and a measured timeline of one schedule) as one trace at `path`.

    `meta` lands in the trace's `otherData` (Perfetto shows it under trace info).
    """
    path = check_trace_path(path)
    _check_selection_keeps_ops(parts, steps, layers)
    events: list[dict] = []
    for part in parts:
        flow_base = sum(1 for e in events if e["ph"] == "s")
        events += trace_events(part, steps, layers, flow_base=flow_base)
    meta = dict(meta or {})
    if steps is not None:
        meta["steps_kept"] = _describe(steps)
    if layers is not None:
        meta["layers_kept"] = _describe(layers)
    trace = {
        "schemaVersion": 1,
        "displayTimeUnit": "ms",
        "otherData": {k: (v if isinstance(v, (str, int, float, bool)) or v is None else str(v))
                      for k, v in meta.items()},
        "traceEvents": events,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(trace, separators=(",", ":"))
    tmp = path.with_name(path.name + ".tmp")
    if path.name.endswith(".gz"):
        with gzip.open(tmp, "wt", compresslevel=6) as f:
            f.write(text)
    else:
        tmp.write_text(text)
    tmp.replace(path)
    return path


def write_chrome_trace(schedule: Schedule | None, timeline_df: pd.DataFrame, path: str | Path,
                       meta: dict | None = None, executor: str = "sim", device: str = "",
                       steps: frozenset[int] | None = None, layers: frozenset[int] | None = None) -> Path:
    """Write one timeline (the Timeline schema) as a trace; `schedule` supplies sizes, shapes,
    dependencies (flows) and the memory counters (None: only the timeline's own columns)."""
    meta = dict(meta or {})
    if schedule is not None:
        m = schedule.meta
        meta.setdefault("model", m.model)
        meta.setdefault("hardware", m.hardware)
        meta.setdefault("policy", m.policy)
    return write_trace([TracePart(timeline_df, schedule, executor, device)], path, meta, steps, layers)


def read_trace(path: str | Path) -> dict:
    """A trace this module wrote (plain or gzip), as the JSON object."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as f:
        return json.load(f)
