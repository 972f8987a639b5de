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
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from ..outfiles import atomic_path
from ..scenario import ScenarioError
from ..specs import MAX_TOKENS, Int, Real, Spec
from ..yamlsafe import one_line, read_text

TRACE_COLUMNS = ("arrival_s", "prompt_len", "output_len")
#: bounds of a serving workload: a million requests, arrivals within a year, 1e-6..1e6 requests/s
MAX_REQUESTS = 10**6
MAX_ARRIVAL_S = 365 * 24 * 3600.0
MIN_RATE_RPS, MAX_RATE_RPS = 1e-6, 1e6


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
    value: Int | None = Field(default=None, gt=0, le=MAX_TOKENS)
    median: Real | None = Field(default=None, gt=0, le=MAX_TOKENS)
    sigma: Real = Field(default=0.5, ge=0, le=10)
    min: Int = Field(default=1, gt=0, le=MAX_TOKENS)
    max: Int | None = Field(default=None, gt=0, le=MAX_TOKENS)

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
        if self.dist == "lognormal" and not self.min <= self.median <= self.max:
            raise ValueError(f"median ({self.median:g}) is outside min..max ({self.min}..{self.max}): most "
                             "lengths would be cut to the bound")
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

    on_s: Real = Field(gt=0, le=MAX_ARRIVAL_S)
    period_s: Real = Field(gt=0, le=MAX_ARRIVAL_S)
    offset_s: Real = Field(default=0.0, ge=0, le=MAX_ARRIVAL_S)

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

    requests: Int | None = Field(default=None, gt=0, le=MAX_REQUESTS)
    rate_rps: Real | None = Field(default=None, ge=MIN_RATE_RPS, le=MAX_RATE_RPS,
                                  description="mean arrivals per second")
    prompt_len: LengthDist | None = None
    output_len: LengthDist | None = None
    seed: Int = Field(default=0, ge=0, le=2**63 - 1)
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
    """Requests of a trace CSV, ordered by arrival (ties keep file order); ScenarioError on bad rows.

    The file is read as strict UTF-8 (a BOM is dropped), column names may carry spaces, and every
    number must be finite and in range (arrivals within `MAX_ARRIVAL_S`, lengths up to `MAX_TOKENS`)."""
    source = str(path)
    text = read_text(path, "file", "check the trace path")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        first = next(reader, [])
    except csv.Error as e:
        raise ScenarioError(source, "line 1", f"not CSV ({e})", "write comma-separated values") from None
    header = tuple(h.strip() for h in first)
    if header[:3] != TRACE_COLUMNS:
        shown = one_line(",".join(header), 80) or "nothing"
        raise ScenarioError(source, "header", f"expected columns {','.join(TRACE_COLUMNS)}, got {shown}",
                            f"start the file with the line '{','.join(TRACE_COLUMNS)}'")
    parsed = []
    line = 1
    try:
        for line, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(parsed) >= MAX_REQUESTS:
                raise ScenarioError(source, f"line {line}", f"more than {MAX_REQUESTS} requests",
                                    "split the trace, or sample it")
            shown = one_line(",".join(row), 80)
            try:
                arrival = float(row[0])
                prompt, output = int(row[1]), int(row[2])
            except (IndexError, ValueError):
                raise ScenarioError(source, f"line {line}", f"not numbers: {shown}",
                                    "write arrival_s as seconds and the lengths as integers") from None
            if not (0 <= arrival <= MAX_ARRIVAL_S and 0 < prompt <= MAX_TOKENS and 0 < output <= MAX_TOKENS):
                raise ScenarioError(source, f"line {line}", f"out of range: {shown}",
                                    f"0 <= arrival_s <= {MAX_ARRIVAL_S:.0f} (a year), 0 < prompt_len and "
                                    f"output_len <= {MAX_TOKENS}")
            parsed.append((arrival, prompt, output))
    except csv.Error as e:
        raise ScenarioError(source, f"line {line + 1}", f"not CSV ({e})", "write comma-separated values") from None
    if not parsed:
        raise ScenarioError(source, "file", "the trace has no requests", "add at least one row")
    parsed.sort(key=lambda r: r[0])
    return [Request(i, a, p, o) for i, (a, p, o) in enumerate(parsed)]


def write_trace(requests: list[Request], path: Path) -> None:
    """Write requests as a trace CSV, atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(TRACE_COLUMNS)
        for r in requests:
            w.writerow([f"{r.arrival_s:.6f}", r.prompt_len, r.output_len])


def workload_requests(workload: ServingWorkload, base_dir: Path | None = None) -> list[Request]:
    if workload.trace is not None:
        path = Path(workload.trace)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return read_trace(path)
    return poisson_requests(workload.requests, workload.rate_rps, workload.prompt_len, workload.output_len,
                            workload.seed, workload.bursts)
