"""Campaign management: validated settings, status transitions, enqueue."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import re
import sys
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias

import asyncpg

from dialer import pacer
from dialer.sql import Q
from dialer.zones import ZoneResolver
from scheduler import compliance
from scheduler.hours import BusinessHours, HoursError

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


class CampaignError(ValueError):
    """A refused campaign change; `fields` maps each bad field to why, for API error pointers."""

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or {}


_PACING_MODES = ("agentless", "progressive", "predictive")
_URL = re.compile(r"^https?://[^\s/?#@]+(?::\d{1,5})?(?:[/?#]\S*)?$")


@dataclass(frozen=True)
class CampaignSpec:
    name: str
    provider: str = "simulator"
    caller_id: str | None = None
    ring_timeout_seconds: int = 30
    retry_wait_seconds: int = 600
    max_retries: int = 2
    max_concurrent_calls: int = 10
    max_calls_per_second: int = 5
    max_call_duration_seconds: int = 3600
    starts_at: dt.datetime | None = None
    ends_at: dt.datetime | None = None
    time_zone: str = "UTC"
    business_hours: list[dict[str, Any]] | None = None
    webhook_url: str | None = None
    webhook_attempt_events: bool = False
    # Pacing (scheduler/pacing.py): agentless keeps the fixed caps; progressive and predictive dial
    # for agents. pacing_settings overrides PacingSettings' defaults; agents_logged_in is the static
    # agent count, which upstream may also report live (PUT /v1/campaigns/{id}/agents).
    pacing_mode: str = "agentless"
    pacing_settings: dict[str, Any] | None = None
    agents_logged_in: int = 0
    # Compliance gates (scheduler/compliance.py, enforced by dialer_claim): the callee-local window
    # in minutes after midnight (both None: off), the abandoned-call lockout, what an answering
    # machine does to the number, and CALLR Sendr-style auto-stop conditions.
    callee_window_start: int | None = compliance.DEFAULT_WINDOW[0]
    callee_window_end: int | None = compliance.DEFAULT_WINDOW[1]
    abandon_lockout_seconds: int = compliance.DEFAULT_ABANDON_LOCKOUT_SECONDS
    amd_policy: str = "retry"
    auto_stop_conditions: dict[str, Any] | None = None

    def validate(self) -> list[dict[str, Any]] | None:
        """Raise CampaignError naming every bad field; return the normalized business hours."""
        fields: dict[str, str] = {}

        def bad(field: str, why: str) -> None:
            fields.setdefault(field, why)

        def rng(field: str, lo: int, hi: int) -> None:
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                bad(field, f"{value!r} must be an integer between {lo} and {hi}")

        if not isinstance(self.name, str) or not 1 <= len(self.name) <= 200 or self.name.strip() != self.name:
            bad("name", f"{self.name!r} must be 1-200 characters without surrounding spaces")
        if not isinstance(self.provider, str) or not re.fullmatch(r"[a-z0-9_\-]{1,64}", self.provider):
            bad("provider", f"{self.provider!r} is not a provider name")
        if self.caller_id is not None and not (
            isinstance(self.caller_id, str) and _E164.match(self.caller_id)
        ):
            bad("caller_id", f"{self.caller_id!r} is not an E.164 number (+ and 7-15 digits)")
        if self.webhook_url is not None and not (
            isinstance(self.webhook_url, str)
            and len(self.webhook_url) <= 2000
            and _URL.match(self.webhook_url)
        ):
            bad("webhook_url", f"{self.webhook_url!r} is not an http(s) URL without credentials")
        if not isinstance(self.webhook_attempt_events, bool):
            bad("webhook_attempt_events", "must be true or false")
        rng("ring_timeout_seconds", 5, 300)
        rng("retry_wait_seconds", 0, 30 * 86400)
        rng("max_retries", 0, 100)
        rng("max_concurrent_calls", 1, 100_000)
        rng("max_calls_per_second", 1, 10_000)
        rng("max_call_duration_seconds", 10, 86400)
        rng("abandon_lockout_seconds", 0, 365 * 86400)
        try:
            compliance.check_window(self.callee_window_start, self.callee_window_end)
        except compliance.ComplianceError as exc:
            bad("callee_window_start" if self.callee_window_start is None else "callee_window_end", str(exc))
        if self.amd_policy not in compliance.AMD_POLICIES:
            bad("amd_policy", f"{self.amd_policy!r} must be one of {', '.join(compliance.AMD_POLICIES)}")
        try:
            compliance.check_auto_stop(self.auto_stop_conditions)
        except compliance.ComplianceError as exc:
            bad("auto_stop_conditions", str(exc))
        rng("agents_logged_in", 0, 100_000)
        if not isinstance(self.pacing_mode, str) or self.pacing_mode not in _PACING_MODES:
            bad("pacing_mode", f"{self.pacing_mode!r} must be one of {', '.join(_PACING_MODES)}")
        elif self.pacing_settings is not None and not isinstance(self.pacing_settings, dict):
            bad("pacing_settings", "must be an object of PacingSettings overrides")
        else:
            try:
                pacer.pacing_settings(self.pacing_mode, self.pacing_settings)
            except (ValueError, TypeError) as exc:
                bad("pacing_settings", str(exc))
        for field in ("starts_at", "ends_at"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, dt.datetime) or value.tzinfo is None):
                bad(field, f"{value!r} needs to be a datetime with a UTC offset")
        if (
            isinstance(self.starts_at, dt.datetime)
            and isinstance(self.ends_at, dt.datetime)
            and self.starts_at.tzinfo
            and self.ends_at.tzinfo
            and self.ends_at <= self.starts_at
        ):
            bad("ends_at", "must be after starts_at")
        hours: list[dict[str, Any]] | None = None
        if not isinstance(self.time_zone, str):
            bad("time_zone", f"{self.time_zone!r} is not an IANA time zone name")
        else:
            try:
                parsed = BusinessHours.parse(self.business_hours, self.time_zone)
                hours = None if self.business_hours is None else list(parsed.to_json())
            except HoursError as exc:
                if "time zone" in str(exc):
                    bad("time_zone", str(exc))
                else:
                    bad("business_hours", str(exc))
        if fields:
            lines = [why if field == "time_zone" else f"{field}: {why}" for field, why in fields.items()]
            raise CampaignError("invalid campaign:\n  " + "\n  ".join(lines), fields)
        return hours


# created → running ⇄ paused → stopped; finished is set by the worker when nothing is left.
_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "start": ("created",),
    "pause": ("running",),
    "resume": ("paused",),
    "stop": ("created", "running", "paused", "finished"),
}
_TARGET = {"start": "running", "pause": "paused", "resume": "running", "stop": "stopped"}


async def create(conn: Conn, spec: CampaignSpec, now: dt.datetime) -> asyncpg.Record:
    hours = spec.validate()
    try:
        row: asyncpg.Record | None = await conn.fetchrow(
            Q.campaign_insert,
            spec.name,
            spec.provider,
            spec.caller_id,
            spec.ring_timeout_seconds,
            spec.retry_wait_seconds,
            spec.max_retries,
            spec.max_concurrent_calls,
            spec.max_calls_per_second,
            spec.max_call_duration_seconds,
            spec.starts_at,
            spec.ends_at,
            spec.time_zone,
            hours,
            now,
            spec.webhook_url,
            spec.webhook_attempt_events,
        )
    except asyncpg.UniqueViolationError:
        raise CampaignError(f"a campaign named {spec.name!r} already exists") from None
    assert row is not None  # INSERT … RETURNING always returns the row
    row = await set_compliance(conn, row["id"], spec)
    if (spec.pacing_mode, spec.pacing_settings or {}, spec.agents_logged_in) != ("agentless", {}, 0):
        row = await set_pacing(conn, row["id"], spec, now)
    return row


async def set_compliance(conn: Conn, campaign_id: int, spec: CampaignSpec) -> asyncpg.Record:
    """Store the spec's (validated) compliance settings; returns the campaign row."""
    row: asyncpg.Record | None = await conn.fetchrow(
        Q.campaign_set_compliance,
        campaign_id,
        spec.callee_window_start,
        spec.callee_window_end,
        spec.abandon_lockout_seconds,
        spec.amd_policy,
        spec.auto_stop_conditions,
    )
    if row is None:
        raise CampaignError(f"no campaign {campaign_id}")
    return row


