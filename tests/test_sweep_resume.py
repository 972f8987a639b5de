"""Sweeps are resumable and loss-free, locally and on a real Dask cluster on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from hssim.cli import main
from hssim.sim.scenario import load_points
from hssim.sim.sweep import JOURNAL, Journal, run_sweep

SCENARIO = """
name: resume
model: {preset: opt-1.3b, layers: 4}
hardware: a100-40gb-pcie4
workload: {batch: 16, prompt_len: 256, gen_len: 24}
policy_defaults: {num_gpu_batches: 4}
policies:
  - {kind: kv-only}
  - {kind: hybrid}
sweep:
  workload.prompt_len: [128, 256, 384, 512, 640, 768]
  policy.kv_ratio: [0.0, 0.25, 0.5, 0.75, 1.0]
"""


#: points big enough (about 2 M ops, about 0.15 s each with the compiled replay) and many enough (132)
#: that an interruption sent after the first finished points lands mid-sweep: 36 such points
#: ran in 5 s in all, and a sweep whose kernels compiled in its workers first could end before it
SLOW_SCENARIO = (SCENARIO.replace("layers: 4}", "layers: 24}").replace("batch: 16", "batch: 64")
                 .replace("gen_len: 24}", "gen_len: 384}").replace("num_gpu_batches: 4}", "num_gpu_batches: 16}")
                 .replace("policy.kv_ratio: [0.0, 0.25, 0.5, 0.75, 1.0]",
                          f"policy.kv_ratio: [{', '.join(f'{i / 20:g}' for i in range(21))}]"))


@pytest.fixture
def scenario(tmp_path) -> Path:
    path = tmp_path / "resume.yaml"
    path.write_text(SCENARIO)
    return path


@pytest.fixture
def slow_scenario(tmp_path) -> Path:
    path = tmp_path / "slow.yaml"
    path.write_text(SLOW_SCENARIO)
    return path


def check_complete(out: Path, n_points: int) -> pd.DataFrame:
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == n_points
    assert df["point_key"].is_unique
    assert (df["status"] == "ok").all()
    return df


def _terminal_signals() -> None:
    """In the sweep's process: Ctrl-C's default action, as for a command typed at a terminal. A test
    run started in the background by a non-interactive shell inherits SIGINT ignored (POSIX), and a
    sweep rightly keeps an ignored SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _sweep_until(scenario: Path, out: Path, finished: int, output) -> subprocess.Popen:
    """Start `hssim sweep` in its own process group; return once `finished` points are journalled."""
    cmd = [sys.executable, "-m", "hssim.cli", "sweep", str(scenario), "--out", str(out), "--jobs", "2"]
    proc = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT if output is subprocess.PIPE else output,
                            start_new_session=True, preexec_fn=_terminal_signals)
    journal = out / JOURNAL
    deadline = time.time() + 120
    while time.time() < deadline and not (journal.exists() and len(journal.read_bytes().splitlines()) >= finished):
        time.sleep(0.05)
    return proc


def test_a_killed_sweep_resumes_with_every_point_exactly_once(tmp_path, slow_scenario):
    scenario = slow_scenario
    out = tmp_path / "out"
    n_points = len(load_points([scenario]))
    proc = _sweep_until(scenario, out, finished=3, output=subprocess.DEVNULL)
    journal = out / JOURNAL
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers, mid-run
    proc.wait()
    partial = len(Journal(journal).load())
    assert 1 <= partial < n_points, "the kill should land mid-sweep"
    assert not (out / "results.parquet").exists()

    res = CliRunner().invoke(main, ["sweep", str(scenario), "--out", str(out), "--jobs", "2"])
    assert res.exit_code == 0, res.output
    assert f"{partial} reused" in res.output
    check_complete(out, n_points)
    # the journal holds each point once: the rerun recomputed only what was missing
    lines = [ln for ln in journal.read_bytes().splitlines() if ln.strip()]
    assert len(lines) in (n_points, n_points + 1)  # + at most one torn line from the kill


def test_a_torn_journal_line_is_ignored(tmp_path, scenario):
    out = tmp_path / "out"
    points = load_points([scenario])[:3]
    run_sweep(points, out, jobs=1)
    with (out / JOURNAL).open("ab") as f:
        f.write(b'{"point_key": "abc", "status": "o')  # a crash mid-write
    df = run_sweep(points, out, jobs=1)
    assert len(df) == 3 and df["point_key"].is_unique
    more = load_points([scenario])[:6]  # rows appended after the torn line must survive it
    run_sweep(more, out, jobs=1)
    assert len(Journal(out / JOURNAL).load()) == 6
    assert len(run_sweep(more, out, jobs=1, on_done=lambda row: pytest.fail("recomputed a point"))) == 6


def test_ctrl_c_stops_a_sweep_at_once_and_keeps_what_finished(tmp_path, slow_scenario):
    scenario = slow_scenario
    out = tmp_path / "out"
    n_points = len(load_points([scenario]))
    proc = _sweep_until(scenario, out, finished=2, output=subprocess.PIPE)
    journal = out / JOURNAL
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends: the sweep and its workers
    t0 = time.time()
    output, _ = proc.communicate(timeout=60)
    stopped_s = time.time() - t0
    assert proc.returncode == 2, output
    assert b"interrupted" in output and b"Traceback" not in output
    kept = len(Journal(journal).load())
    assert 2 <= kept < n_points
    assert stopped_s < 10, f"Ctrl-C took {stopped_s:.1f} s to stop the sweep"  # queued points are not run
    res = CliRunner().invoke(main, ["sweep", str(scenario), "--out", str(out), "--jobs", "2", "--no-report"])
    assert res.exit_code == 0 and f"{kept} reused" in res.output
    check_complete(out, n_points)


