"""A provider account's calls per second hold across all its campaigns and every worker: the claim
spends the account's rate under a lock on the account's row (migration 0012)."""

from __future__ import annotations

import datetime as dt
import signal
import uuid

import asyncpg
import pytest

from dialer.simulator import max_in_window
from dialer.sql import Q
from dialer.worker import held_back_reason
from tests.factories import NOW, add_numbers, make_campaign, open_window
from tests.workers import reap, simulator, spawn, wait_ready, wait_until

WORKER = uuid.uuid4()


async def claim(conn: asyncpg.Connection, now: dt.datetime, limit: int = 100) -> list[asyncpg.Record]:
    return list(await conn.fetch(Q.claim, WORKER, limit, now, 30, []))


async def two_campaigns(conn: asyncpg.Connection, rate: float, *, provider: str = "simulator") -> None:
    """Two campaigns on one account, each allowing far more than the account, 20 numbers each."""
    await conn.execute(Q.provider_accounts_sync, [provider], [rate], NOW)
    for i, name in enumerate(("a", "b")):
        row = await make_campaign(conn, name=name, provider=provider, max_calls_per_second=100)
        await add_numbers(conn, row["id"], 20, offset=100 * i)
        await open_window(conn, row["id"])


async def test_the_account_rate_is_shared_by_its_campaigns(conn: asyncpg.Connection) -> None:
    """An account at 5 calls/s starts 5 in a second across two campaigns, and 5 more once it has passed."""
    await two_campaigns(conn, 5)
    first = await claim(conn, NOW)
    assert len(first) == 5
    assert await claim(conn, NOW + dt.timedelta(milliseconds=999)) == []
    second = await claim(conn, NOW + dt.timedelta(seconds=1))
    assert len(second) == 5
    # Both campaigns were served (round-robin), not one campaign's allowance twice.
    assert {r["campaign"] for r in first + second} == {"a", "b"}


async def test_a_rate_below_one_per_second_widens_the_window(conn: asyncpg.Connection) -> None:
    """0.5 calls/s is one start in any 2 seconds, not zero (floor) and not one per second."""
    await two_campaigns(conn, 0.5)
    assert len(await claim(conn, NOW)) == 1
    assert await claim(conn, NOW + dt.timedelta(seconds=1.5)) == []
    assert len(await claim(conn, NOW + dt.timedelta(seconds=2))) == 1


async def test_an_account_without_a_limit_is_not_held(conn: asyncpg.Connection) -> None:
    """Rate 0 (no limit) writes NULL: only the campaigns' own caps apply."""
    await two_campaigns(conn, 0)
    assert await conn.fetchval("SELECT max_calls_per_second FROM dialer_provider_account") is None
    assert len(await claim(conn, NOW)) == 40
    assert await conn.fetchval("SELECT count(*) FROM dialer_provider_start") == 0


