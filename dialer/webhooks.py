"""Outcome webhooks: signed POSTs of the outbox events that outcome writes leave behind.

Delivery is at least once. An event is leased by the statement that takes it (its due time is
pushed past the POST's timeout), so a deliverer that dies mid-POST leaves an event that comes due
again when the lease runs out; receivers dedupe on the event id. Nothing is ever sent unsigned.

Receivers check a delivery with `verify`:

    ok = verify(secret, await request.read(), request.headers["X-Dialer-Signature"], time.time())
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, TypeAlias

import aiohttp
import asyncpg
import orjson

import metrics
from dialer import db
from dialer.clock import Clock
from dialer.settings import Settings
from dialer.sql import Q

log = logging.getLogger(__name__)

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

SIGNATURE_HEADER = "X-Dialer-Signature"
USER_AGENT = "pgdialer-webhooks"
MAX_BACKOFF_SECONDS = 3600.0
# Added to the POST timeout to form the lease: covers writing the result after the response.
_LEASE_MARGIN_SECONDS = 30.0
# Up to this share of a retry delay is added, the same for an event every time, different across
# events: a receiver's outage then ends in a spread of retries rather than a synchronised burst.
_JITTER_SHARE = 0.1
_ERROR_MAX_CHARS = 300


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The X-Dialer-Signature value: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, body: bytes, header: str, now: float, tolerance_seconds: float = 300) -> bool:
    """True when `header` signs exactly `body` with `secret` at a time within the tolerance of `now`.

    `body` is the raw request body (not re-serialised JSON); `now` is unix seconds. The timestamp
    is inside the MAC, so a captured delivery replayed later than the tolerance is refused. Several
    `v1=` entries are accepted (any one matching suffices) so a sender can rotate secrets.
    """
    timestamp: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            macs.append(value)
    if timestamp is None or not macs or abs(now - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, body, timestamp).partition(",v1=")[2]
    return any(hmac.compare_digest(expected, mac) for mac in macs)


def retry_delay_seconds(attempts: int, base_seconds: float, event_id: uuid.UUID) -> float:
    """Wait after the `attempts`-th failed try: base * 2^(attempts-1), capped at an hour, plus up to
    10 % jitter derived from the event id and the try (deterministic, so tests and logs agree)."""
    exponent = min(max(attempts - 1, 0), 32)  # 2^32 times any sane base is past the cap already
    delay = min(base_seconds * float(1 << exponent), MAX_BACKOFF_SECONDS)
    digest = hashlib.blake2b(event_id.bytes + attempts.to_bytes(4, "big"), digest_size=8).digest()
    return delay * (1 + _JITTER_SHARE * int.from_bytes(digest, "big") / 2**64)


def encode_body(event_id: uuid.UUID, event_type: str, created_at: dt.datetime, payload: Any) -> bytes:
    """The POST body: `{"id", "type", "created_at", "data"}` as compact JSON."""
    return orjson.dumps(
        # str(): asyncpg's UUID is not the uuid.UUID orjson knows.
        {"id": str(event_id), "type": event_type, "created_at": created_at, "data": payload},
        option=orjson.OPT_UTC_Z,
    )


async def refresh_gauges(conn: Conn) -> None:
    """Set the backlog gauges from the whole database (every worker reports the same values)."""
    row = await conn.fetchrow(Q.webhook_backlog)
    assert row is not None
    metrics.WEBHOOK_BACKLOG.set(row["pending"])
    oldest: dt.datetime | None = row["oldest"]
    metrics.WEBHOOK_OLDEST_PENDING.set(oldest.timestamp() if oldest else 0)


def create_deliverer(settings: Settings, pool: asyncpg.Pool, clock: Clock) -> WebhookDeliverer | None:
    """The deliverer this process should run, or None when delivery is off here (said once, at start-up)."""
    if settings.webhook_concurrency == 0:
        log.info("webhook delivery is disabled in this process (DIALER_WEBHOOK_CONCURRENCY=0)")
        return None
    if not settings.webhook_secret.get():
        log.warning("DIALER_WEBHOOK_SECRET is not set: outcome webhooks stay pending, none is sent unsigned")
        return None
    return WebhookDeliverer(settings, pool, clock)


@dataclass(slots=True)
class _Result:
    event_id: uuid.UUID
    attempts: int
    attempted_at: dt.datetime
    status_code: int | None
    error: str | None
    duration_seconds: float
    result: str  # delivered / retry / gave_up
    next_attempt_at: dt.datetime | None


class WebhookDeliverer:
    """Takes due events from the outbox and POSTs them, `webhook_concurrency` at a time.

    `run()` is the worker's side task; `deliver_due()` takes and delivers one batch, for tests
    driven by a manual clock. One aiohttp session serves every delivery; `close()` ends it.
    """

    def __init__(self, settings: Settings, pool: asyncpg.Pool, clock: Clock) -> None:
        secret = settings.webhook_secret.get()
        if not secret:
            raise ValueError("webhook_secret is required: webhooks are never sent unsigned")
        if settings.webhook_concurrency < 1:
            raise ValueError("webhook_concurrency must be >= 1 to deliver")
        self.pool = pool
        self.clock = clock
        self._secret = secret
        self._concurrency = settings.webhook_concurrency
        self._timeout_seconds = settings.webhook_timeout_seconds
        self._max_attempts = settings.webhook_max_attempts
        self._backoff_seconds = settings.webhook_backoff_seconds
        self._poll_seconds = settings.poll_interval_seconds
        self._lease_seconds = settings.webhook_timeout_seconds + _LEASE_MARGIN_SECONDS
        self._session: aiohttp.ClientSession | None = None
        self._inflight: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._taken: dict[uuid.UUID, int] = {}  # in-flight event → its attempts when taken
        self._results: list[_Result] = []
        self._release: list[tuple[uuid.UUID, int]] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._crashed: Exception | None = None

    async def __aenter__(self) -> WebhookDeliverer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def stop(self) -> None:
        """Stop taking events; `run()` returns once the POSTs in flight have ended and been recorded."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Deliver until `stop()`. Cancelled, it releases the leases of unfinished POSTs first."""
        loop = asyncio.get_running_loop()
        more = False  # the last take filled every free slot, so more may be due right away
        next_poll = 0.0
        try:
            while not self._stopping:
                self._raise_crash()
                self._wake.clear()
                try:
                    await self._write_results()
                    free = self._concurrency - len(self._inflight)
                    if free > 0 and (more or loop.time() >= next_poll):
                        next_poll = loop.time() + self._poll_seconds
                        more = await self._take(free) == free
                except Exception as exc:
                    # A database blip must not stop the worker; a bug (anything else) must.
                    if not db.connection_lost(exc):
                        raise
                    log.warning("webhook delivery failed, retrying: %s", exc)
                    more = False
                # A POST that ends wakes us to record it (and, after a full take, to take more);
                # otherwise the poll timer does. With every slot busy only a POST's end can help;
                # a full take that left slots free (events given up at once) goes round again.
                timeout: float | None
                if len(self._inflight) >= self._concurrency:
                    timeout = None
                elif more:
                    timeout = 0.0
                else:
                    timeout = max(0.0, next_poll - loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            if self._inflight:
                await asyncio.wait(list(self._inflight.values()))
            await self._write_results()
            self._raise_crash()
        finally:
            await self._shutdown()

    async def deliver_due(self) -> int:
        """Take the events due now (up to the free concurrency), POST them, record the results.

        Returns how many events were taken (including those given up because their campaign no
        longer has a URL).
        """
        taken = await self._take(self._concurrency - len(self._inflight))
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()))
        await self._write_results()
        self._raise_crash()
        return taken

    # ---------------------------------------------------------------- internals

    def _raise_crash(self) -> None:
        if self._crashed is not None:
            exc, self._crashed = self._crashed, None
            raise exc

    async def _shutdown(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        # A task cancelled before its first step never ran its own cleanup.
        self._release.extend((event_id, self._taken.pop(event_id)) for event_id in self._inflight)
        self._inflight.clear()
        try:
            await self._write_results()
        except Exception as exc:  # the lease makes every unwritten event come due again anyway
            log.warning("could not record webhook results at shutdown: %s", exc)
        await self.close()

    async def _take(self, limit: int) -> int:
        if limit <= 0:
            return 0
        now = self.clock.now()
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(Q.webhook_claim, limit, now, self._lease_seconds)
        for row in rows:
            if row["url"] is None:
                metrics.WEBHOOK_DELIVERIES.labels("gave_up").inc()
                log.info(
                    "webhook event %s of campaign %s given up: webhook_url removed",
                    row["id"],
                    row["campaign_id"],
                )
                continue
            event_id: uuid.UUID = row["id"]
            self._taken[event_id] = row["attempts"]
            self._inflight[event_id] = asyncio.create_task(self._deliver(row), name=f"webhook {event_id}")
        return len(rows)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._concurrency, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=self._timeout_seconds),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def _deliver(self, row: asyncpg.Record) -> None:
        event_id: uuid.UUID = row["id"]
        try:
            result = await self._post(row)
            # Not `self._results.append(await ...)`: that binds the list before the await, and a
            # write swapping the list meanwhile would drop this result.
            self._results.append(result)
        except asyncio.CancelledError:
            # Cancelled by the drain: whether the receiver saw it is unknown, and it will be sent
            # again at least once; release the lease so that happens now rather than at its end.
            self._release.append((event_id, self._taken[event_id]))
            raise
        except Exception as exc:
            self._crashed = exc  # a bug, not a delivery failure: run() re-raises it
        finally:
            self._inflight.pop(event_id, None)
            self._taken.pop(event_id, None)
            self._wake.set()

    async def _post(self, row: asyncpg.Record) -> _Result:
        event_id: uuid.UUID = row["id"]
        attempts: int = row["attempts"]
        event_type: str = row["type"]
        body = encode_body(event_id, event_type, row["created_at"], row["payload"])
        attempted_at = self.clock.now()
        headers = {
            "Content-Type": "application/json",
            "X-Dialer-Event-Id": str(event_id),
            "X-Dialer-Event-Type": event_type,
            SIGNATURE_HEADER: sign(self._secret, body, int(attempted_at.timestamp())),
        }
        status: int | None = None
        error: str | None = None
        started = time.perf_counter()
        try:
            # Redirects are not followed: deliveries go only to the URL the campaign configures.
            async with self._client().post(
                row["url"], data=body, headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
        except TimeoutError:
            error = f"timeout after {self._timeout_seconds:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # Exception text names the host at most; the URL (which may carry a token) is not logged.
            error = f"{type(exc).__name__}: {exc}"[:_ERROR_MAX_CHARS]
        duration = time.perf_counter() - started
        metrics.WEBHOOK_DELIVERY_SECONDS.observe(duration)
        if status is not None and 300 <= status < 400:
            error = "redirect not followed"
        next_at: dt.datetime | None = None
        if status is not None and 200 <= status < 300:
            result = "delivered"
        elif status == 410 or attempts >= self._max_attempts:
            result = "gave_up"
        else:
            result = "retry"
            delay = retry_delay_seconds(attempts, self._backoff_seconds, event_id)
            next_at = self.clock.now() + dt.timedelta(seconds=delay)
        metrics.WEBHOOK_DELIVERIES.labels(result).inc()
        what = f"HTTP {status}" if error is None else error
        campaign = row["campaign_id"]
        if result == "gave_up":
            log.warning(
                "webhook event %s of campaign %s given up after %d tries: %s",
                event_id,
                campaign,
                attempts,
                what,
            )
        elif result == "retry":
            log.info("webhook event %s of campaign %s try %d failed: %s", event_id, campaign, attempts, what)
        return _Result(event_id, attempts, attempted_at, status, error, duration, result, next_at)

    async def _write_results(self) -> None:
        if not self._results and not self._release:
            return
        results, self._results = self._results, []
        release, self._release = self._release, []
        now = self.clock.now()
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                if results:
                    await conn.execute(
                        Q.webhook_record,
                        [r.event_id for r in results],
                        [r.attempts for r in results],
                        [r.attempted_at for r in results],
                        [r.status_code for r in results],
                        [r.error for r in results],
                        [r.duration_seconds for r in results],
                        [r.result for r in results],
                        [r.next_attempt_at for r in results],
                        now,
                    )
                if release:
                    await conn.execute(
                        Q.webhook_release, [r[0] for r in release], [r[1] for r in release], now
                    )
        except BaseException:
            # Kept for the next write; until then the leases hold the events.
            self._results[:0] = results
            self._release[:0] = release
            raise
