"""The validation report: tables (Markdown and CSV), figures, Chrome traces, the profile.

Layout of the output folder::

    README.md                 the report (command, device, errors, tables, figures)
    summary.csv points.csv steps.csv kinds.csv worst_ops.csv ops.csv
    copy_overlap.csv          compute ops by the share of their measured time a weight copy overlapped
    profile.yaml              the calibrated profile used (or loaded)
    microbench/*.csv          the raw micro-benchmark timings (when calibrated)
    figures/*.png             drawn by hssim.reports.validation from `figure_inputs`: scatter per op kind,
                              simulated-over-measured Gantt, overlap per policy
    traces/pointNN.json.gz    Chrome / Perfetto trace: the measured and the simulated timeline side by side
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..sim.trace import TracePart, write_trace
from .compare import error_by_copy_overlap, kind_errors, summary
from .run import ValidationRun

WORST = 15


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _md(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure_inputs(run: ValidationRun) -> dict:
    """What the report's figures are drawn from (`hssim.reports.validation.draw_validation_figures`):
    the per-op join, the points, and both timelines of the point the Gantt chart shows."""
    gi, gstep = _gantt_choice(run)
    o = run.outcomes[gi]
    return {"ops": run.ops, "points": run.points, "sim_tl": o.sim_tl, "meas_tl": o.meas_tl,
            "label": f"point {gi}: {o.row['label']}", "step": gstep}


def _gantt_choice(run: ValidationRun) -> tuple[int, int]:
    pts = run.points
    hybrid = pts[pts["policy"].str.startswith("hybrid")]
    i = int(hybrid.iloc[0]["point"]) if len(hybrid) else 0
    gen = int(pts.loc[pts["point"] == i, "gen_len"].iloc[0])
    return i, max(1, gen // 2)


def write_report(run: ValidationRun, out: str | Path, command: str) -> Path:
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "traces").mkdir(parents=True, exist_ok=True)
    points, steps, ops = run.points, run.steps, run.ops
    summ = summary(points, steps)
    kinds = kind_errors(ops)
    by_overlap = error_by_copy_overlap(ops)
    worst = ops.assign(abs_err_s=ops["err_s"].abs()).sort_values("abs_err_s", ascending=False).head(WORST)
    worst = worst.merge(points[["point", "label"]], on="point")[
        ["label", "op_id", "kind", "layer", "step", "micro_batch", "dur_sim_s", "dur_meas_s", "err_s", "ape"]]
    ablation = pd.DataFrame([
        {"prediction": "profile (contention-blended)" if run.profile.contention == "overlap" else "profile",
         "e2e_ape_median": points["e2e_ape"].median(), "e2e_ape_p95": points["e2e_ape"].quantile(0.95)},
        {"prediction": "profile, idle rates only", "e2e_ape_median": points["idle_rates_e2e_ape"].median(),
         "e2e_ape_p95": points["idle_rates_e2e_ape"].quantile(0.95)},
        {"prediction": "profile, busy rates only", "e2e_ape_median": points["busy_rates_e2e_ape"].median(),
         "e2e_ape_p95": points["busy_rates_e2e_ape"].quantile(0.95)},
        {"prediction": "roofline (profile's peak figures)", "e2e_ape_median": points["roofline_e2e_ape"].median(),
         "e2e_ape_p95": points["roofline_e2e_ape"].quantile(0.95)},
    ])
    pd.DataFrame([{**summ, "load_1min_max": run.max_load, "cpu_count": run.info.cpu_count,
                   "overloaded": run.overloaded}]).to_csv(out / "summary.csv", index=False)
    points.to_csv(out / "points.csv", index=False)
    steps.to_csv(out / "steps.csv", index=False)
    kinds.to_csv(out / "kinds.csv", index=False)
    by_overlap.to_csv(out / "copy_overlap.csv", index=False)
    worst.to_csv(out / "worst_ops.csv", index=False)
    ops.to_csv(out / "ops.csv", index=False)
    ablation.to_csv(out / "ablation.csv", index=False)
    run.profile.save(out / "profile.yaml")
    if run.bench is not None:
        mb = out / "microbench"
        mb.mkdir(exist_ok=True)
        for name in ("copies", "device_copy", "gemm", "attention", "cpu_attention"):
            getattr(run.bench, name).to_csv(mb / f"{name}.csv", index=False)
    for o in run.outcomes:
        i = o.row["point"]
        meta = {"point": o.row["label"], "device": run.info.name}
        write_trace([TracePart(o.meas_tl, o.schedule, "measured", run.info.name),
                     TracePart(o.sim_tl, o.schedule, "sim")],
                    out / "traces" / f"point{i:02d}.json.gz", meta=meta)
    gi, gstep = _gantt_choice(run)
    (out / "README.md").write_text(_markdown(run, command, summ, kinds, worst, ablation, gi, gstep, by_overlap))
    return out


def _markdown(run: ValidationRun, command: str, summ: dict, kinds: pd.DataFrame, worst: pd.DataFrame,
              ablation: pd.DataFrame, gi: int, gstep: int, by_overlap: pd.DataFrame) -> str:
    info, prof, points = run.info, run.profile, run.points
    gpu_note = ("This run used a CUDA GPU." if run.backend == "cuda" else
                "**This report was not run on a GPU.** It is the CPU backend: the hw executor runs the schedule's "
                "streams as CPU threads and the 'GPU' is the CPU executing the kernels. The `--gpu` path "
                "(`hssim validate --gpu`) is complete but has not been run on a GPU here.")
    goal = ("GPU goal: median end-to-end APE <= 5% and p95 per-step APE <= 10%: "
            + ("met" if summ["e2e_ape_median"] <= 0.05 and summ["step_ape_p95"] <= 0.10 else "not met")
            + (" (on the CPU backend the goal is what is honestly achievable; see Residual error)."
               if run.backend == "cpu" else "."))
    pts = points[["label", "makespan_meas_s", "makespan_sim_s", "e2e_ape", "step_ape_median",
                  "roofline_e2e_ape", "hidden_link_share_meas", "hidden_link_share_sim",
                  *[c for c in ("probe_gemm_ratio", "probe_copy_ratio") if c in points]]]
    lines = [
        f"# hssim validation report ({run.backend}, set `{run.size}`)",
        "",
        "```",
        command,
        "```",
        "",
        gpu_note,
        "",
        *_load_note(run),
        f"- device: {info.name} ({info.backend}); driver {info.driver}; torch {info.torch_version}; "
        f"CUDA {info.cuda_version}; {info.cpu_count} CPUs; date {info.date}",
        f"- profile: `{prof.name}` (dtype {prof.dtype}, {prof.threads} torch thread(s) per stream thread, "
        f"contention model `{prof.contention}`), saved as `profile.yaml`; calibrated on micro-benchmarks only "
        f"({run.timings_s.get('calibration_s', 0):.0f} s); validation points {run.timings_s.get('points_s', 0):.0f} s",
        f"- set: {len(points)} points ({points['policy'].nunique()} policies; models "
        f"{', '.join(sorted(set(points['model'] + ' L' + points['layers'].astype(str))))}); "
        f"{run.vset.repeats} timed run(s) after {run.vset.warmup} warm-up, the median run is compared",
        "",
        "## Errors",
        "",
        "| metric | median APE | p95 APE |",
        "|---|---|---|",
        f"| end-to-end time ({summ['points']} points) | {_pct(summ['e2e_ape_median'])} | {_pct(summ['e2e_ape_p95'])} |",
        f"| per-decode-step time ({summ['decode_steps']} steps) | {_pct(summ['step_ape_median'])} | "
        f"{_pct(summ['step_ape_p95'])} |",
        *_repeat_rows(summ),
        *_drift_note(points),
        "",
        goal,
        "",
        "What the same schedules cost under other predictions (end-to-end APE):",
        "",
        _md(ablation.assign(e2e_ape_median=ablation["e2e_ape_median"].map(_pct),
                            e2e_ape_p95=ablation["e2e_ape_p95"].map(_pct))),
        "",
        "## Per point",
        "",
        _md(pts),
        "",
        "## Per op kind (op durations)",
        "",
        _md(kinds),
        "",
        "## Compute ops by how much of their measured time a weight copy overlapped",
        "",
        "`copy_overlap.csv`: the contention blend charges an op the busy rates for the share of it the "
        "simulated timeline overlaps a copy (`sim_copy_share`); an op whose measured slowdown beside a copy "
        "exceeds what the calibration's busy rates measured shows in the last rows.",
        "",
        _md(by_overlap),
        "",
        f"## The {WORST} worst ops (by absolute error)",
        "",
        _md(worst),
        "",
        "## Figures",
        "",
        "![predicted vs measured per op kind](figures/scatter_by_kind.png)",
        "",
        f"![Gantt of decode step {gstep} of point {gi}](figures/gantt_decode_step.png)",
        "",
        "![overlap per policy](figures/overlap_by_policy.png)",
        "",
        "Traces: `traces/pointNN.json.gz`, the measured and the simulated timeline of each point as two processes "
        "of one trace (open it in ui.perfetto.dev or chrome://tracing).",
        "",
        "## Residual error",
        "",
        _residual_text(run, kinds),
        "",
    ]
    return "\n".join(lines)


def _repeat_rows(summ: dict) -> list[str]:
    """The measurement's own spread: another timed run of the same point taken as the prediction."""
    if "repeat_step_ape_p95" not in summ:
        return []
    return [f"| repeat spread, end to end: another timed run as the prediction | "
            f"{_pct(summ['repeat_e2e_ape_median'])} | {_pct(summ['repeat_e2e_ape_p95'])} |",
            f"| repeat spread, per decode step | {_pct(summ['repeat_step_ape_median'])} | "
            f"{_pct(summ['repeat_step_ape_p95'])} |",
            "",
            "The repeat spread (columns `repeat_e2e_ape` of `points.csv`, `repeat_ape` of `steps.csv`) is how far "
            "the measurement itself moves between timed runs of the same point: no prediction of one run can be "
            "expected to come closer than that."]


