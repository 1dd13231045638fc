"""The CALLR adapter and simulator dialect: JSON-RPC contract, webhook signatures, outcome mapping, start
errors, reconciliation through cdr.get, and one pipeline run with real worker processes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web

from dialer.providers import load_accounts
from dialer.providers.base import (
    CallbackError,
    CallbackRequest,
    LookupRequest,
    ProviderUnavailable,
    StartError,
    StartRequest,
)
from dialer.providers.callr import (
    CallrProvider,
    attempt_id_of,
    cdr_field_of,
    event_from_cdr,
    from_account,
    verify_signature,
)
from dialer.settings import Settings, SettingsError
from dialer.simdialects.callr import sign
from dialer.simulator import Simulator, SimulatorConfig
from scheduler.outcomes import Outcome
from tests.factories import add_numbers, make_campaign
from tests.workers import reap, simulator, spawn, wait_ready, wait_until

LOGIN = "acme-login"
PASSWORD = "pw-Sup3rSecret"
HMAC_SECRET = "hmac-Sup3rSecret"
# The REALTIME10 app hash of CALLR's own RT.Request example.
APP = "4346423A"
ATTEMPT = "0f8fad5b-d9cb-469f-a165-70867728950e"
OTHER_ATTEMPT = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
CLAIMED = dt.datetime(2026, 11, 25, 15, 0, 7, tzinfo=dt.UTC)
FAST: dict[str, Any] = {
    "time_scale": 0.01,
    "ring_min_seconds": 1.0,
    "ring_max_seconds": 3.0,
    "talk_mean_seconds": 5.0,
    "talk_max_seconds": 10.0,
    "callback_retry_backoff_seconds": 0.01,
}


def start_request(**overrides: Any) -> StartRequest:
    # Target and options from the seed's own examples (Target, REALTIME10.Call.Options).
    fields: dict[str, Any] = {
        "attempt_id": ATTEMPT,
        "phone": "+16469820800",
        "caller_id": "+16467890800",
        "dtmf": None,
        "ring_timeout_seconds": 30,
        "callback_url": f"http://dialer.example/callbacks/callr?attempt={ATTEMPT}&token=t",
        "campaign": "spring",
    }
    return StartRequest(**{**fields, **overrides})


# ---------------------------------------------------------------------------------------- local servers


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class RpcServer:
    """A stand-in CALLR endpoint that records every request and answers from a script."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    replies: list[tuple[int, Any]] = field(default_factory=list)
    hang: asyncio.Event = field(default_factory=asyncio.Event)

    def reply(self, status: int, body: Any) -> None:
        self.replies.append((status, body))

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path, dict(request.headers), body))
        status, payload = self.replies.pop(0) if self.replies else (200, {"result": 421889})
        if payload == "hang":
            await self.hang.wait()
        if isinstance(payload, bytes | str):
            return web.Response(status=status, body=payload)
        envelope = {"id": orjson.loads(body).get("id"), "jsonrpc": "2.0", **payload}
        return web.Response(status=status, body=orjson.dumps(envelope), content_type="application/json")


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def rpc() -> AsyncIterator[RpcServer]:
    server = RpcServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    async with serve(app) as url:
        server.url = url
        yield server
        server.hang.set()


ProviderFactory = Callable[..., CallrProvider]


@pytest.fixture
async def make_provider() -> AsyncIterator[ProviderFactory]:
    made: list[CallrProvider] = []

    def factory(url: str, *, password: str = PASSWORD, **overrides: Any) -> CallrProvider:
        kwargs: dict[str, Any] = {"app": APP, "timeout_seconds": 2.0, **overrides}
        provider = CallrProvider(url, LOGIN, password, HMAC_SECRET, **kwargs)
        made.append(provider)
        return provider

    yield factory
    for provider in made:
        await provider.close()


@dataclass
class Hooks:
    """Receives CALLR webhooks as the worker's HTTP layer would hand them to the adapter."""

    url: str = ""
    got: list[CallbackRequest] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append(CallbackRequest(str(request.url), dict(request.headers), body, {}, None))
        self.arrived.set()
        return web.json_response({"ok": True})

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not predicate():
                self.arrived.clear()
                await self.arrived.wait()

    def of_type(self, kind: str) -> list[CallbackRequest]:
        return [h for h in self.got if orjson.loads(h.body)["type"] == kind]


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    receiver = Hooks()
    app = web.Application()
    app.router.add_post("/callbacks/callr", receiver.handle)
    async with serve(app) as url:
        receiver.url = f"{url}/callbacks/callr"
        yield receiver


SimFactory = Callable[..., Awaitable[Simulator]]


@pytest.fixture
async def make_sim(hooks: Hooks) -> AsyncIterator[SimFactory]:
    # Depends on the webhook receiver so it stops first and never posts into a closed receiver.
    started: list[Simulator] = []

    async def factory(**overrides: Any) -> Simulator:
        options = {"login": LOGIN, "password": PASSWORD, "app": APP}
        config = SimulatorConfig(
            dialects=["native", "callr"], dialect_options={"callr": options}, **{**FAST, **overrides}
        )
        sim = Simulator(config)
        await sim.start()
        started.append(sim)
        return sim

    yield factory
    for sim in started:
        await sim.stop()


