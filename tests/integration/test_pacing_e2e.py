"""Progressive and predictive pacing end to end: real `dialer worker` processes, the provider
simulator answering, talking and hanging up, and the invariants read back from dialer_attempt."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import signal
from collections.abc import Iterable
from typing import Any

import asyncpg
import pytest

from dialer import campaigns
from tests.factories import add_numbers, make_campaign
from tests.workers import reap, simulator, spawn, wait_ready, wait_until

pytestmark = pytest.mark.slow

AGENTS = 3
GRACE = 1.0  # abandon_after_seconds, real seconds (the workers run on the system clock)
MAX_DIAL_RATIO = 3.0
RUN_SECONDS = 18.0
# A claim reads its clock just before taking the campaign lock; a tick may commit in between, so a
# claim's claimed_at can precede the tick that granted it by a few milliseconds. Interval checks
# start each line this much later than claimed_at (it does not apply to bridging: bridged_at is
# read under the same lock as the busy count).
CLAIM_CLOCK_SLACK = dt.timedelta(milliseconds=100)
_FAR = dt.datetime.max.replace(tzinfo=dt.UTC)


def max_overlap(intervals: Iterable[tuple[dt.datetime, dt.datetime]]) -> int:
    """Most intervals [start, end) open at any one instant (an end at t closes before a start at t)."""
    points = sorted([(s, 1) for s, e in intervals if e > s] + [(e, -1) for s, e in intervals if e > s])
    best = current = 0
    for _, delta in sorted(points, key=lambda p: (p[0], p[1])):
        current += delta
        best = max(best, current)
    return best


def line_end(a: asyncpg.Record) -> dt.datetime:
    """When a call stops holding a line or an agent: agent release if bridged, else abandonment or its end."""
    if a["bridged_at"] is not None:
        return a["agent_released_at"] or _FAR
    ends = [t for t in (a["abandoned_at"], a["ended_at"]) if t is not None]
    return min(ends) if ends else _FAR


def no_callee_window() -> dict[str, Any]:
    # The compliance gate (callee-local 08:00-21:00) would hold these numbers at night; this test
    # is about pacing, whatever the hour it runs at.
    names = {f.name for f in dataclasses.fields(campaigns.CampaignSpec)}
    return {"callee_window_start": None, "callee_window_end": None} if "callee_window_start" in names else {}


async def test_agents_are_never_oversubscribed_and_predictive_dials_ahead(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Two workers, a predictive and a progressive campaign of 3 agents each: bridged calls never
    exceed agents, progressive never has more lines out than free agents (and never abandons),
    predictive dials ahead of its agents, and its abandonment is recorded and bounded."""
    async with simulator(
        time_scale=0.1,  # ring 0.2-1 s, talk about 2 s, no-answer 0.5 s, in real time
        intermediate_events=True,  # answered events: bridging needs them
        answer_probability=0.5,
        busy_probability=0.2,
        no_answer_probability=0.2,
        failed_probability=0.1,
        ring_min_seconds=2.0,
        ring_max_seconds=10.0,
        talk_mean_seconds=20.0,
        talk_max_seconds=60.0,
    ) as sim:
        now = dt.datetime.now(dt.UTC)
        common: dict[str, Any] = {
            "now": now,
            "agents_logged_in": AGENTS,
            "ring_timeout_seconds": 5,
            "max_retries": 0,
            "max_concurrent_calls": 50,
            "max_calls_per_second": 50,
            **no_callee_window(),
        }
        fast = {
            "abandon_after_seconds": GRACE,
            "min_observations": 5,
            "warm_up_seconds": 0,
            "window_seconds": 300,
        }
        pred = await make_campaign(
            conn,
            name="pred",
            pacing_mode="predictive",
            pacing_settings={**fast, "max_dial_ratio": MAX_DIAL_RATIO},
            **common,
        )
        prog = await make_campaign(
            conn, name="prog", pacing_mode="progressive", pacing_settings=fast, **common
        )
        await add_numbers(conn, pred["id"], 400, now=now)
        await add_numbers(conn, prog["id"], 400, now=now, offset=5000)

        workers = [spawn(dsn, sim.base_url) for _ in range(2)]
        with reap(workers):
            await wait_ready(workers)
            await asyncio.sleep(RUN_SECONDS)  # real calls in real time: nothing to poll for
            await conn.execute("UPDATE dialer_campaign SET status = 'paused'")
            await wait_until(
                conn, "SELECT count(*) = 0 FROM dialer_attempt WHERE state <> 'ended'", timeout=20
            )
            for w in workers:
                w.signal(signal.SIGTERM)
            for w in workers:
                assert await asyncio.to_thread(w.proc.wait, 15) == 0

    attempts = await conn.fetch("SELECT * FROM dialer_attempt ORDER BY claimed_at")
    by_campaign = {cid: [a for a in attempts if a["campaign_id"] == cid] for cid in (pred["id"], prog["id"])}
    p_rows, g_rows = by_campaign[pred["id"]], by_campaign[prog["id"]]
    assert len(p_rows) > 20 and len(g_rows) > 10, (len(p_rows), len(g_rows))

    for rows in (p_rows, g_rows):
        bridged = [(a["bridged_at"], a["agent_released_at"] or _FAR) for a in rows if a["bridged_at"]]
        assert bridged, "nothing was bridged"
        assert max_overlap(bridged) <= AGENTS, "more calls bridged than agents at one time"
        for a in rows:
            if a["outcome"] == "answered_human" and a["answered_at"] is not None:
                waited = a["ended_at"] - a["answered_at"]
                # Every live answer is either bridged, abandoned at the grace, or hung up within it.
                assert a["bridged_at"] or a["abandoned_at"] or waited < dt.timedelta(seconds=GRACE), a
            if a["abandoned_at"] is not None:
                assert a["abandoned_at"] == a["answered_at"] + dt.timedelta(seconds=GRACE)

    lines = [(a["claimed_at"] + CLAIM_CLOCK_SLACK, line_end(a)) for a in g_rows]
    assert max_overlap(lines) <= AGENTS, "progressive had more lines out than agents"
    assert not [a for a in g_rows if a["abandoned_at"]], "progressive abandoned a call"

    # Predictive dials ahead of its agents once warmed up: more lines than agents at some instant.
    p_lines = [(a["claimed_at"] + CLAIM_CLOCK_SLACK, line_end(a)) for a in p_rows]
    assert max_overlap(p_lines) > AGENTS, "predictive never dialed ahead of its agents"
    assert max_overlap(p_lines) <= MAX_DIAL_RATIO * AGENTS
    # The rails (fall back to progressive once the rolling rate is over max_abandon_rate) hold the
    # rate at the 3% limit, plus what lines already out when it crossed can add: at most
    # max_dial_ratio x agents of them.
    answered = sum(1 for a in p_rows if a["outcome"] == "answered_human")
    abandoned = sum(1 for a in p_rows if a["abandoned_at"] is not None)
    assert abandoned <= 0.03 * answered + MAX_DIAL_RATIO * AGENTS, (abandoned, answered)
    decision = await conn.fetchval("SELECT pacing_decision FROM dialer_campaign WHERE id = $1", pred["id"])
    assert decision["answered_lifetime"] >= 5 and decision["reason"] in (
        "predictive",
        "max_ratio",
        "over_target_fallback_progressive",
        "emergency_cut",
    ), decision
