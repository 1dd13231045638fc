"""Pacing in the database: bridging answered calls to agents, abandonment, and the controller tick,
driven by a manual clock (no sleeps)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import asyncpg

from dialer import pacer
from dialer.providers.base import CallEvent
from dialer.sql import Q
from dialer.worker import apply_outcomes
from scheduler.outcomes import Outcome
from scheduler.pacing import PacingSettings
from tests.factories import NOW, add_numbers, make_campaign, open_window
from tests.integration.test_api import Client, campaign_doc, client, create

__all__ = ["client"]  # the API fixture, shared with test_api

WORKER = uuid.UUID(int=7)
INTERVAL = 0.5


def at(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


async def agent_campaign(
    conn: asyncpg.Connection,
    *,
    mode: str = "progressive",
    agents: int = 2,
    numbers: int = 30,
    **settings: Any,
) -> int:
    row = await make_campaign(
        conn, pacing_mode=mode, agents_logged_in=agents, pacing_settings=settings or None
    )
    await add_numbers(conn, row["id"], numbers)
    await open_window(conn, row["id"])
    return int(row["id"])


async def claim(conn: asyncpg.Connection, campaign_id: int, n: int, now: dt.datetime) -> list[uuid.UUID]:
    """Start n calls as the claim would after a tick granted them."""
    await conn.execute("UPDATE dialer_campaign SET pacing_budget = $2 WHERE id = $1", campaign_id, n)
    rows = await conn.fetch(Q.claim, WORKER, n, now, 30, [])
    assert len(rows) == n
    return [r["attempt_id"] for r in rows]


async def answer(conn: asyncpg.Connection, ids: list[uuid.UUID], when: dt.datetime) -> None:
    await conn.execute(Q.mark_answered, ids, [when] * len(ids), [None] * len(ids))


async def end(conn: asyncpg.Connection, attempt_id: uuid.UUID, outcome: Outcome, when: dt.datetime) -> None:
    event = CallEvent(attempt_id=str(attempt_id), call_id=None, kind="ended", outcome=outcome, ended_at=when)
    await apply_outcomes(conn, [event], when, 30)


async def attempt(conn: asyncpg.Connection, attempt_id: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM dialer_attempt WHERE id = $1", attempt_id)
    assert row is not None
    return row


async def budget(conn: asyncpg.Connection, campaign_id: int) -> int:
    return int(await conn.fetchval("SELECT pacing_budget FROM dialer_campaign WHERE id = $1", campaign_id))


# --- bridging and abandonment ------------------------------------------------------------


async def test_an_answer_is_bridged_to_a_free_agent_and_the_next_is_abandoned_after_the_grace(
    conn: asyncpg.Connection,
) -> None:
    """With one agent, the first answer is bridged at once; the second waits and is abandoned at
    answered_at + abandon_after_seconds (the moment, not when a worker noticed)."""
    cid = await agent_campaign(conn, agents=1)
    a, b = await claim(conn, cid, 2, at(0))
    await answer(conn, [a], at(5))
    await answer(conn, [b], at(6))
    changed = await pacer.bridge(conn, cid, at(6))
    assert [(r["attempt_id"], r["action"]) for r in changed] == [(a, "bridged")]
    assert await pacer.bridge(conn, cid, at(7.9)) == []
    changed = await pacer.bridge(conn, cid, at(8.5))
    assert [(r["attempt_id"], r["action"]) for r in changed] == [(b, "abandoned")]
    row = await attempt(conn, b)
    assert row["abandoned_at"] == at(6 + PacingSettings().abandon_after_seconds)
    assert row["bridged_at"] is None


async def test_a_freed_agent_takes_the_oldest_waiting_answer(conn: asyncpg.Connection) -> None:
    """Waiting answers are bridged first in, first out when an agent frees up, released at call end
    plus wrap-up."""
    cid = await agent_campaign(conn, agents=1, abandon_after_seconds=10.0, wrap_up_seconds=1.0)
    a, b, c = await claim(conn, cid, 3, at(0))
    await answer(conn, [a], at(1))
    await pacer.bridge(conn, cid, at(1))
    await answer(conn, [c], at(2))
    await answer(conn, [b], at(3))
    await end(conn, a, Outcome.ANSWERED_HUMAN, at(4))
    assert (await attempt(conn, a))["agent_released_at"] == at(5)
    assert await pacer.bridge(conn, cid, at(4.5)) == []  # still in wrap-up
    changed = await pacer.bridge(conn, cid, at(5))
    assert [r["attempt_id"] for r in changed] == [c]
    assert (await attempt(conn, c))["bridged_at"] == at(5)


async def test_concurrent_bridging_never_bridges_more_calls_than_agents(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Many workers bridging at once: the campaign row lock makes busy agents never exceed those
    logged in."""
    cid = await agent_campaign(conn, agents=3, numbers=40, abandon_after_seconds=30.0)
    ids = await claim(conn, cid, 40, at(0))
    await answer(conn, ids, at(1))
    conns = [await asyncpg.connect(dsn) for _ in range(8)]
    try:
        await asyncio.gather(*(c.fetch(Q.bridge, cid, at(1.5)) for c in conns))
    finally:
        for c in conns:
            await c.close()
    bridged = await conn.fetchval("SELECT count(*) FROM dialer_attempt WHERE bridged_at IS NOT NULL")
    assert bridged == 3


