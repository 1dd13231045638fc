"""The claim's walk over campaigns at their caps: how its cost grows with live calls per campaign.

    python bench/claim_walk.py [--db embedded|pg15|DSN] [--campaigns 100] [--caps 20,100,500] [--claims 200]

In steady state most campaigns sit at max_concurrent_calls and a claim walks them to find the slots
that outcomes freed. Per campaign at its cap the claim counts the live attempts (the partial index on
live attempts, then the heap for visibility) and moves on, so a walk costs in proportion to the live
calls. Each database: N running campaigns, each with `cap` live attempts (its cap) and 300 ended ones,
numbers still due; then `--claims` claims of 100 that find every campaign full and dial nothing.
Reported per claim: wall time (median, p90) and the Postgres backend's CPU (from /proc, so the
server must run on this machine). ANALYZE only, no VACUUM: on a busy attempt table the pages are not
all-visible, and the count reads the heap, as here.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import time
import uuid
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Server, cpu_seconds, percentile
from dialer import campaigns, db
from dialer.sql import Q

NOW = dt.datetime(2026, 11, 25, 15, 0, tzinfo=dt.UTC)
ENDED_PER_CAMPAIGN = 300


async def _fill(conn: asyncpg.Connection, n_campaigns: int, cap: int) -> None:
    per = cap + ENDED_PER_CAMPAIGN + 200  # 200 still due: the walk must not stop at "nothing due"
    for i in range(n_campaigns):
        spec = campaigns.CampaignSpec(
            name=f"c{i}",
            max_concurrent_calls=cap,
            max_calls_per_second=1000,
            callee_window_start=None,
            callee_window_end=None,
        )
        row = await campaigns.create(conn, spec, NOW)
        await campaigns.transition(conn, spec.name, "start", NOW)
        rows = [campaigns.NumberRow(phone=f"+1212{200 + i:03d}{k:04d}") for k in range(per)]
        await campaigns.enqueue(conn, int(row["id"]), rows, NOW)
    await conn.execute(
        "UPDATE dialer_campaign SET window_opens_at = $1::timestamptz - interval '1 day',"
        " window_closes_at = $1::timestamptz + interval '1 day'",
        NOW,
    )
    # cap live and ENDED_PER_CAMPAIGN ended attempts per campaign, the ended ones first by number.
    await conn.execute(
        """
        WITH pick AS (SELECT n.id, n.campaign_id,
                             row_number() OVER (PARTITION BY n.campaign_id ORDER BY n.id) AS rn
                        FROM dialer_number n)
        INSERT INTO dialer_attempt (id, number_id, campaign_id, attempt_no, worker_id, provider, state,
                                    claimed_at, deadline_at, ended_at, outcome, consumed_attempt, decision)
        SELECT gen_random_uuid(), p.id, p.campaign_id, 1, gen_random_uuid(), 'simulator',
               CASE WHEN p.rn <= $3::int THEN 'ended' ELSE 'ringing' END,
               $1::timestamptz - interval '60 s', $1::timestamptz + interval '1 hour',
               CASE WHEN p.rn <= $3::int THEN $1::timestamptz - interval '30 s' END,
               CASE WHEN p.rn <= $3::int THEN 'busy' END,
               CASE WHEN p.rn <= $3::int THEN true END,
               CASE WHEN p.rn <= $3::int THEN 'final' END
          FROM pick p WHERE p.rn <= $2::int + $3::int
        """,
        NOW,
        cap,
        ENDED_PER_CAMPAIGN,
    )
    await conn.execute(
        "UPDATE dialer_number n SET status = CASE WHEN a.state = 'ended' THEN 'completed' ELSE 'in_progress' END,"
        " attempts = CASE WHEN a.state = 'ended' THEN 1 ELSE 0 END, dials = 1"
        " FROM dialer_attempt a WHERE a.number_id = n.id"
    )
    for table in ("dialer_attempt", "dialer_number", "dialer_campaign"):
        await conn.execute(f"ANALYZE {table}")


async def measure(server: Server, n_campaigns: int, cap: int, claims: int) -> str:
    async with server.database(f"walk{cap}") as dsn:
        conn = await db.connect(dsn)
        try:
            await _fill(conn, n_campaigns, cap)
            pid = int(await conn.fetchval("SELECT pg_backend_pid()"))
            worker = uuid.uuid4()
            times: list[float] = []
            cpu0 = cpu_seconds(pid)
            for _ in range(claims):
                started = time.perf_counter()
                rows = await conn.fetch(Q.claim, worker, 100, NOW, 30, [])
                times.append(time.perf_counter() - started)
                if rows:
                    raise RuntimeError(f"a claim dialed {len(rows)}: the campaigns are not at their caps")
            cpu = (cpu_seconds(pid) - cpu0) / claims
        finally:
            await conn.close()
    return (
        f"{n_campaigns} campaigns x {cap} live calls ({n_campaigns * cap:,} live): claim finding all at"
        f" their caps: median {percentile(times, 50) * 1000:.2f} ms, p90 {percentile(times, 90) * 1000:.2f} ms,"
        f" Postgres backend CPU {cpu * 1000:.2f} ms per claim"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db")
    parser.add_argument("--campaigns", type=int, default=100)
    parser.add_argument("--caps", default="20,100,500")
    parser.add_argument("--claims", type=int, default=200)
    args = parser.parse_args()
    server = await Server.open(args.db)
    try:
        for cap in (int(c) for c in args.caps.split(",")):
            print(await measure(server, args.campaigns, cap, args.claims), flush=True)
    finally:
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
