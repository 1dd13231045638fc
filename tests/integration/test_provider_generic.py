"""The generic HTTP adapter (kind `http`), configured from account options, and the simulator's `http` dialect.

One configuration, `dialect_config()`, describes the simulator's `http` dialect; the contract tests
run it against a recording server, the pipeline test against the simulator with real workers.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import hashlib
import hmac
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
import orjson
import pytest
from aiohttp import web

from dialer.demo import free_port
from dialer.demo_providers import generic_http_config
from dialer.providers import ProviderAccount, load_accounts
from dialer.providers.base import (
    CallbackError,
    CallbackRequest,
    LookupRequest,
    ProviderUnavailable,
    StartError,
    StartRequest,
)
from dialer.providers.generic import GenericHttpProvider, from_account
from dialer.settings import Secret, Settings, SettingsError
from dialer.simulator import Simulator, SimulatorConfig
from scheduler.outcomes import Outcome
from tests.factories import add_numbers, make_campaign
from tests.workers import reap, simulator, spawn, wait_ready, wait_until

API_KEY = "key-4f1c9a"
WEBHOOK_SECRET = "whsec-77d0"
ATTEMPT = "6f1c2b9e-0d7a-4c55-9e3b-0b8d9f6a1e42"
CALLBACK_URL = f"http://dialer.test/callbacks/acme?attempt={ATTEMPT}&token=abc123"


def dialect_config() -> dict[str, Any]:
    """The generic adapter configured for the simulator's `http` dialect, as the demo configures it."""
    return generic_http_config()


def account(base_url: str = "http://acme.test", **options: Any) -> ProviderAccount:
    return ProviderAccount(
        name="acme",
        kind="http",
        base_url=base_url,
        timeout_seconds=0.5,
        options=options,
        secrets={"api_key": Secret(API_KEY), "webhook_secret": Secret(WEBHOOK_SECRET)},
    )


def provider_for(base_url: str = "http://acme.test", **changes: Any) -> GenericHttpProvider:
    return from_account(account(base_url, **{**dialect_config(), **changes}), Settings())


def start_request(caller_id: str | None = "+15005550006", dtmf: str | None = "w12#") -> StartRequest:
    return StartRequest(
        attempt_id=ATTEMPT,
        phone="+14155550123",
        caller_id=caller_id,
        dtmf=dtmf,
        ring_timeout_seconds=25,
        callback_url=CALLBACK_URL,
        campaign="spring sale",
    )


def lookup_request(call_id: str | None = "CA1") -> LookupRequest:
    return LookupRequest(ATTEMPT, call_id, "+14155550123", dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


def signed(body: bytes, url: str = CALLBACK_URL, secret: str = WEBHOOK_SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), url.encode() + body, hashlib.sha256).digest()).decode()


def callback(
    payload: Any, *, url: str = CALLBACK_URL, signature: str | None = None, token: str | None = ATTEMPT
) -> CallbackRequest:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    sig = signed(body, url) if signature is None else signature
    return CallbackRequest(
        url, {"Content-Type": "application/json", "X-Signature": sig}, body, {"attempt": ATTEMPT}, token
    )


def event_body(state: str, **call: Any) -> dict[str, Any]:
    return {"ref": ATTEMPT, "event_id": "e1", "call": {"id": "CA1", "state": state, **call}}


# ------------------------------------------------------------------------------ recording server


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Fake:
    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    replies: list[tuple[int, Any]] = field(default_factory=list)
    stall: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(Seen(request.method, request.path_qs, dict(request.headers), await request.read()))
        if self.stall:
            await self.release.wait()
        status, payload = (
            self.replies.pop(0) if self.replies else (201, {"call": {"id": "CA1", "state": "queued"}})
        )
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        return web.Response(status=status, body=body, content_type="application/json")


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    server = Fake()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield server
    server.release.set()
    await runner.cleanup()


@pytest.fixture
async def adapter(fake: Fake) -> AsyncIterator[GenericHttpProvider]:
    provider = provider_for(fake.url)
    yield provider
    await provider.close()


# ------------------------------------------------------------------------------------- contract


