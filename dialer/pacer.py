"""Pacing in the workers: bridge answered calls to agents, and tick the predictive controller.

The controller itself (scheduler/pacing.py) is pure; this module feeds it from dialer_attempt and
writes its decision back as the campaign's pacing_budget, which the claim spends. Workers are
stateless, so the estimator and the tick's bookkeeping live on the campaign row between ticks.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import asyncpg

from dialer.sql import Q
from scheduler.pacing import AgentState, Decision, Estimates, Estimator, PacingMode, PacingSettings, decide

log = logging.getLogger(__name__)

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
Row: TypeAlias = "asyncpg.Record | Mapping[str, Any]"

# Attempts started this long before the last tick are read again: a claim that took its `now`
# just before a tick may commit just after it. The per-attempt bits make the overlap harmless.
SEEN_MARGIN_SECONDS = 15.0
# After a long pause (or a switch back from agentless) the tick does not replay the whole gap.
MAX_CATCH_UP_SECONDS = 120.0
# A gap longer than this between ticks (no worker ticked) is not integrated into occupancy.
_MAX_OCCUPANCY_STEP_SECONDS = 10.0
_OBSERVED_HIT_MINUTES = 5

# Which of an attempt's events the estimator has been fed, per attempt id (pacing_seen).
STARTED, ANSWERED, NOT_ANSWERED, BRIDGED, ABANDONED, HANDLED = 1, 2, 4, 8, 16, 32

_SETTING_FIELDS = {f.name: f for f in dataclasses.fields(PacingSettings) if f.name != "mode"}


def pacing_settings(mode: str, overrides: Mapping[str, Any] | None) -> PacingSettings:
    """The campaign's PacingSettings; ValueError names the first override no campaign can mean."""
    values: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        field = _SETTING_FIELDS.get(key)
        if field is None:
            raise ValueError(f"unknown pacing setting {key!r} (known: {', '.join(sorted(_SETTING_FIELDS))})")
        # JSON numbers: bool is an int subclass, and a fractional count would break the window maths.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key} must be a number, got {value!r}")
        if field.type in ("int", int) and not isinstance(value, int):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        if not -1e9 <= value <= 1e9:
            raise ValueError(f"{key} is out of range, got {value!r}")
        values[key] = value
    if mode not in {m.value for m in PacingMode}:
        raise ValueError(f"pacing_mode must be one of {[m.value for m in PacingMode]}, got {mode!r}")
    return PacingSettings(mode=PacingMode(mode), **values)


def _seconds(later: dt.datetime, earlier: dt.datetime) -> float:
    return max(0.0, (later - earlier).total_seconds())


def feed(
    estimator: Estimator,
    rows: Iterable[Row],
    seen: Mapping[str, int],
    now: dt.datetime,
    *,
    wrap_up_seconds: float,
    margin_seconds: float = SEEN_MARGIN_SECONDS,
) -> tuple[dict[str, int], int, int]:
    """Feed the estimator every event of `rows` it has not seen; return the new seen map, live
    answers and finished ring phases fed.

    An attempt leaves the map once it has nothing more to report (ended, and its agent released if
    it had one) and is older than the margin the next tick re-reads.
    """
    events: list[tuple[float, int, str, float]] = []
    kept: dict[str, int] = {}
    answers = resolved = 0
    cutoff = now - dt.timedelta(seconds=margin_seconds)
    for r in rows:
        key = str(r["id"])
        bits = seen.get(key, 0)
        claimed: dt.datetime = r["claimed_at"]
        answered_at: dt.datetime | None = r["answered_at"]
        ended_at: dt.datetime | None = r["ended_at"]
        bridged_at: dt.datetime | None = r["bridged_at"]
        ended = r["state"] == "ended"
        # A machine or fax answer is not a live answer: the denominator of the abandonment rate
        # is calls answered by a person.
        live = answered_at is not None and r["outcome"] in (None, "answered_human")
        if not bits & STARTED:
            events.append((claimed.timestamp(), 0, "start", 0.0))
            bits |= STARTED
        if live and not bits & ANSWERED:
            assert answered_at is not None
            events.append((answered_at.timestamp(), 1, "answered", _seconds(answered_at, claimed)))
            bits |= ANSWERED
            answers += 1
            resolved += 1
        elif ended and not live and not bits & (ANSWERED | NOT_ANSWERED):
            assert ended_at is not None
            ring = _seconds(answered_at or ended_at, claimed)
            events.append((ended_at.timestamp(), 1, "not_answered", ring))
            bits |= NOT_ANSWERED
            resolved += 1
        if bridged_at is not None and not bits & BRIDGED:
            wait = _seconds(bridged_at, answered_at) if answered_at else 0.0
            events.append((bridged_at.timestamp(), 2, "bridged", wait))
            bits |= BRIDGED
        if r["abandoned_at"] is not None and not bits & ABANDONED:
            events.append((r["abandoned_at"].timestamp(), 2, "abandoned", 0.0))
            bits |= ABANDONED
        released: dt.datetime | None = r["agent_released_at"]
        if released is not None and released <= now and bridged_at is not None and not bits & HANDLED:
            talk = _seconds(ended_at or released, bridged_at)
            events.append((released.timestamp(), 3, "handled", talk))
            bits |= HANDLED
        done = ended and (bridged_at is None or bool(bits & HANDLED))
        if not done or claimed > cutoff:
            kept[key] = bits
    for at, _, kind, value in sorted(events):
        if kind == "start":
            estimator.attempt_started(at)
        elif kind == "answered":
            estimator.answered(at, value)
        elif kind == "not_answered":
            estimator.not_answered(at, value)
        elif kind == "bridged":
            estimator.bridged(at, value)
        elif kind == "abandoned":
            estimator.abandoned(at)
        else:
            estimator.handled(at, value, wrap_up_seconds)
    return kept, answers, resolved