async def set_pacing(conn: Conn, campaign_id: int, spec: CampaignSpec, now: dt.datetime) -> asyncpg.Record:
    """Store the spec's (validated) pacing mode, settings overrides and static agent count."""
    row: asyncpg.Record | None = await conn.fetchrow(
        Q.campaign_set_pacing,
        campaign_id,
        spec.pacing_mode,
        spec.pacing_settings or {},
        spec.agents_logged_in,
        now,
    )
    if row is None:
        raise CampaignError(f"no campaign {campaign_id}")
    return row


async def set_agents(conn: Conn, campaign_id: int, agents: int, now: dt.datetime) -> asyncpg.Record:
    """Agents logged in now, as upstream reports them; takes effect at the next bridge and tick."""
    if isinstance(agents, bool) or not isinstance(agents, int) or not 0 <= agents <= 100_000:
        raise CampaignError(f"{agents!r} must be an integer between 0 and 100000", {"logged_in": "range"})
    row: asyncpg.Record | None = await conn.fetchrow(Q.campaign_set_agents, campaign_id, agents, now)
    if row is None:
        raise CampaignError(f"no campaign {campaign_id}")
    return row


async def get(conn: Conn, name: str) -> asyncpg.Record:
    row: asyncpg.Record | None = await conn.fetchrow(Q.campaign_by_name, name)
    if row is None:
        raise CampaignError(f"no campaign named {name!r}")
    return row


