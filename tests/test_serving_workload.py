"""Serving workloads, scenarios and the `serve` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from hssim.cli.serve import serve
from hssim.sim.scenario import ScenarioError
from hssim.sim.serving.scenario import load_serving_points
from hssim.sim.serving.workload import LengthDist, ServingWorkload, poisson_requests, read_trace, workload_requests

ROOT = Path(__file__).resolve().parents[1]

TINY = """
name: tiny-serving
model: {preset: opt-1.3b, layers: 4}
hardware: gh200-c2c
gpu_kv_bytes: 2.0e8
engine: {max_batched_tokens: 512}
workload:
  requests: 40
  rate_rps: 200
  seed: 3
  prompt_len: {dist: uniform, min: 50, max: 300}
  output_len: 20
policies:
  - {kind: vllm-swap}
  - {kind: vllm-recompute}
  - {kind: oneiros}
sweep:
  workload.rate_rps: [100, 400]
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_poisson_workload_is_seeded_and_rate_only_rescales_time():
    prompt = LengthDist(dist="lognormal", median=500, sigma=0.6, min=16, max=1500)
    output = LengthDist(dist="uniform", min=8, max=64)
    a = poisson_requests(500, 2.0, prompt, output, seed=7)
    assert a == poisson_requests(500, 2.0, prompt, output, seed=7)
    b = poisson_requests(500, 4.0, prompt, output, seed=7)
    assert [(r.prompt_len, r.output_len) for r in a] == [(r.prompt_len, r.output_len) for r in b]
    assert np.allclose([r.arrival_s / 2 for r in a], [r.arrival_s for r in b])
    gaps = np.diff([r.arrival_s for r in a])
    assert gaps.mean() == pytest.approx(0.5, rel=0.15)  # Poisson at 2/s
    assert all(16 <= r.prompt_len <= 1500 and 8 <= r.output_len <= 64 for r in a)
    assert a != poisson_requests(500, 2.0, prompt, output, seed=8)


def test_trace_generator_round_trips_through_the_trace_reader(tmp_path):
    out = tmp_path / "t.csv"
    res = CliRunner().invoke(serve, ["trace", "--out", str(out), "--requests", "50", "--rate-rps", "5", "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert out.read_text().splitlines()[0] == "arrival_s,prompt_len,output_len"
    reqs = read_trace(out)
    assert len(reqs) == 50 and [r.id for r in reqs] == list(range(50))
    again = workload_requests(ServingWorkload(trace=str(out)))
    assert again == reqs


@pytest.mark.parametrize("text,field", [
    ("arrival,prompt,output\n0,1,1\n", "header"),
    ("arrival_s,prompt_len,output_len\n0,abc,1\n", "line 2"),
    ("arrival_s,prompt_len,output_len\n0,10,0\n", "line 2"),
    ("arrival_s,prompt_len,output_len\n", "file"),
])
def test_bad_trace_rows_are_one_line_errors(tmp_path, text, field):
    path = write(tmp_path, text, "bad.csv")
    with pytest.raises(ScenarioError) as e:
        read_trace(path)
    assert e.value.field == field and "\n" not in str(e.value)


def test_bundled_serving_scenarios_load():
    files = sorted((ROOT / "scenarios" / "serving").glob("*.yaml"))
    assert len(files) >= 3
    points = load_serving_points(files)
    boxes = {p.hardware.link.name for p in points}
    assert {"nvlink-c2c", "pcie4-x16"} <= boxes
    assert {"opt-13b", "opt-30b", "llama-3-8b"} <= {p.model.name for p in points}
    assert {"vllm-swap", "vllm-recompute", "oneiros"} <= {p.policy.kind.value for p in points}


def test_serve_run_writes_results_and_prints_json(tmp_path):
    scen = write(tmp_path, TINY)
    out = tmp_path / "out"
    res = CliRunner().invoke(serve, ["run", str(scen), "--json", "--out", str(out), "--iterations", "--markdown",
                                     str(out / "table.md")])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]  # progress lines go to stderr
    assert "done" in res.stderr
    assert len(rows) == 6 and {r["policy"] for r in rows} == {"vllm-swap", "vllm-recompute", "oneiros"}
    for col in ("ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tbt_p50_s", "tbt_p90_s", "tbt_p99_s", "throughput_tok_s",
                "h2d_bytes", "d2h_bytes", "remapped_layers_mean", "remapped_layers_max"):
        assert all(col in r for r in rows)
    assert all(r["output_tokens"] == 40 * 20 for r in rows)
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 6 and pd.read_csv(out / "results.csv").shape == df.shape
    iterations = pd.read_parquet(out / "iterations.parquet")
    assert {"start_s", "remapped_layers", "bound_layers", "policy_label"} <= set(iterations.columns)
    md = (out / "table.md").read_text()
    assert "Made by: `hssim serve run" in md and "vs vllm-swap" in md and "KV pressure" in md


BAD = {
    "unknown policy": ("policies:\n  - {kind: vllm-swap}", "policies:\n  - {kind: vllm}", "policies[0].kind"),
    "typo in workload": ("seed: 3", "sed: 3", "workload.sed"),
    "fallback on vllm": ("- {kind: vllm-recompute}", "- {kind: vllm-recompute, fallback: swap}", "policies[1]"),
    "pool larger than the GPU": ("gpu_kv_bytes: 2.0e8", "gpu_kv_bytes: 2.0e12", "gpu_kv_bytes"),
    "request larger than the pool": ("gpu_kv_bytes: 2.0e8", "gpu_kv_bytes: 2.0e6", "workload.prompt_len"),
    "bad axis": ("workload.rate_rps: [100, 400]", "workload.speed: [1]", "sweep.workload.speed"),
    "trace and rate": ("  requests: 40\n", "  trace: x.csv\n", "workload"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_serving_scenarios_give_one_clear_line(tmp_path, case):
    old, new, field = BAD[case]
    assert old in TINY
    scen = write(tmp_path, TINY.replace(old, new))
    res = CliRunner().invoke(serve, ["run", str(scen)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert field in lines[0] and "fix:" in lines[0]


def test_serve_run_table_is_whole_when_not_a_terminal_and_figures_are_written(tmp_path):
    scen = write(tmp_path, TINY.replace("  - {kind: oneiros}\n", "  - {kind: oneiros}\n  - {kind: oneiros, "
                                                                   "respect_bound: false}\n"))
    out = tmp_path / "out"
    res = CliRunner().invoke(serve, ["run", str(scen), "--figures", str(out), "--markdown", str(out / "README.md")])
    assert res.exit_code == 0, res.output
    assert "…" not in res.output  # CliRunner's stdout is not a TTY: no column is cut
    for head in ("TTFT p99", "TBT p99", "layers (mean/max)", "D2H GB", "oneiros unbounded"):
        assert head in res.output
    png = out / "remapping_over_time.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "README.md").read_text()
    assert "](remapping_over_time.png)" in md and "--figures" in md
