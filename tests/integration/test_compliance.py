"""Compliance gates at dispatch: callee-local window, per-phone caps, abandon lockout, outcome DNC,
answering-machine policy, auto-stop, and the held-back reasons, on a real Postgres with a manual clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import orjson
import phonenumbers
import phonenumbers.timezone
import pytest
from aiohttp.test_utils import TestServer

from dialer import campaigns, db
from dialer.api import Api, hash_token, make_app, new_token
from dialer.clock import ManualClock
from dialer.providers.base import CallEvent
from dialer.settings import Settings
from dialer.sql import Q
from dialer.worker import apply_outcomes
from dialer.zones import ZoneResolver, callee_zones
from scheduler import compliance
from scheduler.outcomes import Outcome
from tests.factories import NOW, add_numbers, make_campaign, open_window

WORKER = uuid.uuid4()
NY = "+12125550100"  # America/New_York
IDAHO = "+12085550100"  # America/Boise and America/Los_Angeles
SYDNEY = "+61291234567"  # Australia/Sydney
UIFN = "+80012345678"  # no time zone in phonenumbers


def utc(year: int, month: int, day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC)


# A campaign's own default calling window (the factory turns it off for the wall-clock tests).
DEFAULT_WINDOW = {
    "callee_window_start": compliance.DEFAULT_WINDOW[0],
    "callee_window_end": compliance.DEFAULT_WINDOW[1],
}


async def campaign(conn: asyncpg.Connection, phones: list[str], *, now: dt.datetime = NOW, **kw: Any) -> int:
    row = await make_campaign(conn, name=kw.pop("name", "c1"), now=now, **{**DEFAULT_WINDOW, **kw})
    await campaigns.enqueue(conn, row["id"], [campaigns.NumberRow(phone=p) for p in phones], now)
    # The campaign's business hours are not under test: open around every instant used here.
    await conn.execute(
        "UPDATE dialer_campaign SET window_opens_at = $2, window_closes_at = $3 WHERE id = $1",
        row["id"],
        now - dt.timedelta(days=30),
        now + dt.timedelta(days=30),
    )
    return int(row["id"])


async def claim(
    conn: asyncpg.Connection, now: dt.datetime, limit: int = 100, *, skip: list[str] | None = None
) -> list[asyncpg.Record]:
    return list(await conn.fetch(Q.claim, WORKER, limit, now, 30, skip or []))


async def number(conn: asyncpg.Connection, campaign_id: int, phone: str) -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT * FROM dialer_number WHERE campaign_id = $1 AND phone = $2", campaign_id, phone
    )
    assert row is not None
    return row


async def end(
    conn: asyncpg.Connection, rows: list[asyncpg.Record], outcome: Outcome, now: dt.datetime, **kw: Any
) -> None:
    answered = now - dt.timedelta(seconds=30) if outcome.value.startswith("answered") else None
    events = [
        CallEvent(
            attempt_id=str(r["attempt_id"]),
            call_id=f"call-{r['attempt_id']}",
            kind="ended",
            outcome=outcome,
            answered_at=answered,
            ended_at=now,
            **kw,
        )
        for r in rows
    ]
    await apply_outcomes(conn, events, now, 30)


# ---------------------------------------------------------------- callee time zones


async def test_sql_zone_derivation_matches_phonenumbers(conn: asyncpg.Connection) -> None:
    """dialer_callee_zones gives phonenumbers' zones for example numbers of every type in every region."""
    sample: list[str] = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in range(11):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                sample.append(phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164))
    rows = await conn.fetch("SELECT p, dialer_callee_zones(p) AS z FROM unnest($1::text[]) AS p", sample)
    known = {r["name"] for r in await conn.fetch("SELECT name FROM pg_timezone_names")}
    mismatches = [
        (r["p"], r["z"], callee_zones(r["p"], known)) for r in rows if r["z"] != callee_zones(r["p"], known)
    ]
    assert len(sample) > 1000 and len({s[:4] for s in sample}) > 150
    assert mismatches == []
    # The bulk-load resolver (the COPY path) decides exactly as the SQL function does.
    resolver = ZoneResolver(known)
    assert [(r["p"], resolver(r["p"])) for r in rows] == [(r["p"], r["z"]) for r in rows]


