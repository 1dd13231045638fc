"""A circuit breaker per provider account.

After `threshold` consecutive start failures the account is open: the claim skips its campaigns,
so numbers stay queued instead of being burnt on a provider that is down. After `cooldown` one
probe claim is let through (half-open); a success closes the circuit, a failure re-opens it.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import metrics

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(self, provider: str, *, threshold: int, cooldown_seconds: float) -> None:
        self.provider = provider
        self.threshold = threshold
        self.cooldown = dt.timedelta(seconds=cooldown_seconds)
        self.state: State = "closed"
        self.failures = 0
        self.reason = ""
        self.opened_at: dt.datetime | None = None
        self._gauge = metrics.CIRCUIT_OPEN.labels(provider)
        self._gauge.set(0)

    def _move(self, state: State) -> None:
        if state != self.state:
            self.state = state
            metrics.CIRCUIT_TRANSITIONS.labels(self.provider, state).inc()
            self._gauge.set(0 if state == "closed" else 1)

    def admits(self, now: dt.datetime) -> bool:
        """May the next claim include this account's campaigns?"""
        if self.state == "open" and self.opened_at is not None and now - self.opened_at >= self.cooldown:
            self._move("half_open")
        return self.state != "open"

    @property
    def probing(self) -> bool:
        return self.state == "half_open"

    def success(self) -> None:
        self.failures = 0
        self.reason = ""
        self._move("closed")

    def failure(self, reason: str, now: dt.datetime, *, trip: bool = False) -> None:
        """Count a failure; `trip` opens at once (an account error will not heal by retrying)."""
        self.failures += 1
        self.reason = reason
        if trip or self.state == "half_open" or self.failures >= self.threshold:
            self.opened_at = now
            self._move("open")
