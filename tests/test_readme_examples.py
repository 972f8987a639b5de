"""The scenario example of the README's format section is a valid scenario, its uncertainty
block included (a reader copies it first)."""

from __future__ import annotations

from pathlib import Path

from hssim.sim.scenario import load_points, load_yaml
from hssim.sim.uncertainty import figure_ranges, parse_uncertainty

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_scenario_example_loads_with_its_uncertainty_block(tmp_path):
    text = README.read_text()
    start = text.index("name: hybridserve-opt30b")
    example = tmp_path / "example.yaml"
    example.write_text(text[start:text.index("```", start)])
    points = load_points([example])
    assert len(points) == 40
    uncertainty = parse_uncertainty(load_yaml(example).get("uncertainty"), str(example))
    ranges = {r.path: r for r in figure_ranges(points[0].hardware, uncertainty)}
    assert ranges["link.h2d_pinned_Bps"].lo == 2.0e10 and ranges["link.h2d_pinned_Bps"].hi == 2.6e10
    assert ranges["host.memory_Bps"].source.startswith("assumed sustained share")


def test_every_results_table_has_every_metric_column_even_when_no_point_ran(tmp_path):
    from conftest import make_point

    from hssim.sim.api import results_frame, run_point
    from hssim.sim.metrics import METRIC_COLUMNS

    assert tuple(run_point(make_point("opt-1.3b", layers=1, gen_len=2)).metrics) == METRIC_COLUMNS
    df = results_frame([{"scenario": "s", "status": "infeasible", "error": "does not fit"}])
    assert set(METRIC_COLUMNS) <= set(df.columns) and df["throughput_tok_s"].isna().all()
