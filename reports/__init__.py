"""Reports: figures and tables from a sweep's results (and serving's remapping figure).

`make_report(results, out_dir)` writes the whole report. Imports are lazy so that
importing the package does not load matplotlib. Chrome traces of a timeline are
`hssim.sim.trace`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import build_report, make_report

__all__ = ["build_report", "make_report"]


def __getattr__(name: str):
    if name in ("make_report", "build_report"):
        from . import report

        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