async def rpc_call(base_url: str, method: str, params: list[Any], password: str = PASSWORD) -> Any:
    auth = "Basic " + base64.b64encode(f"{LOGIN}:{password}".encode()).decode()
    body = {"id": 7, "jsonrpc": "2.0", "method": method, "params": params}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base_url}/json-rpc/v1.1/", json=body, headers={"Authorization": auth}) as resp,
    ):
        return await resp.json()


async def subscribe(base_url: str, url: str, secret: str = HMAC_SECRET, algo: str = "SHA256") -> None:
    for kind in ("call.outbound_start", "call.outbound_hangup"):
        answer = await rpc_call(
            base_url, "webhooks.subscribe", [kind, url, {"hmac_secret": secret, "hmac_algo": algo}]
        )
        assert answer["result"]["status"] == "ENABLED"


# ---------------------------------------------------------------------------------------- webhooks


def cdr(**overrides: Any) -> dict[str, Any]:
    """A CDR.Out with the seed's field set, for an answered call of the seed example numbers."""
    return {
        "answer": "2026-11-25 15:00:12",
        "billing_customer_cost_label": "United States - Mobile",
        "billing_customer_credit_eur": "0.00",
        "billing_customer_debit_eur": "1.20",
        "callid": 421889,
        "callid_in": 0,
        "cli_name": "",
        "cli_number": "+16467890800",
        "cli_pres": "allowed_passed_screen",
        "customer_field": cdr_field_of(ATTEMPT),
        "dialstatus": "ANSWER",
        "duration": 75,
        "duration_answered": 60,
        "duration_billed": 60,
        "hangup": "2026-11-25 15:01:12",
        "hangupcause": 16,
        "hangupsource": "CALLEE",
        "number": "+16469820800",
        "number_country_code": "US",
        "number_type": "MOBILE",
        "package_name": "REALTIME10",
        "scenario_hash": APP,
        "scenario_name": "dialer",
        "start": "2026-11-25 15:00:07",
        **overrides,
    }


def webhook(
    kind: str = "call.outbound_hangup", event_id: str = "9422146236497234056PGNSmlw2sOrjq", **data: Any
) -> bytes:
    return orjson.dumps(
        {
            "data": cdr(**data),
            "event_at": "2026-11-25T15:01:12.340Z",
            "event_id": event_id,
            "hook_hash": "H0000001",
            "try": 0,
            "type": kind,
        }
    )


def received(body: bytes, signature: str | None = None, token: str | None = None) -> CallbackRequest:
    headers = {"Content-Type": "application/json", "X-CALLR-EventId": "9422146236497234056PGNSmlw2sOrjq"}
    headers["X-CALLR-HmacSignature"] = sign(HMAC_SECRET, body) if signature is None else signature
    return CallbackRequest("https://dialer.example/callbacks/callr", headers, body, {}, token)


def test_signature_matches_a_published_vector() -> None:
    """base64 HMAC-SHA256 of the payload under hmac_secret, as a public CALLR integration's test pins it."""
    body = b'{"data":{"from":"sender","to":"receiver","text":"a message"}}'
    assert verify_signature(b"password", body, "sHMMGdzGhfW2urhzjUwY578gZct/lVFlAP3qrHTaUig=")
    assert not verify_signature(b"passw0rd", body, "sHMMGdzGhfW2urhzjUwY578gZct/lVFlAP3qrHTaUig=")


def test_signed_hangup_webhook_becomes_an_ended_event(make_provider: ProviderFactory) -> None:
    """A signed call.outbound_hangup maps its CDR.Out: outcome, times, durations, call id, event id."""
    event = make_provider("http://127.0.0.1:9").parse_callback(received(webhook()))
    assert event.attempt_id == ATTEMPT
    assert (event.kind, event.outcome, event.call_id) == ("ended", Outcome.ANSWERED_HUMAN, "421889")
    assert event.answered_at == dt.datetime(2026, 11, 25, 15, 0, 12, tzinfo=dt.UTC)
    assert event.ended_at == dt.datetime(2026, 11, 25, 15, 1, 12, tzinfo=dt.UTC)
    assert (event.duration_seconds, event.billsec) == (75.0, 60)
    assert (event.raw_status, event.raw_cause) == ("ANSWER", "16;event_id=9422146236497234056PGNSmlw2sOrjq")


def test_start_webhook_is_ringing(make_provider: ProviderFactory) -> None:
    """call.outbound_start is the call starting: a ringing event, with no outcome yet."""
    body = webhook("call.outbound_start", dialstatus="", answer=None, hangup=None, duration_answered=0)
    event = make_provider("http://127.0.0.1:9").parse_callback(received(body))
    assert (event.kind, event.outcome, event.call_id) == ("ringing", None, "421889")


@pytest.mark.parametrize(
    ("signature", "body", "hmac_algo"),
    [
        pytest.param("", webhook(), "SHA256", id="missing"),
        pytest.param(sign("not-the-secret", webhook()), webhook(), "SHA256", id="forged"),
        pytest.param(sign(HMAC_SECRET, webhook()), webhook(dialstatus="BUSY"), "SHA256", id="tampered-body"),
        pytest.param(sign(HMAC_SECRET, webhook(), "SHA1"), webhook(), "SHA256", id="other-algorithm"),
        pytest.param(sign(HMAC_SECRET, webhook()), webhook(), "SHA512", id="sha256-when-sha512-set"),
    ],
)
def test_bad_signatures_are_refused(
    make_provider: ProviderFactory, signature: str, body: bytes, hmac_algo: str
) -> None:
    """A missing, forged, stale (body changed) or wrong-algorithm signature is bad_signature."""
    provider = make_provider("http://127.0.0.1:9", hmac_algo=hmac_algo)
    with pytest.raises(CallbackError) as caught:
        provider.parse_callback(received(body, signature))
    assert caught.value.reason == "bad_signature"


