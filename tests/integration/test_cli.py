"""The `dialer` command as operators run it: a subprocess with DATABASE_URL, JSON on stdout, and
clear one-line errors on stderr that leave the database untouched."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from dialer import sql
from tests.conftest import with_database
from tests.factories import phone

ROOT = Path(__file__).resolve().parents[2]


def dialer(
    dsn: str, *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # Only the variables under test: a developer's own DIALER_* settings must not leak in.
    base = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_") and k != "DATABASE_URL"}
    full = {**base, "DATABASE_URL": dsn, "DIALER_LOG_LEVEL": "WARNING", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "dialer", *map(str, args)],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


async def count(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        n: int = await conn.fetchval(f"SELECT count(*) FROM {table}")
        return n
    finally:
        await conn.close()


@pytest.fixture
async def empty_dsn(admin_dsn: str) -> AsyncIterator[str]:
    """A fresh database that has never been migrated."""
    name = f"dialer_cli_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin_dsn, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_migrate_prints_applied_versions_then_nothing(empty_dsn: str) -> None:
    """`dialer migrate` lists what it applied; run again, it applies and lists nothing."""
    assert ok(dialer(empty_dsn, "migrate")) == {"applied": [v for v, _ in sql.migrations()]}
    assert ok(dialer(empty_dsn, "migrate")) == {"applied": []}


async def test_bad_settings_exit_before_touching_anything(dsn: str) -> None:
    """An invalid DIALER_* variable exits 2 with one line naming it, and runs no command."""
    result = dialer(dsn, "campaign", "create", "x", env={"DIALER_HTTP_PORT": "abc"})
    assert result.returncode == 2
    assert result.stdout == ""
    assert "DIALER_HTTP_PORT: 'abc' is not a valid integer" in result.stderr
    assert "Traceback" not in result.stderr
    assert await count(dsn, "dialer_campaign") == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--time-zone", "Mars/Base"], "unknown time zone 'Mars/Base'"),
        (["--ring-timeout-seconds", "1"], "ring_timeout_seconds: 1 must be an integer between 5 and 300"),
        (["--caller-id", "abc"], "caller_id: 'abc' is not an E.164 number"),
        (["--max-concurrent-calls", "0"], "max_concurrent_calls: 0 must be an integer between 1 and 100000"),
        (["--business-hours", "mon-fri 9-5x"], "cannot read business hours 'mon-fri 9-5x'"),
        (["--starts-at", "2026-12-01T09:00:00"], "'2026-12-01T09:00:00' needs a UTC offset"),
    ],
    ids=["time-zone", "ring-timeout", "caller-id", "concurrency", "business-hours", "naive-start"],
)
async def test_campaign_create_refuses_bad_settings(dsn: str, args: list[str], message: str) -> None:
    """An impossible campaign exits non-zero naming the problem on stderr, and creates nothing."""
    result = dialer(dsn, "campaign", "create", "bad", *args)
    assert result.returncode != 0
    assert result.stdout == ""
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert await count(dsn, "dialer_campaign") == 0


async def test_campaign_create_refuses_ambiguous_short_hours(dsn: str) -> None:
    """'mon-fri 9-5' is refused rather than read as 00:09-00:05 (open all night, calling people at 3 am)."""
    result = dialer(dsn, "campaign", "create", "bad", "--business-hours", "mon-fri 9-5")
    assert result.returncode != 0
    assert "business hours" in result.stderr
    assert await count(dsn, "dialer_campaign") == 0


async def test_campaign_create_prints_its_settings(dsn: str) -> None:
    """create prints the stored campaign as JSON: limits, zone, and the expanded business hours."""
    row = ok(
        dialer(
            dsn,
            "campaign",
            "create",
            "demo",
            "--max-concurrent-calls",
            "3",
            "--time-zone",
            "Europe/London",
            "--business-hours",
            "mon-fri 0900-1700; fri 2200-0600",
        )
    )
    assert (row["name"], row["status"], row["max_concurrent_calls"], row["time_zone"]) == (
        "demo",
        "created",
        3,
        "Europe/London",
    )
    hours = {(h["day_of_week"], h["time_open"], h["time_close"]) for h in row["business_hours"]}
    assert hours == {*((d, 900, 1700) for d in range(1, 6)), (5, 2200, 600)}
    assert await count(dsn, "dialer_campaign") == 1


async def test_campaign_names_are_unique(dsn: str) -> None:
    """Creating a campaign twice fails the second time with a message, leaving the first as it was."""
    ok(dialer(dsn, "campaign", "create", "demo"))
    result = dialer(dsn, "campaign", "create", "demo", "--max-concurrent-calls", "99")
    assert result.returncode == 2
    assert "a campaign named 'demo' already exists" in result.stderr
    assert ok(dialer(dsn, "campaign", "show", "demo"))["max_concurrent_calls"] == 10


async def test_campaign_lifecycle_and_refused_transitions(dsn: str) -> None:
    """start/pause/resume/stop move the campaign; an impossible move fails and names the current status."""
    ok(dialer(dsn, "campaign", "create", "demo"))
    refused = dialer(dsn, "campaign", "resume", "demo")
    assert refused.returncode == 2
    assert "cannot resume campaign 'demo': it is created" in refused.stderr
    assert ok(dialer(dsn, "campaign", "start", "demo"))["status"] == "running"
    refused = dialer(dsn, "campaign", "resume", "demo")
    assert refused.returncode == 2
    assert "it is running" in refused.stderr
    assert ok(dialer(dsn, "campaign", "pause", "demo"))["status"] == "paused"
    assert ok(dialer(dsn, "campaign", "resume", "demo"))["status"] == "running"
    assert ok(dialer(dsn, "campaign", "stop", "demo"))["status"] == "stopped"
    refused = dialer(dsn, "campaign", "start", "demo")
    assert refused.returncode == 2
    assert "it is stopped" in refused.stderr
    shown = ok(dialer(dsn, "campaign", "show", "demo"))
    assert (shown["status"], shown["numbers"], shown["attempts"]) == ("stopped", {}, {})
    assert [c["name"] for c in ok(dialer(dsn, "campaign", "list"))] == ["demo"]


async def test_unknown_campaign_is_reported(dsn: str) -> None:
    """show and pause of a campaign that does not exist exit 2 naming it."""
    for action in ("show", "pause"):
        result = dialer(dsn, "campaign", action, "ghost")
        assert result.returncode == 2
        assert "no campaign named 'ghost'" in result.stderr


async def test_enqueue_reports_bad_lines_and_is_idempotent(dsn: str, tmp_path: Path) -> None:
    """enqueue prints file:line: reason per bad row and a JSON summary; a second run adds nothing."""
    ok(dialer(dsn, "campaign", "create", "demo"))
    path = tmp_path / "list.csv"
    path.write_text(f"number,cli\n{phone(1)}\n12345\n{phone(2)},{phone(3)}\n{phone(1)}\nabc\n")
    first = dialer(dsn, "enqueue", "demo", path)
    summary = ok(first)
    assert {
        k: summary[k] for k in ("campaign", "rows_read", "valid", "invalid", "added", "already_queued")
    } == {"campaign": "demo", "rows_read": 5, "valid": 3, "invalid": 2, "added": 2, "already_queued": 1}
    errors = first.stderr.splitlines()
    assert errors == [
        f"{path}:3: invalid E.164 number '12345': too short",
        f"{path}:6: invalid E.164 number 'abc': expected digits with an optional leading '+'",
    ]
    again = ok(dialer(dsn, "enqueue", "demo", path))
    assert (again["valid"], again["added"], again["already_queued"]) == (3, 0, 3)
    assert await count(dsn, "dialer_number") == 2


async def test_enqueue_strict_exits_1_when_any_row_was_bad(dsn: str, tmp_path: Path) -> None:
    """--strict turns a rejected row into exit status 1 (the summary is still printed); a clean file exits 0."""
    ok(dialer(dsn, "campaign", "create", "demo"))
    dirty, clean = tmp_path / "dirty.csv", tmp_path / "clean.csv"
    dirty.write_text(f"{phone(1)}\n12345\n")
    clean.write_text(f"{phone(2)}\n")
    result = dialer(dsn, "enqueue", "demo", dirty, "--strict")
    assert result.returncode == 1
    assert orjson.loads(result.stdout)["invalid"] == 1
    assert ok(dialer(dsn, "enqueue", "demo", clean, "--strict"))["added"] == 1


def _unreadable(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A file enqueue must refuse as a whole, and the words its error has to contain."""
    if kind == "missing":
        return tmp_path / "nowhere.csv", "nowhere.csv"
    if kind == "tar":
        path = tmp_path / "list.tar.gz"
        data = f"{phone(1)}\n".encode()
        with tarfile.open(path, "w:gz") as tar:
            info = tarfile.TarInfo("list.csv")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        return path, "tar archive"
    path = tmp_path / "list.csv"
    path.write_bytes(f"{phone(1)}\n".encode() + b"\x00\x01\x02\xff" * 64)
    return path, "not a text file"


