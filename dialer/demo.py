"""`dialer demo`: a real pipeline on one machine — Postgres, the provider simulator, worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from dialer import campaigns, db, demo_providers, ingest
from dialer.clock import SystemClock
from dialer.settings import Settings
from dialer.simulator import Simulator, SimulatorConfig

_AREA_CODES = ("212", "312", "415", "617", "646", "702", "713", "808")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_numbers(path: Path, count: int, rng: random.Random) -> None:
    """A CSV in the upload format (number[,cli[,dtmf]]), plus a few bad rows to show validation."""
    seen: set[str] = set()
    with path.open("w", newline="") as f:
        while len(seen) < count:
            n = f"+1{rng.choice(_AREA_CODES)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
            if n not in seen:
                seen.add(n)
                f.write(n + ("\r\n" if len(seen) % 2 else ",,1#\r\n"))
        f.write("not-a-number\r\n+1212\r\n")


def run_demo(
    *,
    numbers: int,
    campaigns: int,
    workers: int,
    time_scale: float,
    timeout_seconds: float,
    provider: str = demo_providers.DEFAULT_KIND,
) -> int:
    """0 when every campaign finished and every worker exited cleanly, else 1."""
    return asyncio.run(_demo(numbers, campaigns, workers, time_scale, timeout_seconds, provider))


async def _demo(
    numbers: int, n_campaigns: int, n_workers: int, time_scale: float, timeout: float, kind: str
) -> int:
    settings = Settings.from_env()
    tmp = Path(tempfile.mkdtemp(prefix="dialer-demo-"))
    server: db.EmbeddedPostgres | None = None
    say = print
    try:
        if settings.database_url:
            dsn = settings.database_url
            say("database: DATABASE_URL")
        else:
            say("database: starting an embedded PostgreSQL (no DATABASE_URL set) ...")
            server = await asyncio.to_thread(db.EmbeddedPostgres, tmp / "pg", ephemeral=True)
            dsn = server.dsn("postgres")
        conn = await db.connect(dsn)
        await db.migrate(conn)

        ports = [free_port() for _ in range(n_workers)]
        provider = demo_providers.plan(kind, [f"http://127.0.0.1:{p}" for p in ports])
        sim = Simulator(
            SimulatorConfig(
                api_key=provider.api_key,
                callback_secret=provider.callback_secret,
                time_scale=time_scale,
                seed=7,
                ring_min_seconds=3,
                ring_max_seconds=25,
                talk_mean_seconds=45,
                dialects=provider.dialects,
                dialect_options=provider.dialect_options,
                **provider.simulator_overrides,
            )
        )
        sim_url = await sim.start()
        say(
            f"provider simulator: {sim_url} (ring and talk times compressed {1 / time_scale:.0f}x "
            "so the demo ends in about a minute)"
        )
        if provider.account_json is not None:
            say(provider.describe(sim_url))

        now = SystemClock().now()
        rng = random.Random(42)
        tag = time.strftime("%H%M%S")
        names: list[str] = []
        per = numbers // n_campaigns
        for i in range(n_campaigns):
            name = f"demo-{tag}-{i + 1}"
            spec = campaigns.CampaignSpec(
                name=name,
                provider=provider.account,
                caller_id="+12125550100",
                ring_timeout_seconds=25,
                retry_wait_seconds=3,
                max_retries=2,
                max_concurrent_calls=60 + 20 * i,
                max_calls_per_second=40 + 10 * i,
                time_zone=("America/New_York", "Europe/London", "Asia/Jerusalem")[i % 3],
                # Simulated callees: the demo dials at any hour (the gate still runs, always open).
                callee_window_start=0,
                callee_window_end=1440,
            )
            row = await campaigns.create(conn, spec, now)
            csv = tmp / f"{name}.csv"
            write_numbers(csv, per, rng)
            good = [
                campaigns.NumberRow(phone=r.number, caller_id=r.cli, dtmf=r.dtmf, line=r.line)
                for r in ingest.parse_file(csv)
                if isinstance(r, ingest.Row)
            ]
            added = await campaigns.enqueue(conn, row["id"], good, now)
            await campaigns.transition(conn, name, "start", now)
            names.append(name)
            say(
                f"campaign {name}: {added} numbers (2 bad rows rejected), cap {spec.max_concurrent_calls} "
                f"concurrent / {spec.max_calls_per_second} per second, retry after {spec.retry_wait_seconds}s "
                f"up to {spec.max_retries} times, zone {spec.time_zone}"
            )

        env = {
            **os.environ,
            "DATABASE_URL": dsn,
            "DIALER_LOG_LEVEL": "WARNING",
            "DIALER_MAINTENANCE_INTERVAL_SECONDS": "0.5",
            "DIALER_STATS_INTERVAL_SECONDS": "2",
            "DIALER_RECONCILE_GRACE_SECONDS": "5",
            **provider.worker_env(sim_url),
        }
        procs = [
            # Popen returns at once (it only forks); the demo polls the children, never blocks on them.
            subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-m", "dialer", "worker"],
                env={**env, "DIALER_HTTP_PORT": str(p), "DIALER_HTTP_HOST": "127.0.0.1"},
            )
            for p in ports
        ]
        say(
            f"workers: {n_workers} processes, metrics at "
            + ", ".join(f"http://127.0.0.1:{p}/metrics" for p in ports)
        )
        say("")
        say(f"{'t':>5} {'dialed':>7} {'live':>5} {'answered':>8} {'retrying':>8} {'done':>6} {'calls/s':>8}")
        started = time.monotonic()
        last_dialed, last_t = 0, started
        ids = [
            r["id"] for r in await conn.fetch("SELECT id FROM dialer_campaign WHERE name = ANY($1)", names)
        ]
        snapshot = ""
        while True:
            await asyncio.sleep(1.0)
            s = await conn.fetchrow(
                """SELECT (SELECT count(*) FROM dialer_attempt WHERE campaign_id = ANY($1)) AS dialed,
                          (SELECT count(*) FROM dialer_attempt WHERE campaign_id = ANY($1) AND state <> 'ended') AS live,
                          (SELECT count(*) FROM dialer_attempt WHERE campaign_id = ANY($1)
                              AND outcome LIKE 'answered%') AS answered,
                          (SELECT count(*) FROM dialer_number WHERE campaign_id = ANY($1)
                              AND status = 'retry_wait') AS retrying,
                          (SELECT count(*) FROM dialer_number WHERE campaign_id = ANY($1)
                              AND status IN ('completed', 'failed', 'dnc')) AS done,
                          (SELECT count(*) FROM dialer_campaign WHERE id = ANY($1) AND status <> 'finished') AS open
                """,
                ids,
            )
            assert s is not None
            t = time.monotonic()
            cps = (s["dialed"] - last_dialed) / (t - last_t)
            last_dialed, last_t = s["dialed"], t
            say(
                f"{t - started:5.0f} {s['dialed']:7d} {s['live']:5d} {s['answered']:8d} {s['retrying']:8d} "
                f"{s['done']:6d} {cps:8.0f}"
            )
            if s["open"] == 0 or t - started > timeout or any(p.poll() is not None for p in procs):
                break
        with contextlib.suppress(Exception):
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{ports[0]}/metrics") as r:
                snapshot = await r.text()
        for p in procs:
            p.terminate()
        codes = [p.wait(timeout=30) for p in procs]
        elapsed = time.monotonic() - started
        stats = sim.stats()
        await sim.stop()

        say("")
        say("summary")
        say(f"  provider {provider.label}")
        for name in names:
            summary = await campaigns.summary(conn, name)
            say(f"  {name}: status {summary['status']}, numbers {summary['numbers']}")
            say(f"    attempts by outcome {summary['attempts']}")
        totals = await conn.fetchrow(
            """SELECT count(*) AS attempts, count(*) FILTER (WHERE consumed_attempt) AS consumed,
                      count(DISTINCT number_id) AS numbers FROM dialer_attempt WHERE campaign_id = ANY($1)""",
            ids,
        )
        assert totals is not None
        say(
            f"  {totals['attempts']} attempts for {totals['numbers']} numbers in {elapsed:.1f}s "
            f"({totals['attempts'] / elapsed:.0f} attempts/s average)"
        )
        # The simulator books calls under the campaign their start request named; some providers'
        # requests name none (Twilio, Paycall, CALLR) or a campaign of their own (Upcall's id).
        max_live = {
            key or "(start requests name no campaign)": value
            for key, value in (stats.get("max_live_calls_by_campaign") or {}).items()
        }
        say(
            f"  provider side: {stats.get('calls_started')} calls started, "
            f"{stats.get('duplicate_start_requests')} duplicate start requests, max live per campaign "
            f"{max_live}"
        )
        say(f"  worker exit codes: {codes}")
        lines = [
            ln
            for ln in snapshot.splitlines()
            if ln.startswith(("dialer_outcomes_total", "dialer_attempts_started_total"))
        ]
        if lines:
            say(
                f"  metrics (Prometheus text at http://127.0.0.1:{ports[0]}/metrics while the worker ran), e.g.:"
            )
            for ln in lines[:6]:
                say(f"    {ln}")
        say("  run `dialer worker` (see README) to keep a worker and its /metrics up.")
        finished = all([(await campaigns.get(conn, n))["status"] == "finished" for n in names])
        await conn.close()
        return 0 if finished and all(c == 0 for c in codes) else 1
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
