"""Each optimiser's choice is no worse than every grid point it could have picked."""

from __future__ import annotations

from click.testing import CliRunner
from conftest import make_point, tiny_model

from hssim.cli.optimize import optimize
from hssim.sim.optimize.flexgen_search import search_flexgen
from hssim.sim.optimize.joint import search_joint
from hssim.sim.optimize.ratio import closed_form_ratio, search_ratio
from hssim.sim.optimize.split import search_split

M = tiny_model(layers=2, hidden=512, heads=8)
GQA = tiny_model(layers=2, hidden=512, heads=8, kv_heads=1)


def _no_worse(res):
    best = res.best.throughput_tok_s
    for c in res.feasible:
        # a pruned candidate was skipped because its bound was below a throughput already found
        assert (c.bound_tok_s < best) if c.pruned else (c.throughput_tok_s <= best)
        if c.bound_tok_s is not None and not c.pruned:
            assert c.throughput_tok_s <= c.bound_tok_s * (1 + 1e-12)  # a bound is never beaten


def test_pruned_search_picks_what_simulating_every_candidate_picks():
    from hssim.sim.optimize.flexgen_search import flexgen_candidates
    from hssim.sim.optimize.search import best_of

    for hw in ("rtx4090-pcie4", "t4-pcie3"):
        cands = flexgen_candidates(make_point(M, kind="flexgen", hardware=hw, batch=8, prompt_len=64, gen_len=3),
                                   weight_percents=(0.0, 50.0, 100.0), max_num_gpu_batches=4)
        full, pruned = best_of(cands), best_of(cands, prune=True)
        assert pruned.best.point == full.best.point
        assert pruned.best.throughput_tok_s == full.best.throughput_tok_s
        assert len(pruned.feasible) == len(full.feasible)
        assert any(c.pruned for c in pruned.tried)
        _no_worse(pruned)
        sim = {c.point: c.throughput_tok_s for c in full.tried}
        for c in pruned.tried:
            if c.pruned:  # its simulated throughput really is below the winner's, under its bound
                assert sim[c.point] <= c.bound_tok_s * (1 + 1e-12) and sim[c.point] < full.best.throughput_tok_s


def test_flexgen_search_beats_every_configuration_it_tried():
    res = search_flexgen(make_point(M, kind="flexgen", batch=8, prompt_len=64, gen_len=3),
                         weight_percents=(0.0, 50.0, 100.0), max_num_gpu_batches=4)
    _no_worse(res)
    assert len(res.tried) > 10


def test_ratio_search_and_closed_form():
    p = make_point(M, kind="hybridserve", batch=8, num_gpu_batches=2, prompt_len=200, gen_len=3)
    _no_worse(search_ratio(p))
    assert 0.0 <= closed_form_ratio(p) <= 1.0


def test_gqa_models_never_pick_activations():
    p = make_point(GQA, kind="hybridserve", hardware="h100-80gb-pcie5", batch=8, num_gpu_batches=2,
                   prompt_len=200, gen_len=3)
    assert search_ratio(p).best.point.policy.kv_ratio == 1.0
    assert closed_form_ratio(p) == 1.0
    joint = search_joint(make_point(GQA, hardware="h100-80gb-pcie5", batch=4, prompt_len=100, gen_len=2),
                         weight_percents=(0.0,), ratios=(0.0, 0.5, 1.0), max_num_gpu_batches=2)
    assert joint.joint.best.point.policy.kv_ratio == 1.0


def test_split_search_is_no_worse_than_closed_form_or_any_grid_point():
    rep = search_split(make_point(M, kind="kvpr", batch=8, num_gpu_batches=2, prompt_len=128, gen_len=3), steps=8)
    _no_worse(rep.simulated)
    assert rep.closed_form_tok_s <= rep.simulated.best.throughput_tok_s


def test_joint_search_is_no_worse_than_its_grid_and_reports_gains():
    rep = search_joint(make_point(M, batch=4, prompt_len=100, gen_len=2), weight_percents=(0.0, 100.0),
                       ratios=(0.0, 1.0), max_num_gpu_batches=2)
    _no_worse(rep.joint)
    assert set(rep.rules) and all(v is None or v > 0 for v in rep.rules.values())


def test_joint_search_never_loses_to_flexgens_own_search():
    """The joint space holds an idealised twin of every FlexGen configuration (CPU attention,
    K,V on the GPU included), and the idealised schedule is never slower than FlexGen's."""
    for hw in ("rtx4090-pcie4", "t4-pcie3"):
        rep = search_joint(make_point(M, hardware=hw, batch=4, prompt_len=100, gen_len=2),
                           weight_percents=(0.0, 100.0), ratios=(0.0, 0.5, 1.0), max_num_gpu_batches=2)
        flexgen = next(v for k, v in rep.rules.items() if k.startswith("flexgen"))
        assert rep.joint.best.throughput_tok_s >= flexgen


def test_parallel_search_picks_what_a_serial_search_picks():
    from hssim.sim.optimize.search import SETTINGS

    p = make_point(M, kind="hybridserve", batch=8, num_gpu_batches=2, prompt_len=200, gen_len=3)
    SETTINGS.jobs = 1
    try:
        serial = search_ratio(p)
    finally:
        SETTINGS.jobs = None
    parallel = search_ratio(p)
    assert [c.throughput_tok_s for c in serial.tried] == [c.throughput_tok_s for c in parallel.tried]
    assert serial.best.point == parallel.best.point


def test_optimize_command_prints_choices(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("model: {preset: opt-1.3b, layers: 2}\nhardware: rtx4090-pcie4\n"
                 "workload: {batch: 4, prompt_len: 64, gen_len: 2}\npolicies: [{kind: kv-only}]\n")
    res = CliRunner().invoke(optimize, [str(f), "--what", "ratio", "--what", "split"])
    assert res.exit_code == 0, res.output
    assert "hybridserve r" in res.output and "kvpr l" in res.output
    bad = CliRunner().invoke(optimize, [str(f), "--point", "5"])
    assert bad.exit_code == 2 and "error:" in bad.output


def test_an_optimiser_with_nothing_that_fits_does_not_stop_the_others(tmp_path, monkeypatch):
    import hssim.cli.optimize as opt_cli
    from hssim.sim.memory import MemoryPlanError

    def nothing_fits(*args, **kwargs):
        raise MemoryPlanError("none of the 11 candidate configurations fits in memory")

    monkeypatch.setattr(opt_cli, "search_ratio", nothing_fits)
    f = tmp_path / "s.yaml"
    f.write_text("model: {preset: opt-1.3b, layers: 2}\nhardware: rtx4090-pcie4\n"
                 "workload: {batch: 4, prompt_len: 64, gen_len: 2}\npolicies: [{kind: kv-only}]\n")
    res = CliRunner().invoke(optimize, [str(f), "--what", "ratio", "--what", "split", "-j", "1"])
    assert res.exit_code == 0, res.output
    assert "hybridserve r: no candidate fits in memory" in res.output and "kvpr l: simulated best" in res.output


def test_split_search_spans_the_whole_context():
    """The past grows to prompt + gen - 1 tokens: l beyond the prompt must be reachable."""
    rep = search_split(make_point(M, kind="kvpr", batch=8, num_gpu_batches=2, prompt_len=128, gen_len=9), steps=8)
    tried = sorted(c.point.policy.split_tokens for c in rep.simulated.tried)
    assert tried[0] == 0 and tried[-1] == 128 + 9 - 1
