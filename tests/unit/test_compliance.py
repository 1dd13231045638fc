"""Compliance settings validation, the answering-machine policy in the retry spec, and DTMF parsing."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from dialer.providers.paycall import steps_dtmf
from scheduler import compliance
from scheduler.outcomes import Outcome
from scheduler.retry import RetryPolicy, decide

ENDED = dt.datetime(2026, 11, 25, 15, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "window"),
    [("0800-2100", (480, 1260)), ("22:00-06:00", (1320, 360)), ("0000-2400", (0, 1440)), ("off", None)],
)
def test_windows_parse_to_minutes(text: str, window: tuple[int, int] | None) -> None:
    """HHMM-HHMM windows become minutes after midnight; 'off' disables the window."""
    assert compliance.parse_window(text) == window


@pytest.mark.parametrize("text", ["0800-0800", "2500-0100", "8-21", "0800-2460"])
def test_bad_windows_are_refused(text: str) -> None:
    """Empty, out-of-range and malformed windows are refused."""
    with pytest.raises(compliance.ComplianceError):
        compliance.parse_window(text)


def test_window_ends_are_set_together() -> None:
    """One end without the other is refused."""
    with pytest.raises(compliance.ComplianceError, match="together"):
        compliance.check_window(480, None)


@pytest.mark.parametrize(
    "value",
    [
        None,
        {"enabled": True, "per_answer_count": {"enabled": True, "count": 100}},
        {"enabled": True, "per_key": {"enabled": True, "key_1": 3, "key_9": 0}},
    ],
)
def test_sendr_auto_stop_shapes_are_accepted(value: Any) -> None:
    """The CALLR Sendr AutoStopConditions shape is accepted as documented."""
    compliance.check_auto_stop(value)


@pytest.mark.parametrize(
    "value",
    [
        [],
        {"enable": True},
        {"per_key": {"key_10": 1}},
        {"per_answer_count": {"count": -1}},
        {"per_answer_count": {"enabled": "yes"}},
    ],
)
def test_malformed_auto_stop_is_refused(value: Any) -> None:
    """Typos and wrong types are refused rather than silently disabling a stop."""
    with pytest.raises(compliance.ComplianceError):
        compliance.check_auto_stop(value)


def test_machine_retries_under_the_retry_policy() -> None:
    """amd_policy retry: an answering machine is redialed after retry_wait, consuming an attempt."""
    d = decide(
        Outcome.ANSWERED_MACHINE,
        attempts_consumed_before=0,
        policy=RetryPolicy(max_retries=2, retry_wait_seconds=600),
        ended_at=ENDED,
        now=ENDED,
    )
    assert (d.kind, d.number_status, d.attempts_after) == ("retry", "retry_wait", 1)


def test_machine_is_final_under_the_final_policy() -> None:
    """amd_policy final: an answering machine completes the number (a message was left)."""
    d = decide(
        Outcome.ANSWERED_MACHINE,
        attempts_consumed_before=0,
        policy=RetryPolicy(max_retries=2, retry_wait_seconds=600, amd_policy="final"),
        ended_at=ENDED,
        now=ENDED,
    )
    assert (d.kind, d.number_status, d.next_attempt_at) == ("final", "completed", None)


@pytest.mark.parametrize(
    ("steps", "keys"),
    [
        ('{"steps": [{"dtmf": "12", "step_name": "foo"}], "invalid": [], "unique_id": "x"}', "12"),
        ({"steps": [{"dtmf": "1"}, {"dtmf": 4}, {"step_name": "bar"}]}, "14"),
        ('{"steps": []}', None),
        ("", None),
        ("not json", None),
        (None, None),
    ],
)
def test_paycall_steps_report_gives_the_pressed_keys(steps: Any, keys: str | None) -> None:
    """The Paycall steps report's dtmf values, in order; anything unreadable means no keys."""
    assert steps_dtmf(steps) == keys
