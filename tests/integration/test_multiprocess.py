"""Invariants proven with several `dialer worker` processes on one database and the simulator.

The simulator runs in the test process and sees every start request, so "never more than N at
once" and "never dialed twice" are checked from the provider's side, not only from our tables.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import signal
from collections import defaultdict

import asyncpg
import pytest

from dialer.simulator import max_in_window
from tests.factories import add_numbers, make_campaign
from tests.workers import reap, simulator, spawn, wait_ready, wait_until

pytestmark = pytest.mark.slow


def assert_no_overlap_and_retry_wait(attempts: list[asyncpg.Record], retry_wait: dict[int, int]) -> None:
    by_number: dict[int, list[asyncpg.Record]] = defaultdict(list)
    for a in attempts:
        by_number[a["number_id"]].append(a)
    for rows in by_number.values():
        rows.sort(key=lambda r: r["claimed_at"])
        for prev, nxt in itertools.pairwise(rows):
            assert prev["ended_at"] is not None and nxt["claimed_at"] >= prev["ended_at"], "two live attempts"
            if prev["consumed_attempt"]:
                wait = dt.timedelta(seconds=retry_wait[prev["campaign_id"]])
                assert nxt["claimed_at"] >= prev["ended_at"] + wait, "redialed before retry_wait"


async def test_three_workers_hold_every_campaign_limit(dsn: str, conn: asyncpg.Connection) -> None:
    """3 workers: caps, per-second rate, business hours, retry spacing and attempt limits all hold."""
    async with simulator(
        time_scale=0.004,
        answer_probability=0.3,
        busy_probability=0.3,
        no_answer_probability=0.25,
        failed_probability=0.15,
        duplicate_callback_probability=0.2,
        out_of_order_probability=0.2,
    ) as sim:
        now = dt.datetime.now(dt.UTC)
        a = await make_campaign(
            conn,
            name="tight",
            now=now,
            max_concurrent_calls=4,
            max_calls_per_second=10,
            max_retries=1,
            retry_wait_seconds=1,
        )
        b = await make_campaign(
            conn,
            name="wide",
            now=now,
            max_concurrent_calls=12,
            max_calls_per_second=15,
            max_retries=2,
            retry_wait_seconds=1,
        )
        # Open only on the weekday three days from now, so it is closed for the whole test.
        closed_day = (now.isoweekday() + 3) % 7
        c = await make_campaign(
            conn,
            name="closed",
            now=now,
            time_zone="Asia/Tokyo",
            business_hours=[{"day_of_week": closed_day, "time_open": 0, "time_close": 100}],
        )
        await add_numbers(conn, a["id"], 40, now=now)
        await add_numbers(conn, b["id"], 60, now=now, offset=1000)
        await add_numbers(conn, c["id"], 10, now=now, offset=2000)

        workers = [spawn(dsn, sim.base_url) for _ in range(3)]
        with reap(workers):
            await wait_ready(workers)
            await wait_until(
                conn, "SELECT count(*) = 2 FROM dialer_campaign WHERE status = 'finished'", timeout=90
            )
            for w in workers:
                w.signal(signal.SIGTERM)
            assert [w.proc.wait(timeout=20) for w in workers] == [0, 0, 0]

        stats = sim.stats()
        # Concurrency, seen by the provider.
        assert stats["max_live_calls_by_campaign"]["tight"] <= 4
        assert stats["max_live_calls_by_campaign"]["wide"] <= 12
        assert stats["max_live_calls_by_campaign"]["tight"] == 4, "the cap was never reached: test too weak"
        # Never dialed twice for one attempt, never an attempt the database does not know.
        assert stats["duplicate_start_requests"] == 0
        attempts = await conn.fetch("SELECT * FROM dialer_attempt")
        provider_ids = {e["attempt_id"] for e in sim.log() if e["response_status"] in (200, 201)}
        assert provider_ids == {str(r["id"]) for r in attempts}
        # Per-second rate from the claim timestamps, over every 1-second window.
        for campaign, cps in ((a, 10), (b, 15)):
            stamps = sorted(
                r["claimed_at"].timestamp() for r in attempts if r["campaign_id"] == campaign["id"]
            )
            assert max_in_window(stamps) <= cps
        # Business hours: the closed campaign never dialed and its numbers are waiting, not failed.
        assert not [r for r in attempts if r["campaign_id"] == c["id"]]
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM dialer_number WHERE campaign_id = $1 AND status = 'untried'", c["id"]
            )
            == 10
        )
        # Attempt limits and retry spacing.
        over = await conn.fetchval(
            """SELECT count(*) FROM dialer_number n JOIN dialer_campaign c ON c.id = n.campaign_id
                WHERE n.attempts > 1 + c.max_retries"""
        )
        assert over == 0
        assert_no_overlap_and_retry_wait(attempts, {a["id"]: 1, b["id"]: 1, c["id"]: 1})
        assert await conn.fetchval("SELECT count(*) FROM dialer_attempt WHERE state <> 'ended'") == 0
        retried = await conn.fetchval("SELECT count(*) FROM dialer_attempt WHERE decision = 'retry'")
        assert retried > 10, "retries were not exercised"


async def test_sigkill_loses_no_number_and_never_redials_blind(dsn: str, conn: asyncpg.Connection) -> None:
    """A worker killed with SIGKILL mid-flight: the others finish every number, no call is duplicated."""
    async with simulator(
        time_scale=0.01,
        answer_probability=0.6,
        busy_probability=0.2,
        no_answer_probability=0.2,
        failed_probability=0.0,
        slow_response_probability=0.3,
        slow_response_seconds=0.4,
    ) as sim:
        now = dt.datetime.now(dt.UTC)
        camp = await make_campaign(
            conn,
            name="k",
            now=now,
            max_concurrent_calls=40,
            max_calls_per_second=60,
            max_retries=1,
            retry_wait_seconds=1,
            ring_timeout_seconds=5,
        )
        await add_numbers(conn, camp["id"], 200, now=now)
        workers = [spawn(dsn, sim.base_url) for _ in range(3)]
        with reap(workers):
            await wait_ready(workers)
            await wait_until(conn, "SELECT count(*) >= 60 FROM dialer_attempt")
            # Kill the worker with the most calls in flight right now, so the kill really strands work.
            busiest = await conn.fetchrow(
                """SELECT w.id, w.pid, count(*) AS live FROM dialer_attempt a
                     JOIN dialer_worker w ON w.id = a.worker_id
                    WHERE a.state <> 'ended' GROUP BY w.id, w.pid ORDER BY live DESC LIMIT 1"""
            )
            victim = next(w for w in workers if w.proc.pid == busiest["pid"])
            victim.signal(signal.SIGKILL)
            victim.proc.wait(timeout=10)
            await wait_until(
                conn, "SELECT status = 'finished' FROM dialer_campaign WHERE name = 'k'", timeout=90
            )
            survivors = [w for w in workers if w is not victim]
            for w in survivors:
                w.signal(signal.SIGTERM)
            assert [w.proc.wait(timeout=20) for w in survivors] == [0, 0]

        stats = sim.stats()
        assert stats["duplicate_start_requests"] == 0
        attempts = await conn.fetch("SELECT * FROM dialer_attempt")
        provider_ids = {e["attempt_id"] for e in sim.log() if e["response_status"] in (200, 201)}
        # Every call the provider placed is an attempt we recorded (none released while it rang).
        assert provider_ids <= {str(r["id"]) for r in attempts}
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM dialer_number WHERE status NOT IN ('completed', 'failed', 'dnc')"
            )
            == 0
        )
        assert stats["max_live_calls_by_campaign"]["k"] <= 40
        assert_no_overlap_and_retry_wait(attempts, {camp["id"]: 1})
        # The victim had calls in flight when it died, and every one of them was resolved by the others.
        assert busiest["live"] > 0
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM dialer_attempt WHERE worker_id = $1 AND state <> 'ended'", busiest["id"]
            )
            == 0
        )


async def test_sigterm_drains_and_releases_unsent_claims(dsn: str, conn: asyncpg.Connection) -> None:
    """SIGTERM: stop claiming, finish in-flight requests, release never-sent claims uncounted, exit 0."""
    async with simulator(
        time_scale=0.01,
        answer_probability=1,
        busy_probability=0,
        no_answer_probability=0,
        failed_probability=0,
    ) as sim:
        now = dt.datetime.now(dt.UTC)
        # Callbacks for calls placed by the drained worker go to its closed port (in Kubernetes they
        # would reach another pod through the Service): the sweeper picks them up after ring timeout.
        camp = await make_campaign(
            conn, name="t", now=now, max_concurrent_calls=50, max_calls_per_second=50, ring_timeout_seconds=5
        )
        await add_numbers(conn, camp["id"], 100, now=now)
        # The account limit (2 calls/s) holds most claims in the worker, unsent, when SIGTERM arrives.
        worker = spawn(
            dsn,
            sim.base_url,
            DIALER_PROVIDER_MAX_CALLS_PER_SECOND="2",
            DIALER_SHUTDOWN_GRACE_SECONDS="1",
            DIALER_MAX_INFLIGHT_REQUESTS="20",
        )
        with reap([worker]):
            await wait_ready([worker])
            # The claim holds the account's rate across workers; lifted in the database, this
            # worker claims ahead of its own limiter, which then holds the claims unsent.
            await conn.execute("UPDATE dialer_provider_account SET max_calls_per_second = NULL")
            await wait_until(conn, "SELECT count(*) >= 20 FROM dialer_attempt")
            # Signal once a start request has reached the provider, so the drain has both kinds
            # to handle: requests already sent and claims still waiting for the account limit.
            async with asyncio.timeout(20):
                while not any(e["response_status"] in (200, 201) for e in sim.log()):
                    await asyncio.sleep(0.01)
            worker.signal(signal.SIGTERM)
            assert worker.proc.wait(timeout=15) == 0

        sent = {e["attempt_id"] for e in sim.log() if e["response_status"] in (200, 201)}
        rows = await conn.fetch("SELECT id, state FROM dialer_attempt")
        kept = {str(r["id"]) for r in rows}
        assert sent <= kept
        assert 0 < len(sent) < 20
        # Claims still waiting for the account limit were released, uncounted. A request cut off
        # by the grace period after it began is ambiguous: it stays 'dialing' for reconciliation.
        ambiguous = {str(r["id"]) for r in rows if r["state"] == "dialing"}
        assert kept - sent <= ambiguous
        assert len(kept) < 20
        dials = await conn.fetchval("SELECT sum(dials) FROM dialer_number")
        assert dials == len(kept)
        assert await conn.fetchval("SELECT count(*) FROM dialer_worker") == 0

        # A fresh worker finishes the campaign with nothing lost.
        second = spawn(dsn, sim.base_url)
        with reap([second]):
            await wait_ready([second])
            await wait_until(conn, "SELECT status = 'finished' FROM dialer_campaign WHERE name = 't'")

            second.signal(signal.SIGTERM)
            assert second.proc.wait(timeout=15) == 0
        assert sim.stats()["duplicate_start_requests"] == 0
        assert await conn.fetchval("SELECT count(*) FROM dialer_number WHERE status = 'completed'") == 100