async def test_a_number_placed_in_zones_hours_apart_uses_the_campaign_zone(conn: asyncpg.Connection) -> None:
    """phonenumbers gives a +1 non-geographic number 42 zones (Guam to Newfoundland) that share no
    calling window; it counts as unplaced, so the campaign's zone applies instead of never opening."""
    wide = "+12684641234"  # an Antigua and Barbuda mobile: phonenumbers names every NANP zone
    assert len(phonenumbers.timezone.time_zones_for_number(phonenumbers.parse(wide))) > 10
    assert await conn.fetchval("SELECT dialer_callee_zones($1)", wide) is None
    known = frozenset(r["name"] for r in await conn.fetch("SELECT name FROM pg_timezone_names"))
    assert ZoneResolver(known)(wide) is None
    assert await conn.fetchval("SELECT dialer_callee_zones('+12125550123')") == ["America/New_York"]


async def test_every_enqueue_path_stores_the_zones(conn: asyncpg.Connection) -> None:
    """The COPY path and dialer_enqueue() (the API's JSON path) both store the callee's zones."""
    cid = await campaign(conn, [NY, IDAHO, UIFN])
    await conn.fetchval(Q.api_enqueue, "c1", [SYDNEY], None, NOW)
    zones = {
        r["phone"]: r["callee_zones"]
        for r in await conn.fetch("SELECT phone, callee_zones FROM dialer_number")
    }
    assert zones == {
        NY: ["America/New_York"],
        IDAHO: ["America/Boise", "America/Los_Angeles"],
        UIFN: None,
        SYDNEY: ["Australia/Sydney"],
    }
    assert cid


async def test_upstream_time_zone_joins_the_numbers_own_zones(conn: asyncpg.Connection) -> None:
    """A zone from upstream (the lead's address) counts with the number's zones, the most
    restrictive winning; alone when the two share no window or the number cannot be placed."""
    wide = "+12684641234"  # placed nowhere: phonenumbers names every NANP zone

    async def zones(phone: str, zone: str | None) -> list[str] | None:
        result = await conn.fetchval("SELECT dialer_number_zones($1, $2)", phone, zone)
        return None if result is None else list(result)

    assert await zones(NY, None) == ["America/New_York"]
    assert await zones(UIFN, None) is None
    assert await zones(NY, "America/New_York") == ["America/New_York"]
    assert await zones(NY, "America/Chicago") == ["America/New_York", "America/Chicago"]
    assert await zones(IDAHO, "America/Denver") == ["America/Boise", "America/Los_Angeles", "America/Denver"]
    assert await zones(NY, "Asia/Tokyo") == ["Asia/Tokyo"]  # 14 h apart: no shared window
    assert await zones(wide, "America/Chicago") == ["America/Chicago"]
    assert await zones(UIFN, "Europe/Paris") == ["Europe/Paris"]


async def test_enqueue_with_an_upstream_zone_holds_the_number_to_that_zones_window(
    conn: asyncpg.Connection,
) -> None:
    """A New York number whose lead lives in Los Angeles: at 08:30 in New York it is 05:30 there,
    so it waits for 08:00 in Los Angeles; the same number without a zone is dialed at once."""
    now = utc(2026, 11, 25, 13, 30)  # 08:30 EST, 05:30 PST
    cid = await campaign(conn, [], now=now)
    items = [
        {"phone": NY, "time_zone": "America/Los_Angeles"},
        {"phone": "+12125550101", "time_zone": None},
    ]
    result = await conn.fetchval(Q.api_enqueue, "c1", items, None, now)
    assert result["added"] == 2
    assert [r["phone"] for r in await claim(conn, now)] == ["+12125550101"]
    n = await number(conn, cid, NY)
    assert n["callee_zones"] == ["America/New_York", "America/Los_Angeles"]
    assert n["held_reason"] == "callee_window" and n["next_attempt_at"] == utc(2026, 11, 25, 16, 0)
    assert [r["phone"] for r in await claim(conn, utc(2026, 11, 25, 16, 0))] == [NY]


