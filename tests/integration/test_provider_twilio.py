"""Twilio adapter: the exact requests it sends (checked against Twilio's OpenAPI), callback
signatures with Twilio's published vectors, the status → outcome table, start-error classes,
reconciliation, the simulator's twilio dialect, and the whole pipeline with worker processes."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web

from dialer.demo import free_port
from dialer.providers import ProviderAccount
from dialer.providers.base import (
    CallbackError,
    CallbackRequest,
    CallEvent,
    LookupRequest,
    ProviderUnavailable,
    StartError,
    StartRequest,
)
from dialer.providers.twilio import (
    STATUS_CALLBACK_EVENTS,
    TwilioProvider,
    compute_signature,
    from_account,
    signature_valid,
)
from dialer.settings import Secret, Settings, SettingsError
from dialer.simdialects.twilio import TwilioDialect, sign
from dialer.simulator import Simulator, SimulatorConfig
from scheduler.outcomes import Outcome
from tests.factories import add_numbers, make_campaign
from tests.workers import reap, simulator, spawn, wait_ready, wait_until

ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "test-auth-token"
FROM = "+15005550006"
ANSWER_URL = "https://dialer.example.com/twiml/answer"
ATTEMPT = "0b7e6b1c-3f0a-4c55-9d8e-2f1a7c9e4b10"
CALLBACK = f"https://dialer.example.com/callbacks/twilio-main?attempt={ATTEMPT}&token=0123abcd"
CALL_SID = "CA" + "fedcba9876543210" * 2
CALLS_PATH = f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json"
SPEC = Path(__file__).resolve().parents[2].parent / "shared" / "specs" / "twilio_api_v2010_calls.json"
CLAIMED_AT = dt.datetime(2026, 11, 25, 15, 0, 0, tzinfo=dt.UTC)


def basic(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()


def start_request(**overrides: Any) -> StartRequest:
    fields: dict[str, Any] = {
        "attempt_id": ATTEMPT,
        "phone": "+14155550123",
        "caller_id": None,
        "dtmf": None,
        "ring_timeout_seconds": 25,
        "callback_url": CALLBACK,
        "campaign": "spring",
    }
    fields.update(overrides)
    return StartRequest(**fields)


def make_provider(base_url: str = "http://127.0.0.1:9", **overrides: Any) -> TwilioProvider:
    kwargs: dict[str, Any] = {"answer_url": ANSWER_URL, "from_number": FROM, "timeout_seconds": 2.0}
    kwargs.update(overrides)
    return TwilioProvider(base_url, ACCOUNT, TOKEN, **kwargs)


def rfc2822(when: dt.datetime) -> str:
    return format_datetime(when.astimezone(dt.UTC))


# ---------------------------------------------------------------- a recording stand-in for Twilio


@dataclass
class Seen:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes

    def form(self) -> list[tuple[str, str]]:
        return parse_qsl(self.body.decode(), keep_blank_values=True)


@dataclass
class Reply:
    status: int = 201
    body: Any = None
    raw: bytes | None = None
    hang: bool = False
    reset: bool = False


@dataclass
class Recorder:
    """A local HTTP server that records every request and answers from a queue of replies."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        query = parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True)
        self.seen.append(Seen(request.method, request.rel_url.raw_path, query, dict(request.headers), body))
        reply = self.replies.pop(0) if self.replies else Reply(201, {"sid": CALL_SID, "status": "queued"})
        if reply.hang:
            await asyncio.Event().wait()  # until the client gives up; teardown cancels it
        if reply.reset:
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        payload = reply.raw if reply.raw is not None else orjson.dumps(reply.body)
        return web.Response(status=reply.status, body=payload, content_type="application/json")


@pytest.fixture
async def twilio_api() -> AsyncIterator[Recorder]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    recorder.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield recorder
    await runner.cleanup()


@pytest.fixture
async def provider(twilio_api: Recorder) -> AsyncIterator[TwilioProvider]:
    p = make_provider(twilio_api.url)
    yield p
    await p.close()


# ---------------------------------------------------------------- the OpenAPI file, read directly


def load_spec() -> dict[str, Any]:
    if not SPEC.exists():
        pytest.skip(f"Twilio OpenAPI extract not found at {SPEC} (expected at <repo>/../shared/specs/)")
    spec: dict[str, Any] = json.loads(SPEC.read_text())
    return spec