async def transition(
    conn: Conn, name: str, action: str, now: dt.datetime, reason: str | None = None
) -> asyncpg.Record:
    if action not in _TRANSITIONS:
        raise CampaignError(f"unknown action {action!r}")
    row: asyncpg.Record | None = await conn.fetchrow(
        Q.campaign_transition, name, _TARGET[action], list(_TRANSITIONS[action]), reason or action, now
    )
    if row is None:
        current = await get(conn, name)
        raise CampaignError(f"cannot {action} campaign {name!r}: it is {current['status']}")
    return row


async def summary(conn: Conn, name: str) -> dict[str, Any]:
    row = await get(conn, name)
    numbers = {r["status"]: r["n"] for r in await conn.fetch(Q.campaign_counts, row["id"])}
    attempts = {r["outcome"]: r["n"] for r in await conn.fetch(Q.campaign_attempt_counts, row["id"])}
    return {**to_json(row), "numbers": numbers, "attempts": attempts}


def to_json(row: asyncpg.Record) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        # The controller's own state is kilobytes of histograms: not for a human.
        if key in ("window_opens_at", "window_closes_at", "last_claimed_at", "pacing_state", "pacing_seen"):
            continue
        out[key] = value.isoformat() if isinstance(value, dt.datetime) else value
    return out


@dataclass(frozen=True, slots=True)
class NumberRow:
    phone: str
    caller_id: str | None = None
    dtmf: str | None = None
    priority: int = 0
    payload: Any = None
    line: int = 0