async def test_a_bad_upstream_zone_rejects_the_call_and_changes_nothing(conn: asyncpg.Connection) -> None:
    """An unknown zone name or a non-string is a bad item: the whole call is rejected, naming each."""
    await campaign(conn, [])
    items = [
        {"phone": NY, "time_zone": "America/Chicago"},
        {"phone": "+12125550101", "time_zone": "Mars/Olympus_Mons"},
        {"phone": "+12125550102", "time_zone": 5},
        {"phone": "+12125550103", "time_zone": "america/chicago"},
    ]
    with pytest.raises(asyncpg.InvalidParameterValueError) as caught:
        await conn.fetchval(Q.api_enqueue, "c1", items, None, NOW)
    assert caught.value.detail is not None
    assert orjson.loads(caught.value.detail) == [
        {"index": 1, "error": 'time_zone: unknown time zone "Mars/Olympus_Mons"'},
        {"index": 2, "error": "time_zone: an IANA time zone name such as America/Chicago"},
        {"index": 3, "error": 'time_zone: unknown time zone "america/chicago"'},
    ]
    assert await conn.fetchval("SELECT count(*) FROM dialer_number") == 0


# ---------------------------------------------------------------- calling window


async def test_number_outside_its_window_is_rescheduled_to_the_local_start(conn: asyncpg.Connection) -> None:
    """At 22:00 in New York the number is not dialed, keeps its attempts and is due at 08:00 EST."""
    now = utc(2026, 11, 25, 3, 0)  # 22:00 EST on the 24th
    cid = await campaign(conn, [NY], now=now)
    assert await claim(conn, now) == []
    n = await number(conn, cid, NY)
    assert (n["status"], n["attempts"], n["dials"], n["held_reason"]) == ("untried", 0, 0, "callee_window")
    assert n["next_attempt_at"] == utc(2026, 11, 25, 13, 0)
    assert await claim(conn, utc(2026, 11, 25, 12, 59)) == []
    assert [r["phone"] for r in await claim(conn, utc(2026, 11, 25, 13, 0))] == [NY]
    assert (await number(conn, cid, NY))["held_reason"] is None


async def test_number_in_two_zones_waits_for_the_most_restrictive(conn: asyncpg.Connection) -> None:
    """Idaho spans Boise and Los Angeles: 08:00 in Boise is 07:00 in LA, so it waits for LA's 08:00."""
    now = utc(2026, 11, 25, 15, 0)  # 08:00 MST, 07:00 PST
    cid = await campaign(conn, [IDAHO, NY], now=now)
    assert [r["phone"] for r in await claim(conn, now)] == [NY]
    n = await number(conn, cid, IDAHO)
    assert n["held_reason"] == "callee_window" and n["next_attempt_at"] == utc(2026, 11, 25, 16, 0)


async def test_window_start_follows_daylight_saving(conn: asyncpg.Connection) -> None:
    """On the night clocks spring forward, 08:00 in New York is 12:00 UTC, not 13:00."""
    now = utc(2027, 3, 14, 5, 0)  # 00:00 EST, DST starts at 02:00
    cid = await campaign(conn, [NY], now=now)
    assert await claim(conn, now) == []
    assert (await number(conn, cid, NY))["next_attempt_at"] == utc(2027, 3, 14, 12, 0)


async def test_window_crossing_midnight(conn: asyncpg.Connection) -> None:
    """A 22:00-06:00 window and a Sydney number whose next local morning is the previous UTC day."""
    now = utc(2026, 11, 25, 15, 0)  # 10:00 in New York, 02:00 on the 26th in Sydney
    night = await campaign(
        conn, [NY], now=now, name="night", callee_window_start=22 * 60, callee_window_end=6 * 60
    )
    day = await campaign(conn, [SYDNEY], now=now, name="day")
    assert await claim(conn, now) == []
    assert (await number(conn, night, NY))["next_attempt_at"] == utc(2026, 11, 26, 3, 0)  # 22:00 EST
    assert (await number(conn, day, SYDNEY))["next_attempt_at"] == utc(2026, 11, 25, 21, 0)  # 08:00 AEDT
    assert [r["phone"] for r in await claim(conn, utc(2026, 11, 25, 21, 0))] == [SYDNEY]
    assert [r["phone"] for r in await claim(conn, utc(2026, 11, 26, 3, 0))] == [NY]