def test_sha512_subscription_and_compact_signing_verify(make_provider: ProviderFactory) -> None:
    """hmac_algo SHA512 verifies; a pretty-printed body signed in its compact form verifies too."""
    provider = make_provider("http://127.0.0.1:9", hmac_algo="SHA512")
    assert (
        provider.parse_callback(received(webhook(), sign(HMAC_SECRET, webhook(), "SHA512"))).kind == "ended"
    )
    pretty = orjson.dumps(orjson.loads(webhook()), option=orjson.OPT_INDENT_2)
    compact_signed = received(pretty, sign(HMAC_SECRET, webhook(), "SHA512"))
    assert provider.parse_callback(compact_signed).outcome is Outcome.ANSWERED_HUMAN


@pytest.mark.parametrize(
    ("customer_field", "token", "expected"),
    [
        pytest.param(cdr_field_of(ATTEMPT), None, ATTEMPT, id="cdr-field"),
        pytest.param(cdr_field_of(ATTEMPT).upper(), ATTEMPT, ATTEMPT, id="both-agree"),
        pytest.param("", ATTEMPT, ATTEMPT, id="token-only"),
        pytest.param(None, ATTEMPT, ATTEMPT, id="no-field-token"),
        pytest.param(cdr_field_of(ATTEMPT), OTHER_ATTEMPT, "bad_signature", id="disagree"),
        pytest.param("", None, "malformed", id="neither"),
        pytest.param("000CUSTOMFIELD42", None, "malformed", id="not-ours"),
    ],
)
def test_attempt_id_comes_from_cdr_field_or_token(
    make_provider: ProviderFactory, customer_field: str | None, token: str | None, expected: str
) -> None:
    """customer_field (uuid.hex) names the attempt, else the URL token; both present must agree."""
    request = received(webhook(customer_field=customer_field), token=token)
    provider = make_provider("http://127.0.0.1:9")
    if expected in ("bad_signature", "malformed"):
        with pytest.raises(CallbackError) as caught:
            provider.parse_callback(request)
        assert caught.value.reason == expected
    else:
        assert provider.parse_callback(request).attempt_id == expected


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(webhook("sms.mo"), id="not-a-call-event"),
        pytest.param(webhook(dialstatus=""), id="hangup-without-dialstatus"),
        pytest.param(webhook(hangupcause="busy"), id="non-numeric-cause"),
        pytest.param(webhook(duration=-3), id="negative-duration"),
        pytest.param(orjson.dumps({"type": "call.outbound_hangup", "data": []}), id="data-not-object"),
    ],
)
def test_malformed_webhooks_are_refused(make_provider: ProviderFactory, body: bytes) -> None:
    """Anything but a well-formed outbound call event with a CDR.Out is malformed (after the signature)."""
    with pytest.raises(CallbackError) as caught:
        make_provider("http://127.0.0.1:9").parse_callback(received(body))
    assert caught.value.reason == "malformed"


def test_attempt_id_round_trips_through_cdr_field() -> None:
    """The 36-character attempt id fits cdr_field's 32 alphanumerics as uuid.hex and maps back."""
    assert len(cdr_field_of(ATTEMPT)) == 32 and cdr_field_of(ATTEMPT).isalnum()
    assert attempt_id_of(cdr_field_of(ATTEMPT)) == ATTEMPT
    with pytest.raises(ValueError, match="32 hex"):
        attempt_id_of("{" + cdr_field_of(ATTEMPT)[:30] + "}")


# ---------------------------------------------------------------------------------------- outcome mapping


