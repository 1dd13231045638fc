"""The worker's probes in each state of its life: /readyz follows start-up, the database and the
drain; /healthz answers 200 whenever the event loop serves requests, since liveness must never
restart every pod over a database outage."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from dialer import db
from dialer.clock import SystemClock
from dialer.http import make_app
from dialer.settings import Secret, Settings
from dialer.worker import Worker


@dataclass
class Cable:
    """A TCP relay between the worker's pool and Postgres that the test can unplug and plug back,
    so "database unreachable" is a real broken network path, not a mocked pool."""

    upstream: tuple[str, int] | str  # (host, port), or a unix socket's path
    port: int = 0
    server: asyncio.Server | None = None
    links: set[asyncio.StreamWriter] = field(default_factory=set)

    async def plug(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def unplug(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.links):
            writer.transport.abort()
        await self.server.wait_closed()
        self.server = None

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if isinstance(self.upstream, str):
                up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.links |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self.links -= {writer, up_writer}
            writer.transport.abort()
            up_writer.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


@dataclass
class Probes:
    base: str
    http: aiohttp.ClientSession

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        async with self.http.get(self.base + path) as response:
            return response.status, await response.json()


@contextlib.asynccontextmanager
async def serving(worker: Worker) -> AsyncIterator[Probes]:
    runner = web.AppRunner(make_app(worker))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Probes(f"http://127.0.0.1:{runner.addresses[0][1]}", http)
    finally:
        await runner.cleanup()


def settings() -> Settings:
    # Side tasks far apart: after start-up nothing but the probes touches the database.
    return Settings(
        callback_secret=Secret("health-secret"),
        heartbeat_interval_seconds=60,
        maintenance_interval_seconds=60,
        stats_interval_seconds=60,
        poll_interval_seconds=60,
    )


async def wait_for_status(probes: Probes, path: str, status: int) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            got, body = await probes.get(path)
            if got == status:
                return body
            await asyncio.sleep(0.02)


@pytest.fixture
async def cable(dsn: str) -> AsyncIterator[tuple[Cable, str]]:
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query)
    # The embedded server listens on a unix socket only (host=/its/dir in the query); the relay
    # then listens on TCP for the worker and connects to that socket.
    socket_dir = next((v for k, v in query if k == "host" and v.startswith("/")), None)
    port = parts.port or int(next((v for k, v in query if k == "port"), 5432))
    relay = Cable(f"{socket_dir}/.s.PGSQL.{port}" if socket_dir else (parts.hostname or "127.0.0.1", port))
    await relay.plug()
    netloc = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    rest = urlencode([(k, v) for k, v in query if k not in ("host", "port")])
    via = urlunsplit((parts.scheme, f"{netloc}127.0.0.1:{relay.port}", parts.path, rest, ""))
    try:
        yield relay, via
    finally:
        if relay.server is not None:
            await relay.unplug()


async def test_readyz_is_503_while_starting_and_healthz_is_200(pool: asyncpg.Pool) -> None:
    """Before the worker runs, /readyz answers 503 "starting" (the database is fine) and /healthz 200."""
    worker = Worker(settings(), pool, {}, SystemClock())
    async with serving(worker) as probes:
        assert await probes.get("/readyz") == (503, {"status": "starting"})
        assert await probes.get("/healthz") == (200, {"status": "ok"})


async def test_readyz_follows_the_database_and_the_drain(cable: tuple[Cable, str]) -> None:
    """/readyz is 200 when running, 503 while the database is unreachable and again once it is back,
    503 while draining; /healthz stays 200 throughout."""
    relay, via = cable
    pool = await db.create_pool(via, size=4)
    worker = Worker(settings(), pool, {}, SystemClock())
    stop = asyncio.Event()
    http_may_close = asyncio.Event()
    drain_reached_http = asyncio.Event()

    async def close_http() -> None:
        # The worker closes the HTTP server last in its drain: hold it open to probe the drain.
        drain_reached_http.set()
        await http_may_close.wait()

    try:
        async with serving(worker) as probes:
            run = asyncio.create_task(worker.run(stop, close_http=close_http))
            assert await wait_for_status(probes, "/readyz", 200) == {"status": "ready"}
            assert await probes.get("/healthz") == (200, {"status": "ok"})

            await relay.unplug()
            body = await wait_for_status(probes, "/readyz", 503)
            assert body["status"] == "database unreachable", body
            assert await probes.get("/healthz") == (200, {"status": "ok"})
            assert not run.done(), "a database outage must not stop the worker"

            await relay.plug()
            assert await wait_for_status(probes, "/readyz", 200) == {"status": "ready"}

            stop.set()
            async with asyncio.timeout(10):
                await drain_reached_http.wait()
            assert await probes.get("/readyz") == (503, {"status": "draining"})
            assert await probes.get("/healthz") == (200, {"status": "ok"})
            http_may_close.set()
            async with asyncio.timeout(10):
                await run
    finally:
        http_may_close.set()
        await pool.close()
