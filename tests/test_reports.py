"""Reports: every figure draws the series it should from a small simulated results table."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import make_point, tiny_model

from hssim.cli.report import report
from hssim.errors import UserError
from hssim.reports import figures, timeline
from hssim.reports.report import FIGURES, build_report, make_report
from hssim.reports.results import Skip, best_per_series, load_results, series_of
from hssim.reports.style import (
    KIND_FAMILIES,
    SERIES_ORDER,
    kind_colours,
    kind_family,
    legend_rank,
    series_colour,
    series_marker,
    series_name,
    series_sort_key,
)
from hssim.sim.api import result_row
from hssim.sim.schedule import OpKind
from hssim.sim.specs import PolicyKind, PolicySpec
from hssim.sim.sweep import run_points

PROMPTS = (16, 32)
MODELS = (tiny_model(layers=3, hidden=128, heads=4), tiny_model(layers=2, hidden=256, heads=4))
# at these sizes recomputing never pays: hybrid's best is r = 1, the very run of KV-only (a duplicate
# the line and Gantt figures leave out), while token recompute, without r = 1, stays its own series
POLICIES = [dict(kind="kv-only"), dict(kind="kv-only", cpu_attention=True),
            *[dict(kind="hybrid", kv_ratio=r) for r in (0.0, 0.5, 1.0)],
            *[dict(kind="token-recompute", kv_ratio=r) for r in (0.0, 0.5)]]
SERIES = {"kv-only", "kv-only cpu-attn", "hybrid", "token-recompute"}
DRAWN_ONCE = SERIES - {"hybrid"}  # series with a run of their own
#: the papers' systems, each with the variants their papers plot separately
PAPER_POLICIES = [dict(kind="flexgen"), dict(kind="flexgen", cpu_attention=True),
                  *[dict(kind="hybridserve", kv_ratio=r, mini_batching=mb)
                    for r in (0.0, 0.5, 1.0) for mb in ("balanced", "naive")],
                  dict(kind="kvpr", split_rule="closed-form"), dict(kind="kvpr", split_rule="per-step")]
PAPER_SERIES = {"flexgen", "flexgen cpu-attn", "hybridserve", "hybridserve naive", "kvpr", "kvpr per-step"}


def _point(model, prompt_len, **policy):
    return make_point(model, batch=4, prompt_len=prompt_len, gen_len=3, num_gpu_batches=2, **policy)


@pytest.fixture(scope="module")
def results() -> pd.DataFrame:
    points = [_point(m, p, **pol) for m in MODELS for p in PROMPTS for pol in POLICIES]
    df = run_points(points, jobs=1)
    # one point that did not fit, the way a sweep records it
    bad = result_row(_point(MODELS[0], 64), None, "GPU memory: needs 99 GB, has 24 GB")
    return pd.concat([df, pd.DataFrame([bad])], ignore_index=True)


@pytest.fixture(scope="module")
def loaded(results) -> pd.DataFrame:
    return load_results(results)


@pytest.fixture(scope="module")
def papers() -> pd.DataFrame:
    """FlexGen, HybridServe and KVPR (no KV-only run) on one model at two prompt lengths."""
    points = [_point(MODELS[1], p, **pol) for p in PROMPTS for pol in PAPER_POLICIES]
    return load_results(run_points(points, jobs=1))


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _lines(fig) -> dict[str, list]:
    out: dict[str, list] = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                out.setdefault(line.get_label(), []).append(line)
    return out


def _bars(ax) -> dict[str, list[float]]:
    return {c.get_label(): [p.get_height() for p in c.patches] for c in ax.containers}


def _name(series: str, best_r: bool = False) -> str:
    return f"{series_name(series)}, best r" if best_r else series_name(series)


def test_throughput_vs_prompt_has_one_line_per_policy_at_its_best(loaded):
    drawn = figures.throughput_vs_prompt(loaded)
    lines = _lines(drawn.fig)
    expect = {_name("kv-only"), _name("kv-only cpu-attn"), _name("token-recompute", True)}
    assert set(lines) == expect
    assert all(len(v) == len(MODELS) for v in lines.values())  # one panel per model
    best = best_per_series(loaded[loaded["status"] == "ok"])
    tr = best[(best["series"] == "token-recompute") & (best["model"] == MODELS[0].name)].sort_values("prompt_len")
    line = next(ln for ln in lines[_name("token-recompute", True)] if MODELS[0].name in ln.axes.get_title())
    assert list(line.get_xdata()) == list(PROMPTS)
    assert np.allclose(line.get_ydata(), tr["throughput_tok_s"])
    # hybrid's best (r = 1) is KV-only's run: it would lie exactly under KV-only's line, so it is left out
    assert len(drawn.left_out) == 1 and drawn.left_out[0].startswith(_name("hybrid") + " in every panel:")
    assert _name("kv-only") in drawn.left_out[0]


def test_latency_vs_ratio_normalises_to_kv_only_and_marks_the_optimum(loaded):
    fig = figures.latency_vs_recompute_ratio(loaded).fig
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == len(MODELS)
    for ax in visible:
        series = {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}
        assert {_name("hybrid"), _name("token-recompute")} <= set(series)
        hybrid = series[_name("hybrid")]
        assert sorted(hybrid.get_xdata()) == [0.0, 0.5, 1.0]  # 1 - r
        star = next(ln for ln in ax.get_lines() if ln.get_gid() == "optimum:hybrid")
        assert star.get_ydata()[0] == pytest.approx(min(hybrid.get_ydata()))
        assert all(y > 0 for y in hybrid.get_ydata())
    # normalised: KV-only at the same point has latency 1, and hybrid r=1 stores only K,V, so it is ~1 too
    ax = visible[0]
    hybrid = next(ln for ln in ax.get_lines() if ln.get_label() == _name("hybrid"))
    at_r1 = dict(zip(hybrid.get_xdata(), hybrid.get_ydata(), strict=True))[0.0]
    assert at_r1 == pytest.approx(1.0, rel=0.05)


def test_throughput_bars_carry_the_speedup_over_kv_only(loaded):
    fig = figures.throughput_bars(loaded).fig
    ax = next(ax for ax in fig.axes if ax.containers)
    bars = _bars(ax)
    assert set(bars) == {_name("kv-only"), _name("kv-only cpu-attn"), _name("hybrid", True),
                         _name("token-recompute", True)}
    assert all(len(h) == len(MODELS) for h in bars.values())  # one bar per model
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("1.00×") >= len(MODELS)  # kv-only against itself
    assert all(t.endswith("×") for t in texts)
    assert "speed-up over KV-only" in ax.get_title() or "over the hatched bar" in ax.get_title()
    # the exact baseline at each point, the better placement of KV-only, is the hatched bar, at 1.00x
    hatched = [b for c in ax.containers for b in c if b.get_hatch()]
    assert len(hatched) == len(MODELS)


def test_utilisation_and_traffic_plot_busy_fraction_and_bytes(loaded):
    fig = figures.utilisation_traffic(loaded).fig
    top, bottom = fig.axes[:2]
    busy = _bars(top)
    assert set(busy) >= {_name("kv-only"), _name("hybrid", True)}
    assert all(0 <= h <= 100 for hs in busy.values() for h in hs)
    assert all(h > 0 for hs in _bars(bottom).values() for h in hs)
    assert "traffic" in bottom.get_ylabel() and "B" in bottom.get_ylabel()


def test_bound_distance_is_at_most_the_bound_and_names_the_binding_engine(loaded):
    fig = figures.bound_distance(loaded).fig
    ax = fig.axes[0]
    heights = [h for hs in _bars(ax).values() for h in hs]
    assert heights and all(0 < h <= 100 + 1e-9 for h in heights)
    assert {t.get_text() for t in ax.texts} <= {"GPU", "H2D", "D2H", "CPU"}


def test_gantt_draws_every_op_of_one_decode_step(loaded):
    rows = timeline.pick_timeline_rows(loaded)
    assert len(rows.attrs["left_out"]) == 1 and rows.attrs["left_out"][0].startswith(_name("hybrid"))
    runs, notes = timeline.resimulate(rows)
    assert {r.series for r in runs} == DRAWN_ONCE and not notes
    fig = timeline.gantt_decode_step(runs).fig
    step = timeline.decode_step_of(3)
    for run in runs:
        ax = next(ax for ax in fig.axes if ax.get_gid() == f"step:{run.series}")
        t = run.timeline
        t = t[t["step"] == step]
        drawn = {c.get_gid(): len(c.get_paths()) for c in ax.collections}
        assert sum(drawn.values()) == len(t)
        assert set(drawn) == {f"{s}:{k}" for s, k in zip(t["stream"], t["kind"], strict=True)}


def test_memory_over_time_has_gpu_and_host_lines_per_configuration(loaded):
    runs, _ = timeline.resimulate(timeline.pick_timeline_rows(loaded))
    fig = timeline.memory_over_time(runs).fig
    gpu, host = fig.axes[:2]
    for ax in (gpu, host):
        lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
        assert len(lines) == len(runs)
        assert all(max(ln.get_ydata()) > 0 for ln in lines)


def test_figures_skip_cleanly_when_the_results_lack_a_sweep(loaded):
    one = loaded[(loaded["prompt_len"] == PROMPTS[0]) & loaded["kv_ratio"].isin([1.0])]
    with pytest.raises(Skip, match="prompt"):
        figures.throughput_vs_prompt(one)
    with pytest.raises(Skip, match="kv_ratio"):
        figures.latency_vs_recompute_ratio(one)
    with pytest.raises(Skip, match="kv_ratio"):
        figures.latency_vs_recompute_ratio(one.drop(columns="kv_ratio"))


def test_unknown_policies_and_extra_columns_pass_through(tmp_path, results):
    hybrid = results[results["policy"] == "hybrid"]
    kvpr = hybrid.assign(policy="kvpr", policy_label="kvpr l=12")
    acme = hybrid.assign(policy="acme", policy_label="acme x=1")
    df = pd.concat([results, kvpr, acme], ignore_index=True).assign(kvpr_split_tokens=12)
    rep = build_report(df, tmp_path, only=["throughput_vs_prompt", "gantt_decode_step"])
    assert set(rep.captions) == {"throughput_vs_prompt", "gantt_decode_step"} and not rep.skipped
    fig = figures.throughput_bars(load_results(df)).fig
    labels = {lab for ax in fig.axes for lab in _bars(ax)}
    assert {"KVPR, best r", "acme, best r"} <= labels


def test_make_report_writes_figures_tables_and_an_index(tmp_path, results):
    results.to_csv(tmp_path / "results.csv", index=False)
    paths = make_report(tmp_path / "results.csv", tmp_path / "report")
    names = {p.name for p in paths}
    for fd in FIGURES:
        assert {f"{fd.name}.png", f"{fd.name}.pdf"} <= names
    assert {"summary.csv", "summary.md", "recompute_ratio.csv", "infeasible.md", "README.md"} <= names
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    summary = pd.read_csv(tmp_path / "report" / "tables" / "summary.csv")
    assert set(summary["policy"]) == {series_name(s) for s in SERIES}
    assert set(summary["speedup_over"]) == {"KV-only"}
    md = (tmp_path / "report" / "tables" / "summary.md").read_text()
    assert "| 1.00 | KV-only |" in md  # KV-only against itself, two decimals
    index = (tmp_path / "report" / "README.md").read_text()
    assert "figures/gantt_decode_step.png" in index
    # the left-out hybrid series is listed, the caption names the baseline and the scale actually used
    left = index.split("## Left out", 1)[1]
    assert "gantt_decode_step, KV+activation hybrid" in left and "throughput_vs_prompt, KV+activation" in left
    assert "speed-up over the best configuration of KV-only" in index
    log = figures.utilisation_traffic(load_results(results)).fig.axes[1].get_yscale() == "log"
    assert ("(bottom, markers on a log scale)" in index) == log and ("(bottom, linear scale)" in index) != log


def test_report_only_lists_what_it_left_out(tmp_path, results):
    one = results[results["prompt_len"] == PROMPTS[0]]
    rep = build_report(one, tmp_path, only=["throughput_vs_prompt", "bound_distance"])
    assert "throughput_vs_prompt" in rep.skipped and "bound_distance" in rep.captions
    assert "throughput_vs_prompt" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("content, match", [(None, "no such file"), (b"not parquet", "cannot read"),
                                            ("a,b\n1,2\n", "lacks the columns")])
def test_bad_results_files_are_user_errors(tmp_path, content, match):
    path = tmp_path / ("results.csv" if isinstance(content, str) else "results.parquet")
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=match):
        load_results(path)


def test_report_command(tmp_path, results):
    results.to_parquet(tmp_path / "results.parquet")
    res = CliRunner().invoke(report, [str(tmp_path), "--figure", "throughput_bars"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "report" / "figures" / "throughput_bars.png").is_file()
    assert not (tmp_path / "report" / "figures" / "gantt_decode_step.png").exists()
    res = CliRunner().invoke(report, [str(tmp_path / "missing.parquet")])
    assert res.exit_code == 2 and "missing.parquet" in res.output


# ----------------------------------------------------------------- the papers' systems and their names


def _every_policy_series() -> list[str]:
    """The series key of every PolicyKind, with and without CPU attention where the kind allows it."""
    keys = []
    for kind in PolicyKind:
        for cpu in (False, True):
            try:
                policy = PolicySpec(kind=kind, cpu_attention=cpu)
            except ValueError:
                continue
            row = pd.DataFrame([{"policy": kind.value, "cpu_attention": policy.cpu_attention,
                                 "mini_batching": policy.mini_batching.value, "split_rule": policy.split_rule.value,
                                 "split_tokens": None, "step_barrier": policy.step_barrier,
                                 "cache_pinned": policy.cache_pinned}])
            keys.append(series_of(row).iloc[0])
    return keys


def test_every_policy_kind_has_a_known_name_and_its_own_colour():
    keys = _every_policy_series() + ["hybridserve naive", "kvpr per-step"]
    assert {"flexgen", "flexgen cpu-attn", "hybridserve", "kvpr", "kv-only cpu-attn"} <= set(keys)
    assert all(k in SERIES_ORDER for k in keys)  # a known name, not the raw key
    names = [series_name(k) for k in keys]
    assert len(set(names)) == len(names)
    colours = [tuple(round(c, 4) for c in series_colour(k)) for k in keys]
    assert len(set(colours)) == len(colours)
    markers = [series_marker(k) for k in keys]
    assert len(set(markers)) == len(markers)
    # the generic policies do not borrow the papers' names, the published ones carry them
    assert series_name("hybrid") == "KV+activation hybrid" and series_name("kv-only") == "KV-only"
    assert [series_name(k) for k in ("flexgen", "flexgen cpu-attn", "hybridserve", "kvpr")] == [
        "FlexGen", "FlexGen, CPU attention", "HybridServe", "KVPR"]
    # FlexGen's variants sit together, and a variant right after the series it extends
    order = sorted(keys, key=series_sort_key)
    assert order.index("flexgen cpu-attn") == order.index("flexgen") + 1
    assert series_sort_key("flexgen cpu-attn pinned-kv") < series_sort_key("token-recompute")
    assert series_name("flexgen cpu-attn pinned-kv") == "FlexGen, CPU attention, pinned KV"
    assert legend_rank("FlexGen, CPU attention, best config") > legend_rank("FlexGen")
    assert legend_rank("FlexGen, CPU attention") < legend_rank("Token recompute")


def test_paper_variants_are_separate_series_and_flexgen_is_the_baseline(papers):
    assert set(papers["series"]) == PAPER_SERIES
    best = best_per_series(papers[papers["status"] == "ok"])
    assert set(best["baseline"]) <= {"flexgen", "flexgen cpu-attn"}  # no KV-only run: FlexGen's better placement
    for _, grp in best.groupby("prompt_len"):
        fg = grp[grp["series"].isin(["flexgen", "flexgen cpu-attn"])]["throughput_tok_s"].max()
        assert np.allclose(grp["speedup"], grp["throughput_tok_s"] / fg)
    fig = figures.throughput_bars(papers).fig
    ax = next(ax for ax in fig.axes if ax.containers)
    assert "speed-up over FlexGen" in ax.get_title() or "over the hatched bar" in ax.get_title()
    assert {t.get_text() for t in ax.texts} >= {"1.00×"}
    labels = set(_bars(ax))
    assert {"FlexGen", "FlexGen, CPU attention", "KVPR", "KVPR, per-step split"} <= labels
    assert {"HybridServe, best r", "HybridServe, naive mini-batches, best r"} <= labels
    # a mixed table: KV-only where it ran, FlexGen elsewhere, each named on its bars' panel
    both = load_results(pd.concat([papers.assign(scenario="p"), load_results(_kv_only_rows())], ignore_index=True))
    b = best_per_series(both[both["status"] == "ok"])
    assert set(b.loc[b["scenario"] == "p", "baseline"]) <= {"flexgen", "flexgen cpu-attn"}
    assert set(b.loc[b["scenario"] == "test", "baseline"]) == {"kv-only"}


def _kv_only_rows() -> pd.DataFrame:
    return run_points([_point(MODELS[1], PROMPTS[0], kind="kv-only")], jobs=1)


def test_latency_normalises_to_flexgen_when_kv_only_did_not_run(papers):
    fig = figures.latency_vs_recompute_ratio(papers).fig
    ax = fig.axes[0]
    label = ax.get_ylabel().replace("\n", " ")
    assert label in ("token latency (× FlexGen)", "token latency (× FlexGen, CPU attention)")
    at = papers[(papers["prompt_len"] == PROMPTS[0]) | (papers["prompt_len"] == PROMPTS[1])]
    point = ax.get_title().split("prompt ")[-1]
    at = at[at["prompt_len"] == int(point)]
    fg = at[at["policy"] == "flexgen"]["token_latency_s"].min()
    hs = next(ln for ln in ax.get_lines() if ln.get_label() == "HybridServe")
    lat = at[at["series"] == "hybridserve"].set_index("kv_ratio")["token_latency_s"]
    assert np.allclose(sorted(hs.get_ydata()), sorted(lat / fg))


def test_optimum_labels_at_one_ratio_stack_instead_of_overprinting():
    rows = []
    for series, lat in (("hybrid", (1.0, 0.7, 0.8)), ("token-recompute", (1.0, 0.8, 0.9))):
        for r, t in zip((1.0, 0.5, 0.0), lat, strict=True):
            rows.append(dict(scenario="s", model="m", hardware="h", batch=8, prompt_len=64, gen_len=4,
                             policy=series, status="ok", throughput_tok_s=1 / t, token_latency_s=t, kv_ratio=r))
    rows.append(dict(rows[0], policy="kv-only", kv_ratio=1.0))
    fig = figures.latency_vs_recompute_ratio(load_results(pd.DataFrame(rows))).fig
    key = fig.axes[0].get_legend()
    labels = [t for t in key.get_texts() if (t.get_gid() or "").startswith("optimum-label:")]
    assert sorted(t.get_text() for t in labels) == ["0.70× at 0.50", "0.80× at 0.50"]
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in labels]
    assert not boxes[0].overlaps(boxes[1])  # same ratio, one label above the other
    for line in fig.axes[0].get_lines():  # the key sits where no point of a line is
        if line.get_label().startswith("_") or not len(line.get_xdata()):
            continue
        pts = fig.axes[0].transData.transform(np.column_stack([line.get_xdata(), line.get_ydata()]))
        assert not any(key.get_window_extent().contains(*p) for p in pts)


def test_traffic_reads_in_tb_and_gantt_kinds_have_distinct_colours(loaded):
    assert figures.byte_unit(2e13) == ("TB", 1e-12) and figures.byte_unit(5e9)[0] == "GB"
    huge = loaded.assign(h2d_bytes=loaded["h2d_bytes"] * 1e7)
    drawn = figures.utilisation_traffic(huge)
    assert "TB" in drawn.fig.axes[1].get_ylabel()
    assert drawn.fields["traffic_scale"] in ("markers on a log scale", "linear scale")
    kinds = [k.value for k in OpKind]
    colours = kind_colours(kinds)
    assert len(set(colours.values())) == len(kinds)
    assert {kind_family(k) for k in kinds} == set(KIND_FAMILIES)


def test_gantt_of_the_papers_systems_keeps_flexgen_variants_together(papers):
    rows = timeline.pick_timeline_rows(papers)
    runs, _ = timeline.resimulate(rows)
    order = [r.series for r in runs]
    assert order[:2] == ["flexgen", "flexgen cpu-attn"]
    fig = timeline.gantt_decode_step(runs).fig
    legend = fig.legends[0]
    shown = [t.get_text() for t in legend.get_texts() if t.get_text()]
    assert "host → GPU" in shown and "GPU compute" in shown
    titles = [timeline.config_title(r) for r in runs]
    assert not any("naive" in t and "mini-batches" not in t for t in titles)  # no 'naive' said twice


def test_lines_within_one_percent_stay_visible(papers):
    """FlexGen with CPU attention and a 0.5% faster copy of it: the one drawn first is drawn wider."""
    twin = papers[papers["series"] == "flexgen cpu-attn"].assign(
        policy="kv-only", policy_label="kv-only cpu-attn", throughput_tok_s=lambda d: d["throughput_tok_s"] * 1.005)
    drawn = figures.throughput_vs_prompt(load_results(pd.concat([papers, twin], ignore_index=True)))
    lines = _lines(drawn.fig)
    under, over = lines["KV-only, CPU attention"][0], lines["FlexGen, CPU attention"][0]
    assert under.get_linewidth() == 3.0 and under.get_markersize() == 7.5  # drawn wide, so it shows
    assert under.get_linewidth() >= over.get_linewidth()
    assert any("within 1%" in n for n in drawn.notes)
