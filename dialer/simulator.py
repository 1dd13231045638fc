"""A stand-in for a telephony provider's start-call API (dialect "simulator").

It is the far side of the provider edge for the demo, the integration tests and the benchmark, so it
keeps its own books (every start request, live calls per campaign, starts per second) and the tests can
check the dialer's invariants from the provider's side rather than trusting the dialer's own counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import hmac
import math
import random
import re
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, cast

import aiohttp
import orjson
from aiohttp import web

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

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
MAX_ATTEMPT_ID_LENGTH = 64
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
    ring_min_seconds: float = 2.0
    ring_max_seconds: float = 15.0
    talk_mean_seconds: float = 60.0
    talk_max_seconds: float = 1800.0
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
        "duration_seconds",
        "ended_wall",
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
            "started_at": _iso(self.started_wall),
            "answered_at": _iso(self.answered_wall),
            "ended_at": _iso(self.ended_wall),
            "duration_seconds": self.duration_seconds,
            "billsec": self.billsec(),
            "cause_code": self.cause_code,
            "sip_code": self.sip_code,
        }


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


class _BadRequest(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": {"code": code, "message": message, **extra}}),
        content_type="application/json",
    )


def _json(status: int, payload: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


class SimulatorState:
    """Everything the simulator knows; handlers and in-process tests share this one object."""

    def __init__(self, config: SimulatorConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        # Only start-request timestamps (log, per-second maxima, max_cps) read this clock, so a test can
        # pin them; call timers run on the event loop's own clock.
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None
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
    ) -> None:
        self._seq += 1
        if len(self._log) == self._log.maxlen:
            self.log_truncated += 1
        self._log.append(
            (self._seq, received_mono, received_wall, attempt_id, to, campaign, duplicate, status)
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
        for w in (window, self._overall_window):
            while w and now - w[0] >= 1.0:
                w.popleft()
            w.append(now)
        if len(window) > self.max_starts_per_second_by_campaign.get(campaign, 0):
            self.max_starts_per_second_by_campaign[campaign] = len(window)
        if len(self._overall_window) > self.max_starts_per_second:
            self.max_starts_per_second = len(self._overall_window)

    def _choose_outcome(self, to: str) -> tuple[str, float, float]:
        cfg = self.config
        rng = self._outcome_rng
        # Every call draws the same four numbers, so forcing one number leaves the others' outcomes alone.
        u = rng.random()
        ring = rng.uniform(cfg.ring_min_seconds, cfg.ring_max_seconds)
        talk = min(rng.expovariate(1.0 / cfg.talk_mean_seconds), cfg.talk_max_seconds)
        congested = rng.random() < 0.5
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
        return outcome, ring, max(talk, 1.0)

    def _create(self, body: _StartBody, campaign: str, now: float) -> _Call:
        cfg = self.config
        frng = self._fault_rng
        faults = 0
        if cfg.drop_callback_probability and frng.random() < cfg.drop_callback_probability:
            faults |= _F_DROP
        if cfg.duplicate_callback_probability and frng.random() < cfg.duplicate_callback_probability:
            faults |= _F_DUPLICATE
        if cfg.out_of_order_probability and frng.random() < cfg.out_of_order_probability:
            faults |= _F_OUT_OF_ORDER
        outcome, ring, talk = self._choose_outcome(body.to)
        ring = min(ring, float(body.ring_timeout_seconds))
        call = _Call(
            call_id=f"CA{self._id_rng.getrandbits(128):032x}",
            attempt_id=body.attempt_id,
            to=body.to,
            from_=body.from_,
            campaign=campaign,
            callback_url=body.callback_url,
            ring_timeout_seconds=body.ring_timeout_seconds,
            outcome=outcome,
            ring_seconds=ring,
            talk_seconds=talk,
            faults=faults,
        )
        self._calls[call.attempt_id] = call
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
            self._send(call, self._event(call, "ringing", _SEQ_RINGING))
        return call

    async def handle_start(self, request: web.Request) -> web.Response:
        self.start_requests += 1
        if not _authorized(self, request):
            self._reject("unauthorized")
            self._log_request(self.clock(), time.time(), None, None, None, False, 401)
            return _error(401, "unauthorized", "missing or wrong bearer token")
        raw = await request.read()
        # Read the clock only after the last await before the call is created: start times then reach the
        # per-second windows in clock order, which is what keeps their maxima exact.
        now = self.clock()
        wall = time.time()
        cfg = self.config
        try:
            body = _StartBody.parse(raw)
        except _BadRequest as exc:
            self._reject("invalid")
            self._log_request(now, wall, None, None, None, False, 400)
            return _error(400, exc.code, exc.message)
        campaign = body.campaign or NO_CAMPAIGN
        attempt_id = body.attempt_id
        existing = self._calls.get(attempt_id)
        seen = existing is not None

        def refuse(reason: str, status: int) -> None:
            self._reject(reason)
            self._log_request(now, wall, attempt_id, body.to, body.campaign, seen, status)

        if self._over_max_cps(now):
            refuse("max_cps", 429)
            return _error(429, "20429", "Too Many Requests", processed=False)
        frng = self._fault_rng
        if cfg.rate_limit_429_probability and frng.random() < cfg.rate_limit_429_probability:
            refuse("rate_limited", 429)
            return _error(429, "20429", "Too Many Requests", processed=False)
        if cfg.error_5xx_probability and frng.random() < cfg.error_5xx_probability:
            refuse("error_5xx", 503)
            return _error(503, "service_unavailable", "injected failure before the call was created")

        if existing is not None and existing.to != body.to:
            refuse("conflict", 409)
            return _error(409, "attempt_conflict", "attempt_id already used for a different number")
        after_create = bool(
            cfg.error_5xx_after_create_probability and frng.random() < cfg.error_5xx_after_create_probability
        )
        slow = bool(cfg.slow_response_probability and frng.random() < cfg.slow_response_probability)
        if existing is None:
            call = self._create(body, campaign, now)
            status = 201
        else:
            call = existing
            status = 200
            self.duplicate_start_requests += 1
        if after_create:
            self._reject("error_5xx_after_create")
            status = 500
        self._log_request(now, wall, attempt_id, body.to, body.campaign, seen, status)
        # The call already exists while the response is held back: a caller that times out here cannot
        # know whether it was created, which is exactly the ambiguity workers must reconcile.
        if slow and cfg.slow_response_seconds > 0:
            await asyncio.sleep(cfg.slow_response_seconds)
        if after_create:
            return _error(500, "internal_error", "injected failure after the call was created")
        return _json(status, {"call_id": call.call_id, "attempt_id": attempt_id, "status": "queued"})

    def _answer(self, call: _Call) -> None:
        call.status = "in-progress"
        call.answered_wall = time.time()
        call.timer = asyncio.get_running_loop().call_later(
            call.talk_seconds * self.config.time_scale, self._finish, call, "answered"
        )
        if self.config.intermediate_events:
            self._send(call, self._event(call, "in-progress", _SEQ_ANSWERED))

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

        if call.faults & _F_DROP:
            self.callbacks_dropped += 1
        else:
            final = self._event(call, status, _SEQ_FINAL)
            self._send(call, final)
            if call.faults & _F_DUPLICATE:
                self.callbacks_duplicated += 1
                self._send(call, final)
        if call.faults & _F_OUT_OF_ORDER:
            self.callbacks_out_of_order += 1
            self._send(call, self._event(call, "ringing", _SEQ_RINGING))

    def cancel(self, attempt_id: str) -> dict[str, Any] | None:
        """End a not-yet-answered call as canceled; None when it is unknown, answered or over."""
        call = self._live.get(attempt_id)
        if call is None or call.status not in ("queued", "ringing"):
            return None
        if call.timer is not None:
            call.timer.cancel()
        self._finish(call, "canceled", _CANCELED_CODES)
        return call.record()

    def _event(self, call: _Call, status: str, sequence: int) -> tuple[bytes, dict[str, str]]:
        if sequence == _SEQ_RINGING and call.ringing_event_id is not None:
            event_id = call.ringing_event_id
        else:
            event_id = str(uuid.UUID(int=self._id_rng.getrandbits(128), version=4))
            if sequence == _SEQ_RINGING:
                call.ringing_event_id = event_id
        final = sequence == _SEQ_FINAL
        answered = call.answered_wall is not None
        payload = {
            "event_id": event_id,
            "attempt_id": call.attempt_id,
            "call_id": call.call_id,
            "status": status,
            "answered": answered,
            "answered_at": _iso(call.answered_wall),
            "started_at": _iso(call.started_wall),
            "ended_at": _iso(call.ended_wall) if final else None,
            "duration_seconds": call.duration_seconds if final else 0.0,
            "billsec": call.billsec() if final else 0,
            "cause_code": call.cause_code if final else None,
            "sip_code": call.sip_code if final else None,
            "sequence": sequence,
        }
        body = orjson.dumps(payload)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.config.callback_secret, body),
            TIMESTAMP_HEADER: str(int(time.time())),
        }
        return body, headers

    def _send(self, call: _Call, event: tuple[bytes, dict[str, str]]) -> None:
        # Chained per call so a call's events leave in the order generated; injected reordering is then
        # the only reordering, which keeps the fault tests deterministic.
        task = asyncio.get_running_loop().create_task(self._deliver(call.delivery, call.callback_url, event))
        call.delivery = task
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._delivered, call))

    def _delivered(self, call: _Call, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        # Drop the finished task so millions of ended calls do not each pin one.
        if call.delivery is task:
            call.delivery = None

    async def _deliver(
        self, previous: asyncio.Task[None] | None, url: str, event: tuple[bytes, dict[str, str]]
    ) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait((previous,))
        body, headers = event
        cfg = self.config
        session = self._client()
        for attempt in range(1, cfg.callback_max_attempts + 1):
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    if 200 <= resp.status < 300:
                        self.callbacks_sent += 1
                        return
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            if attempt < cfg.callback_max_attempts:
                self.callback_retries += 1
                await asyncio.sleep(cfg.callback_retry_backoff_seconds * 2 ** (attempt - 1))
        # Left for the worker's sweeper, which reconciles through GET /v1/calls/by-attempt.
        self.callbacks_failed += 1

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            cfg = self.config
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=cfg.callback_max_connections),
                timeout=aiohttp.ClientTimeout(total=cfg.callback_timeout_seconds),
            )
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
            }
            for seq, mono, wall, attempt_id, to, campaign, duplicate, status in self._log
            if seq > after_seq
        ]


class _StartBody:
    __slots__ = ("attempt_id", "callback_url", "campaign", "from_", "ring_timeout_seconds", "to")

    def __init__(
        self,
        attempt_id: str,
        to: str,
        from_: str | None,
        ring_timeout_seconds: int,
        callback_url: str,
        campaign: str | None,
    ) -> None:
        self.attempt_id = attempt_id
        self.to = to
        self.from_ = from_
        self.ring_timeout_seconds = ring_timeout_seconds
        self.callback_url = callback_url
        self.campaign = campaign

    @classmethod
    def parse(cls, raw: bytes) -> _StartBody:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _BadRequest("invalid_json", "body is not valid JSON") from None
        if not isinstance(data, dict):
            raise _BadRequest("invalid_json", "body must be a JSON object")
        for name in ("attempt_id", "to", "ring_timeout_seconds", "callback_url"):
            if data.get(name) is None:
                raise _BadRequest("missing_field", f"{name} is required")
        attempt_id = data["attempt_id"]
        if not isinstance(attempt_id, str) or not 0 < len(attempt_id) <= MAX_ATTEMPT_ID_LENGTH:
            raise _BadRequest("invalid_field", f"attempt_id must be a string of 1..{MAX_ATTEMPT_ID_LENGTH}")
        to = data["to"]
        if not isinstance(to, str) or not E164.match(to):
            raise _BadRequest("invalid_number", "to must be an E.164 number such as +15551234567")
        ring_timeout = data["ring_timeout_seconds"]
        # bool is an int subclass; true must not pass as a one-second timeout.
        if type(ring_timeout) is not int or not 1 <= ring_timeout <= 600:
            raise _BadRequest("invalid_field", "ring_timeout_seconds must be an integer within 1..600")
        callback_url = data["callback_url"]
        if not isinstance(callback_url, str) or not callback_url.startswith(("http://", "https://")):
            raise _BadRequest("invalid_field", "callback_url must be an http(s) URL")
        for name in ("from", "dtmf"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise _BadRequest("invalid_field", f"{name} must be a string or null")
        metadata = data.get("metadata")
        campaign: str | None = None
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise _BadRequest("invalid_field", "metadata must be an object")
            campaign = metadata.get("campaign")
            if campaign is not None and not isinstance(campaign, str):
                raise _BadRequest("invalid_field", "metadata.campaign must be a string")
        return cls(attempt_id, to, data.get("from"), ring_timeout, callback_url, campaign)


SIMULATOR_STATE: Final = web.AppKey("simulator_state", SimulatorState)


def _authorized(state: SimulatorState, request: web.Request) -> bool:
    auth = request.headers.get("Authorization", "")
    return auth.startswith("Bearer ") and hmac.compare_digest(
        auth[7:].encode(), state.config.api_key.encode()
    )


async def _start_call(request: web.Request) -> web.Response:
    return await request.app[SIMULATOR_STATE].handle_start(request)


async def _by_attempt(request: web.Request) -> web.Response:
    state = request.app[SIMULATOR_STATE]
    if not _authorized(state, request):
        return _error(401, "unauthorized", "missing or wrong bearer token")
    record = state.lookup(request.match_info["attempt_id"])
    if record is None:
        return _error(404, "not_found", "no start request was received for this attempt_id")
    return _json(200, record)


async def _cancel(request: web.Request) -> web.Response:
    state = request.app[SIMULATOR_STATE]
    if not _authorized(state, request):
        return _error(401, "unauthorized", "missing or wrong bearer token")
    attempt_id = request.match_info["attempt_id"]
    record = state.cancel(attempt_id)
    if record is not None:
        return _json(200, record)
    if state.lookup(attempt_id) is None:
        return _error(404, "not_found", "no start request was received for this attempt_id")
    return _error(409, "not_cancelable", "only queued or ringing calls can be canceled")


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
    app[SIMULATOR_STATE] = SimulatorState(config, clock)
    app.router.add_post("/v1/calls", _start_call)
    app.router.add_get("/v1/calls/by-attempt/{attempt_id}", _by_attempt)
    app.router.add_post("/v1/calls/by-attempt/{attempt_id}/cancel", _cancel)
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


async def run_forever(config: SimulatorConfig, host: str = "127.0.0.1", port: int = 8099) -> None:
    """Serve until cancelled; the caller owns the loop and signal handling."""
    simulator = Simulator(config)
    base_url = await simulator.start(host, port)
    print(f"provider simulator listening on {base_url}", file=sys.stderr, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await simulator.stop()
