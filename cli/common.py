"""What every command shares: the one-line error form, picking one point, printing metrics, writing tables.

Library code raises `hssim.errors.UserError` (or a subclass); `Command` and `Group` turn it
into `error: MESSAGE` on stderr with exit status 2 and no traceback, for every command.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path

import click

from ..errors import ScenarioError, UserError
from ..sim.scenario import MAX_POINTS, load_yaml, points_from_mapping
from ..sim.specs import PointSpec
from ..sim.yamlsafe import one_line, parse_yaml


class OneLineError(click.ClickException):
    """A `UserError` as click shows it: one line, exit status 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {one_line(self.message, 2000)}", err=True)


def _usage_error(e: click.UsageError) -> OneLineError:
    """One of click's own usage errors (bad option value, missing argument) in the project's form."""
    ctx = e.ctx
    where = ctx.command_path if ctx is not None else "hssim"
    return OneLineError(f"{one_line(e.format_message(), 400).rstrip('.')}; fix: see `{where} --help`")


def _os_error(e: OSError) -> OneLineError:
    what = e.filename or "a file"
    return OneLineError(f"{what}: {e.strerror or type(e).__name__}; fix: check the path, its permissions "
                        "and the free space")


class _OneLineErrors:
    """Parsing and running that print `UserError`s and click's usage errors as one line, exit 2."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            raise _usage_error(e) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            raise OneLineError(str(e)) from None
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            raise _usage_error(e) from None
        except OSError as e:
            raise _os_error(e) from None


class Command(_OneLineErrors, click.Command):
    """A command whose `UserError`s (and click's usage errors) print as one line with exit status 2."""


class Group(_OneLineErrors, click.Group):
    """A group whose commands (and its own callback) report errors as `Command` does."""

    command_class = Command


Group.group_class = Group


class FiniteFloat(click.FloatRange):
    """A float option in a range, refusing nan and inf (click's FloatRange lets nan through)."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


#: places no output may go, whatever the links say
_SYSTEM_DIRS = (Path("/proc"), Path("/sys"), Path("/dev"))


def _probe_writable(folder: Path) -> str | None:
    """None if a file can be created in `folder` (tried, then removed), else why not."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".hssim-probe.", suffix=".tmp")
    except OSError as e:
        return e.strerror or type(e).__name__
    os.close(fd)
    os.unlink(tmp)
    return None


def check_output(path: str | Path | None, option: str, kind: str = "file",
                 suffixes: tuple[str, ...] = (), contents: tuple[str, ...] = ()) -> Path | None:
    """Check, before any work, that an output can be written; return it as a Path (None stays None).

    kind "file": a regular file (or a new one) whose name ends in one of `suffixes`;
    kind "dir": a folder (or a new one), whose `contents` (file names it will write) are not folders.
    Refused: an empty name, anything under /proc, /sys or /dev (so /dev/null too), a path under a
    file, an existing thing of the other kind or not a regular file, a folder that cannot be written.
    """
    if path is None:
        return None
    text = str(path)
    if not text.strip():
        raise UserError(f"{option} '': an empty path; fix: give a {'folder' if kind == 'dir' else 'file'} name")
    p = Path(text).expanduser()
    real = Path(os.path.realpath(p))
    for system in _SYSTEM_DIRS:
        if real == system or system in real.parents:
            raise UserError(f"{option} {text}: {system} is the system's, not a place for results; "
                            "fix: write under your own folder")
    if kind == "file":
        if suffixes and p.suffix not in suffixes:  # exact: the writers pick the format by suffix
            raise UserError(f"{option} {text}: unknown file type '{p.suffix}'; fix: end the name in "
                            f"{' or '.join(suffixes)}")
        if real.exists() and not real.is_file():
            what = "a folder" if real.is_dir() else "not a regular file"
            raise UserError(f"{option} {text}: {what}; fix: name a new or regular file")
        parent = real.parent
    else:
        if real.exists() and not real.is_dir():
            raise UserError(f"{option} {text}: a file, not a folder; fix: name a folder (new or existing)")
        for name in contents:
            inside = real / name
            if inside.exists() and not inside.is_file():
                raise UserError(f"{option} {text}: {name} inside it is not a regular file; fix: move it away or "
                                "use another folder")
        parent = real
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {text}: {existing} is a file, so nothing can be created under it; fix: "
                        "choose a path under a folder")
    why = _probe_writable(existing)
    if why is not None:
        raise UserError(f"{option} {text}: cannot write in {existing} ({why}); fix: choose a folder you can "
                        "write")
    return p


