"""The intra-op threads of each Python thread that runs torch ops.

`torch.set_num_threads(n)` records `n` for the whole process, but an OpenMP build of PyTorch
applies it to another thread only when that thread first enters an ATen `parallel_for`
(`at::internal::lazy_init_num_threads`). A fresh thread whose first ops are oneDNN kernels (a
bf16 or fp16 `F.linear` on the CPU) runs them on OpenMP's default team, one thread per CPU, while
`torch.get_num_threads()` still says `n`: measured on a 2-CPU host, a bf16 decode GEMM looping in
a fresh thread kept 1.9 CPUs busy after `torch.set_num_threads(1)` (1.0 once the thread set it
itself). So every thread that runs ops sets its count first, with `adopt_threads`; the
executor's stream threads and the micro-benchmarks' busy neighbour then run what the profile
assumes (`tests/test_threads.py`).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os

import torch


def adopt_threads(n: int) -> None:
    """Make this thread run torch ops on `n` intra-op threads (PyTorch's and OpenMP's count)."""
    torch.set_num_threads(max(1, int(n)))


@functools.lru_cache(maxsize=1)
def _libgomp():
    found = sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp*.so*")))
    return ctypes.CDLL(found[0]) if found else None


def openmp_max_threads() -> int | None:
    """OpenMP's team size for a parallel region started by this thread (torch's bundled libgomp;
    None where torch ships none): what a oneDNN kernel called from this thread would use."""
    lib = _libgomp()
    return int(lib.omp_get_max_threads()) if lib is not None else None
