"""Uncertainty ranges and the sensitivity of a verdict: flips found where they are, never where they cannot be."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import make_point, tiny_model

from hssim.cli import main
from hssim.errors import ScenarioError
from hssim.sim.costs.profile import find_profile, load_profile
from hssim.sim.costs.profile_ranges import profile_figures, profile_ranges, scaled_profile
from hssim.sim.policies import build_schedule, reads_hardware_rates
from hssim.sim.presets import HARDWARE
from hssim.sim.sensitivity import point_sensitivity
from hssim.sim.specs import PolicyKind
from hssim.sim.uncertainty import (
    PRESET_SOURCES,
    SourceKind,
    field_bounds,
    figure_paths,
    figure_ranges,
    known_paths,
    parse_uncertainty,
    with_figures,
)

TIE_Bps = 20e9  # the pageable rate of the tie point: kv-only over pinned memory ties hybrid r=1 over pageable


def tie_configs(h2d_pinned_Bps: float = 25e9):
    """kv-only (pinned copies) and hybrid r=1 (the same K,V traffic, over pageable copies): with every
    other rate equal, they tie exactly when the pinned H2D rate equals the pageable one."""
    m = tiny_model(layers=2, hidden=128, heads=2)
    out = []
    for kw in (dict(kind="kv-only", pinned=True), dict(kind="hybrid", kv_ratio=1.0, pinned=False)):
        p = make_point(m, batch=4, prompt_len=512, gen_len=4, num_gpu_batches=2, **kw)
        hw = with_figures(p.hardware, {"link.h2d_pageable_Bps": TIE_Bps, "link.d2h_pageable_Bps": 25e9,
                                       "link.d2h_pinned_Bps": 25e9, "link.h2d_pinned_Bps": h2d_pinned_Bps})
        out.append(p.model_copy(update={"hardware": hw}))
    return out


def only(path: str, lo: float, hi: float, fixed_rest: bool = True):
    """An uncertainty block with one figure's range and every other figure fixed."""
    block = {p: "fixed" for p in known_paths()} if fixed_rest else {}
    block[path] = [lo, hi]
    return parse_uncertainty(block, "test.yaml")


def test_the_flip_of_a_constructed_tie_is_found_within_one_percent():
    res = point_sensitivity(tie_configs(), only("link.h2d_pinned_Bps", 10e9, 40e9), samples=0)
    assert res.winner == "kv-only" and res.runner_up == "hybrid"
    (fr,) = [f for f in res.figures if f.figure.path == "link.h2d_pinned_Bps"]
    assert fr.flip_above is None
    assert fr.flip_below is not None and fr.flip_below.new_winner == "hybrid"
    assert fr.flip_below.value == pytest.approx(TIE_Bps, rel=0.01)
    assert not res.robust


def test_a_figure_that_cannot_change_the_winner_is_reported_as_such():
    res = point_sensitivity(tie_configs(), samples=4)
    by = {f.figure.path: f for f in res.figures}
    # no policy here runs attention on the CPU: its rate prices nothing
    assert not by["cpu.attention_speed"].effect and not by["cpu.attention_speed"].flips
    # the pinned H2D rate (measured, +-10% around 25 GB/s) never reaches the 20 GB/s tie
    h2d = by["link.h2d_pinned_Bps"]
    assert h2d.effect and not h2d.flips and h2d.figure.lo > TIE_Bps


def test_runs_are_deterministic_and_the_seed_matters():
    unc = only("link.h2d_pinned_Bps", 10e9, 40e9, fixed_rest=False)
    a = point_sensitivity(tie_configs(), unc, samples=6, seed=3)
    b = point_sensitivity(tie_configs(), unc, samples=6, seed=3)
    c = point_sensitivity(tie_configs(), unc, samples=6, seed=4)
    assert a.samples == b.samples and a.figures == b.figures
    assert a.samples != c.samples
    # the draws span the tie at 20 GB/s: some keep kv-only ahead, some do not
    assert 0 < a.winner_share < 1 and not a.robust


def test_robust_when_no_figure_or_draw_changes_the_winner():
    res = point_sensitivity(tie_configs(40e9), only("link.h2d_pinned_Bps", 30e9, 50e9), samples=8)
    assert res.margin > 0 and not res.flipping and res.winner_share == 1.0 and res.robust


