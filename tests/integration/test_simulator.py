import asyncio
import dataclasses
import math
import random
import re
import socket
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import aiohttp
import orjson
import pytest
from aiohttp import web

from dialer import simdialects
from dialer.simdialects import (
    DEFAULT_START_STATUSES,
    E164,
    Callback,
    CallView,
    StartSpec,
    register,
)
from dialer.simdialects.native import NativeDialect
from dialer.simulator import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Simulator,
    SimulatorConfig,
    SimulatorState,
    max_in_window,
    sign,
)

# Fast enough that a 30 s simulated ring takes 30 ms; the talk cap keeps the exponential tail short too.
FAST = {"time_scale": 0.001, "talk_max_seconds": 60.0, "seed": 7}
WAIT_SECONDS = 3.0
AUTH = {"Authorization": "Bearer sim-key"}


@dataclass
class Receiver:
    """A callback endpoint that records every POST and can fail or stall on demand."""

    url: str = ""
    posts: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    # Form-encoded callbacks (the "form" dialect below), with the query of the URL they were posted to.
    forms: list[dict[str, str]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.posts.append((body, dict(request.headers)))
        self.changed.set()
        await self.gate.wait()
        status = self.statuses.pop(0) if self.statuses else 204
        if status < 300:
            if request.content_type == "application/x-www-form-urlencoded":
                self.forms.append({**request.query, **dict(parse_qsl(body.decode()))})
            else:
                self.events.append(orjson.loads(body))
            self.changed.set()
        return web.Response(status=status)

    def of(self, attempt_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["attempt_id"] == attempt_id]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_SECONDS):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    rec.gate.set()
    app = web.Application()
    app.router.add_post("/cb", rec.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/cb"
    yield rec
    rec.gate.set()
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


SimFactory = Callable[..., Awaitable[Simulator]]


@pytest.fixture
async def make_sim(receiver: Receiver) -> AsyncIterator[SimFactory]:
    # Depends on the receiver so it is torn down first: a simulator still posting callbacks would hold
    # the receiver's shutdown until the callback timed out.
    started: list[Simulator] = []

    async def factory(clock: Callable[[], float] | None = None, **overrides: Any) -> Simulator:
        config = SimulatorConfig.from_dict({**FAST, **overrides})
        sim = Simulator(config) if clock is None else Simulator(config, clock=clock)
        await sim.start()
        started.append(sim)
        return sim

    yield factory
    for sim in started:
        await sim.stop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def body(attempt_id: str, to: str, callback_url: str, **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "attempt_id": attempt_id,
        "to": to,
        "from": "+15550009999",
        "ring_timeout_seconds": 30,
        "callback_url": callback_url,
        "dtmf": None,
        "metadata": {"campaign": "camp-a", "list": "l1"},
    }
    payload.update(extra)
    return payload


async def start(
    http: aiohttp.ClientSession, sim: Simulator, payload: Any, key: str = "sim-key"
) -> tuple[int, Any]:
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    async with http.post(
        f"{sim.base_url}/v1/calls", data=data, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        return resp.status, orjson.loads(await resp.read())


async def by_attempt(http: aiohttp.ClientSession, sim: Simulator, attempt_id: str) -> tuple[int, Any]:
    async with http.get(f"{sim.base_url}/v1/calls/by-attempt/{attempt_id}", headers=AUTH) as resp:
        return resp.status, orjson.loads(await resp.read())


async def ended(sim: Simulator, attempt_id: str) -> dict[str, Any]:
    async with asyncio.timeout(WAIT_SECONDS):
        return await sim.wait_ended(attempt_id)


def test_sign_is_hmac_sha256_hex() -> None:
    """sign() reproduces the RFC 4231-style published HMAC-SHA256 vector."""
    assert (
        sign("key", b"The quick brown fox jumps over the lazy dog")
        == "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    )


def test_max_in_window_counts_half_open_second() -> None:
    """Starts exactly one second apart never share a window; those closer do."""
    assert max_in_window([0.0, 1.0, 2.0]) == 1
    assert max_in_window([0.0, 0.5, 0.99, 1.0, 1.2, 3.0]) == 4
    assert max_in_window([]) == 0


def test_config_from_dict_rejects_unknown_keys_and_bad_values() -> None:
    """Config loading refuses typos and out-of-range values instead of ignoring them."""
    with pytest.raises(ValueError, match="unknown"):
        SimulatorConfig.from_dict({"answer_probabilty": 1.0})
    with pytest.raises(ValueError, match=r"0\.\.1"):
        SimulatorConfig.from_dict({"drop_callback_probability": 1.5})
    with pytest.raises(ValueError, match="unknown outcomes"):
        SimulatorConfig.from_dict({"forced_outcomes": {"+15550000001": "voicemail"}})
    config = SimulatorConfig.from_dict({"force_by_last_digit": {7: "busy"}, "max_cps": 50})
    assert config.force_by_last_digit == {"7": "busy"}
    assert SimulatorConfig.from_dict(config.to_dict()) == config


def draws(config: SimulatorConfig, n: int) -> list[tuple[str, float, float]]:
    """(outcome, ring, talk) of n calls' draws, in simulated seconds, with no call started."""
    state = SimulatorState(config)
    return [state._choose_outcome(f"+1555000{i:04d}") for i in range(n)]


def test_default_durations_are_random_uniform_and_expovariate() -> None:
    """With the lognormal options unset a seed gives the durations it always gave: ring uniform in
    ring_min..ring_max, talk exponential, each from one of the call's four draws."""
    config = SimulatorConfig(seed=7, ring_min_seconds=2.0, ring_max_seconds=10.0, talk_mean_seconds=20.0)
    rng = random.Random("7:outcome")
    expected = []
    for _ in range(2000):
        rng.random()
        ring = rng.uniform(2.0, 10.0)
        talk = min(rng.expovariate(1.0 / 20.0), config.talk_max_seconds)
        rng.random()
        expected.append((ring, max(talk, 1.0)))
    assert [(ring, talk) for _, ring, talk in draws(config, 2000)] == expected


def test_lognormal_ring_and_talk_keep_the_outcome_mix() -> None:
    """answer_ring_median_seconds and talk_sigma make answered rings and talks lognormal (that median;
    that mean), busy calls keep the uniform ring, and each call's outcome stays what the seed gave it."""
    base = SimulatorConfig(seed=11, ring_min_seconds=1.0, ring_max_seconds=6.0, talk_mean_seconds=120.0)
    lognormal = dataclasses.replace(
        base, answer_ring_median_seconds=8.0, answer_ring_sigma=0.5, talk_sigma=0.8
    )
    plain, shaped = draws(base, 20_000), draws(lognormal, 20_000)
    assert [o for o, _, _ in plain] == [o for o, _, _ in shaped]
    rings = [ring for o, ring, _ in shaped if o == "answered"]
    assert statistics.median(rings) == pytest.approx(8.0, rel=0.04)
    assert statistics.stdev(math.log(r) for r in rings) == pytest.approx(0.5, rel=0.05)
    assert all(1.0 <= ring <= 6.0 for o, ring, _ in shaped if o == "busy")
    talks = [talk for _, _, talk in shaped]
    assert statistics.fmean(talks) == pytest.approx(120.0, rel=0.04)
    assert statistics.stdev(math.log(t) for t in talks) == pytest.approx(0.8, rel=0.05)


@pytest.mark.parametrize(
    "change",
    [{"answer_ring_median_seconds": 0.0}, {"answer_ring_sigma": -0.1}, {"talk_sigma": 6.0}],
)
def test_lognormal_options_refuse_impossible_values(change: dict[str, float]) -> None:
    """A zero median or a negative or absurd sigma is a ValueError, not a simulator that crashes later."""
    with pytest.raises(ValueError, match="must"):
        SimulatorConfig.from_dict(change)


async def test_wrong_or_missing_api_key_is_401(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """Start and lookup requests without the right bearer key get 401 and create nothing."""
    sim = await make_sim()
    status, payload = await start(http, sim, body("a1", "+15551230001", receiver.url), key="wrong")
    assert status == 401
    assert payload["error"]["code"] == "unauthorized"
    async with http.post(f"{sim.base_url}/v1/calls", json=body("a1", "+15551230001", receiver.url)) as resp:
        assert resp.status == 401
    async with http.get(f"{sim.base_url}/v1/calls/by-attempt/a1") as resp:
        assert resp.status == 401
    stats = sim.stats()
    assert stats["calls_started"] == 0
    assert stats["start_requests"] == 2
    assert stats["rejected_by_reason"] == {"unauthorized": 2}


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        ({"to": "+15551230001", "ring_timeout_seconds": 30, "callback_url": "http://x/cb"}, "missing_field"),
        (body("a" * 65, "+15551230001", "http://x/cb"), "invalid_field"),
        (body("a1", "15551230001", "http://x/cb"), "invalid_number"),
        (body("a1", "+05551230001", "http://x/cb"), "invalid_number"),
        (body("a1", "+1555", "http://x/cb"), "invalid_number"),
        (body("a1", "+15551230001", "http://x/cb", ring_timeout_seconds=0), "invalid_field"),
        (body("a1", "+15551230001", "http://x/cb", ring_timeout_seconds=601), "invalid_field"),
        (body("a1", "+15551230001", "http://x/cb", ring_timeout_seconds=True), "invalid_field"),
        (body("a1", "+15551230001", "ftp://x/cb"), "invalid_field"),
        (body("a1", "+15551230001", "http://x/cb", metadata=["camp"]), "invalid_field"),
        (body("a1", "+15551230001", "http://x/cb", metadata={"campaign": 5}), "invalid_field"),
    ],
)
async def test_invalid_start_bodies_are_400(
    make_sim: SimFactory, http: aiohttp.ClientSession, payload: Any, code: str
) -> None:
    """Malformed JSON, missing or out-of-range fields and non-E.164 numbers get 400 with a code."""
    sim = await make_sim()
    status, response = await start(http, sim, payload)
    assert status == 400
    assert response["error"]["code"] == code
    assert sim.stats()["calls_started"] == 0


async def test_answered_call_posts_signed_final_callback(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """An accepted call returns 201 and later posts one signed, well-formed completed event."""
    sim = await make_sim(forced_outcomes={"+15551230001": "answered"})
    status, created = await start(http, sim, body("a1", "+15551230001", receiver.url))
    assert status == 201
    assert re.fullmatch(r"CA[0-9a-f]{32}", created["call_id"])
    assert created == {"call_id": created["call_id"], "attempt_id": "a1", "status": "queued"}

    await receiver.wait_for(lambda: len(receiver.events) == 1)
    raw, headers = receiver.posts[0]
    assert headers["Content-Type"] == "application/json"
    assert headers[SIGNATURE_HEADER] == sign("sim-secret", raw)
    assert headers[TIMESTAMP_HEADER].isdigit()
    event = receiver.events[0]
    assert set(event) == {
        "event_id", "attempt_id", "call_id", "status", "answered", "answered_at", "started_at",
        "ended_at", "duration_seconds", "billsec", "cause_code", "sip_code", "sequence",
    }  # fmt: skip
    assert event["attempt_id"] == "a1"
    assert event["call_id"] == created["call_id"]
    assert (event["status"], event["answered"], event["cause_code"], event["sip_code"]) == (
        "completed",
        True,
        16,
        200,
    )
    assert event["sequence"] == 3
    assert event["started_at"] <= event["answered_at"] <= event["ended_at"]
    # Durations are simulated seconds, so they dwarf the milliseconds that really passed.
    assert event["duration_seconds"] >= 2.0
    assert event["billsec"] >= 1
    assert event["billsec"] <= event["duration_seconds"] + 1
    await sim.drain_callbacks()
    stats = sim.stats()
    assert (stats["callbacks_sent"], stats["live_calls"]) == (1, 0)
    assert stats["calls_by_status"] == {"completed": 1}


async def test_repeated_start_is_idempotent(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A second start for the same attempt_id returns 200 and the same call, and rings nobody twice."""
    sim = await make_sim(forced_outcomes={"+15551230001": "busy"})
    first = await start(http, sim, body("a1", "+15551230001", receiver.url))
    second = await start(http, sim, body("a1", "+15551230001", receiver.url))
    assert first[0] == 201
    assert second[0] == 200
    assert second[1]["call_id"] == first[1]["call_id"]
    await ended(sim, "a1")
    await sim.drain_callbacks()
    assert len(receiver.of("a1")) == 1
    stats = sim.stats()
    assert (stats["start_requests"], stats["calls_started"], stats["duplicate_start_requests"]) == (2, 1, 1)
    assert [(e["duplicate"], e["response_status"]) for e in sim.log()] == [(False, 201), (True, 200)]


async def test_reused_attempt_id_for_another_number_conflicts(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """An attempt_id reused for a different number is a caller bug: 409, no second call."""
    sim = await make_sim()
    await start(http, sim, body("a1", "+15551230001", receiver.url))
    status, payload = await start(http, sim, body("a1", "+15551230002", receiver.url))
    assert status == 409
    assert payload["error"]["code"] == "attempt_conflict"
    assert sim.stats()["calls_started"] == 1


async def test_lookup_is_404_until_received_then_tracks_the_call(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """By-attempt lookup is 404 for unseen attempts, then shows the live and the final record."""
    sim = await make_sim(forced_outcomes={"+15551230001": "no-answer"})
    status, payload = await by_attempt(http, sim, "a1")
    assert (status, payload["error"]["code"]) == (404, "not_found")

    # 300 simulated seconds is 0.3 s here: ample time to see the call live even on a loaded box.
    _, created = await start(http, sim, body("a1", "+15551230001", receiver.url, ring_timeout_seconds=300))
    status, live = await by_attempt(http, sim, "a1")
    assert status == 200
    assert (live["call_id"], live["status"], live["ended_at"], live["cause_code"]) == (
        created["call_id"],
        "ringing",
        None,
        None,
    )

    await ended(sim, "a1")
    status, final = await by_attempt(http, sim, "a1")
    assert status == 200
    assert {k: final[k] for k in ("status", "answered_at", "duration_seconds", "billsec", "cause_code")} == {
        "status": "no-answer",
        "answered_at": None,
        "duration_seconds": 300.0,
        "billsec": 0,
        "cause_code": 19,
    }
    assert final["sip_code"] == 480
    assert final["ended_at"] is not None


async def test_forced_outcomes_by_number_and_last_digit(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """Exact-number overrides win over last-digit rules, and each outcome carries its Q.850/SIP codes."""
    sim = await make_sim(
        forced_outcomes={
            "+15550000001": "busy",
            "+15550000002": "failed",
            "+15550000003": "congestion",
            "+15550000004": "answered",
            "+15550000019": "busy",
        },
        force_by_last_digit={"9": "no-answer"},
    )
    expected = {
        "+15550000001": ("busy", False, 17, 486),
        "+15550000002": ("failed", False, 1, 404),
        "+15550000003": ("failed", False, 34, 503),
        "+15550000004": ("completed", True, 16, 200),
        "+15550000009": ("no-answer", False, 19, 480),
        "+15550000019": ("busy", False, 17, 486),
    }
    for number in expected:
        assert (await start(http, sim, body(f"a{number}", number, receiver.url)))[0] == 201
    await receiver.wait_for(lambda: len(receiver.events) == len(expected))
    got = {
        e["attempt_id"][1:]: (e["status"], e["answered"], e["cause_code"], e["sip_code"])
        for e in receiver.events
    }
    assert got == expected


async def test_seed_makes_the_outcome_mix_reproducible(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """Two simulators with one seed give the same outcomes and durations to the same calls."""
    runs = []
    for _ in range(2):
        sim = await make_sim(seed=11, ring_max_seconds=5.0, talk_max_seconds=5.0)
        for i in range(30):
            await start(http, sim, body(f"s{i}", f"+1555000{i:04d}", receiver.url, ring_timeout_seconds=5))
        records = [await ended(sim, f"s{i}") for i in range(30)]
        runs.append([(r["status"], r["cause_code"], r["duration_seconds"]) for r in records])
    assert runs[0] == runs[1]
    assert len({status for status, _, _ in runs[0]}) >= 3


async def test_5xx_before_create_leaves_no_call(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """An injected 503 is answered before any call exists, so the lookup stays 404."""
    sim = await make_sim(error_5xx_probability=1.0)
    status, _ = await start(http, sim, body("a1", "+15551230001", receiver.url))
    assert status == 503
    assert (await by_attempt(http, sim, "a1"))[0] == 404
    stats = sim.stats()
    assert (stats["calls_started"], stats["rejected_by_reason"]) == (0, {"error_5xx": 1})


async def test_5xx_after_create_still_rings(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """An injected 500 after creation is ambiguous: the lookup finds the call and its callback still comes."""
    sim = await make_sim(error_5xx_after_create_probability=1.0, forced_outcomes={"+15551230001": "busy"})
    status, _ = await start(http, sim, body("a1", "+15551230001", receiver.url))
    assert status == 500
    status, record = await by_attempt(http, sim, "a1")
    assert status == 200
    await receiver.wait_for(lambda: len(receiver.of("a1")) == 1)
    assert receiver.of("a1")[0]["call_id"] == record["call_id"]
    stats = sim.stats()
    assert (stats["calls_started"], stats["rejected_by_reason"]) == (1, {"error_5xx_after_create": 1})
    assert sim.log()[0]["response_status"] == 500


async def test_injected_429_is_not_processed(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """An injected 429 carries the provider's not-processed error and creates no call."""
    sim = await make_sim(rate_limit_429_probability=1.0)
    status, payload = await start(http, sim, body("a1", "+15551230001", receiver.url))
    assert status == 429
    assert payload == {"error": {"code": "20429", "message": "Too Many Requests", "processed": False}}
    assert (await by_attempt(http, sim, "a1"))[0] == 404


async def test_max_cps_refuses_starts_beyond_the_one_second_budget(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """With max_cps=2, a third start within any sliding second gets 429; a start frees its slot 1 s later."""
    clock = FakeClock()
    sim = await make_sim(clock=clock, max_cps=2)
    statuses = []
    for i, at in enumerate([0.0, 0.2, 0.5, 0.999, 1.0, 1.1, 1.2, 1.25]):
        clock.now = at
        statuses.append((await start(http, sim, body(f"a{i}", f"+1555123000{i}", receiver.url)))[0])
    assert statuses == [201, 201, 429, 429, 201, 429, 201, 429]
    assert (await by_attempt(http, sim, "a2"))[0] == 404
    stats = sim.stats()
    assert (stats["calls_started"], stats["rejected_by_reason"]) == (4, {"max_cps": 4})
    assert stats["max_starts_per_second"] == 2


async def test_slow_response_times_out_caller_but_call_exists(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A held-back response trips the caller's timeout while the call is already ringing."""
    sim = await make_sim(slow_response_probability=1.0, slow_response_seconds=0.2)
    with pytest.raises(TimeoutError):
        async with http.post(
            f"{sim.base_url}/v1/calls",
            json=body("a1", "+15551230001", receiver.url),
            headers=AUTH,
            timeout=aiohttp.ClientTimeout(total=0.05),
        ):
            pass
    assert (await by_attempt(http, sim, "a1"))[0] == 200


async def test_dropped_final_callback_is_never_sent(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """With drop injected the call still ends (lookup shows it) but no callback is delivered."""
    sim = await make_sim(drop_callback_probability=1.0, forced_outcomes={"+15551230001": "busy"})
    await start(http, sim, body("a1", "+15551230001", receiver.url))
    record = await ended(sim, "a1")
    await sim.drain_callbacks()
    assert record["status"] == "busy"
    assert receiver.posts == []
    stats = sim.stats()
    assert (stats["callbacks_dropped"], stats["callbacks_sent"]) == (1, 0)


async def test_duplicate_final_callback_repeats_the_same_event(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A duplicated final callback is byte-identical, so receivers can dedupe on event_id."""
    sim = await make_sim(duplicate_callback_probability=1.0, forced_outcomes={"+15551230001": "busy"})
    await start(http, sim, body("a1", "+15551230001", receiver.url))
    await receiver.wait_for(lambda: len(receiver.of("a1")) == 2)
    assert receiver.posts[0][0] == receiver.posts[1][0]
    first, second = receiver.of("a1")
    assert first["event_id"] == second["event_id"]
    assert first["status"] == "busy"
    await sim.drain_callbacks()
    stats = sim.stats()
    assert (stats["callbacks_duplicated"], stats["callbacks_sent"]) == (1, 2)


async def test_out_of_order_sends_stale_ringing_after_final(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """An out-of-order fault delivers a lower-sequence ringing event after the final one."""
    sim = await make_sim(out_of_order_probability=1.0, forced_outcomes={"+15551230001": "answered"})
    await start(http, sim, body("a1", "+15551230001", receiver.url))
    await receiver.wait_for(lambda: len(receiver.of("a1")) == 2)
    final, stale = receiver.of("a1")
    assert (final["status"], final["sequence"]) == ("completed", 3)
    assert (stale["status"], stale["sequence"], stale["ended_at"]) == ("ringing", 1, None)
    assert stale["event_id"] != final["event_id"]
    assert sim.stats()["callbacks_out_of_order"] == 1


async def test_intermediate_events_precede_the_final_one(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """With intermediate events on, ringing and in-progress arrive first with lower sequence numbers."""
    sim = await make_sim(intermediate_events=True, forced_outcomes={"+15551230001": "answered"})
    await start(http, sim, body("a1", "+15551230001", receiver.url))
    await receiver.wait_for(lambda: len(receiver.of("a1")) == 3)
    events = receiver.of("a1")
    assert [(e["status"], e["sequence"]) for e in events] == [
        ("ringing", 1),
        ("in-progress", 2),
        ("completed", 3),
    ]
    assert events[1]["answered"] is True
    assert events[1]["ended_at"] is None
    assert len({e["event_id"] for e in events}) == 3


async def test_callback_retries_until_accepted(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """Non-2xx callback answers are retried with backoff until one is accepted."""
    sim = await make_sim(callback_retry_backoff_seconds=0.01, forced_outcomes={"+15551230001": "busy"})
    receiver.statuses = [500, 503]
    await start(http, sim, body("a1", "+15551230001", receiver.url))
    await receiver.wait_for(lambda: len(receiver.of("a1")) == 1)
    await sim.drain_callbacks()
    assert len(receiver.posts) == 3
    stats = sim.stats()
    assert (stats["callbacks_sent"], stats["callback_retries"], stats["callbacks_failed"]) == (1, 2, 0)


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/cb"


@pytest.mark.parametrize("failure", ["http_500", "refused"])
async def test_callback_counted_failed_after_last_try(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver, failure: str
) -> None:
    """After the configured tries a callback is counted failed, and the lookup still has the outcome."""
    sim = await make_sim(callback_retry_backoff_seconds=0.01, forced_outcomes={"+15551230001": "busy"})
    receiver.statuses = [500, 500, 500]
    url = receiver.url if failure == "http_500" else _closed_port_url()
    await start(http, sim, body("a1", "+15551230001", url))
    await ended(sim, "a1")
    await sim.drain_callbacks()
    assert receiver.events == []
    assert len(receiver.posts) == (3 if failure == "http_500" else 0)
    stats = sim.stats()
    assert (stats["callbacks_failed"], stats["callback_retries"], stats["callbacks_sent"]) == (1, 2, 0)
    assert (await by_attempt(http, sim, "a1"))[1]["status"] == "busy"


async def test_live_and_per_second_maxima_per_campaign(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """Stats keep exact live-call and starts-per-second maxima, overall and per campaign."""
    clock = FakeClock()
    # Real-time calls that ring for ten minutes: they stay live until canceled or the simulator stops.
    sim = await make_sim(
        clock=clock, time_scale=1.0, force_by_last_digit={str(d): "no-answer" for d in range(10)}
    )
    starts = [(0.0, "a"), (0.1, "b"), (0.2, "b"), (0.5, "a"), (0.99, "a"), (1.0, "a"), (1.2, "a"), (3.0, "a")]
    for i, (at, campaign) in enumerate(starts):
        clock.now = at
        payload = body(f"a{i}", f"+155512300{i:02d}", receiver.url, ring_timeout_seconds=600)
        payload["metadata"] = {"campaign": campaign}
        assert (await start(http, sim, payload))[0] == 201
    clock.now = 3.5
    no_campaign = body("x", "+15551239999", receiver.url, ring_timeout_seconds=600, metadata=None)
    assert (await start(http, sim, no_campaign))[0] == 201

    for attempt_id in ("a0", "a3"):
        async with http.post(
            f"{sim.base_url}/v1/calls/by-attempt/{attempt_id}/cancel",
            headers=AUTH,
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "canceled"

    async with http.get(f"{sim.base_url}/v1/stats") as resp:
        stats = await resp.json()
    assert stats["max_starts_per_second_by_campaign"] == {"a": 4, "b": 2, "": 1}
    assert stats["max_starts_per_second"] == 5 == max_in_window([at for at, _ in starts] + [3.5])
    assert stats["max_live_calls_by_campaign"] == {"a": 6, "b": 2, "": 1}
    assert stats["live_calls_by_campaign"] == {"a": 4, "b": 2, "": 1}
    assert (stats["max_live_calls"], stats["live_calls"]) == (9, 7)
    assert stats["calls_by_status"] == {"canceled": 2}


async def test_cancel_refuses_unknown_and_ended_calls(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """Cancel is 404 for unknown attempts and 409 once the call is over."""
    sim = await make_sim(forced_outcomes={"+15551230001": "busy"})
    url = f"{sim.base_url}/v1/calls/by-attempt/a1/cancel"
    async with http.post(url, headers=AUTH) as resp:
        assert resp.status == 404
    await start(http, sim, body("a1", "+15551230001", receiver.url))
    await ended(sim, "a1")
    async with http.post(url, headers=AUTH) as resp:
        assert resp.status == 409


async def test_log_lists_every_start_request_and_reset_clears_it(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """The log records every start request in order, including rejected ones, until a reset."""
    sim = await make_sim()
    await start(http, sim, body("a1", "+15551230001", receiver.url))
    await start(http, sim, body("a2", "bad", receiver.url))
    await start(http, sim, body("a1", "+15551230001", receiver.url))
    async with http.get(f"{sim.base_url}/v1/log") as resp:
        log = await resp.json()
    assert [(e["seq"], e["attempt_id"], e["duplicate"], e["response_status"]) for e in log] == [
        (1, "a1", False, 201),
        (2, None, False, 400),
        (3, "a1", True, 200),
    ]
    assert log[0]["to"] == "+15551230001"
    assert log[0]["campaign"] == "camp-a"
    assert {e["dialect"] for e in log} == {"native"}
    assert log[0]["received_at"] <= log[2]["received_at"]
    assert log[0]["received_at_wall"] > 1.6e9
    async with http.get(f"{sim.base_url}/v1/log", params={"after_seq": "2"}) as resp:
        assert [e["seq"] for e in await resp.json()] == [3]

    async with http.post(f"{sim.base_url}/v1/reset") as resp:
        assert resp.status == 200
    assert sim.log() == []
    stats = sim.stats()
    assert (stats["start_requests"], stats["calls_started"], stats["live_calls"]) == (0, 0, 0)
    assert (await by_attempt(http, sim, "a1"))[0] == 404


async def test_log_is_bounded(make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver) -> None:
    """Past log_max_entries the oldest entries go, and the stats say how many."""
    sim = await make_sim(log_max_entries=2)
    for i in range(3):
        await start(http, sim, body(f"a{i}", "+15551230001", receiver.url))
    assert [e["seq"] for e in sim.log()] == [2, 3]
    assert sim.stats()["log_truncated"] == 1


async def test_stop_cancels_live_calls_and_pending_callbacks(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """Stopping with a call ringing and a callback stuck in flight leaves nothing pending."""
    sim = await make_sim(
        time_scale=0.01, forced_outcomes={"+15551230001": "busy", "+15551230002": "no-answer"}
    )
    receiver.gate.clear()
    await start(http, sim, body("a1", "+15551230001", receiver.url))
    await start(http, sim, body("a2", "+15551230002", receiver.url, ring_timeout_seconds=600))
    await receiver.wait_for(lambda: len(receiver.posts) == 1)
    assert sim.stats()["callbacks_pending"] == 1
    await sim.stop()
    stats = sim.stats()
    assert (stats["callbacks_pending"], stats["live_calls"]) == (0, 1)


# ------------------------------------------------------------------------------------------ dialects

FORM_TOKEN = "form-token"
FORM_SECRET = "form-secret"
BOTH: dict[str, Any] = {"dialects": ["native", "form"], "dialect_options": {"form": {"token": FORM_TOKEN}}}


def _field(form: Mapping[str, Any], name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


class FormDialect:
    """The smallest complete dialect: form-encoded starts and callbacks, the attempt id in the callback URL.

    POST /form/Calls takes To, From, Timeout, Callback and Campaign with "Authorization: Token <token>";
    GET /form/Calls/{sid} and POST /form/Calls/{sid}/cancel address a call by the provider's id. Only
    final events are posted, form-encoded and signed over URL + body.
    """

    name = "form"
    # A provider that answers 200 to a new call and 502 to its own failures.
    start_statuses: Mapping[str, int] = {**DEFAULT_START_STATUSES, "created": 200, "error_5xx": 502}

    def __init__(self, options: Mapping[str, Any], config: SimulatorConfig) -> None:
        unknown = sorted(set(options) - {"token", "secret"})
        if unknown or "token" not in options:
            raise ValueError(f"the form dialect needs a token and takes a secret; unknown: {unknown}")
        self.token = str(options["token"])
        self.secret = str(options.get("secret", FORM_SECRET))

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Token {self.token}"

    def routes(self, state: SimulatorState) -> list[web.RouteDef]:
        async def start(request: web.Request) -> web.Response:
            if not self._authorized(request):
                state.refuse("unauthorized", 401, dialect=self)
                return web.Response(status=401, text="bad token")
            form = await request.post()
            to, timeout, callback = (_field(form, k) for k in ("To", "Timeout", "Callback"))
            attempt = parse_qs(urlsplit(callback or "").query).get("attempt", [""])[0]
            if not (
                to
                and E164.match(to)
                and callback
                and callback.startswith(("http://", "https://"))
                and attempt
                and timeout
                and timeout.isdigit()
                and 1 <= int(timeout) <= 600
            ):
                state.refuse("invalid", 400, dialect=self, attempt_id=attempt or None, to=to)
                return web.Response(status=400, text="invalid request")
            spec = StartSpec(
                attempt, to, _field(form, "From"), int(timeout), callback, _field(form, "Campaign")
            )
            admission = state.admit(spec, dialect=self)
            if admission.slow_seconds:
                await asyncio.sleep(admission.slow_seconds)
            call = admission.call
            if call is None or admission.after_create_error:
                return web.Response(status=admission.status, text=admission.reason or "server error")
            return web.json_response({"sid": call.call_id, "status": call.status}, status=admission.status)

        async def lookup(request: web.Request) -> web.Response:
            if not self._authorized(request):
                return web.Response(status=401)
            call = state.find_by_call_id(request.match_info["sid"], dialect=self)
            if call is None:
                return web.Response(status=404)
            return web.json_response({"sid": call.call_id, "status": call.status, "duration": call.billsec()})

        async def cancel(request: web.Request) -> web.Response:
            if not self._authorized(request):
                return web.Response(status=401)
            call = state.find_by_call_id(request.match_info["sid"], dialect=self)
            if call is None:
                return web.Response(status=404)
            return web.Response(status=200 if state.cancel_call(call) else 409)

        return [
            web.post("/form/Calls", start),
            web.get("/form/Calls/{sid}", lookup),
            web.post("/form/Calls/{sid}/cancel", cancel),
        ]

    def render_event(
        self, call: CallView, status: str, sequence: int, final: bool, event_id: str
    ) -> Callback | None:
        if not final:
            return None
        fields = {
            "CallSid": call.call_id,
            "CallStatus": status,
            "Duration": call.billsec(),
            "EventId": event_id,
        }
        body = urlencode(fields).encode()
        url = call.callback_url
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Form-Signature": sign(self.secret, url.encode() + body),
        }
        return url, body, headers


register("form", FormDialect)


async def form_start(
    http: aiohttp.ClientSession,
    sim: Simulator,
    attempt_id: str,
    to: str,
    callback_url: str,
    token: str = FORM_TOKEN,
    **fields: str,
) -> tuple[int, Any]:
    data = {
        "To": to,
        "From": "+15550009999",
        "Timeout": "30",
        "Callback": f"{callback_url}?attempt={attempt_id}",
        "Campaign": "camp-f",
        **fields,
    }
    async with http.post(
        f"{sim.base_url}/form/Calls", data=data, headers={"Authorization": f"Token {token}"}
    ) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


def test_dialect_config_is_checked_at_construction() -> None:
    """Unknown dialects, options for unmounted ones and bad options are errors, never ignored."""
    with pytest.raises(ValueError, match=r"unknown simulator dialect 'twillio'; known: \[.*'native'"):
        SimulatorConfig(dialects=["native", "twillio"])
    with pytest.raises(ValueError, match="not in dialects"):
        SimulatorConfig(dialect_options={"form": {"token": "t"}})
    with pytest.raises(ValueError, match="non-empty list"):
        SimulatorConfig.from_dict({"dialects": "native"})
    with pytest.raises(ValueError, match="twice"):
        SimulatorConfig(dialects=["native", "native"])
    with pytest.raises(ValueError, match="no options"):
        SimulatorState(SimulatorConfig(dialect_options={"native": {"api_key": "k"}}))
    with pytest.raises(ValueError, match="needs a token"):
        SimulatorState(SimulatorConfig(dialects=["form"]))
    config = SimulatorConfig.from_dict(BOTH)
    assert SimulatorConfig.from_dict(config.to_dict()) == config
    assert SimulatorConfig().dialects == ["native"]


def test_dialects_register_by_name() -> None:
    """Native resolves from its own module; a taken name refuses another factory but not the same one."""
    assert simdialects.resolve("native") is NativeDialect
    assert {"native", "form"} <= set(simdialects.known_dialects())
    with pytest.raises(ValueError, match="already registered"):
        register("form", NativeDialect)
    register("form", FormDialect)


async def test_admit_decides_starts_without_http() -> None:
    """The state machine takes a StartSpec straight from a dialect: create, repeat, conflict, cancel, log."""
    config = SimulatorConfig.from_dict({**FAST, "drop_callback_probability": 1.0})
    state = SimulatorState(config, clock=FakeClock())
    native = state.dialects["native"]
    try:
        spec = StartSpec("a1", "+15551230001", None, 600, "http://127.0.0.1:9/cb", campaign="c")
        created = state.admit(spec, dialect=native)
        assert (created.outcome, created.status, created.reason, created.slow_seconds) == (
            "created",
            201,
            None,
            0.0,
        )
        call = created.call
        assert call is not None
        again = state.admit(spec, dialect=native)
        assert (again.outcome, again.status, again.call) == ("duplicate", 200, call)
        other = state.admit(StartSpec("a1", "+15551230002", None, 600, spec.callback_url), dialect=native)
        assert (other.outcome, other.status, other.reason, other.call) == ("rejected", 409, "conflict", None)
        assert state.find("a1", dialect=native) is call
        assert state.find_by_call_id(call.call_id) is call
        assert state.cancel_call(call)
        assert call.status == "canceled"
        assert not state.cancel_call(call)
        assert [(e["duplicate"], e["response_status"], e["dialect"]) for e in state.log()] == [
            (False, 201, "native"),
            (True, 200, "native"),
            (True, 409, "native"),
        ]
    finally:
        await state.close()


async def test_form_dialect_runs_end_to_end_next_to_native(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """Two dialects on one simulator: each answers and calls back in its own format, books are shared."""
    sim = await make_sim(**BOTH, forced_outcomes={"+15551230001": "answered", "+15551230002": "busy"})
    status, native_created = await start(http, sim, body("n1", "+15551230001", receiver.url))
    assert status == 201
    status, created = await form_start(http, sim, "f1", "+15551230002", receiver.url)
    assert status == 200
    sid = created["sid"]
    assert re.fullmatch(r"CA[0-9a-f]{32}", sid)

    await receiver.wait_for(lambda: len(receiver.events) == 1 and len(receiver.forms) == 1)
    assert (receiver.events[0]["call_id"], receiver.events[0]["status"]) == (
        native_created["call_id"],
        "completed",
    )
    form = receiver.forms[0]
    assert (form["attempt"], form["CallSid"], form["CallStatus"], form["Duration"]) == (
        "f1",
        sid,
        "busy",
        "0",
    )
    raw, headers = next(p for p in receiver.posts if "X-Form-Signature" in p[1])
    assert headers["X-Form-Signature"] == sign(FORM_SECRET, f"{receiver.url}?attempt=f1".encode() + raw)

    # Each dialect's API sees its own calls; the in-process view sees them all.
    async with http.get(
        f"{sim.base_url}/form/Calls/{sid}", headers={"Authorization": "Token form-token"}
    ) as r:
        assert (r.status, (await r.json())["status"]) == (200, "busy")
    async with http.get(
        f"{sim.base_url}/form/Calls/{native_created['call_id']}",
        headers={"Authorization": "Token form-token"},
    ) as r:
        assert r.status == 404
    assert (await by_attempt(http, sim, "f1"))[0] == 404
    assert sim.lookup("f1") is not None

    await sim.drain_callbacks()
    stats = sim.stats()
    assert (stats["start_requests"], stats["calls_started"], stats["callbacks_sent"]) == (2, 2, 2)
    assert stats["calls_by_status"] == {"completed": 1, "busy": 1}
    assert stats["max_live_calls_by_campaign"] == {"camp-a": 1, "camp-f": 1}
    assert [(e["dialect"], e["attempt_id"], e["response_status"]) for e in sim.log()] == [
        ("native", "n1", 201),
        ("form", "f1", 200),
    ]


async def test_form_dialect_gets_the_core_idempotency_and_refusals(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A repeated form start is the same call; conflicts span dialects; the dialect's own refusals are logged."""
    sim = await make_sim(**BOTH, forced_outcomes={"+15551230002": "busy"})
    first = await form_start(http, sim, "f1", "+15551230002", receiver.url)
    second = await form_start(http, sim, "f1", "+15551230002", receiver.url)
    assert first[0] == second[0] == 200
    assert first[1]["sid"] == second[1]["sid"]
    assert (await form_start(http, sim, "f1", "+15551230003", receiver.url))[0] == 409
    status, payload = await start(http, sim, body("f1", "+15551230002", receiver.url))
    assert (status, payload["error"]["code"]) == (409, "attempt_conflict")
    assert "another dialect" in payload["error"]["message"]
    assert (await form_start(http, sim, "f2", "+15551230002", receiver.url, token="wrong"))[0] == 401
    assert (await form_start(http, sim, "f3", "5551230002", receiver.url))[0] == 400

    await ended(sim, "f1")
    await sim.drain_callbacks()
    assert [f["attempt"] for f in receiver.forms] == ["f1"]
    stats = sim.stats()
    assert (stats["start_requests"], stats["calls_started"], stats["duplicate_start_requests"]) == (6, 1, 1)
    assert stats["rejected_by_reason"] == {"conflict": 2, "unauthorized": 1, "invalid": 1}
    assert [(e["dialect"], e["attempt_id"], e["duplicate"], e["response_status"]) for e in sim.log()] == [
        ("form", "f1", False, 200),
        ("form", "f1", True, 200),
        ("form", "f1", True, 409),
        ("native", "f1", True, 409),
        ("form", None, False, 401),
        ("form", "f3", False, 400),
    ]


async def test_form_dialect_gets_the_core_faults(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """Delivery faults apply to any dialect's callbacks; events it renders as None are never sent."""
    sim = await make_sim(
        **BOTH,
        duplicate_callback_probability=1.0,
        out_of_order_probability=1.0,
        intermediate_events=True,
        forced_outcomes={"+15551230002": "answered"},
    )
    await form_start(http, sim, "f1", "+15551230002", receiver.url)
    await receiver.wait_for(lambda: len(receiver.forms) == 2)
    await sim.drain_callbacks()
    # Intermediate and stale ringing events render as nothing; the duplicated final is byte-identical.
    assert len(receiver.posts) == 2
    assert receiver.posts[0][0] == receiver.posts[1][0]
    assert [f["CallStatus"] for f in receiver.forms] == ["completed", "completed"]
    stats = sim.stats()
    assert (stats["callbacks_sent"], stats["callbacks_duplicated"], stats["callbacks_out_of_order"]) == (
        2,
        1,
        0,
    )


async def test_injected_failures_and_max_cps_apply_across_dialects(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """max_cps is one budget for all dialects, and injected 5xx answers use the dialect's own status."""
    clock = FakeClock()
    sim = await make_sim(**BOTH, clock=clock, max_cps=1)
    assert (await start(http, sim, body("n1", "+15551230001", receiver.url)))[0] == 201
    clock.now = 0.5
    assert (await form_start(http, sim, "f1", "+15551230002", receiver.url))[0] == 429
    clock.now = 1.0
    assert (await form_start(http, sim, "f2", "+15551230002", receiver.url))[0] == 200
    assert sim.stats()["rejected_by_reason"] == {"max_cps": 1}

    failing = await make_sim(**BOTH, error_5xx_probability=1.0)
    assert (await form_start(http, failing, "f1", "+15551230002", receiver.url))[0] == 502
    assert failing.lookup("f1") is None
    after_create = await make_sim(**BOTH, error_5xx_after_create_probability=1.0)
    assert (await form_start(http, after_create, "f1", "+15551230002", receiver.url))[0] == 500
    assert after_create.lookup("f1") is not None
    assert [e["response_status"] for e in (*failing.log(), *after_create.log())] == [502, 500]


async def test_form_dialect_cancels_by_provider_call_id(
    make_sim: SimFactory, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A dialect cancels through the core: a ringing call ends canceled once, and the final callback says so."""
    sim = await make_sim(**BOTH, forced_outcomes={"+15551230002": "no-answer"})
    _, created = await form_start(http, sim, "f1", "+15551230002", receiver.url, Timeout="600")
    url = f"{sim.base_url}/form/Calls/{created['sid']}/cancel"
    auth = {"Authorization": f"Token {FORM_TOKEN}"}
    async with http.post(url, headers=auth) as resp:
        assert resp.status == 200
    async with http.post(url, headers=auth) as resp:
        assert resp.status == 409
    await receiver.wait_for(lambda: len(receiver.forms) == 1)
    assert receiver.forms[0]["CallStatus"] == "canceled"
    assert sim.stats()["calls_by_status"] == {"canceled": 1}
