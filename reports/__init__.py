"""Reports: figures and tables from a sweep's results, and Chrome traces of a timeline.

`make_report(results, out_dir)` writes the whole report; `write_chrome_trace(...)`
writes one timeline as a trace. Imports are lazy so that writing a trace does not
load matplotlib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import build_report, make_report
    from .trace import write_chrome_trace

__all__ = ["build_report", "make_report", "write_chrome_trace"]


def __getattr__(name: str):
    if name in ("make_report", "build_report"):
        from . import report

        return getattr(report, name)
    if name == "write_chrome_trace":
        from .trace import write_chrome_trace

        return write_chrome_trace
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