def _drift_note(points: pd.DataFrame) -> list[str]:
    """How far the machine drifted from calibration before each point (`validate/probe.py`)."""
    if "probe_gemm_ratio" not in points or len(points) == 0:
        return []
    g, c = points["probe_gemm_ratio"], points["probe_copy_ratio"]
    ratio = points["makespan_sim_s"] / points["makespan_meas_s"]
    corr = float(np.corrcoef(ratio, 1 / g)[0, 1]) if len(points) > 2 and g.std() > 0 and ratio.std() > 0 else None
    return ["", f"Drift probe (`validate/probe.py`; columns `probe_gemm_ratio`, `probe_copy_ratio` of `points.csv`): "
                f"before the points, its decode GEMM ran {g.min():.2f}-{g.max():.2f}x (median {g.median():.2f}) and "
                f"its weight copy {c.min():.2f}-{c.max():.2f}x (median {c.median():.2f}) their times at calibration. "
                "The probe changes no prediction; a point measured while the machine ran slower than at calibration "
                "is predicted short by a faithful model."
                + (f" Across points, simulated/measured makespan and 1/(probe GEMM ratio) correlate at r = {corr:.2f}."
                   if corr is not None and np.isfinite(corr) else "")]


def _load_note(run: ValidationRun) -> list[str]:
    """A warning when the machine was busier than its cores (1-minute load average)."""
    loads = [v for v in run.load.values()] + [o.row.get("load_1min", float("nan")) for o in run.outcomes]
    loads = [v for v in loads if v == v]
    if not loads:
        return []
    cal = ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in run.load.items())
    text = (f"- load average (1 min): {cal}; per point {min(loads):.1f} to {max(loads):.1f} "
            f"(column `load_1min` of `points.csv`); {run.info.cpu_count} cores")
    if not run.overloaded:
        return [text, ""]
    own = (f" The load includes this run's own stream threads, which by design keep about {run.info.cpu_count} "
           "cores busy during a point, so a load above the core count means other processes competed for them."
           if run.backend == "cpu" else "")
    return [f"**Warning: the machine was overloaded** (1-minute load average up to {run.max_load:.1f} on "
            f"{run.info.cpu_count} cores)."
            + (" CPU-backend timings (calibration and measurements) are then unreliable; rerun on an idle machine."
               if run.backend == "cpu" else " Host-side timings (CPU ops, dispatch) may be inflated.") + own,
            "", text, ""]