@pytest.mark.parametrize("name", sorted(HARDWARE))
def test_every_preset_figure_has_a_range_around_its_value_within_its_field(name):
    hw = HARDWARE[name]
    ranges = figure_ranges(hw)
    assert {r.path for r in ranges} == set(figure_paths(hw))
    for r in ranges:
        f_lo, f_hi, _ = field_bounds(r.path)
        assert f_lo <= r.lo <= r.value <= r.hi <= f_hi, r
        assert r.source
        if r.kind is SourceKind.assumption and r.value > 0 and r.value < f_hi:
            assert r.hi / r.lo > 2  # an assumption's range is wide
        if r.kind in (SourceKind.datasheet, SourceKind.measured):
            assert r.hi / r.lo < 1.3  # a sourced figure's is narrow


def test_preset_sources_name_real_presets_and_figures():
    paths = set(known_paths())
    for name, sources in PRESET_SOURCES.items():
        assert name in HARDWARE
        assert set(sources) <= paths


def test_a_changed_preset_figure_is_no_longer_the_presets_source():
    hw = HARDWARE["t4-pcie3"]
    changed = with_figures(hw, {"cpu.attention_speed": 1.5}).model_copy(update={"name": "t4-pcie3*"})
    (r,) = [r for r in figure_ranges(changed) if r.path == "cpu.attention_speed"]
    assert r.kind is SourceKind.assumption and "scenario" in r.source


def test_scenario_overrides_apply_and_bad_ones_are_one_line_errors():
    hw = HARDWARE["rtx4090-pcie4"]
    unc = parse_uncertainty({"link.h2d_pinned_Bps": [20e9, 30e9], "cpu.attention_speed": {"factor": [0.1, 2]},
                             "gpu.launch_overhead_s": "fixed"}, "s.yaml")
    by = {r.path: r for r in figure_ranges(hw, unc)}
    assert (by["link.h2d_pinned_Bps"].lo, by["link.h2d_pinned_Bps"].hi) == (20e9, 30e9)
    assert by["cpu.attention_speed"].lo == pytest.approx(0.1 * hw.cpu.attention_speed)
    assert by["gpu.launch_overhead_s"].fixed
    bad = [({"link.h2d_pined_Bps": [1, 2]}, "did you mean 'link.h2d_pinned_Bps'"),
           ({"cpu.attention_speed": [2.0, 1.0]}, "0 < lo <= hi"),
           ({"cpu.attention_speed": {"factor": [2, 3]}}, "must contain 1"),
           ({"cpu.attention_speed": "wide"}, "expected [lo, hi]")]
    for block, words in bad:
        with pytest.raises(ScenarioError) as e:
            parse_uncertainty(block, "s.yaml")
        assert words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ScenarioError, match="leaves out the point's value"):
        figure_ranges(hw, parse_uncertainty({"cpu.attention_speed": [2.0, 3.0]}, "s.yaml"))


def test_only_kvpr_schedules_read_the_boxs_rates():
    m = tiny_model(layers=2, hidden=128, heads=2)
    for kind in PolicyKind:
        extra = {"kv_ratio": 0.5} if kind in (PolicyKind.hybrid, PolicyKind.token_recompute,
                                              PolicyKind.hybridserve) else {}
        p = make_point(m, batch=4, prompt_len=64, gen_len=3, num_gpu_batches=2, kind=kind.value, **extra)
        fast = p.model_copy(update={"hardware": with_figures(p.hardware, {"link.h2d_pinned_Bps": 1e9,
                                                                         "gpu.matmul_efficiency": 0.1})})
        a, b = build_schedule(p), build_schedule(fast)
        same = a.payloads == b.payloads and list(a.waits) == list(b.waits)
        if not reads_hardware_rates(p.policy):
            assert same, kind


def test_calibrated_profile_ranges_are_narrow_and_scale_what_they_name():
    prof = load_profile(find_profile("cpu-amd-epyc-2cpu-1t"))
    ranges = profile_ranges(prof)
    assert set(ranges) == set(profile_figures(prof))
    for r in ranges.values():
        assert r.kind is SourceKind.calibrated and r.lo < r.value < r.hi and r.hi / r.lo < 2.5
    path = next(p for p in ranges if p.startswith("link.h2d"))
    doubled = scaled_profile(prof, {path: 2 * ranges[path].value})
    assert profile_figures(doubled)[path] == pytest.approx(2 * ranges[path].value)
    assert profile_figures(doubled)["gpu.peak_flops"] == pytest.approx(profile_figures(prof)["gpu.peak_flops"])


