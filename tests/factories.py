"""Factories with defaults, overridden by keyword."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

from dialer import campaigns

NOW = dt.datetime(2026, 11, 25, 15, 0, tzinfo=dt.UTC)  # a Wednesday


def phone(i: int) -> str:
    # Valid NANP numbers: area 212, exchange 555-299 range is fine for E.164 shape checks in SQL.
    return f"+1212{200 + i // 10000:03d}{i % 10000:04d}"


async def make_campaign(
    conn: asyncpg.Connection,
    *,
    name: str = "c1",
    start: bool = True,
    now: dt.datetime = NOW,
    **overrides: Any,
) -> asyncpg.Record:
    # No callee-local window unless a test asks for one: tests that run worker processes dial on the
    # wall clock, and phone() numbers are in New York, where 08:00-21:00 is closed half the UTC day.
    defaults = {
        "max_concurrent_calls": 100,
        "max_calls_per_second": 100,
        "retry_wait_seconds": 60,
        "callee_window_start": None,
        "callee_window_end": None,
    }
    spec = campaigns.CampaignSpec(name=name, **{**defaults, **overrides})
    row = await campaigns.create(conn, spec, now)
    if start:
        row = await campaigns.transition(conn, name, "start", now)
    return row


async def add_numbers(
    conn: asyncpg.Connection,
    campaign_id: int,
    count: int,
    *,
    now: dt.datetime = NOW,
    offset: int = 0,
    priority: int = 0,
) -> int:
    rows = [campaigns.NumberRow(phone=phone(offset + i), priority=priority) for i in range(count)]
    return await campaigns.enqueue(conn, campaign_id, rows, now)


async def open_window(conn: asyncpg.Connection, campaign_id: int, *, now: dt.datetime = NOW) -> None:
    """Set a business-hours window around `now`, as a worker's refresh would for an always-open campaign."""
    await conn.execute(
        "UPDATE dialer_campaign SET window_opens_at = $2::timestamptz - interval '1 day', "
        "window_closes_at = $2::timestamptz + interval '1 day' WHERE id = $1",
        campaign_id,
        now,
    )
