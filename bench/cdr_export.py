"""CDR export memory: stream a campaign's CSV from a real `dialer api` and watch the process's peak RSS.

    python bench/cdr_export.py [--db embedded|pg15|DSN] [--sizes 100000,1000000]

The export reads through a server-side cursor and writes in chunks, so peak RSS should not grow with
the number of attempts. Prints one line per size: CSV bytes, rows/s, VmHWM before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Server, free_port
from dialer.api import hash_token, new_token


def _vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


async def _fill(dsn: str, n: int) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO dialer_campaign (name) VALUES ('big')")
        await conn.execute(
            "INSERT INTO dialer_number (campaign_id, phone, status, attempts, dials)"
            " SELECT 1, '+1212' || lpad(g::text, 7, '0'), 'completed', 1, 1"
            " FROM generate_series(2000000, 2000000 + $1 - 1) g",
            n,
        )
        await conn.execute(
            "INSERT INTO dialer_attempt (id, number_id, campaign_id, attempt_no, worker_id, provider, state,"
            " claimed_at, deadline_at, answered_at, ended_at, duration_seconds, billsec, outcome,"
            " consumed_attempt, decision, raw_cause)"
            " SELECT gen_random_uuid(), id, 1, 1, gen_random_uuid(), 'simulator', 'ended',"
            " now() - interval '1 hour', now(), now() - interval '59 minutes', now() - interval '58 minutes',"
            " 120, 60, 'answered_human', true, 'final', 'NORMAL_CLEARING' FROM dialer_number"
        )
        token = new_token()
        await conn.execute(
            "INSERT INTO dialer_api_token (name, token_hash) VALUES ('bench', $1)", hash_token(token)
        )
        return token
    finally:
        await conn.close()


def _spawn_api(dsn: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": dsn, "DIALER_API_PORT": str(port), "DIALER_LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", "dialer", "api"], env=env)


async def measure(server: Server, n: int) -> str:
    async with server.database("cdr") as dsn:
        token = await _fill(dsn, n)
        port = free_port()
        proc = _spawn_api(dsn, port)
        try:
            url = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                async with asyncio.timeout(30):
                    while True:
                        try:
                            async with http.get(url + "/readyz") as r:
                                if r.status == 200:
                                    break
                        except aiohttp.ClientError:
                            pass
                        await asyncio.sleep(0.1)
                before = _vm(proc.pid, "VmHWM")
                started = time.perf_counter()
                size = 0
                headers = {"Authorization": f"Bearer {token}"}
                async with http.get(url + "/v1/campaigns/1/cdr.csv", headers=headers) as resp:
                    assert resp.status == 200, resp.status
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        size += len(chunk)
                seconds = time.perf_counter() - started
                after = _vm(proc.pid, "VmHWM")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    return (
        f"{n:,} attempts: {size / 1e6:.1f} MB of CSV in {seconds:.1f} s ({n / seconds:,.0f} rows/s);"
        f" dialer api peak RSS {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db")
    parser.add_argument("--sizes", default="100000,1000000")
    args = parser.parse_args()
    server = await Server.open(args.db)
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            print(await measure(server, n), flush=True)
    finally:
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
