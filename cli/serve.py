"""`hssim serve`: simulate serving scenarios, and make synthetic request traces."""

from __future__ import annotations

import json
import math
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import click
import pandas as pd

from ..errors import UserError
from .common import Group


def _simulate(point):
    from ..sim.serving.engine import run_serving
    from ..sim.serving.report import result_rows

    run = run_serving(point)
    rows = result_rows(run)
    tagged = {k: v for k, v in rows[0].items() if k in ("scenario", "hardware", "policy_label", "tenants")}
    models = {t.name: t.model.name for t in point.tenants}
    iterations = run.iterations.assign(**tagged, model=run.iterations["tenant"].map(models),
                                       rate_rps=rows[0]["rate_rps"])
    return rows, iterations


def _write_text_atomic(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is for reading
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _print_table(df: pd.DataFrame) -> None:
    """The comparison as a rich table; when stdout is not a terminal (a pipe, a log file), rich
    would squeeze it to 80 columns and cut cells to "…", so it gets a console as wide as the table."""
    import sys

    from rich.console import Console
    from rich.table import Table

    t = Table(title="Serving: latency and throughput per policy (simulated)")
    for col in ("scenario", "tenant", "hardware", "rate", "policy", "TTFT p50", "TTFT p99", "TBT p50", "TBT p99",
                "tok/s", "layers (mean/max)", "preempt.", "H2D GB", "D2H GB"):
        t.add_column(col, justify="left" if col in ("scenario", "tenant", "hardware", "policy") else "right",
                     no_wrap=True)
    for _, r in df.iterrows():
        t.add_row(r["scenario"], r["tenant"] if r["tenants"] > 1 else "", r["hardware"], f"{r['rate_rps']:g}",
                  r["policy_label"],
                  f"{r['ttft_p50_s']:.3f} s", f"{r['ttft_p99_s']:.3f} s", f"{r['tbt_p50_s'] * 1e3:.1f} ms",
                  f"{r['tbt_p99_s'] * 1e3:.1f} ms", f"{r['throughput_tok_s']:.0f}",
                  f"{r['remapped_layers_mean']:.1f}/{r['remapped_layers_max']}", str(r["preemptions"]),
                  f"{r['h2d_bytes'] / 1e9:.1f}", f"{r['d2h_bytes'] / 1e9:.1f}")
    if sys.stdout.isatty():
        Console().print(t)
    else:
        width = Console(width=10_000).measure(t).maximum
        Console(width=width, no_color=True, highlight=False).print(t)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def serve() -> None:
    """Online serving: arrivals, continuous batching, vLLM swap/recompute vs Oneiros remapping."""


@serve.command("run")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--policy", default=None, help="only this policy kind or label (e.g. oneiros, vllm-swap)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per point")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="write results.csv and results.parquet here")
@click.option("--iterations", "with_iterations", is_flag=True,
              help="also write iterations.parquet to --out: one row per iteration (remapped layers over time)")
@click.option("--markdown", "markdown", default=None, type=click.Path(dir_okay=False),
              help="write the Markdown comparison table to this file")
@click.option("--figures", "figures_dir", default=None, type=click.Path(file_okay=False),
              help="write remapping_over_time.png here: layers Oneiros remaps over time, one box per panel")
@click.option("--jobs", "-j", type=int, default=1, show_default=True, help="worker processes")
def run_cmd(files: tuple[str, ...], policy: str | None, as_json: bool, out_dir: str | None, with_iterations: bool,
            markdown: str | None, figures_dir: str | None, jobs: int) -> None:
    """Simulate every point of the serving scenario FILES (scenarios/serving/*.yaml)."""
    from ..sim.scenario import ScenarioError
    from ..sim.serving.engine import ServingCapacityError
    from ..sim.serving.report import markdown_report
    from ..sim.serving.scenario import load_serving_points
    from ..sim.sweep import write_atomic

    if with_iterations and not out_dir:
        raise UserError("--iterations needs --out DIR; fix: add --out DIR")
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: fix: give at least 1")
    try:
        points = load_serving_points(files)
    except ScenarioError as e:
        raise UserError(str(e)) from None
    if policy:
        points = [p for p in points if policy in (p.policy.label, p.policy.kind.value)]
        if not points:
            raise UserError(f"--policy {policy}: no policy of the scenarios matches; "
                              "fix: use vllm-swap, vllm-recompute or oneiros (or a label)")
    try:
        if jobs == 1 or len(points) == 1:
            results = [_simulate(p) for p in points]
        else:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                results = list(pool.map(_simulate, points))
    except ServingCapacityError as e:
        raise UserError(f"{', '.join(files)}: {e}; fix: raise gpu_kv_bytes or shorten the requests") from None
    df = pd.DataFrame([row for rows, _ in results for row in rows])
    if out_dir:
        out = Path(out_dir)
        write_atomic(df, out / "results.csv")
        write_atomic(df, out / "results.parquet")
        if with_iterations:
            write_atomic(pd.concat([it for _, it in results], ignore_index=True), out / "iterations.parquet")
    figure = tenant_figure = None
    if figures_dir:
        from ..reports.serving import remapping_figure, tenants_figure

        iterations = pd.concat([it for _, it in results], ignore_index=True)
        single = df["tenants"] == 1
        if single.any():
            figure = remapping_figure(df[single], iterations[iterations["tenants"] == 1], Path(figures_dir))
        if (~single).any():
            tenant_figure = tenants_figure(df[~single], iterations[iterations["tenants"] > 1], Path(figures_dir))
    if markdown:
        command = "hssim serve run " + " ".join(files) + (f" --out {out_dir}" if out_dir else "") + \
            f" --markdown {markdown}" + (f" --figures {figures_dir}" if figures_dir else "") + \
            (f" --jobs {jobs}" if jobs > 1 else "")
        def rel(path):
            return os.path.relpath(path, Path(markdown).parent) if path is not None else None

        _write_text_atomic(markdown_report(df, command, rel(figure), rel(tenant_figure)), Path(markdown))
    if as_json:
        for row in df.to_dict(orient="records"):
            click.echo(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                                   for k, v in row.items()}))
    else:
        _print_table(df)