def check_cluster(address: str | None) -> str | None:
    """`--cluster`: None, `local`, or a tcp://host:port address (checked here, not when first used)."""
    if address is None or address == "local":
        return address
    m = re.fullmatch(r"(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})", address)
    if m is None or not 0 < int(m.group(3)) < 65536:
        raise UserError(f"--cluster {one_line(address, 80)}: not a Dask scheduler address; fix: write "
                        "tcp://HOST:PORT (e.g. tcp://127.0.0.1:8786) or 'local'")
    return address


#: a point whose schedule may have more ops than this is refused unless the limit is raised: a
#: built op takes some 260 bytes at its peak (tracemalloc, opt-30b on the T4 box), so 20 M ops are
#: about 5 GB per point (the largest bundled point is under 1 M)
MAX_OPS = 20_000_000
#: ... and one with more than this is named in a warning
WARN_OPS = 2_000_000


def check_op_counts(points, source: str, max_ops: int = MAX_OPS, warn=None, flag: str = "--max-ops") -> None:
    """Refuse points whose schedules would exceed `max_ops` ops (estimated before building);
    call `warn(message)` once about those past `WARN_OPS`."""
    from ..sim.api import estimate_ops

    if not points:
        return
    counts = [estimate_ops(p) for p in points]
    worst = max(range(len(points)), key=counts.__getitem__)
    p = points[worst]
    what = (f"{source}: model.layers x workload.gen_len x policy.num_gpu_batches ({p.model.layers} x "
            f"{p.workload.gen_len} x {p.policy.num_gpu_batches}, {p.policy.label})")
    if counts[worst] > max_ops:
        raise UserError(f"{what}: up to {counts[worst]:.3g} ops, over the limit of {max_ops:.3g}; fix: lower gen_len, "
                        f"layers or num_gpu_batches, or raise the limit ({flag})")
    big = sum(c > WARN_OPS for c in counts)
    if big and warn is not None:
        warn(f"{big} point(s) have schedules of over {WARN_OPS:.0e} ops (largest: {what}, up to "
             f"{counts[worst]:.3g}); they take long and much memory")


def _parse_sets(sets: tuple[str, ...]) -> dict[str, object]:
    out = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--set {one_line(item, 80)}: expected KEY=VALUE; fix: write e.g. "
                            "--set workload.prompt_len=512")
        try:
            parsed = parse_yaml(value, f"--set {key.strip()}", "value")
        except UserError as e:
            raise UserError(f"--set {one_line(item, 80)}: not a valid value ({getattr(e, 'message', e)}); fix: "
                            "write a number or a word (quote text with ':' or '#')") from None
        if parsed is None or isinstance(parsed, (list, dict)):
            what = "no value" if parsed is None else "a list or mapping"
            raise UserError(f"--set {one_line(item, 80)}: {what}, where --set fixes one value; fix: write one value, "
                            f"e.g. --set {key.strip()}=512 (a sweep over values goes in the scenario's sweep:)")
        out[key.strip()] = parsed
    return out


def select_points(path: str, policy: str | None, sets: tuple[str, ...]) -> list[PointSpec]:
    """The points of one scenario file, narrowed by --policy and --set."""
    data = load_yaml(Path(path))
    overrides = _parse_sets(sets)
    if overrides and isinstance(data.get("sweep") or {}, dict):
        sweep = dict(data.get("sweep") or {})
        sweep.update({k: [v] for k, v in overrides.items()})
        data = {**data, "sweep": sweep}
    from ..sim.scenario import count_points

    if count_points(data) > MAX_POINTS:
        raise UserError(f"{path}: the scenario has {count_points(data)} points; fix: narrow it to one with "
                        f"--policy and --set AXIS=VALUE (axes: {', '.join(map(str, data.get('sweep') or {}))})")
    try:
        points = points_from_mapping(data, path, Path(path).stem)
    except ScenarioError as e:  # a value given with --set is blamed on --set, not on the file
        key = next((k for k in overrides if e.field.startswith(f"sweep.{k}")), None)
        if key is None:
            raise
        raise UserError(f"--set {key}={one_line(str(overrides[key]), 40)}: {e.message}; fix: {e.fix}") from None
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
        axes = ", ".join(map(str, data.get("sweep") or {})) or "none"
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
    if trace is None:
        if steps is not None or layers is not None:
            raise UserError("--trace-steps/--trace-layers filter a trace; fix: add --trace FILE.json")
        return {}
    from ..sim.trace import check_trace_path, parse_selection

    check_output(trace, "--trace")
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