async def enqueue(
    conn: Conn,
    campaign_id: int,
    rows: Iterable[NumberRow],
    now: dt.datetime,
    *,
    chunk: int = 50_000,
) -> int:
    """COPY rows into a staging table and merge them in one transaction; returns rows added.

    Duplicates (in the batch or already queued) are skipped, so loading a file twice adds nothing.
    `rows` is consumed in a worker thread, one chunk ahead: parsing and validating the next chunk
    (Python, holding the GIL) overlaps Postgres merging this one (the event loop only waits), so
    a file loads at the speed of the slower side rather than the sum of both.
    """
    zones_of = await zone_resolver(conn)
    source = iter(rows)

    def take() -> list[_StageRecord]:
        return _records(itertools.islice(source, chunk), zones_of)

    async def batches() -> AsyncIterator[list[_StageRecord]]:
        ahead = asyncio.ensure_future(asyncio.to_thread(take))
        try:
            with _short_gil_slices():
                while batch := await ahead:
                    ahead = asyncio.ensure_future(asyncio.to_thread(take))
                    yield batch
        finally:
            # A failed merge leaves one chunk being parsed: the caller's iterator must not be
            # running in a thread once we return (it may write to the caller's lists).
            if not ahead.done():
                with contextlib.suppress(Exception):
                    await asyncio.shield(ahead)

    return await _merge(conn, campaign_id, batches(), now)


_overlapping = 0  # enqueues in this process now parsing in a thread (the API can run several)
_previous_switch = 0.0
_SWITCH_SECONDS = 0.0005


@contextlib.contextmanager
def _short_gil_slices() -> Iterator[None]:
    """Hand the GIL back to the event loop within 0.5 ms instead of 5 ms while a parse thread runs.

    The COPY and the merge need the event loop thread only briefly, but every time it wakes it
    waits for the parse thread to give up the GIL: at the default 5 ms interval, dozens of waits per
    chunk serialised the two sides again (1M rows: 17.4 s for the database part alone, 21.1 s end
    to end with parsing that takes 3.9 s on its own). With 0.5 ms: 300,000 rows end to end went
    from 52,000 to 65,000 rows/s, against 66,000-69,000 rows/s for the database part alone.
    """
    global _overlapping, _previous_switch
    if _overlapping == 0:
        _previous_switch = sys.getswitchinterval()
        sys.setswitchinterval(min(_SWITCH_SECONDS, _previous_switch))
    _overlapping += 1
    try:
        yield
    finally:
        _overlapping -= 1
        if _overlapping == 0:
            sys.setswitchinterval(_previous_switch)


_StageRecord: TypeAlias = tuple[int, str, "str | None", "str | None", int, Any, "list[str] | None"]
_STAGE_COLUMNS = ["line", "phone", "caller_id", "dtmf", "priority", "payload", "callee_zones"]


def _records(rows: Iterable[NumberRow], zones_of: ZoneResolver) -> list[_StageRecord]:
    # The callee's zones are derived here, not by dialer_callee_zones() in the merge: the same
    # answer (a test holds them together) at a fifth of the cost per row.
    return [(r.line, r.phone, r.caller_id, r.dtmf, r.priority, r.payload, zones_of(r.phone)) for r in rows]


async def _merge(
    conn: Conn, campaign_id: int, batches: AsyncIterable[list[_StageRecord]], now: dt.datetime
) -> int:
    added = 0
    async with conn.transaction():
        await conn.execute(Q.stage_work_mem)
        await conn.execute(Q.stage_create)
        async for batch in batches:
            await conn.copy_records_to_table("dialer_stage", records=batch, columns=_STAGE_COLUMNS)
            # Batch by batch, in file order, so an earlier batch's copy of a duplicate still wins;
            # merging each batch as it arrives is what lets the next one be parsed meanwhile.
            status = await conn.execute(Q.stage_merge, campaign_id, now)
            added += int(status.split()[-1])
            await conn.execute(Q.stage_clear)
        if added:
            await conn.execute(Q.reopen_finished, campaign_id, now)
    return added


_RESOLVERS: dict[frozenset[str], ZoneResolver] = {}


async def zone_resolver(conn: Conn) -> ZoneResolver:
    """A resolver that keeps only the zones this server knows (an unknown name would make the
    claim's AT TIME ZONE fail); built once per distinct zone list."""
    known = frozenset(r["name"] for r in await conn.fetch(Q.known_zones))
    resolver = _RESOLVERS.get(known)
    if resolver is None:
        resolver = _RESOLVERS[known] = ZoneResolver(known)
    return resolver