async def test_an_answer_ended_while_waiting_past_the_grace_is_abandoned(conn: asyncpg.Connection) -> None:
    """A person who stayed on the line past the grace without an agent counts as abandoned even if
    the call ended before any bridge pass; one who hung up within the grace does not."""
    cid = await agent_campaign(conn, agents=0)
    a, b = await claim(conn, cid, 2, at(0))
    await answer(conn, [a, b], at(1))
    await end(conn, a, Outcome.ANSWERED_HUMAN, at(4))
    await end(conn, b, Outcome.ANSWERED_HUMAN, at(2))
    assert (await attempt(conn, a))["abandoned_at"] == at(3)
    assert (await attempt(conn, b))["abandoned_at"] is None


async def test_the_database_refuses_a_call_both_bridged_and_abandoned(conn: asyncpg.Connection) -> None:
    """The bridge CHECK: bridged and abandoned exclude each other, and both need an answer."""
    cid = await agent_campaign(conn, agents=1)
    (a,) = await claim(conn, cid, 1, at(0))
    try:
        await conn.execute("UPDATE dialer_attempt SET bridged_at = $2 WHERE id = $1", a, at(1))
    except asyncpg.CheckViolationError:
        pass
    else:
        raise AssertionError("bridged without an answer was accepted")


async def test_agentless_campaigns_never_bridge(conn: asyncpg.Connection) -> None:
    """Broadcast campaigns have no agents: answers are left alone."""
    row = await make_campaign(conn)
    await add_numbers(conn, row["id"], 2)
    await open_window(conn, row["id"])
    ids = [r["attempt_id"] for r in await conn.fetch(Q.claim, WORKER, 2, at(0), 30, [])]
    await answer(conn, ids, at(1))
    assert await pacer.bridge(conn, row["id"], at(10)) == []


# --- the controller tick ------------------------------------------------------------------


async def test_the_tick_overwrites_the_budget_rather_than_adding_to_it(conn: asyncpg.Connection) -> None:
    """An unspent budget is replaced by the next decision, never accumulated."""
    cid = await agent_campaign(conn, agents=3)
    assert await pacer.tick(conn, cid, at(0), INTERVAL) is not None
    assert await budget(conn, cid) == 3
    assert await pacer.tick(conn, cid, at(1), INTERVAL) is not None
    assert await budget(conn, cid) == 3


