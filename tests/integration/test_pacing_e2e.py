"""Progressive and predictive pacing end to end: the contact center of scheduler/callcenter.py, the
one simulate() runs around the controller in process, here drives real `dialer worker` processes
through the provider simulator (provider_model translates it), and the invariants are read back from
dialer_attempt and from the provider simulator's own books."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import math
import signal
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import pytest

from dialer import campaigns
from scheduler.callcenter import FAST_FAIL_SECONDS, CallCenterConfig, provider_model
from tests.factories import add_numbers, make_campaign
from tests.workers import reap, simulator, spawn, wait_ready

pytestmark = pytest.mark.slow

# The contact center: both campaigns' calls and agents follow it (provider_model translates it for
# the provider simulator and the campaigns). Half-minute calls and the shortest US ring timeout so
# that, 25 times faster than real (a 30 s talk takes 1.2 s), sixty numbers take seconds.
MODEL = CallCenterConfig(
    agents=6,
    answer_rate=0.3,
    seed=5,
    ring_timeout_seconds=15.0,
    answer_median_seconds=6.0,
    answer_sigma=0.5,
    fast_fail_share=0.25,
    talk_mean_seconds=30.0,
    talk_sigma=0.6,
    wrap_up_seconds=5.0,
)
TIME_SCALE = 0.04
PROVIDER = provider_model(MODEL, TIME_SCALE)
AGENTS = MODEL.agents
NUMBERS = 60
# abandon_after_seconds, in real seconds (the workers run on the system clock). Not the 2 s of the
# US rule scaled down (0.08 s): the grace has to outlast a worker's reaction to an answer or a freed
# agent (one pacing pass, <= 0.1 s here), or calls would be abandoned while an agent was free. Still
# short against talk times (7.5 model seconds; 2% of callers hang up sooner), since a caller the
# provider simulator puts through talks from the answer on, not from the bridge.
GRACE = 0.3
# Pacing passes (bridging, controller ticks) every 0.1 s: a tenth of a model call length.
WORKER_ENV = {"DIALER_MAINTENANCE_INTERVAL_SECONDS": "0.1"}
MAX_DIAL_RATIO = 3.0
# The predictive campaign accepts 15% abandonment (the default limit is 3%): on sixty numbers the
# default controller abandons next to nothing, and the abandonment checks would mostly hold vacuously.
MAX_ABANDON_RATE = 0.15
AGGRESSIVE = {
    "max_abandon_rate": MAX_ABANDON_RATE,
    "abandon_aim_fraction": 1.0,
    "base_risk_factor": 3.0,
    "emergency_abandon_rate": 0.5,
}
RUN_TIMEOUT = 90.0
# A claim reads its clock just before taking the campaign lock; a tick may commit in between, so a
# claim's claimed_at can precede the tick that granted it by a few milliseconds. Interval checks
# start each line this much later than claimed_at (it does not apply to bridging: bridged_at is
# read under the same lock as the busy count).
CLAIM_CLOCK_SLACK = dt.timedelta(milliseconds=100)
_FAR = dt.datetime.max.replace(tzinfo=dt.UTC)
_MODEL_OUTCOMES = {"answered_human", "busy", "no_answer"}


def max_overlap(intervals: Iterable[tuple[dt.datetime, dt.datetime]]) -> int:
    """Most intervals [start, end) open at any one instant (an end at t closes before a start at t)."""
    points = sorted([(s, 1) for s, e in intervals if e > s] + [(e, -1) for s, e in intervals if e > s])
    best = current = 0
    for _, delta in sorted(points, key=lambda p: (p[0], p[1])):
        current += delta
        best = max(best, current)
    return best


def open_at(intervals: Sequence[tuple[dt.datetime, dt.datetime]], t: dt.datetime) -> int:
    return sum(1 for s, e in intervals if s <= t < e)


def line_end(a: asyncpg.Record) -> dt.datetime:
    """When a call stops holding a line or an agent: agent release if bridged, else abandonment or its end."""
    if a["bridged_at"] is not None:
        return a["agent_released_at"] or _FAR
    ends = [t for t in (a["abandoned_at"], a["ended_at"]) if t is not None]
    return min(ends) if ends else _FAR


def no_callee_window() -> dict[str, Any]:
    # The compliance gate (callee-local 08:00-21:00) would hold these numbers at night; this test
    # is about pacing, whatever the hour it runs at.
    names = {f.name for f in dataclasses.fields(campaigns.CampaignSpec)}
    return {"callee_window_start": None, "callee_window_end": None} if "callee_window_start" in names else {}


def within_binomial(successes: int, trials: int, p: float, sds: float = 4.5) -> bool:
    """successes / trials within `sds` binomial standard deviations of p (a loose, non-flaky bound)."""
    return abs(successes / trials - p) <= sds * math.sqrt(p * (1.0 - p) / trials)


def seconds(later: dt.datetime, earlier: dt.datetime) -> float:
    return (later - earlier).total_seconds()


async def run_until_finished(
    conn: asyncpg.Connection, campaign_id: int, timeout: float
) -> list[dict[str, Any]]:
    """Poll until the campaign is finished (every number final); return the pacing decisions seen."""
    decisions: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(timeout):
        while True:
            row = await conn.fetchrow(
                "SELECT status, pacing_decision FROM dialer_campaign WHERE id = $1", campaign_id
            )
            if row["pacing_decision"] is not None:
                decisions[row["pacing_decision"]["decided_at"]] = row["pacing_decision"]
            if row["status"] == "finished":
                return [decisions[k] for k in sorted(decisions)]
            await asyncio.sleep(0.1)


async def test_callcenter_model_drives_real_workers_through_the_provider_simulator(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Two workers dial a predictive and a progressive campaign of MODEL.agents agents each, the
    provider simulator answering, ringing, talking and hanging up as MODEL says and the agents
    wrapping up as it says. Bridged calls never exceed agents; progressive never has more lines out
    than agents and never abandons; predictive dials ahead of its agents once warmed up, and every
    call it abandons was answered, waited out the grace, and found every agent busy; every number
    of the predictive campaign ends final and none is ever dialed twice at once; and what the
    workers observed (answer rate, fast-fail share, ring and talk times) is MODEL's."""
    started = time.monotonic()
    async with simulator(**PROVIDER.simulator) as sim:
        now = dt.datetime.now(dt.UTC)
        common: dict[str, Any] = {
            "now": now,
            "agents_logged_in": PROVIDER.agents_logged_in,
            "ring_timeout_seconds": PROVIDER.ring_timeout_seconds,
            # One redial of busy and unanswered numbers, at once: numbers come back while others
            # are still out, so "never dialed twice at once" has something to hold against.
            "max_retries": 1,
            "retry_wait_seconds": 0,
            "max_concurrent_calls": 50,
            "max_calls_per_second": 50,
            **no_callee_window(),
        }
        fast = {
            **PROVIDER.pacing_settings,
            "abandon_after_seconds": GRACE,
            "min_observations": 5,
            "warm_up_seconds": 0,
            "window_seconds": 300,
        }
        pred = await make_campaign(
            conn,
            name="pred",
            pacing_mode="predictive",
            pacing_settings={**fast, **AGGRESSIVE, "max_dial_ratio": MAX_DIAL_RATIO},
            **common,
        )
        prog = await make_campaign(
            conn, name="prog", pacing_mode="progressive", pacing_settings=fast, **common
        )
        await add_numbers(conn, pred["id"], NUMBERS, now=now)
        await add_numbers(conn, prog["id"], NUMBERS, now=now, offset=5000)

        workers = [spawn(dsn, sim.base_url, **WORKER_ENV) for _ in range(2)]
        with reap(workers):
            await wait_ready(workers)
            decisions = await run_until_finished(conn, pred["id"], RUN_TIMEOUT)
            # Progressive is slower by design; it has had the same run, and stops here.
            await conn.execute("UPDATE dialer_campaign SET status = 'paused' WHERE id = $1", prog["id"])
            async with asyncio.timeout(20):
                while await conn.fetchval("SELECT count(*) FROM dialer_attempt WHERE state <> 'ended'"):
                    await asyncio.sleep(0.1)
            for w in workers:
                w.signal(signal.SIGTERM)
            for w in workers:
                assert await asyncio.to_thread(w.proc.wait, 15) == 0
        provider_calls = {e["attempt_id"]: sim.lookup(e["attempt_id"]) for e in sim.log()}
    elapsed = time.monotonic() - started

    attempts = await conn.fetch("SELECT * FROM dialer_attempt ORDER BY claimed_at")
    by_campaign = {cid: [a for a in attempts if a["campaign_id"] == cid] for cid in (pred["id"], prog["id"])}
    p_rows, g_rows = by_campaign[pred["id"]], by_campaign[prog["id"]]
    assert len(p_rows) >= NUMBERS and len(g_rows) > 20, (len(p_rows), len(g_rows), elapsed)

    # Every number of the predictive campaign is final, each attempt ended with a decision.
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM dialer_number WHERE campaign_id = $1 AND status NOT IN ('completed', 'failed')",
            pred["id"],
        )
        == 0
    )
    assert all(a["state"] == "ended" and a["decision"] is not None for a in attempts)

    # No number is ever dialed twice at once, by the dialer's records and by the provider's.
    per_number: dict[int, list[tuple[dt.datetime, dt.datetime]]] = defaultdict(list)
    for a in attempts:
        per_number[a["number_id"]].append((a["claimed_at"], a["ended_at"]))
    assert max(max_overlap(v) for v in per_number.values()) == 1
    assert sum(len(v) > 1 for v in per_number.values()) > 10, "too few redials to tell"
    per_phone: dict[str, list[tuple[dt.datetime, dt.datetime]]] = defaultdict(list)
    for call in provider_calls.values():
        assert call is not None and call["ended_at"] is not None, call
        per_phone[call["to"]].append(
            (dt.datetime.fromisoformat(call["started_at"]), dt.datetime.fromisoformat(call["ended_at"]))
        )
    assert max(max_overlap(v) for v in per_phone.values()) == 1
    assert {str(a["id"]) for a in attempts} == set(provider_calls)

    # The agent-end trigger frees an agent at the call's end plus the model's wrap-up, in real time.
    wrap = dt.timedelta(seconds=PROVIDER.pacing_settings["wrap_up_seconds"])
    for rows in (p_rows, g_rows):
        bridged = [(a["bridged_at"], a["agent_released_at"] or _FAR) for a in rows if a["bridged_at"]]
        assert bridged, "nothing was bridged"
        assert max_overlap(bridged) <= AGENTS, "more calls bridged than agents at one time"
        for a in rows:
            if a["bridged_at"] is not None:
                assert a["agent_released_at"] == max(a["ended_at"], a["bridged_at"]) + wrap
            if a["outcome"] == "answered_human" and a["answered_at"] is not None:
                waited = a["ended_at"] - a["answered_at"]
                # Every live answer is either bridged, abandoned at the grace, or hung up within it.
                assert a["bridged_at"] or a["abandoned_at"] or waited < dt.timedelta(seconds=GRACE), a
            if a["abandoned_at"] is not None:
                # Abandoned: answered by a person, never bridged, at answer + grace, and at some
                # moment of that wait every agent was busy (busy agents only change when one is
                # bridged or released, so the most busy in the wait is at its start or a bridge).
                assert a["outcome"] == "answered_human" and a["bridged_at"] is None, a
                assert a["abandoned_at"] == a["answered_at"] + dt.timedelta(seconds=GRACE)
                moments = [a["answered_at"]] + [
                    s for s, _ in bridged if a["answered_at"] <= s <= a["abandoned_at"]
                ]
                assert max(open_at(bridged, t) for t in moments) == AGENTS, ("abandoned with a free agent", a)

    lines = [(a["claimed_at"] + CLAIM_CLOCK_SLACK, line_end(a)) for a in g_rows]
    assert max_overlap(lines) <= AGENTS, "progressive had more lines out than agents"
    assert not [a for a in g_rows if a["abandoned_at"]], "progressive abandoned a call"

    # Predictive dials ahead of its agents once warmed up: the controller chose a dial ratio above
    # 1 (progressive is exactly 1), and more lines were out than agents at some instant.
    ahead = [d for d in decisions if d["reason"] in ("predictive", "max_ratio") and d["dial_ratio"] > 1.0]
    assert ahead, sorted({d["reason"] for d in decisions})
    p_lines = [(a["claimed_at"] + CLAIM_CLOCK_SLACK, line_end(a)) for a in p_rows]
    assert max_overlap(p_lines) > AGENTS, "predictive never dialed ahead of its agents"
    assert max_overlap(p_lines) <= MAX_DIAL_RATIO * AGENTS
    # The rails (fall back to progressive once the rolling rate is over max_abandon_rate) hold the
    # rate at the limit, plus what lines already out when it crossed can add: at most
    # max_dial_ratio x agents of them.
    answered = sum(1 for a in p_rows if a["outcome"] == "answered_human")
    abandoned = sum(1 for a in p_rows if a["abandoned_at"] is not None)
    assert abandoned <= MAX_ABANDON_RATE * answered + MAX_DIAL_RATIO * AGENTS, (abandoned, answered)
    decision = await conn.fetchval("SELECT pacing_decision FROM dialer_campaign WHERE id = $1", pred["id"])
    assert decision["answered_lifetime"] >= 5 and decision["abandoned_lifetime"] <= abandoned, decision

    # MODEL drove the calls: only its outcomes, in its proportions, with its ring and talk times
    # (real seconds = model seconds x TIME_SCALE), within loose bounds.
    outcomes = [a["outcome"] for a in attempts]
    assert set(outcomes) <= _MODEL_OUTCOMES, set(outcomes)
    n_answered, n_busy = outcomes.count("answered_human"), outcomes.count("busy")
    assert within_binomial(n_answered, len(outcomes), MODEL.answer_rate), (n_answered, len(outcomes))
    unanswered = len(outcomes) - n_answered
    assert within_binomial(n_busy, unanswered, MODEL.fast_fail_share), (n_busy, unanswered)
    rings = [seconds(a["answered_at"], a["claimed_at"]) for a in attempts if a["answered_at"]]
    ring_median = MODEL.answer_median_seconds * TIME_SCALE
    assert ring_median / 1.5 < statistics.median(rings) < ring_median * 1.5, statistics.median(rings)
    fast = [seconds(a["ended_at"], a["claimed_at"]) for a in attempts if a["outcome"] == "busy"]
    lo, hi = (s * TIME_SCALE for s in FAST_FAIL_SECONDS)
    assert lo - 0.01 < min(fast) and max(fast) < hi + 0.5, (min(fast), max(fast))
    timeouts = [seconds(a["ended_at"], a["claimed_at"]) for a in attempts if a["outcome"] == "no_answer"]
    timeout = MODEL.ring_timeout_seconds * TIME_SCALE
    assert timeout - 0.01 < statistics.median(timeouts) < timeout * 1.25, statistics.median(timeouts)
    talks = [
        seconds(a["ended_at"], a["answered_at"])
        for a in attempts
        if a["answered_at"] and a["abandoned_at"] is None  # the dialer cuts abandoned calls short
    ]
    talk_median = MODEL.talk_mean_seconds * math.exp(-(MODEL.talk_sigma**2) / 2) * TIME_SCALE
    assert talk_median / 1.5 < statistics.median(talks) < talk_median * 1.5, statistics.median(talks)
