"""Outcome webhooks: outbox events written with the outcome, signed delivery, retries, leases."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import itertools
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web

import metrics
from dialer.clock import ManualClock
from dialer.providers.base import CallEvent
from dialer.settings import Secret, Settings
from dialer.sql import Q
from dialer.webhooks import WebhookDeliverer, retry_delay_seconds, sign, verify
from dialer.worker import Worker, apply_outcomes
from scheduler.outcomes import Outcome
from tests.factories import NOW, add_numbers, make_campaign, open_window

SECRET = "whsec-test"
TIMEOUT = 0.3


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP receiver on loopback: `/<status>` answers that status, `/hang` waits for `release`."""

    base: str = ""
    hits: list[Hit] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    inflight: int = 0
    max_inflight: int = 0

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.hits.append(Hit(request.path, dict(request.headers), body))
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            path = request.match_info["path"]
            if path == "hang":
                await self.release.wait()
                return web.Response(status=200)
            if path == "redirect":
                raise web.HTTPFound(self.url("200"))
            await asyncio.sleep(0)  # let concurrent deliveries interleave
            return web.Response(status=int(path))
        finally:
            self.inflight -= 1

    def ids(self, path: str | None = None) -> list[str]:
        return [h.headers["X-Dialer-Event-Id"] for h in self.hits if path is None or h.path == f"/{path}"]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/{path}", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield rec
    rec.release.set()
    await runner.cleanup()


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webhook_secret": Secret(SECRET),
        "webhook_timeout_seconds": TIMEOUT,
        "webhook_max_attempts": 3,
        "webhook_backoff_seconds": 5.0,
        "webhook_concurrency": 10,
        "poll_interval_seconds": 0.05,
        **overrides,
    }
    return Settings(**values)


@contextlib.asynccontextmanager
async def deliverer(
    pool: asyncpg.Pool, clock: ManualClock, **overrides: Any
) -> AsyncIterator[WebhookDeliverer]:
    async with WebhookDeliverer(make_settings(**overrides), pool, clock) as d:
        yield d


async def hooked_campaign(
    conn: asyncpg.Connection, url: str | None, *, name: str = "c1", numbers: int = 1, **overrides: Any
) -> int:
    attempt_events = overrides.pop("attempt_events", False)
    c = await make_campaign(conn, name=name, **overrides)
    await conn.execute(
        "UPDATE dialer_campaign SET webhook_url = $2, webhook_attempt_events = $3 WHERE id = $1",
        c["id"],
        url,
        attempt_events,
    )
    await open_window(conn, c["id"])
    await add_numbers(conn, c["id"], numbers, offset=1000 * c["id"])
    campaign_id: int = c["id"]
    return campaign_id


async def dial_all(
    conn: asyncpg.Connection, outcome: Outcome = Outcome.ANSWERED_HUMAN, *, now: dt.datetime = NOW
) -> int:
    """Claim every due number and record `outcome` for each, as a worker's flush would."""
    rows = await conn.fetch(Q.claim, uuid.uuid4(), 10_000, now, 30, [])
    events = [
        CallEvent(attempt_id=str(r["attempt_id"]), call_id=None, kind="ended", outcome=outcome, ended_at=now)
        for r in rows
    ]
    if events:
        await apply_outcomes(conn, events, now, 30)
    return len(rows)


async def events(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await conn.fetch("SELECT * FROM dialer_webhook_event ORDER BY created_at, type, id"))


async def deliveries(conn: asyncpg.Connection, event_id: uuid.UUID) -> list[asyncpg.Record]:
    return list(await conn.fetch(Q.webhook_deliveries_of_event, event_id))


def counter(result: str) -> float:
    return metrics.REGISTRY.get_sample_value("dialer_webhook_deliveries_total", {"result": result}) or 0.0


# ---------------------------------------------------------------- events in the outbox