@pytest.mark.parametrize(
    ("dialstatus", "cause", "talk", "expected"),
    [
        ("ANSWER", 16, 42, Outcome.ANSWERED_HUMAN),
        ("ANSWER", 38, 3, Outcome.ANSWERED_HUMAN),  # a network drop mid-call is still a conversation
        ("CANCEL", 16, 9, Outcome.ANSWERED_HUMAN),  # talk time is the answer signal
        ("BUSY", 17, 0, Outcome.BUSY),
        ("BUSY", 21, 0, Outcome.REJECTED),
        ("NOANSWER", 19, 0, Outcome.NO_ANSWER),
        ("NOANSWER", 21, 0, Outcome.REJECTED),
        ("CANCEL", 16, 0, Outcome.CANCELED),
        ("CANCEL", 487, 0, Outcome.CANCELED),
        ("CONGESTION", 1, 0, Outcome.INVALID_NUMBER),
        ("CONGESTION", 3, 0, Outcome.INVALID_NUMBER),
        ("CONGESTION", 28, 0, Outcome.INVALID_NUMBER),
        ("CONGESTION", 34, 0, Outcome.CONGESTION),
        ("CONGESTION", 38, 0, Outcome.CONGESTION),
        ("CONGESTION", 16, 0, Outcome.CONGESTION),
        ("CONGESTION", 0, 0, Outcome.CONGESTION),
        ("CHANUNAVAIL", 1, 0, Outcome.INVALID_NUMBER),
        ("CHANUNAVAIL", 41, 0, Outcome.CONGESTION),
        ("CHANUNAVAIL", 42, 0, Outcome.CONGESTION),
        ("CHANUNAVAIL", 44, 0, Outcome.CONGESTION),
        ("CHANUNAVAIL", 20, 0, Outcome.NO_ANSWER),
        ("CHANUNAVAIL", 52, 0, Outcome.BLOCKED),
        ("NODIAL", 0, 0, Outcome.BLOCKED),
        ("NODIAL", 1, 0, Outcome.INVALID_NUMBER),
        ("NODIAL", 50, 0, Outcome.ACCOUNT_ERROR),
        ("DONTCALL", 0, 0, Outcome.BLOCKED),
        ("SOMETHING_NEW", 17, 0, Outcome.BUSY),
        ("SOMETHING_NEW", 0, 0, Outcome.UNKNOWN),
    ],
)
def test_dialstatus_and_cause_map_to_outcomes(
    dialstatus: str, cause: int, talk: int, expected: Outcome
) -> None:
    """providers.md §6: dialstatus, refined by the Q.850 hangupcause, answered only on an answer signal."""
    record = cdr(dialstatus=dialstatus, hangupcause=cause, duration_answered=talk, duration_billed=talk)
    event = event_from_cdr(record, attempt_id=ATTEMPT, final=True)
    assert (event.kind, event.outcome, event.raw_status) == ("ended", expected, dialstatus)
    assert (event.answered_at is not None) == (expected is Outcome.ANSWERED_HUMAN)


def test_answer_column_alone_is_not_an_answer() -> None:
    """The seed's example CDR.Out is NOANSWER with an `answer` datetime: that is not answered."""
    event = event_from_cdr(
        cdr(dialstatus="NOANSWER", hangupcause=0, duration_answered=0), attempt_id=ATTEMPT, final=True
    )
    assert (event.outcome, event.answered_at, event.billsec) == (Outcome.NO_ANSWER, None, 0)


# ---------------------------------------------------------------------------------------- start contract


async def test_realtime_start_sends_the_documented_request(
    rpc: RpcServer, make_provider: ProviderFactory
) -> None:
    """calls.realtime: POST /json-rpc/v1.1/, json-rpc content type, Basic auth, [app, Target, options]."""
    accepted = await make_provider(rpc.url).start_call(start_request())
    assert accepted.call_id == "421889"
    (seen,) = rpc.seen
    assert (seen.method, seen.path) == ("POST", "/json-rpc/v1.1/")
    assert seen.headers["Content-Type"] == "application/json-rpc; charset=utf-8"
    assert (
        seen.headers["Authorization"] == "Basic " + base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode()
    )
    body = seen.json()
    assert list(body) == ["id", "jsonrpc", "method", "params"] and isinstance(body["id"], int)
    assert (body["jsonrpc"], body["method"]) == ("2.0", "calls.realtime")
    assert body["params"] == [
        APP,
        {"number": "+16469820800", "timeout": 30},
        {"cdr_field": "0f8fad5bd9cb469fa16570867728950e", "cli": "+16467890800"},
    ]


async def test_broadcast_start_sends_target_messages_and_options(
    rpc: RpcServer, make_provider: ProviderFactory
) -> None:
    """calls.broadcast_1: [Target, messages, options]; the request id it answers is the call id we keep."""
    messages = [131, 132, "TTS|TTS_EN-GB_SERENA|Hello world!"]
    provider = make_provider(
        rpc.url + "/json-rpc/v1.1/",
        method="calls.broadcast_1",
        app=None,
        messages=messages,
        loop=2,
        default_cli="BLOCKED",
    )
    rpc.reply(200, {"result": "4260XMAQ"})
    accepted = await provider.start_call(start_request(caller_id=None))
    assert accepted.call_id == "4260XMAQ"
    body = rpc.seen[0].json()
    assert (rpc.seen[0].path, body["method"]) == ("/json-rpc/v1.1/", "calls.broadcast_1")
    assert body["params"] == [
        {"number": "+16469820800", "timeout": 30},
        messages,
        {"cdr_field": cdr_field_of(ATTEMPT), "cli": "BLOCKED", "loop": 2},
    ]


@pytest.mark.parametrize(("ring", "timeout"), [(1, 5), (5, 5), (30, 30), (300, 300), (900, 300)])
def test_ring_timeout_is_kept_within_target_limits(
    make_provider: ProviderFactory, ring: int, timeout: int
) -> None:
    """Target.timeout must be 5..300 s: the ring timeout is clamped into that range."""
    params = make_provider("http://127.0.0.1:9").start_params(start_request(ring_timeout_seconds=ring))
    assert params[1]["timeout"] == timeout


def test_no_caller_id_sends_no_cli(make_provider: ProviderFactory) -> None:
    """Without a campaign caller id or an account default, options carry no cli (CALLR's default)."""
    params = make_provider("http://127.0.0.1:9").start_params(start_request(caller_id=None))
    assert params[2] == {"cdr_field": cdr_field_of(ATTEMPT)}


# ---------------------------------------------------------------------------------------- start errors


