"""A stand-in for telephony providers' call APIs, in one or more provider dialects.

It is the far side of the provider edge for the demo, the integration tests and the benchmark, so it
keeps its own books (every start request, live calls per campaign, starts per second) and the tests can
check the dialer's invariants from the provider's side rather than trusting the dialer's own counters.
The call state machine knows no HTTP: dialects (dialer/simdialects) own the wire formats, so every
provider's simulation gets the same outcomes, faults and books.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import hashlib
import hmac
import math
import random
import statistics
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

import aiohttp
import orjson
from aiohttp import web

from dialer import simdialects
from dialer.simdialects import E164 as E164
from dialer.simdialects import MAX_ATTEMPT_ID_LENGTH as MAX_ATTEMPT_ID_LENGTH
from dialer.simdialects import (
    Admission,
    Callback,
    CallView,
    Dialect,
    RejectReason,
    StartSpec,
    iso_utc,
)

# Re-exported: these lived here before dialects had a package of their own.
from dialer.simhttp import CallbackClient

__all__ = [
    "SIMULATOR_STATE",
    "Simulator",
    "SimulatorConfig",
    "SimulatorState",
    "make_app",
    "max_in_window",
    "run_forever",
    "sign",
]

OUTCOMES: Final[frozenset[str]] = frozenset({"answered", "busy", "no-answer", "failed", "congestion"})
FINAL_STATUSES: Final[frozenset[str]] = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})

_STANDARD_NORMAL: Final = statistics.NormalDist()

SIGNATURE_HEADER = "X-Simulator-Signature"
TIMESTAMP_HEADER = "X-Simulator-Timestamp"
# Stands for "no metadata.campaign" in the per-campaign maps: JSON object keys cannot be null.
NO_CAMPAIGN = ""

# outcome -> (final status, Q.850 cause, SIP code)
_OUTCOME_CODES: Final[dict[str, tuple[str, int, int]]] = {
    "answered": ("completed", 16, 200),  # NORMAL_CLEARING
    "busy": ("busy", 17, 486),  # USER_BUSY / Busy Here
    "no-answer": ("no-answer", 19, 480),  # NO_ANSWER / Temporarily Unavailable
    "failed": ("failed", 1, 404),  # UNALLOCATED_NUMBER / Not Found
    "congestion": ("failed", 34, 503),  # NORMAL_CIRCUIT_CONGESTION / Service Unavailable
}
_CANCELED_CODES: Final = ("canceled", 16, 487)

# Event sequence numbers are fixed by kind, so a receiver can discard anything older than what it holds
# no matter how delivery interleaves or whether the intermediate events are enabled.
_SEQ_RINGING = 1
_SEQ_ANSWERED = 2
_SEQ_FINAL = 3

# Fault flags drawn at call creation (request order), not at call end (timer order), so a seed gives the
# same faults to the same calls however their timers interleave.
_F_DROP = 1
_F_DUPLICATE = 2
_F_OUT_OF_ORDER = 4


def sign(secret: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of a callback's raw body: what X-Simulator-Signature carries."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _lognormal(u: float, mu: float, sigma: float) -> float:
    """The lognormal(mu, sigma) quantile at u: one uniform draw per value, however many are drawn."""
    u = min(max(u, 1e-12), 1.0 - 1e-12)  # random() may return 0.0, where the quantile is -inf
    return math.exp(mu + sigma * _STANDARD_NORMAL.inv_cdf(u))


def max_in_window(timestamps: Iterable[float], window_seconds: float = 1.0) -> int:
    """Most timestamps inside any half-open window [t, t + window_seconds); input sorted ascending."""
    recent: deque[float] = deque()
    best = 0
    for t in timestamps:
        while recent and t - recent[0] >= window_seconds:
            recent.popleft()
        recent.append(t)
        best = max(best, len(recent))
    return best


@dataclass
class SimulatorConfig:
    api_key: str = "sim-key"
    callback_secret: str = "sim-secret"
    # Multiplies every simulated duration (ring, talk, failure setup); 0.01 runs calls 100x faster.
    # Durations reported to callers stay in simulated seconds; timestamps are real wall-clock time.
    time_scale: float = 1.0
    seed: int | None = None

    answer_probability: float = 0.35
    busy_probability: float = 0.15
    no_answer_probability: float = 0.35
    failed_probability: float = 0.15
    # Ring time of answered and busy calls: uniform in ring_min..ring_max. With
    # answer_ring_median_seconds set, answered calls ring a lognormal time instead (that median,
    # answer_ring_sigma the standard deviation of its log) and the uniform range is busy calls' alone.
    ring_min_seconds: float = 2.0
    ring_max_seconds: float = 15.0
    answer_ring_median_seconds: float | None = None
    answer_ring_sigma: float = 0.5
    # Talk time: exponential with mean talk_mean_seconds, or with talk_sigma set lognormal with that
    # mean and talk_sigma the standard deviation of its log; capped at talk_max_seconds either way.
    talk_mean_seconds: float = 60.0
    talk_max_seconds: float = 1800.0
    talk_sigma: float | None = None
    # A failed call never rings: the network rejects it after this setup time.
    failure_delay_seconds: float = 0.5
    # Deterministic outcomes for tests: exact number first, then the number's last digit.
    forced_outcomes: dict[str, str] = field(default_factory=dict)
    force_by_last_digit: dict[str, str] = field(default_factory=dict)
    intermediate_events: bool = False

    # Faults. slow_response_seconds is real time (not scaled): it exists to trip callers' HTTP timeouts.
    slow_response_probability: float = 0.0
    slow_response_seconds: float = 0.0
    error_5xx_probability: float = 0.0
    error_5xx_after_create_probability: float = 0.0
    rate_limit_429_probability: float = 0.0
    drop_callback_probability: float = 0.0
    duplicate_callback_probability: float = 0.0
    out_of_order_probability: float = 0.0
    max_cps: float | None = None

    # Callback retries are real time too: they model the network, not the call.
    callback_max_attempts: int = 3
    callback_retry_backoff_seconds: float = 0.2
    callback_timeout_seconds: float = 5.0
    callback_max_connections: int = 256
    log_max_entries: int = 2_000_000

    # Provider dialects to mount, each at its provider's real paths; "native" serves /v1/calls.
    dialects: list[str] = field(default_factory=lambda: ["native"])
    # Per-dialect settings such as credentials: {"twilio": {"account_sid": ..., "auth_token": ...}}.
    dialect_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name.endswith("_probability"):
                value = getattr(self, f.name)
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"{f.name} must be within 0..1, got {value!r}")
        if self.outcome_weights()[-1] <= 0:
            raise ValueError("at least one outcome probability must be positive")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")
        if not 0 <= self.ring_min_seconds <= self.ring_max_seconds:
            raise ValueError("need 0 <= ring_min_seconds <= ring_max_seconds")
        if self.talk_mean_seconds <= 0 or self.talk_max_seconds <= 0:
            raise ValueError("talk_mean_seconds and talk_max_seconds must be positive")
        if self.answer_ring_median_seconds is not None and not self.answer_ring_median_seconds > 0:
            raise ValueError("answer_ring_median_seconds must be positive when set")
        for name in ("answer_ring_sigma", "talk_sigma"):
            sigma = getattr(self, name)
            if sigma is not None and not 0 <= sigma <= 5:
                raise ValueError(f"{name} must be within 0..5, got {sigma!r}")
        if self.max_cps is not None and self.max_cps <= 0:
            raise ValueError("max_cps must be positive when set")
        if self.callback_max_attempts < 1 or self.log_max_entries < 1 or self.callback_max_connections < 1:
            raise ValueError("callback_max_attempts, log_max_entries, callback_max_connections must be >= 1")
        # JSON object keys are strings, but a Python caller may well write {7: "busy"}.
        self.force_by_last_digit = {str(k): v for k, v in self.force_by_last_digit.items()}
        for key in self.force_by_last_digit:
            if len(key) != 1 or not key.isdigit():
                raise ValueError(f"force_by_last_digit keys must be single digits, got {key!r}")
        for name, forced in (
            ("forced_outcomes", self.forced_outcomes),
            ("force_by_last_digit", self.force_by_last_digit),
        ):
            bad = sorted(v for v in forced.values() if v not in OUTCOMES)
            if bad:
                raise ValueError(f"{name} has unknown outcomes {bad}; known: {sorted(OUTCOMES)}")
        # A bare string would otherwise be read as a list of one-letter dialect names.
        if isinstance(self.dialects, str) or not self.dialects:
            raise ValueError("dialects must be a non-empty list of dialect names")
        self.dialects = list(self.dialects)
        if len(set(self.dialects)) != len(self.dialects):
            raise ValueError(f"dialects lists a dialect twice: {self.dialects}")
        for dialect in self.dialects:
            simdialects.resolve(dialect)
        unmounted = sorted(set(self.dialect_options) - set(self.dialects))
        if unmounted:
            raise ValueError(f"dialect_options for dialects not in dialects: {unmounted}")

    def outcome_weights(self) -> tuple[float, float, float, float]:
        """Cumulative answer/busy/no-answer/failed weights (need not sum to 1)."""
        a = self.answer_probability
        b = a + self.busy_probability
        n = b + self.no_answer_probability
        return a, b, n, n + self.failed_probability

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimulatorConfig:
        """Build from parsed JSON/CLI options; unknown keys are an error, not silently ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown simulator config keys: {unknown}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Call:
    # Slots: the benchmark keeps millions of these alive for by-attempt lookups.
    __slots__ = (
        "answered_wall",
        "attempt_id",
        "call_id",
        "callback_url",
        "campaign",
        "cause_code",
        "delivery",
        "dialect",
        "duration_seconds",
        "ended_wall",
        "extra",
        "faults",
        "from_",
        "outcome",
        "ring_seconds",
        "ring_timeout_seconds",
        "ringing_event_id",
        "sip_code",
        "started_wall",
        "status",
        "talk_seconds",
        "timer",
        "to",
    )

    def __init__(
        self,
        call_id: str,
        attempt_id: str,
        to: str,
        from_: str | None,
        campaign: str,
        callback_url: str,
        ring_timeout_seconds: int,
        outcome: str,
        ring_seconds: float,
        talk_seconds: float,
        faults: int,
        dialect: Dialect,
        extra: Mapping[str, Any],
    ) -> None:
        self.call_id = call_id
        self.attempt_id = attempt_id
        self.to = to
        self.from_ = from_
        self.campaign = campaign
        self.callback_url = callback_url
        self.ring_timeout_seconds = ring_timeout_seconds
        self.outcome = outcome
        self.ring_seconds = ring_seconds
        self.talk_seconds = talk_seconds
        self.faults = faults
        self.dialect = dialect
        self.extra = extra
        self.status = "queued" if outcome in ("failed", "congestion") else "ringing"
        self.started_wall = time.time()
        self.answered_wall: float | None = None
        self.ended_wall: float | None = None
        self.duration_seconds = 0.0
        self.cause_code: int | None = None
        self.sip_code: int | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.delivery: asyncio.Task[None] | None = None
        self.ringing_event_id: str | None = None

    def billsec(self) -> int:
        # Providers bill whole seconds, rounded up, and only once the call is over.
        if self.answered_wall is None or self.ended_wall is None:
            return 0
        return math.ceil(self.talk_seconds)

    def record(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "attempt_id": self.attempt_id,
            "to": self.to,
            "from": self.from_,
            "campaign": self.campaign or None,
            "status": self.status,
            "started_at": iso_utc(self.started_wall),
            "answered_at": iso_utc(self.answered_wall),
            "ended_at": iso_utc(self.ended_wall),
            "duration_seconds": self.duration_seconds,
            "billsec": self.billsec(),
            "cause_code": self.cause_code,
            "sip_code": self.sip_code,
        }


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": {"code": code, "message": message}}),
        content_type="application/json",
    )


