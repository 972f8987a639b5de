"""The command line: results a user can open, and one clear line for each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from hssim.cli import main

TINY = """
name: tiny
model: {preset: opt-1.3b, layers: 2}
hardware: rtx4090-pcie4
workload: {batch: 8, prompt_len: 64, gen_len: 3}
policy_defaults: {num_gpu_batches: 2}
policies:
  - {kind: kv-only}
  - {kind: hybrid}
  - {kind: token-recompute}
sweep:
  workload.prompt_len: [32, 64]
  policy.kv_ratio: [0.0, 0.5]
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_sweep_writes_results_and_ranks_policies(tmp_path):
    scen = write(tmp_path, TINY)
    out = tmp_path / "out"
    res = invoke("sweep", scen, "--out", out, "--jobs", "2")
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out / "results.parquet")
    # kv-only ignores the kv_ratio axis: 2 prompts x (1 + 2 + 2)
    assert len(df) == 10
    for col in ("scenario", "model", "hardware", "policy", "batch", "prompt_len", "gen_len", "kv_ratio",
                "throughput_tok_s", "decode_tok_s", "bound_tok_s", "gpu_busy", "h2d_bytes", "d2h_bytes"):
        assert col in df.columns
    assert (df["status"] == "ok").all()
    assert df.equals(df.drop_duplicates(subset=["point_key"]))
    csv = pd.read_csv(out / "results.csv")
    assert len(csv) == len(df)
    ranking = pd.read_csv(out / "ranking.csv")
    assert set(ranking["policy"]) == {"kv-only", "hybrid", "token-recompute"}
    assert "Best policy per point" in res.output


def test_run_json_prints_one_object(tmp_path):
    scen = write(tmp_path, TINY)
    res = invoke("run", scen, "--policy", "hybrid", "--set", "workload.prompt_len=32", "--set",
                 "policy.kv_ratio=0.5", "--json", "--timeline", tmp_path / "t.parquet")
    assert res.exit_code == 0, res.output
    obj = json.loads(res.output)
    assert obj["policy"] == "hybrid" and obj["kv_ratio"] == 0.5 and obj["prompt_len"] == 32
    tl = pd.read_parquet(tmp_path / "t.parquet")
    assert list(tl.columns[:8]) == ["op_id", "stream", "kind", "layer", "step", "micro_batch", "start_s", "end_s"]
    assert len(tl) == obj["ops"]


def test_run_replays_with_the_list_engine_by_default_and_simpy_gives_the_same_timeline(tmp_path):
    scen = write(tmp_path, TINY)
    point = ("--policy", "token-recompute", "--set", "workload.prompt_len=32", "--set", "policy.kv_ratio=0.5")
    runs = {}
    for engine in ("default", "list", "simpy"):
        flag = () if engine == "default" else ("--engine", engine)
        res = invoke("run", scen, *point, *flag, "--json", "--timeline", tmp_path / f"{engine}.csv")
        assert res.exit_code == 0, res.output
        runs[engine] = (json.loads(res.output), pd.read_csv(tmp_path / f"{engine}.csv"))
    assert "--engine [list|simpy]" in invoke("run", "--help").output and "default: list" in invoke(
        "run", "--help").output
    base_metrics, base_tl = runs["simpy"]
    for engine in ("default", "list"):
        metrics, tl = runs[engine]
        assert metrics == base_metrics
        assert tl.equals(base_tl)  # op for op: start and end of every op


def test_schedule_prints_a_summary(tmp_path):
    scen = write(tmp_path, TINY)
    res = invoke("schedule", scen, "--policy", "kv-only", "--set", "workload.prompt_len=32")
    assert res.exit_code == 0, res.output
    assert "load_kv" in res.output and "memory plan" in res.output


