"""FlexGen's CPU attention, step by step, at 1 and 2 threads: the per-thread rates hssim prices
it with, and a check of the rule that scales them (linear in threads, capped by DRAM).

    python benchmarks/bench_flexgen_cpu_attention.py --out benchmarks/results/flexgen_cpu_attention.md

Per step, the per-thread seconds per unit are fitted at 1 thread (total seconds / total units
over the shapes); the 2-thread time of every shape is then predicted by
`max(units x rate / 2, bytes / DRAM rate)` with the DRAM rate of a large copy measured at 2
threads in the same run, and compared with the 2-thread measurement.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import pandas as pd

from hssim.sim.costs.cpu_attention import CPUStep, step_time_s
from hssim.validate.microbench import bench_flexgen_cpu_attention, bench_host_copy_Bps

#: (batch, heads, head_dim, context): OPT-6.7B's and OPT-30B's heads, decode contexts of FlexGen's runs
SHAPES = ((8, 32, 128, 256), (8, 32, 128, 512), (16, 32, 128, 512), (8, 56, 128, 512))


def _md(df: pd.DataFrame) -> str:
    """A Markdown table of `df`, its index as the first columns, numbers to 4 significant digits."""
    df = df.reset_index()
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    return "\n".join([head, "|" + "---|" * len(df.columns), *("| " + " | ".join(r) + " |" for r in cells)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/flexgen_cpu_attention.md")
    args = ap.parse_args()
    import torch

    torch_version = torch.__version__
    load0 = os.getloadavg()[0]
    t0 = time.time()
    one = bench_flexgen_cpu_attention(SHAPES, threads=1, rounds=15)
    two = bench_flexgen_cpu_attention(SHAPES, threads=2, rounds=15)
    dram1 = bench_host_copy_Bps(1)
    dram2 = bench_host_copy_Bps(2)
    load1 = os.getloadavg()[0]
    rates = (one.groupby("step")["seconds"].sum() / one.groupby("step")["units"].sum()).to_dict()
    two = two.copy()
    two["predicted_s"] = [step_time_s(CPUStep(r.step, r.units, r.host_bytes, 0.0), 2, dram2, rates)
                          for r in two.itertuples()]
    keys = ["batch", "heads", "head_dim", "context"]
    per_shape = one.groupby(keys)["seconds"].sum().rename("measured_1t_s").to_frame()
    per_shape["measured_2t_s"] = two.groupby(keys)["seconds"].sum()
    per_shape["predicted_2t_s"] = two.groupby(keys)["predicted_s"].sum()
    per_shape["speedup_2t"] = per_shape["measured_1t_s"] / per_shape["measured_2t_s"]
    per_shape["error_2t"] = per_shape["predicted_2t_s"] / per_shape["measured_2t_s"] - 1
    per_step = pd.DataFrame({
        "per_thread_s_per_unit": pd.Series(rates),
        "measured_1t_s": one.groupby("step")["seconds"].sum(),
        "measured_2t_s": two.groupby("step")["seconds"].sum(),
        "predicted_2t_s": two.groupby("step")["predicted_s"].sum(),
    })
    per_step["speedup_2t"] = per_step["measured_1t_s"] / per_step["measured_2t_s"]
    t1, t2, p2 = (per_shape[c].sum() for c in ("measured_1t_s", "measured_2t_s", "predicted_2t_s"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# FlexGen's CPU attention, step by step, at 1 and 2 threads",
        "",
        f"Command: `python benchmarks/bench_flexgen_cpu_attention.py --out {args.out}`",
        f"({time.time() - t0:.0f} s; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch_version}, Python {platform.python_version()}; "
        f"1-minute load average {load0:.2f} before, {load1:.2f} after).",
        "",
        "The code timed is FlexGen 0.1.8's (`flex_opt.py` `SelfAttention.load_cache` path 1, "
        "`pytorch_backend.py` `TorchDevice.mha_gen`, `_attention_weights`, `_attention_value`), "
        "step by step, the fastest of at least 15 calls (the least disturbed on a shared machine). "
        "Units: values for cast / new_token / mask / softmax, FLOPs "
        "for the bmm's (see `sim/costs/cpu_attention.py`).",
        "",
        f"Host copy rate (bytes read + written per second): {dram1 / 1e9:.2f} GB/s at 1 thread, "
        f"{dram2 / 1e9:.2f} GB/s at 2 threads.",
        "",
        "## Per step (all shapes summed)",
        "",
        _md(per_step.rename_axis("step")),
        "",
        "## Per shape: the rule's 2-thread prediction against the 2-thread measurement",
        "",
        "Rule: each step takes `max(units x per-thread rate / threads, bytes / DRAM rate)`, "
        "the per-thread rate fitted at 1 thread above, the DRAM rate the 2-thread copy rate.",
        "",
        _md(per_shape),
        "",
        f"Total over shapes: measured 1 thread {t1:.4f} s, 2 threads {t2:.4f} s (speed-up {t1 / t2:.2f}x); "
        f"predicted 2 threads {p2:.4f} s (error {p2 / t2 - 1:+.1%}).",
        "",
        "Per-thread rates for `sim/costs/cpu_attention.py` `PER_THREAD_S_PER_UNIT`:",
        "",
        "```python",
        *[f'    "{k}": {v:.4g},' for k, v in rates.items()],
        "```",
        "",
    ]
    out.write_text("\n".join(lines))
    one.assign(run="1 thread").pipe(lambda d: pd.concat([d, two.assign(run="2 threads")])).to_csv(
        out.with_suffix(".csv"), index=False)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
