"""What every command shares: the one-line error form, picking one point, printing metrics, writing tables.

Library code raises `hssim.errors.UserError` (or a subclass); `Command` and `Group` turn it
into `error: MESSAGE` on stderr with exit status 2 and no traceback, for every command.
"""

from __future__ import annotations

import math
from pathlib import Path

import click
import yaml

from ..errors import UserError
from ..sim.scenario import load_yaml, points_from_mapping
from ..sim.specs import PointSpec


class OneLineError(click.ClickException):
    """A `UserError` as click shows it: one line, exit status 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


class Command(click.Command):
    """A command whose `UserError`s print as one line with exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            raise OneLineError(str(e)) from None


class Group(click.Group):
    """A group whose commands (and its own callback) report `UserError`s as `Command` does."""

    command_class = Command

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            raise OneLineError(str(e)) from None


Group.group_class = Group


def _parse_sets(sets: tuple[str, ...]) -> dict[str, object]:
    out = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UserError(f"--set {item}: expected KEY=VALUE, e.g. --set workload.prompt_len=512")
        out[key.strip()] = yaml.safe_load(value)
    return out


def select_points(path: str, policy: str | None, sets: tuple[str, ...]) -> list[PointSpec]:
    """The points of one scenario file, narrowed by --policy and --set."""
    data = load_yaml(Path(path))
    overrides = _parse_sets(sets)
    if overrides:
        sweep = dict(data.get("sweep") or {})
        sweep.update({k: [v] for k, v in overrides.items()})
        data = {**data, "sweep": sweep}
    points = points_from_mapping(data, path, Path(path).stem)
    if policy:
        by_label = [p for p in points if p.policy.label == policy]
        points = by_label or [p for p in points if p.policy.kind.value == policy]
        if not points:
            raise UserError(f"{path}: --policy {policy}: no policy of the scenario matches; "
                            "fix: use a kind or label that `hssim schedule` lists")
    return points


def one_point(path: str, policy: str | None, sets: tuple[str, ...]) -> PointSpec:
    points = select_points(path, policy, sets)
    if len(points) > 1:
        data = load_yaml(Path(path))
        axes = ", ".join(data.get("sweep") or {}) or "none"
        kinds = ", ".join(dict.fromkeys(p.policy.label for p in points))
        raise UserError(
            f"{path}: the scenario has {len(points)} points; fix: narrow to one with --policy "
            f"({kinds}) and --set AXIS=VALUE (axes: {axes})"
        )
    return points[0]


def metrics_json(point: PointSpec, metrics: dict, extra: dict | None = None) -> dict:
    """The JSON object `hssim run --json` prints: point columns, then metrics."""
    from ..sim.api import point_columns

    out = {**point_columns(point), **(extra or {}), **metrics}
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def print_metrics(point: PointSpec, metrics: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_header=False)
    t.add_column("metric")
    t.add_column("value", justify="right")
    units = {"_s": "s", "_tok_s": "tok/s"}
    for key, value in metrics.items():
        if isinstance(value, float):
            text = f"{value:.4g}"
        elif isinstance(value, int) and key.endswith("_bytes"):
            text, key = f"{value / 1e9:.3f} GB", key
        else:
            text = str(value)
        unit = next((u for suf, u in sorted(units.items(), key=lambda x: -len(x[0])) if key.endswith(suf)), "")
        t.add_row(key, f"{text} {unit}".strip())
    Console().print(t)


def check_table_path(path: str | Path | None, option: str) -> None:
    """Refuse, before anything runs, a table path whose format is not .parquet or .csv."""
    if path is not None and Path(path).suffix not in (".parquet", ".csv"):
        raise UserError(f"{option} {path}: unknown table format; fix: end the file name in .parquet or .csv")


def write_table(df, path: Path) -> None:
    from ..sim.sweep import write_atomic

    check_table_path(path, "output")
    write_atomic(df, path)


def trace_options(fn):
    """--trace FILE and its --trace-steps / --trace-layers filters."""
    fn = click.option("--trace-layers", default=None, metavar="LIST",
                      help="keep only these layers in the trace, e.g. 0-3 (the LM head stays with its step)")(fn)
    fn = click.option("--trace-steps", default=None, metavar="LIST",
                      help="keep only these steps in the trace, e.g. 0,1 (0 is the prefill)")(fn)
    return click.option("--trace", type=click.Path(dir_okay=False), default=None,
                        help="write a Chrome/Perfetto trace (.json or .json.gz): a process per device, a track "
                             "per stream, dependency flows, memory and link-bandwidth counters")(fn)


def trace_selection(trace: str | None, steps: str | None, layers: str | None) -> dict:
    """Check the trace options before anything runs; the `steps`/`layers` keywords of the trace writers."""
    from ..sim.trace import check_trace_path, parse_selection

    if trace is None:
        if steps is not None or layers is not None:
            raise UserError("--trace-steps/--trace-layers filter a trace; fix: add --trace FILE.json")
        return {}
    check_trace_path(trace)
    return {"steps": parse_selection(steps, "--trace-steps"), "layers": parse_selection(layers, "--trace-layers")}


_point_options = [
    click.option("--policy", default=None, help="policy kind or label to pick (e.g. hybrid, 'hybrid r=0.50')"),
    click.option("--set", "sets", multiple=True, metavar="AXIS=VALUE",
                 help="fix a field or sweep axis, e.g. --set workload.prompt_len=512 (repeatable)"),
]


def point_options(fn):
    for opt in reversed(_point_options):
        fn = opt(fn)
    return fn