async def test_unknown_zone_falls_back_to_the_campaign_zone(conn: asyncpg.Connection) -> None:
    """A number without zones is judged in the campaign's time zone (Tokyo: 00:00 at 15:00 UTC)."""
    cid = await campaign(conn, [UIFN], time_zone="Asia/Tokyo")
    assert await claim(conn, NOW) == []
    n = await number(conn, cid, UIFN)
    assert n["held_reason"] == "callee_window" and n["next_attempt_at"] == utc(2026, 11, 25, 23, 0)


async def test_disabled_window_dials_at_night(conn: asyncpg.Connection) -> None:
    """callee_window_start/end null: no calling window."""
    now = utc(2026, 11, 25, 7, 0)  # 02:00 in New York
    await campaign(conn, [NY], now=now, callee_window_start=None, callee_window_end=None)
    assert [r["phone"] for r in await claim(conn, now)] == [NY]


async def test_held_numbers_do_not_stop_eligible_ones_behind_them(conn: asyncpg.Connection) -> None:
    """A batch of held numbers ahead in the queue is rescheduled and the claim still fills from the rest."""
    now = utc(2026, 11, 25, 15, 0)
    cid = await make_campaign(conn, name="mixed", max_calls_per_second=2, **DEFAULT_WINDOW)
    rows = [campaigns.NumberRow(phone=f"+1208555{i:04d}", priority=1) for i in range(30)]
    rows.append(campaigns.NumberRow(phone=NY))
    await campaigns.enqueue(conn, cid["id"], rows, now)
    await open_window(conn, cid["id"], now=now)
    assert [r["phone"] for r in await claim(conn, now, limit=10)] == [NY]


# ---------------------------------------------------------------- per-phone caps


async def _two_campaigns_one_phone(conn: asyncpg.Connection) -> tuple[int, int]:
    a = await campaign(conn, [NY], name="a", max_retries=10)
    b = await campaign(conn, [NY], name="b", max_retries=10)
    return a, b


async def test_daily_cap_counts_across_campaigns(conn: asyncpg.Connection) -> None:
    """With 2 calls per 24 h, two campaigns dialing one phone use the cap; the next try waits 24 h."""
    await conn.fetchrow(Q.compliance_set, 2, None, NOW)
    a, b = await _two_campaigns_one_phone(conn)
    first = await claim(conn, NOW)
    assert len(first) == 2
    await end(conn, first, Outcome.BUSY, NOW + dt.timedelta(seconds=20))
    later = NOW + dt.timedelta(minutes=5)
    assert await claim(conn, later) == []
    for cid in (a, b):
        n = await number(conn, cid, NY)
        assert (n["held_reason"], n["attempts"], n["status"]) == ("attempt_cap", 1, "retry_wait")
        assert n["next_attempt_at"] == NOW + dt.timedelta(hours=24)
    assert len(await claim(conn, NOW + dt.timedelta(hours=24, seconds=1))) == 2


async def test_lifetime_cap_closes_the_number(conn: asyncpg.Connection) -> None:
    """Past the lifetime cap across campaigns the number is failed with last_outcome attempt_cap."""
    await conn.fetchrow(Q.compliance_set, None, 2, NOW)
    a, b = await _two_campaigns_one_phone(conn)
    await end(conn, await claim(conn, NOW), Outcome.NO_ANSWER, NOW + dt.timedelta(seconds=20))
    assert await claim(conn, NOW + dt.timedelta(minutes=5)) == []
    for cid in (a, b):
        n = await number(conn, cid, NY)
        assert (n["status"], n["last_outcome"], n["attempts"]) == ("failed", "attempt_cap", 1)


async def test_no_caps_by_default(conn: asyncpg.Connection) -> None:
    """Without a dialer_compliance row the per-phone caps are off."""
    await _two_campaigns_one_phone(conn)
    await end(conn, await claim(conn, NOW), Outcome.BUSY, NOW + dt.timedelta(seconds=20))
    assert len(await claim(conn, NOW + dt.timedelta(minutes=5))) == 2


# Concurrent claims: campaign a dials with provider pa, campaign b with pb, so a claim that skips
# the other provider locks only its own campaign's row, as two workers' claims would.
EARLIER = NOW - dt.timedelta(hours=1)


async def _phone_in_two_campaigns_with_a_past_call(conn: asyncpg.Connection) -> tuple[int, int]:
    """NY queued in campaigns a and b, after a busy call from a an hour ago (one attempt spent)."""
    a = await campaign(conn, [NY], name="a", now=EARLIER, provider="pa", max_retries=10)
    await end(conn, await claim(conn, EARLIER), Outcome.BUSY, EARLIER + dt.timedelta(seconds=20))
    b = await campaign(conn, [NY], name="b", provider="pb", max_retries=10)
    return a, b


