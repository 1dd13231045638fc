"""The bare ceiling: the fastest plain asyncpg queue loop, on its own one-table queue, in the same run.

Method of /work/shared/research/queue_anchors.md (raw-asyncpg rows): claim =
`UPDATE … WHERE id IN (SELECT id … ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED) RETURNING`,
ack = one `UPDATE … FROM unnest` per batch. http: claim-ahead, 50 per claim while at most 200 are
in flight, one aiohttp POST per job to a minimal aiohttp server in another process. noop: two
claim→ack loops of 500 per process. No pacing, heartbeat, retries or NOTIFY: this is the floor of
what Postgres + aiohttp cost on this machine, not a queue anyone should ship.

Worker processes are started with `python -m bench.bare worker …`, print "ready", wait for "go" on
stdin, drain the table and print one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

import aiohttp
import asyncpg
import uvloop

from bench.common import Child, Context, CpuMeter, Figure, free_port, say, wait_http

SCHEMA = """
CREATE TABLE bench_job (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status  smallint NOT NULL DEFAULT 0,
    payload text NOT NULL,
    result  integer
);
CREATE INDEX bench_job_queued ON bench_job (id) WHERE status = 0;
"""
# A start request the simulator accepts, so the same loop can also be pointed at the simulator: the
# dialer's request body, with a callback URL nobody listens on (the simulator is told to drop callbacks).
FILL = """
INSERT INTO bench_job (payload)
SELECT '{"attempt_id":"bare-' || i || '","to":"+1212' || lpad(i::text, 7, '0')
       || '","from":null,"ring_timeout_seconds":300,"callback_url":"http://127.0.0.1:9/callbacks/simulator",'
       || '"dtmf":null,"metadata":{"campaign":"c' || (i % 100) || '"}}'
  FROM generate_series(1, $1::integer) AS i
