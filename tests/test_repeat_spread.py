"""The repeat spread: another timed run of the same point taken as the prediction."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import make_point, tiny_model

from hssim.sim.costs import RooflineCostModel
from hssim.sim.engine import simulate
from hssim.sim.policies import build_schedule
from hssim.validate.compare import point_errors, repeat_spread, step_times, summary


def _timeline() -> pd.DataFrame:
    p = make_point(tiny_model(layers=2), batch=4, prompt_len=16, gen_len=4, num_gpu_batches=2, kind="kv-only")
    return simulate(build_schedule(p), RooflineCostModel(p.hardware)).timeline()


def _slowed(tl: pd.DataFrame, step: int, factor: float) -> pd.DataFrame:
    """`tl` with every op of `step` stretched by `factor` (later steps shifted by the time added)."""
    out = tl.copy()
    t0 = tl.loc[tl["step"] == step, "start_s"].min()
    t1 = tl.loc[tl["step"] == step, "end_s"].max()
    extra = (t1 - t0) * (factor - 1)
    inside = out["step"] == step
    for col in ("start_s", "end_s"):
        out.loc[inside, col] = t0 + (tl.loc[inside, col] - t0) * factor
        out.loc[out["step"] > step, col] = tl.loc[out["step"] > step, col] + extra
    return out


def test_one_run_has_no_spread_and_identical_runs_none():
    tl = _timeline()
    e2e, steps = repeat_spread(tl, [tl])
    assert math.isnan(e2e) and steps.isna().all()
    e2e, steps = repeat_spread(tl, [tl, tl.copy(deep=True).assign(start_s=tl["start_s"] * 1.0)])
    assert math.isnan(e2e)  # the same timestamps: the compared run itself


def test_a_repeat_slower_in_one_step_shows_in_that_step_only():
    tl = _timeline()
    other = _slowed(tl, 2, 1.2)
    e2e, steps = repeat_spread(tl, [tl, other])
    base = step_times(tl)
    assert steps[2] == pytest.approx(step_times(other)[2] / base[2] - 1)
    assert steps[2] > 0.05
    assert all(steps[s] == pytest.approx(0, abs=1e-9) for s in steps.index if s != 2)
    assert e2e == pytest.approx(float(other["end_s"].max()) / float(tl["end_s"].max()) - 1)


def test_spread_is_the_median_over_the_other_runs():
    tl = _timeline()
    runs = [tl, _slowed(tl, 1, 1.1), _slowed(tl, 1, 1.3), _slowed(tl, 1, 1.2)]
    _, steps = repeat_spread(tl, runs)
    assert steps[1] == pytest.approx(np.median([step_times(r)[1] / step_times(tl)[1] - 1 for r in runs[1:]]))


def test_summary_reports_the_spread_beside_the_error():
    tl = _timeline()
    other = _slowed(tl, 2, 1.2)
    row, steps = point_errors(tl, other)
    e2e, spread = repeat_spread(other, [other, tl])
    steps["repeat_ape"] = steps["step"].map(spread)
    points = pd.DataFrame([{**row, "repeat_e2e_ape": e2e}])
    summ = summary(points, steps)
    assert summ["repeat_step_ape_p95"] > 0 and summ["repeat_e2e_ape_median"] == pytest.approx(e2e)
    assert "repeat_step_ape_p95" not in summary(points, steps.drop(columns="repeat_ape"))


def test_executor_keeps_every_timed_run_and_compares_the_median_one():
    pytest.importorskip("torch")
    from hssim.hw.executor import measure_point

    p = make_point(tiny_model(layers=2, hidden=128), batch=2, prompt_len=8, gen_len=2, num_gpu_batches=1,
                   kind="kv-only")
    m = measure_point(p, "cpu", repeats=3, warmup=0)
    assert len(m.repeats) == 3
    assert [float(r.end_ns.max()) / 1e9 for r in m.repeats] == pytest.approx(m.runs_s)
    assert any(np.array_equal(r.end_ns, m.result.end_ns) for r in m.repeats)