def _resolve(spec: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    node: Any = spec
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return _resolve(spec, node)


def _value_problems(schema: Mapping[str, Any], name: str, value: str) -> list[str]:
    problems = []
    kind = schema.get("type", "string")
    if kind == "integer" and not re.fullmatch(r"-?\d+", value):
        problems.append(f"{name}={value!r} is not an integer")
    if kind == "boolean" and value not in ("true", "false"):
        problems.append(f"{name}={value!r} is not a boolean")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{name}={value!r} not in {schema['enum']}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        problems.append(f"{name}={value!r} does not match {schema['pattern']}")
    if schema.get("format") == "uri" and not value.startswith(("http://", "https://")):
        problems.append(f"{name}={value!r} is not an absolute URI")
    return problems


def spec_operation(spec: Mapping[str, Any], method: str, raw_path: str) -> Mapping[str, Any]:
    """The operation a request addresses; its path parameters must match their schemas."""
    for template, item in spec["paths"].items():
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
        match = re.fullmatch(pattern, raw_path)
        if match is None:
            continue
        operation = item.get(method.lower())
        assert operation is not None, f"{method} {template} is not in the spec"
        for param in operation.get("parameters", []):
            if param["in"] == "path":
                assert not _value_problems(param["schema"], param["name"], match[param["name"]])
        return operation  # type: ignore[no-any-return]
    pytest.fail(f"{raw_path} matches no path of the spec")


def form_problems(
    spec: Mapping[str, Any], operation: Mapping[str, Any], pairs: list[tuple[str, str]]
) -> list[str]:
    """Every field declared by the request body schema, with a compatible type; required ones present."""
    schema = _resolve(
        spec, operation["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    )
    properties = schema["properties"]
    counts = Counter(name for name, _ in pairs)
    problems = [f"required {name} missing" for name in schema.get("required", []) if name not in counts]
    for name, value in pairs:
        if name not in properties:
            problems.append(f"{name} is not a parameter of {schema.get('title')}")
            continue
        prop = _resolve(spec, properties[name])
        if prop.get("type") == "array":
            problems += _value_problems(_resolve(spec, prop["items"]), name, value)
        elif counts[name] > 1:
            problems.append(f"{name} is sent {counts[name]} times but is not an array")
        else:
            problems += _value_problems(prop, name, value)
    return problems


def query_problems(
    spec: Mapping[str, Any], operation: Mapping[str, Any], pairs: list[tuple[str, str]]
) -> list[str]:
    declared = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "query"}
    problems = []
    for name, value in pairs:
        if name not in declared:
            problems.append(f"query {name} is not declared")
        else:
            problems += _value_problems(_resolve(spec, declared[name]["schema"]), name, value)
    return problems


# ---------------------------------------------------------------- start: the exact request


async def test_start_call_posts_the_create_call_form(twilio_api: Recorder, provider: TwilioProvider) -> None:
    """A start is one form POST to Calls.json with Basic auth, every documented field, nothing else."""
    accepted = await provider.start_call(start_request())
    assert accepted.call_id == CALL_SID
    [seen] = twilio_api.seen
    assert (seen.method, seen.path, seen.query) == ("POST", CALLS_PATH, [])
    assert seen.headers["Authorization"] == basic(ACCOUNT, TOKEN)
    assert seen.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert seen.headers["Accept"] == "application/json"
    expected = [
        ("To", "+14155550123"),
        ("From", FROM),
        ("Url", ANSWER_URL),
        ("Timeout", "25"),
        ("StatusCallback", CALLBACK),
        ("StatusCallbackMethod", "POST"),
        ("StatusCallbackEvent", "initiated"),
        ("StatusCallbackEvent", "ringing"),
        ("StatusCallbackEvent", "answered"),
        ("StatusCallbackEvent", "completed"),
    ]
    assert seen.form() == expected
    assert seen.body == urlencode(expected).encode()


async def test_start_call_with_twiml_caller_id_digits_and_machine_detection(twilio_api: Recorder) -> None:
    """Twiml replaces Url; the campaign caller ID beats from_number; DTMF is SendDigits; AMD is sent."""
    twiml = '<Response><Say voice="alice">Hello &amp; welcome</Say></Response>'
    p = make_provider(twilio_api.url, answer_url=None, twiml=twiml, machine_detection="DetectMessageEnd")
    try:
        await p.start_call(start_request(caller_id="+15005550001", dtmf="ww1234#"))
    finally:
        await p.close()
    form = twilio_api.seen[0].form()
    assert dict(form)["Twiml"] == twiml and "Url" not in dict(form)
    assert dict(form)["From"] == "+15005550001"
    assert form[-2:] == [("SendDigits", "ww1234#"), ("MachineDetection", "DetectMessageEnd")]


async def test_api_key_authenticates_rest_calls_but_not_callbacks(twilio_api: Recorder) -> None:
    """With an API key the REST calls use it (path still the account); callbacks stay auth-token signed."""
    p = make_provider(twilio_api.url, api_key=("SK" + "1" * 32, "key-secret"))
    try:
        await p.start_call(start_request())
        assert twilio_api.seen[0].headers["Authorization"] == basic("SK" + "1" * 32, "key-secret")
        assert twilio_api.seen[0].path == CALLS_PATH
        event = p.parse_callback(signed_callback({"CallStatus": "ringing"}))
        assert event.kind == "ringing"
    finally:
        await p.close()


async def test_start_without_any_caller_id_is_an_account_error_and_sends_nothing(
    twilio_api: Recorder,
) -> None:
    """No campaign caller ID and no from_number: refused locally as ACCOUNT_ERROR, never sent."""
    p = make_provider(twilio_api.url, from_number=None)
    try:
        with pytest.raises(StartError) as caught:
            await p.start_call(start_request())
    finally:
        await p.close()
    assert (caught.value.kind, caught.value.outcome) == ("rejected", Outcome.ACCOUNT_ERROR)
    assert twilio_api.seen == []


async def test_every_request_conforms_to_the_twilio_openapi_spec(twilio_api: Recorder) -> None:
    """Create (both variants), fetch, list and update requests: paths, fields, types and enums per the spec."""
    spec = load_spec()
    url_provider = make_provider(twilio_api.url, machine_detection="Enable")
    twiml_provider = make_provider(twilio_api.url, answer_url=None, twiml="<Response/>")
    try:
        await url_provider.start_call(start_request(dtmf="1234#"))
        await twiml_provider.start_call(start_request(caller_id="+15005550001"))
        twilio_api.replies = [
            Reply(200, {"sid": CALL_SID, "status": "ringing"}),
            Reply(200, {"calls": [], "next_page_uri": None}),
            Reply(200, {"calls": [], "next_page_uri": None}),
            Reply(200, {"sid": CALL_SID, "status": "in-progress"}),
            Reply(200, {"sid": CALL_SID, "status": "completed"}),
        ]
        await url_provider.lookup(LookupRequest(ATTEMPT, CALL_SID, "+14155550123", CLAIMED_AT))
        assert await url_provider.lookup(LookupRequest(ATTEMPT, None, "+14155550123", CLAIMED_AT)) is None
        await url_provider.hangup(ATTEMPT, CALL_SID)
    finally:
        await url_provider.close()
        await twiml_provider.close()

    methods = [(s.method, s.path) for s in twilio_api.seen]
    call_path = f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{CALL_SID}.json"
    assert methods == [
        ("POST", CALLS_PATH),
        ("POST", CALLS_PATH),
        ("GET", call_path),
        ("GET", CALLS_PATH),
        ("GET", CALLS_PATH),
        ("POST", call_path),
        ("POST", call_path),
    ]
    for seen in twilio_api.seen:
        operation = spec_operation(spec, seen.method, seen.path)
        assert "accountSid_authToken" in {k for s in operation["security"] for k in s}
        if seen.method == "POST":
            assert form_problems(spec, operation, seen.form()) == []
        assert query_problems(spec, operation, seen.query) == []
    # Beyond the schema, Twilio needs call instructions: exactly one of Url / Twiml.
    for seen in twilio_api.seen[:2]:
        assert len({"Url", "Twiml"} & {name for name, _ in seen.form()}) == 1
    # The checker itself catches drift.
    create = spec_operation(spec, "POST", CALLS_PATH)
    assert form_problems(spec, create, [("To", "+1"), ("From", "+2"), ("Timeout", "soon")]) == [
        "Timeout='soon' is not an integer"
    ]
    assert form_problems(spec, create, [("To", "+1"), ("Campaign", "x")]) == [
        "required From missing",
        "Campaign is not a parameter of CreateCallRequest",
    ]
    update = spec_operation(spec, "POST", call_path)
    assert form_problems(spec, update, [("Status", "hungup")]) == [
        "Status='hungup' not in ['canceled', 'completed']"
    ]


# ---------------------------------------------------------------- signatures


PUBLISHED_URI = "https://mycompany.com/myapp.php?foo=1&bar=2"
PUBLISHED_PARAMS = [
    ("CallSid", "CA1234567890ABCDE"),
    ("Digits", "1234"),
    ("From", "+14158675309"),
    ("To", "+18005551212"),
    ("Caller", "+14158675309"),
]


def test_signature_matches_twilios_published_vectors() -> None:
    """compute_signature reproduces twilio-python's test_request_validator values, repeated keys included."""
    assert compute_signature("12345", PUBLISHED_URI, PUBLISHED_PARAMS) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    duplicates = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
    assert compute_signature("12345", PUBLISHED_URI, duplicates) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    # The simulator signs independently and must agree.
    assert sign("12345", PUBLISHED_URI, PUBLISHED_PARAMS) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert sign("12345", PUBLISHED_URI, duplicates) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


@pytest.mark.parametrize(
    ("uri", "signature"),
    [
        (PUBLISHED_URI, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        (PUBLISHED_URI.replace(".com", ".com:1234"), "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        (PUBLISHED_URI.replace(".com", ".com:1234").replace("https", "http"), "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
        (PUBLISHED_URI, "kvajT1Ptam85bY51eRf/AJRuM3w="),
        (PUBLISHED_URI.replace("https", "http"), "0ZXoZLH/DfblKGATFgpif+LLRf4="),
    ],
    ids=["as-is", "https-port-removed", "http-with-port", "https-port-443-added", "http-port-80-added"],
)
def test_signature_accepts_the_url_with_or_without_its_port(uri: str, signature: str) -> None:
    """Twilio signs URLs with and without the port: every published port variant validates."""
    assert signature_valid("12345", uri, PUBLISHED_PARAMS, signature)
    assert not signature_valid("54321", uri, PUBLISHED_PARAMS, signature)


# A real Twilio voice request as published in twilio-ruby's request_validator_spec.rb.
RUBY_TOKEN = "2bd9e9638872de601313dc77410d3b23"
RUBY_ACCOUNT = "ACba8bc05eacf94afdae398e642c9cc32d"
RUBY_URL = "http://twiliotests.heroku.com/validate/voice"
RUBY_SIGNATURE = "oVb2kXoVy8GEfwBDjR8bk/ZZ6eA="
RUBY_PARAMS = {
    "ToState": "California",
    "CalledState": "California",
    "Direction": "inbound",
    "FromState": "CA",
    "AccountSid": RUBY_ACCOUNT,
    "Caller": "+14153595711",
    "CallerZip": "94108",
    "CallerCountry": "US",
    "From": "+14153595711",
    "FromCity": "SAN FRANCISCO",
    "CallerCity": "SAN FRANCISCO",
    "To": "+14157669926",
    "FromZip": "94108",
    "FromCountry": "US",
    "ToCity": "",
    "CallStatus": "ringing",
    "CalledCity": "",
    "CallerState": "CA",
    "CalledZip": "",
    "ToZip": "",
    "ToCountry": "US",
    "CallSid": "CA136d09cd59a3c0ec8dbff44da5c03f31",
    "CalledCountry": "US",
    "Called": "+14157669926",
    "ApiVersion": "2010-04-01",
    "ApplicationSid": "AP44efecad51364e80b133bb7c07eb8204",
}


def test_parse_callback_accepts_a_request_signed_by_twilio_itself() -> None:
    """A published, Twilio-signed voice request (blank values included) parses as a ringing event."""
    p = TwilioProvider("https://api.twilio.com", RUBY_ACCOUNT, RUBY_TOKEN, answer_url=ANSWER_URL)
    request = CallbackRequest(
        url=RUBY_URL,
        headers={"X-Twilio-Signature": RUBY_SIGNATURE},
        body=urlencode(RUBY_PARAMS).encode(),
        query={},
        token_attempt_id=ATTEMPT,
    )
    event = p.parse_callback(request)
    assert (event.attempt_id, event.call_id, event.kind) == (
        ATTEMPT,
        "CA136d09cd59a3c0ec8dbff44da5c03f31",
        "ringing",
    )


def signed_callback(
    fields: Mapping[str, str], *, url: str = CALLBACK, token: str = TOKEN, attempt: str | None = ATTEMPT
) -> CallbackRequest:
    params = {"AccountSid": ACCOUNT, "CallSid": CALL_SID, "ApiVersion": "2010-04-01", **fields}
    pairs = list(params.items())
    return CallbackRequest(
        url=url,
        headers={"X-Twilio-Signature": compute_signature(token, url, pairs)},
        body=urlencode(pairs).encode(),
        query=dict(parse_qsl(urlsplit(url).query)),
        token_attempt_id=attempt,
    )


def _tampered_body(r: CallbackRequest) -> CallbackRequest:
    return CallbackRequest(
        r.url, r.headers, r.body.replace(b"busy", b"completed"), r.query, r.token_attempt_id
    )


def _tampered_url(r: CallbackRequest) -> CallbackRequest:
    other = CALLBACK.replace(ATTEMPT, str(uuid.uuid4()))
    return CallbackRequest(other, r.headers, r.body, r.query, r.token_attempt_id)


def _no_header(r: CallbackRequest) -> CallbackRequest:
    return CallbackRequest(r.url, {}, r.body, r.query, r.token_attempt_id)


@pytest.mark.parametrize(
    "forge",
    [
        lambda: signed_callback({"CallStatus": "busy"}, token="not-our-token"),
        lambda: _tampered_body(signed_callback({"CallStatus": "busy"})),
        lambda: _tampered_url(signed_callback({"CallStatus": "busy"})),
        lambda: _no_header(signed_callback({"CallStatus": "busy"})),
        lambda: signed_callback({"CallStatus": "busy", "AccountSid": "AC" + "9" * 32}),
    ],
    ids=["forged-token", "tampered-body", "tampered-url", "no-signature", "other-account"],
)
def test_forged_or_tampered_callbacks_are_bad_signatures(forge: Callable[[], CallbackRequest]) -> None:
    """A wrong key, an edited body or URL, a missing header or another account's callback is refused."""
    with pytest.raises(CallbackError) as caught:
        make_provider().parse_callback(forge())
    assert caught.value.reason == "bad_signature"


@pytest.mark.parametrize(
    ("fields", "attempt"),
    [
        ({"CallStatus": "busy"}, None),
        ({"CallStatus": "exploded"}, ATTEMPT),
        ({"CallStatus": "failed", "SipResponseCode": "abc"}, ATTEMPT),
        ({"CallStatus": "completed", "CallDuration": "-3"}, ATTEMPT),
        ({"CallStatus": "ringing", "SequenceNumber": "x"}, ATTEMPT),
        ({"CallSid": ""}, ATTEMPT),
    ],
    ids=["no-attempt-token", "unknown-status", "bad-sip", "negative-duration", "bad-sequence", "no-status"],
)
def test_signed_but_unusable_callbacks_are_malformed(fields: dict[str, str], attempt: str | None) -> None:
    """A genuine signature over a body that names no attempt or no valid status is malformed, not accepted."""
    with pytest.raises(CallbackError) as caught:
        make_provider().parse_callback(signed_callback(fields, attempt=attempt))
    assert caught.value.reason == "malformed"


# ---------------------------------------------------------------- status → outcome


H, M, F = Outcome.ANSWERED_HUMAN, Outcome.ANSWERED_MACHINE, Outcome.ANSWERED_FAX


@pytest.mark.parametrize(
    ("fields", "kind", "outcome"),
    [
        ({"CallStatus": "queued"}, "ringing", None),
        ({"CallStatus": "initiated", "SequenceNumber": "0"}, "ringing", None),
        ({"CallStatus": "ringing", "SequenceNumber": "1"}, "ringing", None),
        ({"CallStatus": "in-progress", "SequenceNumber": "2"}, "answered", None),
        ({"CallStatus": "completed", "CallDuration": "42"}, "ended", H),
        ({"CallStatus": "completed", "CallDuration": "42", "AnsweredBy": "human"}, "ended", H),
        ({"CallStatus": "completed", "CallDuration": "42", "AnsweredBy": "unknown"}, "ended", H),
        ({"CallStatus": "completed", "CallDuration": "9", "AnsweredBy": "machine_start"}, "ended", M),
        ({"CallStatus": "completed", "CallDuration": "9", "AnsweredBy": "machine_end_beep"}, "ended", M),
        ({"CallStatus": "completed", "CallDuration": "9", "AnsweredBy": "machine_end_silence"}, "ended", M),
        ({"CallStatus": "completed", "CallDuration": "9", "AnsweredBy": "machine_end_other"}, "ended", M),
        ({"CallStatus": "completed", "CallDuration": "5", "AnsweredBy": "fax"}, "ended", F),
        ({"CallStatus": "completed", "CallDuration": "0", "SipResponseCode": "200"}, "ended", H),
        ({"CallStatus": "completed", "CallDuration": "0"}, "ended", Outcome.UNKNOWN),
        ({"CallStatus": "busy", "SipResponseCode": "486"}, "ended", Outcome.BUSY),
        ({"CallStatus": "no-answer", "CallDuration": "0"}, "ended", Outcome.NO_ANSWER),
        ({"CallStatus": "no-answer", "SipResponseCode": "480"}, "ended", Outcome.NO_ANSWER),
        ({"CallStatus": "no-answer", "SipResponseCode": "603"}, "ended", Outcome.REJECTED),
        ({"CallStatus": "canceled", "SipResponseCode": "487"}, "ended", Outcome.CANCELED),
        ({"CallStatus": "failed", "SipResponseCode": "404"}, "ended", Outcome.INVALID_NUMBER),
        ({"CallStatus": "failed", "SipResponseCode": "484"}, "ended", Outcome.INVALID_NUMBER),
        ({"CallStatus": "failed", "SipResponseCode": "410"}, "ended", Outcome.INVALID_NUMBER),
        ({"CallStatus": "failed", "SipResponseCode": "604"}, "ended", Outcome.INVALID_NUMBER),
        ({"CallStatus": "failed", "SipResponseCode": "480"}, "ended", Outcome.NO_ANSWER),
        ({"CallStatus": "failed", "SipResponseCode": "603"}, "ended", Outcome.REJECTED),
        ({"CallStatus": "failed", "SipResponseCode": "403"}, "ended", Outcome.BLOCKED),
        ({"CallStatus": "failed", "SipResponseCode": "500"}, "ended", Outcome.CONGESTION),
        ({"CallStatus": "failed", "SipResponseCode": "503"}, "ended", Outcome.CONGESTION),
        ({"CallStatus": "failed", "SipResponseCode": "200"}, "ended", Outcome.UNKNOWN),
        ({"CallStatus": "failed"}, "ended", Outcome.UNKNOWN),
    ],
    ids=lambda v: "-".join(v.values()) if isinstance(v, dict) else str(v),
)
def test_callback_status_maps_to_outcome(fields: dict[str, str], kind: str, outcome: Outcome | None) -> None:
    """Each CallStatus (+ SipResponseCode, AnsweredBy, CallDuration) gives one event kind and outcome."""
    event = make_provider().parse_callback(signed_callback(fields))
    assert (event.attempt_id, event.call_id, event.kind, event.outcome) == (ATTEMPT, CALL_SID, kind, outcome)
    assert event.raw_status == fields["CallStatus"]


def test_answered_callback_carries_times_talk_and_codes() -> None:
    """A completed call reports its end time, talk seconds as billsec, answer time, SIP code and AMD verdict."""
    ended = dt.datetime(2026, 11, 25, 15, 2, 0, tzinfo=dt.UTC)
    fields = {
        "CallStatus": "completed",
        "CallDuration": "42",
        "SipResponseCode": "200",
        "AnsweredBy": "machine_end_beep",
        "Timestamp": rfc2822(ended),
        "SequenceNumber": "3",
    }
    event = make_provider().parse_callback(signed_callback(fields))
    assert event == CallEvent(
        attempt_id=ATTEMPT,
        call_id=CALL_SID,
        kind="ended",
        outcome=Outcome.ANSWERED_MACHINE,
        answered_at=ended - dt.timedelta(seconds=42),
        ended_at=ended,
        duration_seconds=42.0,
        billsec=42,
        raw_status="completed",
        raw_cause="machine_end_beep",
        sip_code=200,
    )
    busy = make_provider().parse_callback(signed_callback({"CallStatus": "busy", "CallDuration": "0"}))
    assert (busy.billsec, busy.answered_at) == (0, None)


def test_a_late_ringing_after_completed_never_becomes_an_outcome() -> None:
    """Out of order: `ringing` (SequenceNumber 1) arriving after `completed` (3) stays a mere ringing event."""
    p = make_provider()
    final = p.parse_callback(
        signed_callback({"CallStatus": "completed", "CallDuration": "7", "SequenceNumber": "3"})
    )
    late = p.parse_callback(signed_callback({"CallStatus": "ringing", "SequenceNumber": "1"}))
    assert (final.kind, final.outcome) == ("ended", Outcome.ANSWERED_HUMAN)
    assert (late.kind, late.outcome, late.ended_at) == ("ringing", None, None)


# ---------------------------------------------------------------- start errors


def twilio_error(code: int, status: int) -> dict[str, Any]:
    return {"code": code, "message": f"error {code}", "more_info": "", "status": status}


ACC = Outcome.ACCOUNT_ERROR


@pytest.mark.parametrize(
    ("status", "body", "kind", "outcome"),
    [
        (401, twilio_error(20003, 401), "rejected", ACC),  # authenticate
        (403, None, "rejected", ACC),
        (401, twilio_error(20005, 401), "rejected", ACC),  # account not active
        (400, twilio_error(21210, 400), "rejected", ACC),  # From not verified
        (400, twilio_error(21212, 400), "rejected", ACC),  # invalid From
        (404, twilio_error(20404, 404), "rejected", ACC),  # no such account path
        (400, twilio_error(21211, 400), "rejected", Outcome.INVALID_NUMBER),
        (400, twilio_error(21214, 400), "rejected", Outcome.INVALID_NUMBER),
        (400, twilio_error(21217, 400), "rejected", Outcome.INVALID_NUMBER),
        (400, twilio_error(21215, 400), "rejected", Outcome.BLOCKED),  # geo permissions
        (400, twilio_error(21216, 400), "rejected", Outcome.BLOCKED),
        (400, twilio_error(21200, 400), "rejected", Outcome.UNKNOWN),
        (429, twilio_error(20429, 429), "rate_limited", None),
        (429, {"message": "slow down"}, "ambiguous", None),
        (500, twilio_error(20500, 500), "ambiguous", None),
        (502, None, "ambiguous", None),
        (503, twilio_error(20503, 503), "ambiguous", None),
    ],
    ids=lambda v: str(v["code"]) if isinstance(v, dict) and "code" in v else str(v),
)
async def test_start_errors_are_classified(
    twilio_api: Recorder, provider: TwilioProvider, status: int, body: Any, kind: str, outcome: Outcome | None
) -> None:
    """Twilio's HTTP status and error code decide: not processed, refused (and why), or ambiguous."""
    twilio_api.replies = [Reply(status, body)]
    with pytest.raises(StartError) as caught:
        await provider.start_call(start_request())
    assert (caught.value.kind, caught.value.outcome) == (kind, outcome)
    assert TOKEN not in str(caught.value)


async def test_unreadable_success_timeout_and_reset_are_ambiguous(twilio_api: Recorder) -> None:
    """A 201 without a sid, a timeout and a reset after sending may each have created a call."""
    p = make_provider(twilio_api.url, timeout_seconds=0.3)
    twilio_api.replies = [Reply(201, raw=b"<html>"), Reply(hang=True), Reply(reset=True)]
    try:
        for _ in range(3):
            with pytest.raises(StartError) as caught:
                await p.start_call(start_request())
            assert caught.value.kind == "ambiguous"
    finally:
        await p.close()
    assert len(twilio_api.seen) == 3


async def test_connection_refused_is_not_sent() -> None:
    """Nothing listening: the request provably never left, so the claim is released without a dial."""
    p = make_provider(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(StartError) as caught:
            await p.start_call(start_request())
    finally:
        await p.close()
    assert caught.value.kind == "not_sent"


# ---------------------------------------------------------------- lookup and hangup


@pytest.mark.parametrize(
    ("resource", "kind", "outcome", "billsec"),
    [
        ({"status": "queued"}, "ringing", None, 0),
        ({"status": "ringing"}, "ringing", None, 0),
        ({"status": "in-progress"}, "answered", None, 0),
        ({"status": "completed", "duration": "12"}, "ended", Outcome.ANSWERED_HUMAN, 12),
        (
            {"status": "completed", "duration": "12", "answered_by": "machine_start"},
            "ended",
            Outcome.ANSWERED_MACHINE,
            12,
        ),
        ({"status": "completed", "duration": "0"}, "ended", Outcome.UNKNOWN, 0),
        ({"status": "busy", "duration": "0"}, "ended", Outcome.BUSY, 0),
        ({"status": "no-answer", "duration": None}, "ended", Outcome.NO_ANSWER, 0),
        ({"status": "canceled"}, "ended", Outcome.CANCELED, 0),
        ({"status": "failed"}, "ended", Outcome.UNKNOWN, 0),
    ],
    ids=lambda v: "-".join(str(x) for x in v.values()) if isinstance(v, dict) else str(v),
)
async def test_lookup_by_sid_fetches_the_call_resource(
    twilio_api: Recorder,
    provider: TwilioProvider,
    resource: dict[str, Any],
    kind: str,
    outcome: Outcome | None,
    billsec: int,
) -> None:
    """With a call SID, lookup GETs Calls/{Sid}.json and maps the resource's status (no SIP code there)."""
    ended = dt.datetime(2026, 11, 25, 15, 1, 0, tzinfo=dt.UTC)
    twilio_api.replies = [Reply(200, {"sid": CALL_SID, "end_time": rfc2822(ended), **resource})]
    event = await provider.lookup(LookupRequest(ATTEMPT, CALL_SID, "+14155550123", CLAIMED_AT))
    assert event is not None
    assert (event.attempt_id, event.call_id, event.kind, event.outcome, event.billsec) == (
        ATTEMPT,
        CALL_SID,
        kind,
        outcome,
        billsec,
    )
    [seen] = twilio_api.seen
    assert (seen.method, seen.path) == ("GET", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{CALL_SID}.json")
    assert seen.headers["Authorization"] == basic(ACCOUNT, TOKEN)


@pytest.mark.parametrize(
    "reply", [Reply(404, {"code": 20404}), Reply(500, None), Reply(200, raw=b"{}"), Reply(hang=True)]
)
async def test_lookup_by_sid_that_cannot_answer_is_unavailable(twilio_api: Recorder, reply: Reply) -> None:
    """404 for a SID Twilio issued, 5xx, junk or a timeout: "cannot tell now", never "never received"."""
    p = make_provider(twilio_api.url, timeout_seconds=0.3)
    twilio_api.replies = [reply]
    try:
        with pytest.raises(ProviderUnavailable):
            await p.lookup(LookupRequest(ATTEMPT, CALL_SID, "+14155550123", CLAIMED_AT))
    finally:
        await p.close()


def listed(created: dt.datetime | None, **extra: Any) -> dict[str, Any]:
    return {
        "sid": "CA" + uuid.uuid4().hex,
        "to": "+14155550123",
        "direction": "outbound-api",
        "status": "completed",
        "date_created": rfc2822(created) if created else None,
        **extra,
    }


async def test_lookup_without_sid_is_none_only_for_a_complete_empty_list(
    twilio_api: Recorder, provider: TwilioProvider
) -> None:
    """Start answer lost: both complete lists (since the claim's date, and still queued) empty → never received."""
    twilio_api.replies = [Reply(200, {"calls": [], "next_page_uri": None})] * 2
    assert await provider.lookup(LookupRequest(ATTEMPT, None, "+14155550123", CLAIMED_AT)) is None
    assert [(s.method, s.path, s.query) for s in twilio_api.seen] == [
        ("GET", CALLS_PATH, [("To", "+14155550123"), ("StartTime>", "2026-11-25"), ("PageSize", "1000")]),
        ("GET", CALLS_PATH, [("To", "+14155550123"), ("Status", "queued"), ("PageSize", "1000")]),
    ]


async def test_lookup_without_sid_ignores_only_calls_provably_not_ours(
    twilio_api: Recorder, provider: TwilioProvider
) -> None:
    """Earlier calls, inbound calls, <Dial> legs and other numbers are not ours; the rest cannot be told apart."""
    not_ours = [
        listed(CLAIMED_AT - dt.timedelta(minutes=10)),
        listed(CLAIMED_AT + dt.timedelta(seconds=3), direction="inbound"),
        listed(CLAIMED_AT + dt.timedelta(seconds=3), direction="outbound-dial"),
        listed(CLAIMED_AT + dt.timedelta(seconds=3), to="+14155550999"),
    ]
    twilio_api.replies = [Reply(200, {"calls": not_ours, "next_page_uri": None}), Reply(200, {"calls": []})]
    assert await provider.lookup(LookupRequest(ATTEMPT, None, "+14155550123", CLAIMED_AT)) is None

    for maybe_ours in (
        listed(CLAIMED_AT + dt.timedelta(seconds=1)),
        listed(CLAIMED_AT - dt.timedelta(seconds=3)),  # inside the clock-skew margin
        listed(None),  # no creation date: cannot prove anything
    ):
        twilio_api.replies = [Reply(200, {"calls": [*not_ours, maybe_ours]}), Reply(200, {"calls": []})]
        with pytest.raises(ProviderUnavailable, match="cannot tell"):
            await provider.lookup(LookupRequest(ATTEMPT, None, "+14155550123", CLAIMED_AT))

    # A call still queued (no start time, so only the second list shows it) counts too.
    twilio_api.replies = [Reply(200, {"calls": []}), Reply(200, {"calls": [listed(None, status="queued")]})]
    with pytest.raises(ProviderUnavailable):
        await provider.lookup(LookupRequest(ATTEMPT, None, "+14155550123", CLAIMED_AT))


async def test_lookup_without_sid_follows_pages_and_gives_up_on_endless_lists(twilio_api: Recorder) -> None:
    """next_page_uri is followed as given; a list longer than max_lookup_pages is "cannot tell"."""
    p = make_provider(twilio_api.url, max_lookup_pages=2)
    next_uri = f"{CALLS_PATH}?To=%2B14155550123&PageSize=1000&Page=1&PageToken=PA1"
    try:
        twilio_api.replies = [
            Reply(200, {"calls": [listed(CLAIMED_AT - dt.timedelta(hours=1))], "next_page_uri": next_uri}),
            Reply(200, {"calls": [], "next_page_uri": None}),
            Reply(200, {"calls": [], "next_page_uri": None}),
        ]
        assert await p.lookup(LookupRequest(ATTEMPT, None, "+14155550123", CLAIMED_AT)) is None
        assert (twilio_api.seen[1].path, twilio_api.seen[1].query) == (
            CALLS_PATH,
            [("To", "+14155550123"), ("PageSize", "1000"), ("Page", "1"), ("PageToken", "PA1")],
        )
        twilio_api.replies = [Reply(200, {"calls": [], "next_page_uri": next_uri})] * 2
        with pytest.raises(ProviderUnavailable, match="longer than 2 pages"):
            await p.lookup(LookupRequest(ATTEMPT, None, "+14155550123", CLAIMED_AT))
        twilio_api.replies = [Reply(503, None)]
        with pytest.raises(ProviderUnavailable):
            await p.lookup(LookupRequest(ATTEMPT, None, "+14155550123", CLAIMED_AT))
    finally:
        await p.close()


async def test_hangup_cancels_and_completes_only_a_talking_call(
    twilio_api: Recorder, provider: TwilioProvider
) -> None:
    """Hangup POSTs Status=canceled; only when Twilio says the call is talking does it POST Status=completed."""
    call_path = f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{CALL_SID}.json"
    twilio_api.replies = [Reply(200, {"sid": CALL_SID, "status": "canceled"})]
    await provider.hangup(ATTEMPT, CALL_SID)
    twilio_api.replies = [
        Reply(200, {"sid": CALL_SID, "status": "in-progress"}),
        Reply(200, {"sid": CALL_SID, "status": "completed"}),
    ]
    await provider.hangup(ATTEMPT, CALL_SID)
    twilio_api.replies = [Reply(404, {"code": 20404})]
    await provider.hangup(ATTEMPT, CALL_SID)  # already gone: best effort, no error
    await provider.hangup(ATTEMPT, None)  # nothing addressable: nothing sent
    assert [(s.method, s.path, s.form()) for s in twilio_api.seen] == [
        ("POST", call_path, [("Status", "canceled")]),
        ("POST", call_path, [("Status", "canceled")]),
        ("POST", call_path, [("Status", "completed")]),
        ("POST", call_path, [("Status", "canceled")]),
    ]


# ---------------------------------------------------------------- configuration


def account(**options: Any) -> ProviderAccount:
    secrets = {"auth_token": Secret(TOKEN)}
    for key in [k for k in options if k.startswith("secret_")]:
        secrets[key.removeprefix("secret_")] = Secret(options.pop(key))
    opts = {"account_sid": ACCOUNT, "answer_url": ANSWER_URL, **options}
    return ProviderAccount("twilio-main", "twilio", "https://api.twilio.com", 1.0, 5.0, opts, secrets)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"answer_uri": ANSWER_URL}, "unknown twilio options"),
        ({"account_sid": None}, "needs account_sid"),
        ({"account_sid": "AC123"}, "AC followed by 32 hex"),
        ({"twiml": "<Response/>"}, "exactly one of answer_url and twiml"),
        ({"answer_url": None}, "exactly one of answer_url and twiml"),
        ({"machine_detection": "Yes"}, "machine_detection must be one of"),
        ({"twiml": "x" * 4001, "answer_url": None}, "twiml must be 1..4000"),
        ({"secret_api_key_sid": "SK" + "1" * 32}, "needs api_key_secret_env"),
    ],
)
def test_from_account_refuses_incomplete_or_unknown_options(options: dict[str, Any], message: str) -> None:
    """Typos, a missing account SID, both or neither call instructions, bad AMD and half an API key fail at start-up."""
    with pytest.raises(SettingsError, match=message):
        from_account(account(**options), Settings())


def test_from_account_builds_the_provider_without_exposing_secrets() -> None:
    """A valid account builds; its repr names the account, never the auth token."""
    p = from_account(account(machine_detection="Enable", from_number=FROM), Settings())
    assert p.name == "twilio-main" and p.account_sid == ACCOUNT
    assert TOKEN not in repr(p)


# ---------------------------------------------------------------- the simulator's twilio dialect


DIALECT = {"account_sid": ACCOUNT, "auth_token": TOKEN}
# Sorted parameter names (repeats kept) of the start requests the adapter sends with answer_url + AMD.
EXPECTED_SHAPE = tuple(
    sorted(
        [
            "To",
            "From",
            "Url",
            "Timeout",
            "StatusCallback",
            "StatusCallbackMethod",
            *["StatusCallbackEvent"] * len(STATUS_CALLBACK_EVENTS),
            "MachineDetection",
        ]
    )
)


@dataclass
class Inbox:
    """A callback endpoint that parses every status callback with the adapter under test."""

    provider: TwilioProvider | None = None
    url: str = ""
    events: list[CallEvent] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        assert self.provider is not None
        received = CallbackRequest(
            url=self.url + request.path_qs.removeprefix("/cb"),
            headers=request.headers,
            body=await request.read(),
            query=request.query,
            token_attempt_id=request.query.get("attempt"),
        )
        try:
            self.events.append(self.provider.parse_callback(received))
        except CallbackError as exc:
            self.refused.append(exc.reason)
        self.changed.set()
        return web.Response()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def inbox() -> AsyncIterator[Inbox]:
    box = Inbox()
    app = web.Application()
    app.router.add_post("/cb", box.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    box.url = f"http://127.0.0.1:{runner.addresses[0][1]}/cb"
    yield box
    await runner.cleanup()


@pytest.fixture
async def twilio_sim(inbox: Inbox) -> AsyncIterator[Callable[..., Any]]:
    started: list[tuple[Simulator, TwilioProvider]] = []

    async def factory(
        dialect: dict[str, Any] | None = None, **config: Any
    ) -> tuple[Simulator, TwilioProvider]:
        options = {"time_scale": 0.001, "talk_max_seconds": 60.0, "seed": 11, **config}
        sim = Simulator(
            SimulatorConfig(
                dialects=["twilio"], dialect_options={"twilio": {**DIALECT, **(dialect or {})}}, **options
            )
        )
        await sim.start()
        p = make_provider(sim.base_url, machine_detection="Enable")
        inbox.provider = p
        started.append((sim, p))
        return sim, p

    yield factory
    for sim, p in started:
        await p.close()
        await sim.stop()


def sim_request(inbox: Inbox, number: str, **overrides: Any) -> StartRequest:
    attempt = str(uuid.uuid4())
    return start_request(
        attempt_id=attempt, phone=number, callback_url=f"{inbox.url}?attempt={attempt}&token=t", **overrides
    )


async def test_simulator_dialect_round_trip_with_the_adapter(twilio_sim: Any, inbox: Inbox) -> None:
    """Started through the adapter, the simulator answers like Twilio and its signed callbacks parse to outcomes."""
    sim, p = await twilio_sim(
        {"answered_by_last_digit": {"5": "machine_start"}},
        intermediate_events=True,
        duplicate_callback_probability=1.0,
        out_of_order_probability=1.0,
        forced_outcomes={
            "+14155550101": "answered",
            "+14155550105": "answered",
            "+14155550102": "busy",
            "+14155550103": "failed",
            "+14155550104": "congestion",
            "+14155550106": "no-answer",
        },
    )
    expected = {
        "+14155550101": Outcome.ANSWERED_HUMAN,
        "+14155550105": Outcome.ANSWERED_MACHINE,
        "+14155550102": Outcome.BUSY,
        "+14155550103": Outcome.INVALID_NUMBER,
        "+14155550104": Outcome.CONGESTION,
        "+14155550106": Outcome.NO_ANSWER,
    }
    requests = {number: sim_request(inbox, number) for number in expected}
    accepted = {number: await p.start_call(r) for number, r in requests.items()}
    for r in requests.values():
        async with asyncio.timeout(5):
            await sim.wait_ended(r.attempt_id)
    await sim.drain_callbacks()
    assert inbox.refused == []
    for number, r in requests.items():
        events = [e for e in inbox.events if e.attempt_id == r.attempt_id]
        assert {e.call_id for e in events} == {accepted[number].call_id}
        finals = [e for e in events if e.kind == "ended"]
        # Duplicated final, then the stale ringing copy: still only this one outcome, never undone.
        assert len(finals) == 2 and {e.outcome for e in finals} == {expected[number]}
        assert events[-1].kind == "ringing"
        looked_up = await p.lookup(LookupRequest(r.attempt_id, accepted[number].call_id, number, CLAIMED_AT))
        assert looked_up is not None and looked_up.kind == "ended"
    assert sim.stats()["calls_by_status"] == {"completed": 2, "busy": 1, "failed": 2, "no-answer": 1}
    dialect = sim.state.dialects["twilio"]
    assert isinstance(dialect, TwilioDialect)
    assert set(dialect.request_shapes) == {EXPECTED_SHAPE}


async def test_simulator_dialect_refuses_and_fails_like_twilio(twilio_sim: Any, inbox: Inbox) -> None:
    """Wrong credentials → 20003; injected 429 → 20429 not processed; a 5xx before creating leaves nothing to find."""
    sim, p = await twilio_sim(rate_limit_429_probability=1.0)
    wrong = TwilioProvider(sim.base_url, ACCOUNT, "wrong-token", answer_url=ANSWER_URL, from_number=FROM)
    try:
        with pytest.raises(StartError) as caught:
            await wrong.start_call(sim_request(inbox, "+14155550107"))
        assert (caught.value.kind, caught.value.outcome, caught.value.raw_status) == (
            "rejected",
            Outcome.ACCOUNT_ERROR,
            "20003",
        )
    finally:
        await wrong.close()
    with pytest.raises(StartError) as caught:
        await p.start_call(sim_request(inbox, "+14155550107"))
    assert (caught.value.kind, caught.value.raw_status) == ("rate_limited", "20429")

    sim, p = await twilio_sim(error_5xx_probability=1.0)
    request = sim_request(inbox, "+14155550108")
    with pytest.raises(StartError) as caught:
        await p.start_call(request)
    assert caught.value.kind == "ambiguous"
    assert (
        await p.lookup(LookupRequest(request.attempt_id, None, request.phone, dt.datetime.now(dt.UTC)))
        is None
    )
    assert sim.stats()["calls_started"] == 0


async def test_simulator_dialect_call_created_behind_a_5xx_is_never_declared_lost(
    twilio_sim: Any, inbox: Inbox
) -> None:
    """A 500 after the call exists: listing by number finds it, so lookup says "cannot tell", not "never received"."""
    _, p = await twilio_sim(error_5xx_after_create_probability=1.0, forced_outcomes={"+14155550109": "busy"})
    claimed = dt.datetime.now(dt.UTC)
    request = sim_request(inbox, "+14155550109")
    with pytest.raises(StartError) as caught:
        await p.start_call(request)
    assert caught.value.kind == "ambiguous"
    with pytest.raises(ProviderUnavailable, match="cannot tell"):
        await p.lookup(LookupRequest(request.attempt_id, None, request.phone, claimed))
    # The callback still names the attempt through its URL, which is how the worker learns the outcome.
    await inbox.wait_for(
        lambda: any(e.attempt_id == request.attempt_id and e.kind == "ended" for e in inbox.events)
    )


async def test_simulator_dialect_hangup_cancels_a_ringing_call(twilio_sim: Any, inbox: Inbox) -> None:
    """POST Status=canceled on a ringing call ends it as canceled, reported by a signed completed callback."""
    sim, p = await twilio_sim(forced_outcomes={"+14155550110": "no-answer"}, time_scale=1.0)
    request = sim_request(inbox, "+14155550110", ring_timeout_seconds=600)
    accepted = await p.start_call(request)
    await p.hangup(request.attempt_id, accepted.call_id)
    record = sim.lookup(request.attempt_id)
    assert record is not None and record["status"] == "canceled"
    await inbox.wait_for(lambda: any(e.attempt_id == request.attempt_id for e in inbox.events))
    [event] = [e for e in inbox.events if e.attempt_id == request.attempt_id]
    assert (event.kind, event.outcome, event.sip_code) == ("ended", Outcome.CANCELED, 487)


async def test_simulator_dialect_validates_requests_like_the_api(twilio_sim: Any, inbox: Inbox) -> None:
    """Unknown parameters, bad numbers and missing call instructions get Twilio-shaped 400s."""
    sim, _ = await twilio_sim()
    auth = {"Authorization": basic(ACCOUNT, TOKEN)}
    good = {
        "To": "+14155550111",
        "From": FROM,
        "Url": ANSWER_URL,
        "StatusCallback": f"{inbox.url}?attempt=a1",
    }
    cases = [
        ({**good, "Campaign": "x"}, 21200),
        ({**good, "To": "4155550111"}, 21211),
        ({**good, "From": ""}, 21213),
        ({k: v for k, v in good.items() if k != "Url"}, 21200),
        ({**good, "MachineDetection": "Maybe"}, 21200),
    ]
    async with aiohttp.ClientSession() as http:
        for form, code in cases:
            async with http.post(f"{sim.base_url}{CALLS_PATH}", data=form, headers=auth) as resp:
                body = await resp.json()
                assert (resp.status, body["code"], body["status"]) == (400, code, 400)
        async with http.post(f"{sim.base_url}{CALLS_PATH}", data=good, headers=auth) as resp:
            created = await resp.json()
            assert (resp.status, created["status"], created["account_sid"]) == (201, "queued", ACCOUNT)
    assert sim.stats()["rejected_by_reason"] == {"invalid": 5}


def test_simulator_dialect_options_are_checked() -> None:
    """The dialect needs an account SID and token, and refuses unknown options."""
    with pytest.raises(ValueError, match="needs account_sid and auth_token"):
        TwilioDialect({"account_sid": ACCOUNT}, SimulatorConfig())
    with pytest.raises(ValueError, match="unknown"):
        TwilioDialect({**DIALECT, "token": "x"}, SimulatorConfig())
    with pytest.raises(ValueError, match="AC followed by"):
        TwilioDialect({**DIALECT, "account_sid": "AC1"}, SimulatorConfig())


# ---------------------------------------------------------------- the whole pipeline


# Last digit of the number → (simulated outcome, outcome the worker must record, attempts).
PLAN = {
    "0": ("answered", Outcome.ANSWERED_HUMAN, 1),
    "1": ("busy", Outcome.BUSY, 2),
    "2": ("no-answer", Outcome.NO_ANSWER, 2),
    "3": ("failed", Outcome.INVALID_NUMBER, 1),
    "4": ("congestion", Outcome.CONGESTION, 2),
    "5": ("answered", Outcome.ANSWERED_MACHINE, 2),
    "6": ("answered", Outcome.ANSWERED_HUMAN, 1),
    "7": ("busy", Outcome.BUSY, 2),
    "8": ("failed", Outcome.INVALID_NUMBER, 1),
    "9": ("answered", Outcome.ANSWERED_HUMAN, 1),
}


@pytest.mark.slow
async def test_three_workers_dial_through_twilio_dialect(dsn: str, conn: asyncpg.Connection) -> None:
    """3 workers → Twilio adapter → simulator (twilio dialect) → signed callbacks → outcomes and retries."""
    async with simulator(
        time_scale=0.002,
        talk_max_seconds=120.0,
        intermediate_events=True,
        duplicate_callback_probability=0.2,
        out_of_order_probability=0.2,
        force_by_last_digit={digit: plan[0] for digit, plan in PLAN.items()},
        dialects=["twilio"],
        dialect_options={"twilio": {**DIALECT, "answered_by_last_digit": {"5": "machine_end_beep"}}},
    ) as sim:
        now = dt.datetime.now(dt.UTC)
        campaign = await make_campaign(
            conn,
            name="twilio-run",
            provider="twilio-main",
            now=now,
            max_concurrent_calls=10,
            max_calls_per_second=50,
            max_retries=1,
            retry_wait_seconds=1,
            ring_timeout_seconds=20,
        )
        await add_numbers(conn, campaign["id"], 30, now=now)
        accounts = [
            {
                "name": "twilio-main",
                "kind": "twilio",
                "base_url": sim.base_url,
                "account_sid": ACCOUNT,
                "auth_token_env": "TEST_TWILIO_AUTH_TOKEN",
                "answer_url": ANSWER_URL,
                "machine_detection": "Enable",
                "from_number": FROM,
            }
        ]
        env = {"DIALER_PROVIDERS": json.dumps(accounts), "TEST_TWILIO_AUTH_TOKEN": TOKEN}
        workers = [spawn(dsn, sim.base_url, **env) for _ in range(3)]
        with reap(workers):
            await wait_ready(workers)
            await wait_until(
                conn,
                "SELECT status = 'finished' FROM dialer_campaign WHERE id = $1",
                campaign["id"],
                timeout=30,
            )

        numbers = await conn.fetch("SELECT id, phone, status, attempts FROM dialer_number")
        attempts = await conn.fetch("SELECT * FROM dialer_attempt ORDER BY claimed_at")
        assert len(numbers) == 30
        for number in numbers:
            _, outcome, tries = PLAN[number["phone"][-1]]
            mine = [a for a in attempts if a["number_id"] == number["id"]]
            assert [a["outcome"] for a in mine] == [outcome.value] * tries, number["phone"]
            assert number["status"] == ("completed" if outcome is Outcome.ANSWERED_HUMAN else "failed")
            assert all(a["state"] == "ended" and a["provider_call_id"].startswith("CA") for a in mine)
        # Outcomes that only the signed callbacks carry (SIP codes; the resource has none).
        invalid = [a for a in attempts if a["outcome"] == Outcome.INVALID_NUMBER.value]
        assert invalid and {a["sip_code"] for a in invalid} == {404}

        stats = sim.stats()
        assert stats["duplicate_start_requests"] == 0
        assert stats["calls_started"] == len(attempts) == sum(plan[2] for plan in PLAN.values()) * 3
        assert stats["callbacks_failed"] == 0  # every callback's signature was accepted by a worker
        assert {e["attempt_id"] for e in sim.log() if e["response_status"] == 201} == {
            str(a["id"]) for a in attempts
        }
        dialect = sim.state.dialects["twilio"]
        assert isinstance(dialect, TwilioDialect)
        assert set(dialect.request_shapes) == {EXPECTED_SHAPE}
