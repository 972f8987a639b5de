"""How sure a verdict is: the winner's margin, which uncertain figure would flip it, and where.

For one workload point (the policies a scenario runs at one model, box, batch and
lengths), the competitors are the policy kinds, each at its best configuration, as in
a sweep's ranking. With every figure at its value, the fastest kind wins by a margin
over the runner-up. Then, for every uncertain figure (`uncertainty.figure_ranges`):

- *one at a time*: the figure is set to each end of its range and halfway (geometrically)
  between its value and each end; where the winner changes (the first change is sought
  in `SCAN_STEPS` steps from the value), bisection finds the value at which it does, to
  `REL_TOL`; where it never does, the figure is reported as unable to change the winner
  within its range (a winner that changed and changed back between two looked-at values
  would escape). The throughput of every kind at the two ends gives the tornado.
- *all at once*: `samples` draws of every figure at once (log-uniform in its range, from
  a seeded generator, so runs repeat exactly) give each kind's spread and how often the
  winner holds.

The winner is `robust` when no figure flips it alone and it wins every joint draw.

Throughput is FlexGen's (generated tokens / makespan) from the list replay of the point's
schedule (`engine.list_replay`, identical to the SimPy model). A schedule is built once per
configuration unless its policy reads the box's rates (`policies.reads_hardware_rates`);
a configuration whose busiest engine alone already caps it below its kind's best so far
is not replayed (that bound never undercuts the replay), nor one whose op durations a
changed figure leaves as they were. Points on a calibrated profile
are priced by the profile, its figures scaled (`costs.profile_ranges`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .costs import RooflineCostModel, durations_ns
from .costs.contention import simulate_profiled
from .costs.profile import HardwareProfile, load_profile
from .costs.profile_ranges import profile_ranges, scaled_profile
from .engine import list_replay
from .memory import MemoryPlanError
from .metrics import throughput_tok_s
from .policies import build_schedule, reads_hardware_rates
from .schedule import Schedule, Stream
from .specs import PointSpec
from .uncertainty import FigureRange, Uncertainty, figure_ranges, with_figures

#: geometric steps from a figure's value to each end of its range, the end included
SCAN_STEPS = 3
#: bisection stops when the bracket's ends are within this relative distance
REL_TOL = 2e-3
DEFAULT_SAMPLES = 32
DEFAULT_SEED = 0
#: columns that identify a workload point (as the sweep's ranking groups them)
GROUP_KEYS = ("scenario", "model", "hardware", "batch", "prompt_len", "gen_len")


class NothingFits(ValueError):
    """No configuration of a workload point fits in memory: there is no winner to examine."""


def group_key(point: PointSpec) -> tuple:
    return (point.scenario, point.model.name, point.hardware.name, point.workload.batch,
            point.workload.prompt_len, point.workload.gen_len)


def workload_groups(points: Sequence[PointSpec]) -> list[list[PointSpec]]:
    """The points grouped by workload point, in the order the scenario lists them."""
    groups: dict[tuple, list[PointSpec]] = {}
    for p in points:
        groups.setdefault(group_key(p), []).append(p)
    return list(groups.values())


def point_label(group: Mapping) -> str:
    return (f"{group['model']} on {group['hardware']}, batch {group['batch']}, prompt {group['prompt_len']}, "
            f"{group['gen_len']} out")


@dataclass(frozen=True)
class KindResult:
    """A policy kind's best configuration at one set of figures."""

    throughput_tok_s: float
    label: str


Standing = dict[str, KindResult]  # policy kind -> its best


def winner_of(standing: Standing) -> str:
    return max(standing, key=lambda k: (standing[k].throughput_tok_s, k))


def runner_up_of(standing: Standing) -> str | None:
    rest = sorted(standing, key=lambda k: (standing[k].throughput_tok_s, k), reverse=True)
    return rest[1] if len(rest) > 1 else None