async def test_start_sends_the_configured_json_request(fake: Fake, adapter: GenericHttpProvider) -> None:
    """Method, path, secret header and a JSON body whose whole-value placeholders keep their types."""
    accepted = await adapter.start_call(start_request())
    assert accepted.call_id == "CA1"
    [req] = fake.seen
    assert (req.method, req.path_qs) == ("POST", "/api/calls")
    assert req.headers["X-Api-Key"] == API_KEY
    assert req.headers["Content-Type"] == "application/json"
    assert orjson.loads(req.body) == {
        "ref": ATTEMPT,
        "to": "+14155550123",
        "from": "+15005550006",
        "ring_timeout": 25,
        "notify_url": CALLBACK_URL,
        "digits": "w12#",
        "tag": "spring sale",
    }


async def test_values_that_are_absent_are_left_out(fake: Fake, adapter: GenericHttpProvider) -> None:
    """No caller id and no DTMF: `from` and `digits` are not sent at all (not null, not empty)."""
    await adapter.start_call(start_request(caller_id=None, dtmf=None))
    body = orjson.loads(fake.seen[0].body)
    assert "from" not in body and "digits" not in body


async def test_form_encoding_quoted_path_and_embedded_placeholders(fake: Fake) -> None:
    """Form bodies: lists repeat the key, booleans are words, placeholders inside strings and paths are filled."""
    start = {
        "method": "PUT",
        "path": "/v1/{campaign}/calls?key={secret:api_key}",
        "encoding": "form",
        "headers": {"Authorization": "Token {secret:api_key}", "Idempotency-Key": "{attempt_id}"},
        "body": {
            "To": "{to}",
            "From": "{from}",
            "Timeout": "{ring_timeout_seconds}",
            "StatusCallback": "{callback_url}",
            "StatusCallbackEvent": ["ringing", "completed"],
            "Record": False,
            "Label": "attempt-{attempt_id}",
        },
    }
    provider = provider_for(fake.url, start=start)
    try:
        await provider.start_call(start_request(caller_id=None))
    finally:
        await provider.close()
    [req] = fake.seen
    assert (req.method, req.path_qs) == ("PUT", f"/v1/spring%20sale/calls?key={API_KEY}")
    assert req.headers["Authorization"] == f"Token {API_KEY}"
    assert req.headers["Idempotency-Key"] == ATTEMPT
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qsl(req.body.decode()) == [
        ("To", "+14155550123"),
        ("Timeout", "25"),
        ("StatusCallback", CALLBACK_URL),
        ("StatusCallbackEvent", "ringing"),
        ("StatusCallbackEvent", "completed"),
        ("Record", "false"),
        ("Label", f"attempt-{ATTEMPT}"),
    ]


async def test_a_configured_content_type_wins(fake: Fake) -> None:
    """A Content-Type in the configured headers is sent as configured (e.g. JSON-API's media type)."""
    start = copy.deepcopy(dialect_config()["start"])
    start["headers"]["Content-Type"] = "application/vnd.api+json"
    provider = provider_for(fake.url, start=start)
    try:
        await provider.start_call(start_request())
    finally:
        await provider.close()
    assert fake.seen[0].headers["Content-Type"] == "application/vnd.api+json"


def test_module_example_account_loads_from_providers_json() -> None:
    """The DIALER_PROVIDERS example of the module docstring loads, secrets from their variables."""
    import dialer.providers.generic as generic

    doc = generic.__doc__ or ""
    after = doc.index("Example account::")
    example = doc[doc.index("{", after) : doc.index("``status_map``")].strip()
    raw = json.dumps([json.loads(example)])
    env = {"ACME_API_KEY": API_KEY, "ACME_WEBHOOK_SECRET": WEBHOOK_SECRET}
    [acct] = load_accounts(Settings(providers=raw), environ=env)
    provider = from_account(acct, Settings())
    assert API_KEY not in repr(provider) and WEBHOOK_SECRET not in repr(provider)


def _broken(edit: Any) -> dict[str, Any]:
    config = dialect_config()
    edit(config)
    return config