def rpc_error(code: int, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


@pytest.mark.parametrize(
    ("status", "payload", "kind", "outcome"),
    [
        pytest.param(401, "Unauthorized", "rejected", Outcome.ACCOUNT_ERROR, id="401"),
        pytest.param(403, "Forbidden", "rejected", Outcome.ACCOUNT_ERROR, id="403"),
        pytest.param(
            200,
            rpc_error(-32602, "INVALID_PHONE_NUMBER"),
            "rejected",
            Outcome.INVALID_NUMBER,
            id="invalid-number",
        ),
        pytest.param(200, rpc_error(-32602, "INVALID_CLI"), "rejected", Outcome.ACCOUNT_ERROR, id="cli"),
        pytest.param(200, rpc_error(-32602, "APP_NOT_FOUND"), "rejected", Outcome.ACCOUNT_ERROR, id="app"),
        pytest.param(200, rpc_error(22, "NOT_ENOUGH_CREDIT"), "rejected", Outcome.ACCOUNT_ERROR, id="credit"),
        pytest.param(
            200, rpc_error(-32601, "Method not found"), "rejected", Outcome.ACCOUNT_ERROR, id="method"
        ),
        pytest.param(
            200, rpc_error(31, "DESTINATION_BLACKLISTED"), "rejected", Outcome.INVALID_NUMBER, id="dest"
        ),
        pytest.param(200, rpc_error(32, "BLACKLISTED"), "rejected", Outcome.BLOCKED, id="blacklisted"),
        pytest.param(
            200, rpc_error(-32029, "RATE_LIMIT_EXCEEDED"), "rate_limited", None, id="rpc-rate-limit"
        ),
        pytest.param(429, rpc_error(-32029, "Too many requests"), "rate_limited", None, id="429-rpc"),
        pytest.param(429, "Too Many Requests", "ambiguous", None, id="429-bare"),
        pytest.param(500, "Internal Server Error", "ambiguous", None, id="500"),
        pytest.param(502, "Bad Gateway", "ambiguous", None, id="502"),
        pytest.param(503, rpc_error(-32029, "RATE_LIMIT"), "ambiguous", None, id="503"),
        pytest.param(200, rpc_error(-32603, "Internal error"), "ambiguous", None, id="rpc-internal"),
        pytest.param(200, rpc_error(77, "SOMETHING_ODD"), "rejected", Outcome.PROVIDER_ERROR, id="unknown"),
        pytest.param(400, "Bad Request", "rejected", Outcome.PROVIDER_ERROR, id="400"),
        pytest.param(200, "<html>", "ambiguous", None, id="unreadable"),
        pytest.param(200, {"result": True}, "ambiguous", None, id="bad-result"),
    ],
)
async def test_start_failures_are_classified(
    rpc: RpcServer,
    make_provider: ProviderFactory,
    status: int,
    payload: Any,
    kind: str,
    outcome: Outcome | None,
) -> None:
    """HTTP status and JSON-RPC errors become not_sent/rate_limited/rejected(outcome)/ambiguous."""
    rpc.reply(status, payload)
    with pytest.raises(StartError) as caught:
        await make_provider(rpc.url).start_call(start_request())
    assert (caught.value.kind, caught.value.outcome) == (kind, outcome)
    for secret in (PASSWORD, HMAC_SECRET, base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode()):
        assert secret not in str(caught.value)


async def test_error_outcomes_override_classifies_a_code(
    rpc: RpcServer, make_provider: ProviderFactory
) -> None:
    """An operator's error_outcomes entry for a code wins over the message words."""
    rpc.reply(200, rpc_error(1007, "ERROR"))
    with pytest.raises(StartError) as caught:
        await make_provider(rpc.url, error_outcomes={"1007": "invalid_number"}).start_call(start_request())
    assert (caught.value.kind, caught.value.outcome, caught.value.raw_status) == (
        "rejected",
        Outcome.INVALID_NUMBER,
        "rpc:1007",
    )


async def test_timeout_after_sending_is_ambiguous(rpc: RpcServer, make_provider: ProviderFactory) -> None:
    """No answer within the timeout: the call may exist, so ambiguous (reconcile, never redial)."""
    rpc.reply(200, "hang")
    with pytest.raises(StartError) as caught:
        await make_provider(rpc.url, timeout_seconds=0.2).start_call(start_request())
    assert caught.value.kind == "ambiguous"
    assert len(rpc.seen) == 1


async def test_connection_refused_is_not_sent(make_provider: ProviderFactory) -> None:
    """A closed port: nothing reached CALLR, so not_sent."""
    with contextlib.closing(__import__("socket").socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StartError) as caught:
        await make_provider(f"http://127.0.0.1:{port}").start_call(start_request())
    assert caught.value.kind == "not_sent"


async def test_non_e164_number_is_refused_without_a_request(
    rpc: RpcServer, make_provider: ProviderFactory
) -> None:
    """CALLR takes E.164 only: anything else is INVALID_NUMBER, and CALLR is not asked."""
    with pytest.raises(StartError) as caught:
        await make_provider(rpc.url).start_call(start_request(phone="06 12 34 56 78"))
    assert (caught.value.kind, caught.value.outcome) == ("rejected", Outcome.INVALID_NUMBER)
    assert rpc.seen == []


def test_repr_shows_no_secret(make_provider: ProviderFactory) -> None:
    """Neither the password, the Basic credentials nor the HMAC secret appear in the adapter's repr."""
    text = repr(make_provider("http://127.0.0.1:9"))
    assert PASSWORD not in text and HMAC_SECRET not in text and "Basic" not in text


# ---------------------------------------------------------------------------------------- lookup


def lookup_request(**overrides: Any) -> LookupRequest:
    fields: dict[str, Any] = {
        "attempt_id": ATTEMPT,
        "call_id": None,
        "phone": "+16469820800",
        "claimed_at": CLAIMED,
    }
    return LookupRequest(**{**fields, **overrides})


async def test_lookup_asks_cdr_get_and_maps_our_cdr(rpc: RpcServer, make_provider: ProviderFactory) -> None:
    """cdr.get('OUT', from, to, app, number); the CDR whose customer_field is ours is the outcome."""
    someone_else = cdr(customer_field=cdr_field_of(OTHER_ATTEMPT), dialstatus="ANSWER")
    ours = cdr(dialstatus="BUSY", hangupcause=17, duration_answered=0, duration_billed=0, callid=555)
    rpc.reply(200, {"result": [someone_else, ours]})
    event = await make_provider(rpc.url).lookup(lookup_request())
    assert event is not None
    assert (event.kind, event.outcome, event.call_id, event.raw_cause) == ("ended", Outcome.BUSY, "555", "17")
    body = rpc.seen[0].json()
    assert (rpc.seen[0].path, body["method"]) == ("/json-rpc/v1.1/", "cdr.get")
    assert body["params"] == ["OUT", "2026-11-25 14:50:07", "2026-11-26 15:00:07", APP, "+16469820800"]


@pytest.mark.parametrize(
    ("status", "payload"),
    [
        pytest.param(200, {"result": []}, id="no-cdr-yet"),
        pytest.param(200, {"result": [cdr(customer_field=cdr_field_of(OTHER_ATTEMPT))]}, id="only-others"),
        pytest.param(200, rpc_error(-32603, "Internal error"), id="rpc-error"),
        pytest.param(503, "Service Unavailable", id="503"),
        pytest.param(401, "Unauthorized", id="401"),
        pytest.param(200, "<html>", id="unreadable"),
        pytest.param(200, {"result": {"hits": []}}, id="not-a-list"),
    ],
)
async def test_lookup_never_claims_the_call_was_never_received(
    rpc: RpcServer, make_provider: ProviderFactory, status: int, payload: Any
) -> None:
    """No CDR or no answer is ProviderUnavailable, never None: CALLR cannot prove absence."""
    rpc.reply(status, payload)
    with pytest.raises(ProviderUnavailable):
        await make_provider(rpc.url).lookup(lookup_request(call_id="421889"))


async def test_lookup_of_a_call_in_progress_is_not_final(
    rpc: RpcServer, make_provider: ProviderFactory
) -> None:
    """A CDR without a dialstatus yet is a live call: ringing, so the sweeper asks again."""
    rpc.reply(200, {"result": [cdr(dialstatus="", answer=None, hangup=None, duration_answered=0)]})
    event = await make_provider(rpc.url).lookup(lookup_request())
    assert event is not None and (event.kind, event.outcome) == ("ringing", None)


async def test_hangup_sends_calls_hangup_with_the_callid(
    rpc: RpcServer, make_provider: ProviderFactory
) -> None:
    """calls.hangup [int callid, {}]; a broadcast request id (not a callid) sends nothing."""
    provider = make_provider(rpc.url)
    rpc.reply(200, {"result": True})
    await provider.hangup(ATTEMPT, "421889")
    await provider.hangup(ATTEMPT, "4260XMAQ")
    await provider.hangup(ATTEMPT, None)
    assert [s.json()["params"] for s in rpc.seen] == [[421889, {}]]


# ---------------------------------------------------------------------------------------- configuration


def test_account_json_builds_the_adapter_with_env_secrets() -> None:
    """DIALER_PROVIDERS with login, app and *_env secrets builds a CallrProvider; bad options are refused."""
    env = {"CALLR_PASSWORD": PASSWORD, "CALLR_HMAC_SECRET": HMAC_SECRET}
    good = {
        "name": "callr",
        "kind": "callr",
        "base_url": "https://api.callr.com/json-rpc/v1.1/",
        "login": LOGIN,
        "password_env": "CALLR_PASSWORD",
        "hmac_secret_env": "CALLR_HMAC_SECRET",
        "app": APP,
        "cli": "BLOCKED",
        "max_calls_per_second": 5,
    }
    settings = Settings(providers=orjson.dumps([good]).decode())
    (account,) = load_accounts(settings, env)
    provider = from_account(account, settings)
    assert isinstance(provider, CallrProvider) and provider.name == "callr"
    assert provider.start_params(start_request(caller_id=None))[2]["cli"] == "BLOCKED"
    for bad, message in (
        ({"app": None}, "needs the hash of a REALTIME10"),
        ({"method": "calls.dial"}, "is not one of"),
        ({"method": "calls.broadcast_1"}, "needs a list of media ids"),
        ({"hmac_algo": "SHA3"}, "hmac_algo"),
        ({"cli": "0612345678"}, "cli"),
        ({"colour": "blue"}, "unknown options"),
        ({"error_outcomes": {"7": "maybe"}}, "error_outcomes"),
    ):
        raw = {k: v for k, v in {**good, **bad}.items() if v is not None}
        settings = Settings(providers=orjson.dumps([raw]).decode())
        with pytest.raises(SettingsError, match=message):
            from_account(load_accounts(settings, env)[0], settings)


# ---------------------------------------------------------------------------------------- simulator dialect


async def test_simulator_round_trip_start_webhooks_lookup(
    make_sim: SimFactory, make_provider: ProviderFactory, hooks: Hooks
) -> None:
    """Against the dialect: start, signed start+hangup webhooks, cdr.get lookup, and a counted duplicate."""
    sim = await make_sim(intermediate_events=True, forced_outcomes={"+16469820800": "busy"})
    await subscribe(sim.base_url, hooks.url)
    provider = make_provider(sim.base_url)
    accepted = await provider.start_call(start_request())
    assert accepted.call_id.isdigit()
    await sim.wait_ended(ATTEMPT)
    await hooks.wait_for(lambda: bool(hooks.of_type("call.outbound_hangup")))
    (ringing,) = [provider.parse_callback(h) for h in hooks.of_type("call.outbound_start")]
    (ended,) = [provider.parse_callback(h) for h in hooks.of_type("call.outbound_hangup")]
    assert (ringing.kind, ringing.attempt_id, ringing.call_id) == ("ringing", ATTEMPT, accepted.call_id)
    assert (ended.kind, ended.outcome, ended.call_id, ended.raw_status) == (
        "ended",
        Outcome.BUSY,
        accepted.call_id,
        "BUSY",
    )
    looked = await provider.lookup(
        lookup_request(claimed_at=dt.datetime.now(dt.UTC), call_id=accepted.call_id)
    )
    assert looked is not None and (looked.outcome, looked.call_id) == (Outcome.BUSY, accepted.call_id)
    # CALLR would dial again; the simulator answers with the first call and counts the duplicate.
    assert (await provider.start_call(start_request())).call_id == accepted.call_id
    assert sim.stats()["duplicate_start_requests"] == 1
    assert sim.state.find(ATTEMPT) is not None


async def test_simulator_outcomes_reach_the_adapter_as_callr_reports_them(
    make_sim: SimFactory, make_provider: ProviderFactory, hooks: Hooks
) -> None:
    """Answered, no-answer, unallocated (CHANUNAVAIL 1) and congestion (CONGESTION 34) CDRs map back."""
    forced = {
        "+33612345670": "answered",
        "+33612345671": "no-answer",
        "+33612345672": "failed",
        "+33612345673": "congestion",
    }
    expected = {
        "+33612345670": (Outcome.ANSWERED_HUMAN, "ANSWER", "16"),
        "+33612345671": (Outcome.NO_ANSWER, "NOANSWER", "19"),
        "+33612345672": (Outcome.INVALID_NUMBER, "CHANUNAVAIL", "1"),
        "+33612345673": (Outcome.CONGESTION, "CONGESTION", "34"),
    }
    sim = await make_sim(forced_outcomes=forced)
    await subscribe(sim.base_url, hooks.url, algo="SHA512")
    provider = make_provider(sim.base_url, hmac_algo="SHA512")
    ids = {number: str(uuid.uuid4()) for number in forced}
    for number, attempt in ids.items():
        await provider.start_call(start_request(attempt_id=attempt, phone=number, ring_timeout_seconds=5))
    await hooks.wait_for(lambda: len(hooks.of_type("call.outbound_hangup")) == len(forced))
    events = {e.attempt_id: e for e in (provider.parse_callback(h) for h in hooks.got)}
    for number, attempt in ids.items():
        event = events[attempt]
        outcome, status, cause = expected[number]
        assert (event.outcome, event.raw_status, (event.raw_cause or "").split(";")[0]) == (
            outcome,
            status,
            cause,
        )
    answered = events[ids["+33612345670"]]
    assert answered.answered_at is not None and answered.billsec >= 1


async def test_simulator_hangup_cancels_a_ringing_call(
    make_sim: SimFactory, make_provider: ProviderFactory, hooks: Hooks
) -> None:
    """calls.hangup with the callid ends a ringing call; its hangup webhook reports CANCEL."""
    sim = await make_sim(time_scale=1.0, forced_outcomes={"+16469820800": "no-answer"})
    await subscribe(sim.base_url, hooks.url)
    provider = make_provider(sim.base_url)
    accepted = await provider.start_call(start_request(ring_timeout_seconds=300))
    await provider.hangup(ATTEMPT, accepted.call_id)
    assert (await sim.wait_ended(ATTEMPT))["status"] == "canceled"
    await hooks.wait_for(lambda: bool(hooks.got))
    event = provider.parse_callback(hooks.got[0])
    assert (event.outcome, event.raw_status) == (Outcome.CANCELED, "CANCEL")


async def test_simulator_refusals_match_the_adapter(
    make_sim: SimFactory, make_provider: ProviderFactory
) -> None:
    """Wrong password is ACCOUNT_ERROR, an injected rate limit is rate_limited, and neither makes a call."""
    sim = await make_sim(rate_limit_429_probability=1.0)
    with pytest.raises(StartError) as caught:
        await make_provider(sim.base_url, password="wrong").start_call(start_request())
    assert (caught.value.kind, caught.value.outcome) == ("rejected", Outcome.ACCOUNT_ERROR)
    with pytest.raises(StartError) as caught:
        await make_provider(sim.base_url).start_call(start_request())
    assert caught.value.kind == "rate_limited"
    assert sim.state.find(ATTEMPT) is None
    assert sim.stats()["rejected_by_reason"] == {"unauthorized": 1, "rate_limited": 1}


async def test_simulator_broadcast_answers_a_request_id(
    make_sim: SimFactory, make_provider: ProviderFactory
) -> None:
    """calls.broadcast_1 through the dialect: a request id now, the numeric callid later in the CDR."""
    sim = await make_sim(forced_outcomes={"+16469820800": "answered"})
    provider = make_provider(sim.base_url, method="calls.broadcast_1", app=None, messages=[131])
    accepted = await provider.start_call(start_request())
    assert not accepted.call_id.isdigit()
    await sim.wait_ended(ATTEMPT)
    looked = await provider.lookup(lookup_request(claimed_at=dt.datetime.now(dt.UTC)))
    assert (
        looked is not None and looked.outcome is Outcome.ANSWERED_HUMAN and (looked.call_id or "").isdigit()
    )


# ---------------------------------------------------------------------------------------- pipeline


@pytest.mark.slow
async def test_workers_dial_through_callr_and_finish_every_number(dsn: str, conn: asyncpg.Connection) -> None:
    """3 workers → CALLR adapter → simulator (callr dialect) → signed webhooks → outcomes → retries."""
    # Last digit of the number → outcome: answered, busy, no answer, unallocated, congestion.
    by_digit = {"0": "answered", "1": "busy", "2": "no-answer", "3": "failed", "4": "congestion"}
    options = {"login": LOGIN, "password": PASSWORD, "app": APP}
    async with simulator(
        dialects=["native", "callr"],
        dialect_options={"callr": options},
        force_by_last_digit={**by_digit, **{str(d): "answered" for d in range(5, 10)}},
        duplicate_callback_probability=0.2,
        intermediate_events=True,
        **FAST,
    ) as sim:
        account = {
            "name": "callr",
            "kind": "callr",
            "base_url": sim.base_url,
            "login": LOGIN,
            "password_env": "CALLR_PASSWORD",
            "hmac_secret_env": "CALLR_HMAC_SECRET",
            "app": APP,
            "max_calls_per_second": 40,
        }
        env = {
            "DIALER_PROVIDERS": orjson.dumps([account]).decode(),
            "CALLR_PASSWORD": PASSWORD,
            "CALLR_HMAC_SECRET": HMAC_SECRET,
        }
        workers = [spawn(dsn, sim.base_url, **env) for _ in range(3)]
        with reap(workers):
            await wait_ready(workers)
            # CALLR webhooks are account subscriptions: one URL for starts, one for hangups.
            for kind, worker in (("call.outbound_start", workers[0]), ("call.outbound_hangup", workers[1])):
                url = f"http://127.0.0.1:{worker.port}/callbacks/callr"
                await rpc_call(sim.base_url, "webhooks.subscribe", [kind, url, {"hmac_secret": HMAC_SECRET}])
            now = dt.datetime.now(dt.UTC)
            camp = await make_campaign(
                conn,
                name="callr-run",
                now=now,
                provider="callr",
                caller_id="+16467890800",
                ring_timeout_seconds=5,
                max_retries=1,
                retry_wait_seconds=1,
                max_concurrent_calls=20,
                max_calls_per_second=30,
            )
            await add_numbers(conn, camp["id"], 30, now=now)
            await wait_until(
                conn, "SELECT status = 'finished' FROM dialer_campaign WHERE name = 'callr-run'", timeout=40
            )
            for w in workers:
                w.signal(signal.SIGTERM)
            assert [w.proc.wait(timeout=20) for w in workers] == [0, 0, 0]

        stats = sim.stats()
        assert stats["duplicate_start_requests"] == 0
        attempts = await conn.fetch("SELECT * FROM dialer_attempt ORDER BY claimed_at")
        numbers = await conn.fetch("SELECT id, phone, status, attempts FROM dialer_number")
        assert {n["status"] for n in numbers} <= {"completed", "failed"}
        # Every attempt reached CALLR once, as calls.realtime with the documented params.
        for a in attempts:
            call = sim.state.find(str(a["id"]))
            assert call is not None
            assert call.extra["params"] == [
                APP,
                {"number": call.to, "timeout": 5},
                {"cdr_field": a["id"].hex, "cli": "+16467890800"},
            ]
        expected = {
            "0": ("completed", 1, {"answered_human"}),
            "1": ("failed", 2, {"busy"}),
            "2": ("failed", 2, {"no_answer"}),
            "3": ("failed", 1, {"invalid_number"}),
            "4": ("failed", 2, {"congestion"}),
        }
        outcomes: dict[int, set[str]] = {}
        for a in attempts:
            outcomes.setdefault(a["number_id"], set()).add(a["outcome"])
        for n in numbers:
            status, tries, seen = expected.get(n["phone"][-1], ("completed", 1, {"answered_human"}))
            assert (n["status"], n["attempts"], outcomes[n["id"]]) == (status, tries, seen), n["phone"]
        # Outcomes came from the signed webhooks (they carry the event id), not only from reconciliation.
        from_webhooks = sum(1 for a in attempts if "event_id=" in (a["raw_cause"] or ""))
        assert from_webhooks >= len(attempts) * 0.8
        assert stats["callbacks_failed"] == 0
