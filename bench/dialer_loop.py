"""The dialer itself, as deployed: `python -m dialer worker` processes against a simulator process.

Every scenario here gets a fresh migrated database, creates its campaigns (status `created`, so the
idle workers cannot touch them), waits for the workers' /readyz, and then starts the clock with one
transaction that sets every campaign running with an open business-hours window and NOTIFYs
`dialer_due`: the operator's "start" plus the worker's own window refresh, minus the up-to-one-second
wait for the maintenance tick, which is not what is being measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import orjson

from bench.common import Child, Context, CpuMeter, Figure, free_port, peak_rss_mib, percentile, say, wait_http
from bench.pyspy import Profiler
from dialer import campaigns, db, demo_providers
from dialer.clock import SystemClock

# Calls that never end during the run and never call back: only dispatch is measured. The campaign's
# ring timeout (300 s, the maximum) caps the simulated ring time, so no timer fires either.
DISPATCH_SIM: dict[str, Any] = {
    "answer_probability": 1.0,
    "busy_probability": 0.0,
    "no_answer_probability": 0.0,
    "failed_probability": 0.0,
    "ring_min_seconds": 300.0,
    "ring_max_seconds": 300.0,
    "drop_callback_probability": 1.0,
    "time_scale": 1.0,
    "seed": 1,
}
# The simulator's default outcome mix (35% answered, 15% busy, 35% no answer, 15% failed/congestion),
# ten thousand times faster than real: a call lasts milliseconds. With max_retries 0 every outcome
# is final (answered → completed, the rest → failed), so each number is dialed exactly once.
FULL_SIM: dict[str, Any] = {"time_scale": 0.0001, "seed": 1}

# Live calls per campaign in the full loop (2,000 over the 100 campaigns). A concurrency cap is what
# bounds live calls in a real dialer; without one, dispatch outruns the simulator's callback delivery
# (256 connections, each held until the worker has made the outcome durable), callbacks queue past the
# simulator's 5 s timeout and fail, and the run ends up timing the sweeper's reconciliation instead.
FULL_CAP = 20

# Start requests in flight per worker, attempts per claim: the defaults (200 / 100). A sweep of
# 200-1000 in flight and claims of 100-200 moved dispatch by less than run-to-run noise.
WORKER_ENV = {
    "DIALER_MAX_INFLIGHT_REQUESTS": "200",
    "DIALER_CLAIM_BATCH_SIZE": "100",
    "DIALER_LOG_LEVEL": "WARNING",
}
# Sweeps: BENCH_WORKER_ENV="DIALER_MAX_INFLIGHT_REQUESTS=400 DIALER_CLAIM_CONCURRENCY=3" overrides these.
WORKER_ENV.update(kv.split("=", 1) for kv in os.environ.get("BENCH_WORKER_ENV", "").split())

UNFINISHED = "SELECT count(*) FROM dialer_campaign WHERE id = ANY($1::bigint[]) AND status <> 'finished'"
GO = """
UPDATE dialer_campaign
   SET status = 'running', updated_at = $1::timestamptz,
       window_opens_at = $1::timestamptz - interval '1 hour',
       window_closes_at = $1::timestamptz + interval '7 days'
 WHERE id = ANY($2::bigint[])