@pytest.mark.parametrize(
    ("config", "key"),
    [
        (_broken(lambda c: c.pop("start")), "start"),
        (_broken(lambda c: c["start"].pop("path")), "start.path"),
        (_broken(lambda c: c["start"].update(method="FETCH")), "start.method"),
        (_broken(lambda c: c["start"].update(encoding="xml")), "start.encoding"),
        (_broken(lambda c: c["start"]["body"].update(x="{phone}")), "start.body.x"),
        (_broken(lambda c: c["start"]["headers"].update(A="{secret:nope}")), "start.headers.A"),
        (_broken(lambda c: c["start"].update(encoding="form", body={"a": {"b": 1}})), "start.body"),
        (_broken(lambda c: c["start"].update(retries=3)), "start.retries"),
        (_broken(lambda c: c.pop("start_response")), "start_response.call_id"),
        (_broken(lambda c: c["error_map"][0].update(kind="retry")), r"error_map\[0\].kind"),
        (_broken(lambda c: c["error_map"][0].pop("outcome")), r"error_map\[0\].outcome"),
        (_broken(lambda c: c["error_map"][1].update(outcome="busy")), r"error_map\[1\].outcome"),
        (_broken(lambda c: c["error_map"][0].update(status="3xx")), r"error_map\[0\].status"),
        (_broken(lambda c: c["error_map"][0].pop("value")), r"error_map\[0\].value"),
        (_broken(lambda c: c["callback"].pop("signature")), "callback.signature"),
        (
            _broken(lambda c: c["callback"]["signature"].update(algorithm="md5")),
            "callback.signature.algorithm",
        ),
        (_broken(lambda c: c["callback"]["signature"].update(secret="nope")), "callback.signature.secret"),
        (_broken(lambda c: c["callback"]["signature"].update(signed="url")), "callback.signature.signed"),
        (_broken(lambda c: c["callback"]["signature"].update(encoding="b32")), "callback.signature.encoding"),
        (_broken(lambda c: c["callback"].pop("attempt_id")), "callback.attempt_id"),
        (_broken(lambda c: c["callback"].pop("status")), "callback.status"),
        (_broken(lambda c: c["callback"]["status_map"].update(done="finished")), "callback.status_map.done"),
        (_broken(lambda c: c["callback"].update(encoding="xml")), "callback.encoding"),
        (_broken(lambda c: c["lookup"].pop("path")), "lookup.path"),
        (_broken(lambda c: c["lookup"].update(path="/c/{ref}")), "lookup.path"),
        (_broken(lambda c: c["lookup"].update(not_found_means_never_received="yes")), "lookup.not_found"),
        (_broken(lambda c: c["hangup"].update(path="calls")), "hangup.path"),
        (_broken(lambda c: c.update(webhooks={})), "options.webhooks"),
    ],
)
def test_bad_config_is_refused_naming_the_key(config: dict[str, Any], key: str) -> None:
    """Every configuration problem is a SettingsError at construction that names the key."""
    with pytest.raises(SettingsError, match=rf"provider 'acme': {key}"):
        from_account(account(**config), Settings())


# ------------------------------------------------------------------------------------ signatures


def test_valid_signature_gives_the_event() -> None:
    """A callback signed over URL + body with the webhook secret is accepted and read."""
    event = provider_for().parse_callback(callback(event_body("busy", billed=0, q850=17, sip=486)))
    assert (event.attempt_id, event.call_id, event.kind, event.outcome) == (
        ATTEMPT,
        "CA1",
        "ended",
        Outcome.BUSY,
    )
    assert (event.raw_cause, event.sip_code) == ("17", 486)


