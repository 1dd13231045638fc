"""The live /metrics of a real `dialer worker` process: valid exposition, and every metric the
dashboard and the alert rules read is really exported; callback lag is measured from the provider's
event time."""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import os
import shutil
import signal
import uuid
from asyncio.subprocess import PIPE, STDOUT
from hashlib import sha256

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web

import metrics
from dialer.clock import ManualClock
from dialer.http import make_app
from dialer.providers.simulated import SimulatedProvider
from dialer.settings import Secret, Settings
from dialer.worker import Worker
from metrics import build
from tests.factories import add_numbers, make_campaign
from tests.workers import reap, simulator, spawn, wait_ready

pytestmark = pytest.mark.slow


async def scrape_after_dialing(dsn: str, conn: asyncpg.Connection) -> str:
    """/metrics of a worker that has dialed a small campaign, so labelled metrics have samples too."""
    async with simulator(time_scale=0.004, answer_probability=0.5) as sim:
        now = dt.datetime.now(dt.UTC)
        campaign = await make_campaign(conn, name="expo", now=now, max_concurrent_calls=5)
        await add_numbers(conn, campaign["id"], 10, now=now)
        worker = spawn(dsn, sim.base_url)
        with reap([worker]):
            await wait_ready([worker])
            url = f"http://127.0.0.1:{worker.port}/metrics"
            async with aiohttp.ClientSession() as http, asyncio.timeout(60):
                while True:
                    async with http.get(url) as response:
                        assert response.status == 200
                        text = await response.text()
                    # Outcomes recorded and the stats loop has published the campaign's gauges.
                    if (
                        "dialer_outcomes_total{" in text
                        and 'dialer_campaign_max_concurrent_calls{campaign="expo"}' in text
                    ):
                        break
                    await asyncio.sleep(0.2)
            worker.signal(signal.SIGTERM)
            assert worker.proc.wait(timeout=20) == 0
    return text


async def test_live_exposition_passes_promtool_and_has_every_referenced_metric(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """A running worker's /metrics passes `promtool check metrics` and exports every metric the dashboard and rules read."""
    text = await scrape_after_dialing(dsn, conn)

    exported = build.exposed_names(text)
    missing = {
        name: sorted(where)
        for name, where in build.referenced_metrics().items()
        if name not in exported and name not in build.GENERATED_SERIES
    }
    assert not missing, f"referenced but not exported by a live worker: {missing}"

    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("DIALER_REQUIRE_PROMTOOL"):
            pytest.fail("promtool is required (DIALER_REQUIRE_PROMTOOL is set)")
        pytest.skip(
            "promtool not installed (apt-get install prometheus); .ci/offline-metrics runs this check"
        )
    proc = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT
    )
    output, _ = await proc.communicate(text.encode())
    assert proc.returncode == 0, output.decode()


def lag_samples(provider: str) -> tuple[float, float]:
    count = metrics.REGISTRY.get_sample_value("dialer_callback_lag_seconds_count", {"provider": provider})
    total = metrics.REGISTRY.get_sample_value("dialer_callback_lag_seconds_sum", {"provider": provider})
    return count or 0.0, total or 0.0


async def test_callback_lag_is_measured_from_the_provider_event_time(pool: asyncpg.Pool) -> None:
    """An authentic callback adds receipt time minus its event time (ended_at, answered_at) to
    dialer_callback_lag_seconds{provider}; forged and timeless (ringing) callbacks add nothing."""
    secret = "lag-secret"
    now = dt.datetime(2030, 1, 7, 12, 0, tzinfo=dt.UTC)
    # The start-request URL is never used: only callbacks reach this provider here.
    provider = SimulatedProvider("http://127.0.0.1:9", "k", secret, name="sim-lag")
    worker = Worker(Settings(callback_secret=Secret(secret)), pool, {"sim-lag": provider}, ManualClock(now))
    stop = asyncio.Event()
    runner = web.AppRunner(make_app(worker))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/callbacks/sim-lag"
    run = asyncio.create_task(worker.run(stop))

    async def post(record: dict[str, object], *, forged: bool = False) -> int:
        body = orjson.dumps({"attempt_id": str(uuid.uuid4()), "call_id": "c1", **record})
        signature = hmac.new(secret.encode(), body, sha256).hexdigest()
        headers = {"X-Simulator-Signature": "0" * 64 if forged else signature}
        async with http.post(url, data=body, headers=headers) as response:
            return response.status

    def ago(seconds: float) -> str:
        return (now - dt.timedelta(seconds=seconds)).isoformat()

    try:
        async with aiohttp.ClientSession() as http:
            before = lag_samples("sim-lag")
            # Unknown attempts (404) still measure the provider's delivery: the event is authentic.
            assert await post({"status": "completed", "answered_at": ago(100), "ended_at": ago(42)}) == 404
            assert await post({"status": "in-progress", "answered_at": ago(3)}) == 200
            assert await post({"status": "ringing"}) == 200
            assert await post({"status": "completed", "ended_at": ago(500)}, forged=True) == 401
            # A provider clock a little ahead of ours is no lag, not a negative one.
            assert await post({"status": "busy", "ended_at": ago(-1)}) == 404
            after = lag_samples("sim-lag")
        assert after[0] - before[0] == 3
        assert after[1] - before[1] == pytest.approx(42 + 3 + 0)
    finally:
        stop.set()
        await run
        await runner.cleanup()
        await provider.close()
