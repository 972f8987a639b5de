"""The `hssim` command line: one layer on top of the libraries, which never import it.

One module per command group; shared options, the one-line error form and output
helpers are in `common`. Commands load on first use, so `hssim run` does not import
torch, Dask or matplotlib.
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from .common import Group


class _Commands(Group):
    """The commands load on first use (their modules import heavy libraries such as torch)."""

    lazy = {
        "cluster": "hssim.cli.sweep:cluster",
        "measure": "hssim.cli.measure:measure",
        "optimize": "hssim.cli.optimize:optimize",
        "presets": "hssim.cli.run:presets",
        "report": "hssim.cli.report:report",
        "run": "hssim.cli.run:run",
        "schedule": "hssim.cli.run:schedule",
        "sensitivity": "hssim.cli.sensitivity:sensitivity",
        "serve": "hssim.cli.serve:serve",
        "sweep": "hssim.cli.sweep:sweep",
        "validate": "hssim.cli.validate:validate",
    }

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx, name):
        if name in self.lazy:
            module, attr = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hssim")
def main() -> None:
    """hssim: simulate LLM inference with host-memory offloading."""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
