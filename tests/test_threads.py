"""Every thread that runs torch ops runs them on the intra-op threads the profile assumes.

An OpenMP build applies `torch.set_num_threads` to a new thread only at its first ATen
`parallel_for`; before that, a oneDNN GEMM called from it uses one OpenMP thread per CPU
(`hssim/hw/threads.py`). These tests read OpenMP's team size from inside each thread.
"""

import os
import threading

import pytest

torch = pytest.importorskip("torch")

from hssim.hw import executor  # noqa: E402
from hssim.hw.threads import adopt_threads, openmp_max_threads  # noqa: E402
from hssim.sim.presets import HARDWARE  # noqa: E402
from hssim.sim.specs import ModelSpec, PointSpec, PolicySpec, WorkloadSpec  # noqa: E402
from hssim.validate.timing import busy_neighbour  # noqa: E402

pytestmark = pytest.mark.skipif(openmp_max_threads() is None, reason="torch ships no libgomp here")
several_cpus = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one CPU: every team has one thread")


def _in_fresh_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


@several_cpus
def test_a_fresh_thread_ignores_the_process_count_until_it_adopts_it():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _in_fresh_thread(openmp_max_threads) > 1  # the hazard hw/threads.py describes

        def adopted():
            adopt_threads(1)
            return openmp_max_threads()

        assert _in_fresh_thread(adopted) == 1
    finally:
        torch.set_num_threads(before)


def test_the_busy_neighbour_runs_on_the_callers_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    seen = []
    try:
        with busy_neighbour(lambda: seen.append(openmp_max_threads()), "cpu"):
            while not seen:
                pass
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}


def test_the_executors_stream_threads_run_on_the_executors_count(monkeypatch):
    seen = []
    run = executor.OpRunner.run

    def recording(self, op):
        seen.append((openmp_max_threads(), torch.get_num_threads()))
        return run(self, op)

    monkeypatch.setattr(executor.OpRunner, "run", recording)
    m = ModelSpec(name="opt-tiny", layers=2, hidden=128, heads=2, kv_heads=2, ffn=512, vocab=256,
                  max_positions=128, dtype="bf16")
    point = PointSpec(scenario="t", model=m, hardware=HARDWARE["h100-80gb-pcie5"],
                      workload=WorkloadSpec(batch=2, prompt_len=8, gen_len=2), policy=PolicySpec(kind="kv-only"))
    executor.measure_point(point, "cpu", repeats=1, warmup=0)
    assert seen and all(omp == count for omp, count in seen)