async def _claim_while_other_is_open(
    conn: asyncpg.Connection, other: asyncpg.Connection
) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    """Claim campaign a on conn inside a transaction, and campaign b on other before it commits."""
    async with conn.transaction():
        first = await claim(conn, NOW, skip=["pb"])
        # A claim must skip, never wait: a wait here would hang on the open transaction above.
        second = await asyncio.wait_for(claim(other, NOW, skip=["pa"]), timeout=10)
    return first, second


async def test_daily_cap_is_exact_across_concurrent_claims(conn: asyncpg.Connection, dsn: str) -> None:
    """2 calls per 24 h, one made: two claims at once, from two campaigns, dial the phone once. The
    second skips the phone while the first is open, and after its commit holds it for the cap."""
    await conn.fetchrow(Q.compliance_set, 2, None, NOW)
    a, b = await _phone_in_two_campaigns_with_a_past_call(conn)
    other = await db.connect(dsn)
    try:
        first, second = await _claim_while_other_is_open(conn, other)
        assert [r["campaign_id"] for r in first] == [a]
        assert second == []
        n = await number(conn, b, NY)
        assert (n["status"], n["held_reason"], n["next_attempt_at"]) == ("untried", None, NOW)
        assert await claim(other, NOW, skip=["pa"]) == []
    finally:
        await other.close()
    n = await number(conn, b, NY)
    assert (n["status"], n["held_reason"]) == ("untried", "attempt_cap")
    assert n["next_attempt_at"] == EARLIER + dt.timedelta(hours=24)
    assert await conn.fetchval("SELECT count(*) FROM dialer_attempt") == 2


async def test_lifetime_cap_is_exact_across_concurrent_claims(conn: asyncpg.Connection, dsn: str) -> None:
    """Lifetime cap 2, one attempt spent: of two claims at once only one dials; the call in flight
    counts, so the other campaign's number is closed once that claim commits, not dialed a third time."""
    await conn.fetchrow(Q.compliance_set, None, 2, NOW)
    a, b = await _phone_in_two_campaigns_with_a_past_call(conn)
    other = await db.connect(dsn)
    try:
        first, second = await _claim_while_other_is_open(conn, other)
        assert [r["campaign_id"] for r in first] == [a]
        assert second == []
        assert await claim(other, NOW, skip=["pa"]) == []
    finally:
        await other.close()
    n = await number(conn, b, NY)
    assert (n["status"], n["last_outcome"], n["dials"]) == ("failed", "attempt_cap", 0)
    await end(conn, first, Outcome.BUSY, NOW + dt.timedelta(seconds=20))
    assert await claim(conn, NOW + dt.timedelta(hours=1)) == []
    n = await number(conn, a, NY)
    assert (n["status"], n["last_outcome"], n["attempts"]) == ("failed", "attempt_cap", 2)


async def _advisory_locks_held_by_a_claim(conn: asyncpg.Connection, now: dt.datetime, limit: int) -> int:
    """Claims inside a transaction, counts the advisory locks it holds, and rolls the claim back."""
    tx = conn.transaction()
    await tx.start()
    try:
        await claim(conn, now, limit)
        locks: int = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
    finally:
        await tx.rollback()
    return locks


async def test_phone_locks_only_with_a_cap_set(conn: asyncpg.Connection) -> None:
    """Without caps the claim takes no advisory lock; with one, a lock on each phone it judged
    (Idaho is held back by its calling window: judged, locked, not dialed)."""
    await campaign(conn, [NY, IDAHO])
    assert await _advisory_locks_held_by_a_claim(conn, NOW, 100) == 0
    await conn.fetchrow(Q.compliance_set, 5, None, NOW)
    assert await _advisory_locks_held_by_a_claim(conn, NOW, 100) == 2
    await conn.fetchrow(Q.compliance_set, None, 5, NOW)
    # A claim of 1 judges only the number it dials (NY, queued first): one lock, not one per due number.
    assert await _advisory_locks_held_by_a_claim(conn, NOW, 1) == 1
    assert [r["phone"] for r in await claim(conn, NOW)] == [NY]