"""
CLAIM = """
UPDATE bench_job SET status = 1
 WHERE id IN (SELECT id FROM bench_job WHERE status = 0 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING id, payload
"""
ACK = """
UPDATE bench_job j SET status = 2, result = u.r
  FROM unnest($1::bigint[], $2::integer[]) AS u(id, r)
 WHERE j.id = u.id
"""


# ------------------------------------------------------------------------------------------ worker side


async def _http_loop(dsn: str, url: str, batch: int, inflight: int, api_key: str) -> None:
    claim_conn = await asyncpg.connect(dsn)
    ack_conn = await asyncpg.connect(dsn)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=inflight))
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
    acks: list[tuple[int, int]] = []
    live = 0
    done = 0
    claiming = True
    slot = asyncio.Event()
    ack_due = asyncio.Event()

    async def call(job_id: int, payload: str) -> None:
        nonlocal live
        try:
            async with session.post(url, data=payload, headers=headers) as r:
                await r.read()
                status = r.status
        except (aiohttp.ClientError, OSError):
            status = 0
        acks.append((job_id, status))
        live -= 1
        slot.set()
        if len(acks) >= batch:
            ack_due.set()

    async def acker() -> None:
        nonlocal done
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ack_due.wait(), 0.005)
            ack_due.clear()
            if acks:
                taken = acks[:]
                acks.clear()
                await ack_conn.execute(ACK, [a[0] for a in taken], [a[1] for a in taken])
                done += len(taken)
            elif not claiming and live == 0:
                return

    ack_task = asyncio.create_task(acker())
    ready()
    await go()
    tasks: set[asyncio.Task[None]] = set()
    while True:
        if inflight - live < batch:
            slot.clear()
            await slot.wait()
            continue
        rows = await claim_conn.fetch(CLAIM, batch)
        if not rows:
            break
        live += len(rows)
        for row in rows:
            t = asyncio.create_task(call(row[0], row[1]))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
    claiming = False
    if tasks:
        await asyncio.gather(*tasks)
    await ack_task
    await finish(done)
    await session.close()
    await claim_conn.close()
    await ack_conn.close()


async def _noop_loop(dsn: str, batch: int, loops: int) -> None:
    conns = [await asyncpg.connect(dsn) for _ in range(loops)]

    async def loop(conn: asyncpg.Connection) -> int:
        n = 0
        while True:
            rows = await conn.fetch(CLAIM, batch)
            if not rows:
                return n
            await conn.execute(ACK, [r[0] for r in rows], [200] * len(rows))
            n += len(rows)

    ready()
    await go()
    counts = await asyncio.gather(*(loop(c) for c in conns))
    await finish(sum(counts))
    for c in conns:
        await c.close()


def ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


async def go() -> None:
    global _cpu0
    await _expect("go")
    _cpu0 = time.process_time()


async def finish(jobs: int) -> None:
    """Report, then hold the connections open until told to exit, so their backends' CPU can be read."""
    result = {"jobs": jobs, "finished_at": time.time(), "cpu": time.process_time() - _cpu0}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    await _expect("exit")


async def _expect(word: str) -> None:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != word:
        raise SystemExit(f"expected {word!r} on stdin, got {line!r}")


_cpu0 = 0.0


def worker_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--mode", choices=("http", "noop"), required=True)
    p.add_argument("--url", default="")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--inflight", type=int, default=200)
    p.add_argument("--loops", type=int, default=2)
    p.add_argument("--api-key", default="")
    args = p.parse_args(argv)

    if args.mode == "http":
        uvloop.run(_http_loop(args.dsn, args.url, args.batch, args.inflight, args.api_key))
    else:
        uvloop.run(_noop_loop(args.dsn, args.batch, args.loops))


# ------------------------------------------------------------------------------------------ orchestrator


async def measure(
    ctx: Context,
    dsn: str,
    *,
    n: int,
    mode: str,
    workers: int,
    url: str = "",
    extra: dict[str, int | str] | None = None,
    provider: tuple[str, int] | None = None,
) -> tuple[float, str, float]:
    """Fill the table with n jobs, drain it with `workers` processes: (jobs/s, CPU summary, other load)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS bench_job")
        await conn.execute(SCHEMA)
        await conn.execute(FILL, n)
        await conn.execute("VACUUM ANALYZE bench_job")
        opts = [f"--{k}={v}" for k, v in (extra or {}).items()]
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.bare",
                "worker",
                f"--dsn={dsn}",
                f"--mode={mode}",
                f"--url={url}",
                *opts,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            for _ in range(workers)
        ]
        for p in procs:
            assert p.stdout is not None
            line = await asyncio.wait_for(p.stdout.readline(), 30)
            if line.strip() != b"ready":
                raise RuntimeError(f"bare worker did not start: {line!r}")
        named: dict[str, list[int]] = {"bare workers": [p.pid for p in procs]}
        if provider is not None:
            named[provider[0]] = [provider[1]]
        meter = CpuMeter(named, ctx.server.postmaster)
        meter.start()
        started = time.time()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            await p.stdin.drain()
        results = []
        for p in procs:
            assert p.stdout is not None
            line = await asyncio.wait_for(p.stdout.readline(), 600)
            results.append(json.loads(line))
        meter.stop()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"exit\n")
            await p.stdin.drain()
            await p.wait()
        elapsed = max(r["finished_at"] for r in results) - started
        finished = await conn.fetchval(
            "SELECT count(*) FROM bench_job WHERE status = 2 AND result IN (200, 201)"
        )
        if finished != n or sum(r["jobs"] for r in results) != n:
            raise RuntimeError(f"bare {mode}: {finished} of {n} jobs finished with 200")
        # The workers measured their own CPU (they exited before the meter read them).
        meter.result["bare workers"] = sum(r["cpu"] for r in results)
        return n / elapsed, meter.summary(), meter.other_share()
    finally:
        await conn.close()


def median_of(rates: list[float]) -> tuple[float, str]:
    rates = sorted(rates)
    mid = rates[len(rates) // 2]
    spread = f"median of {len(rates)}: {', '.join(f'{r:,.0f}' for r in rates)}" if len(rates) > 1 else ""
    return mid, spread


async def run(ctx: Context) -> list[Figure]:
    from bench.dialer_loop import DISPATCH_SIM, stack

    n_http = 50_000 if ctx.quick else 100_000
    n_noop = 100_000 if ctx.quick else 200_000
    reps = 1 if ctx.quick else 3
    http_opts: dict[str, int | str] = {"batch": 50, "inflight": 200}
    port = free_port()
    mock = Child("mock-provider", [sys.executable, "-m", "bench.mock_provider", f"--port={port}"], ctx.logs)
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz", mock)
        url = f"http://127.0.0.1:{port}/v1/calls"
        async with ctx.server.database("bare", migrate=False) as dsn:

            async def series(label: str, reps: int, **kw: Any) -> tuple[float, str, float]:
                rates = []
                other = 0.0
                for _ in range(reps):
                    say(f"bare {label}, {kw['n']:,} jobs ...")
                    rate, cpu, load = await measure(ctx, dsn, **kw)
                    ctx.note(f"bare {label}: {rate:,.0f} jobs/s; {cpu}")
                    rates.append(rate)
                    other = max(other, load)
                return (*median_of(rates), other)

            mock_kw: dict[str, Any] = {
                "url": url,
                "provider": ("mock provider", mock.pid),
                "extra": http_opts,
            }
            r1, n1, o1 = await series("http w=1", reps, n=n_http, mode="http", workers=1, **mock_kw)
            r2, n2, o2 = await series("http w=2", 1, n=n_http, mode="http", workers=2, **mock_kw)
            r3, n3, o3 = await series(
                "noop w=1", 1, n=n_noop, mode="noop", workers=1, extra={"batch": 500, "loops": 2}
            )
            # The same loop against the simulator the dialer talks to: what is left of the ceiling once
            # the provider side costs what the simulator costs.
            async with stack(ctx, dsn, DISPATCH_SIM, 0) as st:
                sim_kw: dict[str, Any] = {
                    "url": st.sim_url + "/v1/calls",
                    "provider": ("simulator", st.sim.pid),
                    "extra": {**http_opts, "api-key": st.api_key},
                }
                r4, n4, o4 = await series(
                    "http w=1 → simulator", reps, n=n_http, mode="http", workers=1, **sim_kw
                )
    finally:
        mock.stop()
    return [
        Figure(
            "1a",
            "Bare ceiling, http, 1 process (claim 50, ≤200 in flight, minimal aiohttp mock)",
            r1,
            "jobs/s",
            "~5,900 jobs/s measured before on PG15",
            None,
            "1.00× of 1a",
            n1,
            contention=o1,
        ),
        Figure(
            "1b",
            "Bare ceiling, http, 2 processes",
            r2,
            "jobs/s",
            "~7,200 jobs/s measured before on PG15",
            None,
            f"{r2 / r1:.2f}× of 1a",
            n2,
            contention=o2,
        ),
        Figure(
            "1c",
            "Bare ceiling, noop (no HTTP), 1 process, 2 loops × claim 500",
            r3,
            "jobs/s",
            "~69,000 jobs/s measured before on PG15",
            None,
            "",
            n3,
            contention=o3,
        ),
        Figure(
            "1d",
            "Bare loop, http, 1 process, against the dialer's simulator (dispatch config)",
            r4,
            "jobs/s",
            "",
            None,
            f"{r4 / r1:.2f}× of 1a",
            n4,
            contention=o4,
        ),
    ]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker_main(sys.argv[2:])
    else:
        raise SystemExit("usage: python -m bench.bare worker --dsn … --mode http|noop")