@pytest.mark.parametrize(
    "request_",
    [
        callback(event_body("completed"), signature=signed(b"{}")),  # forged: signs another body
        callback(
            event_body("completed"), signature=signed(orjson.dumps(event_body("completed")), secret="guess")
        ),
        callback(event_body("completed"), signature=""),  # missing
        # Tampered body: signed as busy, delivered as completed.
        callback(event_body("completed"), signature=signed(orjson.dumps(event_body("busy")))),
        # Tampered URL: the signature was made for another attempt's URL.
        callback(
            event_body("completed"),
            signature=signed(
                orjson.dumps(event_body("completed")), url=CALLBACK_URL.replace("abc123", "xyz")
            ),
        ),
    ],
    ids=["forged", "wrong-secret", "missing", "tampered-body", "tampered-url"],
)
def test_bad_signatures_are_refused(request_: CallbackRequest) -> None:
    """Forged, missing or tampered (body or URL) signatures are bad_signature, before the body is read."""
    with pytest.raises(CallbackError) as info:
        provider_for().parse_callback(request_)
    assert info.value.reason == "bad_signature"


@pytest.mark.parametrize(
    ("signature", "secret", "body", "given"),
    [
        # RFC 4231 test case 2 (HMAC-SHA256) and RFC 2202 test case 2 (HMAC-SHA1).
        (
            {"algorithm": "hmac-sha256", "encoding": "hex"},
            "Jefe",
            b"what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        (
            {"algorithm": "hmac-sha1", "encoding": "hex"},
            "Jefe",
            b"what do ya want for nothing?",
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
        ),
        # GitHub's published webhook example ("Validating webhook deliveries"), with its sha256= prefix.
        (
            {"algorithm": "hmac-sha256", "encoding": "hex", "prefix": "sha256="},
            "It's a Secret to Everybody",
            b"Hello, World!",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        ),
    ],
    ids=["rfc4231", "rfc2202", "github"],
)
def test_published_hmac_vectors_verify(
    signature: dict[str, str], secret: str, body: bytes, given: str
) -> None:
    """Published HMAC test values pass the signature check (the bodies are then malformed callbacks)."""
    config = dialect_config()
    config["callback"]["signature"] = {
        "header": "X-Sig",
        "secret": "webhook_secret",
        "signed": "body",
        **signature,
    }
    acct = ProviderAccount(
        "acme",
        "http",
        "http://a.test",
        options=config,
        secrets={"webhook_secret": Secret(secret), "api_key": Secret("k")},
    )
    provider = from_account(acct, Settings())
    for header, reason in (
        (given, "malformed"),
        (given[:-1] + ("0" if given[-1] != "0" else "1"), "bad_signature"),
    ):
        with pytest.raises(CallbackError) as info:
            provider.parse_callback(CallbackRequest("http://d/cb", {"X-Sig": header}, body, {}, None))
        assert info.value.reason == reason


def test_token_mode_requires_our_token_and_may_take_the_attempt_from_it() -> None:
    """signature "token": no token on the URL is bad_signature; attempt_id "token" reads the id from it."""
    config = dialect_config()
    config["callback"]["signature"] = "token"
    config["callback"]["attempt_id"] = "token"
    provider = from_account(account(**config), Settings())
    body = {"call": {"id": "CA1", "state": "completed"}}
    with pytest.raises(CallbackError) as info:
        provider.parse_callback(callback(body, token=None))
    assert info.value.reason == "bad_signature"
    event = provider.parse_callback(callback(body, signature="anything"))
    assert (event.attempt_id, event.outcome) == (ATTEMPT, Outcome.ANSWERED_HUMAN)


def test_form_callbacks_are_read_by_content_type() -> None:
    """A form-encoded callback is read with the same paths (a dotted key is a form field name)."""
    body = b"ref=" + ATTEMPT.encode() + b"&call.id=CA9&call.state=no_answer&call.duration=30"
    request = CallbackRequest(
        CALLBACK_URL,
        {"Content-Type": "application/x-www-form-urlencoded", "X-Signature": signed(body)},
        body,
        {},
        ATTEMPT,
    )
    event = provider_for().parse_callback(request)
    assert (event.call_id, event.outcome, event.duration_seconds) == ("CA9", Outcome.NO_ANSWER, 30.0)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        {"call": {"state": "busy"}},
        event_body("exploded"),
        event_body("busy", duration=-1),
    ],
    ids=["not-json", "not-object", "no-attempt", "unmapped-status", "negative-duration"],
)
def test_malformed_callbacks(payload: Any) -> None:
    """Well-signed but unreadable bodies (no attempt, unknown status, bad numbers) are malformed."""
    with pytest.raises(CallbackError) as info:
        provider_for().parse_callback(callback(payload))
    assert info.value.reason == "malformed"