async def test_phone_locks_per_claim_are_bounded(conn: asyncpg.Connection) -> None:
    """Phone locks share the server's lock table until commit: a claim takes at most its batch or
    max_locks_per_transaction of them, and the numbers it could not judge wait for the next claim."""
    await conn.fetchrow(Q.compliance_set, 5, None, NOW)
    per_transaction = int(await conn.fetchval("SHOW max_locks_per_transaction"))
    night = utc(2026, 11, 25, 3, 0)  # 22:00 in New York: every number is held back
    # A claim of 10 judges up to 4 rounds of 10 per campaign: enough campaigns to pass the bound.
    campaigns_n = per_transaction // 40 + 2
    for i in range(campaigns_n):
        row = await make_campaign(conn, name=f"c{i}", now=night, **DEFAULT_WINDOW)
        await add_numbers(conn, row["id"], 40, offset=40 * i, now=night)
        await open_window(conn, row["id"], now=night)
    held = "SELECT count(*) FROM dialer_number WHERE held_reason = 'callee_window'"
    assert await _advisory_locks_held_by_a_claim(conn, night, 10) == per_transaction
    assert await claim(conn, night, 10) == []
    assert await conn.fetchval(held) == per_transaction
    for _ in range(campaigns_n):
        assert await claim(conn, night, 10) == []
    assert await conn.fetchval(held) == 40 * campaigns_n


# ---------------------------------------------------------------- abandon lockout


async def test_abandoned_call_locks_the_phone_out_of_every_campaign(conn: asyncpg.Connection) -> None:
    """After an abandoned call no campaign redials that phone for 72 h; a 0 lockout campaign may."""
    a = await campaign(conn, [NY], name="a")
    rows = await claim(conn, NOW)
    await end(conn, rows, Outcome.ANSWERED_HUMAN, NOW + dt.timedelta(seconds=40))
    abandoned = NOW + dt.timedelta(seconds=12)
    await conn.execute("UPDATE dialer_attempt SET abandoned_at = $1", abandoned)
    later = NOW + dt.timedelta(hours=1)
    b = await campaign(conn, [NY], name="b", now=later)
    c = await campaign(conn, [NY], name="c", now=later, abandon_lockout_seconds=0)
    got = await claim(conn, later)
    assert [r["campaign_id"] for r in got] == [c]
    n = await number(conn, b, NY)
    assert (n["held_reason"], n["status"], n["attempts"]) == ("abandon_lockout", "untried", 0)
    assert n["next_attempt_at"] == abandoned + dt.timedelta(hours=72)
    assert a


async def test_lockout_ends_with_its_period_and_binds_only_its_phone(conn: asyncpg.Connection) -> None:
    """The claim skips the per-number look-up unless an abandonment is recent (migration 0013): a
    recent one holds only its own phone, and one past the lockout holds nothing."""
    await campaign(conn, [NY], name="a")
    rows = await claim(conn, NOW)
    await end(conn, rows, Outcome.ANSWERED_HUMAN, NOW + dt.timedelta(seconds=40))
    abandoned = NOW + dt.timedelta(seconds=12)
    await conn.execute("UPDATE dialer_attempt SET abandoned_at = $1", abandoned)
    soon = NOW + dt.timedelta(hours=1)
    other = "+12125550123"
    b = await campaign(conn, [NY, other], name="b", now=soon)
    assert [r["phone"] for r in await claim(conn, soon)] == [other]
    assert (await number(conn, b, NY))["held_reason"] == "abandon_lockout"
    # 72 h after the abandonment the phone is free again, for the held number and a new campaign.
    free = abandoned + dt.timedelta(hours=72, seconds=1)
    await campaign(conn, [NY], name="c", now=free)
    got = await claim(conn, free)
    assert sorted((r["campaign"], r["phone"]) for r in got) == [("b", NY), ("c", NY)]


# ---------------------------------------------------------------- outcomes