@serve.command("trace")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False), help="CSV file to write")
@click.option("--requests", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--rate-rps", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="mean Poisson arrivals per second")
@click.option("--prompt-median", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--prompt-max", type=click.IntRange(min=1), default=1536, show_default=True)
@click.option("--output-median", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--output-max", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--sigma", type=click.FloatRange(min=0), default=0.6, show_default=True,
              help="log-normal sigma of both lengths (0: every request has the median lengths)")
@click.option("--seed", type=int, default=0, show_default=True)
def trace_cmd(out_file: str, requests: int, rate_rps: float, prompt_median: int, prompt_max: int,
              output_median: int, output_max: int, sigma: float, seed: int) -> None:
    """Write a synthetic trace (arrival_s,prompt_len,output_len): Poisson arrivals, log-normal lengths."""
    from pydantic import ValidationError

    from ..sim.serving.workload import LengthDist, poisson_requests, write_trace

    try:
        prompt = LengthDist(dist="lognormal", median=prompt_median, sigma=sigma, max=prompt_max)
        output = LengthDist(dist="lognormal", median=output_median, sigma=sigma, max=output_max)
    except ValidationError as e:
        raise UserError(f"{e.errors()[0]['msg']}; fix: check the --*-median and --*-max options") from None
    reqs = poisson_requests(requests, rate_rps, prompt, output, seed)
    write_trace(reqs, Path(out_file))
    click.echo(f"wrote {len(reqs)} requests over {reqs[-1].arrival_s:.1f} s to {out_file}")


if __name__ == "__main__":  # pragma: no cover
    serve()