async def test_progressive_budget_is_free_agents_minus_outstanding_lines(conn: asyncpg.Connection) -> None:
    """Progressive: one line per free agent, counting ringing and waiting calls as lines."""
    cid = await agent_campaign(conn, agents=4)
    a, b, _ = await claim(conn, cid, 3, at(0))
    result = await pacer.tick(conn, cid, at(1), INTERVAL)
    assert result is not None and result.decision.reason == "progressive"
    assert await budget(conn, cid) == 1
    await answer(conn, [a, b], at(2))  # both bridged: 2 busy, 2 free, 1 ringing
    result = await pacer.tick(conn, cid, at(3), INTERVAL)
    assert result is not None and result.agents_busy == 2
    assert await budget(conn, cid) == 1


async def test_no_agents_dial_nothing(conn: asyncpg.Connection) -> None:
    """No agent logged in: the budget is zero whatever the mode."""
    cid = await agent_campaign(conn, mode="predictive", agents=0)
    result = await pacer.tick(conn, cid, at(0), INTERVAL)
    assert result is not None and result.decision.reason == "no_agents"
    assert await budget(conn, cid) == 0


async def test_the_estimator_state_is_persisted_and_each_event_fed_once(conn: asyncpg.Connection) -> None:
    """The estimator survives between ticks on the campaign row; events already fed are not fed again."""
    cid = await agent_campaign(conn, mode="predictive", agents=2)
    a, b = await claim(conn, cid, 2, at(0))
    await answer(conn, [a], at(4))
    await end(conn, b, Outcome.BUSY, at(3))
    first = await pacer.tick(conn, cid, at(5), INTERVAL)
    assert first is not None
    assert first.estimates.answered_lifetime == 1 and first.estimates.not_answered_in_window == 1
    second = await pacer.tick(conn, cid, at(6), INTERVAL)
    assert second is not None
    assert second.estimates.answered_lifetime == 1 and second.estimates.not_answered_in_window == 1
    assert second.estimates.attempts_in_window == 2
    state = await conn.fetchval("SELECT pacing_state FROM dialer_campaign WHERE id = $1", cid)
    assert state["v"] == 1 and state["lifetime"] == [1, 0]


async def test_only_one_worker_ticks_a_campaign_at_a_time(dsn: str, conn: asyncpg.Connection) -> None:
    """A campaign locked by one worker's tick is skipped by another, and a fresh tick is not repeated
    within the interval."""
    cid = await agent_campaign(conn, agents=1)
    other = await asyncpg.connect(dsn)
    try:
        async with other.transaction():
            assert await other.fetchrow(Q.pacing_lock, cid, at(0), INTERVAL) is not None
            assert await pacer.tick(conn, cid, at(0), INTERVAL) is None
        assert await pacer.tick(conn, cid, at(0), INTERVAL) is not None
        assert await pacer.tick(conn, cid, at(0.2), INTERVAL) is None
    finally:
        await other.close()


async def test_abandonment_reaches_the_estimator_and_the_decision(conn: asyncpg.Connection) -> None:
    """An abandoned answer is counted in the rolling rates the tick stores for the API."""
    cid = await agent_campaign(conn, mode="predictive", agents=1)
    a, b = await claim(conn, cid, 2, at(0))
    await answer(conn, [a, b], at(1))
    await pacer.bridge(conn, cid, at(1))
    result = await pacer.tick(conn, cid, at(4), INTERVAL)
    assert result is not None
    assert result.estimates.abandoned_24h == 1 and result.estimates.answered_24h == 2
    decision = await conn.fetchval("SELECT pacing_decision FROM dialer_campaign WHERE id = $1", cid)
    assert decision["abandon_rate_24h"] == 0.5
    # Over the 3% limit: back to progressive, with the one agent busy.
    assert result.decision.reason == "over_target_fallback_progressive"
    assert await budget(conn, cid) == 0


# --- API ----------------------------------------------------------------------------------