@pytest.mark.parametrize("kind", ["missing", "tar", "binary"])
async def test_enqueue_of_an_unreadable_file_fails_and_writes_nothing(
    dsn: str, tmp_path: Path, kind: str
) -> None:
    """A missing file, a tarball or a binary file fails with the reason on stderr and queues no row."""
    ok(dialer(dsn, "campaign", "create", "demo"))
    path, reason = _unreadable(tmp_path, kind)
    result = dialer(dsn, "enqueue", "demo", path)
    assert result.returncode != 0
    assert result.stdout == ""
    assert reason in result.stderr
    assert await count(dsn, "dialer_number") == 0


@pytest.mark.parametrize("kind", ["missing", "tar", "binary", "bad-region"])
async def test_enqueue_file_errors_are_one_line(dsn: str, tmp_path: Path, kind: str) -> None:
    """An unreadable upload is reported like every other operator error: one 'dialer:' line, exit 2."""
    ok(dialer(dsn, "campaign", "create", "demo"))
    if kind == "bad-region":
        path = tmp_path / "ok.csv"
        path.write_text(f"{phone(1)}\n")
        result = dialer(dsn, "enqueue", "demo", path, "--region", "XX")
    else:
        result = dialer(dsn, "enqueue", "demo", _unreadable(tmp_path, kind)[0])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    if kind == "bad-region":  # refused by argparse, before anything runs
        assert "unknown region 'XX'" in result.stderr
    else:
        assert result.stderr.startswith("dialer: ")