# ------------------------------------------------------------------------------ status mapping


@pytest.mark.parametrize(
    ("state", "call", "kind", "outcome"),
    [
        ("queued", {}, "ringing", None),
        ("ringing", {}, "ringing", None),
        ("talking", {"answered_at": "2026-01-01T10:00:05.000+00:00"}, "answered", None),
        (
            "completed",
            {"answered_at": "2026-01-01T10:00:05.000+00:00", "billed": 42},
            "ended",
            Outcome.ANSWERED_HUMAN,
        ),
        ("busy", {"q850": 17}, "ended", Outcome.BUSY),
        ("no_answer", {"q850": 19}, "ended", Outcome.NO_ANSWER),
        ("canceled", {"q850": 16, "sip": 487}, "ended", Outcome.CANCELED),
        ("failed", {"q850": 1, "sip": 404}, "ended", Outcome.INVALID_NUMBER),
        ("failed", {"q850": 34, "sip": 503}, "ended", Outcome.CONGESTION),
        ("failed", {"q850": "21"}, "ended", Outcome.REJECTED),
        ("failed", {"q850": "USER_BUSY"}, "ended", Outcome.BUSY),
        ("failed", {"sip": 404}, "ended", Outcome.INVALID_NUMBER),
        ("failed", {"sip": 603}, "ended", Outcome.REJECTED),
        ("failed", {}, "ended", Outcome.UNKNOWN),
        ("failed", {"q850": 38, "billed": 12}, "ended", Outcome.ANSWERED_HUMAN),
    ],
)
def test_status_maps_to_outcome(state: str, call: dict[str, Any], kind: str, outcome: Outcome | None) -> None:
    """Each configured status (and from_cause: Q.850 number or name, then SIP) gives its kind and outcome."""
    event = provider_for().parse_callback(callback(event_body(state, **call)))
    assert (event.kind, event.outcome, event.raw_status) == (kind, outcome, state)


def test_ended_event_carries_times_durations_and_codes() -> None:
    """Timestamps (ISO, Unix seconds, RFC 2822), duration and billsec are read from their paths."""
    body = event_body(
        "completed",
        answered_at=1767261605,
        ended_at="Thu, 01 Jan 2026 10:01:00 +0000",
        duration=60.5,
        billed=55,
    )
    event = provider_for().parse_callback(callback(body))
    assert event.answered_at == dt.datetime(2026, 1, 1, 10, 0, 5, tzinfo=dt.UTC)
    assert event.ended_at == dt.datetime(2026, 1, 1, 10, 1, tzinfo=dt.UTC)
    assert (event.duration_seconds, event.billsec) == (60.5, 55)


def test_a_catch_all_status_maps_unlisted_statuses() -> None:
    """With a "*" entry, statuses nobody listed take its outcome instead of being refused."""
    config = dialect_config()
    config["callback"]["status_map"]["*"] = "unknown"
    provider = from_account(account(**config), Settings())
    assert provider.parse_callback(callback(event_body("exploded"))).outcome is Outcome.UNKNOWN


# --------------------------------------------------------------------------------- start errors


@pytest.mark.parametrize(
    ("status", "payload", "kind", "outcome"),
    [
        (400, {"error": {"code": "bad_number"}}, "rejected", Outcome.INVALID_NUMBER),
        (400, {"error": {"code": "bad_request"}}, "rejected", Outcome.PROVIDER_ERROR),
        (401, {"error": {"code": "auth"}}, "rejected", Outcome.ACCOUNT_ERROR),
        (403, b"forbidden", "rejected", Outcome.ACCOUNT_ERROR),
        (429, {"error": {"code": "slow_down", "processed": False}}, "rate_limited", None),
        (429, {"error": {"code": "slow_down"}}, "ambiguous", None),  # no not-processed guarantee
        (500, {"error": {"code": "internal"}}, "ambiguous", None),
        (503, b"", "ambiguous", None),
        (201, {"call": {"state": "queued"}}, "ambiguous", None),  # accepted without a call id
    ],
)
async def test_start_errors_are_classified(
    fake: Fake, adapter: GenericHttpProvider, status: int, payload: Any, kind: str, outcome: Outcome | None
) -> None:
    """error_map rules first, then HTTP meaning: 401/403 account, 429/5xx ambiguous, other 4xx provider error."""
    fake.replies.append((status, payload))
    with pytest.raises(StartError) as info:
        await adapter.start_call(start_request())
    assert (info.value.kind, info.value.outcome) == (kind, outcome)


