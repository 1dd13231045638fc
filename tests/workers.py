"""Helpers for tests that run real `dialer worker` processes against the in-process simulator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg

from dialer.demo import free_port
from dialer.simulator import Simulator, SimulatorConfig

SECRET = "mp-secret"
KEY = "mp-key"


@dataclass
class WorkerProc:
    proc: subprocess.Popen[bytes]
    port: int

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)


def spawn(dsn: str, sim_url: str, **env: str) -> WorkerProc:
    port = free_port()
    full = {
        **os.environ,
        "DATABASE_URL": dsn,
        "DIALER_HTTP_HOST": "127.0.0.1",
        "DIALER_HTTP_PORT": str(port),
        "DIALER_PROVIDER_URL": sim_url,
        "DIALER_PROVIDER_API_KEY": KEY,
        "DIALER_CALLBACK_SECRET": SECRET,
        "DIALER_LOG_LEVEL": "WARNING",
        "DIALER_DB_POOL_SIZE": "6",
        "DIALER_MAINTENANCE_INTERVAL_SECONDS": "0.2",
        "DIALER_STATS_INTERVAL_SECONDS": "1",
        "DIALER_POLL_INTERVAL_SECONDS": "0.2",
        "DIALER_RECONCILE_GRACE_SECONDS": "1",
        "DIALER_PROVIDER_TIMEOUT_SECONDS": "2",
        "DIALER_DIAL_TIMEOUT_SECONDS": "3",
        "DIALER_SHUTDOWN_GRACE_SECONDS": "5",
        **env,
    }
    proc = subprocess.Popen([sys.executable, "-m", "dialer", "worker"], env=full)
    return WorkerProc(proc, port)


def spawn_api(dsn: str, **env: str) -> WorkerProc:
    """A `dialer api` process; `wait_ready` works on it as on a worker."""
    port = free_port()
    full = {
        **os.environ,
        "DATABASE_URL": dsn,
        "DIALER_HTTP_HOST": "127.0.0.1",
        "DIALER_API_PORT": str(port),
        "DIALER_LOG_LEVEL": "WARNING",
        "DIALER_DB_POOL_SIZE": "4",
        **env,
    }
    proc = subprocess.Popen([sys.executable, "-m", "dialer", "api"], env=full)
    return WorkerProc(proc, port)


async def wait_ready(workers: list[WorkerProc], timeout: float = 20) -> None:
    async with aiohttp.ClientSession() as http, asyncio.timeout(timeout):
        for w in workers:
            while True:
                assert w.proc.poll() is None, f"worker exited with {w.proc.returncode}"
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{w.port}/readyz") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.05)


@contextlib.contextmanager
def reap(workers: list[WorkerProc]) -> Iterator[None]:
    try:
        yield
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
            w.proc.wait(timeout=10)


@contextlib.asynccontextmanager
async def simulator(**config: Any) -> AsyncIterator[Simulator]:
    # from_dict: a typo in a key fails here; a seed in `config` (e.g. a model's) wins over the default.
    sim = Simulator(
        SimulatorConfig.from_dict({"api_key": KEY, "callback_secret": SECRET, "seed": 3, **config})
    )
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def wait_until(conn: asyncpg.Connection, sql: str, *args: Any, timeout: float = 60) -> None:
    """Wait for the system to reach a state (polls the database; no fixed sleeps)."""
    async with asyncio.timeout(timeout):
        while not await conn.fetchval(sql, *args):
            await asyncio.sleep(0.1)