BAD = {
    "unknown model preset": ("model: opt-7b\nhardware: t4-pcie3\nworkload: {batch: 1, prompt_len: 8, gen_len: 2}\n"
                             "policies: [{kind: kv-only}]\n", "model", "opt-1.3b"),
    "unknown hardware preset": ("model: opt-1.3b\nhardware: v100\nworkload: {batch: 1, prompt_len: 8, gen_len: 2}\n"
                                "policies: [{kind: kv-only}]\n", "hardware", "t4-pcie3"),
    "negative batch": ("model: opt-1.3b\nhardware: t4-pcie3\nworkload: {batch: -1, prompt_len: 8, gen_len: 2}\n"
                       "policies: [{kind: kv-only}]\n", "workload.batch", "greater than 0"),
    "unknown field": ("model: opt-1.3b\nhardware: t4-pcie3\nworkload: {batch: 1, promt_len: 8, gen_len: 2}\n"
                      "policies: [{kind: kv-only}]\n", "workload.promt_len", "remove"),
    "unknown policy": ("model: opt-1.3b\nhardware: t4-pcie3\nworkload: {batch: 1, prompt_len: 8, gen_len: 2}\n"
                       "policies: [{kind: magic}]\n", "policies[0].kind", "hybrid"),
    "ratio out of range": ("model: opt-1.3b\nhardware: t4-pcie3\nworkload: {batch: 1, prompt_len: 8, gen_len: 2}\n"
                           "policies: [{kind: hybrid, kv_ratio: 1.5}]\n", "policies[0].kv_ratio", "1"),
    "block shape": ("model: opt-1.3b\nhardware: t4-pcie3\nworkload: {batch: 10, prompt_len: 8, gen_len: 2}\n"
                    "policies: [{kind: kv-only, gpu_batch_size: 4, num_gpu_batches: 2}]\n", "policies[0]", "equal"),
    "missing key": ("model: opt-1.3b\nhardware: t4-pcie3\npolicies: [{kind: kv-only}]\n", "workload", "add"),
    "bad yaml": ("model: [opt\n", "line", "YAML"),
    "not a mapping": ("- 1\n- 2\n", "file", "mapping"),
    "bad axis": ("model: opt-1.3b\nhardware: t4-pcie3\nworkload: {batch: 1, prompt_len: 8, gen_len: 2}\n"
                 "policies: [{kind: kv-only}]\nsweep: {workload.size: [1]}\n", "sweep.workload.size", "axis"),
    "field the policy ignores": ("model: opt-1.3b\nhardware: t4-pcie3\n"
                                 "workload: {batch: 1, prompt_len: 8, gen_len: 2}\n"
                                 "policies: [{kind: kv-only, kv_ratio: 0.5}]\n", "policies[0].kv_ratio", "remove"),
    "key given twice": ("model: opt-1.3b\nhardware: t4-pcie3\nmodel: opt-6.7b\n"
                        "workload: {batch: 1, prompt_len: 8, gen_len: 2}\npolicies: [{kind: kv-only}]\n",
                        "line 3", "twice"),
    "longer than the model": ("model: opt-1.3b\nhardware: t4-pcie3\n"
                              "workload: {batch: 1, prompt_len: 2000, gen_len: 50}\n"
                              "policies: [{kind: kv-only}]\n", "workload", "2048"),
    "does not fit": ("model: opt-175b\nhardware: t4-pcie3\nworkload: {batch: 8, prompt_len: 512, gen_len: 4}\n"
                     "policies: [{kind: kv-only}]\n", "host memory", "needs"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gives_one_clear_line(tmp_path, case):
    text, field, hint = BAD[case]
    scen = write(tmp_path, text)
    res = invoke("run", scen)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert lines[0].startswith("error: ") and str(scen) in lines[0]
    assert field in lines[0] and hint in lines[0] and "fix:" in lines[0]
    assert "Traceback" not in res.output


def test_sweep_with_a_bad_file_writes_nothing(tmp_path):
    good = write(tmp_path, TINY, "good.yaml")
    bad = write(tmp_path, "model: nope\n", "bad.yaml")
    out = tmp_path / "out"
    res = invoke("sweep", good, bad, "--out", out)
    assert res.exit_code == 2
    assert not (out / "results.parquet").exists()


def test_sweep_records_points_that_do_not_fit_and_goes_on(tmp_path):
    text = TINY.replace("workload.prompt_len: [32, 64]", "model: [opt-1.3b, opt-175b]").replace(
        "model: {preset: opt-1.3b, layers: 2}", "model: opt-1.3b").replace("hardware: rtx4090-pcie4",
                                                                              "hardware: t4-pcie3")
    scen = write(tmp_path, text)
    res = invoke("sweep", scen, "--out", tmp_path / "o", "--jobs", "1")
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "o" / "results.csv")
    bad = df[df["model"] == "opt-175b"]
    assert len(bad) and (bad["status"] == "infeasible").all()
    assert bad["error"].str.contains("does not fit in host memory").all()
    assert (df[df["model"] == "opt-1.3b"]["status"] == "ok").all()


def test_run_with_many_points_asks_to_narrow(tmp_path):
    res = invoke("run", write(tmp_path, TINY))
    assert res.exit_code == 2 and "--policy" in res.output and "--set" in res.output


def test_missing_file(tmp_path):
    res = invoke("run", tmp_path / "nope.yaml")
    assert res.exit_code == 2 and "cannot read" in res.output


def test_a_calibrated_profile_can_be_named_like_a_preset(tmp_path):
    pytest.importorskip("hssim.sim.costs.profile")
    text = ("model: {preset: opt-1.3b, layers: 2}\nhardware: cpu-amd-epyc-2cpu-1t\n"
            "workload: {batch: 4, prompt_len: 32, gen_len: 3}\npolicies: [{kind: kv-only}]\n")
    res = invoke("run", write(tmp_path, text), "--json")
    assert res.exit_code == 0, res.output
    obj = json.loads(res.output.strip().splitlines()[-1])
    assert obj["hardware"] == "cpu-amd-epyc-2cpu-1t" and obj["makespan_s"] > 0
    from hssim.sim.scenario import load_points

    point = load_points([tmp_path / "s.yaml"])[0]
    assert point.hardware.profile and point.hardware.profile.endswith("cpu-amd-epyc-2cpu-1t.yaml")


def test_sweep_refuses_bad_jobs_and_an_unreachable_cluster(tmp_path):
    scen = write(tmp_path, "model: {preset: opt-1.3b, layers: 2}\nhardware: t4-pcie3\n"
                           "workload: {batch: 2, prompt_len: 8, gen_len: 2}\npolicies: [{kind: kv-only}]\n")
    res = invoke("sweep", scen, "--out", tmp_path / "o", "-j", "0")
    assert res.exit_code == 2 and "Traceback" not in res.output
    res = invoke("sweep", scen, "--out", tmp_path / "o", "--cluster", "tcp://127.0.0.1:9", "--no-report")
    assert res.exit_code == 2, res.output
    assert "no Dask scheduler answers" in res.output and "fix:" in res.output
    assert not (tmp_path / "o" / "results.parquet").exists()


def test_run_layers_simulates_the_first_k_layers_at_full_size(tmp_path):
    scen = write(tmp_path, "model: opt-6.7b\nhardware: a100-40gb-pcie4\n"
                           "workload: {batch: 8, prompt_len: 64, gen_len: 3}\npolicies: [{kind: kv-only}]\n")
    one = json.loads(invoke("run", scen, "--layers", "1", "--json", "--engine", "list").output.strip())
    two = json.loads(invoke("run", scen, "--layers", "2", "--json", "--engine", "list").output.strip())
    assert one["scaled"] and one["layers_run"] == 1 and one["model_layers"] == 32 and one["model"] == "opt-6.7b"
    assert two["h2d_bytes"] == 2 * one["h2d_bytes"]  # the same layer twice: twice the weights and K,V
    bad = invoke("run", scen, "--layers", "33")
    assert bad.exit_code == 2 and "use 1..32" in bad.output


def test_results_are_typed_and_null_where_a_policy_reads_nothing(tmp_path):
    import pyarrow.parquet as pq

    from hssim.sim.api import kvpr_split
    from hssim.sim.scenario import load_points

    scen = write(tmp_path, TINY.replace("  - {kind: token-recompute}", "  - {kind: token-recompute}\n  - {kind: kvpr}"))
    out = tmp_path / "out"
    res = invoke("sweep", scen, "--out", out, "--jobs", "1", "--no-report")
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out / "results.parquet")
    for col in ("h2d_bytes", "d2h_bytes", "peak_gpu_bytes", "ops", "split_tokens", "batch"):
        assert str(df[col].dtype) == "Int64", col
    assert df["error"].isna().all()  # null, not ''
    kv = df[df["policy"] == "kv-only"]
    assert kv["kv_ratio"].isna().all() and kv["step_barrier"].isna().all() and kv["split_tokens"].isna().all()
    assert df.loc[df["policy"] == "hybrid", "kv_ratio"].notna().all()
    kvpr = df[df["policy"] == "kvpr"]
    assert kvpr["kv_ratio"].isna().all() and kvpr["step_barrier"].notna().all()
    # KVPR's closed form records the split it chose for each point
    for point in (p for p in load_points([scen]) if p.policy.kind.value == "kvpr"):
        row = kvpr[kvpr["prompt_len"] == point.workload.prompt_len].iloc[0]
        assert (int(row["split_tokens"]), row["split_rule"]) == kvpr_split(point)
    meta = pq.read_schema(out / "results.parquet").metadata
    assert meta[b"hssim_version"] and b"hssim_commit" in meta
    assert all(len(line) <= 100 for line in res.output.splitlines())  # the ranking fits 100 columns


def test_sweep_dry_run_lists_points_and_runs_nothing(tmp_path):
    scen = write(tmp_path, TINY)
    out = tmp_path / "out"
    res = invoke("sweep", scen, "--out", out, "--dry-run")
    assert res.exit_code == 0, res.output
    assert "10 points at 2 workload points; nothing was run" in res.output
    assert "hybrid r=0.50" in res.output
    assert not out.exists()