async def test_error_rules_by_status_family_and_list(fake: Fake) -> None:
    """A rule's status may be "5xx" or a list; the first matching rule wins."""
    rules = [
        {"status": [402, 451], "kind": "rejected", "outcome": "account_error"},
        {"status": "5xx", "path": "retryable", "value": True, "kind": "not_sent"},
    ]
    provider = provider_for(fake.url, error_map=rules)
    try:
        for status, payload, kind, outcome in (
            (451, {}, "rejected", Outcome.ACCOUNT_ERROR),
            (503, {"retryable": True}, "not_sent", None),
            (503, {"retryable": "yes"}, "ambiguous", None),
        ):
            fake.replies.append((status, payload))
            with pytest.raises(StartError) as info:
                await provider.start_call(start_request())
            assert (info.value.kind, info.value.outcome) == (kind, outcome)
    finally:
        await provider.close()


async def test_timeout_is_ambiguous(fake: Fake, adapter: GenericHttpProvider) -> None:
    """No answer within the account's timeout: the request may have been processed, so ambiguous."""
    fake.stall = True
    with pytest.raises(StartError) as info:
        await adapter.start_call(start_request())
    assert info.value.kind == "ambiguous"


async def test_connection_refused_is_not_sent_and_never_shows_a_secret() -> None:
    """Nothing listening: not_sent; secrets in the URL or headers appear in no message."""
    start = copy.deepcopy(dialect_config()["start"])
    start["path"] = "/api/calls?key={secret:api_key}"
    provider = provider_for(f"http://127.0.0.1:{free_port()}", start=start)
    try:
        with pytest.raises(StartError) as info:
            await provider.start_call(start_request())
        assert info.value.kind == "not_sent"
        assert API_KEY not in str(info.value) and API_KEY not in repr(provider)
    finally:
        await provider.close()


# ----------------------------------------------------------------------------- lookup and hangup


async def test_lookup_reads_the_call_by_attempt(fake: Fake, adapter: GenericHttpProvider) -> None:
    """GET the configured path with the attempt id; the body is read with the callback's paths."""
    fake.replies.append((200, event_body("busy", q850=17, ended_at="2026-01-01T10:00:00+00:00")))
    event = await adapter.lookup(lookup_request(None))
    assert event is not None and (event.kind, event.outcome, event.call_id) == ("ended", Outcome.BUSY, "CA1")
    [req] = fake.seen
    assert (req.method, req.path_qs, req.headers["X-Api-Key"]) == (
        "GET",
        f"/api/calls/by-ref/{ATTEMPT}",
        API_KEY,
    )


async def test_lookup_of_a_live_call_is_ringing(fake: Fake, adapter: GenericHttpProvider) -> None:
    """A call still ringing reads as a ringing event, for the sweeper to look at again."""
    fake.replies.append((200, event_body("ringing")))
    event = await adapter.lookup(lookup_request())
    assert event is not None and event.kind == "ringing"