_POISON: dict[str, str] = {}


def _simulate_or_die(point):
    """simulate_row, except that the poisoned point kills its worker process."""
    import hssim.sim.sweep as sweep_mod

    if sweep_mod.point_key(point) == _POISON.get("key"):
        os._exit(1)  # the worker dies, as on a segfault or the OOM killer
    return _REAL_SIMULATE_ROW(point)


_REAL_SIMULATE_ROW = __import__("hssim.sim.sweep", fromlist=["simulate_row"]).simulate_row


def test_a_point_that_kills_its_worker_fails_alone(tmp_path, scenario, monkeypatch):
    import hssim.sim.sweep as sweep_mod

    points = load_points([scenario])[:8]
    bad = sweep_mod.point_key(points[3])
    monkeypatch.setitem(_POISON, "key", bad)
    monkeypatch.setattr(sweep_mod, "simulate_row", _simulate_or_die)  # fork: the workers see it too
    df = run_sweep(points, tmp_path / "o", jobs=2)
    status = dict(zip(df["point_key"], df["status"], strict=True))
    assert len(status) == 8 and status.pop(bad) == "failed"
    assert set(status.values()) == {"ok"}


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path, scenario, monkeypatch):
    import hssim.sim.sweep as sweep_mod

    points = load_points([scenario])[:4]
    real = sweep_mod.run_point
    bad = points[1]

    def flaky(point, **kwargs):
        if point == bad:
            raise RuntimeError("boom")
        return real(point, **kwargs)

    monkeypatch.setattr(sweep_mod, "run_point", flaky)
    df = run_sweep(points, tmp_path / "o", jobs=1)
    assert list(df["status"]) == ["ok", "failed", "ok", "ok"]
    assert "RuntimeError: boom" in df.loc[1, "error"]
    monkeypatch.setattr(sweep_mod, "run_point", real)
    df = run_sweep(points, tmp_path / "o", jobs=1)  # failures are retried on the next run
    assert (df["status"] == "ok").all()


def test_sweep_on_a_local_dask_cluster(tmp_path, scenario):
    distributed = pytest.importorskip("distributed")
    points = load_points([scenario])[:6]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as lc:
        df = run_sweep(points, tmp_path / "d", cluster=lc.scheduler_address)
    assert len(df) == 6 and (df["status"] == "ok").all()
    local = run_sweep(points, tmp_path / "l", jobs=1)
    cols = ["point_key", "makespan_s", "throughput_tok_s", "h2d_bytes"]
    pd.testing.assert_frame_equal(df[cols], local[cols])


def test_ranking_speedups_are_over_kv_only_else_flexgen_named_exactly():
    from hssim.sim.sweep import GROUP_COLUMNS, best_per_point

    base = dict(zip(GROUP_COLUMNS, ["s", "m", "hw", 8, 64, 4], strict=True))
    rows = [
        {**base, "prompt_len": 64, "policy": "flexgen", "policy_label": "flexgen", "throughput_tok_s": 10.0},
        {**base, "prompt_len": 64, "policy": "flexgen", "policy_label": "flexgen cpu-attn", "throughput_tok_s": 20.0},
        {**base, "prompt_len": 64, "policy": "kvpr", "policy_label": "kvpr l=3", "throughput_tok_s": 30.0},
        {**base, "prompt_len": 128, "policy": "kv-only", "policy_label": "kv-only", "throughput_tok_s": 5.0},
        {**base, "prompt_len": 128, "policy": "flexgen", "policy_label": "flexgen", "throughput_tok_s": 4.0},
        {**base, "prompt_len": 256, "policy": "kvpr", "policy_label": "kvpr l=3", "throughput_tok_s": 4.0},
    ]
    df = pd.DataFrame(rows).assign(status="ok", bound_tok_s=1.0, gpu_busy=0.5)
    ranked = best_per_point(df).set_index(["prompt_len", "policy"])
    # over FlexGen's best configuration, named exactly (here its CPU-attention variant)
    assert ranked.loc[(64, "kvpr"), "speedup"] == 1.5 and ranked.loc[(64, "kvpr"), "baseline"] == "flexgen cpu-attn"
    assert ranked.loc[(128, "flexgen"), "speedup"] == 0.8 and ranked.loc[(128, "flexgen"), "baseline"] == "kv-only"
    assert np.isnan(ranked.loc[(256, "kvpr"), "speedup"])


def test_sweep_cli_starts_a_local_dask_cluster(tmp_path, scenario):
    pytest.importorskip("distributed")
    res = CliRunner().invoke(main, ["sweep", str(scenario), "--out", str(tmp_path / "c"), "--cluster", "local",
                                    "-j", "2", "--no-report"])
    assert res.exit_code == 0, res.output
    assert "Dask cluster" in res.output
    check_complete(tmp_path / "c", len(load_points([scenario])))