async def test_enqueue_into_an_unknown_campaign_fails(dsn: str, tmp_path: Path) -> None:
    """Loading into a campaign that does not exist exits 2 naming it, and queues nothing."""
    path = tmp_path / "list.csv"
    path.write_text(f"{phone(1)}\n")
    result = dialer(dsn, "enqueue", "ghost", path)
    assert result.returncode == 2
    assert "no campaign named 'ghost'" in result.stderr
    assert await count(dsn, "dialer_number") == 0


async def test_token_create_list_revoke(dsn: str) -> None:
    """`dialer token` prints a new token once, lists tokens without secrets, and revokes by name."""
    created = ok(dialer(dsn, "token", "create", "crm"))
    assert created["name"] == "crm" and created["token"].startswith("dlr_")
    listed = ok(dialer(dsn, "token", "list"))
    assert [t["name"] for t in listed] == ["crm"] and created["token"] not in orjson.dumps(listed).decode()
    again = dialer(dsn, "token", "create", "crm")
    assert again.returncode == 2 and "already exists" in again.stderr
    assert ok(dialer(dsn, "token", "revoke", "crm"))["name"] == "crm"
    assert ok(dialer(dsn, "token", "list"))[0]["revoked_at"] is not None
    missing = dialer(dsn, "token", "revoke", "crm")
    assert missing.returncode == 2 and "no active token" in missing.stderr


async def test_compliance_caps_from_the_cli(dsn: str) -> None:
    """`dialer compliance set/show` sets the cross-campaign caps; an impossible cap is refused."""
    assert ok(dialer(dsn, "compliance", "show"))["max_attempts_per_24h"] is None
    assert ok(dialer(dsn, "compliance", "set", "--max-attempts-per-24h", "3"))["max_attempts_per_24h"] == 3
    bad = dialer(dsn, "compliance", "set", "--max-attempts-lifetime", "0")
    assert bad.returncode == 2 and "between 1 and 1000" in bad.stderr
    assert ok(dialer(dsn, "compliance", "show"))["max_attempts_per_24h"] == 3