async def test_api_sets_pacing_and_agents_and_reads_the_controller(client: Client) -> None:
    """Create with a pacing mode, report agents live, and read the last decision."""
    cid = await create(
        client, pacing_mode="predictive", agents_logged_in=2, pacing_settings={"min_observations": 5}
    )
    status, doc = await client.call(
        "PUT", f"/v1/campaigns/{cid}/agents", {"data": {"type": "agents", "attributes": {"logged_in": 7}}}
    )
    assert status == 200 and doc["data"]["attributes"]["logged_in"] == 7
    await client.conn.execute("UPDATE dialer_campaign SET status = 'running' WHERE id = $1", int(cid))
    assert await pacer.tick(client.conn, int(cid), NOW, INTERVAL) is not None
    status, doc = await client.call("GET", f"/v1/campaigns/{cid}/pacing")
    assert status == 200
    attrs = doc["data"]["attributes"]
    assert attrs["pacing_mode"] == "predictive" and attrs["agents"] == {"free": 7, "busy": 0}
    assert attrs["reason"] == "warm_up" and attrs["budget"] == 7


async def test_api_refuses_impossible_pacing_settings_with_a_pointer(client: Client) -> None:
    """A pacing setting PacingSettings refuses is a 422 pointing at pacing_settings; nothing is created."""
    status, doc = await client.call(
        "POST",
        "/v1/campaigns",
        campaign_doc(pacing_mode="predictive", pacing_settings={"max_dial_ratio": 0.5}),
    )
    assert status == 422
    assert doc["errors"][0]["source"]["pointer"] == "/data/attributes/pacing_settings"
    assert await client.conn.fetchval("SELECT count(*) FROM dialer_campaign") == 0


async def test_the_outcome_webhook_says_whether_the_call_was_abandoned(conn: asyncpg.Connection) -> None:
    """The attempt.ended event is built after the agent trigger: an abandoned answer says so, a
    short one does not (migration 0010)."""
    cid = await agent_campaign(conn, agents=0)
    await conn.execute(
        "UPDATE dialer_campaign SET webhook_url = 'https://crm.example.com/h', webhook_attempt_events = true"
        " WHERE id = $1",
        cid,
    )
    a, b = await claim(conn, cid, 2, at(0))
    await answer(conn, [a, b], at(1))
    await end(conn, a, Outcome.ANSWERED_HUMAN, at(4))
    await end(conn, b, Outcome.ANSWERED_HUMAN, at(2))
    events = {
        r["payload"]["attempt"]["id"]: r["payload"]["attempt"]
        for r in await conn.fetch("SELECT payload FROM dialer_webhook_event WHERE type = 'attempt.ended'")
    }
    assert events[str(a)]["abandoned"] is True and events[str(a)]["abandoned_at"] is not None
    assert events[str(b)]["abandoned"] is False and events[str(b)]["bridged_at"] is None


async def test_the_tick_sees_an_agent_in_wrap_up_until_its_release(conn: asyncpg.Connection) -> None:
    """Once a bridged call ends, the busy agents the tick reads carry the release (end + wrap-up),
    and the controller's view has that agent in wrap-up, not talking."""
    cid = await agent_campaign(conn, agents=2, wrap_up_seconds=10.0)
    a, b = await claim(conn, cid, 2, at(0))
    await answer(conn, [a, b], at(5))
    await pacer.bridge(conn, cid, at(5))
    await end(conn, a, Outcome.ANSWERED_HUMAN, at(65))
    busy = [(r["bridged_at"], r["agent_released_at"]) for r in await conn.fetch(Q.pacing_busy, cid, at(70))]
    state = pacer.agent_state([], busy, 2, at(70))
    assert state.wrap_up_remaining_seconds == (5.0,)
    assert state.busy_elapsed_seconds == (65.0,)
    assert state.agents_free == 0
    # Released: only the agent still talking is busy.
    later = await conn.fetch(Q.pacing_busy, cid, at(76))
    assert [(r["bridged_at"], r["agent_released_at"]) for r in later] == [(at(5), None)]
