"""Traces: valid Trace Event Format, laid out as torch.profiler lays out a GPU run, and faithful to the run.

The schema below is written from the Trace Event Format specification (the JSON Object
Format: `traceEvents`, `displayTimeUnit`, `otherData`; complete events `X` with `dur`,
metadata events `M` with the five names the format defines, counter events `C` whose
args are numbers, flow events `s`/`t`/`f` with an `id`, `f` with binding point `e`).
"""

from __future__ import annotations

import gzip
import json

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_point, tiny_model

from hssim.cli import main
from hssim.errors import UserError
from hssim.sim.api import run_point
from hssim.sim.trace import (
    MEASURED_PIDS,
    SIM_PIDS,
    STREAM_CAT,
    TracePart,
    parse_selection,
    read_trace,
    write_chrome_trace,
    write_trace,
)

_NUM = {"type": "number"}
_ID = {"type": ["integer", "string"]}
_BASE = {"name": {"type": "string"}, "cat": {"type": "string"}, "ph": {"type": "string"},
         "ts": _NUM, "pid": _ID, "tid": _ID, "args": {"type": "object"}}


def _phase(ph: str, required: list[str], extra: dict | None = None) -> dict:
    return {"if": {"properties": {"ph": {"const": ph}}, "required": ["ph"]},
            "then": {"required": required, "properties": extra or {}}}


TRACE_EVENT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["traceEvents"],
    "properties": {
        "traceEvents": {"type": "array", "items": {"$ref": "#/$defs/event"}},
        "displayTimeUnit": {"enum": ["ms", "ns"]},
        "otherData": {"type": "object"},
    },
    "$defs": {"event": {
        "type": "object",
        "required": ["ph"],
        "properties": {**_BASE, "ph": {"enum": ["X", "B", "E", "i", "I", "C", "M", "s", "t", "f", "b", "n", "e"]}},
        "allOf": [
            _phase("X", ["name", "ts", "dur", "pid", "tid"], {"dur": {"type": "number", "minimum": 0}}),
            _phase("M", ["name", "pid", "args"], {"name": {"enum": ["process_name", "process_labels",
                                                                    "process_sort_index", "thread_name",
                                                                    "thread_sort_index"]}}),
            _phase("C", ["name", "ts", "pid", "args"],
                   {"args": {"type": "object", "minProperties": 1, "additionalProperties": _NUM}}),
            _phase("s", ["name", "cat", "id", "ts", "pid", "tid"], {"id": _ID}),
            _phase("t", ["name", "cat", "id", "ts", "pid", "tid"], {"id": _ID}),
            _phase("f", ["name", "cat", "id", "ts", "pid", "tid"], {"id": _ID, "bp": {"const": "e"}}),
        ],
    }},
}


@pytest.fixture
def scenario_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("model: {preset: opt-1.3b, layers: 2}\nhardware: rtx4090-pcie4\n"
                    "workload: {batch: 4, prompt_len: 32, gen_len: 3}\npolicies: [{kind: kv-only}]\n")
    return str(path)


@pytest.fixture(scope="module")
def cpu_run():
    """Every stream busy: FlexGen's CPU attention (compute, h2d, d2h and cpu)."""
    point = make_point(tiny_model(layers=3, hidden=128, heads=4), batch=4, prompt_len=16, gen_len=4,
                       num_gpu_batches=2, kind="kv-only", cpu_attention=True)
    return run_point(point)


def _by_ph(trace: dict, ph: str) -> list[dict]:
    return [e for e in trace["traceEvents"] if e["ph"] == ph]


def _threads(trace: dict) -> dict[tuple, str]:
    return {(e["pid"], e["tid"]): e["args"]["name"] for e in _by_ph(trace, "M") if e["name"] == "thread_name"}


def test_trace_is_valid_trace_event_format(tmp_path, cpu_run):
    path = write_chrome_trace(cpu_run.schedule, cpu_run.result.timeline(), tmp_path / "t.json")
    jsonschema.validate(json.loads(path.read_text()), TRACE_EVENT_SCHEMA)
    gz = write_chrome_trace(cpu_run.schedule, cpu_run.result.timeline(), tmp_path / "t.json.gz")
    with gzip.open(gz, "rt") as f:
        jsonschema.validate(json.load(f), TRACE_EVENT_SCHEMA)
    assert read_trace(gz)["traceEvents"] == json.loads(path.read_text())["traceEvents"]


