"""Requests and where they come from: Poisson arrivals with drawn lengths, or a trace file.

Trace format (CSV, one request per row, header required, rows in any order)::

    arrival_s,prompt_len,output_len
    0.000,512,128
    0.137,1024,64

`arrival_s` is seconds from the start (>= 0), `prompt_len` the prompt's tokens (> 0),
`output_len` the tokens to generate (> 0; the first comes from the prefill).

`bursts: {on_s, period_s, offset_s}` makes a drawn workload bursty: requests arrive only in
windows of `on_s` seconds every `period_s`, the first opening at `offset_s`; within a window they
come at `rate_rps` (the Poisson process runs on the windows' time, laid end to end). Tenants
given the same period and staggered offsets take turns.

Generation is seeded: arrivals and each length come from their own child stream of one
`numpy.random.SeedSequence(seed)`, so sweeping the rate keeps the same lengths and the same
arrival pattern, only compressed in time.
"""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from ..scenario import ScenarioError
from ..specs import Spec

TRACE_COLUMNS = ("arrival_s", "prompt_len", "output_len")


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    arrival_s: float
    prompt_len: int
    output_len: int


class LengthDist(Spec):
    """Token lengths: `fixed` (value), `uniform` (min..max inclusive) or `lognormal`
    (median, sigma, clipped to min..max). A bare integer in YAML means fixed."""

    dist: Literal["fixed", "uniform", "lognormal"] = "fixed"
    value: int | None = Field(default=None, gt=0)
    median: float | None = Field(default=None, gt=0)
    sigma: float = Field(default=0.5, ge=0)
    min: int = Field(default=1, gt=0)
    max: int | None = Field(default=None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _bare_int(cls, data):
        return {"dist": "fixed", "value": data} if isinstance(data, int) else data

    @model_validator(mode="after")
    def _check(self) -> LengthDist:
        if self.dist == "fixed" and self.value is None:
            raise ValueError("a fixed length needs 'value'")
        if self.dist == "uniform" and self.max is None:
            raise ValueError("a uniform length needs 'min' and 'max'")
        if self.dist == "lognormal" and (self.median is None or self.max is None):
            raise ValueError("a lognormal length needs 'median' and 'max' (and optionally sigma, min)")
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self

    @property
    def upper(self) -> int:
        """The longest length it can draw."""
        return self.value if self.dist == "fixed" else self.max

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.dist == "fixed":
            return np.full(n, self.value, dtype=np.int64)
        if self.dist == "uniform":
            return rng.integers(self.min, self.max + 1, size=n)
        x = rng.lognormal(np.log(self.median), self.sigma, size=n)
        return np.clip(np.rint(x), self.min, self.max).astype(np.int64)


class Bursts(Spec):
    """On/off arrivals: open for `on_s` of every `period_s` seconds, the first window at `offset_s`."""

    on_s: float = Field(gt=0)
    period_s: float = Field(gt=0)
    offset_s: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> Bursts:
        if self.on_s > self.period_s:
            raise ValueError(f"on_s ({self.on_s:g}) exceeds period_s ({self.period_s:g})")
        return self

    def wall_time_s(self, on_time_s: np.ndarray) -> np.ndarray:
        """Map time counted over the open windows only to time since the start."""
        window = np.floor(on_time_s / self.on_s)
        return self.offset_s + window * self.period_s + (on_time_s - window * self.on_s)


class ServingWorkload(Spec):
    """Poisson arrivals at `rate_rps` of `requests` requests (optionally in `bursts`), or the rows of
    a `trace` CSV."""

    requests: int | None = Field(default=None, gt=0)
    rate_rps: float | None = Field(default=None, gt=0, description="mean arrivals per second")
    prompt_len: LengthDist | None = None
    output_len: LengthDist | None = None
    seed: int = 0
    bursts: Bursts | None = None
    trace: str | None = Field(default=None, description="CSV path (relative to the scenario file)")

    @field_validator("trace")
    @classmethod
    def _non_empty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("trace must be a file path")
        return v

    @model_validator(mode="after")
    def _check(self) -> ServingWorkload:
        synthetic = {"requests": self.requests, "rate_rps": self.rate_rps, "prompt_len": self.prompt_len,
                     "output_len": self.output_len}
        if self.trace is not None:
            given = [k for k, v in {**synthetic, "bursts": self.bursts}.items() if v is not None]
            if given:
                raise ValueError(f"a trace workload takes no {', '.join(given)} (the trace holds them)")
            return self
        missing = [k for k, v in synthetic.items() if v is None]
        if missing:
            raise ValueError(f"a Poisson workload needs {', '.join(missing)} (or give a trace)")
        return self


def poisson_requests(n: int, rate_rps: float, prompt: LengthDist, output: LengthDist, seed: int,
                     bursts: Bursts | None = None) -> list[Request]:
    arrivals_ss, prompt_ss, output_ss = np.random.SeedSequence(seed).spawn(3)
    gaps_s = np.random.default_rng(arrivals_ss).exponential(1.0, size=n) / rate_rps
    arrival_s = np.cumsum(gaps_s) - gaps_s[0]  # the first request arrives at 0 (of the open time)
    if bursts is not None:
        arrival_s = bursts.wall_time_s(arrival_s)
    prompts = prompt.draw(np.random.default_rng(prompt_ss), n)
    outputs = output.draw(np.random.default_rng(output_ss), n)
    return [Request(i, float(arrival_s[i]), int(prompts[i]), int(outputs[i])) for i in range(n)]


def read_trace(path: Path) -> list[Request]:
    """Requests of a trace CSV, ordered by arrival (ties keep file order); ScenarioError on bad rows."""
    source = str(path)
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = tuple(h.strip() for h in (reader.fieldnames or ()))
            if header[:3] != TRACE_COLUMNS:
                raise ScenarioError(source, "header", f"expected columns {','.join(TRACE_COLUMNS)}, got "
                                    f"{','.join(header) or 'nothing'}",
                                    f"start the file with the line '{','.join(TRACE_COLUMNS)}'")
            rows = [(i + 2, row) for i, row in enumerate(reader)]
    except OSError as e:
        raise ScenarioError(source, "file", f"cannot read it ({e.strerror})", "check the trace path") from None
    parsed = []
    for line, row in rows:
        try:
            arrival = float(row["arrival_s"])
            prompt, output = int(row["prompt_len"]), int(row["output_len"])
        except (TypeError, ValueError):
            raise ScenarioError(source, f"line {line}", f"not numbers: {dict(row)}",
                                "write arrival_s as seconds and the lengths as integers") from None
        if not (arrival >= 0 and prompt > 0 and output > 0):
            raise ScenarioError(source, f"line {line}", f"out of range: {dict(row)}",
                                "arrival_s >= 0, prompt_len > 0, output_len > 0")
        parsed.append((arrival, prompt, output))
    if not parsed:
        raise ScenarioError(source, "file", "the trace has no requests", "add at least one row")
    parsed.sort(key=lambda r: r[0])
    return [Request(i, a, p, o) for i, (a, p, o) in enumerate(parsed)]


def write_trace(requests: list[Request], path: Path) -> None:
    """Write requests as a trace CSV, atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(TRACE_COLUMNS)
            for r in requests:
                w.writerow([f"{r.arrival_s:.6f}", r.prompt_len, r.output_len])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def workload_requests(workload: ServingWorkload, base_dir: Path | None = None) -> list[Request]:
    if workload.trace is not None:
        path = Path(workload.trace)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return read_trace(path)
    return poisson_requests(workload.requests, workload.rate_rps, workload.prompt_len, workload.output_len,
                            workload.seed, workload.bursts)
