"""The errors a user sees: the ground floor that every layer may import, importing nothing.

Each is a one-line message that names the file, the field and the fix; the command line
prints any `UserError` as `error: MESSAGE` and exits with status 2, with no traceback.
Errors that mean a bug in hssim are ordinary exceptions and are not caught.
"""

from __future__ import annotations


class UserError(ValueError):
    """A one-line error about the user's input or machine, with the fix in it."""


class ScenarioError(UserError):
    """A scenario (or serving scenario, or trace) that cannot be read or is not valid."""

    def __init__(self, source: str, field: str, message: str, fix: str) -> None:
        self.source, self.field, self.message, self.fix = source, field, message, fix
        super().__init__(f"{source}: {field}: {message}; fix: {fix}")


class MemoryPlanError(UserError):
    """A schedule that does not fit; the message names what, how much, and the fix."""


class ProfileError(UserError):
    """A hardware profile that cannot be found, read or used."""


class ClusterUnreachable(UserError):
    """No Dask scheduler answers at the address given."""


class ServingCapacityError(UserError):
    """A serving point whose model or requests cannot fit the GPU at all."""


class DeviceError(UserError):
    """The device asked for is not there (no CUDA for --gpu, no torch for the harness)."""


class MissingExtra(UserError):
    """An optional feature whose extra is not installed."""

    def __init__(self, feature: str, extra: str, module: str) -> None:
        super().__init__(f"{feature} needs the '{extra}' extra ({module} is not installed); "
                         f"fix: pip install 'hssim[{extra}]' (from a checkout: pip install -e '.[{extra}]')")


def require_distributed(feature: str):
    """The `distributed` module, or a `MissingExtra` naming the `cluster` extra."""
    try:
        import distributed
    except ImportError:
        raise MissingExtra(feature, "cluster", "dask.distributed") from None
    return distributed