def test_one_process_per_device_one_track_per_stream(tmp_path, cpu_run):
    sched, tl = cpu_run.schedule, cpu_run.result.timeline()
    trace = read_trace(write_chrome_trace(sched, tl, tmp_path / "t.json"))
    threads = _threads(trace)
    ops = _by_ph(trace, "X")
    assert len(ops) == len(sched)
    gpu, host = SIM_PIDS
    for e in ops:
        op = sched.ops[e["args"]["op_id"]]
        assert threads[(e["pid"], e["tid"])] == f"stream {op.stream.value}"
        assert e["pid"] == (host if op.stream.value == "cpu" else gpu)
        assert e["cat"] == STREAM_CAT[op.stream.value] and e["cat"] in {"kernel", "gpu_memcpy", "cpu_op"}
        assert e["args"]["kind"] == op.kind.value and e["args"]["step"] == op.step
        assert e["ts"] == pytest.approx(cpu_run.result.start_ns[op.id] / 1e3, abs=1e-3)
        assert e["dur"] == pytest.approx(cpu_run.result.duration_ns[op.id] / 1e3, abs=2e-3)
        # the step is in the name; the LM head, outside the layer stack, carries no layer
        assert f" s{op.step} mb{op.micro_batch}" in e["name"]
        assert (" L" in e["name"]) == (op.kind.value != "lm_head")
    # a stream runs one op at a time: no two slices of one track overlap
    for track in threads:
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in ops if (e["pid"], e["tid"]) == track)
        assert all(b[0] >= a[1] - 1e-3 for a, b in zip(spans, spans[1:], strict=False))


def test_flows_join_every_cross_stream_dependency(tmp_path, cpu_run):
    sched = cpu_run.schedule
    trace = read_trace(write_chrome_trace(sched, cpu_run.result.timeline(), tmp_path / "t.json"))
    slices = {e["args"]["op_id"]: e for e in _by_ph(trace, "X")}
    starts = {e["id"]: e for e in _by_ph(trace, "s")}
    ends = {e["id"]: e for e in _by_ph(trace, "f")}
    assert starts.keys() == ends.keys() and starts

    def enclosing(ev):  # the slice on the event's track that contains its time (what a viewer binds)
        found = [op for op, x in slices.items() if (x["pid"], x["tid"]) == (ev["pid"], ev["tid"])
                 and x["ts"] <= ev["ts"] <= x["ts"] + x["dur"]]
        assert len(found) >= 1
        return found

    edges = set()
    for fid, s in starts.items():
        f = ends[fid]
        assert f["bp"] == "e" and (s["pid"], s["tid"]) != (f["pid"], f["tid"])
        edges.add((tuple(enclosing(s)), tuple(enclosing(f))))
    expected = sum(1 for op in sched.ops for d in (*op.deps, *op.after)
                   if sched.ops[d].stream is not op.stream)
    assert len(starts) == expected


def test_counters_conserve_bytes_and_match_the_metrics(tmp_path, cpu_run):
    trace = read_trace(write_chrome_trace(cpu_run.schedule, cpu_run.result.timeline(), tmp_path / "t.json"))
    counters = _by_ph(trace, "C")
    gpu_mem = [e["args"]["bytes"] for e in counters if e["name"] == "GPU memory"]
    host_mem = [e["args"]["bytes"] for e in counters if e["name"] == "host memory"]
    assert max(gpu_mem) == cpu_run.metrics["peak_gpu_bytes"] <= cpu_run.schedule.memory.gpu_bytes
    assert max(host_mem) == cpu_run.metrics["peak_host_bytes"]
    for name, metric in (("H2D link", "h2d_bytes"), ("D2H link", "d2h_bytes")):
        pts = [(e["ts"], e["args"]["bytes_per_s"]) for e in counters if e["name"] == name]
        t = np.array([p[0] for p in pts]) / 1e6
        rate = np.array([p[1] for p in pts])
        assert rate[-1] == 0 and (rate >= 0).all()
        # the bandwidth track integrates to the bytes the link moved
        assert float(np.sum(rate[:-1] * np.diff(t))) == pytest.approx(cpu_run.metrics[metric], rel=1e-3)