async def test_a_claim_holding_the_account_makes_another_skip_its_campaigns(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """While one claim holds the account's row, a second (another worker) skips that account's
    campaigns instead of counting starts it cannot see yet, and still serves other accounts."""
    await two_campaigns(conn, 5)
    other = await make_campaign(conn, name="other", provider="other-account")
    await add_numbers(conn, other["id"], 3, offset=500)
    await open_window(conn, other["id"])
    holder = await asyncpg.connect(dsn)
    try:
        tx = holder.transaction()
        await tx.start()
        held = await holder.fetch(Q.claim, uuid.uuid4(), 100, NOW, 30, [])
        assert len([r for r in held if r["provider"] == "simulator"]) == 5
        # Its own campaigns are round-robin order: the second claim gets the unlimited account only.
        got = await claim(conn, NOW + dt.timedelta(seconds=5))
        assert {r["campaign"] for r in got} <= {"other"}
        await tx.rollback()
    finally:
        await holder.close()
    got = await claim(conn, NOW + dt.timedelta(seconds=5))
    assert len([r for r in got if r["provider"] == "simulator"]) == 5


async def test_backlog_stats_say_the_account_rate_holds_a_campaign(conn: asyncpg.Connection) -> None:
    """A campaign with room whose account's second is spent reports account_rate_limit."""
    await two_campaigns(conn, 5)
    await claim(conn, NOW)
    rows = await conn.fetch(Q.backlog_stats, NOW)
    reasons = {r["name"]: held_back_reason(r) for r in rows}
    assert reasons == {"a": "account_rate_limit", "b": "account_rate_limit"}
    later = await conn.fetch(Q.backlog_stats, NOW + dt.timedelta(seconds=2))
    assert {held_back_reason(r) for r in later} == {"dispatching"}


async def test_old_starts_are_pruned(conn: asyncpg.Connection) -> None:
    """The start log keeps only what a window can still count."""
    await two_campaigns(conn, 5)
    await claim(conn, NOW)
    await conn.execute(Q.prune_provider_starts, NOW + dt.timedelta(minutes=1))
    assert await conn.fetchval("SELECT count(*) FROM dialer_provider_start") == 1
    await conn.execute(Q.prune_provider_starts, NOW + dt.timedelta(minutes=6))
    assert await conn.fetchval("SELECT count(*) FROM dialer_provider_start") == 0


async def test_the_table_refuses_an_impossible_rate(conn: asyncpg.Connection) -> None:
    """A rate under 0.01/s is refused by the database as by the loader."""
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(Q.provider_accounts_sync, ["x"], [0.001], NOW)


@pytest.mark.slow
async def test_three_workers_hold_the_account_rate_together(dsn: str, conn: asyncpg.Connection) -> None:
    """3 workers, each configured with the account's 20 calls/s: together they start at most 20 in
    any second (each alone would allow 20, so 60), as the claims and the provider both show.

    Every start request is answered after 0.4 s and a worker holds at most 5 unanswered plus a
    claim of 5, so no worker can take a whole second's 20 alone: the others (polling every 50 ms)
    must take part, whichever worker's timer happens to fire first when the window frees."""
    async with simulator(
        time_scale=0.002,
        slow_response_probability=1,
        slow_response_seconds=0.4,
        answer_probability=1,
        busy_probability=0,
        no_answer_probability=0,
        failed_probability=0,
    ) as sim:
        now = dt.datetime.now(dt.UTC)
        for i, name in enumerate(("a", "b")):
            row = await make_campaign(
                conn, name=name, now=now, max_concurrent_calls=100, max_calls_per_second=100, max_retries=0
            )
            await add_numbers(conn, row["id"], 50, now=now, offset=1000 * i)
        workers = [
            spawn(
                dsn,
                sim.base_url,
                DIALER_PROVIDER_MAX_CALLS_PER_SECOND="20",
                DIALER_MAX_INFLIGHT_REQUESTS="5",
                DIALER_CLAIM_BATCH_SIZE="5",
            )
            for _ in range(3)
        ]
        with reap(workers):
            await wait_ready(workers)
            await wait_until(
                conn, "SELECT count(*) = 2 FROM dialer_campaign WHERE status = 'finished'", timeout=60
            )
            for w in workers:
                w.signal(signal.SIGTERM)
            assert [w.proc.wait(timeout=20) for w in workers] == [0, 0, 0]

        attempts = await conn.fetch("SELECT claimed_at, worker_id FROM dialer_attempt")
        assert len(attempts) == 100
        assert len({r["worker_id"] for r in attempts}) > 1, "one worker did everything: test too weak"
        stamps = sorted(r["claimed_at"].timestamp() for r in attempts)
        assert max_in_window(stamps) <= 20
        assert max_in_window(stamps) >= 15, "the rate was never reached: test too weak"
        # The provider's side: 100 starts cannot arrive faster than 20/s allows (4 s after the first).
        sent = sorted(e["received_at"] for e in sim.log() if e["response_status"] in (200, 201))
        assert len(sent) == 100 and sent[-1] - sent[0] >= 4.0