def agent_state(
    rows: Iterable[Row],
    busy: Sequence[tuple[dt.datetime, dt.datetime | None]],
    agents_logged_in: int,
    now: dt.datetime,
) -> AgentState:
    """The controller's view of agents and lines from the live attempts and the busy agents.

    `busy` is (bridged_at, agent_released_at) per busy agent. A released time is set once the call
    has ended (end + wrap-up, by the agent trigger): that agent is in wrap-up and frees at a known
    moment, which the controller counts on instead of guessing from the time since the bridge.
    """
    ringing: list[float] = []
    waiting = 0
    for r in rows:
        if r["state"] in ("dialing", "ringing"):
            ringing.append(_seconds(now, r["claimed_at"]))
        elif r["state"] == "answered" and r["bridged_at"] is None and r["abandoned_at"] is None:
            waiting += 1
    talking: list[float] = []
    wrap_up: list[float] = []
    for bridged, released in busy:
        if released is not None:
            wrap_up.append(max(0.0, _seconds(released, now)))
        else:
            talking.append(_seconds(now, bridged))
    return AgentState(
        agents_free=max(0, agents_logged_in - len(busy)),
        busy_elapsed_seconds=tuple(talking),
        ringing_elapsed_seconds=tuple(ringing),
        answered_waiting=waiting,
        wrap_up_remaining_seconds=tuple(wrap_up),
    )


@dataclass(frozen=True)
class TickResult:
    campaign_id: int
    campaign: str
    decision: Decision
    estimates: Estimates
    state: AgentState
    agents_busy: int
    occupancy: float
    hit_rate_observed: float
    abandoned: list[asyncpg.Record]