def _residual_text(run: ValidationRun, kinds: pd.DataFrame) -> str:
    top = kinds.head(4)
    parts = ", ".join(f"{r.kind} (simulated/measured total {r.sim_over_meas:.2f})" for r in top.itertuples())
    text = [f"The kinds that carry most of the measured time: {parts}."]
    if run.backend == "cpu":
        text.append(
            "On the CPU backend the executor's stream threads share the machine's cores and its memory bandwidth "
            "(three or four threads on the cores the profile records), so an op's speed depends on what runs next "
            "to it. The micro-benchmarks reproduce the executor's conditions: every operand is cold (each call "
            "takes the next of a pool of copies larger than twice the last-level cache, as a weight slot or a host "
            "cache entry is read once, long after it was written), and the busy neighbour moves what the "
            "executor's neighbours move (a copy of a layer's weights next to a GEMM, a decode GEMM over cold "
            "weights next to a copy). Each rate is measured alone (`idle`), with the neighbour always busy "
            "(`busy`) and, for copies, with the opposite direction copying (`duplex`); the prediction blends them "
            "by how much of each op the simulated timeline overlaps the other side (`sim/costs/contention.py`). "
            "The ablation table shows how far each single rate is off. `python -m hssim.validate.attribution "
            "--out DIR` times single ops in place (warm, cold, beside their executor neighbour, inside a whole "
            "run), interleaved, and attributes the gap to dispatch, buffer life cycle, contention and thread "
            "wake-ups. What remains: the blend is linear in the overlap while two threads on two cores also "
            "share them with the executor's other stream threads and the GIL; thread wake-ups between dependent "
            "ops are not charged; and the host is a shared virtual machine, so repeats vary by several percent."
        )
    return "\n\n".join(text)
