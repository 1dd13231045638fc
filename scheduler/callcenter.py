"""A discrete-event outbound contact center that drives the real pacing controller.

Deterministic for a seed. The controller sees only what a dialer can observe: events as they happen
(attempt started, answered after some ring time, not answered, bridged, abandoned, agent free again
after some handle time) and the instantaneous agent and line state with elapsed times. It never
sees the true answer probability, nor how long a busy agent's call will last.

Occupancy = (talk + wrap-up) time / logged-in time: wrap-up counts as occupied, the contact-center
standard. All agents are logged in for the whole run.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

from scheduler.pacing import AgentState, Estimator, PacingSettings, decide

_RING_END, _ABANDON_CHECK, _HANDLE_END = 0, 1, 2
# Running abandonment is only judged once this many live answers are in: before that one drop is
# several percent, and a real campaign is still in warm-up (progressive) anyway.
_PEAK_MIN_ANSWERED = 100


@dataclass(frozen=True)
class CallCenterConfig:
    """One simulated shift. Distributions are lognormal unless stated."""

    agents: int = 20
    answer_rate: float = 0.30
    hours: float = 1.0
    seed: int = 1
    # Unanswered calls ring to the timeout (the US minimum is 15 s / 4 rings) unless they fail fast.
    ring_timeout_seconds: float = 25.0
    answer_median_seconds: float = 8.0
    answer_sigma: float = 0.5
    # Share of unanswered attempts that end quickly (busy, invalid, rejected), uniform in 1..6 s.
    fast_fail_share: float = 0.25
    talk_mean_seconds: float = 120.0
    talk_sigma: float = 0.8
    wrap_up_seconds: float = 10.0
    tick_seconds: float = 1.0
    # How often the estimator snapshot is refreshed (a worker would refresh it every tick; the
    # difference is invisible at these volumes and it keeps the simulator fast).
    estimate_every_seconds: float = 5.0
    start_time: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z

    def __post_init__(self) -> None:
        if self.agents < 0:
            raise ValueError(f"agents must not be negative, got {self.agents}")
        if not 0.0 < self.answer_rate <= 1.0:
            raise ValueError(f"answer_rate must be in (0, 1], got {self.answer_rate}")
        if self.hours <= 0 or self.tick_seconds <= 0 or self.estimate_every_seconds <= 0:
            raise ValueError("hours, tick_seconds and estimate_every_seconds must be positive")
        if self.ring_timeout_seconds <= 6.0:
            raise ValueError(f"ring_timeout_seconds must exceed 6, got {self.ring_timeout_seconds}")


@dataclass(frozen=True)
class SimResult:
    agents: int
    answer_rate: float
    mode: str
    hours: float
    dials: int
    answered: int
    bridged: int
    abandoned: int
    # (talk + wrap-up) / logged-in time, over the whole run including warm-up.
    occupancy: float
    # abandoned / live-answered over the run (a rolling-24 h figure: runs are shorter than a day).
    abandon_rate: float
    # Highest running abandonment rate at any moment after the first 100 live answers.
    peak_abandon_rate: float
    calls_per_agent_hour: float
    mean_wait_seconds: float
    # Ticks spent under each decision reason.
    reasons: dict[str, int] = field(default_factory=dict)


def simulate(config: CallCenterConfig, settings: PacingSettings) -> SimResult:
    """Run one shift with the controller in settings.mode and report what the agents did."""
    rng = random.Random(config.seed)
    estimator = Estimator(settings)
    start = config.start_time
    end = start + config.hours * 3600.0
    wrap = config.wrap_up_seconds
    answer_mu = math.log(config.answer_median_seconds)
    talk_mu = math.log(config.talk_mean_seconds) - config.talk_sigma**2 / 2
    abandon_after = settings.abandon_after_seconds
    ring_cap = config.ring_timeout_seconds - 0.5

    heap: list[tuple[float, int, int, int, float]] = []
    seq = 0
    free = config.agents
    busy: dict[int, float] = {}  # call id -> bridged at
    ringing: dict[int, float] = {}  # call id -> started at
    waiting: dict[int, float] = {}  # call id -> answered at (insertion order = queue order)
    dials = answered = bridged = abandoned = 0
    occupied_seconds = wait_total = peak = 0.0
    reasons: dict[str, int] = {}

    def push(at: float, kind: int, call: int, value: float = 0.0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (at, seq, kind, call, value))

    def bridge(now: float, call: int, wait: float) -> None:
        nonlocal free, bridged, occupied_seconds, wait_total
        free -= 1
        bridged += 1
        wait_total += wait
        busy[call] = now
        talk = rng.lognormvariate(talk_mu, config.talk_sigma)
        occupied_seconds += max(0.0, min(talk + wrap, end - now))
        estimator.bridged(now, wait)
        push(now + talk + wrap, _HANDLE_END, call, talk)

    def process(now: float, kind: int, call: int, value: float) -> None:
        nonlocal free, answered, abandoned, peak
        if kind == _RING_END:
            ring = now - ringing.pop(call)
            if value:
                answered += 1
                estimator.answered(now, ring)
                if free > 0:
                    bridge(now, call, 0.0)
                else:
                    waiting[call] = now
                    push(now + abandon_after, _ABANDON_CHECK, call)
            else:
                estimator.not_answered(now, ring)
        elif kind == _ABANDON_CHECK:
            if waiting.pop(call, None) is not None:
                abandoned += 1
                estimator.abandoned(now)
                if answered >= _PEAK_MIN_ANSWERED:
                    peak = max(peak, abandoned / answered)
        else:
            del busy[call]
            estimator.handled(now, value, wrap)
            free += 1
            if waiting:
                first = next(iter(waiting))
                bridge(now, first, now - waiting.pop(first))

    def dial(now: float, call: int) -> None:
        ringing[call] = now
        estimator.attempt_started(now)
        if rng.random() < config.answer_rate:
            ring = min(rng.lognormvariate(answer_mu, config.answer_sigma), ring_cap)
            push(now + ring, _RING_END, call, 1.0)
        elif rng.random() < config.fast_fail_share:
            push(now + rng.uniform(1.0, 6.0), _RING_END, call, 0.0)
        else:
            push(now + config.ring_timeout_seconds, _RING_END, call, 0.0)

    tick = start
    next_estimate = start
    estimates = estimator.estimates(start)
    while tick < end:
        while heap and heap[0][0] <= tick:
            at, _, kind, call, value = heapq.heappop(heap)
            process(at, kind, call, value)
        if tick >= next_estimate:
            estimates = estimator.estimates(tick)
            next_estimate += config.estimate_every_seconds
        state = AgentState(
            agents_free=free,
            busy_elapsed_seconds=[tick - s for s in busy.values()],
            ringing_elapsed_seconds=[tick - s for s in ringing.values()],
            answered_waiting=len(waiting),
        )
        decision = decide(settings, state, estimates)
        reasons[decision.reason] = reasons.get(decision.reason, 0) + 1
        for _ in range(decision.new_attempts or 0):
            dials += 1
            dial(tick, dials)
        tick += config.tick_seconds

    logged_in = config.agents * config.hours * 3600.0
    return SimResult(
        agents=config.agents,
        answer_rate=config.answer_rate,
        mode=settings.mode.value,
        hours=config.hours,
        dials=dials,
        answered=answered,
        bridged=bridged,
        abandoned=abandoned,
        occupancy=occupied_seconds / logged_in if logged_in else 0.0,
        abandon_rate=abandoned / answered if answered else 0.0,
        peak_abandon_rate=peak,
        calls_per_agent_hour=bridged / (config.agents * config.hours) if config.agents else 0.0,
        mean_wait_seconds=wait_total / bridged if bridged else 0.0,
        reasons=reasons,
    )
