"""What happens to a number after one attempt ends."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from scheduler.outcomes import Outcome, OutcomeClass, classify

# More retries than this is a typo, not a campaign: at the shortest sensible wait it would ring one
# person all day.
MAX_RETRIES_LIMIT = 100

DecisionKind = Literal["final", "retry", "exhausted", "requeue"]
AmdPolicy = Literal["retry", "final"]


def validate_policy(max_retries: int, retry_wait_seconds: int, provider_error_backoff_seconds: int) -> None:
    """Raise ValueError for settings no campaign can mean."""
    if not 0 <= max_retries <= MAX_RETRIES_LIMIT:
        raise ValueError(f"max_retries must be between 0 and {MAX_RETRIES_LIMIT}, got {max_retries}")
    if retry_wait_seconds < 0:
        raise ValueError(f"retry_wait_seconds must not be negative, got {retry_wait_seconds}")
    # Zero would requeue a number into the same failing provider in a hot loop, and provider
    # errors consume no attempt, so nothing else would ever stop it.
    if provider_error_backoff_seconds < 1:
        raise ValueError(
            f"provider_error_backoff_seconds must be at least 1, got {provider_error_backoff_seconds}"
        )


@dataclass(frozen=True)
class RetryPolicy:
    """max_retries counts redials after the first attempt, so a number gets 1 + max_retries attempts.

    amd_policy: what an answering machine does to the number — "retry" after retry_wait like no
    answer (consuming an attempt), or "final": completed, a message was left.
    """

    max_retries: int
    retry_wait_seconds: int
    provider_error_backoff_seconds: int = 30
    amd_policy: AmdPolicy = "retry"

    def __post_init__(self) -> None:
        validate_policy(self.max_retries, self.retry_wait_seconds, self.provider_error_backoff_seconds)


@dataclass(frozen=True)
class Decision:
    kind: DecisionKind
    number_status: str
    consumed: bool
    next_attempt_at: datetime | None
    attempts_after: int


def decide(
    outcome: Outcome,
    *,
    attempts_consumed_before: int,
    policy: RetryPolicy,
    ended_at: datetime,
    now: datetime,
) -> Decision:
    """The number's next status and, when it will be dialed again, the earliest time for it."""
    if attempts_consumed_before < 0:
        raise ValueError(f"attempts_consumed_before must not be negative, got {attempts_consumed_before}")
    for name, value in (("ended_at", ended_at), ("now", now)):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    cls = classify(outcome)
    if outcome is Outcome.ANSWERED_MACHINE and policy.amd_policy == "final":
        cls = OutcomeClass(final=True, consumes_attempt=True, final_status="completed")
    consumed = cls.consumes_attempt
    attempts_after = attempts_consumed_before + int(consumed)
    # Results can be processed late (a webhook retried, a reconciler catching up): waiting from
    # whichever is later keeps a redial from going out immediately, and never before the callee
    # has had the full wait since the call they actually received.
    base = max(ended_at, now)
    if cls.final:
        return Decision("final", cls.final_status, consumed, None, attempts_after)
    if not consumed:
        backoff = timedelta(seconds=policy.provider_error_backoff_seconds)
        return Decision("requeue", "retry_wait", consumed, base + backoff, attempts_after)
    if attempts_after >= 1 + policy.max_retries:
        return Decision("exhausted", cls.final_status, consumed, None, attempts_after)
    wait = timedelta(seconds=policy.retry_wait_seconds)
    return Decision("retry", "retry_wait", consumed, base + wait, attempts_after)
