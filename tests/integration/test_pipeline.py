"""The pipeline in one process: claim → simulator start → callback → outcome, with a manual clock."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from hashlib import sha256
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web

from dialer import campaigns
from dialer.clock import ManualClock
from dialer.http import make_app
from dialer.providers.simulated import SimulatedProvider
from dialer.settings import Secret, Settings
from dialer.simulator import Simulator, SimulatorConfig
from dialer.worker import Worker
from tests.factories import add_numbers, make_campaign

SECRET = "test-secret"


@dataclass
class Stack:
    worker: Worker
    sim: Simulator
    clock: ManualClock
    conn: asyncpg.Connection
    callback_url: str

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until no attempt is live (every callback has been recorded)."""
        async with asyncio.timeout(timeout):
            while await self.conn.fetchval("SELECT count(*) FROM dialer_attempt WHERE state <> 'ended'"):
                await asyncio.sleep(0.01)

    async def post_callback(self, body: bytes, signature: str | None = None) -> tuple[int, Any]:
        sig = signature if signature is not None else hmac.new(SECRET.encode(), body, sha256).hexdigest()
        async with (
            aiohttp.ClientSession() as s,
            s.post(self.callback_url, data=body, headers={"X-Simulator-Signature": sig}) as r,
        ):
            return r.status, await r.json()


@contextlib.asynccontextmanager
async def stack(
    pool: asyncpg.Pool, conn: asyncpg.Connection, api_key: str = "k", **sim: Any
) -> AsyncIterator[Stack]:
    simulator = Simulator(
        SimulatorConfig(**{"api_key": "k", "callback_secret": SECRET, "time_scale": 0.001, "seed": 1, **sim})
    )
    sim_url = await simulator.start()
    clock = ManualClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
    settings = Settings(
        callback_secret=Secret(SECRET),
        provider_url=sim_url,
        provider_api_key=Secret("k"),
        public_url="http://placeholder",
        reconcile_grace_seconds=5,
        requeue_backoff_seconds=30,
        provider_timeout_seconds=2,
        dial_timeout_seconds=5,
        circuit_failure_threshold=2,
        circuit_cooldown_seconds=30,
    )
    provider = SimulatedProvider(sim_url, api_key, SECRET, timeout_seconds=2)
    worker = Worker(settings, pool, {"simulator": provider}, clock)
    runner = web.AppRunner(make_app(worker))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    worker._callback_base = f"http://127.0.0.1:{port}/callbacks/"
    flusher = asyncio.create_task(worker._flusher())
    try:
        yield Stack(worker, simulator, clock, conn, f"http://127.0.0.1:{port}/callbacks/simulator")
    finally:
        # Simulator first (no more callbacks), then the HTTP app (its handlers need the flusher).
        await simulator.stop()
        await runner.cleanup()
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        await provider.close()


async def claim(st: Stack, limit: int = 1000) -> int:
    await st.worker.refresh_windows()
    n = await st.worker.claim_and_dial(limit)
    await asyncio.gather(*list(st.worker._inflight.values()))
    await st.worker.flush()
    return n


async def number_statuses(conn: asyncpg.Connection) -> dict[str, int]:
    return {
        r["status"]: r["n"]
        for r in await conn.fetch("SELECT status, count(*) AS n FROM dialer_number GROUP BY status")
    }


