"""The pacing settings as campaigns store them: validation, and the copies outside scheduler/pacing.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from pathlib import Path

import pytest

from dialer import openapi, pacer
from scheduler.pacing import Estimator, PacingMode, PacingSettings

T0 = dt.datetime(2026, 11, 25, 15, 0, tzinfo=dt.UTC)


def test_overrides_build_the_campaigns_settings() -> None:
    """Stored overrides and the mode column make one PacingSettings."""
    s = pacer.pacing_settings("progressive", {"max_dial_ratio": 2, "min_observations": 10})
    assert s.mode is PacingMode.PROGRESSIVE and s.max_dial_ratio == 2 and s.min_observations == 10


@pytest.mark.parametrize(
    "overrides",
    [
        {"bogus": 1},
        {"mode": "predictive"},
        {"min_observations": 2.5},
        {"max_dial_ratio": True},
        {"max_dial_ratio": "2"},
        {"max_dial_ratio": 0.5},
        {"warm_up_seconds": 10**12},
    ],
)
def test_impossible_overrides_are_refused(overrides: dict[str, object]) -> None:
    """Unknown keys, wrong types and values PacingSettings refuses all raise ValueError."""
    with pytest.raises(ValueError, match=r"."):
        pacer.pacing_settings("predictive", overrides)


def test_the_openapi_document_lists_every_pacing_setting() -> None:
    """The API's pacing_settings schema names exactly PacingSettings' fields (but mode)."""
    fields = {f.name for f in dataclasses.fields(PacingSettings)} - {"mode"}
    assert set(openapi._PACING_SETTINGS) == fields


def test_sql_defaults_match_pacing_settings() -> None:
    """The bridge and trigger fall back to PacingSettings' own abandon grace and wrap-up."""
    sql = (Path(__file__).parents[2] / "queue" / "migrations" / "0008_agents.sql").read_text()
    d = PacingSettings()
    assert f"'abandon_after_seconds')::double precision, {d.abandon_after_seconds})" in sql
    assert f"'wrap_up_seconds')::double precision, {d.wrap_up_seconds})" in sql


def test_feed_counts_each_event_once_and_forgets_finished_attempts() -> None:
    """Feeding the same rows twice adds nothing; an attempt done and older than the margin is dropped."""
    est = Estimator(PacingSettings())
    aid = uuid.uuid4()
    row = {
        "id": aid,
        "state": "ended",
        "outcome": "answered_human",
        "claimed_at": T0,
        "answered_at": T0 + dt.timedelta(seconds=5),
        "ended_at": T0 + dt.timedelta(seconds=65),
        "bridged_at": T0 + dt.timedelta(seconds=5),
        "abandoned_at": None,
        "agent_released_at": T0 + dt.timedelta(seconds=70),
    }
    now = T0 + dt.timedelta(seconds=71)
    seen, answers, resolved = pacer.feed(est, [row], {}, now, wrap_up_seconds=5.0, margin_seconds=100)
    assert (answers, resolved) == (1, 1) and seen == {str(aid): 0b101011}
    again, answers, resolved = pacer.feed(est, [row], seen, now, wrap_up_seconds=5.0, margin_seconds=100)
    assert (answers, resolved) == (0, 0) and again == seen
    e = est.estimates(now.timestamp())
    assert e.answered_in_window == 1 and e.handled_in_window == 1 and e.attempts_in_window == 1
    later, _, _ = pacer.feed(est, [row], again, now, wrap_up_seconds=5.0, margin_seconds=10)
    assert later == {}