def test_simulated_and_measured_merge_without_collisions(tmp_path, cpu_run):
    tl = cpu_run.result.timeline()
    late = tl.assign(start_s=tl["start_s"] * 1.5, end_s=tl["end_s"] * 1.5)  # a "measured" run, slower
    path = write_trace([TracePart(late, cpu_run.schedule, "measured", "cpu"),
                        TracePart(tl, cpu_run.schedule, "sim")], tmp_path / "both.json")
    trace = read_trace(path)
    jsonschema.validate(trace, TRACE_EVENT_SCHEMA)
    names = {e["pid"]: e["args"]["name"] for e in _by_ph(trace, "M") if e["name"] == "process_name"}
    assert set(names) == {*SIM_PIDS, *MEASURED_PIDS} and len(set(names.values())) == 4
    ops = _by_ph(trace, "X")
    assert sum(e["pid"] in SIM_PIDS for e in ops) == sum(e["pid"] in MEASURED_PIDS for e in ops) == len(tl)
    flow_ids = [e["id"] for e in _by_ph(trace, "s")]
    assert len(flow_ids) == len(set(flow_ids))  # the two parts' flows do not join up


def test_step_and_layer_filters(tmp_path, cpu_run):
    sched, tl = cpu_run.schedule, cpu_run.result.timeline()
    trace = read_trace(write_chrome_trace(sched, tl, tmp_path / "t.json", steps=frozenset({1}),
                                          layers=frozenset({0, 1})))
    ops = _by_ph(trace, "X")
    expected = [op for op in sched.ops if op.step == 1 and (op.layer in (0, 1) or op.kind.value == "lm_head")]
    assert sorted(e["args"]["op_id"] for e in ops) == [op.id for op in expected]
    assert any(e["args"]["kind"] == "lm_head" for e in ops)
    t0, t1 = min(e["ts"] for e in ops), max(e["ts"] + e["dur"] for e in ops)
    assert all(t0 - 1e-3 <= e["ts"] <= t1 + 1e-3 for e in _by_ph(trace, "C"))
    kept = {e["args"]["op_id"] for e in ops}
    slices = {e["args"]["op_id"]: e for e in ops}
    for s in _by_ph(trace, "s"):  # flows only between kept ops
        assert any(slices[o]["pid"] == s["pid"] and slices[o]["tid"] == s["tid"] for o in kept)
    assert trace["otherData"]["steps_kept"] == "1"


def test_selection_parsing():
    sel = parse_selection("0,2-4", "--trace-steps")
    assert sel.mask(range(6)).tolist() == [True, False, True, True, True, False] and str(sel) == "0,2-4"
    huge = parse_selection("0-99999999999", "--trace-steps")  # never expanded: no memory for a long range
    assert huge.mask([0, 5, 10**11]).tolist() == [True, True, False]
    assert parse_selection(None, "--trace-steps") is None
    for bad in ("a", "3-1", "-2"):
        with pytest.raises(UserError, match="--trace-steps"):
            parse_selection(bad, "--trace-steps")


def test_run_checks_output_formats_before_simulating(tmp_path, scenario_file):
    runner = CliRunner()
    res = runner.invoke(main, ["run", scenario_file, "--trace", str(tmp_path / "t.txt")])
    assert res.exit_code == 2 and "end the file name in .json" in res.output
    assert not (tmp_path / "t.txt").exists()
    res = runner.invoke(main, ["run", scenario_file, "--timeline", str(tmp_path / "tl.feather")])
    assert res.exit_code == 2 and ".parquet or .csv" in res.output
    res = runner.invoke(main, ["run", scenario_file, "--trace-steps", "1"])
    assert res.exit_code == 2 and "--trace" in res.output
    out = tmp_path / "t.json.gz"
    res = runner.invoke(main, ["run", scenario_file, "--trace", str(out), "--trace-steps", "0"])
    assert res.exit_code == 0, res.output
    assert {e["args"]["step"] for e in read_trace(out)["traceEvents"] if e["ph"] == "X"} == {0}
    assert f"wrote the trace to {out}" in res.output
