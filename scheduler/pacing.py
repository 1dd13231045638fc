"""Predictive pacing: how many calls a campaign should start now so agents stay busy and few calls drop.

The controller is pure and deterministic. A worker keeps one `Estimator` per campaign (persisted with
`to_dict`/`from_dict` between ticks, since workers are stateless), feeds it the call events it
observes, and on every tick asks `decide(settings, state, estimator.estimates(now))`.

Abandonment rate = abandoned / answered by a live person. That is the FTC Telemarketing Sales Rule
and FCC 47 CFR 64.1200 denominator ("3% of calls answered by a live person"), VICIdial's
`drops / answers` and Webitel's `abandoned / human-answered`; answering machines are not in it.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from typing import Any, Literal

# The window statistics live in fixed-width time buckets, so the persisted state is bounded and
# the window slides by whole buckets. Five minutes is fine enough for a 30-120 minute window.
BUCKET_SECONDS = 300
_DAY = 86_400
# The rolling-24 h ledger uses 10-minute buckets (144 of them), the 30-day one whole days.
_LEDGER_24H_BUCKET = 600
_LEDGER_30D_BUCKET = _DAY
# Webitel caps its over-dial factor only through the hard maximum; VICIdial's adaptive_maximum_level
# defaults to 3.0 and Cisco's maxLinesPerAgent is 1-3. Above 10 a campaign is a typo, not a choice.
MAX_DIAL_RATIO_LIMIT = 10.0
# Ring-time bins (seconds): fine where calls are answered, coarse out to the longest ring timeout
# any provider accepts (300 s, the core's ring_timeout_seconds limit).
RING_EDGES: tuple[float, ...] = (
    *(float(s) for s in range(0, 31)),
    35.0,
    40.0,
    45.0,
    50.0,
    60.0,
    75.0,
    90.0,
    120.0,
    180.0,
    300.0,
)
# Handle-time bins (talk + wrap-up, seconds), roughly geometric to two hours.
HANDLE_EDGES: tuple[float, ...] = (
    0.0,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    75.0,
    90.0,
    105.0,
    120.0,
    140.0,
    160.0,
    180.0,
    210.0,
    240.0,
    270.0,
    300.0,
    360.0,
    420.0,
    480.0,
    600.0,
    720.0,
    900.0,
    1200.0,
    1800.0,
    2700.0,
    3600.0,
    7200.0,
)
# Busy-agent elapsed times at which the free-in-time probability is tabulated (interpolated between):
# quarter steps of the handle bins, since the conditional probability moves fast near a bin's end.
FREE_GRID: tuple[float, ...] = (
    *(lo + (hi - lo) * k / 4 for lo, hi in pairwise(HANDLE_EDGES) for k in range(4)),
    HANDLE_EDGES[-1],
)
_FORMAT_VERSION = 1
# During warm-up the controller dials ahead for the free agents only (busy ones are assumed not to
# free up in time), at a cautious hit rate: (live answers + k) / (finished ring phases + k), as if k
# earlier attempts had all been answered. With nothing seen yet that is progressive; it converges to
# the observed hit rate as attempts finish. 0 would make warm-up plainly progressive.
WARM_UP_PRIOR_ATTEMPTS = 20
# The correction rises above 1 (dial harder because few calls dropped) only as far as the rolling-24 h
# answers are evidence for it: in full once they would have held this many drops at the aim, in
# proportion before. (Zero drops in 80 answers is what a 2% rate gives a fifth of the time.)
CORRECTION_CREDIBLE_DROPS = 10.0
# Elapsed-ring lookup table step: per-second answer probabilities up to the last ring edge.
_RING_TABLE_MAX = int(RING_EDGES[-1])


class PacingMode(StrEnum):
    AGENTLESS = "agentless"
    PROGRESSIVE = "progressive"
    PREDICTIVE = "predictive"


Reason = Literal[
    "agentless",
    "no_agents",
    "over_target_fallback_progressive",
    "emergency_cut",
    "warm_up",
    "progressive",
    "predictive",
    "max_ratio",
]


@dataclass(frozen=True)
class PacingSettings:
    """Per-campaign pacing settings; constructing impossible ones raises ValueError."""

    mode: PacingMode = PacingMode.PREDICTIVE
    # Hard limit on abandoned / live-answered calls, over the rolling 24 h and the rolling 30 days.
    max_abandon_rate: float = 0.03
    # The controller steers toward this share of the limit, leaving headroom for noise.
    abandon_aim_fraction: float = 0.7
    # Most calls per logged-in agent (ringing + waiting + with an agent), VICIdial's dial level cap.
    max_dial_ratio: float = 3.0
    # Live answers and finished calls the window must hold before the controller trusts its estimates,
    # and how far back its first observation must go: early on only short calls have ended, so the
    # handle-time estimate is biased short until several call lengths have passed.
    min_observations: int = 50
    warm_up_seconds: int = 600
    # An answered call not bridged to an agent within this many seconds is abandoned (US: 2 s).
    abandon_after_seconds: float = 2.0
    # Fixed after-call work added to each talk time when upstream does not report agent state.
    wrap_up_seconds: float = 0.0
    # Sliding window of the hit-rate, ring-time and handle-time estimates (Webitel: 60 min).
    window_seconds: int = 3600
    # Emergency cut: over the last this-many live answers, abandonment above emergency_abandon_rate
    # drops to progressive at once (VICIdial halves its level on a one-minute drop spike).
    emergency_window_answered: int = 100
    emergency_abandon_rate: float = 0.08
    # The next line is dialled while the chance that it is answered with no agent free for it stays
    # under risk = max_abandon_rate x base_risk_factor x correction; the correction is
    # exp(correction_gain x (aim - measured) / aim), clamped to [1/max_correction, max_correction].
    base_risk_factor: float = 2.0
    correction_gain: float = 2.0
    max_correction: float = 4.0

    def __post_init__(self) -> None:
        # Accept the mode's name as stored in a database column ("predictive").
        if not isinstance(self.mode, PacingMode) and self.mode in {m.value for m in PacingMode}:
            object.__setattr__(self, "mode", PacingMode(self.mode))
        self.validate()

    @property
    def abandon_aim(self) -> float:
        return self.max_abandon_rate * self.abandon_aim_fraction

    def validate(self) -> None:
        """Raise ValueError naming the first setting no campaign can mean."""
        if not isinstance(self.mode, PacingMode):
            raise ValueError(f"mode must be one of {[m.value for m in PacingMode]}, got {self.mode!r}")
        if not 0.0 < self.max_abandon_rate < 1.0:
            raise ValueError(
                f"max_abandon_rate must be between 0 and 1 (exclusive), got {self.max_abandon_rate}"
            )
        if not 0.0 < self.abandon_aim_fraction <= 1.0:
            raise ValueError(f"abandon_aim_fraction must be in (0, 1], got {self.abandon_aim_fraction}")
        if not 1.0 <= self.max_dial_ratio <= MAX_DIAL_RATIO_LIMIT:
            raise ValueError(
                f"max_dial_ratio must be between 1.0 (progressive) and {MAX_DIAL_RATIO_LIMIT}, "
                f"got {self.max_dial_ratio}"
            )
        if self.min_observations < 1:
            raise ValueError(f"min_observations must be at least 1, got {self.min_observations}")
        if not 0 <= self.warm_up_seconds <= self.window_seconds:
            raise ValueError(
                f"warm_up_seconds must be between 0 and window_seconds ({self.window_seconds}), "
                f"got {self.warm_up_seconds}"
            )
        if not 0.0 < self.abandon_after_seconds <= 60.0:
            raise ValueError(f"abandon_after_seconds must be in (0, 60], got {self.abandon_after_seconds}")
        if not 0.0 <= self.wrap_up_seconds <= 3600.0:
            raise ValueError(f"wrap_up_seconds must be in [0, 3600], got {self.wrap_up_seconds}")
        if self.window_seconds % BUCKET_SECONDS or not BUCKET_SECONDS <= self.window_seconds <= 4 * 3600:
            raise ValueError(
                f"window_seconds must be a multiple of {BUCKET_SECONDS} between {BUCKET_SECONDS} and "
                f"{4 * 3600}, got {self.window_seconds}"
            )
        if not 10 <= self.emergency_window_answered <= 1000:
            raise ValueError(
                f"emergency_window_answered must be between 10 and 1000, got {self.emergency_window_answered}"
            )
        if not self.max_abandon_rate < self.emergency_abandon_rate <= 1.0:
            raise ValueError(
                f"emergency_abandon_rate must be above max_abandon_rate ({self.max_abandon_rate}) and at "
                f"most 1, got {self.emergency_abandon_rate}"
            )
        if not 0.0 < self.base_risk_factor <= 10.0:
            raise ValueError(f"base_risk_factor must be in (0, 10], got {self.base_risk_factor}")
        if not 0.0 <= self.correction_gain <= 10.0:
            raise ValueError(f"correction_gain must be in [0, 10], got {self.correction_gain}")
        if not 1.0 <= self.max_correction <= 100.0:
            raise ValueError(f"max_correction must be in [1, 100], got {self.max_correction}")


@dataclass(frozen=True)
class AgentState:
    """What the campaign's agents and lines are doing at this instant.

    Paused or logged-out agents are simply not reported; logged-in = free + busy.
    """

    agents_free: int
    # Per busy agent (talking or in wrap-up), seconds since it took its current call.
    busy_elapsed_seconds: Sequence[float] = ()
    # Per call still ringing (started, not answered, not given up), seconds since it was started.
    ringing_elapsed_seconds: Sequence[float] = ()
    # Calls answered by a person and waiting for an agent (not yet bridged, not yet abandoned).
    answered_waiting: int = 0
    # Per agent whose call has ended and who is in wrap-up: seconds until the known release (call end
    # + wrap-up). None: the caller cannot tell wrap-up from talk, and busy_elapsed_seconds holds every
    # busy agent. A sequence (even empty): busy_elapsed_seconds holds only the agents still talking.
    wrap_up_remaining_seconds: Sequence[float] | None = None

    def __post_init__(self) -> None:
        if self.agents_free < 0 or self.answered_waiting < 0:
            raise ValueError("agents_free and answered_waiting must not be negative")

    @property
    def agents_in_wrap_up(self) -> int:
        return len(self.wrap_up_remaining_seconds or ())

    @property
    def agents_busy(self) -> int:
        return len(self.busy_elapsed_seconds) + self.agents_in_wrap_up

    @property
    def agents_logged_in(self) -> int:
        return self.agents_free + self.agents_busy


@dataclass(frozen=True)
class Decision:
    """What to do this tick.

    new_attempts: calls to start now (None in agentless mode: the campaign's caps govern alone).
    target_lines: outstanding unanswered lines (ringing + new) the controller wants after dialing.
    dial_ratio: (busy agents + waiting + ringing + new) / logged-in agents, VICIdial's dial level;
      1.0 is progressive.
    """

    new_attempts: int | None
    target_lines: int | None
    dial_ratio: float
    reason: Reason
    hit_rate: float
    expected_free_agents: float
    expected_answers: float
    correction: float


class _Histogram:
    """Counts over fixed bins, plus an overflow bin past the last edge."""

    __slots__ = ("counts", "edges")

    def __init__(self, edges: tuple[float, ...]) -> None:
        self.edges = edges
        self.counts = [0] * len(edges)

    def add(self, value: float) -> None:
        # counts[i] covers [edges[i], edges[i+1]); the last slot is the overflow.
        self.counts[max(0, bisect_right(self.edges, value) - 1)] += 1

    def merge(self, other: _Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]

    @property
    def total(self) -> int:
        return sum(self.counts)


class _Cdf:
    """Piecewise-linear distribution function of a histogram (uniform within each bin)."""

    __slots__ = ("_cum", "_edges", "mean", "support", "total")

    def __init__(self, hist: _Histogram, weights: Sequence[float] | None = None) -> None:
        """weights, if given, replace the histogram's counts (same bins; they may be fractional)."""
        edges = hist.edges
        counts = hist.counts if weights is None else weights
        # The overflow bin is given the width of the last regular bin.
        self._edges = (*edges, edges[-1] + (edges[-1] - edges[-2]))
        self.total = hist.total
        cum = [0.0]
        weighted = 0.0
        for i, count in enumerate(counts):
            cum.append(cum[-1] + count)
            weighted += count * (self._edges[i] + self._edges[i + 1]) / 2
        mass = cum[-1]
        self._cum = [c / mass for c in cum] if self.total and mass else [0.0] * len(cum)
        self.mean = weighted / mass if self.total and mass else 0.0
        # First whole second at or past the top of the highest non-empty bin.
        top = max((i + 1 for i, count in enumerate(counts) if count), default=0)
        self.support = math.ceil(self._edges[top]) if top else 0

    def __call__(self, x: float) -> float:
        edges = self._edges
        if x <= edges[0]:
            return 0.0
        if x >= edges[-1]:
            return 1.0
        i = bisect_right(edges, x) - 1
        frac = (x - edges[i]) / (edges[i + 1] - edges[i])
        return self._cum[i] + frac * (self._cum[i + 1] - self._cum[i])

    def at_integers(self, upto: int) -> list[float]:
        """The function at 0, 1, ..., upto in one sweep (what a bisect per point would cost 5x)."""
        edges, cum = self._edges, self._cum
        out = []
        i = 0
        last = len(edges) - 1
        for x in range(upto + 1):
            while i < last and edges[i + 1] <= x:
                i += 1
            if i >= last:
                out.append(1.0 if self.total else 0.0)
            else:
                frac = (x - edges[i]) / (edges[i + 1] - edges[i])
                out.append(cum[i] + frac * (cum[i + 1] - cum[i]))
        return out

    def quantile(self, q: float) -> float:
        """Inverse of the function (the lower edge of an empty stretch)."""
        cum, edges = self._cum, self._edges
        i = max(0, min(len(cum) - 2, bisect_right(cum, q) - 1))
        while i + 1 < len(cum) - 1 and cum[i + 1] <= q:
            i += 1
        span = cum[i + 1] - cum[i]
        frac = (q - cum[i]) / span if span > 0 else 0.0
        return edges[i] + frac * (edges[i + 1] - edges[i])


@dataclass
class _Bucket:
    attempts: int = 0
    answered: int = 0
    not_answered: int = 0
    bridged: int = 0
    abandoned: int = 0
    wait_total: float = 0.0
    ring_answered: _Histogram = field(default_factory=lambda: _Histogram(RING_EDGES))
    ring_unanswered: _Histogram = field(default_factory=lambda: _Histogram(RING_EDGES))
    handle: _Histogram = field(default_factory=lambda: _Histogram(HANDLE_EDGES))
    # Handled calls that reported their wrap-up, and its sum. Separate from handle.total so that a
    # state saved before wrap-up was recorded reads as "wrap-up unknown", not as "no wrap-up".
    wrapped: int = 0
    wrap_total: float = 0.0

    _COUNTERS = ("attempts", "answered", "not_answered", "bridged", "abandoned")

    def to_json(self) -> dict[str, Any]:
        return {
            **{name: getattr(self, name) for name in self._COUNTERS},
            "wait_total": round(self.wait_total, 3),
            "wrapped": self.wrapped,
            "wrap_total": round(self.wrap_total, 3),
            "ring_answered": _sparse(self.ring_answered.counts),
            "ring_unanswered": _sparse(self.ring_unanswered.counts),
            "handle": _sparse(self.handle.counts),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Bucket:
        bucket = cls()
        for name in cls._COUNTERS:
            setattr(bucket, name, _count(data[name]))
        bucket.wait_total = float(data["wait_total"])
        bucket.wrapped = _count(data.get("wrapped", 0))
        bucket.wrap_total = float(data.get("wrap_total", 0.0))
        _unsparse(bucket.ring_answered, data["ring_answered"])
        _unsparse(bucket.ring_unanswered, data["ring_unanswered"])
        _unsparse(bucket.handle, data["handle"])
        return bucket


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"a count must be a non-negative integer, got {value!r}")
    return value


def _sparse(counts: list[int]) -> list[list[int]]:
    return [[i, c] for i, c in enumerate(counts) if c]


def _unsparse(hist: _Histogram, pairs: Any) -> None:
    for i, c in pairs:
        if not 0 <= i < len(hist.counts):
            raise ValueError(f"histogram bin {i} out of range")
        hist.counts[i] = _count(c)


class _Ledger:
    """Live answers and abandons in rolling buckets of one width, over a bounded horizon."""

    __slots__ = ("buckets", "horizon", "width")

    def __init__(self, width: int, horizon: int) -> None:
        self.width = width
        self.horizon = horizon
        # bucket index (time // width) -> [answered, abandoned]
        self.buckets: dict[int, list[int]] = {}

    def add(self, now: float, answered: int, abandoned: int) -> None:
        index = int(now // self.width)
        slot = self.buckets.get(index)
        if slot is None:
            slot = self.buckets[index] = [0, 0]
            newest = max(self.buckets)
            oldest = newest - self.horizon // self.width + 1
            self.buckets = {k: v for k, v in self.buckets.items() if k >= oldest}
            slot = self.buckets.get(index, [0, 0])
        slot[0] += answered
        slot[1] += abandoned

    def totals(self, now: float) -> tuple[int, int]:
        oldest = int(now // self.width) - self.horizon // self.width + 1
        answered = abandoned = 0
        for index, (ans, aba) in self.buckets.items():
            if index >= oldest:
                answered += ans
                abandoned += aba
        return answered, abandoned

    def to_json(self) -> list[list[int]]:
        return [[k, a, b] for k, (a, b) in sorted(self.buckets.items())]

    def load(self, rows: Any) -> None:
        self.buckets = {int(k): [_count(a), _count(b)] for k, a, b in rows}


@dataclass(frozen=True)
class Estimates:
    """A snapshot of everything the controller knows, computed by `Estimator.estimates(now)`."""

    answered_in_window: int
    not_answered_in_window: int
    handled_in_window: int
    attempts_in_window: int
    # Seconds from the start of the oldest bucket in the window that holds any event, to now.
    window_span_seconds: float
    # answered / (answered + not answered) over the window's finished ring phases.
    hit_rate: float
    mean_ring_answered_seconds: float
    mean_handle_seconds: float
    mean_wait_seconds: float
    abandoned_in_window: int
    answered_24h: int
    abandoned_24h: int
    answered_30d: int
    abandoned_30d: int
    answered_lifetime: int
    abandoned_lifetime: int
    # Outcomes of the most recent live answers, oldest first: True = abandoned.
    recent_abandoned: tuple[bool, ...]
    # answer_by_elapsed[s]: probability that a call still ringing after s seconds is answered by a person.
    answer_by_elapsed: tuple[float, ...]
    # Busy-agent elapsed grid (FREE_GRID) and, per point, the probability that the agent is
    # free by the time a call dialled now would be answered.
    free_grid: tuple[float, ...]
    free_by_elapsed: tuple[float, ...]
    # Mean wrap-up of the window's handled calls: an agent still talking is busy at least this long.
    mean_wrap_up_seconds: float = 0.0
    # Equal-probability points of the answered ring time: when a call dialled now would be answered.
    answer_delays: tuple[float, ...] = ()
    # Per FREE_GRID point and per answer delay: the probability that an agent still talking after
    # that many seconds is free (talk ended and wrap-up done) by that delay + abandon grace.
    talking_free_by_elapsed: tuple[tuple[float, ...], ...] = ()

    @staticmethod
    def _rate(abandoned: int, answered: int) -> float:
        return abandoned / answered if answered else 0.0

    @property
    def abandon_rate_window(self) -> float:
        return self._rate(self.abandoned_in_window, self.answered_in_window)

    @property
    def abandon_rate_24h(self) -> float:
        return self._rate(self.abandoned_24h, self.answered_24h)

    @property
    def abandon_rate_30d(self) -> float:
        return self._rate(self.abandoned_30d, self.answered_30d)

    @property
    def abandon_rate_lifetime(self) -> float:
        return self._rate(self.abandoned_lifetime, self.answered_lifetime)

    @property
    def abandon_rate_recent(self) -> float:
        n = len(self.recent_abandoned)
        return sum(self.recent_abandoned) / n if n else 0.0

    def answer_probability(self, ringing_elapsed: float) -> float:
        table = self.answer_by_elapsed
        if ringing_elapsed <= 0.0:
            return table[0]
        i = int(ringing_elapsed)
        if i + 1 >= len(table):
            return table[-1]
        frac = ringing_elapsed - i
        return table[i] + frac * (table[i + 1] - table[i])

    def free_probability(self, busy_elapsed: float) -> float:
        grid = self.free_grid
        if busy_elapsed <= 0.0:
            return self.free_by_elapsed[0]
        if busy_elapsed >= grid[-1]:
            return self.free_by_elapsed[-1]
        i = bisect_right(grid, busy_elapsed) - 1
        frac = (busy_elapsed - grid[i]) / (grid[i + 1] - grid[i])
        return self.free_by_elapsed[i] + frac * (self.free_by_elapsed[i + 1] - self.free_by_elapsed[i])

    def talking_free_probabilities(self, talk_elapsed: float) -> tuple[float, ...]:
        """Per answer delay, the chance an agent talking for talk_elapsed s is free by it + grace."""
        grid, table = self.free_grid, self.talking_free_by_elapsed
        if talk_elapsed <= 0.0:
            return table[0]
        if talk_elapsed >= grid[-1]:
            return table[-1]
        i = bisect_right(grid, talk_elapsed) - 1
        frac = (talk_elapsed - grid[i]) / (grid[i + 1] - grid[i])
        return tuple(a + frac * (b - a) for a, b in zip(table[i], table[i + 1], strict=True))


class Estimator:
    """Online, bounded, serializable statistics of one campaign's calls.

    Feed it every event with the time it happened (seconds since the epoch, the same clock for
    every worker), in time order. Its state is a few kilobytes of JSON whatever the call volume.
    """

    def __init__(self, settings: PacingSettings) -> None:
        self.settings = settings
        self._buckets: dict[int, _Bucket] = {}
        self._ledger_24h = _Ledger(_LEDGER_24H_BUCKET, _DAY)
        self._ledger_30d = _Ledger(_LEDGER_30D_BUCKET, 30 * _DAY)
        self._answered_lifetime = 0
        self._abandoned_lifetime = 0
        # Outcome of each recent live answer, oldest first: "1" abandoned, "0" bridged.
        self._recent = ""

    def _bucket(self, now: float) -> _Bucket:
        index = int(now // BUCKET_SECONDS)
        bucket = self._buckets.get(index)
        if bucket is None:
            # A late event from before the window lands in a bucket that is dropped at once.
            bucket = self._buckets[index] = _Bucket()
            oldest = max(self._buckets) - self.settings.window_seconds // BUCKET_SECONDS
            for stale in [k for k in self._buckets if k < oldest]:
                del self._buckets[stale]
        return bucket

    def attempt_started(self, now: float) -> None:
        self._bucket(now).attempts += 1

    def answered(self, now: float, ring_seconds: float) -> None:
        """A live person answered after ring_seconds (answering machines go to not_answered)."""
        bucket = self._bucket(now)
        bucket.answered += 1
        bucket.ring_answered.add(ring_seconds)
        self._ledger_24h.add(now, 1, 0)
        self._ledger_30d.add(now, 1, 0)
        self._answered_lifetime += 1

    def not_answered(self, now: float, ring_seconds: float) -> None:
        """The attempt ended without a live person after ring_seconds (no answer, busy, machine, failure)."""
        bucket = self._bucket(now)
        bucket.not_answered += 1
        bucket.ring_unanswered.add(ring_seconds)

    def bridged(self, now: float, wait_seconds: float) -> None:
        """An answered call reached an agent after waiting wait_seconds."""
        bucket = self._bucket(now)
        bucket.bridged += 1
        bucket.wait_total += wait_seconds
        self._push_recent("0")

    def abandoned(self, now: float) -> None:
        """An answered call found no agent within abandon_after_seconds."""
        self._bucket(now).abandoned += 1
        self._ledger_24h.add(now, 0, 1)
        self._ledger_30d.add(now, 0, 1)
        self._abandoned_lifetime += 1
        self._push_recent("1")

    def handled(self, now: float, talk_seconds: float, wrap_up_seconds: float = 0.0) -> None:
        """An agent is free again after talk_seconds of talk and wrap_up_seconds of after-call work."""
        bucket = self._bucket(now)
        bucket.handle.add(talk_seconds + wrap_up_seconds)
        bucket.wrapped += 1
        bucket.wrap_total += wrap_up_seconds

    def _push_recent(self, outcome: str) -> None:
        self._recent = (self._recent + outcome)[-self.settings.emergency_window_answered :]

    def estimates(self, now: float, in_progress: Sequence[float] = ()) -> Estimates:
        """The window's statistics at `now`.

        in_progress: elapsed handle times of the calls agents are on now (AgentState's
        busy_elapsed_seconds). They are right-censored handle times: without them the handle-time
        distribution is biased short while the window is young (only short calls have ended yet).
        """
        oldest = int(now // BUCKET_SECONDS) - self.settings.window_seconds // BUCKET_SECONDS
        window = _Bucket()
        first = min((index for index in self._buckets if index >= oldest), default=None)
        for index, bucket in self._buckets.items():
            if index >= oldest:
                for name in _Bucket._COUNTERS:
                    setattr(window, name, getattr(window, name) + getattr(bucket, name))
                window.wait_total += bucket.wait_total
                window.wrapped += bucket.wrapped
                window.wrap_total += bucket.wrap_total
                window.ring_answered.merge(bucket.ring_answered)
                window.ring_unanswered.merge(bucket.ring_unanswered)
                window.handle.merge(bucket.handle)
        resolved = window.answered + window.not_answered
        hit_rate = window.answered / resolved if resolved else 0.0
        ring_a = _Cdf(window.ring_answered)
        ring_u = _Cdf(window.ring_unanswered)
        handle = _Cdf(window.handle, _censored_masses(window.handle, in_progress))
        answer_table = _answer_table(hit_rate, ring_a, ring_u)
        grace = self.settings.abandon_after_seconds
        free_table = _free_table(ring_a, handle, grace)
        wrap = window.wrap_total / window.wrapped if window.wrapped else 0.0
        delays = _answer_delays(ring_a)
        answered_24h, abandoned_24h = self._ledger_24h.totals(now)
        answered_30d, abandoned_30d = self._ledger_30d.totals(now)
        return Estimates(
            answered_in_window=window.answered,
            not_answered_in_window=window.not_answered,
            handled_in_window=window.handle.total,
            attempts_in_window=window.attempts,
            window_span_seconds=0.0 if first is None else max(0.0, now - first * BUCKET_SECONDS),
            hit_rate=hit_rate,
            mean_ring_answered_seconds=ring_a.mean,
            mean_handle_seconds=handle.mean,
            mean_wait_seconds=window.wait_total / window.bridged if window.bridged else 0.0,
            abandoned_in_window=window.abandoned,
            answered_24h=answered_24h,
            abandoned_24h=abandoned_24h,
            answered_30d=answered_30d,
            abandoned_30d=abandoned_30d,
            answered_lifetime=self._answered_lifetime,
            abandoned_lifetime=self._abandoned_lifetime,
            recent_abandoned=tuple(c == "1" for c in self._recent),
            answer_by_elapsed=answer_table,
            free_grid=FREE_GRID,
            free_by_elapsed=free_table,
            mean_wrap_up_seconds=wrap,
            answer_delays=delays,
            talking_free_by_elapsed=_talking_free_table(delays, handle, grace, wrap),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state, bounded: at most window/300 + 1 buckets, 144 + 30 ledger rows."""
        return {
            "v": _FORMAT_VERSION,
            "bucket_seconds": BUCKET_SECONDS,
            "buckets": {str(k): b.to_json() for k, b in sorted(self._buckets.items())},
            "ledger_24h": self._ledger_24h.to_json(),
            "ledger_30d": self._ledger_30d.to_json(),
            "lifetime": [self._answered_lifetime, self._abandoned_lifetime],
            "recent": self._recent,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], settings: PacingSettings) -> Estimator:
        """Restore `to_dict` output; raises ValueError for anything it did not write."""
        if not isinstance(data, dict) or data.get("v") != _FORMAT_VERSION:
            raise ValueError(f"not a pacing estimator state of version {_FORMAT_VERSION}")
        est = cls(settings)
        try:
            if data["bucket_seconds"] == BUCKET_SECONDS:
                est._buckets = {int(k): _Bucket.from_json(v) for k, v in data["buckets"].items()}
            est._ledger_24h.load(data["ledger_24h"])
            est._ledger_30d.load(data["ledger_30d"])
            est._answered_lifetime, est._abandoned_lifetime = (_count(n) for n in data["lifetime"])
            recent = data["recent"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed pacing estimator state: {exc!r}") from exc
        if not isinstance(recent, str) or set(recent) - {"0", "1"}:
            raise ValueError("malformed pacing estimator state: recent must be a string of 0/1")
        est._recent = recent[-settings.emergency_window_answered :]
        return est


def _censored_masses(hist: _Histogram, in_progress: Sequence[float]) -> list[float] | None:
    """Per-bin masses of the handle-time distribution with calls in progress as censored (life table).

    Actuarial estimator: a call in progress with elapsed time in bin i is at risk through the bins
    before i and half of bin i. Survival left past the longest call seen (ended or in progress) is
    put in the bin after it: nothing says how much longer those calls will last. None when there is
    nothing to correct. Masses sum to the histogram's total.
    """
    total = hist.total
    if not in_progress or not total:
        return None
    edges = hist.edges
    censored = [0] * len(hist.counts)
    for elapsed in in_progress:
        censored[max(0, bisect_right(edges, elapsed) - 1)] += 1
    at_risk = float(total + len(in_progress))
    survival = 1.0
    masses = []
    for ended, cut in zip(hist.counts, censored, strict=True):
        exposed = at_risk - cut / 2
        hazard = ended / exposed if exposed > 0 else 0.0
        masses.append(survival * hazard)
        survival *= 1.0 - hazard
        at_risk -= ended + cut
    if survival > 1e-12:
        top = max(i for i, n in enumerate(map(sum, zip(hist.counts, censored, strict=True))) if n)
        masses[min(top + 1, len(masses) - 1)] += survival
    return [m * total for m in masses]


def _answer_table(hit_rate: float, ring_a: _Cdf, ring_u: _Cdf) -> tuple[float, ...]:
    """P(a live answer eventually | still ringing after s seconds), s = 0.._RING_TABLE_MAX (Bayes)."""
    # Past the longest ring seen, both functions are 1 and the probability is 0: stop there.
    upto = min(_RING_TABLE_MAX, max(ring_a.support, ring_u.support, 1))
    cdf_a = ring_a.at_integers(upto)
    cdf_u = ring_u.at_integers(upto)
    table = []
    for fa, fu in zip(cdf_a, cdf_u, strict=True):
        alive_answered = hit_rate * (1.0 - fa)
        alive_unanswered = (1.0 - hit_rate) * (1.0 - fu)
        alive = alive_answered + alive_unanswered
        table.append(alive_answered / alive if alive > 1e-12 else 0.0)
    return tuple(table)


# The answered ring time enters the free-agent table as this many equal-probability points.
_RING_POINTS = 8


def _free_table(ring_a: _Cdf, handle: _Cdf, grace: float) -> tuple[float, ...]:
    """Per elapsed handle time x on FREE_GRID: P(remaining handle <= T + grace), T ~ answered ring time.

    That is the chance a busy agent is free in time for a call dialled now: by its answer, or within
    the grace (abandon_after_seconds) an answered call may wait before it counts as abandoned.
    """
    if not handle.total:
        return tuple(0.0 for _ in FREE_GRID)
    if ring_a.total:
        points = [grace + ring_a.quantile((k + 0.5) / _RING_POINTS) for k in range(_RING_POINTS)]
    else:
        points = [grace + 10.0]
    mean_handle = max(handle.mean, 1.0)
    table = []
    for x in FREE_GRID:
        at_x = handle(x)
        survive = 1.0 - at_x
        if survive > 1e-3:
            total = sum(handle(x + t) - at_x for t in points) / survive
        else:
            # Past nearly every observed call: assume a memoryless remainder of a typical length.
            total = sum(1.0 - math.exp(-t / mean_handle) for t in points)
        table.append(min(1.0, max(0.0, total / len(points))))
    return tuple(table)


def _answer_delays(ring_a: _Cdf) -> tuple[float, ...]:
    """When a call dialled now would be answered: _RING_POINTS equal-probability ring times."""
    if not ring_a.total:
        return (10.0,)
    return tuple(ring_a.quantile((k + 0.5) / _RING_POINTS) for k in range(_RING_POINTS))


def _talking_free_table(
    delays: Sequence[float], handle: _Cdf, grace: float, wrap: float
) -> tuple[tuple[float, ...], ...]:
    """Per elapsed talk time x on FREE_GRID and answer delay t: P(free by t + grace | still talking).

    Still talking after x means a handle time (talk + wrap-up) above x + wrap, and the agent is free
    once talk and wrap-up are both over: within a horizon shorter than the wrap-up, never.
    """
    if not handle.total:
        return tuple(tuple(0.0 for _ in delays) for _ in FREE_GRID)
    mean_talk = max(handle.mean - wrap, 1.0)
    table = []
    for x in FREE_GRID:
        floor = handle(x + wrap)
        survive = 1.0 - floor
        row = []
        for t in delays:
            horizon = t + grace
            if horizon <= wrap:
                row.append(0.0)
            elif survive > 1e-3:
                row.append(min(1.0, max(0.0, (handle(x + horizon) - floor) / survive)))
            else:
                # Past nearly every observed call: assume a memoryless remainder of a typical talk.
                row.append(1.0 - math.exp(-(horizon - wrap) / mean_talk))
        table.append(tuple(row))
    return tuple(table)


def _correction(settings: PacingSettings, est: Estimates) -> float:
    """Multiplier on the accepted per-line risk, from measured abandonment vs the aim.

    1 at the aim, larger below it, smaller above it (exponential in the relative error, so equal
    relative errors move it by equal factors). The window rate is smoothed toward the aim by a prior
    worth min_observations answers, so a handful of calls cannot swing it, and it may rise above 1
    only in proportion to the rolling-24 h evidence (CORRECTION_CREDIBLE_DROPS). As the rolling-24 h rate
    climbs from the aim to the hard maximum, the multiplier tapers linearly to 0 (progressive), the
    way Webitel's over-dial tapers as abandonment nears its maximum.
    """
    aim = settings.abandon_aim
    prior = settings.min_observations
    measured = (est.abandoned_in_window + prior * aim) / (est.answered_in_window + prior)
    exponent = settings.correction_gain * (aim - measured) / aim
    limit = math.log(settings.max_correction)
    upper = limit * min(1.0, est.answered_24h * aim / CORRECTION_CREDIBLE_DROPS)
    correction = math.exp(min(upper, max(-limit, exponent)))
    rate_24h = est.abandon_rate_24h
    if rate_24h > aim:
        correction *= max(0.0, (settings.max_abandon_rate - rate_24h) / (settings.max_abandon_rate - aim))
    return correction


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _lines_within_risk(scenarios: Sequence[tuple[float, float, float]], risk: float, ceiling: int) -> int:
    """The most new lines such that each one, if answered, finds an agent with probability >= 1 - risk.

    With D = agents free in time - other answers (normal approximation: per scenario a mean and a
    variance before any new line; each new line adds hit_rate to the answers and
    hit_rate(1 - hit_rate) to the variance), line m + 1 is abandoned if answered when D <= 0 after m
    new lines. Scenarios are equally likely (the answer delays), and the risk is their average.
    """

    def scenario_risk(mean: float, var: float, hit_rate: float, m: int) -> float:
        d_mean = mean - m * hit_rate
        d_var = var + m * hit_rate * (1.0 - hit_rate)
        if d_var <= 1e-12:
            return 0.0 if d_mean >= 0.5 else 1.0
        # Continuity correction: D is an integer, "D <= 0" is "D < 0.5".
        return _normal_cdf((0.5 - d_mean) / math.sqrt(d_var))

    def line_risk(m: int) -> float:
        return sum(scenario_risk(mean, var, hit, m) for mean, var, hit in scenarios) / len(scenarios)

    lo, hi = 0, ceiling
    if risk <= 0.0 or line_risk(0) > risk:
        return 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if line_risk(mid - 1) <= risk:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _warm_up(
    settings: PacingSettings,
    state: AgentState,
    est: Estimates,
    progressive: int,
    result: Callable[..., Decision],
) -> Decision:
    """Before the estimates are trusted: over-dial for the free agents only, at a cautious hit rate.

    Handle times are not known yet, so no busy agent is counted as freeing up; the only risk taken
    is that more lines answer than there are free agents, from the hit rate shrunk toward 1 (one
    line per free agent) by a prior of WARM_UP_PRIOR_ATTEMPTS answered attempts.
    """
    prior = WARM_UP_PRIOR_ATTEMPTS
    agents = state.agents_logged_in
    busy = state.agents_busy
    outstanding = len(state.ringing_elapsed_seconds) + state.answered_waiting
    ceiling = max(0, math.floor(settings.max_dial_ratio * agents + 1e-9) - busy - outstanding)
    if not prior or state.agents_free == 0:
        return result(progressive, "warm_up")
    resolved = est.answered_in_window + est.not_answered_in_window
    hit = (est.answered_in_window + prior) / (resolved + prior)
    ringing = len(state.ringing_elapsed_seconds)
    answers_mean = state.answered_waiting + ringing * hit
    answers_var = ringing * hit * (1.0 - hit)
    risk = min(0.5, settings.max_abandon_rate * settings.base_risk_factor)
    wanted = _lines_within_risk([(state.agents_free - answers_mean, answers_var, hit)], risk, ceiling + 1)
    new = min(max(progressive, wanted), max(progressive, ceiling))
    return result(new, "warm_up", float(state.agents_free), answers_mean, 1.0)


def _free_in_time(state: AgentState, est: Estimates, grace: float) -> list[tuple[float, float]]:
    """Agents free in time for a call dialled now, as (mean, variance) per answer-delay scenario.

    When the caller tells wrap-up from talk, the delay until the new call is answered is a scenario
    (one per answer delay) rather than averaged into each agent: an agent in wrap-up is then free
    in time or not for certain, and one still talking must finish its talk and its whole wrap-up
    within the delay + grace, which for delays shorter than the wrap-up it cannot. Otherwise every
    busy agent's chance is averaged over the delay (one scenario), as elapsed handle time allows.
    """
    if state.wrap_up_remaining_seconds is None or not est.answer_delays:
        mean = float(state.agents_free)
        var = 0.0
        for elapsed in state.busy_elapsed_seconds:
            g = est.free_probability(elapsed)
            mean += g
            var += g * (1.0 - g)
        return [(mean, var)]
    wrap_up = state.wrap_up_remaining_seconds
    delays = est.answer_delays
    means = [float(state.agents_free)] * len(delays)
    variances = [0.0] * len(delays)
    for remaining in wrap_up:
        for k, t in enumerate(delays):
            if remaining <= t + grace:
                means[k] += 1.0
    for elapsed in state.busy_elapsed_seconds:
        for k, g in enumerate(est.talking_free_probabilities(elapsed)):
            means[k] += g
            variances[k] += g * (1.0 - g)
    return list(zip(means, variances, strict=True))


def decide(settings: PacingSettings, state: AgentState, est: Estimates) -> Decision:
    """How many calls to start now. Pure: the same inputs always give the same decision."""
    agents = state.agents_logged_in
    busy = state.agents_busy
    ringing = len(state.ringing_elapsed_seconds)
    outstanding = ringing + state.answered_waiting

    def result(
        new: int | None, reason: Reason, free: float = 0.0, answers: float = 0.0, corr: float = 0.0
    ) -> Decision:
        lines = busy + outstanding + (new or 0)
        return Decision(
            new_attempts=new,
            target_lines=None if new is None else ringing + new,
            dial_ratio=lines / agents if agents else 0.0,
            reason=reason,
            hit_rate=est.hit_rate,
            expected_free_agents=free,
            expected_answers=answers,
            correction=corr,
        )

    if settings.mode is PacingMode.AGENTLESS:
        return result(None, "agentless")
    if agents == 0:
        return result(0, "no_agents")
    progressive = max(0, state.agents_free - outstanding)
    if settings.mode is PacingMode.PROGRESSIVE:
        return result(progressive, "progressive")
    limit = settings.max_abandon_rate
    if est.abandon_rate_24h > limit or est.abandon_rate_30d > limit:
        return result(progressive, "over_target_fallback_progressive")
    recent = est.recent_abandoned
    # A handful of answers is not a spike: judge only once a fifth of the window is in.
    if (
        len(recent) * 5 >= settings.emergency_window_answered
        and est.abandon_rate_recent > settings.emergency_abandon_rate
    ):
        return result(progressive, "emergency_cut")
    if (
        est.answered_in_window < settings.min_observations
        or est.handled_in_window < settings.min_observations
        or est.window_span_seconds < settings.warm_up_seconds
    ):
        return _warm_up(settings, state, est, progressive, result)

    # Agents free in time for a call dialled now, and live answers still to come from lines already
    # out: sums of independent Bernoulli variables, carried as mean and variance.
    free = _free_in_time(state, est, settings.abandon_after_seconds)
    free_mean = sum(mean for mean, _ in free) / len(free)
    answers_mean = float(state.answered_waiting)
    answers_var = 0.0
    for elapsed in state.ringing_elapsed_seconds:
        q = est.answer_probability(elapsed)
        answers_mean += q
        answers_var += q * (1.0 - q)
    corr = _correction(settings, est)
    risk = min(0.5, limit * settings.base_risk_factor * corr)
    ceiling = max(0, math.floor(settings.max_dial_ratio * agents + 1e-9) - busy - outstanding)
    hit_rate = max(est.hit_rate, 0.01)
    scenarios = [(mean - answers_mean, var + answers_var, hit_rate) for mean, var in free]
    wanted = _lines_within_risk(scenarios, risk, ceiling + 1)
    new = max(progressive, wanted)
    if new > ceiling:
        return result(max(progressive, ceiling), "max_ratio", free_mean, answers_mean, corr)
    return result(new, "predictive", free_mean, answers_mean, corr)


def pace(settings: PacingSettings, state: AgentState, estimator: Estimator, now: float) -> Decision:
    """decide() on a fresh snapshot of the estimator at `now`."""
    return decide(settings, state, estimator.estimates(now, state.busy_elapsed_seconds))