async def test_answered_call_is_recorded_end_to_end(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    """An answered call goes claim → start request → signed callback → completed number with a full CDR."""
    async with stack(
        pool, conn, answer_probability=1, busy_probability=0, no_answer_probability=0, failed_probability=0
    ) as st:
        c = await make_campaign(conn, now=st.clock.now())
        await add_numbers(conn, c["id"], 5, now=st.clock.now())
        assert await claim(st) == 5
        await st.settle()
        cdr = await conn.fetch("SELECT * FROM dialer_attempt")
        assert {r["outcome"] for r in cdr} == {"answered_human"}
        assert all(
            r["provider_call_id"]
            and r["answered_at"]
            and r["ended_at"]
            and r["decision"] == "final"
            and r["consumed_attempt"]
            and r["raw_status"] == "completed"
            for r in cdr
        )
        assert await number_statuses(conn) == {"completed": 5}
        assert st.sim.stats()["calls_started"] == 5


async def test_busy_retries_after_wait_then_exhausts(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    """Busy retries no sooner than retry_wait after the call ended, and stops after 1 + max_retries attempts."""
    async with stack(
        pool, conn, answer_probability=0, busy_probability=1, no_answer_probability=0, failed_probability=0
    ) as st:
        c = await make_campaign(conn, now=st.clock.now(), max_retries=2, retry_wait_seconds=600)
        await add_numbers(conn, c["id"], 3, now=st.clock.now())
        for round_ in range(3):
            assert await claim(st) == 3, round_
            await st.settle()
            assert await claim(st) == 0  # not due yet: the clock has not moved
            st.clock.advance(599)
            assert await claim(st) == 0
            st.clock.advance(1 + 60)  # past retry_wait by any measure of "ended"
        assert await claim(st) == 0
        assert await number_statuses(conn) == {"failed": 3}
        rows = await conn.fetch("SELECT decision, count(*) AS n FROM dialer_attempt GROUP BY 1")
        assert {r["decision"]: r["n"] for r in rows} == {"retry": 6, "exhausted": 3}
        gaps = await conn.fetch(
            """SELECT a.claimed_at - lag(a.ended_at) OVER (PARTITION BY a.number_id ORDER BY a.attempt_no) AS gap
                 FROM dialer_attempt a"""
        )
        assert all(g["gap"] is None or g["gap"] >= dt.timedelta(seconds=600) for g in gaps)


async def test_concurrency_and_rate_caps_hold_in_the_claim(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """One claim never exceeds max_calls_per_second, and live attempts never exceed max_concurrent_calls."""
    async with stack(
        pool, conn, answer_probability=0, busy_probability=1, no_answer_probability=0, failed_probability=0
    ) as st:
        c = await make_campaign(conn, now=st.clock.now(), max_concurrent_calls=5, max_calls_per_second=3)
        await add_numbers(conn, c["id"], 20, now=st.clock.now())
        await st.worker.refresh_windows()
        t = st.clock.now()
        rows = await conn.fetch("SELECT * FROM dialer_claim($1, 100, $2, 30)", uuid.uuid4(), t)
        assert len(rows) == 3  # the per-second cap
        assert len(await conn.fetch("SELECT * FROM dialer_claim($1, 100, $2, 30)", uuid.uuid4(), t)) == 0
        t2 = t + dt.timedelta(seconds=1.001)
        assert len(await conn.fetch("SELECT * FROM dialer_claim($1, 100, $2, 30)", uuid.uuid4(), t2)) == 2
        t3 = t2 + dt.timedelta(seconds=1.001)
        assert len(await conn.fetch("SELECT * FROM dialer_claim($1, 100, $2, 30)", uuid.uuid4(), t3)) == 0


async def test_provider_error_does_not_consume_an_attempt(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """A 429 'not processed' requeues the number after the backoff without counting an attempt."""
    async with stack(pool, conn, rate_limit_429_probability=1) as st:
        c = await make_campaign(conn, now=st.clock.now(), max_retries=0)
        await add_numbers(conn, c["id"], 2, now=st.clock.now())
        assert await claim(st) == 2
        rows = await conn.fetch("SELECT status, attempts, dials FROM dialer_number")
        assert all(r["status"] == "retry_wait" and r["attempts"] == 0 and r["dials"] == 1 for r in rows)
        outcomes = await conn.fetch("SELECT outcome, consumed_attempt, decision FROM dialer_attempt")
        assert {(r["outcome"], r["consumed_attempt"], r["decision"]) for r in outcomes} == {
            ("provider_error", False, "requeue")
        }


async def test_pause_stops_new_attempts_at_the_next_claim(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """Pausing a campaign stops the very next claim; resuming dials again."""
    async with stack(pool, conn) as st:
        c = await make_campaign(conn, now=st.clock.now(), max_calls_per_second=2)
        await add_numbers(conn, c["id"], 10, now=st.clock.now())
        assert await claim(st) == 2
        await campaigns.transition(conn, "c1", "pause", st.clock.now())
        st.clock.advance(5)
        assert await claim(st) == 0
        await campaigns.transition(conn, "c1", "resume", st.clock.now())
        assert await claim(st) == 2


async def test_closed_business_hours_hold_numbers_without_failing_them(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """Due numbers wait while the campaign is closed and dial when the next window opens (in its zone)."""
    async with stack(pool, conn) as st:
        # Wednesday 25 Nov 2026; New York is UTC-5 in November. Open 09:00-17:00 local on weekdays.
        st.clock.set(dt.datetime(2026, 11, 25, 23, 0, tzinfo=dt.UTC))  # 18:00 local: closed
        hours = [{"day_of_week": d, "time_open": 900, "time_close": 1700} for d in range(1, 6)]
        c = await make_campaign(conn, now=st.clock.now(), time_zone="America/New_York", business_hours=hours)
        await add_numbers(conn, c["id"], 3, now=st.clock.now())
        assert await claim(st) == 0
        st.clock.set(dt.datetime(2026, 11, 26, 13, 59, 59, tzinfo=dt.UTC))  # 08:59:59 local
        assert await claim(st) == 0
        assert await number_statuses(conn) == {"untried": 3}
        st.clock.set(dt.datetime(2026, 11, 26, 14, 0, tzinfo=dt.UTC))  # 09:00 local
        assert await claim(st) == 3


async def test_business_hours_follow_dst(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    """The window opens at 09:00 local on both sides of the spring-forward transition (UTC shifts by an hour)."""
    async with stack(pool, conn) as st:
        hours = [{"day_of_week": d, "time_open": 900, "time_close": 1000} for d in range(7)]
        # 2027-03-14 is the US spring-forward day: 09:00 EDT = 13:00 UTC; the day before, 09:00 EST = 14:00 UTC.
        st.clock.set(dt.datetime(2027, 3, 13, 13, 30, tzinfo=dt.UTC))
        c = await make_campaign(
            conn,
            now=st.clock.now(),
            time_zone="America/New_York",
            business_hours=hours,
            max_retries=5,
            retry_wait_seconds=0,
        )
        await add_numbers(conn, c["id"], 1, now=st.clock.now())
        assert await claim(st) == 0  # 08:30 EST
        st.clock.set(dt.datetime(2027, 3, 13, 14, 0, tzinfo=dt.UTC))
        assert await claim(st) == 1
        await st.settle()
        await conn.execute(
            "UPDATE dialer_number SET status = 'retry_wait', next_attempt_at = $1", st.clock.now()
        )
        st.clock.set(dt.datetime(2027, 3, 14, 12, 59, tzinfo=dt.UTC))  # 08:59 EDT
        assert await claim(st) == 0
        st.clock.set(dt.datetime(2027, 3, 14, 13, 0, tzinfo=dt.UTC))  # 09:00 EDT
        assert await claim(st) == 1


async def test_forged_malformed_and_unknown_callbacks_change_nothing(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """Bad signature → 401, malformed → 400, unknown attempt → 404, and the database is untouched."""
    async with stack(pool, conn, drop_callback_probability=1) as st:
        c = await make_campaign(conn, now=st.clock.now())
        await add_numbers(conn, c["id"], 1, now=st.clock.now())
        assert await claim(st) == 1
        attempt = await conn.fetchrow("SELECT * FROM dialer_attempt")
        body = orjson.dumps(
            {
                "attempt_id": str(attempt["id"]),
                "call_id": attempt["provider_call_id"],
                "status": "completed",
                "answered": True,
                "duration_seconds": 3,
                "billsec": 3,
                "cause_code": 16,
            }
        )
        assert (await st.post_callback(body, signature="0" * 64))[0] == 401
        assert (await st.post_callback(b"{not json"))[0] == 400
        assert (await st.post_callback(orjson.dumps({"attempt_id": "x", "status": "completed"})))[0] == 400
        assert (
            await st.post_callback(orjson.dumps({"attempt_id": str(attempt["id"]), "status": "exploded"}))
        )[0] == 400
        unknown = orjson.dumps({"attempt_id": str(uuid.uuid4()), "status": "busy"})
        assert (await st.post_callback(unknown))[0] == 404
        assert (await conn.fetchrow("SELECT state FROM dialer_attempt"))["state"] == "dialing"
        status, payload = await st.post_callback(body)
        assert (status, payload["result"]) == (200, "applied")
        status, payload = await st.post_callback(body)
        assert (status, payload["result"]) == (200, "duplicate")
        late = orjson.dumps({"attempt_id": str(attempt["id"]), "status": "busy", "cause_code": 17})
        assert (await st.post_callback(late))[1]["result"] == "duplicate"
        row = await conn.fetchrow("SELECT outcome, state FROM dialer_attempt")
        assert (row["outcome"], row["state"]) == ("answered_human", "ended")


async def test_sweeper_reconciles_lost_callback_and_releases_unsent(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """A dropped callback is recovered by lookup; a claim the provider never saw is released uncounted."""
    async with stack(
        pool,
        conn,
        drop_callback_probability=1,
        answer_probability=0,
        busy_probability=1,
        no_answer_probability=0,
        failed_probability=0,
    ) as st:
        c = await make_campaign(conn, now=st.clock.now(), max_calls_per_second=100)
        await add_numbers(conn, c["id"], 2, now=st.clock.now())
        assert await claim(st) == 2
        # A third number claimed by a worker that died before sending anything.
        await add_numbers(conn, c["id"], 1, now=st.clock.now(), offset=100)
        st.clock.advance(2)
        ghost = await conn.fetch("SELECT * FROM dialer_claim($1, 10, $2, 5)", uuid.uuid4(), st.clock.now())
        assert len(ghost) == 1
        for a in await conn.fetch("SELECT id FROM dialer_attempt WHERE provider_call_id IS NOT NULL"):
            await st.sim.wait_ended(str(a["id"]))
        st.clock.advance(60)
        assert await st.worker.sweep() == 3
        await st.worker.flush()
        assert await conn.fetchval("SELECT count(*) FROM dialer_attempt WHERE state <> 'ended'") == 0
        assert sorted(r["outcome"] for r in await conn.fetch("SELECT outcome FROM dialer_attempt")) == [
            "busy",
            "busy",
        ]
        ghost_number = await conn.fetchrow("SELECT * FROM dialer_number WHERE id = $1", ghost[0]["number_id"])
        assert (ghost_number["status"], ghost_number["attempts"], ghost_number["dials"]) == ("untried", 0, 0)


async def test_finished_when_nothing_is_left(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    """A running campaign becomes finished once every number is final."""
    async with stack(
        pool, conn, answer_probability=1, busy_probability=0, no_answer_probability=0, failed_probability=0
    ) as st:
        c = await make_campaign(conn, now=st.clock.now())
        await add_numbers(conn, c["id"], 2, now=st.clock.now())
        await claim(st)
        await st.settle()
        await st.worker.maintain()
        assert (await campaigns.get(conn, "c1"))["status"] == "finished"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ring_timeout_seconds", 1, "ring_timeout_seconds"),
        ("max_concurrent_calls", 0, "max_concurrent_calls"),
        ("time_zone", "Mars/Base", "unknown time zone"),
        ("caller_id", "12345", "caller_id"),
        ("business_hours", [{"day_of_week": 9}], "business_hours"),
    ],
)
async def test_impossible_campaign_settings_are_refused(
    conn: asyncpg.Connection, field: str, value: Any, message: str
) -> None:
    """Bad campaign settings raise a clear error naming the field, and nothing is written."""
    with pytest.raises(campaigns.CampaignError, match=message):
        await make_campaign(conn, **{field: value})
    assert await conn.fetchval("SELECT count(*) FROM dialer_campaign") == 0


async def test_ring_timeout_is_enforced_locally(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    """A call still ringing past ring timeout + grace is hung up by the sweeper and recorded as no answer."""
    async with stack(
        pool,
        conn,
        time_scale=1.0,
        ring_min_seconds=120,
        ring_max_seconds=120,
        answer_probability=1,
        busy_probability=0,
        no_answer_probability=0,
        failed_probability=0,
    ) as st:
        c = await make_campaign(conn, now=st.clock.now(), ring_timeout_seconds=30)
        await add_numbers(conn, c["id"], 1, now=st.clock.now())
        assert await claim(st) == 1
        attempt = await conn.fetchrow("SELECT * FROM dialer_attempt")
        st.clock.advance(30 + 5 - 1)
        assert await st.worker.sweep() == 0  # before ring timeout + grace nothing is overdue
        st.clock.advance(2)
        assert await st.worker.sweep() == 1
        row = await conn.fetchrow("SELECT state, outcome, raw_status FROM dialer_attempt")
        assert (row["state"], row["outcome"], row["raw_status"]) == (
            "ended",
            "no_answer",
            "local_ring_timeout",
        )
        assert st.sim.lookup(str(attempt["id"]))["status"] == "canceled"


async def test_account_error_pauses_the_campaign_without_burning_numbers(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """Bad credentials pause every campaign on the account with a visible reason; no attempt is consumed."""
    async with stack(pool, conn, api_key="wrong") as st:
        c = await make_campaign(conn, now=st.clock.now())
        await add_numbers(conn, c["id"], 3, now=st.clock.now())
        assert await claim(st) == 3
        camp = await campaigns.get(conn, "c1")
        assert camp["status"] == "paused"
        assert "account error" in camp["status_reason"]
        rows = await conn.fetch("SELECT status, attempts FROM dialer_number")
        assert all(r["status"] == "retry_wait" and r["attempts"] == 0 for r in rows)
        assert st.worker.breakers["simulator"].state == "open"


async def test_open_circuit_keeps_numbers_queued_then_probes(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """After consecutive provider failures the claim skips the account; after the cooldown one probe goes out."""
    async with stack(pool, conn, error_5xx_probability=1) as st:
        c = await make_campaign(conn, now=st.clock.now())
        await add_numbers(conn, c["id"], 2, now=st.clock.now())
        assert await claim(st) == 2  # both fail (503): the circuit opens
        assert st.worker.breakers["simulator"].state == "open"
        await add_numbers(conn, c["id"], 5, now=st.clock.now(), offset=100)
        st.clock.advance(29)
        assert await claim(st) == 0
        assert await conn.fetchval("SELECT count(*) FROM dialer_number WHERE status = 'untried'") == 5
        st.clock.advance(1)
        assert await claim(st) == 1  # the half-open probe, a single call
        assert st.worker.breakers["simulator"].state == "open"  # it failed too


async def test_forged_callback_token_is_rejected(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    """A callback URL whose per-attempt token does not match is refused before the body is read as an outcome."""
    async with stack(pool, conn, drop_callback_probability=1) as st:
        c = await make_campaign(conn, now=st.clock.now())
        await add_numbers(conn, c["id"], 1, now=st.clock.now())
        assert await claim(st) == 1
        attempt = await conn.fetchrow("SELECT * FROM dialer_attempt")
        body = orjson.dumps({"attempt_id": str(attempt["id"]), "status": "busy", "cause_code": 17})
        url = st.callback_url
        st.callback_url = f"{url}?attempt={attempt['id']}&token={'0' * 32}"
        assert (await st.post_callback(body))[0] == 401
        assert (await conn.fetchrow("SELECT state FROM dialer_attempt"))["state"] == "dialing"


async def test_queue_timeout_replaces_ring_timeout_for_human_worked_providers(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """An adapter with queue_timeout_seconds keeps a waiting number live past the ring timeout, then gives up."""
    async with stack(
        pool,
        conn,
        time_scale=1.0,
        ring_min_seconds=120,
        ring_max_seconds=120,
        answer_probability=1,
        busy_probability=0,
        no_answer_probability=0,
        failed_probability=0,
    ) as st:
        st.worker.providers["simulator"].queue_timeout_seconds = 600  # type: ignore[attr-defined]
        c = await make_campaign(conn, now=st.clock.now(), ring_timeout_seconds=30)
        await add_numbers(conn, c["id"], 1, now=st.clock.now())
        assert await claim(st) == 1
        st.clock.advance(30 + 5 + 1)
        assert await st.worker.sweep() == 1  # looked up: still waiting, so it stays live
        assert (await conn.fetchrow("SELECT state FROM dialer_attempt"))["state"] == "ringing"
        st.clock.advance(600)
        while await st.worker.sweep():
            pass
        row = await conn.fetchrow("SELECT state, outcome, raw_status FROM dialer_attempt")
        assert (row["state"], row["outcome"], row["raw_status"]) == (
            "ended",
            "no_answer",
            "local_ring_timeout",
        )


async def test_a_dying_claim_loop_stops_the_worker_cleanly(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """A bug in the claim loop ends run() with that error, drains, and returns every pooled connection."""
    async with stack(pool, conn) as st:

        async def broken(limit: int) -> int:
            raise RuntimeError("claim bug")

        st.worker.claim_and_dial = broken  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="claim bug"):
            async with asyncio.timeout(10):
                await st.worker.run(asyncio.Event())
        assert st.worker.draining
        async with asyncio.timeout(5):
            await pool.expire_connections()
            assert pool.get_idle_size() == pool.get_size()  # nothing leaked: the listener came back


async def test_extra_claim_loops_claim_only_while_claims_come_back_full(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """With caps full, one claim loop takes what outcomes free; the others join only for a backlog.

    Every outcome wakes the claim loops; three loops that all claimed would walk the campaigns at
    their caps three times for the slots one walk takes (the two-worker full loop: 4,181 claims of
    24 attempts where 2,472 of 40 did the same work).
    """
    async with stack(pool, conn) as st:
        w = st.worker
        w.settings = replace(w.settings, claim_concurrency=3)
        active = peak = calls = 0
        full = False
        claimed = asyncio.Event()

        async def fake_claim(limit: int) -> int:
            nonlocal active, peak, calls
            calls += 1
            active += 1
            peak = max(peak, active)
            for _ in range(5):  # a claim's round trip: the other loops run meanwhile
                await asyncio.sleep(0)
            active -= 1
            claimed.set()
            return limit if full else 1  # short: capacity, not due work, limits the claim

        w.claim_and_dial = fake_claim  # type: ignore[method-assign]
        loops = asyncio.create_task(w._claim_loop())
        try:
            for _ in range(20):  # twenty outcome notifications while every campaign is at its cap
                claimed.clear()
                w._wake.set()
                async with asyncio.timeout(5):
                    await claimed.wait()
                for _ in range(10):
                    await asyncio.sleep(0)
            assert peak == 1
            assert calls >= 20
            # A backlog (claims come back full): the other loops claim alongside.
            full = True
            w._wake.set()
            async with asyncio.timeout(5):
                while peak < 3:
                    await asyncio.sleep(0)
        finally:
            w._stopping = True
            w._backlog.set()
            w._wake.set()
            w._slots_free.set()
            async with asyncio.timeout(5):
                await loops
