"""The `jit` decorator of the simulator's compiled kernels (schedule emission, replay, memory peak).

With numba installed (a dependency: its wheels bring their own LLVM, so no compiler is
needed) a kernel is compiled on its first compiled call and kept in numba's on-disk cache
(`cache=True`, beside the source in `__pycache__`), so a process pays the compile once per
source change, not once per run. Without numba, or with `HSSIM_NO_NUMBA=1` in the
environment, the very same functions run as plain Python (much slower, identical results;
the tests run both on the same inputs). Every kernel keeps its Python form as `.py_func`.

Loading numba is a fixed cost per process: importing it and loading three cached kernels
takes 0.4-0.6 s of CPU (`python -m cProfile -m hssim.cli run ... --json` on a one-layer
point: 0.28 s import, 0.34 s `load_overload`), while the kernels' Python forms cost about
14 us per op for emission, replay and memory peak together (0.28 us compiled; an OPT-6.7B
hybrid schedule of 12,608 ops, 0.18 s against 0.39 s for its first compiled call). So
`Kernel.auto` runs a process's first `PY_OPS_BEFORE_COMPILING` ops (about what loading numba
costs, at that rate) as plain Python and switches to the compiled form once that much work
has been done or one call alone is that big (the ski-rental rule: a process never pays more
than about twice the better of the two), and `hssim run` on a small point never imports
numba. Calling a kernel directly always runs it compiled.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import types

#: True when kernels can run compiled (numba installed and not turned off)
COMPILED = os.environ.get("HSSIM_NO_NUMBA") != "1" and importlib.util.find_spec("numba") is not None

#: plain-Python ops (summed over kernels) a process runs before it compiles; about the
#: work that costs as much as loading numba (see the module docstring)
PY_OPS_BEFORE_COMPILING = int(os.environ.get("HSSIM_PY_OPS_BEFORE_COMPILING", "30000"))

_py_ops_run = 0


class Kernel:
    """A kernel function with its plain-Python form (`py_func`) and its numba form, made on first use."""

    def __init__(self, fn):
        functools.update_wrapper(self, fn)
        self._fn = fn
        self._py = None
        self._jitted = None

    @property
    def py_func(self):
        """The plain-Python form; the kernels it calls run as plain Python too."""
        if self._py is None:
            self._py = _with_kernels(self._fn, lambda k: k.py_func)
        return self._py

    @property
    def jitted(self):
        """The compiled form (the Python form where numba is missing or turned off)."""
        if not COMPILED:
            return self.py_func
        if self._jitted is None:
            self._jitted = _njit(self._fn)
        return self._jitted

    def __call__(self, *args):
        return self.jitted(*args)

    def auto(self, n_ops: int):
        """The form to run on `n_ops` ops: Python until this process has run
        `PY_OPS_BEFORE_COMPILING` ops that way (or once numba is loaded), compiled after."""
        global _py_ops_run
        if not COMPILED:
            return self.py_func
        if self._jitted is not None or "numba" in sys.modules or _py_ops_run + n_ops > PY_OPS_BEFORE_COMPILING:
            return self.jitted
        _py_ops_run += n_ops
        return self.py_func

    def pick(self, compiled: bool | None, n_ops: int):
        """compiled=True: the compiled form; False: the Python form; None: `auto(n_ops)`."""
        if compiled is None:
            return self.auto(n_ops)
        return self.jitted if compiled else self.py_func


def _with_kernels(fn, form):
    """`fn` with the kernels it calls by global name replaced by `form(kernel)`, in a copy of
    its globals (the module keeps its `Kernel` objects)."""
    g = fn.__globals__
    called = {name: form(g[name]) for name in fn.__code__.co_names if isinstance(g.get(name), Kernel)}
    if not called:
        return fn
    copy = types.FunctionType(fn.__code__, {**g, **called}, fn.__name__, fn.__defaults__, fn.__closure__)
    functools.update_wrapper(copy, fn)
    return copy


def _njit(fn):
    """`fn` compiled in nopython mode with the on-disk cache; the kernels it calls are compiled too."""
    import numba

    return numba.njit(cache=True, nogil=True)(_with_kernels(fn, lambda k: k.jitted))


def jit(fn) -> Kernel:
    """Marks `fn` as a kernel (see `Kernel`)."""
    return Kernel(fn)
