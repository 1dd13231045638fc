from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.outcomes import Outcome, classify
from scheduler.retry import Decision, RetryPolicy, decide, validate_policy

ENDED = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(max_retries=2, retry_wait_seconds=600, provider_error_backoff_seconds=30)


def run(
    outcome: Outcome, before: int = 0, *, policy: RetryPolicy = POLICY, now: datetime = ENDED
) -> Decision:
    return decide(outcome, attempts_consumed_before=before, policy=policy, ended_at=ENDED, now=now)


def test_answered_human_is_final_completed() -> None:
    """A human answer completes the number and consumes the attempt."""
    assert run(Outcome.ANSWERED_HUMAN) == Decision("final", "completed", True, None, 1)


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (Outcome.ANSWERED_FAX, "failed"),
        (Outcome.REJECTED, "failed"),
        (Outcome.INVALID_NUMBER, "failed"),
        (Outcome.BLOCKED, "dnc"),
    ],
)
def test_final_outcomes_set_their_status(outcome: Outcome, status: str) -> None:
    """Final outcomes end the number with their status even with retries left."""
    assert run(outcome) == Decision("final", status, True, None, 1)


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome.BUSY,
        Outcome.NO_ANSWER,
        Outcome.CONGESTION,
        Outcome.CANCELED,
        Outcome.UNKNOWN,
        Outcome.ANSWERED_MACHINE,
    ],
)
def test_retryable_outcome_waits_retry_wait(outcome: Outcome) -> None:
    """A retryable outcome with retries left consumes an attempt and waits retry_wait_seconds."""
    assert run(outcome, 1) == Decision("retry", "retry_wait", True, ENDED + timedelta(seconds=600), 2)


def test_last_allowed_attempt_exhausts() -> None:
    """With max_retries=2 the third consumed attempt exhausts the number as failed."""
    assert run(Outcome.BUSY, 2) == Decision("exhausted", "failed", True, None, 3)


def test_zero_retries_exhausts_after_first_attempt() -> None:
    """max_retries=0 allows exactly one attempt."""
    policy = RetryPolicy(max_retries=0, retry_wait_seconds=60)
    assert run(Outcome.NO_ANSWER, policy=policy).kind == "exhausted"


@pytest.mark.parametrize("outcome", [Outcome.PROVIDER_ERROR, Outcome.ACCOUNT_ERROR])
def test_provider_and_account_errors_requeue_without_consuming(outcome: Outcome) -> None:
    """Our own failures requeue after the backoff and leave the attempt count alone, even when exhausted."""
    assert run(outcome, 1) == Decision("requeue", "retry_wait", False, ENDED + timedelta(seconds=30), 1)
    assert run(outcome, 3).kind == "requeue"


def test_late_processing_waits_from_now() -> None:
    """A result processed late still waits retry_wait from now, so the redial is not immediate."""
    late = ENDED + timedelta(hours=1)
    assert run(Outcome.BUSY, now=late).next_attempt_at == late + timedelta(seconds=600)
    assert run(Outcome.PROVIDER_ERROR, now=late).next_attempt_at == late + timedelta(seconds=30)


def test_clock_behind_end_waits_from_end() -> None:
    """If now is before ended_at (clock skew), the wait still counts from the end of the call."""
    early = ENDED - timedelta(minutes=5)
    assert run(Outcome.BUSY, now=early).next_attempt_at == ENDED + timedelta(seconds=600)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_retries": -1, "retry_wait_seconds": 60}, "max_retries must be between 0 and 100, got -1"),
        ({"max_retries": 101, "retry_wait_seconds": 60}, "max_retries must be between 0 and 100, got 101"),
        ({"max_retries": 1, "retry_wait_seconds": -1}, "retry_wait_seconds must not be negative"),
        (
            {"max_retries": 1, "retry_wait_seconds": 60, "provider_error_backoff_seconds": 0},
            "provider_error_backoff_seconds must be at least 1",
        ),
    ],
)
def test_impossible_policies_are_rejected(kwargs: dict[str, int], message: str) -> None:
    """Impossible settings raise ValueError both from validate_policy and from RetryPolicy."""
    full = {"provider_error_backoff_seconds": 30, **kwargs}
    with pytest.raises(ValueError, match=message):
        validate_policy(**full)
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**full)


def test_boundary_policies_are_accepted() -> None:
    """max_retries 0 and 100, and a zero retry wait, are valid settings."""
    RetryPolicy(max_retries=0, retry_wait_seconds=0)
    RetryPolicy(max_retries=100, retry_wait_seconds=0, provider_error_backoff_seconds=1)


def test_negative_attempt_count_is_rejected() -> None:
    """A negative attempts_consumed_before is a caller bug and raises."""
    with pytest.raises(ValueError, match="attempts_consumed_before"):
        run(Outcome.BUSY, -1)


@pytest.mark.parametrize("field", ["ended_at", "now"])
def test_naive_times_are_rejected(field: str) -> None:
    """Naive datetimes raise instead of being compared with aware ones."""
    times = {"ended_at": ENDED, "now": ENDED, field: datetime(2024, 6, 3, 12)}
    with pytest.raises(ValueError, match=f"{field} must be timezone-aware"):
        decide(Outcome.BUSY, attempts_consumed_before=0, policy=POLICY, **times)


policies = st.builds(
    RetryPolicy,
    max_retries=st.integers(0, 10),
    retry_wait_seconds=st.integers(0, 86_400),
    provider_error_backoff_seconds=st.integers(1, 3_600),
    amd_policy=st.sampled_from(["retry", "final"]),
)


@settings(max_examples=200)
@given(
    policy=policies,
    outcomes=st.lists(st.sampled_from(list(Outcome)), min_size=1, max_size=60),
    lateness=st.lists(st.integers(-600, 7_200), min_size=60, max_size=60),
)
def test_attempts_never_exceed_budget_and_waits_are_respected(
    policy: RetryPolicy, outcomes: list[Outcome], lateness: list[int]
) -> None:
    """Any outcome sequence stays within 1 + max_retries attempts, and every wait is respected."""
    attempts = 0
    ended = ENDED
    for outcome, late in zip(outcomes, lateness, strict=False):
        now = ended + timedelta(seconds=late)
        d = decide(outcome, attempts_consumed_before=attempts, policy=policy, ended_at=ended, now=now)
        assert d.attempts_after == attempts + int(classify(outcome).consumes_attempt)
        assert d.attempts_after <= 1 + policy.max_retries
        attempts = d.attempts_after
        if d.kind not in ("retry", "requeue"):
            assert d.next_attempt_at is None
            assert d.number_status in ("completed", "failed", "dnc")
            return
        assert d.next_attempt_at is not None
        wait = policy.retry_wait_seconds if d.kind == "retry" else policy.provider_error_backoff_seconds
        assert d.next_attempt_at >= ended + timedelta(seconds=wait)
        assert d.next_attempt_at >= now + timedelta(seconds=wait)
        ended = d.next_attempt_at + timedelta(seconds=45)
