"""The `jit` decorator of the simulator's compiled kernels (schedule emission, replay, memory peak).

With numba installed (a dependency: its wheels bring their own LLVM, so no compiler is
needed) a kernel is compiled on its first call and kept in numba's on-disk cache
(`cache=True`, beside the source in `__pycache__`), so a process pays the compile once per
source change, not once per run. Without numba, or with `HSSIM_NO_NUMBA=1` in the
environment, the very same functions run as plain Python (much slower, identical results;
the tests run both on the same inputs). Every kernel keeps its Python form as `.py_func`.

Only modules that run a kernel import this one, inside the functions that need it, so
importing hssim (and `hssim run`'s start-up) does not pay numba's import.
"""

from __future__ import annotations

import os

try:
    if os.environ.get("HSSIM_NO_NUMBA") == "1":
        raise ImportError("HSSIM_NO_NUMBA=1")
    import numba
except ImportError:  # pragma: no cover - exercised with HSSIM_NO_NUMBA=1
    numba = None

#: True when kernels run compiled
COMPILED = numba is not None


def jit(fn):
    """`fn` compiled in nopython mode with the on-disk cache, or `fn` itself (with `.py_func`)."""
    if numba is None:
        fn.py_func = fn
        return fn
    return numba.njit(cache=True, nogil=True)(fn)