"""


def phone(campaign: int, i: int) -> str:
    return f"+1{200 + campaign % 800:03d}{i:07d}"


@dataclass
class Stack:
    sim: Child
    sim_url: str
    workers: list[Child]
    ports: list[int]
    api_key: str  # the native dialect's key, for clients other than the workers


@contextlib.asynccontextmanager
async def stack(
    ctx: Context,
    dsn: str,
    sim_config: dict[str, Any],
    n_workers: int,
    env: dict[str, str] | None = None,
    provider: str = "simulator",
    mock: bool = False,
) -> AsyncIterator[Stack]:
    # The same per-provider wiring as `dialer demo --provider`: the simulator speaks that provider's
    # dialect and the workers dial through that adapter, secrets passed only by environment.
    ports = [free_port() for _ in range(n_workers)]
    side = demo_providers.plan(provider, [f"http://127.0.0.1:{p}" for p in ports])
    config = {
        **sim_config,
        "api_key": side.api_key,
        "callback_secret": side.callback_secret,
        "dialects": side.dialects,
        "dialect_options": side.dialect_options,
        **side.simulator_overrides,
    }
    path = ctx.logs / f"sim-{secrets.token_hex(3)}.json"
    path.write_bytes(orjson.dumps(config))
    sim_port = free_port()
    if mock:
        # The bare ceiling's provider process (answers in the native dialect, calls never end):
        # dispatch against it is measured against the same provider cost as the ceiling (1a).
        sim = Child(
            "mock-provider", [sys.executable, "-m", "bench.mock_provider", f"--port={sim_port}"], ctx.logs
        )
    else:
        sim = Child(
            "simulator",
            [
                sys.executable,
                "-m",
                "dialer",
                "simulate-provider",
                "--host",
                "127.0.0.1",
                "--port",
                str(sim_port),
                "--config",
                str(path),
            ],
            ctx.logs,
            env={"DIALER_LOG_LEVEL": "WARNING"},
        )
    workers: list[Child] = []
    try:
        sim_url = f"http://127.0.0.1:{sim_port}"
        await wait_http(sim_url + ("/healthz" if mock else "/v1/stats"), sim)
        for port in ports:
            workers.append(
                Child(
                    "worker",
                    [sys.executable, "-m", "dialer", "worker"],
                    ctx.logs,
                    env={
                        "DATABASE_URL": dsn,
                        **side.worker_env(sim_url),
                        "DIALER_HTTP_HOST": "127.0.0.1",
                        "DIALER_HTTP_PORT": str(port),
                        **WORKER_ENV,
                        **(env or {}),
                    },
                )
            )
        for w, port in zip(workers, ports, strict=True):
            await wait_http(f"http://127.0.0.1:{port}/readyz", w)
        yield Stack(sim, sim_url, workers, ports, side.api_key)
    finally:
        for w in workers:
            code = w.stop()
            if code not in (0, -15):
                say(f"  worker exited with {code}; log {w.log}:\n{w.tail()}")
        sim.stop()


async def make_campaigns(conn: asyncpg.Connection, count: int, per_campaign: int, **spec: Any) -> list[int]:
    now = SystemClock().now()
    ids = []
    for c in range(count):
        row = await campaigns.create(
            conn,
            campaigns.CampaignSpec(
                **{
                    "name": f"bench-{c}",
                    "max_concurrent_calls": 100_000,
                    "max_calls_per_second": 10_000,
                    "max_retries": 0,
                    # Simulated callees, benched at any hour: the window gate runs but is always open.
                    "callee_window_start": 0,
                    "callee_window_end": 1440,
                    **spec,
                }
            ),
            now,
        )
        rows = [campaigns.NumberRow(phone=phone(c, i)) for i in range(per_campaign)]
        await campaigns.enqueue(conn, row["id"], rows, now)
        ids.append(row["id"])
    await conn.execute("VACUUM ANALYZE dialer_number")
    await conn.execute("ANALYZE dialer_campaign")
    return ids


async def go(conn: asyncpg.Connection, ids: Sequence[int]) -> float:
    """Start every campaign at once and wake the workers; returns the commit time (time.time())."""
    async with conn.transaction():
        await conn.execute(GO, SystemClock().now(), list(ids))
        await conn.execute("SELECT pg_notify('dialer_due', '')")
    return time.time()


async def scrape(ports: Sequence[int]) -> dict[str, float]:
    """The workers' Prometheus series of interest, summed over workers (labels kept)."""
    keep = (
        "dialer_claim_batch_size_sum",
        "dialer_claim_batch_size_count",
        "dialer_claim_seconds_sum",
        "dialer_claim_seconds_count",
        "dialer_provider_request_seconds_sum",
        "dialer_provider_request_seconds_count",
        "dialer_callbacks_total",
    )
    out: dict[str, float] = {}
    async with aiohttp.ClientSession() as http:
        for port in ports:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                    for line in (await r.text()).splitlines():
                        series, _, value = line.rpartition(" ")
                        if series.startswith(keep) and "lookup" not in series:
                            out[series] = out.get(series, 0.0) + float(value)
    return out