async def test_dnc_outcome_suppresses_the_phone_everywhere(conn: asyncpg.Connection) -> None:
    """A blocked outcome writes a global suppression row in the same transaction; other campaigns close it."""
    await campaign(conn, [NY], name="a")
    await end(conn, await claim(conn, NOW), Outcome.BLOCKED, NOW + dt.timedelta(seconds=5))
    s = await conn.fetchrow("SELECT * FROM dialer_suppression")
    assert s is not None
    assert (s["phone"], s["campaign_id"], s["source"], s["reason"]) == (
        NY,
        None,
        "outcome",
        "outcome: blocked",
    )
    b = await campaign(conn, [NY], name="b")
    assert await claim(conn, NOW + dt.timedelta(seconds=10)) == []
    n = await number(conn, b, NY)
    assert (n["status"], n["last_outcome"], n["dials"]) == ("dnc", "suppressed", 0)


@pytest.mark.parametrize(
    ("policy", "status", "attempts", "decision"),
    [("retry", "retry_wait", 1, "retry"), ("final", "completed", 1, "final")],
)
async def test_answering_machine_policy(
    conn: asyncpg.Connection, policy: str, status: str, attempts: int, decision: str
) -> None:
    """amd_policy retry redials a machine after retry_wait (an attempt spent); final completes the number."""
    cid = await campaign(conn, [NY], amd_policy=policy)
    await end(conn, await claim(conn, NOW), Outcome.ANSWERED_MACHINE, NOW + dt.timedelta(seconds=30))
    n = await number(conn, cid, NY)
    assert (n["status"], n["attempts"], n["last_outcome"]) == (status, attempts, "answered_machine")
    assert await conn.fetchval("SELECT decision FROM dialer_attempt") == decision
    if policy == "retry":
        assert n["next_attempt_at"] == NOW + dt.timedelta(seconds=30 + 60)


# ---------------------------------------------------------------- auto-stop, seen through the API


@pytest.fixture
async def http(pool: asyncpg.Pool, conn: asyncpg.Connection) -> AsyncIterator[aiohttp.ClientSession]:
    server = TestServer(make_app(Api(Settings(), pool, ManualClock(NOW), frozenset({"simulator"}))))
    await server.start_server()
    token = new_token()
    await conn.execute(Q.api_token_insert, "tests", hash_token(token), NOW)
    async with aiohttp.ClientSession(
        base_url=str(server.make_url("")), headers={"Authorization": f"Bearer {token}"}
    ) as session:
        yield session
    await server.close()


async def _api_campaign(http: aiohttp.ClientSession, cid: int) -> dict[str, Any]:
    async with http.get(f"/v1/campaigns/{cid}") as resp:
        assert resp.status == 200
        attributes: dict[str, Any] = (await resp.json())["data"]["attributes"]
        return attributes


PHONES = [f"+1212555{i:04d}" for i in range(6)]


async def test_auto_stop_after_answered_calls(conn: asyncpg.Connection, http: aiohttp.ClientSession) -> None:
    """per_answer_count 2: the second answered call stops the campaign, with the reason in the API."""
    conditions = {"enabled": True, "per_answer_count": {"enabled": True, "count": 2}}
    cid = await campaign(conn, PHONES, auto_stop_conditions=conditions)
    rows = await claim(conn, NOW)
    await end(conn, rows[:1], Outcome.ANSWERED_HUMAN, NOW + dt.timedelta(seconds=30))
    assert (await _api_campaign(http, cid))["status"] == "running"
    await end(conn, rows[1:3], Outcome.BUSY, NOW + dt.timedelta(seconds=30))
    await end(conn, rows[3:4], Outcome.ANSWERED_HUMAN, NOW + dt.timedelta(seconds=30))
    attributes = await _api_campaign(http, cid)
    assert (attributes["status"], attributes["status_reason"]) == ("stopped", "auto-stop: 2 answered calls")
    assert attributes["auto_stop_conditions"] == conditions


async def test_auto_stop_after_key_presses(conn: asyncpg.Connection, http: aiohttp.ClientSession) -> None:
    """per_key key_1 2: presses of other keys do not count; the second press of 1 stops the campaign."""
    conditions = {"enabled": True, "per_key": {"enabled": True, "key_1": 2}}
    cid = await campaign(conn, PHONES, auto_stop_conditions=conditions)
    rows = await claim(conn, NOW)
    ended = NOW + dt.timedelta(seconds=30)
    await end(conn, rows[:2], Outcome.ANSWERED_HUMAN, ended, dtmf="2")
    await end(conn, rows[2:3], Outcome.ANSWERED_HUMAN, ended, dtmf="13")
    assert (await _api_campaign(http, cid))["status"] == "running"
    await end(conn, rows[3:4], Outcome.ANSWERED_HUMAN, ended, dtmf="1")
    attributes = await _api_campaign(http, cid)
    assert (attributes["status"], attributes["status_reason"]) == ("stopped", "auto-stop: 2 presses of key 1")
    assert await conn.fetchval("SELECT count(*) FROM dialer_attempt WHERE dtmf_pressed IS NOT NULL") == 4


