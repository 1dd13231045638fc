"""`dialer cdr-import`: a Paycall CDR export closes attempts whose callbacks never came."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import orjson

from tests.factories import NOW, add_numbers, make_campaign, open_window

HEADER = "cli,phone_number,start_time,answer_time,hangup_time,duration,billsec,hangup_cause,unique_campaign_id,steps"


def run(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": dsn, "DIALER_LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "dialer", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_cdr_import_records_outcomes_once(dsn: str, conn: asyncpg.Connection, tmp_path: Path) -> None:
    """Rows of our attempts are applied once (a re-import is all duplicates); rows of other calls are skipped."""
    c = await make_campaign(conn, provider="paycall")
    await add_numbers(conn, c["id"], 2)
    await open_window(conn, c["id"])
    claimed = await conn.fetch("SELECT * FROM dialer_claim($1, 10, $2, 30)", uuid.uuid4(), NOW)
    a, b = (str(r["attempt_id"]) for r in claimed)
    csv = tmp_path / "cdr.csv"
    csv.write_text(
        HEADER + "\r\n"
        f'"031234567","12122000000","2026-11-25 15:00:01+00","2026-11-25 15:00:05+00","2026-11-25 15:00:35+00","34","30","NORMAL_CLEARING","{a}",""\r\n'
        f'"031234567","12122000001","2026-11-25 15:00:01+00","","2026-11-25 15:00:09+00","8","0","USER_BUSY","{b}",""\r\n'
        '"031234567","97250000000","2026-11-25 15:00:01+00","","2026-11-25 15:00:09+00","8","0","USER_BUSY","someone-else",""\r\n'
    )
    first = run(dsn, "cdr-import", str(csv))
    assert first.returncode == 0, first.stderr
    assert orjson.loads(first.stdout) | {"file": None} == {
        "file": None,
        "rows": 3,
        "not_ours": 1,
        "applied": 2,
        "duplicate": 0,
        "unknown_attempt": 0,
    }
    outcomes = {
        str(r["id"]): r["outcome"] for r in await conn.fetch("SELECT id, outcome FROM dialer_attempt")
    }
    assert outcomes == {a: "answered_human", b: "busy"}
    again = orjson.loads(run(dsn, "cdr-import", str(csv)).stdout)
    assert (again["applied"], again["duplicate"]) == (0, 2)


async def test_cdr_import_refuses_a_malformed_file_and_changes_nothing(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """A malformed CDR names its line, exits 2 and records nothing, not even the good rows before it."""
    c = await make_campaign(conn, provider="paycall")
    await add_numbers(conn, c["id"], 1)
    await open_window(conn, c["id"])
    (claimed,) = await conn.fetch("SELECT * FROM dialer_claim($1, 10, $2, 30)", uuid.uuid4(), NOW)
    csv = tmp_path / "cdr.csv"
    csv.write_text(
        HEADER + "\r\n"
        f'"0312","12122000000","2026-11-25 15:00:01+00","","2026-11-25 15:00:09+00","8","0","USER_BUSY","{claimed["attempt_id"]}",""\r\n'
        '"0312","12122000001","2026-11-25 15:00:01+00","","soon","8","0","USER_BUSY","x",""\r\n'
    )
    result = run(dsn, "cdr-import", str(csv))
    assert result.returncode == 2
    assert "line 3" in result.stderr and "Traceback" not in result.stderr
    assert await conn.fetchval("SELECT count(*) FROM dialer_attempt WHERE state = 'ended'") == 0