def describe_metrics(m: dict[str, float]) -> str:
    def total(prefix: str) -> float:
        return sum(v for k, v in m.items() if k.startswith(prefix))

    parts = []
    claims = total("dialer_claim_batch_size_count")
    if claims:
        parts.append(
            f"{claims:,.0f} claims, {total('dialer_claim_batch_size_sum') / claims:.1f} attempts/claim, "
            f"{1000 * total('dialer_claim_seconds_sum') / claims:.2f} ms/claim as the worker sees it"
        )
    starts = total("dialer_provider_request_seconds_count")
    if starts:
        parts.append(
            f"start request {1000 * total('dialer_provider_request_seconds_sum') / starts:.1f} ms avg"
        )
    callbacks = {
        re.sub(r".*result=\"([^\"]*)\".*", r"\1", k): int(v)
        for k, v in m.items()
        if k.startswith("dialer_callbacks_total") and v
    }
    if callbacks:
        parts.append(f"callbacks by result {callbacks}")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------ 2. dispatch


async def _dispatch_once(
    ctx: Context, n_campaigns: int, per: int, profile: bool, env: dict[str, str] | None, mock: bool
) -> tuple[float, float, float]:
    total = n_campaigns * per
    async with ctx.server.database("dispatch") as dsn:
        conn = await db.connect(dsn)
        try:
            ids = await make_campaigns(conn, n_campaigns, per, ring_timeout_seconds=300)
            target = "mock provider" if mock else "simulator"
            say(
                f"dispatch → {target}: {total:,} numbers over {n_campaigns} campaigns, 1 worker, calls never end ..."
            )
            async with stack(ctx, dsn, DISPATCH_SIM, 1, env, mock=mock) as st:
                meter = CpuMeter(
                    {"worker": [st.workers[0].pid], "provider": [st.sim.pid]}, ctx.server.postmaster
                )
                tag = "dispatch-mock" if mock else "dispatch"
                targets = {f"{tag}-worker": st.workers[0].pid, f"{tag}-provider": st.sim.pid}
                spy = Profiler(ctx, targets) if profile else None
                meter.start()
                started = await go(conn, ids)
                deadline = started + 300
                due = "SELECT count(*) FROM dialer_number WHERE status IN ('untried', 'retry_wait')"
                while await conn.fetchval(due):
                    _check(st, deadline)
                    await asyncio.sleep(0.25)
                while await conn.fetchval(
                    "SELECT count(*) FROM dialer_attempt WHERE provider_call_id IS NULL"
                ):
                    _check(st, deadline)
                    await asyncio.sleep(0.02)
                elapsed = time.time() - started
                meter.stop()
                metrics = await scrape(st.ports)
                if spy is not None:
                    spy.stop()
                rss = peak_rss_mib(st.workers[0].pid)
                if mock:
                    async with aiohttp.ClientSession() as http, http.get(st.sim_url + "/v1/log") as resp:
                        received = sorted((await resp.json())["received"])
                else:
                    received = sorted(e["received_at_wall"] for e in await _sim_log(st.sim_url))
            ringing = await conn.fetchval(
                "SELECT count(*) FROM dialer_attempt WHERE provider_call_id IS NOT NULL AND state <> 'ended'"
            )
        finally:
            await conn.close()
    if ringing != total or len(received) != total:
        raise RuntimeError(f"dispatch: {ringing} of {total} attempts ringing, {len(received)} start requests")
    # The clock stops at the last start request the provider received, not when the 0.25 s poll
    # above noticed the end: that poll quantised the figure (a 3 s run could only read 2.82 or
    # 3.07 s). Every attempt's acceptance was then verified written; it lags by one flush (5 ms).
    detected, elapsed = elapsed, received[-1] - started
    rate = total / elapsed
    # Start requests as the simulator received them: the rate between the 10th and 90th percentile
    # request leaves out the ramp-up (200 new connections) and the tail.
    lo, hi = received[len(received) // 10], received[9 * len(received) // 10]
    steady = 0.8 * len(received) / (hi - lo)
    ctx.note(
        f"dispatch → {target}: {total:,} start requests in {elapsed:.2f}s = {rate:,.0f}/s, all recorded ringing "
        f"(end detected by polling at {detected:.2f}s; start requests "
        f"10%→90%: {steady:,.0f}/s); {describe_metrics(metrics)}; worker peak RSS {rss:.0f} MiB"
    )
    ctx.note(f"dispatch → {target} " + meter.summary())
    return rate, steady, meter.other_share()


async def dispatch(
    ctx: Context,
    bare_http: float | None,
    bare_sim: float | None = None,
    profile: bool = False,
    env: dict[str, str] | None = None,
) -> list[Figure]:
    """Dispatch against the ceiling's own mock provider (2a, compared with 1a) and against the
    simulator (2b, compared with 1d). On two cores the provider process takes its CPU from the
    worker and Postgres, and the simulator costs about twice the mock per request, so each ratio
    is taken against the ceiling that paid for the same provider."""
    n_campaigns, per = 100, (200 if ctx.quick else 500)
    figures = []
    for number, mock, ceiling, ref in (("2a", True, bare_http, "1a"), ("2b", False, bare_sim, "1d")):
        runs = sorted(
            [
                await _dispatch_once(ctx, n_campaigns, per, profile, env, mock)
                for _ in range(1 if ctx.quick else 3)
            ]
        )
        rate, steady, _ = runs[len(runs) // 2]
        spread = (
            f"median of {len(runs)}: {', '.join(f'{r[0]:,.0f}' for r in runs)}; " if len(runs) > 1 else ""
        )
        ratio = rate / ceiling if ceiling else None
        target = "the ceiling's mock provider" if mock else "the simulator"
        figures.append(
            Figure(
                number,
                f"Dispatch rate, 1 worker → {target} (claim under pacing rules → start request → recorded ringing)",
                rate,
                "attempts/s",
                f"≥ 70% of bare http → same provider ({ref})",
                None if ratio is None else ratio >= 0.70,
                "" if ratio is None else f"{ratio:.2f}× of {ref}",
                f"{spread}{n_campaigns * per:,} numbers / {n_campaigns} campaigns; steady (10%→90%) {steady:,.0f}/s",
                contention=max(r[2] for r in runs),
            )
        )
    return figures


def _check(st: Stack, deadline: float) -> None:
    for child in (*st.workers, st.sim):
        if not child.alive():
            raise RuntimeError(f"{child.name} died:\n{child.tail()}")
    if time.time() > deadline:
        raise RuntimeError("scenario timed out")


# ------------------------------------------------------------------------------------------ 3. full loop


async def full_loop(
    ctx: Context,
    n_workers: int,
    bare: float | None,
    profile: bool = False,
    env: dict[str, str] | None = None,
    cap: int = FULL_CAP,
    provider: str = "simulator",
) -> list[Figure]:
    n_campaigns = 100
    per = 200 if ctx.quick else 1000
    total = n_campaigns * per
    async with ctx.server.database(f"full{n_workers}") as dsn:
        conn = await db.connect(dsn)
        try:
            ids = await make_campaigns(conn, n_campaigns, per, max_concurrent_calls=cap, provider=provider)
            say(f"full loop: {total:,} numbers over {n_campaigns} campaigns, {n_workers} worker(s) ...")
            async with stack(ctx, dsn, FULL_SIM, n_workers, env, provider) as st:
                meter = CpuMeter(
                    {"workers": [w.pid for w in st.workers], "simulator": [st.sim.pid]}, ctx.server.postmaster
                )
                spy = (
                    Profiler(
                        ctx,
                        {
                            f"full{n_workers}-worker": st.workers[0].pid,
                            f"full{n_workers}-simulator": st.sim.pid,
                        },
                    )
                    if profile
                    else None
                )
                meter.start()
                started = await go(conn, ids)
                deadline = started + (120 if ctx.quick else 400)
                # The worker marks a campaign finished (within a maintenance tick) once none of its
                # numbers is due or live: polling 100 campaign rows costs nothing, where counting
                # 100,000 numbers every 250 ms would compete with the run.
                while await conn.fetchval(UNFINISHED, ids):
                    _check(st, deadline)
                    await asyncio.sleep(0.25)
                meter.stop()
                metrics = await scrape(st.ports)
                rss = [peak_rss_mib(w.pid) or 0.0 for w in st.workers]
                if spy is not None:
                    spy.stop()
                sim_stats = await _sim_stats(st.sim_url)
            # updated_at is the worker's clock when the outcome was written: its quantiles time the run.
            row: asyncpg.Record | None = await conn.fetchrow(
                """SELECT count(*) FILTER (WHERE status IN ('completed', 'failed', 'dnc')) AS final,
                          count(*) AS numbers, sum(dials) AS dials,
                          extract(epoch FROM percentile_disc(0.1) WITHIN GROUP (ORDER BY updated_at)) AS t10,
                          extract(epoch FROM percentile_disc(0.9) WITHIN GROUP (ORDER BY updated_at)) AS t90,
                          extract(epoch FROM max(updated_at)) AS t_last
                     FROM dialer_number"""
            )
            attempts = await conn.fetchval("SELECT count(*) FROM dialer_attempt WHERE state = 'ended'")
            outcomes: dict[str, int] = {
                r[0]: r[1]
                for r in await conn.fetch(
                    "SELECT outcome, count(*) FROM dialer_attempt GROUP BY 1 ORDER BY 2 DESC"
                )
            }
        finally:
            await conn.close()
    assert row is not None
    if row["final"] != total or attempts != total or row["dials"] != total:
        raise RuntimeError(
            f"full loop: {row['final']} of {total} final, {attempts} attempts, {row['dials']} dials"
        )
    t10, t90, t_last = float(row["t10"]), float(row["t90"]), float(row["t_last"])
    elapsed = t_last - started
    rate = total / elapsed
    steady = 0.8 * total / (t90 - t10)
    ctx.note(
        f"full loop w={n_workers}: {total:,} numbers final in {elapsed:.2f}s = {rate:,.0f} attempts/s "
        f"(10%→90% of the run: {steady:,.0f}/s); outcomes {dict(outcomes)}"
    )
    ctx.note(
        f"full loop w={n_workers}: {describe_metrics(metrics)}; callbacks sent {sim_stats.get('callbacks_sent')}, "
        f"failed {sim_stats.get('callbacks_failed')}, retries {sim_stats.get('callback_retries')}; "
        f"duplicate start requests {sim_stats.get('duplicate_start_requests')}"
    )
    ctx.note(f"full loop w={n_workers} " + meter.summary())
    figures = [
        Figure(
            f"3{'ab'[n_workers - 1]}",
            f"Full loop, {n_workers} worker process{'es' * (n_workers > 1)} "
            "(claim → start → callback → outcome)",
            rate,
            "attempts/s",
            "≥ 2,000 attempts/s",
            rate >= 2000,
            f"{rate / bare:.2f}× of 1a" if bare else "",
            f"{total:,} numbers / {n_campaigns} campaigns (≤ {cap} live calls each), all final; "
            f"steady {steady:,.0f}/s",
            contention=meter.other_share(),
        )
    ]
    figures.append(
        Figure(
            f"7{'ab'[n_workers - 1]}",
            f"Worker peak RSS (VmHWM), full loop, {n_workers} worker(s)",
            max(rss),
            "MiB",
            "",
            None,
            "",
            " / ".join(f"{r:.0f}" for r in rss) + " MiB; " + _cpu_split(meter),
        )
    )
    return figures


def _cpu_split(meter: CpuMeter) -> str:
    r, e = meter.result, meter.elapsed
    return (
        "CPU % of one core: "
        + ", ".join(f"{k} {100 * r[k] / e:.0f}" for k in ("workers", "simulator", "postgres") if k in r)
        + f", machine busy {100 * r['machine busy'] / r['machine total']:.0f}% of 2 cores"
    )


async def _sim_log(url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url + "/v1/log") as r:
        data: list[dict[str, Any]] = await r.json()
        return data


async def _sim_stats(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(url + "/v1/stats") as r:
        data: dict[str, Any] = await r.json()
        return data


# ------------------------------------------------------------------------------------------ 6. wake-up


async def wake_latency(ctx: Context) -> list[Figure]:
    samples = 100 if ctx.quick else 200
    spacing = 0.02
    async with ctx.server.database("wake") as dsn:
        conn = await db.connect(dsn)
        try:
            ids = await make_campaigns(conn, 1, 0, ring_timeout_seconds=300)
            say(
                f"enqueue→start latency: {samples} single-number inserts, {spacing * 1000:.0f} ms apart, "
                "idle worker ..."
            )
            async with stack(ctx, dsn, DISPATCH_SIM, 1) as st:
                await go(conn, ids)
                await asyncio.sleep(1.5)  # let the worker settle into its idle wait
                sent: dict[str, float] = {}
                acked: dict[str, float] = {}
                for i in range(samples):
                    number = phone(0, i)
                    sent[number] = time.time()
                    await conn.execute(
                        "INSERT INTO dialer_number (campaign_id, phone) VALUES ($1, $2)", ids[0], number
                    )
                    acked[number] = time.time()
                    await asyncio.sleep(spacing)
                received: dict[str, float] = {}
                deadline = time.time() + 10
                while len(received) < samples and time.time() < deadline:
                    received = {e["to"]: e["received_at_wall"] for e in await _sim_log(st.sim_url) if e["to"]}
                    await asyncio.sleep(0.1)
            claimed = {
                r["phone"]: r["claimed_at"].timestamp()
                for r in await conn.fetch(
                    "SELECT n.phone, a.claimed_at FROM dialer_attempt a JOIN dialer_number n ON n.id = a.number_id"
                )
            }
        finally:
            await conn.close()
    if len(received) < samples:
        raise RuntimeError(f"wake latency: only {len(received)} of {samples} start requests arrived")
    # From just before the INSERT is sent: an upper bound on "from the commit" (the commit happens
    # inside that round trip; the worker is notified at commit, before the inserter sees the ack).
    start_ms = [1000 * (received[k] - t) for k, t in sent.items()]
    after_ack = [1000 * (received[k] - t) for k, t in acked.items()]
    claim_ms = [1000 * (claimed[k] - t) for k, t in sent.items()]
    p50, p99 = percentile(start_ms, 50), percentile(start_ms, 99)
    ctx.note(
        f"enqueue→start: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(start_ms):.2f} ms from sending the INSERT; "
        f"p99 {percentile(after_ack, 99):.2f} ms from its acknowledgement; INSERT send→claim start "
        f"(attempt claimed_at) p50 {percentile(claim_ms, 50):.2f} ms, p99 {percentile(claim_ms, 99):.2f} ms"
    )
    return [
        Figure(
            "6a",
            "Enqueue→start latency p50 (INSERT commit → simulator received start request)",
            p50,
            "ms",
            "",
            None,
            "",
            f"{samples} samples, {spacing * 1000:.0f} ms apart, LISTEN/NOTIFY wake-up",
        ),
        Figure(
            "6b",
            "Enqueue→start latency p99",
            p99,
            "ms",
            "p99 < 100 ms",
            p99 < 100,
            "",
            f"max {max(start_ms):.1f} ms; timed from sending the INSERT (upper bound); INSERT→claim start "
            f"p99 {percentile(claim_ms, 99):.1f} ms",
        ),
    ]
