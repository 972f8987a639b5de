"""FlexGen's own LP cost model beside hssim (skips where flexgen 0.1.8 / pulp are not installed)."""

from __future__ import annotations

import pytest

from hssim.validate.peers import flexgen_lp

pytestmark = pytest.mark.skipif(not flexgen_lp.available(), reason="flexgen==0.1.8 and pulp not installed")


def test_lp_predicts_flexgen_30b_benchmark_policy_near_its_published_7_tok_s():
    from hssim.sim.presets import hardware_preset, model_preset

    pred = flexgen_lp.lp_predict(model_preset("opt-30b"), hardware_preset("t4-pcie3"), 512, 32,
                                 flexgen_lp.FlexGenPolicy(48, 3, 20, 80, 0, 100))
    assert 5 < pred.throughput_tok_s < 10  # FlexGen reports 7.32 tok/s measured


def test_hssim_and_lp_agree_within_a_factor_on_the_30b_benchmark_policy():
    from hssim.validate.peers.flexgen_check import compare

    row = compare("opt-30b", 512, "bench_suite", flexgen_lp.FlexGenPolicy(48, 3, 20, 80, 0, 100))
    assert 0.5 < row["ratio_hssim_over_lp"] < 2.0
