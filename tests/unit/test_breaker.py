"""The per-account circuit breaker."""

from __future__ import annotations

import datetime as dt

from dialer.breaker import CircuitBreaker

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_opens_after_threshold_consecutive_failures() -> None:
    """N consecutive failures open the circuit; a success in between resets the count."""
    b = CircuitBreaker("acct", threshold=3, cooldown_seconds=10)
    b.failure("503", T0)
    b.failure("503", T0)
    b.success()
    b.failure("503", T0)
    b.failure("503", T0)
    assert b.admits(T0)
    b.failure("timeout", T0)
    assert not b.admits(T0)
    assert b.reason == "timeout"


def test_half_open_probe_closes_or_reopens() -> None:
    """After the cooldown one probe is admitted; success closes, failure re-opens for another cooldown."""
    b = CircuitBreaker("acct", threshold=1, cooldown_seconds=10)
    b.failure("503", T0)
    assert not b.admits(T0 + dt.timedelta(seconds=9.9))
    assert b.admits(T0 + dt.timedelta(seconds=10))
    assert b.probing
    b.failure("503", T0 + dt.timedelta(seconds=10))
    assert not b.admits(T0 + dt.timedelta(seconds=15))
    assert b.admits(T0 + dt.timedelta(seconds=20))
    b.success()
    assert b.state == "closed"
    assert not b.probing


def test_account_error_trips_at_once() -> None:
    """An account error opens the circuit on the first occurrence."""
    b = CircuitBreaker("acct", threshold=100, cooldown_seconds=10)
    b.failure("401 bad credentials", T0, trip=True)
    assert not b.admits(T0)