async def test_lookup_404_is_none_only_when_configured(fake: Fake) -> None:
    """404 means "never received" only when not_found_means_never_received says so."""
    sure = provider_for(fake.url)
    config = dialect_config()
    config["lookup"]["not_found_means_never_received"] = False
    unsure = from_account(account(fake.url, **config), Settings())
    try:
        fake.replies.append((404, {"error": {"code": "not_found"}}))
        assert await sure.lookup(lookup_request()) is None
        fake.replies.append((404, {"error": {"code": "not_found"}}))
        with pytest.raises(ProviderUnavailable):
            await unsure.lookup(lookup_request())
    finally:
        await sure.close()
        await unsure.close()


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ((500, {}), "5xx"),
        ((200, b"<html>"), "unreadable"),
        ((200, {**event_body("busy"), "ref": "other"}), "other"),
    ],
)
async def test_lookup_failures_are_unavailable(
    fake: Fake, adapter: GenericHttpProvider, reply: tuple[int, Any], why: str
) -> None:
    """A lookup that fails, cannot be read or answers for another attempt raises ProviderUnavailable."""
    fake.replies.append(reply)
    with pytest.raises(ProviderUnavailable):
        await adapter.lookup(lookup_request())


async def test_lookup_by_call_id_needs_the_call_id(fake: Fake) -> None:
    """A lookup path with {call_id} cannot be asked before the call id is known: unavailable, nothing sent."""
    config = dialect_config()
    config["lookup"]["path"] = "/api/calls/{call_id}"
    provider = from_account(account(fake.url, **config), Settings())
    try:
        with pytest.raises(ProviderUnavailable):
            await provider.lookup(lookup_request(None))
        assert fake.seen == []
        fake.replies.append((200, event_body("busy")))
        await provider.lookup(lookup_request("CA7"))
        assert fake.seen[0].path_qs == "/api/calls/CA7"
    finally:
        await provider.close()


async def test_without_lookup_or_hangup_config() -> None:
    """No lookup configured: unavailable (the sweeper gives up after the call's lifetime); no hangup: no-op."""
    config = dialect_config()
    del config["lookup"], config["hangup"]
    provider = from_account(account(**config), Settings())
    with pytest.raises(ProviderUnavailable):
        await provider.lookup(lookup_request())
    await provider.hangup(ATTEMPT, "CA1")
    await provider.close()


async def test_hangup_sends_the_configured_request(fake: Fake, adapter: GenericHttpProvider) -> None:
    """Hangup is the configured request; a 409 (already answered or over) is not an error."""
    fake.replies.append((409, {"error": {"code": "not_cancelable"}}))
    await adapter.hangup(ATTEMPT, "CA1")
    [req] = fake.seen
    assert (req.method, req.path_qs, req.headers["X-Api-Key"]) == (
        "POST",
        f"/api/calls/by-ref/{ATTEMPT}/hangup",
        API_KEY,
    )


# ----------------------------------------------------------------------------- simulator dialect


async def test_dialect_form_sha1_hex_body_callbacks_parse_with_matching_config() -> None:
    """The dialect's signing options and the adapter's config agree: a form callback, HMAC-SHA1 hex of the body."""
    received: list[CallbackRequest] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(
            CallbackRequest(str(request.url), request.headers, await request.read(), request.query, None)
        )
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/cb", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    cb_url = f"http://127.0.0.1:{runner.addresses[0][1]}/cb"
    options = {
        "api_key": API_KEY,
        "callback_secret": WEBHOOK_SECRET,
        "algorithm": "sha1",
        "signature_encoding": "hex",
        "signed": "body",
        "callback_encoding": "form",
    }
    config = SimulatorConfig(
        time_scale=0.001,
        seed=1,
        dialects=["http"],
        dialect_options={"http": options},
        forced_outcomes={"+14155550123": "busy"},
    )
    adapter_config = dialect_config()
    adapter_config["callback"]["signature"] = {
        "header": "X-Signature", "algorithm": "hmac-sha1", "secret": "webhook_secret", "encoding": "hex", "signed": "body",
    }  # fmt: skip
    try:
        async with Simulator(config) as sim:
            provider = from_account(account(sim.base_url, **adapter_config), Settings())
            try:
                request = StartRequest(ATTEMPT, "+14155550123", None, None, 20, cb_url, "c")
                await provider.start_call(request)
                await sim.wait_ended(ATTEMPT)
                await sim.drain_callbacks()
            finally:
                await provider.close()
    finally:
        await runner.cleanup()
    [cb] = received
    assert cb.headers["Content-Type"] == "application/x-www-form-urlencoded"
    event = provider.parse_callback(cb)
    assert (event.attempt_id, event.kind, event.outcome, event.sip_code) == (
        ATTEMPT,
        "ended",
        Outcome.BUSY,
        486,
    )


