"""Reports: every figure draws the series it should from a small simulated results table; traces load."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import make_point, tiny_model

from hssim.cli import UserError
from hssim.reports import figures, timeline
from hssim.reports.cli import report
from hssim.reports.report import FIGURES, build_report, make_report
from hssim.reports.results import Skip, best_per_series, load_results
from hssim.reports.style import series_name
from hssim.reports.trace import write_chrome_trace
from hssim.sim.api import result_row, run_point
from hssim.sim.sweep import run_points

PROMPTS = (16, 32)
MODELS = (tiny_model(layers=3, hidden=128, heads=4), tiny_model(layers=2, hidden=256, heads=4))
POLICIES = [dict(kind="kv-only"), dict(kind="kv-only", cpu_attention=True),
            *[dict(kind="hybrid", kv_ratio=r) for r in (0.0, 0.5, 1.0)],
            *[dict(kind="token-recompute", kv_ratio=r) for r in (0.0, 1.0)]]
SERIES = {"kv-only", "kv-only cpu-attn", "hybrid", "token-recompute"}


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
    fig = figures.throughput_vs_prompt(loaded).fig
    lines = _lines(fig)
    expect = {_name("kv-only"), _name("kv-only cpu-attn"), _name("hybrid", True), _name("token-recompute", True)}
    assert set(lines) == expect
    assert all(len(v) == len(MODELS) for v in lines.values())  # one panel per model
    best = best_per_series(loaded[loaded["status"] == "ok"])
    hybrid = best[(best["series"] == "hybrid") & (best["model"] == MODELS[0].name)].sort_values("prompt_len")
    line = next(ln for ln in lines[_name("hybrid", True)] if MODELS[0].name in ln.axes.get_title())
    assert list(line.get_xdata()) == list(PROMPTS)
    assert np.allclose(line.get_ydata(), hybrid["throughput_tok_s"])


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
    runs, notes = timeline.resimulate(rows)
    assert {r.series for r in runs} == SERIES and not notes
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
    index = (tmp_path / "report" / "README.md").read_text()
    assert "figures/gantt_decode_step.png" in index


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


def test_chrome_trace_has_one_event_per_op_on_one_track_per_stream(tmp_path):
    run = run_point(_point(MODELS[0], 16, kind="kv-only", cpu_attention=True))
    tl = run.result.timeline()
    path = write_chrome_trace(run.schedule, tl, tmp_path / "t.json", meta={"executor": "sim"})
    trace = json.loads(path.read_text())
    events = trace["traceEvents"]
    ops = [e for e in events if e["ph"] == "X"]
    assert len(ops) == len(run.schedule.ops)
    threads = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert set(threads.values()) == set(tl["stream"])
    for e in ops[:50]:
        op = run.schedule.ops[e["args"]["op_id"]]
        assert threads[e["tid"]] == op.stream.value
        assert e["name"].startswith(op.kind.value) and f"mb{op.micro_batch}" in e["name"]
        assert e["ts"] == pytest.approx(run.result.start_ns[op.id] / 1e3, abs=1e-3)
        assert e["dur"] == pytest.approx(run.result.duration_ns[op.id] / 1e3, abs=2e-3)
        assert e["args"]["link_bytes"] == op.link_bytes and e["args"]["flops"] == op.flops
    assert trace["otherData"]["executor"] == "sim"
