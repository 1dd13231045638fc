"""Scenarios that need no worker process: bulk enqueue, and the claim statement against a big backlog."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from bench.common import Context, Figure, percentile, say
from dialer import campaigns, db, ingest
from dialer.clock import SystemClock
from dialer.sql import Q

# ------------------------------------------------------------------------------------------ 4. enqueue

_AREAS = ("212", "415", "646", "312", "617", "202", "305", "713", "818", "917")
_CLIS = ("+14155550100", "+12125550199", "+16175550123")


_EXCHANGES = [e for e in range(200, 1000) if e % 100 != 11]  # N11 (211, 311, …) are service codes


def _number(i: int) -> str:
    """The i-th of 79 million distinct valid US numbers (10 area codes, 790 exchanges, 10,000 lines)."""
    block, line = divmod(i // len(_AREAS), 10_000)
    return f"+1{_AREAS[i % len(_AREAS)]}{_EXCHANGES[block]}{line:04d}"


def write_csv(path: Path, rows: int) -> None:
    """`rows` distinct valid numbers in the upload format, a quarter each of number / +cli / +dtmf / both."""
    with path.open("w", newline="") as f:
        f.write("number,cli,dtmf\r\n")
        batch: list[str] = []
        for i in range(rows):
            n = _number(i)
            shape = i % 4
            batch.append(
                f"{n}\r\n"
                if shape == 0
                else f"{n},{_CLIS[i % 3]}\r\n"
                if shape == 1
                else f"{n},,1#2\r\n"
                if shape == 2
                else f"{n},{_CLIS[i % 3]},w1#113\r\n"
            )
            if len(batch) == 10_000:
                f.write("".join(batch))
                batch.clear()
        f.write("".join(batch))


def _parsed(path: Path, bad: list[ingest.BadRow]) -> Iterator[campaigns.NumberRow]:
    for item in ingest.parse_file(path):
        if isinstance(item, ingest.BadRow):
            bad.append(item)
            continue
        yield campaigns.NumberRow(phone=item.number, caller_id=item.cli, dtmf=item.dtmf, line=item.line)


async def _fresh_campaign(conn: asyncpg.Connection, name: str) -> int:
    await conn.execute("TRUNCATE dialer_attempt, dialer_number")
    with contextlib.suppress(asyncpg.PostgresError):
        await conn.execute("CHECKPOINT")
    row = await campaigns.create(conn, campaigns.CampaignSpec(name=name), SystemClock().now())
    return int(row["id"])


async def enqueue(ctx: Context) -> list[Figure]:
    total = 200_000 if ctx.quick else 1_000_000
    path = ctx.logs / "enqueue.csv"
    t = time.perf_counter()
    write_csv(path, total)
    say(
        f"enqueue: generated {total:,} rows ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f}s"
    )
    now = SystemClock().now()
    async with ctx.server.database("enqueue") as dsn:
        conn = await db.connect(dsn)
        try:
            # End to end, as `dialer enqueue` does it: parse + validate + COPY to staging + merge.
            cid = await _fresh_campaign(conn, "e2e")
            bad: list[ingest.BadRow] = []
            t = time.perf_counter()
            added = await campaigns.enqueue(conn, cid, _parsed(path, bad), now)
            e2e = time.perf_counter() - t
            if bad or added != total:
                raise RuntimeError(f"enqueue: {added} added, {len(bad)} bad rows (first: {bad[:1]})")

            # Parsing alone, into memory (what the database part is then given).
            t = time.perf_counter()
            rows = list(_parsed(path, bad))
            parse = time.perf_counter() - t

            # The database part alone: enqueue() from parsed rows (COPY to staging + merge).
            cid = await _fresh_campaign(conn, "db-only")
            t = time.perf_counter()
            await campaigns.enqueue(conn, cid, rows, now)
            db_part = time.perf_counter() - t

            # Raw COPY straight into dialer_number: no staging, no dedup, no Python row objects.
            cid = await _fresh_campaign(conn, "copy-only")
            records = [(cid, r.phone, r.caller_id, r.dtmf, 0, now, now, now) for r in rows]
            t = time.perf_counter()
            await conn.copy_records_to_table(
                "dialer_number",
                records=records,
                columns=[
                    "campaign_id",
                    "phone",
                    "caller_id",
                    "dtmf",
                    "priority",
                    "next_attempt_at",
                    "created_at",
                    "updated_at",
                ],
            )
            copy = time.perf_counter() - t
        finally:
            await conn.close()
    path.unlink()
    ctx.note(
        f"enqueue {total:,} rows: end to end {e2e:.2f}s ({total / e2e:,.0f}/s) = parse alone {parse:.2f}s "
        f"({total / parse:,.0f}/s) + database part alone {db_part:.2f}s ({total / db_part:,.0f}/s); "
        f"raw COPY into dialer_number {copy:.2f}s ({total / copy:,.0f}/s)"
    )
    return [
        Figure(
            "4a",
            "Enqueue end to end (parse_file → validate → campaigns.enqueue)",
            total / e2e,
            "rows/s",
            "≥ 50,000 rows/s",
            total / e2e >= 50_000,
            "",
            f"{total:,} valid rows; parse alone {total / parse:,.0f}/s, enqueue() from parsed rows "
            f"{total / db_part:,.0f}/s",
        ),
        Figure(
            "4b",
            "Raw COPY into dialer_number (comparison)",
            total / copy,
            "rows/s",
            "",
            None,
            "",
            "copy_records_to_table of pre-built tuples, same indexes and CHECKs",
        ),
    ]


# ------------------------------------------------------------------------------------------ 5. claim latency


async def _load_backlog(conn: asyncpg.Connection, backlog: int, n_campaigns: int = 10) -> None:
    """`backlog` due numbers spread over running campaigns with open windows and caps that never bind."""
    now = SystemClock().now()
    ids = []
    for c in range(n_campaigns):
        spec = campaigns.CampaignSpec(
            name=f"claim-{c}", max_concurrent_calls=100_000, max_calls_per_second=10_000
        )
        ids.append((await campaigns.create(conn, spec, now))["id"])
    t = time.perf_counter()
    await conn.execute(
        """INSERT INTO dialer_number (campaign_id, phone, next_attempt_at)
           SELECT c.id, '+1' || (200 + c.k)::text || lpad(i::text, 7, '0'), $2
             FROM unnest($1::bigint[]) WITH ORDINALITY AS c(id, k), generate_series(1, $3::integer) AS i""",
        ids,
        now,
        backlog // n_campaigns,
    )
    await conn.execute("VACUUM ANALYZE dialer_number")
    await conn.execute(
        """UPDATE dialer_campaign SET status = 'running', window_opens_at = $1::timestamptz - interval '1 hour',
                  window_closes_at = $1::timestamptz + interval '7 days'""",
        now,
    )
    await conn.execute("VACUUM ANALYZE dialer_campaign")
    say(f"  backlog {backlog:,} loaded in {time.perf_counter() - t:.1f}s")


async def claim_args(conn: asyncpg.Connection, worker: uuid.UUID, limit: int) -> list[object]:
    """Q.claim's arguments: worker, limit, now, dial timeout, then empty/NULL for any optional filters
    (e.g. providers to skip) that later versions of the query add."""
    args: list[object] = [worker, limit, SystemClock().now(), 30]
    params = (await conn.prepare(Q.claim)).get_parameters()
    args += [[] if p.kind == "array" else None for p in params[len(args) :]]
    return args


async def _claim_ms(conn: asyncpg.Connection, worker: uuid.UUID) -> float:
    """One claim of 50 in a transaction that is rolled back, so the backlog stays what it was."""
    args = await claim_args(conn, worker, 50)
    tr = conn.transaction()
    await tr.start()
    try:
        t0 = time.perf_counter()
        rows = await conn.fetch(Q.claim, *args)
        t1 = time.perf_counter()
    finally:
        await tr.rollback()
    if len(rows) != 50:
        raise RuntimeError(f"claim returned {len(rows)} rows")
    return 1000 * (t1 - t0)


async def claim_latency(ctx: Context) -> list[Figure]:
    samples = 1000
    small, big = 10_000, 1_000_000
    say(
        f"claim latency: {samples} rolled-back claims of 50 at backlogs {small:,} and {big:,} (10 campaigns) ..."
    )
    async with ctx.server.database("claim10k") as dsn_small, ctx.server.database("claim1m") as dsn_big:
        conns = [await db.connect(dsn_small), await db.connect(dsn_big)]
        try:
            await _load_backlog(conns[0], small)
            await _load_backlog(conns[1], big)
            worker = uuid.uuid4()
            claims: list[list[float]] = [[], []]
            # Interleaved, so whatever else the machine does at any moment weighs on both sizes alike.
            for i in range(samples + 20):
                if i % 50 == 0:
                    # Each rolled-back claim leaves 50 dead attempt rows in the live-attempt index that
                    # the next claim's count would wade through; a real worker's rows are live or ended.
                    for conn in conns:
                        await conn.execute("VACUUM dialer_attempt, dialer_campaign")
                for conn, out in zip(conns, claims, strict=True):
                    ms = await _claim_ms(conn, worker)
                    if i >= 20:  # the first few warm the plan cache and the buffers
                        out.append(ms)
            stats: list[list[float]] = [[], []]
            for _ in range(6):
                for conn, out in zip(conns, stats, strict=True):
                    t0 = time.perf_counter()
                    await conn.fetch(Q.backlog_stats, SystemClock().now())
                    out.append(1000 * (time.perf_counter() - t0))
        finally:
            for conn in conns:
                await conn.close()
    (s_claim, b_claim), (s_stats, b_stats) = claims, (stats[0][1:], stats[1][1:])
    s99, b99 = percentile(s_claim, 99), percentile(b_claim, 99)
    ratio = b99 / s99
    for label, c, st in (("10k", s_claim, s_stats), ("1M", b_claim, b_stats)):
        ctx.note(
            f"claim @ {label}: p50 {percentile(c, 50):.2f} ms, p99 {percentile(c, 99):.2f} ms, "
            f"max {max(c):.2f} ms; backlog_stats median {percentile(st, 50):.1f} ms"
        )
    return [
        Figure(
            "5a",
            "Claim of 50 (dialer_claim), backlog 10k: p50 / p99",
            s99,
            "ms",
            "",
            None,
            "",
            f"{samples} samples, 10 campaigns, each claim rolled back",
            shown=f"{percentile(s_claim, 50):.2f} / {s99:.2f} ms",
        ),
        Figure(
            "5b",
            "Claim of 50 (dialer_claim), backlog 1M: p50 / p99",
            b99,
            "ms",
            "p99 ≤ 1.5 × p99 at 10k",
            ratio <= 1.5,
            "",
            f"p99 = {ratio:.2f}× the 10k p99",
            shown=f"{percentile(b_claim, 50):.2f} / {b99:.2f} ms",
        ),
        Figure(
            "5c",
            "Backlog stats query (Q.backlog_stats), median at 10k / 1M",
            percentile(b_stats, 50),
            "ms",
            "",
            None,
            "",
            "5 runs each after a warm-up",
            shown=f"{percentile(s_stats, 50):.1f} / {percentile(b_stats, 50):.1f} ms",
        ),
    ]
