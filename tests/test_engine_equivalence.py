"""The list-scheduling replay computes the SimPy model's timeline, op for op; every compiled
kernel (op emission, replay with the critical path, GPU memory peak) computes exactly what its
plain-Python form (the fallback where numba is missing) computes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_point, small_points
from hypothesis import given, settings

from hssim.sim.costs import RooflineCostModel, durations_ns
from hssim.sim.engine import list_replay, replay
from hssim.sim.metrics import memory_occupancy, peak_memory_bytes
from hssim.sim.policies import build_schedule
from hssim.sim.scenario import load_points
from hssim.sim.schedule import Schedule

SCENARIOS = sorted((Path(__file__).parent.parent / "scenarios").glob("*.yaml"))


def assert_same_arrays(a: Schedule, b: Schedule) -> None:
    for name in ("payload_index", "layer_col", "step_col", "mb_col", "deps_ptr", "deps_idx", "after_ptr",
                 "after_idx"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.payloads == b.payloads


def assert_same_timeline(point):
    sched = build_schedule(point, check_memory=False, compiled=True)
    py = build_schedule(point, check_memory=False, compiled=False)
    assert_same_arrays(sched, py)
    assert py == sched
    # the arrays survive a round trip through the Op view
    assert_same_arrays(Schedule(sched.meta, sched.ops, sched.memory, sched.gpu_static_bytes,
                                sched.host_static_bytes), sched)
    dur = durations_ns(sched, RooflineCostModel(point.hardware))
    a, b, c = replay(sched, dur), list_replay(sched, dur, compiled=True), list_replay(sched, dur, compiled=False)
    for r in (b, c):
        assert np.array_equal(a.start_ns, r.start_ns) and np.array_equal(a.end_ns, r.end_ns)
    assert b.critical_ns == c.critical_ns == replay(sched, dur, unlimited=True).makespan_ns
    occ = memory_occupancy(b)
    peak = (int(occ["gpu_bytes"].max()), int(occ["host_bytes"].max()))
    assert peak_memory_bytes(b, compiled=True) == peak_memory_bytes(b, compiled=False) == peak


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_identical_on_the_bundled_scenarios(path):
    """Every point of every bundled scenario, scaled to 2 layers and 4 output tokens (same structure)."""
    points = load_points([path])
    assert points
    for p in points:
        small = p.model_copy(update={
            "model": p.model.model_copy(update={"layers": 2}),
            "workload": p.workload.model_copy(update={"gen_len": min(p.workload.gen_len, 4)}),
        })
        assert_same_timeline(small)


@pytest.mark.parametrize("kind", ["flexgen", "kv-only", "hybrid"])
def test_identical_with_many_gpu_batches(kind):
    """Hundreds of GPU batches (FlexGen's LP picks 1x430 on OPT-175B): every weight load waits for
    k tails, so the dependency buffers must be sized per op kind; the plain-Python form checks
    every write against them."""
    extra = {"cpu_attention": True} if kind == "flexgen" else {}
    assert_same_timeline(make_point("opt-1.3b", layers=2, batch=64, gen_len=3, kind=kind, gpu_batch_size=1,
                                    num_gpu_batches=64, **extra))


@settings(max_examples=60, deadline=None)
@given(small_points())
def test_identical_on_random_points(point):
    assert_same_timeline(point)


def test_without_numba_the_kernels_run_as_plain_python():
    """HSSIM_NO_NUMBA=1 (as where numba is missing): same metrics, numba never imported."""
    code = (
        "import json, sys\n"
        "from hssim.sim import compiled\n"
        "from hssim.sim.api import run_point\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from conftest import make_point\n"
        "p = make_point('opt-1.3b', layers=2, gen_len=3, kind='hybrid', kv_ratio=0.5, num_gpu_batches=2)\n"
        "metrics = run_point(p).metrics\n"
        "print(json.dumps([compiled.COMPILED, 'numba' in sys.modules, metrics]))\n"
    )
    out = {}
    for flag in ("1", "0"):
        # no Python-first allowance: with numba, the first kernel call compiles
        env = {**os.environ, "HSSIM_NO_NUMBA": flag, "HSSIM_PY_OPS_BEFORE_COMPILING": "0"}
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        out[flag] = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["1"][:2] == [False, False] and out["0"][:2] == [True, True]
    assert out["1"][2] == out["0"][2]


def test_a_small_run_stays_in_python_and_a_big_one_compiles():
    """The ski-rental rule of `sim.compiled`: a small point never loads numba; once the plain-Python
    allowance is spent, the kernels run compiled, with the same metrics."""
    code = (
        "import json, sys\n"
        "from hssim.sim.api import run_point\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from conftest import make_point\n"
        "p = make_point('opt-1.3b', layers=2, gen_len=3, kind='hybrid', kv_ratio=0.5, num_gpu_batches=2)\n"
        "first = run_point(p).metrics\n"
        "loaded = 'numba' in sys.modules\n"
        "for _ in range(6):\n"
        "    again = run_point(p).metrics\n"
        "print(json.dumps([loaded, 'numba' in sys.modules, first == again]))\n"
    )
    env = {**os.environ, "HSSIM_NO_NUMBA": "0", "HSSIM_PY_OPS_BEFORE_COMPILING": "1000"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == [False, True, True]