SCENARIO = """
name: tie
model: {preset: opt-1.3b, layers: 2}
hardware: {preset: rtx4090-pcie4, link: {h2d_pageable_Bps: 2.0e10, d2h_pageable_Bps: 2.5e10}}
workload: {batch: 4, prompt_len: 128, gen_len: 3}
policy_defaults: {num_gpu_batches: 2}
policies:
  - {kind: kv-only}
  - {kind: hybrid, kv_ratio: 1.0, pinned: false}
uncertainty:
  link.h2d_pinned_Bps: [1.0e10, 4.0e10]
"""


def test_cli_writes_tables_and_a_tornado_and_refuses_a_missing_point(tmp_path):
    src = tmp_path / "tie.yaml"
    src.write_text(SCENARIO)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["sensitivity", str(src), "--samples", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("sensitivity.md", "sensitivity_summary.csv", "sensitivity_summary.md", "sensitivity_figures.csv",
                 "sensitivity_spread.csv", "sensitivity_spread.md", "figures/tornado_point1.png"):
        assert (out / name).exists(), name
    text = (out / "sensitivity.md").read_text()
    assert "never within its range" in text and re.search(r"below (19\.9\d|20) GB/s: hybrid wins", text)
    # an assumed figure gets the wide x0.5..x2 range
    m = re.search(r"\| host\.memory_Bps \| ([\d.]+) GB/s \| ([\d.]+) GB/s – ([\d.]+) GB/s "
                  r"\| assumption \(range guessed\) \|", text)
    assert m and float(m[2]) == pytest.approx(float(m[1]) / 2, rel=0.01) and float(m[3]) == pytest.approx(
        2 * float(m[1]), rel=0.01)
    bad = CliRunner().invoke(main, ["sensitivity", str(src), "--point", "3", "--out", str(out)])
    assert bad.exit_code == 2 and "use 1..1" in bad.output
    typo = tmp_path / "typo.yaml"
    typo.write_text(SCENARIO.replace("link.h2d_pinned_Bps", "link.h2d_pinned"))
    bad = CliRunner().invoke(main, ["sensitivity", str(typo), "--out", str(out)])
    assert bad.exit_code == 2 and bad.output.startswith("error: ") and "uncertainty.link.h2d_pinned" in bad.output


def test_sweep_sensitivity_adds_robust_to_the_ranking(tmp_path):
    src = tmp_path / "tie.yaml"
    src.write_text(SCENARIO)
    out = tmp_path / "sweep"
    res = CliRunner().invoke(main, ["sweep", str(src), "--out", str(out), "--sensitivity", "--no-report", "-j", "1"])
    assert res.exit_code == 0, res.output
    ranking = pd.read_csv(out / "ranking.csv")
    assert list(ranking["robust"]) == [False, False]  # the tie at 20 GB/s lies inside the scenario's range
    assert ranking["flipped_by"].str.contains("link.h2d_pinned_Bps").all()
    assert (out / "sensitivity" / "sensitivity.md").exists()


def test_a_point_priced_by_a_profile_is_examined_over_the_profiles_narrow_ranges():
    from hssim.sim.scenario import resolve_preset
    from hssim.sim.specs import HardwareSpec

    hw = resolve_preset("t.yaml", "hardware", "cpu-amd-epyc-2cpu-1t", HARDWARE, HardwareSpec)
    m = tiny_model(layers=1, hidden=64, heads=2).model_copy(update={"dtype": "bf16"})  # as the profile measured
    configs = [make_point(m, batch=2, prompt_len=16, gen_len=2, kind=k).model_copy(update={"hardware": hw})
               for k in ("kv-only", "token-recompute")]
    res = point_sensitivity(configs, samples=2)
    assert {f.figure.path for f in res.figures} == set(profile_figures(load_profile(hw.profile)))
    assert all(f.figure.kind is SourceKind.calibrated for f in res.figures)
    assert any(f.effect for f in res.figures)


def test_a_point_where_nothing_fits_has_no_winner_to_examine():
    from hssim.sim.sensitivity import NothingFits

    (p, _) = tie_configs()
    small = p.hardware.model_copy(update={"gpu": p.hardware.gpu.model_copy(update={"memory_bytes": 10**6})})
    with pytest.raises(NothingFits, match="no policy fits"):
        point_sensitivity([p.model_copy(update={"hardware": small})], samples=0)
