"""The KEDA postgresql trigger's query (k8s/components/keda/scaledobject.yaml) against a real migrated database."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import asyncpg
import yaml

from tests.factories import NOW, add_numbers, make_campaign, open_window

SCALEDOBJECT = Path(__file__).resolve().parents[2] / "k8s" / "components" / "keda" / "scaledobject.yaml"


def trigger_query() -> str:
    doc = yaml.safe_load(SCALEDOBJECT.read_text())
    [trigger] = [t for t in doc["spec"]["triggers"] if t["type"] == "postgresql"]
    query = trigger["metadata"]["query"]
    assert isinstance(query, str)
    return query


def at(query: str) -> str:
    """The query with the database clock replaced by a parameter, so the test's clock decides what is due."""
    assert "now()" in query
    return query.replace("now()", "$1::timestamptz")


async def test_keda_query_on_an_empty_queue_is_zero(conn: asyncpg.Connection) -> None:
    """The trigger query, exactly as shipped, returns the number 0 (not NULL) when nothing is queued."""
    assert await conn.fetchval(trigger_query()) == 0


async def test_keda_query_counts_due_work_capped_per_campaign(conn: asyncpg.Connection) -> None:
    """Demand is the due numbers of dispatchable campaigns, each capped at its calls-per-second limit."""
    big = await make_campaign(conn, name="big", max_calls_per_second=10)
    await open_window(conn, big["id"])
    await add_numbers(conn, big["id"], 30)  # 30 due, capped at 10/s

    small = await make_campaign(conn, name="small", max_calls_per_second=100)
    await open_window(conn, small["id"])
    await add_numbers(conn, small["id"], 8, offset=1000)
    # Not due yet (retry wait) and out of attempts: neither is demand.
    await conn.execute(
        "UPDATE dialer_number SET status = 'retry_wait', next_attempt_at = $2 "
        "WHERE id IN (SELECT id FROM dialer_number WHERE campaign_id = $1 ORDER BY id LIMIT 2)",
        small["id"],
        NOW + dt.timedelta(minutes=10),
    )
    await conn.execute(
        "UPDATE dialer_number SET attempts = 1 + $2::int, dials = 1 + $2::int "
        "WHERE id = (SELECT max(id) FROM dialer_number WHERE campaign_id = $1)",
        small["id"],
        small["max_retries"],
    )

    created = await make_campaign(conn, name="created", start=False)  # never started
    await open_window(conn, created["id"])
    await add_numbers(conn, created["id"], 5, offset=2000)

    closed = await make_campaign(conn, name="closed")  # running, but no business-hours window computed
    await add_numbers(conn, closed["id"], 5, offset=3000)

    demand = await conn.fetchval(at(trigger_query()), NOW + dt.timedelta(seconds=1))
    assert demand == 10 + (8 - 2 - 1)
    # Before the numbers come due there is no demand at all.
    assert await conn.fetchval(at(trigger_query()), NOW - dt.timedelta(seconds=1)) == 0
