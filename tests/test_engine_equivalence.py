"""The list-scheduling replay computes the SimPy model's timeline, op for op."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import small_points
from hypothesis import given, settings

from hssim.sim.costs import RooflineCostModel, durations_ns
from hssim.sim.engine import list_replay, replay
from hssim.sim.policies import build_schedule
from hssim.sim.scenario import load_points

SCENARIOS = sorted((Path(__file__).parent.parent / "scenarios").glob("*.yaml"))


def assert_same_timeline(point):
    sched = build_schedule(point, check_memory=False)
    dur = durations_ns(sched, RooflineCostModel(point.hardware))
    a, b = replay(sched, dur), list_replay(sched, dur)
    assert np.array_equal(a.start_ns, b.start_ns) and np.array_equal(a.end_ns, b.end_ns)


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


@settings(max_examples=60, deadline=None)
@given(small_points())
def test_identical_on_random_points(point):
    assert_same_timeline(point)
