"""The claim and the flush at scale (migration 0013). One claim over many campaigns dials every
campaign's numbers with one statement after the walk, so these pin down that each row still carries
its own campaign's settings and that each campaign's limits, budget and bookkeeping hold as when it
was dialed alone; that finishing a campaign reads indexes only; and that the flush finds attempts by
key whatever statistics its cached plans were made with."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg

from dialer.providers.base import CallEvent
from dialer.sql import Q
from dialer.worker import apply_outcomes
from scheduler.outcomes import Outcome
from tests.factories import NOW, add_numbers, make_campaign, open_window

WORKER = uuid.uuid4()


async def claim(conn: asyncpg.Connection, now: dt.datetime, limit: int = 100) -> list[asyncpg.Record]:
    return list(await conn.fetch(Q.claim, WORKER, limit, now, 30, []))


async def test_each_row_carries_its_own_campaigns_settings(conn: asyncpg.Connection) -> None:
    """Three campaigns with different providers, ring timeouts, caller ids and rates in one claim."""
    specs = {
        "a": {
            "provider": "alpha",
            "ring_timeout_seconds": 20,
            "caller_id": "+14155550100",
            "max_calls_per_second": 3,
        },
        "b": {
            "provider": "beta",
            "ring_timeout_seconds": 45,
            "caller_id": "+12125550199",
            "max_calls_per_second": 5,
        },
        "c": {"provider": "gamma", "ring_timeout_seconds": 60, "caller_id": None, "max_calls_per_second": 2},
    }
    ids = {}
    for i, (name, spec) in enumerate(specs.items()):
        row = await make_campaign(conn, name=name, **spec)
        await add_numbers(conn, row["id"], 10, offset=100 * i)
        await open_window(conn, row["id"])
        ids[name] = row["id"]

    rows = await claim(conn, NOW)

    by_campaign: dict[str, list[asyncpg.Record]] = {}
    for r in rows:
        by_campaign.setdefault(r["campaign"], []).append(r)
    assert {name: len(rs) for name, rs in by_campaign.items()} == {"a": 3, "b": 5, "c": 2}
    for name, rs in by_campaign.items():
        spec = specs[name]
        for r in rs:
            assert r["campaign_id"] == ids[name]
            assert (r["provider"], r["ring_timeout_seconds"], r["caller_id"]) == (
                spec["provider"],
                spec["ring_timeout_seconds"],
                spec["caller_id"],
            )
            assert r["attempt_no"] == 1
    # The attempts and numbers written match what was returned, campaign by campaign.
    attempts = await conn.fetch(
        "SELECT a.id, a.campaign_id, a.provider, a.state, a.deadline_at, n.campaign_id AS number_campaign,"
        "       n.status, n.dials"
        "  FROM dialer_attempt a JOIN dialer_number n ON n.id = a.number_id"
    )
    assert {a["id"] for a in attempts} == {r["attempt_id"] for r in rows}
    timeout = {name: spec["ring_timeout_seconds"] for name, spec in specs.items()}
    for a in attempts:
        name = next(n for n, i in ids.items() if i == a["campaign_id"])
        assert a["number_campaign"] == a["campaign_id"]
        assert (a["provider"], a["state"], a["status"], a["dials"]) == (
            specs[name]["provider"],
            "dialing",
            "in_progress",
            1,
        )
        assert a["deadline_at"] == NOW + dt.timedelta(seconds=30 + timeout[name])
    # Every campaign served was marked served; the next claim in the same second takes nothing.
    served = await conn.fetch("SELECT name, last_claimed_at FROM dialer_campaign ORDER BY name")
    assert [(r["name"], r["last_claimed_at"]) for r in served] == [("a", NOW), ("b", NOW), ("c", NOW)]
    assert await claim(conn, NOW + dt.timedelta(milliseconds=500)) == []


async def test_a_short_claim_stops_mid_walk_and_marks_only_the_campaigns_it_served(
    conn: asyncpg.Connection,
) -> None:
    """A claim of 7 over campaigns allowing 3 each takes 3, 3 and 1; the untouched campaign is first next time."""
    for i, name in enumerate(("a", "b", "c", "d")):
        row = await make_campaign(conn, name=name, max_calls_per_second=3)
        await add_numbers(conn, row["id"], 10, offset=100 * i)
        await open_window(conn, row["id"])
    rows = await claim(conn, NOW, limit=7)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["campaign"]] = counts.get(r["campaign"], 0) + 1
    assert sorted(counts.values()) == [1, 3, 3]
    untouched = await conn.fetchval("SELECT name FROM dialer_campaign WHERE last_claimed_at IS NULL")
    assert untouched not in counts
    nxt = await claim(conn, NOW + dt.timedelta(seconds=1), limit=3)
    assert {r["campaign"] for r in nxt} == {untouched}


async def test_agent_budgets_are_spent_per_campaign(conn: asyncpg.Connection) -> None:
    """Two agent campaigns granted 4 and 2 dial 4 and 2 in one claim, and their budgets drop to 0."""
    for i, (name, budget) in enumerate((("p", 4), ("q", 2))):
        row = await make_campaign(conn, name=name, pacing_mode="progressive", agents_logged_in=5)
        await add_numbers(conn, row["id"], 10, offset=100 * i)
        await open_window(conn, row["id"])
        await conn.execute("UPDATE dialer_campaign SET pacing_budget = $2 WHERE id = $1", row["id"], budget)
    rows = await claim(conn, NOW)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["campaign"]] = counts.get(r["campaign"], 0) + 1
    assert counts == {"p": 4, "q": 2}
    budgets = await conn.fetch("SELECT name, pacing_budget FROM dialer_campaign ORDER BY name")
    assert [(r["name"], r["pacing_budget"]) for r in budgets] == [("p", 0), ("q", 0)]
    assert await claim(conn, NOW + dt.timedelta(seconds=5)) == []


async def test_a_campaign_finishes_only_with_nothing_waiting_or_in_flight(conn: asyncpg.Connection) -> None:
    """finish_campaigns reads waiting numbers through the due index and calls in flight through
    their live attempts: a call in flight, or a retry due later, keeps the campaign running."""
    camp = await make_campaign(conn, name="f", max_retries=1)
    await add_numbers(conn, camp["id"], 1)
    await open_window(conn, camp["id"])

    async def finished(now: dt.datetime) -> bool:
        return bool(await conn.fetch(Q.finish_campaigns, now))

    [row] = await claim(conn, NOW)
    assert not await finished(NOW)  # in flight
    busy = CallEvent(
        attempt_id=str(row["attempt_id"]), call_id="c", kind="ended", outcome=Outcome.BUSY, ended_at=NOW
    )
    await apply_outcomes(conn, [busy], NOW, 30)
    assert not await finished(NOW)  # a retry waits for retry_wait_seconds
    later = NOW + dt.timedelta(minutes=5)
    [row] = await claim(conn, later)
    assert not await finished(later)
    done = CallEvent(
        attempt_id=str(row["attempt_id"]),
        call_id="d",
        kind="ended",
        outcome=Outcome.ANSWERED_HUMAN,
        answered_at=later,
        ended_at=later,
    )
    await apply_outcomes(conn, [done], later, 30)
    assert await finished(later)
    assert await conn.fetchval("SELECT status FROM dialer_campaign WHERE id = $1", camp["id"]) == "finished"


async def _attempt_seq_scans(conn: asyncpg.Connection) -> int:
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    n: int = await conn.fetchval("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'dialer_attempt'")
    return n


async def test_flushes_find_attempts_by_key_whatever_the_statistics(conn: asyncpg.Connection) -> None:
    """A worker's connection keeps generic plans made when dialer_attempt was small; the flush's
    statements and dialer_record_outcomes must still find attempts by key, not scan the table."""
    await conn.execute("SET plan_cache_mode = force_generic_plan")  # what 5 executions lead to
    camp = await make_campaign(conn, name="k")
    await add_numbers(conn, camp["id"], 50)
    await open_window(conn, camp["id"])
    rows = await claim(conn, NOW)
    ids = [r["attempt_id"] for r in rows]
    before = await _attempt_seq_scans(conn)
    async with conn.transaction():
        await conn.execute(Q.key_lookups_only)
        await conn.execute(Q.mark_accepted, ids, [f"call-{i}" for i in range(len(ids))])
        await conn.execute(Q.mark_answered, ids[:10], [NOW] * 10, [None] * 10)
        events = [
            CallEvent(attempt_id=str(i), call_id=None, kind="ended", outcome=Outcome.NO_ANSWER, ended_at=NOW)
            for i in ids
        ]
        await apply_outcomes(conn, events, NOW, 30)
    assert await _attempt_seq_scans(conn) == before
    assert await conn.fetchval("SELECT count(*) FROM dialer_attempt WHERE state = 'ended'") == 50


async def test_the_sweeper_finds_attempts_by_key_whatever_the_statistics(conn: asyncpg.Connection) -> None:
    """The sweeper's lease, deadline and release statements, with generic plans, scan nothing."""
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    camp = await make_campaign(conn, name="s")
    await add_numbers(conn, camp["id"], 20)
    await open_window(conn, camp["id"])
    ids = [r["attempt_id"] for r in await claim(conn, NOW)]
    late = NOW + dt.timedelta(hours=1)
    before = await _attempt_seq_scans(conn)
    async with conn.transaction():
        await conn.execute(Q.key_lookups_only)
        taken = await conn.fetch(Q.take_overdue, 200, late, 30)
        await conn.execute(Q.release_attempts, ids[:5], late)
        rest = ids[5:]
        await conn.execute(Q.set_deadline, rest, [late] * len(rest), [True] * len(rest), [None] * len(rest))
    assert await _attempt_seq_scans(conn) == before
    assert len(taken) == 20
    assert await conn.fetchval("SELECT count(*) FROM dialer_attempt") == 15
