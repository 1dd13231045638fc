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
from typing import Any

from scheduler.pacing import AgentState, Estimator, PacingSettings, decide

_RING_END, _ABANDON_CHECK, _HANDLE_END = 0, 1, 2
# How long an unanswered attempt that fails fast (busy, invalid, rejected) takes: uniform in this range.
FAST_FAIL_SECONDS = (1.0, 6.0)
# The provider simulator caps talk time; the model does not. This many mean talk times is a cap no
# lognormal talk time of a sensible sigma reaches (sigma 0.8: one call in billions).
_TALK_CAP_MEANS = 100.0
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
    # Share of unanswered attempts that end quickly (busy, invalid, rejected), uniform in
    # FAST_FAIL_SECONDS.
    fast_fail_share: float = 0.25
    talk_mean_seconds: float = 120.0
    talk_sigma: float = 0.8
    wrap_up_seconds: float = 10.0
    tick_seconds: float = 1.0
    # How often the estimator snapshot is refreshed (a worker would refresh it every tick; the
    # difference is invisible at these volumes and it keeps the simulator fast).
    estimate_every_seconds: float = 5.0
    start_time: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    # Tell the controller which busy agents are in wrap-up and when they will be released, as a
    # worker can (the call's end arrives by the provider's callback; release = end + wrap-up).
    # False: only each busy agent's time since its bridge, as before the worker reported it.
    report_wrap_up: bool = True
    # Benchmark device, not a dialer: tell the controller when every busy agent will be released,
    # talking ones included (their talk time is drawn at the bridge), as if each were in wrap-up
    # with a known end. No dialer knows this; it measures what perfect agent foresight is worth.
    reveal_releases: bool = False

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
    busy: dict[int, tuple[float, float]] = {}  # call id -> (bridged at, talk ends at)
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
        talk = rng.lognormvariate(talk_mu, config.talk_sigma)
        busy[call] = (now, now + talk)
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
            push(now + rng.uniform(*FAST_FAIL_SECONDS), _RING_END, call, 0.0)
        else:
            push(now + config.ring_timeout_seconds, _RING_END, call, 0.0)

    tick = start
    next_estimate = start
    estimates = estimator.estimates(start)
    while tick < end:
        while heap and heap[0][0] <= tick:
            at, _, kind, call, value = heapq.heappop(heap)
            process(at, kind, call, value)
        talking: list[float]
        wrap_up: list[float] | None
        if config.reveal_releases:
            talking = []
            wrap_up = [talk_end + wrap - tick for _, talk_end in busy.values()]
        elif config.report_wrap_up:
            # Only a call that has ended is known to have ended: the rest are still talking.
            talking = [tick - s for s, talk_end in busy.values() if talk_end > tick]
            wrap_up = [talk_end + wrap - tick for _, talk_end in busy.values() if talk_end <= tick]
        else:
            talking, wrap_up = [tick - s for s, _ in busy.values()], None
        if tick >= next_estimate:
            estimates = estimator.estimates(tick, talking)
            next_estimate += config.estimate_every_seconds
        state = AgentState(
            agents_free=free,
            busy_elapsed_seconds=talking,
            ringing_elapsed_seconds=[tick - s for s in ringing.values()],
            answered_waiting=len(waiting),
            wrap_up_remaining_seconds=wrap_up,
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


@dataclass(frozen=True)
class ProviderModel:
    """A CallCenterConfig's calls and agents as the provider simulator and an agent campaign run them.

    simulator: dialer.simulator.SimulatorConfig keys (SimulatorConfig.from_dict takes them). Its
      durations stay in simulated seconds and time_scale compresses them, as the simulator does.
    ring_timeout_seconds: the campaign's ring timeout, in simulated seconds as the provider reads the
      start request: unanswered calls that do not fail fast ring to it.
    agents_logged_in: the campaign's agents.
    pacing_settings: PacingSettings overrides for the campaign, in real seconds (the workers run on
      the system clock): wrap-up, which the agent-end trigger adds to each bridged call's end.
    """

    simulator: dict[str, Any]
    ring_timeout_seconds: int
    agents_logged_in: int
    pacing_settings: dict[str, float]


def provider_model(config: CallCenterConfig, time_scale: float) -> ProviderModel:
    """Translate the model that simulate() runs into the provider simulator's terms, time_scale real
    seconds per simulated second, so real workers dial the same contact center.

    Answered calls ring the model's lognormal time and talk its lognormal time; of the unanswered,
    the fast-fail share is the simulator's "busy" (ringing uniformly in FAST_FAIL_SECONDS) and the
    rest its "no-answer" (ringing to the campaign's timeout); the simulator's "failed" is not used.
    Two things the workers do differently: an answered call rings at most to the timeout (simulate:
    half a second less), and talk starts at the answer, so a caller who waited for an agent spends
    that wait out of the agent's talk time (simulate: talk starts at the bridge).
    """
    if not 0.0 < time_scale <= 1.0:
        raise ValueError(f"time_scale must be in (0, 1], got {time_scale}")
    timeout = config.ring_timeout_seconds
    if timeout != int(timeout):
        raise ValueError(f"ring_timeout_seconds must be a whole number for a campaign, got {timeout}")
    unanswered = 1.0 - config.answer_rate
    return ProviderModel(
        simulator={
            "time_scale": time_scale,
            "seed": config.seed,
            # Bridging to an agent happens on the answer, so agent campaigns need the answered event.
            "intermediate_events": True,
            "answer_probability": config.answer_rate,
            "busy_probability": unanswered * config.fast_fail_share,
            "no_answer_probability": unanswered * (1.0 - config.fast_fail_share),
            "failed_probability": 0.0,
            "ring_min_seconds": FAST_FAIL_SECONDS[0],
            "ring_max_seconds": FAST_FAIL_SECONDS[1],
            "answer_ring_median_seconds": config.answer_median_seconds,
            "answer_ring_sigma": config.answer_sigma,
            "talk_mean_seconds": config.talk_mean_seconds,
            "talk_sigma": config.talk_sigma,
            "talk_max_seconds": _TALK_CAP_MEANS * config.talk_mean_seconds,
        },
        ring_timeout_seconds=int(timeout),
        agents_logged_in=config.agents,
        pacing_settings={"wrap_up_seconds": config.wrap_up_seconds * time_scale},
    )


# ---------------------------------------------------------------------------------------------------
# Benchmark device, not a dialer: an "oracle" pacing that no real dialer can implement.


def _lognormal_cdf(x: float, mu: float, sigma: float) -> float:
    return 0.0 if x <= 0.0 else 0.5 * math.erfc(-(math.log(x) - mu) / (sigma * math.sqrt(2.0)))


def _count_at_most(probabilities: list[float], m: int) -> float:
    """P(at most m of independent events with these probabilities happen), exact (Poisson binomial)."""
    if m < 0:
        return 0.0
    dist = [1.0] + [0.0] * m  # dist[j] = P(exactly j so far), for j <= m
    for q in probabilities:
        if q <= 0.0:
            continue
        keep = 1.0 - q
        for j in range(m, 0, -1):
            dist[j] = dist[j] * keep + dist[j - 1] * q
        dist[0] *= keep
    return sum(dist)


def simulate_oracle(config: CallCenterConfig, settings: PacingSettings, risk: float) -> SimResult:
    """An upper bound on what any pacing can do on this center: a clairvoyant dialer (benchmark only).

    It knows, before dialling, whether each number will be answered by a person and after how long
    it will ring, so it dials unanswered numbers freely (bounded only by max_dial_ratio lines per
    agent) and places every live answer at an instant it chooses. It does not know talk times: like
    the real controller it sees each busy agent's elapsed talk time, or that its call has ended and
    when its wrap-up does, but it knows the true talk-time distribution exactly (no estimation, no
    warm-up). It dials the next answered number
    only while, for that call and for every answered call already ringing that would land after it,
    P(fewer agents free by landing + abandon grace than answers landing up to then) <= risk
    (exact Poisson-binomial over the busy agents). Tune `risk` to reach a given abandonment; the
    occupancy is then about the best any dialer could reach with that abandonment.
    """
    if not 0.0 < risk < 1.0:
        raise ValueError(f"risk must be in (0, 1), got {risk}")
    rng = random.Random(config.seed)  # talk times
    numbers = random.Random(config.seed * 7919 + 1)  # the calling list's outcomes, known in advance
    start = config.start_time
    end = start + config.hours * 3600.0
    wrap = config.wrap_up_seconds
    answer_mu = math.log(config.answer_median_seconds)
    talk_mu = math.log(config.talk_mean_seconds) - config.talk_sigma**2 / 2
    sigma = config.talk_sigma
    grace = settings.abandon_after_seconds
    ring_cap = config.ring_timeout_seconds - 0.5
    lines_cap = math.floor(settings.max_dial_ratio * config.agents + 1e-9)

    def next_number() -> tuple[bool, float]:
        if numbers.random() < config.answer_rate:
            return True, min(numbers.lognormvariate(answer_mu, config.answer_sigma), ring_cap)
        if numbers.random() < config.fast_fail_share:
            return False, numbers.uniform(*FAST_FAIL_SECONDS)
        return False, config.ring_timeout_seconds

    heap: list[tuple[float, int, int, int, float]] = []
    seq = 0
    free = config.agents
    busy: dict[int, tuple[float, float]] = {}  # call id -> (bridged at, talk ends at)
    lands: dict[int, float] = {}  # answered call still ringing -> when it will be answered
    unanswered_ringing = 0
    waiting: dict[int, float] = {}
    dials = answered = bridged = abandoned = 0
    occupied_seconds = wait_total = peak = 0.0

    def push(at: float, kind: int, call: int, value: float = 0.0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (at, seq, kind, call, value))

    def bridge(now: float, call: int, wait: float) -> None:
        nonlocal free, bridged, occupied_seconds, wait_total
        free -= 1
        bridged += 1
        wait_total += wait
        talk = rng.lognormvariate(talk_mu, sigma)
        busy[call] = (now, now + talk)
        occupied_seconds += max(0.0, min(talk + wrap, end - now))
        push(now + talk + wrap, _HANDLE_END, call, talk)

    def process(now: float, kind: int, call: int, value: float) -> None:
        nonlocal free, answered, abandoned, peak, unanswered_ringing
        if kind == _RING_END:
            if value:
                del lands[call]
                answered += 1
                if free > 0:
                    bridge(now, call, 0.0)
                else:
                    waiting[call] = now
                    push(now + grace, _ABANDON_CHECK, call)
            else:
                unanswered_ringing -= 1
        elif kind == _ABANDON_CHECK:
            if waiting.pop(call, None) is not None:
                abandoned += 1
                if answered >= _PEAK_MIN_ANSWERED:
                    peak = max(peak, abandoned / answered)
        else:
            del busy[call]
            free += 1
            if waiting:
                first = next(iter(waiting))
                bridge(now, first, now - waiting.pop(first))

    def admissible(now: float, land: float) -> bool:
        # Like the controller, it sees which agents' calls have ended (in wrap-up, released at a known
        # time). Per agent still talking: talk time spent and the chance it lasted that long.
        released = [talk_end + wrap for _, talk_end in busy.values() if talk_end <= now]
        spent = [
            (now - s, 1.0 - _lognormal_cdf(now - s, talk_mu, sigma))
            for s, talk_end in busy.values()
            if talk_end > now
        ]
        landings = sorted([*lands.values(), land])
        for rank, at in enumerate(landings, start=len(waiting) + 1):
            if at < land:
                continue
            need = rank - free  # busy agents that must be free by at + grace
            if need <= 0:
                continue
            horizon = at + grace - now
            talk_left = horizon - wrap  # a call ending later leaves its agent in wrap-up past the horizon
            chances = [1.0 if at_release <= now + horizon else 0.0 for at_release in released]
            chances += [
                0.0
                if talk_left <= 0.0
                else (_lognormal_cdf(e + talk_left, talk_mu, sigma) - (1.0 - surv)) / surv
                if surv > 1e-12
                else 1.0
                for e, surv in spent
            ]
            if _count_at_most(chances, need - 1) > risk:
                return False
        return True

    tick = start
    pending = next_number()
    ticks = 0
    while tick < end:
        while heap and heap[0][0] <= tick:
            at, _, kind, call, value = heapq.heappop(heap)
            process(at, kind, call, value)
        ticks += 1
        while len(busy) + len(waiting) + len(lands) + unanswered_ringing < lines_cap:
            is_answer, ring = pending
            if is_answer and not admissible(tick, tick + ring):
                break
            dials += 1
            if is_answer:
                lands[dials] = tick + ring
            else:
                unanswered_ringing += 1
            push(tick + ring, _RING_END, dials, 1.0 if is_answer else 0.0)
            pending = next_number()
        tick += config.tick_seconds

    logged_in = config.agents * config.hours * 3600.0
    return SimResult(
        agents=config.agents,
        answer_rate=config.answer_rate,
        mode="oracle",
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
        reasons={"oracle": ticks},
    )
