"""The live /metrics of a real `dialer worker` process: valid exposition, and every metric the
dashboard and the alert rules read is really exported."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import signal
from asyncio.subprocess import PIPE, STDOUT

import aiohttp
import asyncpg
import pytest

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
