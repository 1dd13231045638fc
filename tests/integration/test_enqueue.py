"""Loading numbers: ingest.parse_file into campaigns.enqueue is idempotent, reports bad lines, and is
all-or-nothing when the file itself turns out to be unreadable."""

from __future__ import annotations

import gzip
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from dialer import campaigns, ingest
from tests.factories import NOW, make_campaign, phone


def _rows(path: Path, bad: list[ingest.BadRow] | None = None) -> Iterator[campaigns.NumberRow]:
    """What `dialer enqueue` feeds enqueue: the good rows, with the bad ones set aside."""
    for item in ingest.parse_file(path):
        if isinstance(item, ingest.BadRow):
            if bad is not None:
                bad.append(item)
            continue
        yield campaigns.NumberRow(phone=item.number, caller_id=item.cli, dtmf=item.dtmf, line=item.line)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


async def _count(conn: asyncpg.Connection) -> int:
    n: int = await conn.fetchval("SELECT count(*) FROM dialer_number")
    return n


async def test_loading_the_same_file_twice_adds_nothing_the_second_time(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """A re-run of an upload (an operator retrying) adds no row and changes no queued row."""
    c = await make_campaign(conn)
    path = _write(tmp_path, "list.csv", "".join(f"{phone(i)}\n" for i in range(50)))
    assert await campaigns.enqueue(conn, c["id"], _rows(path), NOW) == 50
    before = await conn.fetch("SELECT * FROM dialer_number ORDER BY id")
    assert await campaigns.enqueue(conn, c["id"], _rows(path), NOW) == 0
    assert await conn.fetch("SELECT * FROM dialer_number ORDER BY id") == before


async def test_duplicates_inside_one_file_count_once(conn: asyncpg.Connection, tmp_path: Path) -> None:
    """The same number written twice, or once with and once without '+', is one work item."""
    c = await make_campaign(conn)
    p = phone(7)
    path = _write(tmp_path, "dupes.csv", f"{p}\n{p}\n{p[1:]}\n{phone(8)}\n{p},{phone(9)}\n")
    assert await campaigns.enqueue(conn, c["id"], _rows(path), NOW) == 2
    assert sorted(r["phone"] for r in await conn.fetch("SELECT phone FROM dialer_number")) == [p, phone(8)]


async def test_the_same_number_may_be_queued_in_two_campaigns(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Deduplication is per campaign: one list loaded into two campaigns queues it twice."""
    first, second = await make_campaign(conn, name="a"), await make_campaign(conn, name="b")
    path = _write(tmp_path, "list.csv", f"{phone(1)}\n{phone(2)}\n")
    assert await campaigns.enqueue(conn, first["id"], _rows(path), NOW) == 2
    assert await campaigns.enqueue(conn, second["id"], _rows(path), NOW) == 2


async def test_bad_rows_are_reported_by_line_and_good_rows_still_load(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Each rejected line is reported with its line number and reason; every valid line is queued."""
    c = await make_campaign(conn)
    text = f"number,cli\n{phone(1)}\n12345\n{phone(2)},{phone(3)},1#2\nnot-a-number\n\n{phone(4)},abc\n{phone(5)}\n"
    bad: list[ingest.BadRow] = []
    assert await campaigns.enqueue(conn, c["id"], _rows(_write(tmp_path, "mixed.csv", text), bad), NOW) == 3
    assert [(b.line, b.raw) for b in bad] == [(3, "12345"), (5, "not-a-number"), (7, f"{phone(4)},abc")]
    assert "too short" in bad[0].reason
    assert "invalid caller id" in bad[2].reason
    rows = {r["phone"]: r for r in await conn.fetch("SELECT * FROM dialer_number")}
    assert set(rows) == {phone(1), phone(2), phone(5)}
    assert (rows[phone(2)]["caller_id"], rows[phone(2)]["dtmf"]) == (phone(3), "1#2")
    assert rows[phone(1)]["caller_id"] is None


async def test_a_file_that_fails_midway_writes_nothing(conn: asyncpg.Connection, tmp_path: Path) -> None:
    """A gzip truncated after thousands of good rows raises IngestError and leaves no row behind."""
    c = await make_campaign(conn)
    await campaigns.enqueue(conn, c["id"], [campaigns.NumberRow(phone=phone(99_999))], NOW)
    data = gzip.compress("".join(f"{phone(i)},{phone(i + 1)},{i % 97}#\n" for i in range(20_000)).encode())
    path = tmp_path / "truncated.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    seen = 0

    def counted() -> Iterator[campaigns.NumberRow]:
        nonlocal seen
        for row in _rows(path):
            seen += 1
            yield row

    # Small chunks, so several COPY batches reach the staging table before the error surfaces.
    with pytest.raises(ingest.IngestError, match=r"truncated\.csv\.gz: cannot read"):
        await campaigns.enqueue(conn, c["id"], counted(), NOW, chunk=500)
    assert seen > 2_000
    assert await _count(conn) == 1
    # The connection is usable again and the staging table went with the transaction.
    assert await conn.fetchval("SELECT to_regclass('pg_temp.dialer_stage')") is None
    good = _write(tmp_path, "good.csv", f"{phone(1)}\n")
    assert await campaigns.enqueue(conn, c["id"], _rows(good), NOW) == 1


async def test_a_row_the_database_refuses_rolls_back_the_whole_load(conn: asyncpg.Connection) -> None:
    """One row outside the table's CHECKs (priority 5000) fails the load and writes none of it."""
    c = await make_campaign(conn)
    rows = [campaigns.NumberRow(phone=phone(i)) for i in range(10)]
    rows.append(campaigns.NumberRow(phone=phone(10), priority=5000))
    with pytest.raises(asyncpg.CheckViolationError):
        await campaigns.enqueue(conn, c["id"], rows, NOW)
    assert await _count(conn) == 0


async def test_enqueue_reopens_a_finished_campaign(conn: asyncpg.Connection) -> None:
    """New numbers put a finished campaign back to running, so they get dialled."""
    c = await make_campaign(conn)
    await conn.execute("UPDATE dialer_campaign SET status = 'finished' WHERE id = $1", c["id"])
    assert await campaigns.enqueue(conn, c["id"], [campaigns.NumberRow(phone=phone(1))], NOW) == 1
    row = await conn.fetchrow(
        "SELECT status, status_reason, updated_at FROM dialer_campaign WHERE id = $1", c["id"]
    )
    assert row is not None
    assert (row["status"], row["status_reason"], row["updated_at"]) == ("running", "numbers added", NOW)


async def test_enqueue_of_nothing_new_leaves_a_finished_campaign_finished(conn: asyncpg.Connection) -> None:
    """Re-loading numbers already queued adds nothing, so a finished campaign stays finished."""
    c = await make_campaign(conn)
    await campaigns.enqueue(conn, c["id"], [campaigns.NumberRow(phone=phone(1))], NOW)
    await conn.execute("UPDATE dialer_campaign SET status = 'finished' WHERE id = $1", c["id"])
    assert await campaigns.enqueue(conn, c["id"], [campaigns.NumberRow(phone=phone(1))], NOW) == 0
    assert await conn.fetchval("SELECT status FROM dialer_campaign WHERE id = $1", c["id"]) == "finished"


@pytest.mark.parametrize("status", ["created", "paused", "stopped"])
async def test_enqueue_does_not_start_other_campaigns(conn: asyncpg.Connection, status: str) -> None:
    """Only 'finished' is reopened: loading numbers never starts, resumes or revives a campaign."""
    c = await make_campaign(conn, start=False)
    await conn.execute("UPDATE dialer_campaign SET status = $2 WHERE id = $1", c["id"], status)
    assert await campaigns.enqueue(conn, c["id"], [campaigns.NumberRow(phone=phone(1))], NOW) == 1
    assert await conn.fetchval("SELECT status FROM dialer_campaign WHERE id = $1", c["id"]) == status


async def test_priority_and_payload_are_stored(conn: asyncpg.Connection) -> None:
    """Priority and the JSON payload travel through COPY into their columns; defaults are 0 and NULL."""
    c = await make_campaign(conn)
    payload = {"customer": 42, "tags": ["vip", "é"], "nested": {"ok": True, "ratio": 0.5}}
    rows = [
        campaigns.NumberRow(phone=phone(1), priority=7, payload=payload, caller_id=phone(9), dtmf="w1#"),
        campaigns.NumberRow(phone=phone(2), priority=-1000),
        campaigns.NumberRow(phone=phone(3)),
    ]
    assert await campaigns.enqueue(conn, c["id"], rows, NOW) == 3
    got = {
        r["phone"]: r
        for r in await conn.fetch(
            "SELECT phone, priority, payload, caller_id, dtmf, status, attempts, dials, next_attempt_at"
            " FROM dialer_number"
        )
    }
    assert (got[phone(1)]["priority"], got[phone(1)]["payload"]) == (7, payload)
    assert (got[phone(1)]["caller_id"], got[phone(1)]["dtmf"]) == (phone(9), "w1#")
    assert (got[phone(2)]["priority"], got[phone(2)]["payload"]) == (-1000, None)
    assert (got[phone(3)]["priority"], got[phone(3)]["payload"]) == (0, None)
    assert {(r["status"], r["attempts"], r["dials"], r["next_attempt_at"]) for r in got.values()} == {
        ("untried", 0, 0, NOW)
    }
    assert (
        await conn.fetchval(
            "SELECT payload->'nested'->>'ratio' FROM dialer_number WHERE phone = $1", phone(1)
        )
        == "0.5"
    )


async def test_first_copy_of_a_duplicate_wins(conn: asyncpg.Connection) -> None:
    """Within one load, a number's later duplicates are dropped, not merged: the first row's fields stay."""
    c = await make_campaign(conn)
    rows = [
        campaigns.NumberRow(phone=phone(1), priority=1, line=1),
        campaigns.NumberRow(phone=phone(1), priority=9, line=2),
    ]
    assert await campaigns.enqueue(conn, c["id"], rows, NOW) == 1
    assert await conn.fetchval("SELECT priority FROM dialer_number") == 1


async def test_first_copy_of_a_duplicate_wins_across_batches(conn: asyncpg.Connection) -> None:
    """A duplicate in a later chunk loses to the copy an earlier chunk already merged."""
    c = await make_campaign(conn)
    rows = [campaigns.NumberRow(phone=phone(i % 3), priority=i, line=i + 1) for i in range(9)]
    assert await campaigns.enqueue(conn, c["id"], rows, NOW, chunk=2) == 3
    got = await conn.fetch("SELECT phone, priority FROM dialer_number ORDER BY priority")
    assert [(r["phone"], r["priority"]) for r in got] == [(phone(0), 0), (phone(1), 1), (phone(2), 2)]


async def test_a_failed_load_leaves_no_thread_reading_the_rows(conn: asyncpg.Connection) -> None:
    """When a merge fails while the next chunk is parsed ahead, enqueue returns only after that parse ended."""
    c = await make_campaign(conn)
    read = 0

    def rows() -> Iterator[campaigns.NumberRow]:
        nonlocal read
        yield campaigns.NumberRow(phone=phone(0), priority=5000)  # refused by the CHECK
        for i in range(1, 5_000):
            read += 1
            yield campaigns.NumberRow(phone=phone(i))

    source = rows()
    with pytest.raises(asyncpg.CheckViolationError):
        await campaigns.enqueue(conn, c["id"], source, NOW, chunk=1)
    # Parsing ahead stopped with the load: nothing runs the caller's iterator any more.
    assert inspect.getgeneratorstate(source) != inspect.GEN_RUNNING
    assert read == 1  # the one chunk parsed ahead, and no more
    assert await _count(conn) == 0


async def test_the_parse_thread_runs_with_short_gil_slices_and_restores_them(
    conn: asyncpg.Connection,
) -> None:
    """While rows are parsed in a thread the interpreter switches threads every 0.5 ms (so the event
    loop is not starved between COPY writes); afterwards, and after a failed load, it is as before."""
    camp = await make_campaign(conn, name="gil")
    before = sys.getswitchinterval()
    seen: list[float] = []

    def rows(fail: bool) -> Iterator[campaigns.NumberRow]:
        for i in range(3):
            seen.append(sys.getswitchinterval())
            yield campaigns.NumberRow(phone=phone(i))
        if fail:
            raise OSError("disk gone")

    assert await campaigns.enqueue(conn, camp["id"], rows(False), NOW) == 3
    assert seen and all(s <= 0.0005 for s in seen)
    assert sys.getswitchinterval() == before
    with pytest.raises(OSError, match="disk gone"):
        await campaigns.enqueue(conn, camp["id"], rows(True), NOW)
    assert sys.getswitchinterval() == before