def _minutes(
    previous: Any,
    now: dt.datetime,
    ticked_at: dt.datetime | None,
    agents: int,
    busy: int,
    answers: int,
    resolved: int,
    keep_minutes: int,
) -> list[list[float]]:
    """Per-minute [minute, live answers, finished rings, agent-seconds logged in, agent-seconds busy]."""
    rows: dict[int, list[float]] = {}
    if isinstance(previous, list):
        for item in previous:
            if isinstance(item, list) and len(item) == 5:
                rows[int(item[0])] = [float(v) for v in item]
    minute = int(now.timestamp() // 60)
    slot = rows.setdefault(minute, [float(minute), 0.0, 0.0, 0.0, 0.0])
    slot[1] += answers
    slot[2] += resolved
    if ticked_at is not None:
        step = min(_seconds(now, ticked_at), _MAX_OCCUPANCY_STEP_SECONDS)
        slot[3] += step * agents
        slot[4] += step * min(busy, agents)
    return [rows[k] for k in sorted(rows) if k > minute - keep_minutes]


def _decision_json(result: TickResult, agents_logged_in: int, mode: str, now: dt.datetime) -> dict[str, Any]:
    d, e = result.decision, result.estimates
    return {
        "mode": mode,
        "decided_at": now.isoformat(),
        "reason": d.reason,
        "new_attempts": d.new_attempts,
        "target_lines": d.target_lines,
        "dial_ratio": round(d.dial_ratio, 4),
        "hit_rate_predicted": round(d.hit_rate, 4),
        "hit_rate_observed": round(result.hit_rate_observed, 4),
        "expected_free_agents": round(d.expected_free_agents, 3),
        "expected_answers": round(d.expected_answers, 3),
        "correction": round(d.correction, 4),
        "agents_logged_in": agents_logged_in,
        "agents_free": result.state.agents_free,
        "agents_busy": result.agents_busy,
        "ringing": len(result.state.ringing_elapsed_seconds),
        "answered_waiting": result.state.answered_waiting,
        "occupancy": round(result.occupancy, 4),
        "abandon_rate_24h": round(e.abandon_rate_24h, 5),
        "abandon_rate_30d": round(e.abandon_rate_30d, 5),
        "abandon_rate_lifetime": round(e.abandon_rate_lifetime, 5),
        "answered_24h": e.answered_24h,
        "abandoned_24h": e.abandoned_24h,
        "answered_30d": e.answered_30d,
        "abandoned_30d": e.abandoned_30d,
        "answered_lifetime": e.answered_lifetime,
        "abandoned_lifetime": e.abandoned_lifetime,
    }


async def bridge(conn: Conn, campaign_id: int, now: dt.datetime) -> list[asyncpg.Record]:
    """Bridge waiting answers to free agents and abandon the expired; returns what changed."""
    return list(await conn.fetch(Q.bridge, campaign_id, now))


async def tick(conn: Conn, campaign_id: int, now: dt.datetime, interval_seconds: float) -> TickResult | None:
    """One controller tick of one campaign, in one transaction; None if another worker has it or
    it was ticked less than `interval_seconds` ago."""
    async with conn.transaction():
        camp = await conn.fetchrow(Q.pacing_lock, campaign_id, now, interval_seconds)
        if camp is None:
            return None
        try:
            settings = pacing_settings(camp["pacing_mode"], camp["pacing_settings"])
        except (ValueError, TypeError) as exc:
            # Validated on write, so this is a hand edit: pace with the defaults rather than stop.
            log.error("campaign %s has invalid pacing settings, using defaults: %s", camp["name"], exc)
            settings = PacingSettings(mode=PacingMode(camp["pacing_mode"]))
        # The lock is ours: bridging here cannot wait, and the state read below includes it.
        abandoned = [r for r in await bridge(conn, campaign_id, now) if r["action"] == "abandoned"]
        estimator = Estimator(settings)
        if camp["pacing_state"] is not None:
            try:
                estimator = Estimator.from_dict(camp["pacing_state"], settings)
            except ValueError as exc:
                log.warning("campaign %s: pacing state unreadable, starting afresh: %s", camp["name"], exc)
        seen_doc = camp["pacing_seen"] if isinstance(camp["pacing_seen"], dict) else {}
        seen_raw = seen_doc.get("attempts")
        seen: dict[str, int] = (
            {k: v for k, v in seen_raw.items() if isinstance(v, int)} if isinstance(seen_raw, dict) else {}
        )
        ticked_at: dt.datetime | None = camp["pacing_ticked_at"]
        floor = now - dt.timedelta(seconds=MAX_CATCH_UP_SECONDS)
        since = (max(ticked_at, floor) if ticked_at else now) - dt.timedelta(seconds=SEEN_MARGIN_SECONDS)
        rows = await conn.fetch(Q.pacing_attempts, campaign_id, since, list(seen))
        kept, answers, resolved = feed(estimator, rows, seen, now, wrap_up_seconds=settings.wrap_up_seconds)
        busy = [
            (r["bridged_at"], r["agent_released_at"])
            for r in await conn.fetch(Q.pacing_busy, campaign_id, now)
        ]
        agents = int(camp["agents_logged_in"])
        state = agent_state(rows, busy, agents, now)
        # The calls agents are on now count as handle times still running (right-censored).
        estimates = estimator.estimates(now.timestamp(), state.busy_elapsed_seconds)
        decision = decide(settings, state, estimates)
        minutes = _minutes(
            seen_doc.get("minutes"),
            now,
            ticked_at,
            agents,
            len(busy),
            answers,
            resolved,
            settings.window_seconds // 60,
        )
        recent = minutes[-_OBSERVED_HIT_MINUTES:]
        hit_answers = sum(m[1] for m in recent)
        hit_resolved = sum(m[2] for m in recent)
        logged = sum(m[3] for m in minutes)
        result = TickResult(
            campaign_id=campaign_id,
            campaign=camp["name"],
            decision=decision,
            estimates=estimates,
            state=state,
            agents_busy=len(busy),
            occupancy=sum(m[4] for m in minutes) / logged if logged else 0.0,
            hit_rate_observed=hit_answers / hit_resolved if hit_resolved else 0.0,
            abandoned=abandoned,
        )
        await conn.execute(
            Q.pacing_save,
            campaign_id,
            decision.new_attempts or 0,
            estimator.to_dict(),
            {"attempts": kept, "minutes": minutes},
            _decision_json(result, agents, camp["pacing_mode"], now),
            now,
        )
        if decision.new_attempts:
            await conn.execute(Q.notify_due)
    return result