async def test_only_finished_numbers_produce_number_finished_events(conn: asyncpg.Connection) -> None:
    """A final or exhausted outcome writes one number.finished event; a retry writes none."""
    await hooked_campaign(
        conn, "https://hooks.example.com/in", numbers=2, max_retries=1, retry_wait_seconds=60
    )
    await dial_all(conn, Outcome.BUSY)
    assert await events(conn) == []  # both numbers wait for their retry
    later = NOW + dt.timedelta(seconds=61)
    rows = await conn.fetch(Q.claim, uuid.uuid4(), 1, later, 30, [])
    await apply_outcomes(
        conn, [CallEvent(str(rows[0]["attempt_id"]), None, "ended", Outcome.ANSWERED_HUMAN)], later, 30
    )
    await dial_all(conn, Outcome.BUSY, now=later)
    evs = await events(conn)
    assert [e["type"] for e in evs] == ["number.finished", "number.finished"]
    by_status = {e["payload"]["number"]["status"]: e["payload"] for e in evs}
    assert set(by_status) == {"completed", "failed"}
    assert by_status["completed"]["attempt"]["outcome"] == "answered_human"
    assert by_status["failed"]["attempt"]["decision"] == "exhausted"
    assert by_status["failed"]["campaign"]["name"] == "c1"
    assert all(e["created_at"] == later and e["next_attempt_at"] == later and e["attempts"] == 0 for e in evs)


async def test_attempt_events_are_written_when_the_campaign_asks(conn: asyncpg.Connection) -> None:
    """With webhook_attempt_events every recorded attempt writes attempt.ended, retries included."""
    await hooked_campaign(conn, "https://hooks.example.com/in", numbers=3, attempt_events=True, max_retries=2)
    await dial_all(conn, Outcome.NO_ANSWER)
    types = collections.Counter(e["type"] for e in await events(conn))
    assert types == {"attempt.ended": 3}


async def test_campaign_without_url_writes_no_events(conn: asyncpg.Connection) -> None:
    """Outcomes of a campaign with no webhook_url leave the outbox empty."""
    await hooked_campaign(conn, None, numbers=3, attempt_events=True)
    assert await dial_all(conn) == 3
    assert await events(conn) == []


async def test_rolled_back_outcome_leaves_no_event(conn: asyncpg.Connection) -> None:
    """The event is written by the outcome's transaction: when that rolls back, so does the event."""
    await hooked_campaign(conn, "https://hooks.example.com/in", numbers=2)
    rows = await conn.fetch(Q.claim, uuid.uuid4(), 10, NOW, 30, [])
    calls = [CallEvent(str(r["attempt_id"]), None, "ended", Outcome.ANSWERED_HUMAN) for r in rows]

    async def record_then_fail() -> None:
        async with conn.transaction():
            await apply_outcomes(conn, calls, NOW, 30)
            assert len(await events(conn)) == 2
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await record_then_fail()
    assert await events(conn) == []
    assert await conn.fetchval("SELECT count(*) FROM dialer_attempt WHERE state <> 'ended'") == 2


async def test_suppressed_number_closed_at_claim_writes_an_event(conn: asyncpg.Connection) -> None:
    """A number the claim closes as do-not-call finishes with a number.finished event (status dnc)."""
    await hooked_campaign(conn, "https://hooks.example.com/in", numbers=1)
    phone = await conn.fetchval("SELECT phone FROM dialer_number")
    await conn.execute("INSERT INTO dialer_suppression (phone) VALUES ($1)", phone)
    assert await dial_all(conn) == 0
    [ev] = await events(conn)
    assert ev["type"] == "number.finished"
    assert ev["payload"]["number"]["status"] == "dnc"


# ---------------------------------------------------------------- signing


