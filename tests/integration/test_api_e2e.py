"""End to end as an upstream system sees it: a real `dialer api` and two real `dialer worker`
processes on one database, the provider simulator, and the upstream's own webhook receiver."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web

from dialer.api import hash_token, new_token
from dialer.demo import free_port
from dialer.sql import Q
from dialer.webhooks import verify
from tests.factories import NOW, phone
from tests.workers import reap, simulator, spawn, spawn_api, wait_ready, wait_until

pytestmark = pytest.mark.slow
HOOK_SECRET = "upstream-hook-secret"
NUMBERS = 40


class Receiver:
    """The upstream's webhook endpoint: verifies every signature, answers 500 once to force a retry."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.deliveries = 0
        self.bad_signatures = 0
        self._failed_once = False

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.deliveries += 1
        if not verify(HOOK_SECRET, body, request.headers.get("X-Dialer-Signature", ""), time.time()):
            self.bad_signatures += 1
            return web.Response(status=401)
        if not self._failed_once:
            self._failed_once = True
            return web.Response(status=500)
        event = orjson.loads(body)
        assert request.headers["X-Dialer-Event-Id"] == event["id"]
        self.events[event["id"]] = event  # deduplicate on the event id, as documented
        return web.Response(status=204)


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/dialer", r.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield r, f"http://127.0.0.1:{port}/hooks/dialer"
    finally:
        await runner.cleanup()


async def test_upstream_creates_uploads_starts_gets_signed_webhooks_and_the_cdr(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Create → upload → start over the API; every number's outcome arrives signed; the CDR matches."""
    token = new_token()
    await conn.execute(Q.api_token_insert, "crm", hash_token(token), NOW)
    auth = {"Authorization": f"Bearer {token}"}
    api = spawn_api(dsn)
    async with (
        simulator(time_scale=0.005, answer_probability=0.5, busy_probability=0.3) as sim,
        receiver() as (hooks, hook_url),
    ):
        workers = [
            spawn(dsn, sim.base_url, DIALER_WEBHOOK_SECRET=HOOK_SECRET, DIALER_WEBHOOK_BACKOFF_SECONDS="0.2")
            for _ in range(2)
        ]
        with reap([api, *workers]):
            await wait_ready([api, *workers])
            async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{api.port}", headers=auth) as http:
                await _scenario(http, conn, hooks, hook_url)


async def _scenario(
    http: aiohttp.ClientSession, conn: asyncpg.Connection, hooks: Receiver, hook_url: str
) -> None:
    create = {
        "data": {
            "type": "campaigns",
            "attributes": {
                "name": "crm-e2e",
                "max_concurrent_calls": 10,
                "max_calls_per_second": 20,
                "max_retries": 2,
                "retry_wait_seconds": 1,
                "webhook_url": hook_url,
                # The workers dial on the wall clock: no callee-local window (New York numbers).
                "callee_window_start": None,
                "callee_window_end": None,
            },
        }
    }
    async with http.post("/v1/campaigns", json=create) as resp:
        assert resp.status == 201
        cid = (await resp.json(content_type=None))["data"]["id"]
    upload = "".join(f"{phone(i)}\r\n" for i in range(NUMBERS)).encode()
    async with http.post(
        f"/v1/campaigns/{cid}/numbers/upload", data=upload, headers={"Content-Type": "text/csv"}
    ) as resp:
        assert resp.status == 201
        assert (await resp.json(content_type=None))["meta"]["added"] == NUMBERS
    async with http.post(f"/v1/campaigns/{cid}/actions/start") as resp:
        assert resp.status == 200

    async with asyncio.timeout(90):
        while len({e["data"]["number"]["phone"] for e in hooks.events.values()}) < NUMBERS:
            await asyncio.sleep(0.1)

    assert hooks.bad_signatures == 0
    assert hooks.deliveries > len(hooks.events)  # the forced 500 was retried
    finished = [e for e in hooks.events.values() if e["type"] == "number.finished"]
    assert len(finished) == NUMBERS
    final = {r["phone"]: r["status"] for r in await conn.fetch("SELECT phone, status FROM dialer_number")}
    assert {e["data"]["number"]["phone"]: e["data"]["number"]["status"] for e in finished} == final
    assert all(s in ("completed", "failed", "dnc") for s in final.values())

    async with http.get(f"/v1/campaigns/{cid}/cdr.csv") as resp:
        assert resp.status == 200
        rows = list(csv.DictReader(io.StringIO((await resp.read()).decode())))
    attempts = await conn.fetchval("SELECT count(*) FROM dialer_attempt WHERE state = 'ended'")
    assert len(rows) == attempts >= NUMBERS
    assert {"+" + r["phone_number"] for r in rows} == set(final)

    async with http.get(f"/v1/campaigns/{cid}/status") as resp:
        status = (await resp.json(content_type=None))["data"]["attributes"]
    assert status["items_done"] == NUMBERS and status["percent"] == 100.0
    # The receiver may see a POST before its deliverer records the 2xx: wait for the log to settle.
    await wait_until(
        conn, "SELECT count(*) = $1 FROM dialer_webhook_event WHERE delivered_at IS NOT NULL", NUMBERS
    )
    async with http.get(f"/v1/campaigns/{cid}/webhook-events?status=delivered") as resp:
        log = await resp.json(content_type=None)
    assert log["meta"]["total"] == NUMBERS