async def test_auto_stop_disabled_never_stops(conn: asyncpg.Connection) -> None:
    """Conditions with enabled false change nothing, however many calls are answered."""
    conditions = {"enabled": False, "per_answer_count": {"enabled": True, "count": 1}}
    cid = await campaign(conn, PHONES, auto_stop_conditions=conditions)
    await end(conn, await claim(conn, NOW), Outcome.ANSWERED_HUMAN, NOW + dt.timedelta(seconds=30))
    assert await conn.fetchval("SELECT status FROM dialer_campaign WHERE id = $1", cid) == "running"


async def test_api_sets_and_validates_compliance_settings(
    conn: asyncpg.Connection, http: aiohttp.ClientSession
) -> None:
    """The API creates and patches the compliance attributes and refuses malformed ones with pointers."""
    body = {
        "data": {
            "type": "campaigns",
            "attributes": {
                "name": "api",
                "callee_window_start": 540,
                "callee_window_end": 1200,
                "amd_policy": "final",
            },
        }
    }
    async with http.post("/v1/campaigns", json=body) as resp:
        doc = await resp.json()
        assert resp.status == 201, doc
    a = doc["data"]["attributes"]
    assert (a["callee_window_start"], a["callee_window_end"], a["amd_policy"]) == (540, 1200, "final")
    assert a["abandon_lockout_seconds"] == 259200 and a["auto_stop_conditions"] is None
    cid = doc["data"]["id"]
    patch = {"data": {"type": "campaigns", "id": cid, "attributes": {"callee_window_start": None}}}
    async with http.patch(f"/v1/campaigns/{cid}", json=patch) as resp:
        doc = await resp.json()
        assert resp.status == 422
    assert "callee_window" in doc["errors"][0]["source"]["pointer"]
    patch["data"]["attributes"] = {"auto_stop_conditions": {"per_key": {"key_x": 1}}}
    async with http.patch(f"/v1/campaigns/{cid}", json=patch) as resp:
        assert resp.status == 422
    patch["data"]["attributes"] = {"callee_window_start": None, "callee_window_end": None}
    async with http.patch(f"/v1/campaigns/{cid}", json=patch) as resp:
        doc = await resp.json()
        assert resp.status == 200, doc
    assert doc["data"]["attributes"]["callee_window_start"] is None


async def test_number_resource_shows_why_it_is_held(
    conn: asyncpg.Connection, http: aiohttp.ClientSession
) -> None:
    """GET /v1/numbers/{id} carries held_reason and the callee's zones."""
    now = utc(2026, 11, 25, 3, 0)
    cid = await campaign(conn, [NY], now=now)
    await claim(conn, now)
    n = await number(conn, cid, NY)
    async with http.get(f"/v1/numbers/{n['id']}") as resp:
        a = (await resp.json())["data"]["attributes"]
    assert (a["held_reason"], a["callee_zones"]) == ("callee_window", ["America/New_York"])


# ---------------------------------------------------------------- held-back reasons


async def test_held_back_stats_count_each_gate(conn: asyncpg.Connection) -> None:
    """held_back_stats reports callee_window, attempt_cap and abandon_lockout holds per campaign."""
    await conn.fetchrow(Q.compliance_set, 1, None, NOW)
    await campaign(conn, [NY], name="capped", max_retries=5)
    await end(conn, await claim(conn, NOW), Outcome.BUSY, NOW + dt.timedelta(seconds=5))
    await campaign(conn, [IDAHO, SYDNEY], name="window")
    later = NOW + dt.timedelta(minutes=5)
    assert await claim(conn, later) == []
    stats = {(r["name"], r["reason"]): r["held"] for r in await conn.fetch(Q.held_back_stats, later)}
    assert stats == {("capped", "attempt_cap"): 1, ("window", "callee_window"): 2}