def _json(status: int, payload: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


class SimulatorState:
    """Everything the simulator knows; dialects' handlers and in-process tests share this one object."""

    def __init__(self, config: SimulatorConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        # Only start-request timestamps (log, per-second maxima, max_cps) read this clock, so a test can
        # pin them; call timers run on the event loop's own clock.
        self.clock = clock
        self.dialects: dict[str, Dialect] = simdialects.build(config)
        self._session: CallbackClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._end_waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._live: dict[str, _Call] = {}
        self.reset()

    def reset(self) -> None:
        """Forget every call, log entry and counter, cancel live calls silently, and reseed."""
        for call in self._live.values():
            if call.timer is not None:
                call.timer.cancel()
        for task in self._tasks:
            task.cancel()
        seed = self.config.seed
        # Separate streams: turning a fault on must not change which outcome each call gets.
        self._outcome_rng = random.Random(None if seed is None else f"{seed}:outcome")
        self._fault_rng = random.Random(None if seed is None else f"{seed}:fault")
        self._id_rng = random.Random(None if seed is None else f"{seed}:id")
        self._calls: dict[str, _Call] = {}
        # Built on the first lookup by call id: only some dialects need it, and the benchmark keeps
        # millions of calls.
        self._by_call_id: dict[str, _Call] | None = None
        self._live = {}
        self._log: deque[tuple[Any, ...]] = deque(maxlen=self.config.log_max_entries)
        self._seq = 0
        self._cps_window: deque[float] = deque()
        self._start_windows: dict[str, deque[float]] = {}
        self._overall_window: deque[float] = deque()
        self.start_requests = 0
        self.duplicate_start_requests = 0
        self.rejected: dict[str, int] = {}
        self.live_by_campaign: dict[str, int] = {}
        self.max_live = 0
        self.max_live_by_campaign: dict[str, int] = {}
        self.max_starts_per_second = 0
        self.max_starts_per_second_by_campaign: dict[str, int] = {}
        self.calls_by_status: dict[str, int] = {}
        self.callbacks_sent = 0
        self.callbacks_failed = 0
        self.callbacks_dropped = 0
        self.callbacks_duplicated = 0
        self.callbacks_out_of_order = 0
        self.callback_retries = 0
        self.callback_errors: dict[str, int] = {}
        self.log_truncated = 0

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def _log_request(
        self,
        received_mono: float,
        received_wall: float,
        attempt_id: str | None,
        to: str | None,
        campaign: str | None,
        duplicate: bool,
        status: int,
        dialect: str,
    ) -> None:
        self._seq += 1
        if len(self._log) == self._log.maxlen:
            self.log_truncated += 1
        self._log.append(
            (self._seq, received_mono, received_wall, attempt_id, to, campaign, duplicate, status, dialect)
        )

    def _over_max_cps(self, now: float) -> bool:
        max_cps = self.config.max_cps
        if max_cps is None:
            return False
        window = self._cps_window
        while window and now - window[0] >= 1.0:
            window.popleft()
        if len(window) >= max_cps:
            return True
        window.append(now)
        return False

    def _note_start(self, campaign: str, now: float) -> None:
        live = self.live_by_campaign.get(campaign, 0) + 1
        self.live_by_campaign[campaign] = live
        if live > self.max_live_by_campaign.get(campaign, 0):
            self.max_live_by_campaign[campaign] = live
        if len(self._live) > self.max_live:
            self.max_live = len(self._live)
        # Start times arrive in clock order, so a sliding window kept per start gives the exact maximum
        # over all windows (max_in_window over the sorted list), at O(1) per start.
        window = self._start_windows.get(campaign)
        if window is None:
            window = self._start_windows[campaign] = deque()
        while window and now - window[0] >= 1.0:
            window.popleft()
        window.append(now)
        if len(window) > self.max_starts_per_second_by_campaign.get(campaign, 0):
            self.max_starts_per_second_by_campaign[campaign] = len(window)
        overall = self._overall_window
        while overall and now - overall[0] >= 1.0:
            overall.popleft()
        overall.append(now)
        if len(overall) > self.max_starts_per_second:
            self.max_starts_per_second = len(overall)

    def _choose_outcome(self, to: str) -> tuple[str, float, float]:
        cfg = self.config
        rng = self._outcome_rng
        # Every call draws the same four numbers, so forcing one number leaves the others' outcomes alone
        # (and the lognormal options, which transform the same draws, leave the outcome mix alone).
        u = rng.random()
        ring_u = rng.random()
        talk_u = rng.random()
        congested = rng.random() < 0.5
        # random.uniform's and random.expovariate's own formulas: a seed gives the defaults' old durations.
        ring = cfg.ring_min_seconds + (cfg.ring_max_seconds - cfg.ring_min_seconds) * ring_u
        if cfg.talk_sigma is None:
            talk = -math.log(1.0 - talk_u) / (1.0 / cfg.talk_mean_seconds)
        else:
            sigma = cfg.talk_sigma
            talk = _lognormal(talk_u, math.log(cfg.talk_mean_seconds) - sigma * sigma / 2, sigma)
        talk = min(talk, cfg.talk_max_seconds)
        forced = cfg.forced_outcomes.get(to) or cfg.force_by_last_digit.get(to[-1])
        if forced is not None:
            outcome = forced
        else:
            a, b, n, total = cfg.outcome_weights()
            x = u * total
            if x < a:
                outcome = "answered"
            elif x < b:
                outcome = "busy"
            elif x < n:
                outcome = "no-answer"
            else:
                outcome = "congestion" if congested else "failed"
        if outcome == "answered" and cfg.answer_ring_median_seconds is not None:
            ring = _lognormal(ring_u, math.log(cfg.answer_ring_median_seconds), cfg.answer_ring_sigma)
        return outcome, ring, max(talk, 1.0)

    def _create(self, spec: StartSpec, dialect: Dialect, campaign: str, now: float) -> _Call:
        cfg = self.config
        frng = self._fault_rng
        faults = 0
        if cfg.drop_callback_probability and frng.random() < cfg.drop_callback_probability:
            faults |= _F_DROP
        if cfg.duplicate_callback_probability and frng.random() < cfg.duplicate_callback_probability:
            faults |= _F_DUPLICATE
        if cfg.out_of_order_probability and frng.random() < cfg.out_of_order_probability:
            faults |= _F_OUT_OF_ORDER
        outcome, ring, talk = self._choose_outcome(spec.to)
        ring = min(ring, float(spec.ring_timeout_seconds))
        # Positional: a dozen keyword arguments cost about 0.3 us more, on every start request.
        call = _Call(
            f"CA{self._id_rng.getrandbits(128):032x}",
            spec.attempt_id,
            spec.to,
            spec.from_,
            campaign,
            spec.callback_url,
            spec.ring_timeout_seconds,
            outcome,
            ring,
            talk,
            faults,
            dialect,
            spec.extra,
        )
        self._calls[call.attempt_id] = call
        if self._by_call_id is not None:
            self._by_call_id[call.call_id] = call
        self._live[call.attempt_id] = call
        self._note_start(campaign, now)
        loop = asyncio.get_running_loop()
        scale = cfg.time_scale
        if outcome in ("failed", "congestion"):
            call.timer = loop.call_later(cfg.failure_delay_seconds * scale, self._finish, call, outcome)
        elif outcome == "no-answer":
            call.timer = loop.call_later(call.ring_timeout_seconds * scale, self._finish, call, outcome)
        elif outcome == "busy":
            call.timer = loop.call_later(ring * scale, self._finish, call, outcome)
        else:
            call.timer = loop.call_later(ring * scale, self._answer, call)
        if cfg.intermediate_events and call.status == "ringing":
            self._send(call, self._render(call, "ringing", _SEQ_RINGING))
        return call

    def admit(self, spec: StartSpec, *, dialect: Dialect) -> Admission:
        """Decide a parsed start request: create the call, find it again, or refuse it; log it.

        Synchronous on purpose: start times then reach the per-second windows in clock order, which is
        what keeps their maxima exact. The dialect answers with ``Admission.status``.
        """
        self.start_requests += 1
        now = self.clock()
        wall = time.time()
        cfg = self.config
        statuses = dialect.start_statuses
        attempt_id = spec.attempt_id
        existing = self._calls.get(attempt_id)
        seen = existing is not None
        frng = self._fault_rng
        reason: RejectReason | None = None
        if self._over_max_cps(now):
            reason = "max_cps"
        elif cfg.rate_limit_429_probability and frng.random() < cfg.rate_limit_429_probability:
            reason = "rate_limited"
        elif cfg.error_5xx_probability and frng.random() < cfg.error_5xx_probability:
            reason = "error_5xx"
        elif existing is not None and (existing.to != spec.to or existing.dialect is not dialect):
            reason = "conflict"
        if reason is not None:
            status = statuses[reason]
            self._reject(reason)
            self._log_request(now, wall, attempt_id, spec.to, spec.campaign, seen, status, dialect.name)
            return Admission("rejected", status, None, reason)

        after_create = bool(
            cfg.error_5xx_after_create_probability and frng.random() < cfg.error_5xx_after_create_probability
        )
        slow = bool(cfg.slow_response_probability and frng.random() < cfg.slow_response_probability)
        if existing is None:
            call = self._create(spec, dialect, spec.campaign or NO_CAMPAIGN, now)
            outcome: Literal["created", "duplicate"] = "created"
        else:
            call = existing
            outcome = "duplicate"
            self.duplicate_start_requests += 1
        if after_create:
            self._reject("error_5xx_after_create")
            status = statuses["after_create_error"]
        else:
            status = statuses[outcome]
        self._log_request(now, wall, attempt_id, spec.to, spec.campaign, seen, status, dialect.name)
        # The call already exists while the answer is held back: a caller that times out meanwhile
        # cannot know whether it was created, which is exactly the ambiguity workers must reconcile.
        slow_seconds = cfg.slow_response_seconds if slow and cfg.slow_response_seconds > 0 else 0.0
        return Admission(outcome, status, call, None, after_create, slow_seconds)

    def refuse(
        self,
        reason: str,
        status: int,
        *,
        dialect: Dialect,
        attempt_id: str | None = None,
        to: str | None = None,
        campaign: str | None = None,
    ) -> None:
        """Count and log a start request the dialect refused itself ("unauthorized", "invalid", ...)."""
        self.start_requests += 1
        self._reject(reason)
        seen = attempt_id is not None and attempt_id in self._calls
        self._log_request(self.clock(), time.time(), attempt_id, to, campaign, seen, status, dialect.name)

    def find(self, attempt_id: str, *, dialect: Dialect | None = None) -> CallView | None:
        """The call started for ``attempt_id``; with ``dialect``, only if that dialect created it."""
        call = self._calls.get(attempt_id)
        if call is None or (dialect is not None and call.dialect is not dialect):
            return None
        return call

    def find_by_call_id(self, call_id: str, *, dialect: Dialect | None = None) -> CallView | None:
        """The call with this provider call id; with ``dialect``, only if that dialect created it."""
        index = self._by_call_id
        if index is None:
            index = self._by_call_id = {call.call_id: call for call in self._calls.values()}
        call = index.get(call_id)
        if call is None or (dialect is not None and call.dialect is not dialect):
            return None
        return call

    async def handle_start(self, request: web.Request) -> web.Response:
        """Answer a start request in the native dialect, as POST /v1/calls does."""
        # Imported here: the native dialect module imports this one.
        from dialer.simdialects.native import NativeDialect

        native = self.dialects.get("native")
        if not isinstance(native, NativeDialect):
            raise LookupError("the native dialect is not mounted")
        return await native.start(self, request)

    def _answer(self, call: _Call) -> None:
        call.status = "in-progress"
        call.answered_wall = time.time()
        call.timer = asyncio.get_running_loop().call_later(
            call.talk_seconds * self.config.time_scale, self._finish, call, "answered"
        )
        if self.config.intermediate_events:
            self._send(call, self._render(call, "in-progress", _SEQ_ANSWERED))

    def _finish(self, call: _Call, outcome: str, codes: tuple[str, int, int] | None = None) -> None:
        status, cause, sip = codes or _OUTCOME_CODES[outcome]
        call.timer = None
        call.status = status
        call.ended_wall = time.time()
        call.cause_code = cause
        call.sip_code = sip
        if outcome == "answered":
            call.duration_seconds = round(call.ring_seconds + call.talk_seconds, 3)
        elif outcome == "no-answer":
            call.duration_seconds = float(call.ring_timeout_seconds)
        elif outcome == "busy":
            call.duration_seconds = round(call.ring_seconds, 3)
        elif outcome in ("failed", "congestion"):
            call.duration_seconds = round(self.config.failure_delay_seconds, 3)
        else:
            # Canceled mid-ring: report the simulated time it actually rang.
            call.duration_seconds = round((call.ended_wall - call.started_wall) / self.config.time_scale, 3)
        del self._live[call.attempt_id]
        self.live_by_campaign[call.campaign] -= 1
        self.calls_by_status[status] = self.calls_by_status.get(status, 0) + 1
        if self._end_waiters:
            for fut in self._end_waiters.pop(call.attempt_id, ()):
                if not fut.done():
                    fut.set_result(call.record())

        # A fault counts only when it changed what was sent: a dialect may send no event at all.
        if call.faults & _F_DROP:
            self.callbacks_dropped += 1
        else:
            final = self._render(call, status, _SEQ_FINAL)
            if self._send(call, final) and call.faults & _F_DUPLICATE:
                self.callbacks_duplicated += 1
                self._send(call, final)
        if call.faults & _F_OUT_OF_ORDER and self._send(call, self._render(call, "ringing", _SEQ_RINGING)):
            self.callbacks_out_of_order += 1

    def cancel_call(self, call: CallView) -> bool:
        """End a not-yet-answered call as canceled; False when it is answered or already over."""
        live = self._live.get(call.attempt_id)
        if live is None or live is not call or live.status not in ("queued", "ringing"):
            return False
        if live.timer is not None:
            live.timer.cancel()
        self._finish(live, "canceled", _CANCELED_CODES)
        return True

    def hangup_call(self, call: CallView) -> bool:
        """End a live call as the dialer would: canceled if not yet answered, completed (talk cut
        short) if answered. False when it is over already."""
        live = self._live.get(call.attempt_id)
        if live is None or live is not call:
            return False
        if live.status != "in-progress":
            return self.cancel_call(live)
        if live.timer is not None:
            live.timer.cancel()
        assert live.answered_wall is not None
        live.talk_seconds = max(0.0, (time.time() - live.answered_wall) / self.config.time_scale)
        self._finish(live, "answered")
        return True

    def cancel(self, attempt_id: str) -> dict[str, Any] | None:
        """End a not-yet-answered call as canceled; None when it is unknown, answered or over."""
        call = self._live.get(attempt_id)
        if call is None or not self.cancel_call(call):
            return None
        return call.record()

    def _render(self, call: _Call, status: str, sequence: int) -> Callback | None:
        if sequence == _SEQ_RINGING and call.ringing_event_id is not None:
            event_id = call.ringing_event_id
        else:
            event_id = str(uuid.UUID(int=self._id_rng.getrandbits(128), version=4))
            if sequence == _SEQ_RINGING:
                call.ringing_event_id = event_id
        return call.dialect.render_event(call, status, sequence, sequence == _SEQ_FINAL, event_id)

    def _send(self, call: _Call, event: Callback | None) -> bool:
        if event is None:
            return False
        # Chained per call so a call's events leave in the order generated; injected reordering is then
        # the only reordering, which keeps the fault tests deterministic.
        task = asyncio.get_running_loop().create_task(self._deliver(call.delivery, event))
        call.delivery = task
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._delivered, call))
        return True

    def _delivered(self, call: _Call, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        # Drop the finished task so millions of ended calls do not each pin one.
        if call.delivery is task:
            call.delivery = None

    async def _deliver(self, previous: asyncio.Task[None] | None, event: Callback) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait((previous,))
        url, body, headers = event
        cfg = self.config
        session = self._client()
        for attempt in range(1, cfg.callback_max_attempts + 1):
            try:
                status = await session.post(url, body, headers)
                if 200 <= status < 300:
                    self.callbacks_sent += 1
                    return
                reason = f"http_{status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = type(exc).__name__
            self.callback_errors[reason] = self.callback_errors.get(reason, 0) + 1
            if attempt < cfg.callback_max_attempts:
                self.callback_retries += 1
                await asyncio.sleep(cfg.callback_retry_backoff_seconds * 2 ** (attempt - 1))
        # Left for the worker's sweeper, which reconciles through the dialect's lookup.
        self.callbacks_failed += 1

    def _client(self) -> CallbackClient:
        if self._session is None or self._session.closed:
            cfg = self.config
            self._session = CallbackClient(cfg.callback_max_connections, cfg.callback_timeout_seconds)
        return self._session

    async def drain_callbacks(self) -> None:
        """Wait until no callback delivery is pending (including retries)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def wait_ended(self, attempt_id: str) -> dict[str, Any]:
        """The call's record once it has reached a final status (no polling)."""
        call = self._calls.get(attempt_id)
        if call is not None and call.status in FINAL_STATUSES:
            return call.record()
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._end_waiters.setdefault(attempt_id, []).append(fut)
        return await fut

    async def close(self) -> None:
        """Cancel live calls' timers and pending deliveries, then close the callback session."""
        for call in self._live.values():
            if call.timer is not None:
                call.timer.cancel()
                call.timer = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for waiters in self._end_waiters.values():
            for fut in waiters:
                fut.cancel()
        self._end_waiters.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def lookup(self, attempt_id: str) -> dict[str, Any] | None:
        call = self._calls.get(attempt_id)
        return None if call is None else call.record()

    def stats(self) -> dict[str, Any]:
        rejected = dict(self.rejected)
        return {
            "start_requests": self.start_requests,
            "calls_started": len(self._calls),
            "duplicate_start_requests": self.duplicate_start_requests,
            "rejected": sum(rejected.values()),
            "rejected_by_reason": rejected,
            "live_calls": len(self._live),
            "live_calls_by_campaign": {k: v for k, v in self.live_by_campaign.items() if v},
            "max_live_calls": self.max_live,
            "max_live_calls_by_campaign": dict(self.max_live_by_campaign),
            "max_starts_per_second": self.max_starts_per_second,
            "max_starts_per_second_by_campaign": dict(self.max_starts_per_second_by_campaign),
            "calls_by_status": dict(self.calls_by_status),
            "callbacks_sent": self.callbacks_sent,
            "callbacks_failed": self.callbacks_failed,
            "callbacks_dropped": self.callbacks_dropped,
            "callbacks_duplicated": self.callbacks_duplicated,
            "callbacks_out_of_order": self.callbacks_out_of_order,
            "callback_retries": self.callback_retries,
            "callback_errors": dict(self.callback_errors),
            "callbacks_pending": len(self._tasks),
            "log_entries": len(self._log),
            "log_truncated": self.log_truncated,
        }

    def log(self, after_seq: int = 0) -> list[dict[str, Any]]:
        return [
            {
                "seq": seq,
                "received_at": mono,
                "received_at_wall": wall,
                "attempt_id": attempt_id,
                "to": to,
                "campaign": campaign,
                "duplicate": duplicate,
                "response_status": status,
                "dialect": dialect,
            }
            for seq, mono, wall, attempt_id, to, campaign, duplicate, status, dialect in self._log
            if seq > after_seq
        ]


SIMULATOR_STATE: Final = web.AppKey("simulator_state", SimulatorState)


async def _stats(request: web.Request) -> web.Response:
    return _json(200, request.app[SIMULATOR_STATE].stats())


async def _log(request: web.Request) -> web.Response:
    try:
        after_seq = int(request.query.get("after_seq", "0"))
    except ValueError:
        return _error(400, "invalid_field", "after_seq must be an integer")
    return _json(200, request.app[SIMULATOR_STATE].log(after_seq))


async def _reset(request: web.Request) -> web.Response:
    request.app[SIMULATOR_STATE].reset()
    return _json(200, {"reset": True})


async def _close_state(app: web.Application) -> None:
    await app[SIMULATOR_STATE].close()


def make_app(config: SimulatorConfig, *, clock: Callable[[], float] = time.monotonic) -> web.Application:
    app = web.Application()
    state = app[SIMULATOR_STATE] = SimulatorState(config, clock)
    for dialect in state.dialects.values():
        app.router.add_routes(dialect.routes(state))
    # The simulator's own controls, whichever dialects are mounted.
    app.router.add_get("/v1/stats", _stats)
    app.router.add_get("/v1/log", _log)
    app.router.add_post("/v1/reset", _reset)
    app.on_cleanup.append(_close_state)
    return app


class Simulator:
    """Runs the simulator app on a real socket inside the current event loop."""

    def __init__(
        self, config: SimulatorConfig | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config or SimulatorConfig()
        self.app = make_app(self.config, clock=clock)
        self.state = self.app[SIMULATOR_STATE]
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        # No access log: at benchmark rates one stdout line per request costs more than the request.
        # A short shutdown timeout: only injected slow responses are ever in flight for long, and a test's
        # teardown should not wait aiohttp's default minute for them.
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        self._runner = runner
        bound_host, bound_port = cast(tuple[str, int], runner.addresses[0][:2])
        self.base_url = f"http://{_url_host(bound_host)}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def stats(self) -> dict[str, Any]:
        return self.state.stats()

    def log(self, after_seq: int = 0) -> list[dict[str, Any]]:
        return self.state.log(after_seq)

    def lookup(self, attempt_id: str) -> dict[str, Any] | None:
        return self.state.lookup(attempt_id)

    def reset(self) -> None:
        self.state.reset()

    async def drain_callbacks(self) -> None:
        await self.state.drain_callbacks()

    async def wait_ended(self, attempt_id: str) -> dict[str, Any]:
        return await self.state.wait_ended(attempt_id)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _freeze_survivors(every_seconds: float = 2.0) -> None:
    while True:
        await asyncio.sleep(every_seconds)
        gc.collect(1)
        gc.freeze()


async def run_forever(config: SimulatorConfig, host: str = "127.0.0.1", port: int = 8099) -> None:
    """Serve until cancelled; the caller owns the loop and signal handling."""
    simulator = Simulator(config)
    base_url = await simulator.start(host, port)
    print(f"provider simulator listening on {base_url}", file=sys.stderr, flush=True)
    # Every call record lives on for lookups, so the heap only grows; a full garbage collection
    # rescans all of it, and at a few hundred thousand calls those pauses ate most of a core
    # (py-spy: 60% of samples at allocation sites in aiohttp). Freezing what survived the young
    # collections keeps each collection proportional to recent garbage, not to the history.
    freezer = asyncio.create_task(_freeze_survivors())
    try:
        await asyncio.Event().wait()
    finally:
        freezer.cancel()
        with contextlib.suppress(Exception):
            await simulator.stop()
