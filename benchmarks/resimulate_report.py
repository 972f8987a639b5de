"""Re-price a committed CPU validation report's measured points with its profile's attention as a fit
and as a table, without measuring anything again.

Why: the profile priced attention from one linear fit of time against the context's K,V bytes
through every measured shape; the table (`sim/costs/profile.py` `AttentionTable`) keeps the
measurements and interpolates between them. Both come from the same micro-benchmark rows (the
report's `microbench/attention.csv`), and the measured timelines are the report's (`ops.csv`), so
the difference between the two rows of the result is the pricing of attention alone.

    python benchmarks/resimulate_report.py --report reports/validation/cpu-amd-epyc@361cbd2 \
        --out benchmarks/results/attention_table_resimulated.md

`--report DIR@REV` reads the report as committed at git revision REV (the report before the table).
"""

from __future__ import annotations

import argparse
import io
import subprocess
from pathlib import Path

import pandas as pd

from hssim.sim.costs.contention import simulate_profiled
from hssim.sim.costs.profile import HardwareProfile, load_profile
from hssim.sim.policies import build_schedule
from hssim.validate.calibrate import _attention_table
from hssim.validate.compare import join_ops, point_errors, summary
from hssim.validate.suite import validation_set

REPO = Path(__file__).resolve().parents[1]


def _read(report: str, name: str) -> bytes:
    path, _, rev = report.partition("@")
    if rev:
        return subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}/{name}"], check=True,
                              capture_output=True).stdout
    return (REPO / path / name).read_bytes()


def _csv(report: str, name: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(_read(report, name)))


def header(title: str, script: str, args: argparse.Namespace, explanation: str) -> list[str]:
    """The result file's title, the command that made it, and what its rows compare."""
    return [f"# {title}: `{args.report}` re-simulated", "", "```",
            f"python benchmarks/{script} --report {args.report} --out {args.out}", "```", "", explanation, ""]


def report_args(doc: str) -> tuple[argparse.Namespace, HardwareProfile, pd.DataFrame]:
    """The command line (`--report DIR[@REV] --out FILE`), the report's profile and its joined ops."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--report", required=True, help="report folder, optionally @REV")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    tmp = Path(args.out).with_suffix(".profile.yaml")
    tmp.write_bytes(_read(args.report, "profile.yaml"))
    try:
        profile = load_profile(tmp)
    finally:
        tmp.unlink()
    return args, profile, _csv(args.report, "ops.csv")


def resimulate(prof: HardwareProfile, ops: pd.DataFrame) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Simulate every point of the CPU standard set with `prof`; (summary, steps, ops) against the measured
    `ops`."""
    points = validation_set("cpu", "standard").points(prof.hardware_spec())
    rows, steps, joined = [], [], []
    for i, p in enumerate(points):
        sim_tl = simulate_profiled(build_schedule(p), prof, p.model).timeline()
        m = ops[ops["point"] == i][["op_id", "start_s_meas", "end_s_meas"]]
        meas_tl = sim_tl.drop(columns=["start_s", "end_s"]).merge(
            m.rename(columns={"start_s_meas": "start_s", "end_s_meas": "end_s"}), on="op_id")
        row, st = point_errors(sim_tl, meas_tl)
        rows.append(row)
        steps.append(st.assign(point=i))
        joined.append(join_ops(sim_tl, meas_tl).assign(point=i))
    steps = pd.concat(steps)
    return summary(pd.DataFrame(rows), steps), steps, pd.concat(joined)


def main() -> None:
    args, saved, ops = report_args(__doc__)
    attn = _csv(args.report, "microbench/attention.csv")
    meta = _csv(args.report, "points.csv")[["point", "model", "batch"]]
    fit = saved.model_copy(update={"attention": None})
    table = saved.model_copy(update={"attention": {c: _attention_table(g) for c, g in attn.groupby("condition")}})
    lines = header("Attention priced from a fit and from a table", "resimulate_report.py", args,
                   "Same measured timelines, same profile except how attention is priced. The first row prices "
                   "as the report did, so it reproduces the report's own errors (a check that the re-simulation "
                   "is the report's); the second prices attention from the same benchmark rows kept as a table.")
    lines += ["| attention priced from | e2e APE median | e2e p95 | step APE median | step p95 | decode step sim/meas "
             "(median) | decode attention sim/meas: " + " | ".join(
                 f"{m} b{b}" for (m, b) in meta[["model", "batch"]].drop_duplicates().itertuples(index=False)) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(meta[["model", "batch"]].drop_duplicates())]
    for name, prof in (("linear fit (as the report priced it)", fit), ("table", table)):
        summ, steps, joined = resimulate(prof, ops)
        dec_steps = steps[steps["step"] >= 1]
        joined = joined.merge(meta, on="point")
        dec = joined[(joined["kind"] == "attention") & (joined["step"] > 0)]
        g = dec.groupby(["model", "batch"], sort=False)[["dur_sim_s", "dur_meas_s"]].sum()
        ratio = [g.loc[(m, b), "dur_sim_s"] / g.loc[(m, b), "dur_meas_s"]
                 for m, b in meta[["model", "batch"]].drop_duplicates().itertuples(index=False)]
        lines.append(f"| {name} | {summ['e2e_ape_median']:.1%} | {summ['e2e_ape_p95']:.1%} | "
                     f"{summ['step_ape_median']:.1%} | {summ['step_ape_p95']:.1%} | "
                     f"{(dec_steps['sim_s'] / dec_steps['meas_s']).median():.3f} | "
                     + " | ".join(f"{r:.3f}" for r in ratio) + " |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