class Evaluator:
    """Each kind's best throughput at one workload point, with some figures changed."""

    def __init__(self, configs: Sequence[PointSpec]) -> None:
        self.configs: list[PointSpec] = []
        self.infeasible: list[tuple[PointSpec, str]] = []
        self._schedules: dict[int, Schedule] = {}
        hw = configs[0].hardware
        self.hardware = hw
        self.profile: HardwareProfile | None = load_profile(hw.profile) if hw.profile else None
        for p in configs:
            try:
                sched = build_schedule(p)
            except MemoryPlanError as e:  # capacities are not uncertain: it never fits
                self.infeasible.append((p, str(e)))
                continue
            if not reads_hardware_rates(p.policy):
                self._schedules[len(self.configs)] = sched
            self.configs.append(p)
        self._memo: dict[tuple, Standing] = {}
        self._by_durations: dict[tuple, float] = {}
        self.replays = 0

    def ranges(self, uncertainty: Uncertainty | None = None) -> list[FigureRange]:
        calibrated = profile_ranges(self.profile) if self.profile is not None else None
        return figure_ranges(self.hardware, uncertainty, calibrated)

    def standing(self, values: Mapping[str, float] | None = None) -> Standing:
        """Each kind's best throughput with `values` (figure path -> value) set."""
        key = tuple(sorted((values or {}).items()))
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = self._standing(dict(values or {}))
        return hit

    def _standing(self, values: dict[str, float]) -> Standing:
        if self.profile is not None:
            return self._standing_profiled(values)
        hw = with_figures(self.hardware, values) if values else self.hardware
        cost = RooflineCostModel(hw)
        priced = []
        for i, p in enumerate(self.configs):
            sched = self._schedules.get(i)
            if sched is None:
                sched = build_schedule(p.model_copy(update={"hardware": hw}))
            dur = durations_ns(sched, cost)
            busiest_ns = np.bincount(sched.stream_code, weights=dur, minlength=len(Stream)).max()
            bound = sched.meta.batch * sched.meta.gen_len / (busiest_ns / 1e9) if busiest_ns else math.inf
            priced.append((bound, i, sched, dur))
        best: Standing = {}
        for bound, i, sched, dur in sorted(priced, key=lambda x: (-x[0], x[1])):
            p = self.configs[i]
            kind = p.policy.kind.value
            if kind in best and bound <= best[kind].throughput_tok_s:
                continue  # even its busiest engine alone keeps it below the kind's best
            thr = self._replayed(i, sched, dur)
            if kind not in best or thr > best[kind].throughput_tok_s:
                best[kind] = KindResult(thr, p.policy.label)
        return best

    def _replayed(self, i: int, sched: Schedule, dur: np.ndarray) -> float:
        """Throughput of configuration `i` with durations `dur`: a figure that changes none of its
        ops' durations (a CPU rate, for a policy that never uses the CPU) needs no replay."""
        key = (i, hashlib.blake2b(dur.tobytes(), digest_size=16).digest())
        thr = self._by_durations.get(key)
        if thr is None:
            self.replays += 1
            thr = self._by_durations[key] = throughput_tok_s(list_replay(sched, dur))
        return thr

    def _standing_profiled(self, values: dict[str, float]) -> Standing:
        prof = scaled_profile(self.profile, values) if values else self.profile
        best: Standing = {}
        for i, p in enumerate(self.configs):
            sched = self._schedules.get(i) or build_schedule(p)
            self.replays += 1
            thr = throughput_tok_s(simulate_profiled(sched, prof, p.model))
            kind = p.policy.kind.value
            if kind not in best or thr > best[kind].throughput_tok_s:
                best[kind] = KindResult(thr, p.policy.label)
        return best


@dataclass(frozen=True)
class Flip:
    """Where a figure, moved away from its value, changes the winner."""

    value: float  # the figure's value at the change (to REL_TOL)
    new_winner: str


@dataclass(frozen=True)
class FigureResult:
    figure: FigureRange
    at_lo: Standing
    at_hi: Standing
    flip_below: Flip | None
    flip_above: Flip | None

    @property
    def effect(self) -> bool:
        """Whether the figure changes any kind's throughput within its range."""
        return self.at_lo != self.at_hi

    @property
    def flips(self) -> bool:
        return self.flip_below is not None or self.flip_above is not None