# ---------------------------------------------------------------------------- full pipeline


@pytest.mark.slow
async def test_three_workers_dial_through_the_generic_adapter(dsn: str, conn: asyncpg.Connection) -> None:
    """3 workers → generic adapter → simulator's http dialect → signed callbacks → outcomes and retries."""
    by_digit = {"0": "answered", "1": "answered", "2": "answered", "3": "answered", "4": "answered",
                "5": "busy", "6": "busy", "7": "no-answer", "8": "failed", "9": "congestion"}  # fmt: skip
    async with simulator(
        time_scale=0.01,
        talk_max_seconds=20,
        force_by_last_digit=by_digit,
        intermediate_events=True,
        duplicate_callback_probability=0.3,
        out_of_order_probability=0.3,
        dialects=["http"],
        dialect_options={"http": {"api_key": API_KEY, "callback_secret": WEBHOOK_SECRET}},
    ) as sim:
        now = dt.datetime.now(dt.UTC)
        camp = await make_campaign(
            conn, name="g", now=now, provider="acme", max_retries=1, retry_wait_seconds=1
        )
        await add_numbers(conn, camp["id"], 20, now=now)
        providers = [
            {
                "name": "acme",
                "kind": "http",
                "base_url": sim.base_url,
                "api_key_env": "ACME_API_KEY",
                "webhook_secret_env": "ACME_WEBHOOK_SECRET",
                **dialect_config(),
            }
        ]
        env = {
            "DIALER_PROVIDERS": json.dumps(providers),
            "ACME_API_KEY": API_KEY,
            "ACME_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
        workers = [spawn(dsn, sim.base_url, **env) for _ in range(3)]
        with reap(workers):
            await wait_ready(workers)
            await wait_until(
                conn, "SELECT status = 'finished' FROM dialer_campaign WHERE name = 'g'", timeout=30
            )
            await sim.drain_callbacks()  # duplicates and stale events still on their way
            for w in workers:
                w.signal(signal.SIGTERM)
            assert [w.proc.wait(timeout=20) for w in workers] == [0, 0, 0]

    statuses = {
        r["status"]: r["n"]
        for r in await conn.fetch("SELECT status, count(*) AS n FROM dialer_number GROUP BY 1")
    }
    assert statuses == {"completed": 10, "failed": 10}
    outcomes = {
        r["outcome"]: r["n"]
        for r in await conn.fetch("SELECT outcome, count(*) AS n FROM dialer_attempt GROUP BY 1")
    }
    assert outcomes == {"answered_human": 10, "busy": 8, "no_answer": 4, "invalid_number": 2, "congestion": 4}
    # Every answered call went through the "talking" event and carries the talk time.
    answered = await conn.fetch("SELECT * FROM dialer_attempt WHERE outcome = 'answered_human'")
    assert all(r["answered_at"] and r["billsec"] > 0 and r["provider_call_id"] for r in answered)
    stats = sim.stats()
    assert stats["duplicate_start_requests"] == 0
    assert stats["callbacks_duplicated"] > 0 and stats["callbacks_failed"] == 0
    attempts = {str(r["id"]) for r in await conn.fetch("SELECT id FROM dialer_attempt")}
    assert {e["attempt_id"] for e in sim.log() if e["response_status"] in (200, 201)} == attempts
    # What the provider saw: the configured path, key header and JSON body, one per attempt.
    starts = [r for r in sim.state.dialects["http"].requests if r["path"] == "/api/calls"]  # type: ignore[attr-defined]
    assert len(starts) == 28
    assert all(r["api_key"] and r["content_type"] == "application/json" for r in starts)
    assert all(set(r["body"]) == {"ref", "to", "ring_timeout", "notify_url", "tag"} for r in starts)
    assert all(r["body"]["ring_timeout"] == 30 and r["body"]["tag"] == "g" for r in starts)
    assert {r["body"]["ref"] for r in starts} == attempts
