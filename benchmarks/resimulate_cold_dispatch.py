"""Re-price a committed CPU validation report's measured points with and without the cost an op pays
for finding the caches flushed (`op_cold_s`), measured now on this machine, without re-measuring them.

Why: the per-op dispatch cost is measured by running tiny models through the executor, which stream
no weights, so their ops find the caches warm; in a real run, every layer's weight copy and GEMMs move
tens of MB through the caches between two ops of a thread. `validate/calibrate.py`
`measure_cold_dispatch` times single ops of the same tiny models right after themselves and after a
cache flush; this adds that difference to a report's profile (which lacks it) and compares the
errors against the report's own measured timelines. The cold costs come from the tiny models only,
never from the report's points.

    python benchmarks/resimulate_cold_dispatch.py --report reports/validation/cpu-amd-epyc@7b76551 \
        --out benchmarks/results/cold_dispatch_resimulated.md
"""

from __future__ import annotations

from pathlib import Path

from resimulate_report import header, report_args, resimulate

from hssim.validate.calibrate import measure_cold_dispatch


def main() -> None:
    args, saved, ops = report_args(__doc__)
    cold = measure_cold_dispatch(saved, "cpu", saved.hardware_spec())
    lines = header("Per-op cold-cache cost", "resimulate_cold_dispatch.py", args,
                   "Same measured timelines and profile; the second row adds to every op the cost its kind pays "
                   "for finding the caches flushed, measured by this run on the tiny models "
                   "(`validate/calibrate.py` `measure_cold_dispatch`).")
    lines += ["| prediction | e2e APE median | e2e p95 | step APE median | step p95 | decode steps off by >12% | "
             "decode step sim/meas (median) | attention | ffn | cpu_attention | store_kv |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    variants = (("the report's profile", saved),
                ("+ op_cold_s", saved.model_copy(update={"op_cold_s": cold})))
    for name, prof in variants:
        summ, steps, joined = resimulate(prof, ops)
        dec = steps[steps["step"] >= 1]
        k = joined.groupby("kind")[["dur_sim_s", "dur_meas_s"]].sum()
        kind = k["dur_sim_s"] / k["dur_meas_s"]
        lines.append(f"| {name} | {summ['e2e_ape_median']:.1%} | {summ['e2e_ape_p95']:.1%} | "
                     f"{summ['step_ape_median']:.1%} | {summ['step_ape_p95']:.1%} | {(dec['ape'] > 0.12).sum()} of "
                     f"{len(dec)} | {(dec['sim_s'] / dec['meas_s']).median():.3f} | "
                     + " | ".join(f"{kind.get(x, float('nan')):.2f}" for x in ("attention", "ffn", "cpu_attention",
                                                                                "store_kv")) + " |")
    lines += ["", "Cold costs measured (ms per op, OPT family / LLaMA family):", "",
              "| op kind | layernorm | rmsnorm |", "|---|---|---|"]
    for kind in sorted({k.split(":")[0] for k in cold}):
        lines.append(f"| {kind} | {1e3 * cold.get(kind + ':layernorm', 0):.3f} | "
                     f"{1e3 * cold.get(kind + ':rmsnorm', 0):.3f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
