"""Process wiring: database (DSN or embedded), providers, worker, HTTP server, signals."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from dialer import db, providers
from dialer.clock import Clock, SystemClock
from dialer.http import make_app
from dialer.providers.base import Provider
from dialer.settings import Settings, SettingsError
from dialer.worker import Worker

log = logging.getLogger(__name__)


def install_uvloop() -> None:
    if sys.platform != "win32":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def tune_gc() -> None:
    """Take the cyclic garbage collector off the per-call path of a long-running worker process.

    Each start request allocates a few hundred container objects (aiohttp request, response,
    timers, the task) that live until its response, so every automatic young collection re-walked
    the whole in-flight set: 12.6% of worker samples were in gc_collect_main (py-spy --native,
    dispatch), and still 8% with a 10,000 threshold. Instead: what exists after start-up is frozen
    (never walked again), automatic collection is off, and `collect_garbage` runs the young and
    middle generations once a second and a full collection once a minute. Reference counting
    still frees almost everything at once; only cycles wait, for at most a second.
    """
    gc.collect()
    gc.freeze()
    gc.disable()


async def collect_garbage(every_seconds: float = 1.0, full_every: int = 60) -> None:
    """The collector's schedule once `tune_gc` has turned automatic collection off."""
    n = 0
    while True:
        await asyncio.sleep(every_seconds)
        n += 1
        gc.collect(2 if n % full_every == 0 else 1)


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[str]:
    """Yield a DSN: DATABASE_URL untouched, else an embedded PostgreSQL kept in data_dir."""
    if settings.database_url:
        yield settings.database_url
        return
    server = await asyncio.to_thread(db.EmbeddedPostgres, db.default_embedded_dir(settings.data_dir))
    admin = server.dsn("postgres")
    await db.ensure_database(admin, "dialer")
    log.info("using embedded PostgreSQL in %s", server.path)
    yield server.dsn("dialer")


def build_providers(settings: Settings) -> dict[str, Provider]:
    return providers.build(settings)


async def run_worker(
    settings: Settings, *, dsn: str, stop: asyncio.Event | None = None, clock: Clock | None = None
) -> Worker:
    """Serve until `stop` (or SIGTERM/SIGINT), drain, and return the worker."""
    if not settings.callback_secret:
        raise SettingsError(
            "invalid settings:\n  DIALER_CALLBACK_SECRET: required to verify provider callbacks"
        )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    pool = await db.create_pool(dsn, size=settings.db_pool_size)
    accounts = build_providers(settings)
    worker = Worker(settings, pool, accounts, clock or SystemClock())
    runner = web.AppRunner(make_app(worker), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port, shutdown_timeout=1.0)
    await site.start()
    log.info("worker %s serving on %s:%s", worker.id, settings.http_host, settings.http_port)
    # Automatic collection turned off by tune_gc (the CLI's worker process): collect on a schedule.
    collector = None if gc.isenabled() else asyncio.create_task(collect_garbage())
    try:
        await worker.run(stop, close_http=runner.cleanup)
    finally:
        if collector is not None:
            collector.cancel()
        await runner.cleanup()
        for provider in accounts.values():
            await provider.close()
        await pool.close()
    log.info("worker %s stopped", worker.id)
    return worker


async def run_api(
    settings: Settings, *, dsn: str, stop: asyncio.Event | None = None, clock: Clock | None = None
) -> None:
    """Serve the upstream API until `stop` (or SIGTERM/SIGINT)."""
    from dialer.api import Api
    from dialer.api import make_app as make_api_app

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    pool = await db.create_pool(dsn, size=settings.db_pool_size)
    accounts = frozenset(a.name for a in providers.load_accounts(settings))
    runner = web.AppRunner(
        make_api_app(Api(settings, pool, clock or SystemClock(), accounts)), access_log=None
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.api_port, shutdown_timeout=5.0)
    await site.start()
    log.info("API serving on %s:%s", settings.http_host, settings.api_port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await pool.close()


async def migrate(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await db.migrate(conn)
    finally:
        await conn.close()