@dataclass(frozen=True)
class PointSensitivity:
    """The sensitivity of one workload point's verdict."""

    group: dict
    nominal: Standing
    figures: list[FigureResult]
    samples: list[Standing]
    seed: int
    infeasible: list[str] = field(default_factory=list)

    @property
    def winner(self) -> str:
        return winner_of(self.nominal)

    @property
    def runner_up(self) -> str | None:
        return runner_up_of(self.nominal)

    @property
    def margin(self) -> float:
        """The winner's throughput over the runner-up's, minus one (NaN with one kind)."""
        r = self.runner_up
        if r is None:
            return math.nan
        return self.nominal[self.winner].throughput_tok_s / self.nominal[r].throughput_tok_s - 1

    @property
    def winner_share(self) -> float:
        """Share of the joint draws the nominal winner wins (NaN without draws)."""
        if not self.samples:
            return math.nan
        return sum(winner_of(s) == self.winner for s in self.samples) / len(self.samples)

    @property
    def flipping(self) -> list[FigureResult]:
        return [f for f in self.figures if f.flips]

    @property
    def robust(self) -> bool:
        return not self.flipping and (not self.samples or self.winner_share == 1.0)


def _geom(a: float, b: float, t: float) -> float:
    """The point a fraction t of the way from a to b, geometrically when both are positive."""
    if a > 0 and b > 0:
        return a * (b / a) ** t
    return a + (b - a) * t


def _close(a: float, b: float) -> bool:
    scale = max(abs(a), abs(b))
    return scale == 0 or abs(a - b) <= REL_TOL * scale


def find_flip(ev: Evaluator, fig: FigureRange, end: float, winner: str) -> Flip | None:
    """Scan from the figure's value towards `end`; bisect where the winner first changes.

    The end is looked at first: where the winner holds there, one point halfway (geometrically)
    is checked as well; where it does not, `SCAN_STEPS` steps find the first change."""
    steps = SCAN_STEPS if winner_of(ev.standing({fig.path: end})) != winner else 2
    prev = fig.value
    for step in range(1, steps + 1):
        x = end if step == steps else _geom(fig.value, end, step / steps)
        if winner_of(ev.standing({fig.path: x})) != winner:
            inside, outside = prev, x
            while not _close(inside, outside):
                mid = _geom(inside, outside, 0.5)
                if winner_of(ev.standing({fig.path: mid})) == winner:
                    inside = mid
                else:
                    outside = mid
            return Flip(_geom(inside, outside, 0.5), winner_of(ev.standing({fig.path: outside})))
        prev = x
    return None


def figure_sensitivity(ev: Evaluator, fig: FigureRange, winner: str) -> FigureResult:
    at_lo, at_hi = ev.standing({fig.path: fig.lo}), ev.standing({fig.path: fig.hi})
    nominal = ev.standing()
    if fig.fixed or (at_lo == nominal and at_hi == nominal):
        return FigureResult(fig, at_lo, at_hi, None, None)  # it prices nothing this point runs
    below = find_flip(ev, fig, fig.lo, winner) if fig.lo < fig.value else None
    above = find_flip(ev, fig, fig.hi, winner) if fig.hi > fig.value else None
    return FigureResult(fig, at_lo, at_hi, below, above)


def draw(ranges: Sequence[FigureRange], rng: np.random.Generator) -> dict[str, float]:
    """One joint draw: every uncertain figure log-uniform in its range (uniform if it reaches 0)."""
    out = {}
    for f in ranges:
        if f.fixed:
            continue
        u = rng.random()
        out[f.path] = _geom(f.lo, f.hi, u)
    return out


def point_sensitivity(configs: Sequence[PointSpec], uncertainty: Uncertainty | None = None,
                      samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED,
                      progress: Callable[[str], None] | None = None) -> PointSensitivity:
    """The sensitivity of the verdict at one workload point (`configs`: its policies' points).

    Raises NothingFits when no configuration fits in memory.
    """
    ev = Evaluator(configs)
    first = configs[0]
    group = dict(zip(GROUP_KEYS, group_key(first), strict=True))
    if not ev.configs:
        raise NothingFits(f"no policy fits at {point_label(group)}: {ev.infeasible[0][1].splitlines()[0]}")
    nominal = ev.standing()
    winner = winner_of(nominal)
    ranges = ev.ranges(uncertainty)
    results = []
    for fig in ranges:
        if progress:
            progress(f"figure {fig.path}")
        results.append(figure_sensitivity(ev, fig, winner))
    rng = np.random.default_rng(seed)
    drawn = []
    for i in range(samples):
        if progress and i % 8 == 0:
            progress(f"joint draws {i}/{samples}")
        drawn.append(ev.standing(draw(ranges, rng)))
    return PointSensitivity(group, nominal, results, drawn, seed,
                            [f"{p.policy.label}: {msg}" for p, msg in ev.infeasible])