def test_verify_accepts_only_the_signed_body_with_the_secret_in_time() -> None:
    """verify() accepts the signed body; a tampered body, a wrong secret, an old or garbled header fail."""
    body = b'{"id":"e1","type":"number.finished"}'
    header = sign(SECRET, body, 1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert verify(SECRET, body, header, 1_700_000_000)
    assert verify(SECRET, body, header, 1_700_000_300)
    assert not verify(SECRET, body, header, 1_700_000_301)  # a replay past the tolerance
    assert not verify(SECRET, body, header, 1_699_999_699)
    assert not verify(SECRET, body + b" ", header, 1_700_000_000)
    assert not verify("another-secret", body, header, 1_700_000_000)
    assert not verify(SECRET, body, header.replace("t=1700000000", "t=1700000001"), 1_700_000_000)
    assert not verify(SECRET, body, "garbage", 1_700_000_000)
    assert not verify(SECRET, body, "t=x,v1=00", 1_700_000_000)
    rotated = f"{header},v1={'0' * 64}"
    assert verify(SECRET, body, rotated, 1_700_000_000)  # any one v1 of several may match


def test_retry_delay_doubles_is_capped_and_jittered_per_event() -> None:
    """Backoff is base * 2^(tries-1) capped at an hour, plus < 10 % jitter fixed by the event id."""
    a, b = uuid.uuid4(), uuid.uuid4()
    for attempts, plain in [(1, 5), (2, 10), (3, 20), (10, 2560), (11, 3600), (40, 3600)]:
        delay = retry_delay_seconds(attempts, 5, a)
        assert plain <= delay < plain * 1.1
        assert retry_delay_seconds(attempts, 5, a) == delay
    assert retry_delay_seconds(1, 5, a) != retry_delay_seconds(1, 5, b)


# ---------------------------------------------------------------- delivery


async def test_delivery_is_signed_and_marks_the_event_delivered(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    """A 2xx delivers: the POST carries the event id, type and a signature verify() accepts, once."""
    await hooked_campaign(conn, receiver.url("200"))
    await dial_all(conn)
    [ev] = await events(conn)
    clock = ManualClock(NOW)
    before = counter("delivered")
    async with deliverer(pool, clock) as d:
        assert await d.deliver_due() == 1
        assert await d.deliver_due() == 0
    [hit] = receiver.hits
    assert hit.headers["Content-Type"] == "application/json"
    assert hit.headers["User-Agent"] == "pgdialer-webhooks"
    assert hit.headers["X-Dialer-Event-Id"] == str(ev["id"])
    assert hit.headers["X-Dialer-Event-Type"] == "number.finished"
    assert verify(SECRET, hit.body, hit.headers["X-Dialer-Signature"], NOW.timestamp())
    assert not verify(
        SECRET, hit.body.replace(b"completed", b"failed"), hit.headers["X-Dialer-Signature"], NOW.timestamp()
    )
    assert not verify("wrong", hit.body, hit.headers["X-Dialer-Signature"], NOW.timestamp())
    assert not verify(SECRET, hit.body, hit.headers["X-Dialer-Signature"], NOW.timestamp() + 301)
    body = orjson.loads(hit.body)
    assert body == {
        "id": str(ev["id"]),
        "type": "number.finished",
        "created_at": "2026-11-25T15:00:00Z",
        "data": ev["payload"],
    }
    row = await conn.fetchrow("SELECT * FROM dialer_webhook_event")
    assert row["delivered_at"] == NOW and row["gave_up_at"] is None
    assert row["last_status"] == 200 and row["attempts"] == 1
    [log_row] = await deliveries(conn, ev["id"])
    assert log_row["status_code"] == 200 and log_row["error"] is None and log_row["duration_seconds"] >= 0
    assert counter("delivered") == before + 1


async def test_server_error_retries_with_backoff_then_gives_up(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    """A 500 is retried after base * 2^(tries-1) (+ jitter); after max attempts the event is given up."""
    await hooked_campaign(conn, receiver.url("500"))
    await dial_all(conn)
    [ev] = await events(conn)
    clock = ManualClock(NOW)
    async with deliverer(pool, clock, webhook_max_attempts=3) as d:
        for tries in (1, 2):
            assert await d.deliver_due() == 1
            row = await conn.fetchrow("SELECT * FROM dialer_webhook_event")
            delay = retry_delay_seconds(tries, 5.0, ev["id"])
            assert row["next_attempt_at"] == clock.now() + dt.timedelta(seconds=delay)
            assert row["attempts"] == tries and row["last_status"] == 500 and row["gave_up_at"] is None
            clock.set(row["next_attempt_at"] - dt.timedelta(milliseconds=1))
            assert await d.deliver_due() == 0  # not due yet
            clock.set(row["next_attempt_at"])
        assert await d.deliver_due() == 1
        assert await d.deliver_due() == 0
    row = await conn.fetchrow("SELECT * FROM dialer_webhook_event")
    assert row["gave_up_at"] == clock.now() and row["delivered_at"] is None and row["attempts"] == 3
    log_rows = await deliveries(conn, ev["id"])
    assert [r["status_code"] for r in log_rows] == [500, 500, 500]
    gaps = [(b["attempted_at"] - a["attempted_at"]).total_seconds() for a, b in itertools.pairwise(log_rows)]
    assert 5 <= gaps[0] < 5.5 and 10 <= gaps[1] < 11
    assert len(receiver.ids("500")) == 3


async def test_timeout_and_connection_errors_are_retried(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    """A receiver that does not answer in time, or refuses the connection, is retried; the log says why."""
    await hooked_campaign(conn, receiver.url("hang"))
    await dial_all(conn)
    [ev] = await events(conn)
    clock = ManualClock(NOW)
    async with deliverer(pool, clock, webhook_max_attempts=5) as d:
        assert await d.deliver_due() == 1
        clock.advance(retry_delay_seconds(1, 5.0, ev["id"]))
        await conn.execute("UPDATE dialer_campaign SET webhook_url = 'http://127.0.0.1:9/closed'")
        assert await d.deliver_due() == 1
        clock.advance(retry_delay_seconds(2, 5.0, ev["id"]))
        await conn.execute("UPDATE dialer_campaign SET webhook_url = $1", receiver.url("200"))
        assert await d.deliver_due() == 1
    first, second, third = await deliveries(conn, ev["id"])
    assert first["status_code"] is None and first["error"] == f"timeout after {TIMEOUT:g} s"
    assert first["duration_seconds"] >= TIMEOUT * 0.9
    assert second["status_code"] is None and "Connect" in second["error"]
    assert third["status_code"] == 200
    row = await conn.fetchrow("SELECT * FROM dialer_webhook_event")
    assert row["delivered_at"] is not None and row["attempts"] == 3 and row["last_error"] is None


async def test_gone_gives_up_at_once(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    """410 Gone means the receiver wants no more: given up after one try, not retried."""
    await hooked_campaign(conn, receiver.url("410"))
    await dial_all(conn)
    clock = ManualClock(NOW)
    async with deliverer(pool, clock, webhook_max_attempts=12) as d:
        assert await d.deliver_due() == 1
        clock.advance(7200)
        assert await d.deliver_due() == 0
    row = await conn.fetchrow("SELECT * FROM dialer_webhook_event")
    assert row["gave_up_at"] == NOW and row["last_status"] == 410 and row["attempts"] == 1
    assert len(receiver.hits) == 1


async def test_client_error_other_than_gone_is_retried(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    """A 4xx other than 410 (here 429) is a failed try, retried later."""
    await hooked_campaign(conn, receiver.url("429"))
    await dial_all(conn)
    async with deliverer(pool, ManualClock(NOW)) as d:
        assert await d.deliver_due() == 1
    row = await conn.fetchrow("SELECT * FROM dialer_webhook_event")
    assert row["gave_up_at"] is None and row["delivered_at"] is None and row["next_attempt_at"] > NOW


async def test_redirect_is_not_followed(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    """A 3xx is a failed try: the Location is never requested, deliveries go only to the configured URL."""
    await hooked_campaign(conn, receiver.url("redirect"))
    await dial_all(conn)
    [ev] = await events(conn)
    async with deliverer(pool, ManualClock(NOW)) as d:
        assert await d.deliver_due() == 1
    assert [h.path for h in receiver.hits] == ["/redirect"]
    [log_row] = await deliveries(conn, ev["id"])
    assert log_row["status_code"] == 302 and log_row["error"] == "redirect not followed"
    row = await conn.fetchrow("SELECT * FROM dialer_webhook_event")
    assert row["delivered_at"] is None and row["gave_up_at"] is None


async def test_removed_url_gives_the_event_up_without_sending(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    """An event whose campaign no longer has a webhook_url is given up ('webhook_url removed'), never sent."""
    cid = await hooked_campaign(conn, receiver.url("200"))
    await dial_all(conn)
    await conn.execute("UPDATE dialer_campaign SET webhook_url = NULL WHERE id = $1", cid)
    before = counter("gave_up")
    async with deliverer(pool, ManualClock(NOW)) as d:
        assert await d.deliver_due() == 1
    row = await conn.fetchrow("SELECT * FROM dialer_webhook_event")
    assert row["gave_up_at"] == NOW and row["last_error"] == "webhook_url removed" and row["attempts"] == 0
    assert receiver.hits == []
    assert await deliveries(conn, row["id"]) == []
    assert counter("gave_up") == before + 1


async def test_given_up_event_can_be_redelivered(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    """webhook_redeliver puts a given-up event back in the outbox with a fresh budget; its log keeps every try."""
    cid = await hooked_campaign(conn, receiver.url("410"))
    await dial_all(conn)
    [ev] = await events(conn)
    clock = ManualClock(NOW)
    async with deliverer(pool, clock) as d:
        assert await d.deliver_due() == 1
        await conn.execute(
            "UPDATE dialer_campaign SET webhook_url = $2 WHERE id = $1", cid, receiver.url("200")
        )
        clock.advance(60)
        assert await conn.fetchval(Q.webhook_redeliver, ev["id"], clock.now()) == ev["id"]
        assert await d.deliver_due() == 1
    assert await conn.fetchval(Q.webhook_redeliver, ev["id"], clock.now()) is None  # delivered: left alone
    assert [r["status_code"] for r in await deliveries(conn, ev["id"])] == [410, 200]
    assert receiver.ids() == [str(ev["id"])] * 2


# ---------------------------------------------------------------- leases, drain, concurrency


async def test_lease_expiry_after_a_crash_redelivers_the_same_event(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    """An event taken by a deliverer that died is delivered by another once the lease ends, same id."""
    await hooked_campaign(conn, receiver.url("200"))
    await dial_all(conn)
    [ev] = await events(conn)
    lease = TIMEOUT + 30
    # The dead deliverer: its take committed, then the process vanished mid-POST.
    [taken] = await conn.fetch(Q.webhook_claim, 10, NOW, lease)
    assert taken["id"] == ev["id"] and taken["attempts"] == 1
    clock = ManualClock(NOW)
    async with deliverer(pool, clock) as d:
        assert await d.deliver_due() == 0
        clock.set(NOW + dt.timedelta(seconds=lease - 0.001))
        assert await d.deliver_due() == 0  # still leased
        clock.set(NOW + dt.timedelta(seconds=lease))
        assert await d.deliver_due() == 1
    assert receiver.ids() == [str(ev["id"])]
    row = await conn.fetchrow("SELECT * FROM dialer_webhook_event")
    assert row["delivered_at"] is not None and row["attempts"] == 2


async def test_late_result_of_an_expired_lease_does_not_overwrite_the_newer_try(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """A failed try recorded after its lease was taken over changes only the log, not the event's state."""
    await hooked_campaign(conn, "https://hooks.example.com/in")
    await dial_all(conn)
    [ev] = await events(conn)
    await conn.fetch(Q.webhook_claim, 10, NOW, 1.0)
    later = NOW + dt.timedelta(seconds=2)
    await conn.fetch(Q.webhook_claim, 10, later, 30.0)  # another deliverer, attempts = 2
    args = ([ev["id"]], [1], [NOW], [500], [None], [0.1], ["retry"], [later], later)
    await conn.execute(Q.webhook_record, *args)
    row = await conn.fetchrow("SELECT * FROM dialer_webhook_event")
    assert row["next_attempt_at"] == later + dt.timedelta(seconds=30) and row["last_status"] is None
    assert len(await deliveries(conn, ev["id"])) == 1


async def test_stop_lets_the_post_in_flight_finish(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    """After stop() the deliverer takes nothing new but records the POST already under way."""
    await hooked_campaign(conn, receiver.url("hang"))
    await dial_all(conn)
    d = WebhookDeliverer(make_settings(webhook_timeout_seconds=30), pool, ManualClock(NOW))
    task = asyncio.create_task(d.run())
    async with asyncio.timeout(10):
        while not receiver.hits:
            await asyncio.sleep(0.01)
    d.stop()
    receiver.release.set()
    async with asyncio.timeout(10):
        await task
    row = await conn.fetchrow("SELECT * FROM dialer_webhook_event")
    assert row["delivered_at"] == NOW and row["last_status"] == 200


async def test_cancelled_deliverer_releases_its_lease(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    """A deliverer cancelled mid-POST (drain past its grace) makes the event due at once, the try uncounted."""
    cid = await hooked_campaign(conn, receiver.url("hang"))
    await dial_all(conn)
    [ev] = await events(conn)
    clock = ManualClock(NOW)
    d = WebhookDeliverer(make_settings(webhook_timeout_seconds=30), pool, clock)
    task = asyncio.create_task(d.run())
    async with asyncio.timeout(10):
        while not receiver.hits:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    row = await conn.fetchrow("SELECT * FROM dialer_webhook_event")
    assert row["next_attempt_at"] == NOW and row["attempts"] == 0 and row["delivered_at"] is None
    await conn.execute("UPDATE dialer_campaign SET webhook_url = $2 WHERE id = $1", cid, receiver.url("200"))
    async with deliverer(pool, clock) as again:
        assert await again.deliver_due() == 1
    assert receiver.ids() == [str(ev["id"])] * 2


async def test_two_deliverers_deliver_each_event_exactly_once(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    """Two deliverers on one database never take the same event: with no failures each is delivered once."""
    await hooked_campaign(
        conn, receiver.url("200"), numbers=300, max_calls_per_second=1000, max_concurrent_calls=1000
    )
    await dial_all(conn)
    clock = ManualClock(NOW)
    async with (
        deliverer(pool, clock, webhook_concurrency=15) as a,
        deliverer(pool, clock, webhook_concurrency=15) as b,
    ):
        taken = [0, 0]
        while True:
            got = await asyncio.gather(a.deliver_due(), b.deliver_due())
            taken = [t + g for t, g in zip(taken, got, strict=True)]
            if got == [0, 0]:
                break
    assert sum(taken) == 300 and min(taken) > 0  # both took part
    counts = collections.Counter(receiver.ids())
    assert len(counts) == 300 and set(counts.values()) == {1}
    assert receiver.max_inflight <= 30
    assert await conn.fetchval("SELECT count(*) FROM dialer_webhook_delivery") == 300
    assert await conn.fetchval("SELECT count(*) FROM dialer_webhook_event WHERE delivered_at IS NULL") == 0


async def test_run_loop_delivers_with_bounded_concurrency(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    """The side-task loop delivers a backlog larger than its concurrency, never more POSTs in flight than allowed."""
    await hooked_campaign(conn, receiver.url("200"), numbers=50)
    await dial_all(conn)
    d = WebhookDeliverer(make_settings(webhook_concurrency=4), pool, ManualClock(NOW))
    task = asyncio.create_task(d.run())
    async with asyncio.timeout(20):
        while await conn.fetchval("SELECT count(*) FROM dialer_webhook_event WHERE delivered_at IS NULL"):
            await asyncio.sleep(0.02)
    d.stop()
    await task
    assert len(receiver.hits) == 50 and receiver.max_inflight <= 4


# ---------------------------------------------------------------- the worker


async def test_worker_runs_the_deliverer_as_a_side_task(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    """Worker.run delivers pending events and drains the deliverer on stop."""
    await hooked_campaign(conn, receiver.url("200"), numbers=3)
    await dial_all(conn)
    await conn.execute("UPDATE dialer_campaign SET status = 'paused'")  # nothing left for the claimer
    worker = Worker(make_settings(), pool, {}, ManualClock(NOW))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    async with asyncio.timeout(10):
        while len(receiver.hits) < 3:
            await asyncio.sleep(0.01)
    stop.set()
    async with asyncio.timeout(10):
        await task
    assert (
        await conn.fetchval("SELECT count(*) FROM dialer_webhook_event WHERE delivered_at IS NOT NULL") == 3
    )


async def test_no_secret_means_nothing_is_sent(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Without DIALER_WEBHOOK_SECRET nothing is sent unsigned: a warning at start-up, events stay pending."""
    await hooked_campaign(conn, receiver.url("200"))
    await dial_all(conn)
    await conn.execute("UPDATE dialer_campaign SET status = 'paused'")
    settings = make_settings(webhook_secret=Secret(""))
    with pytest.raises(ValueError, match="never sent unsigned"):
        WebhookDeliverer(settings, pool, ManualClock(NOW))
    worker = Worker(settings, pool, {}, ManualClock(NOW))
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="dialer.webhooks"):
        task = asyncio.create_task(worker.run(stop))
        async with asyncio.timeout(10):
            while not worker.ready:
                await asyncio.sleep(0.01)
        await worker.refresh_stats()
        stop.set()
        await task
    assert worker.webhooks is None
    assert [r.message for r in caplog.records if "DIALER_WEBHOOK_SECRET" in r.message] != []
    assert receiver.hits == []
    row = await conn.fetchrow("SELECT * FROM dialer_webhook_event")
    assert row["attempts"] == 0 and row["delivered_at"] is None and row["gave_up_at"] is None


async def test_backlog_gauges_cover_the_whole_database(
    pool: asyncpg.Pool, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    """The stats task sets the pending count and the oldest pending creation time (0 when none)."""
    await hooked_campaign(conn, receiver.url("200"), numbers=2)
    await hooked_campaign(conn, receiver.url("500"), name="c2", numbers=1)
    await dial_all(conn)
    worker = Worker(make_settings(), pool, {}, ManualClock(NOW))
    await worker.refresh_stats()
    sample = metrics.REGISTRY.get_sample_value
    assert sample("dialer_webhook_backlog") == 3
    assert sample("dialer_webhook_oldest_pending_timestamp_seconds") == NOW.timestamp()
    async with deliverer(pool, ManualClock(NOW)) as d:
        assert await d.deliver_due() == 3
    await worker.refresh_stats()
    assert sample("dialer_webhook_backlog") == 1  # the 500 waits for its retry
    await conn.execute("UPDATE dialer_webhook_event SET gave_up_at = $1 WHERE delivered_at IS NULL", NOW)
    await worker.refresh_stats()
    assert sample("dialer_webhook_backlog") == 0
    assert sample("dialer_webhook_oldest_pending_timestamp_seconds") == 0
