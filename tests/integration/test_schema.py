"""The schema: migrations replay to schema.sql, migrate is safe to run twice and concurrently, and the
database itself refuses rows that break the queue's invariants."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from dialer import db, sql
from tests.conftest import with_database

NOW = dt.datetime(2026, 11, 25, 15, 0, tzinfo=dt.UTC)
PHONE = "+12125550100"

# Catalog snapshots compared between the two databases. Column order is left out on purpose: a
# column added by a later migration lands last, wherever schema.sql lists it, and nothing reads
# columns by position. The migration bookkeeping table exists only on the migrated side.
_CATALOG: dict[str, str] = {
    "columns": """
        SELECT table_name, column_name, data_type, udt_name, column_default, is_nullable,
               is_identity, identity_generation, character_maximum_length, numeric_precision
          FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name <> 'dialer_schema_migrations'""",
    "constraints": """
        SELECT c.conrelid::regclass::text AS rel, c.conname, c.contype, pg_get_constraintdef(c.oid) AS def
          FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
         WHERE n.nspname = 'public' AND c.conrelid::regclass::text <> 'dialer_schema_migrations'""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
         WHERE schemaname = 'public' AND tablename <> 'dialer_schema_migrations'""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args, pg_get_functiondef(p.oid) AS def
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'public' AND p.proname LIKE 'dialer%'""",
    "triggers": """
        SELECT t.tgrelid::regclass::text AS rel, t.tgname, pg_get_triggerdef(t.oid) AS def, t.tgenabled
          FROM pg_trigger t WHERE NOT t.tgisinternal""",
    "relations": """
        SELECT c.relname, c.relkind, c.reloptions
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relname NOT LIKE 'dialer_schema_migrations%'""",
    "extensions": "SELECT extname FROM pg_extension",
}


async def _snapshot(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {kind: sorted(tuple(r.values()) for r in await conn.fetch(q)) for kind, q in _CATALOG.items()}


EmptyDb = Callable[[], Awaitable[str]]


@pytest.fixture
async def empty_db(admin_dsn: str) -> AsyncIterator[EmptyDb]:
    """A factory of fresh, unmigrated databases, dropped after the test."""
    admin = await asyncpg.connect(admin_dsn)
    names: list[str] = []

    async def make() -> str:
        name = f"dialer_e_{uuid.uuid4().hex[:12]}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        names.append(name)
        return with_database(admin_dsn, name)

    try:
        yield make
    finally:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_migrations_replay_to_schema_sql(empty_db: EmptyDb) -> None:
    """Replaying queue/migrations/*.sql in order gives exactly the schema queue/schema.sql declares."""
    from_schema = await db.connect(await empty_db())
    from_migrations = await db.connect(await empty_db())
    try:
        await from_schema.execute(sql.schema())
        applied = await db.migrate(from_migrations)
        assert applied == [version for version, _ in sql.migrations()]
        want, got = await _snapshot(from_schema), await _snapshot(from_migrations)
        assert want["columns"], "the snapshot must see the schema at all"
        for kind in _CATALOG:
            assert got[kind] == want[kind], kind
    finally:
        await from_schema.close()
        await from_migrations.close()


def test_migrations_are_numbered_in_order() -> None:
    """Migration files sort by a zero-padded number, so lexical order is the order they apply in."""
    versions = [version for version, _ in sql.migrations()]
    assert versions
    numbers = [version.split("_", 1)[0] for version in versions]
    assert all(n.isdigit() and len(n) == 4 for n in numbers), versions
    assert [int(n) for n in numbers] == list(range(1, len(numbers) + 1))


async def test_migrate_twice_applies_nothing_the_second_time(empty_db: EmptyDb) -> None:
    """A second migrate on an up-to-date database applies nothing and changes no table."""
    conn = await db.connect(await empty_db())
    try:
        assert await db.migrate(conn) == [v for v, _ in sql.migrations()]
        before = await _snapshot(conn)
        assert await db.migrate(conn) == []
        assert await _snapshot(conn) == before
        assert await conn.fetchval("SELECT count(*) FROM dialer_schema_migrations") == len(sql.migrations())
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_each_version_once(empty_db: EmptyDb) -> None:
    """Two pods migrating one fresh database together both succeed; each version is applied exactly once."""
    dsn = await empty_db()
    conns = [await db.connect(dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(db.migrate(c) for c in conns))
        applied = [v for result in results for v in result]
        assert sorted(applied) == [v for v, _ in sql.migrations()]
        assert await conns[0].fetchval("SELECT to_regclass('dialer_attempt') IS NOT NULL")
        # The advisory lock is released, or the next deploy's migrate would hang.
        assert await asyncio.wait_for(db.migrate(conns[0]), timeout=5) == []
    finally:
        for c in conns:
            await c.close()


async def _campaign(conn: asyncpg.Connection, **columns: Any) -> int:
    values = {"name": f"c_{uuid.uuid4().hex[:8]}", **columns}
    names = ", ".join(values)
    params = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    campaign_id: int = await conn.fetchval(
        f"INSERT INTO dialer_campaign ({names}) VALUES ({params}) RETURNING id", *values.values()
    )
    return campaign_id


async def _number(conn: asyncpg.Connection, campaign_id: int, phone: str = PHONE) -> int:
    number_id: int = await conn.fetchval(
        "INSERT INTO dialer_number (campaign_id, phone) VALUES ($1, $2) RETURNING id", campaign_id, phone
    )
    return number_id


async def _attempt(conn: asyncpg.Connection, number_id: int, campaign_id: int, **columns: Any) -> None:
    values = {
        "id": uuid.uuid4(),
        "number_id": number_id,
        "campaign_id": campaign_id,
        "attempt_no": 1,
        "worker_id": uuid.uuid4(),
        "provider": "simulator",
        "claimed_at": NOW,
        "deadline_at": NOW + dt.timedelta(seconds=30),
        **columns,
    }
    names = ", ".join(values)
    params = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    await conn.execute(f"INSERT INTO dialer_attempt ({names}) VALUES ({params})", *values.values())


@pytest.mark.parametrize("phone", ["12345", "+12345", "+0123456789", "+1212555010a", "+1234567890123456"])
async def test_database_refuses_a_non_e164_phone(conn: asyncpg.Connection, phone: str) -> None:
    """A number that is not '+' E.164 is refused by the table itself, whatever code inserts it."""
    campaign_id = await _campaign(conn)
    with pytest.raises(asyncpg.CheckViolationError):
        await _number(conn, campaign_id, phone)


@pytest.mark.parametrize(
    "columns",
    [
        {"max_concurrent_calls": 0},
        {"max_calls_per_second": 0},
        {"ring_timeout_seconds": 1},
        {"status": "deleted"},
        {"caller_id": "abc"},
        {"starts_at": NOW, "ends_at": NOW},
        {"name": ""},
    ],
    ids=lambda c: ",".join(c),
)
async def test_database_refuses_an_impossible_campaign(
    conn: asyncpg.Connection, columns: dict[str, Any]
) -> None:
    """Campaign limits, status and dates are CHECKed by the table, not only by CampaignSpec.validate."""
    with pytest.raises(asyncpg.CheckViolationError):
        await _campaign(conn, **columns)


async def test_database_refuses_a_duplicate_number_in_a_campaign(conn: asyncpg.Connection) -> None:
    """One phone is one work item per campaign; another campaign may hold the same phone."""
    first, second = await _campaign(conn), await _campaign(conn)
    await _number(conn, first)
    with pytest.raises(asyncpg.UniqueViolationError):
        await _number(conn, first)
    await _number(conn, second)


async def test_database_refuses_a_second_live_attempt_for_a_number(conn: asyncpg.Connection) -> None:
    """Two live attempts on one number are impossible: the partial unique index refuses the second."""
    campaign_id = await _campaign(conn)
    number_id = await _number(conn, campaign_id)
    await _attempt(conn, number_id, campaign_id, state="dialing")
    with pytest.raises(asyncpg.UniqueViolationError) as info:
        await _attempt(conn, number_id, campaign_id, attempt_no=2, state="ringing")
    assert info.value.constraint_name == "dialer_attempt_one_live_per_number"


async def test_ended_attempts_do_not_block_the_next_one(conn: asyncpg.Connection) -> None:
    """The uniqueness covers live attempts only: a number can be redialled after its attempt ended."""
    campaign_id = await _campaign(conn)
    number_id = await _number(conn, campaign_id)
    ended = {"state": "ended", "outcome": "busy", "ended_at": NOW, "decision": "retry"}
    await _attempt(conn, number_id, campaign_id, **ended)
    await _attempt(conn, number_id, campaign_id, attempt_no=2, **ended)
    await _attempt(conn, number_id, campaign_id, attempt_no=3, state="dialing")
    assert await conn.fetchval("SELECT count(*) FROM dialer_attempt WHERE number_id = $1", number_id) == 3


async def test_database_refuses_an_attempt_outside_its_numbers_campaign(conn: asyncpg.Connection) -> None:
    """An attempt's campaign is its number's campaign: the key is (number, campaign), so an attempt
    filed under another existing campaign is refused, as is one whose number does not exist; and
    deleting a campaign still removes its attempts, through its numbers."""
    campaign_id, other = await _campaign(conn), await _campaign(conn)
    number_id = await _number(conn, campaign_id)
    with pytest.raises(asyncpg.ForeignKeyViolationError) as info:
        await _attempt(conn, number_id, other)
    assert info.value.constraint_name == "dialer_attempt_number_fkey"
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await _attempt(conn, number_id + 1000, campaign_id)
    await _attempt(conn, number_id, campaign_id)
    await conn.execute("DELETE FROM dialer_campaign WHERE id = $1", campaign_id)
    assert await conn.fetchval("SELECT count(*) FROM dialer_attempt") == 0


@pytest.mark.parametrize(
    "columns",
    [
        {"state": "ended"},
        {"state": "ended", "outcome": "busy", "ended_at": NOW},
        {"state": "ringing", "outcome": "busy", "ended_at": NOW, "decision": "final"},
        {"state": "hungup"},
        {"state": "ended", "outcome": "dropped", "ended_at": NOW, "decision": "final"},
        {"attempt_no": 0},
    ],
    ids=[
        "ended-without-outcome",
        "ended-without-decision",
        "live-with-outcome",
        "bad-state",
        "bad-outcome",
        "attempt-zero",
    ],
)
async def test_database_refuses_an_inconsistent_attempt(
    conn: asyncpg.Connection, columns: dict[str, Any]
) -> None:
    """An attempt is 'ended' exactly when outcome, ended_at and decision are all recorded."""
    campaign_id = await _campaign(conn)
    number_id = await _number(conn, campaign_id)
    with pytest.raises(asyncpg.CheckViolationError):
        await _attempt(conn, number_id, campaign_id, **columns)


async def test_database_refuses_more_attempts_than_dials(conn: asyncpg.Connection) -> None:
    """attempts counts dials that consumed an attempt, so it can never exceed dials."""
    campaign_id = await _campaign(conn)
    number_id = await _number(conn, campaign_id)
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("UPDATE dialer_number SET attempts = 1 WHERE id = $1", number_id)
