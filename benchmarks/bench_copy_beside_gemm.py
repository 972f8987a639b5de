"""A host copy of one layer's weights, alone and beside a GEMM loop on another thread (CPU backend).

Why: the CPU validation charges `load_weights` 1.8x what the executor measures, and the copy
micro-benchmark's `busy` rate (a decode GEMM looping on the neighbour thread) is about half its
`idle` rate, while in the executor the same copies, beside the same decode GEMMs, run at the idle
rate. This times the copy call by call (one torch thread per thread, as the executor runs) and
reports the fastest and the median call of each condition, so that a bimodal rate shows.

Each GEMM neighbour runs twice: on one intra-op thread set in its own thread, as the executor's
stream threads run (`hssim/hw/threads.py`), and without that, as the calibration's busy neighbour
ran before: a fresh thread's oneDNN GEMMs then use one OpenMP thread per CPU, and on two CPUs they
crowd the copy's core. That difference, not the copy, was what the `busy` rate measured.

    python benchmarks/bench_copy_beside_gemm.py --out benchmarks/results/copy_beside_gemm.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time

import torch

from hssim.hw.threads import adopt_threads

LAYER_BYTES = 404 * 2**20  # one LLaMA-2-7B layer in bf16 (202 M parameters)
CALLS = 9


def copy_rates(src, dst) -> tuple[float, float]:
    """(fastest, median) GB/s of `CALLS` copies, alternating two cold buffer pairs."""
    times = []
    for i in range(CALLS):
        t0 = time.perf_counter()
        dst[i % 2].copy_(src[i % 2])
        times.append(time.perf_counter() - t0)
    return LAYER_BYTES / min(times) / 1e9, LAYER_BYTES / statistics.median(times) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the Markdown table here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    src = [torch.ones(LAYER_BYTES, dtype=torch.uint8) for _ in range(2)]
    dst = [torch.ones(LAYER_BYTES, dtype=torch.uint8) for _ in range(2)]
    weights = [torch.randn(11008, 4096, dtype=torch.bfloat16) * 0.02 for _ in range(3)]  # > 2x the LLC

    def neighbour(stop: threading.Event, m: int, gap_s: float, adopt: bool) -> None:
        if adopt:
            adopt_threads(1)
        x = torch.randn(m, 4096, dtype=torch.bfloat16)
        i = 0
        while not stop.is_set():
            torch.nn.functional.linear(x, weights[i % 3])
            i += 1
            if gap_s:
                time.sleep(gap_s)

    rows = [("alone", *copy_rates(src, dst))]
    for adopt in (True, False):
        team = "1 intra-op thread, set in its thread" if adopt else "its thread not set: one OpenMP thread per CPU"
        for m, gap_s, what in ((8, 0.0, "decode GEMM (M=8) back to back"), (4, 0.0, "decode GEMM (M=4) back to back"),
                               (128, 0.0, "prefill GEMM (M=128) back to back"),
                               (8, 0.01, "decode GEMM (M=8), 10 ms pause after each")):
            stop = threading.Event()
            th = threading.Thread(target=neighbour, args=(stop, m, gap_s, adopt), daemon=True)
            th.start()
            time.sleep(0.05)
            rows.append((f"beside a {what}; {team}", *copy_rates(src, dst)))
            stop.set()
            th.join()
    load = os.getloadavg()[0]
    lines = [
        f"# A {LAYER_BYTES / 2**20:.0f} MiB host copy beside a GEMM thread ({platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__})", "",
        "Command: `python benchmarks/bench_copy_beside_gemm.py --out benchmarks/results/copy_beside_gemm.md`", "",
        f"{CALLS} calls per condition, one torch thread per thread; load average (1 min) at the end {load:.2f}.", "",
        "| condition | fastest call GB/s | median call GB/s | median / alone median |",
        "|---|---:|---:|---:|",
    ]
    base = rows[0][2]
    lines += [f"| {what} | {fast:.2f} | {med:.2f} | {med / base:.2f} |" for what, fast, med in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
