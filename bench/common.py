"""What every scenario shares: the Postgres server, disposable databases, child processes, /proc readers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from dialer import db

ROOT = Path(__file__).resolve().parent.parent
PG15_DSN = "postgresql://root@127.0.0.1:5432/test"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
# The settings that decide what a commit costs; printed with every result so runs can be compared.
_PG_SETTINGS = (
    "shared_buffers",
    "synchronous_commit",
    "fsync",
    "max_wal_size",
    "wal_level",
    "max_connections",
)


def say(text: str = "") -> None:
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ results


@dataclass
class Figure:
    """One row of the results table."""

    number: str
    name: str
    value: float | None
    unit: str
    target: str = ""
    ok: bool | None = None
    vs_bare: str = ""
    note: str = ""
    shown: str = ""
    # Share of a core that processes outside the benchmark used while this figure was measured.
    contention: float = 0.0

    def measured(self) -> str:
        if self.shown:
            return self.shown
        if self.value is None:
            return "n/a"
        if self.unit in ("jobs/s", "attempts/s", "rows/s", "MiB"):
            return f"{self.value:,.0f} {self.unit}"
        if self.unit == "ms":
            return f"{self.value:,.2f} ms"
        if self.unit == "s":
            return f"{self.value:,.1f} s"
        return f"{self.value:,.2f} {self.unit}".strip()


@dataclass
class Context:
    """Handed to every scenario: where the database is, how big to go, where to put logs."""

    server: Server
    quick: bool
    logs: Path
    details: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.details.append(text)
        say("  " + text)


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100) of an unsorted sample."""
    if not values:
        return math.nan
    data = sorted(values)
    k = (len(data) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


# ------------------------------------------------------------------------------------------ Postgres


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@dataclass
class Server:
    admin_dsn: str
    description: str
    version: str = ""
    settings: dict[str, str] = field(default_factory=dict)
    embedded: db.EmbeddedPostgres | None = None
    postmaster: int | None = None

    @classmethod
    async def open(cls, choice: str | None) -> Server:
        """`choice`: a DSN, "pg15", "embedded", or None (BENCH_DATABASE_URL / DATABASE_URL, else embedded)."""
        dsn = choice
        if dsn is None:
            dsn = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL") or "embedded"
        if dsn == "pg15":
            dsn = PG15_DSN
        if dsn == "embedded":
            path = Path(tempfile.mkdtemp(prefix="dialer-bench-pg-")) / "pg"
            server = await asyncio.to_thread(db.EmbeddedPostgres, path, ephemeral=True)
            self = cls(
                server.dsn("postgres"), "embedded PostgreSQL (unix socket, ephemeral)", embedded=server
            )
        else:
            host = urlsplit(dsn).hostname or "(unix socket)"
            self = cls(dsn, f"DSN {host}:{urlsplit(dsn).port or 5432}")
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            self.version = str(await conn.fetchval("SHOW server_version"))
            for name in _PG_SETTINGS:
                self.settings[name] = str(await conn.fetchval(f"SHOW {name}"))
            # Our backend's parent is the postmaster; its children are the server's processes (when the
            # server runs on this machine: other Postgres servers here must not be counted).
            backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
            parent = _ppid(backend)
            if parent is not None and _comm(parent).startswith("postgres"):
                self.postmaster = parent
        finally:
            await conn.close()
        return self

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()
            shutil.rmtree(self.embedded.path.parent, ignore_errors=True)

    @contextlib.asynccontextmanager
    async def database(self, tag: str, *, migrate: bool = True) -> AsyncIterator[str]:
        """A fresh database for one scenario (migrated unless told otherwise), dropped afterwards."""
        name = f"dialer_bench_{tag}_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(self.admin_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
            dsn = with_database(self.admin_dsn, name)
            if migrate:
                conn = await db.connect(dsn)
                try:
                    await db.migrate(conn)
                finally:
                    await conn.close()
            try:
                yield dsn
            finally:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def server_pids(postmaster: int | None) -> list[int]:
    """The postmaster and its children (backends, checkpointer, walwriter, ...); [] if not on this machine."""
    if postmaster is None:
        return []
    pids = [postmaster]
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _ppid(int(entry)) == postmaster:
            pids.append(int(entry))
    return pids


# ------------------------------------------------------------------------------------------ /proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM: the resident-set high-water mark of a live process."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds summed over all cores since boot."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]
    total = sum(parts[:8])
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


class CpuMeter:
    """CPU used by named processes, by all postgres processes and by the whole machine over an interval."""

    def __init__(self, named: Mapping[str, Sequence[int]], postmaster: int | None) -> None:
        self.named = named
        self.postmaster = postmaster
        self._start: dict[str, float] = {}
        self._pg: dict[int, float] = {}
        self._machine = (0.0, 0.0)
        self._t = 0.0
        self.result: dict[str, float] = {}
        self.elapsed = 0.0

    def start(self) -> None:
        self._t = time.perf_counter()
        self._start = {k: sum(cpu_seconds(p) for p in pids) for k, pids in self.named.items()}
        self._pg = {p: cpu_seconds(p) for p in server_pids(self.postmaster)}
        self._machine = machine_cpu()

    def stop(self) -> dict[str, float]:
        self.elapsed = time.perf_counter() - self._t
        out = {k: sum(cpu_seconds(p) for p in pids) - self._start[k] for k, pids in self.named.items()}
        # Backends that started during the interval count from zero; ones that exited are lost (few).
        out["postgres"] = sum(cpu_seconds(p) - self._pg.get(p, 0.0) for p in server_pids(self.postmaster))
        busy, total = machine_cpu()
        out["machine busy"] = busy - self._machine[0]
        out["machine total"] = total - self._machine[1]
        # Everything else: the harness itself, and anything else running on the machine meanwhile.
        out["other"] = out["machine busy"] - sum(v for k, v in out.items() if not k.startswith("machine"))
        self.result = out
        return out

    def other_share(self) -> float:
        """CPU used by everything outside the benchmark's own processes, in cores."""
        return self.result.get("other", 0.0) / self.elapsed if self.elapsed else 0.0

    def summary(self) -> str:
        r = self.result
        shown = [
            f"{k} {v:.1f}s ({100 * v / self.elapsed:.0f}% of a core)"
            for k, v in r.items()
            if k not in ("machine busy", "machine total")
        ]
        idle = 100 * (1 - r["machine busy"] / r["machine total"]) if r.get("machine total") else math.nan
        return f"CPU over {self.elapsed:.1f}s: " + ", ".join(shown) + f"; machine idle {idle:.0f}%"


# ------------------------------------------------------------------------------------------ processes


async def wait_quiet(ctx: Context, limit: float = 0.25, patience: float = 30.0) -> str:
    """Wait (up to `patience` s) until the machine is under `limit` busy; returns a note if it never was."""
    deadline = time.monotonic() + patience
    busy_share = 1.0
    while time.monotonic() < deadline:
        b0, t0 = machine_cpu()
        await asyncio.sleep(1.0)
        b1, t1 = machine_cpu()
        busy_share = (b1 - b0) / max(t1 - t0, 1e-9)
        if busy_share < limit:
            return ""
    note = (
        f"machine was {100 * busy_share:.0f}% busy before this scenario (other processes): figures may be low"
    )
    ctx.note(note)
    return note


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Child:
    """A child process whose output goes to a log file, shown if it fails."""

    def __init__(self, name: str, args: Sequence[str], logs: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = logs / f"{name}-{secrets.token_hex(3)}.log"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(
            list(args),
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        if not self._out.closed:
            self._out.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return int(self.proc.returncode)


async def wait_http(url: str, child: Child, timeout: float = 30.0) -> None:
    """Wait until `url` answers 200, failing early (with the child's log) if the child dies."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{child.name} not ready at {url} after {timeout}s:\n{child.tail()}")
            await asyncio.sleep(0.05)


def stop_all(children: Iterable[Child]) -> list[int]:
    return [c.stop() for c in children]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
