"""The Paycall adapter and simulator dialect against the seed document (001, Dynamic Dialer API v2.1).

Request and CDR values come from the seed's own examples; where the scanned seed garbles them
("step id", "NORMAL CLEARING", timestamps broken across lines) the underscore and one-line forms its
field tables use are restored.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import datetime as dt
import io
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

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
    callback_token,
)
from dialer.providers.paycall import PaycallProvider, from_account, parse_cdr_csv
from dialer.settings import Secret, Settings, SettingsError
from dialer.simulator import Simulator, SimulatorConfig
from scheduler.outcomes import Outcome
from tests.factories import add_numbers, make_campaign, phone
from tests.workers import SECRET, reap, simulator, spawn, wait_ready, wait_until

# The seed's curl examples authenticate as http://user:password@api.dialer.co.il/...
USER, PASSWORD = "user", "password"
BASIC = "Basic " + base64.b64encode(b"user:password").decode()

# "Example for General API" and the full JSON example.
SEED_UNIQUE_ID = "bf0c60b2-c29a-11e5-9265-fcaa1417781c"
SEED_RETURN_ADDRESS = "http://service.example.com/foo"
SEED_CLI = "030000000"
SEED_IVR: dict[str, Any] = {
    "count_steps": 2,
    "have_dependency": "true",
    "steps": [
        {
            "step_id": "foo",
            "gender": "female",
            "prompt": "לחץ על אחד בשביל להגיע ליעד הבא, אחד עשרה בשביל לנגן, ",
            "dtmf_ivr": ["1", "11", "0", "4"],
            "dtmf_ivr_timeout": 1,
            "dtmf_ivr_invalid_text": "המקש שנלחץ אינו נתמך,",
            "dtmf_ivr_retries": 10,
            "actions": [
                {
                    "key": "11",
                    "actions": [
                        {"action": "play", "params": {"text": "תודה שלחצת על אחד עשרה", "gender": "male"}},
                        {"action": "wait", "params": {"sleep": 0.5}},
                        {"action": "hangup"},
                    ],
                },
                {"key": "1", "actions": [{"action": "goto", "params": {"step_id": "bar"}}]},
                {"key": "4", "actions": [{"action": "wait", "params": {"sleep": 10}}]},
            ],
        },
        {
            "step_id": "bar",
            "gender": "male",
            "prompt": "האם תעקוב אחר הארנב הלבן? 1 - כן, 2 - לא",
            "dtmf_ivr": ["1", "2"],
            "dtmf_ivr_timeout": 1,
            "dtmf_ivr_invalid_text": "המקש אינו חוקי כאן",
            "dtmf_ivr_retries": 10,
            "actions": [
                {
                    "key": "1",
                    "actions": [
                        {
                            "action": "call",
                            "params": {"number": "053000000", "cli": "054000000", "dtmf_keys": "WWW111113"},
                        }
                    ],
                },
                {"key": "2", "actions": [{"action": "hangup"}]},
            ],
        },
    ],
}
# simple_test.json
SIMPLE_UNIQUE_ID = "4aa2f0be-97c1-44a2-b68d-b3601f7374f8"
SIMPLE_OPTIONS: dict[str, Any] = {
    "tts": "true",
    "gender": "male",
    "sound": "This is a test",
    "answer_delay": 1,
    "leg_b": "972501234567",
    "cid_b": "",
    "dtmf_b": "97231234567",
}
# The CDR examples' campaign.
CDR_CAMPAIGN = "2743976e-6030-455a-821f-8d671463d3ba"
STEPS = '"{""steps"":[{""dtmf"":""12"",""step_name"":""foo""}],""invalid"":[],""unique_id"":""2743976e-6030-455a-821f-8d671463d3ba""}"'
HEADER = "cli,phone_number,start_time,answer_time,hangup_time,duration,billsec,hangup_cause,unique_campaign_id,steps"
# The cdr_by_number example verbatim (one line): its row puts cli after hangup_cause.
SEED_BY_NUMBER = (
    HEADER + "\r\n"
    '"972501234567","2016-03-30 15:17:03+03","2016-03-30 15:17:08+03","2016-03-30 15:17:12+03",'
    f'"9","4","NORMAL_CLEARING","031234567","{CDR_CAMPAIGN}",{STEPS}\r\n'
)
IL = dt.timezone(dt.timedelta(hours=3))


# --------------------------------------------------------------------------------- fake Paycall


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"status": "success"}'
    content_type: str = "application/json"
    stall: bool = False


@dataclass
class FakePaycall:
    """A local HTTP server that records every request and answers from a queue (default: success)."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path_qs, dict(request.headers), body))
        self.arrived.set()
        reply = self.replies.pop(0) if self.replies else Reply()
        if reply.stall:
            await self.release.wait()
        return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.seen) < count:
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def paycall() -> AsyncIterator[FakePaycall]:
    fake = FakePaycall()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    fake.release.set()
    await runner.cleanup()


@pytest.fixture
async def adapter(paycall: FakePaycall) -> AsyncIterator[PaycallProvider]:
    provider = PaycallProvider(paycall.url, USER, PASSWORD, ivr=SEED_IVR, timeout_seconds=0.5)
    yield provider
    await provider.close()


def start_request(
    attempt_id: str = SEED_UNIQUE_ID,
    phone_number: str = "+97272000000",
    caller_id: str | None = SEED_CLI,
    dtmf: str | None = "w1#113",
) -> StartRequest:
    return StartRequest(
        attempt_id=attempt_id,
        phone=phone_number,
        caller_id=caller_id,
        dtmf=dtmf,
        ring_timeout_seconds=15,
        callback_url=f"{SEED_RETURN_ADDRESS}?attempt={attempt_id}&token=t0k3n",
        campaign="c1",
    )


def canonical(value: Any) -> bytes:
    """JSON with sorted keys: tells "false" from False and 0 from False, which == does not."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def account(base_url: str = "http://paycall.test", **options: Any) -> ProviderAccount:
    return ProviderAccount(
        name="pc",
        kind="paycall",
        base_url=base_url,
        timeout_seconds=0.5,
        options={"username": USER, **options},
        secrets={"password": Secret(PASSWORD)},
    )


# ------------------------------------------------------------------------------------- contract


async def test_dialer_start_sends_the_seed_request(paycall: FakePaycall, adapter: PaycallProvider) -> None:
    """POST /v2/calls/dialer with Basic auth and a JSON body of exactly the seed's fields and flag strings."""
    accepted = await adapter.start_call(start_request())
    assert accepted.call_id == SEED_UNIQUE_ID
    [req] = paycall.seen
    assert (req.method, req.path) == ("POST", "/v2/calls/dialer")
    assert req.headers["Authorization"] == BASIC
    assert req.headers["Content-Type"] == "application/json"
    expected = {
        "unique_id": SEED_UNIQUE_ID,
        "return_address": f"{SEED_RETURN_ADDRESS}?attempt={SEED_UNIQUE_ID}&token=t0k3n",
        "max_retries": 0,
        "ring_timeout": 15,
        "numbers_from_queue": "false",
        "number": "97272000000",
        "cli": SEED_CLI,
        "dtmf_originator": "w1#113",
        "ivr": SEED_IVR,
    }
    assert canonical(req.json()) == canonical(expected)


async def test_dialer_start_leaves_out_what_it_has_no_value_for(
    paycall: FakePaycall, adapter: PaycallProvider
) -> None:
    """No caller id means no `cli` (Paycall hides it) and no DTMF means no `dtmf_originator`."""
    await adapter.start_call(start_request(caller_id=None, dtmf=None))
    body = paycall.seen[0].json()
    assert "cli" not in body and "dtmf_originator" not in body
    assert body["number"] == "97272000000"


async def test_simple_dialer_flow_creates_then_starts_the_campaign(paycall: FakePaycall) -> None:
    """simple_dialer carries simple_test.json's fields (max_retries 0), then start_campaign/{unique_id} starts it."""
    provider = from_account(account(paycall.url, flow="simple_dialer", **SIMPLE_OPTIONS), Settings())
    try:
        request = start_request(SIMPLE_UNIQUE_ID, "+97231234567", "0501234567", None)
        assert (await provider.start_call(request)).call_id == SIMPLE_UNIQUE_ID
    finally:
        await provider.close()
    create, start = paycall.seen
    assert (create.method, create.path) == ("POST", "/v2/calls/simple_dialer")
    assert create.headers["Authorization"] == BASIC
    assert canonical(create.json()) == canonical(
        {
            "unique_id": SIMPLE_UNIQUE_ID,
            "from_campaign": "false",
            "leg_a": "97231234567",
            "cid_a": "0501234567",
            "tts": "true",
            "sound": "This is a test",
            "gender": "male",
            "answer_delay": 1,
            "ring_timeout": 15,
            "max_retries": 0,
            "leg_b": "972501234567",
            "cid_b": "",
            "dtmf_b": "97231234567",
        }
    )
    assert (start.method, start.path, start.body) == (
        "POST",
        f"/v2/calls/start_campaign/{SIMPLE_UNIQUE_ID}",
        b"",
    )
    assert start.headers["Authorization"] == BASIC


def test_from_account_writes_flags_as_strings() -> None:
    """JSON booleans in the account's ivr become the strings "true"/"false" Paycall reads."""
    ivr = {**SEED_IVR, "have_dependency": True, "steps": [{**SEED_IVR["steps"][0], "prompt_is_file": False}]}
    provider = from_account(account(ivr=ivr), Settings())
    body = provider.dialer_body(start_request())
    assert body["ivr"]["have_dependency"] == "true"
    assert body["ivr"]["steps"][0]["prompt_is_file"] == "false"
    assert body["ivr"]["count_steps"] == 2


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"ivr": {**SEED_IVR, "have_dependency": "yes"}}, "have_dependency"),
        ({}, "ivr"),
        ({"ivr": {"count_steps": 1, "steps": []}}, "steps"),
        ({"ivr": SEED_IVR, "username": "a:b"}, "username"),
        ({"ivr": SEED_IVR, "schedule": 300}, "unknown options"),
        ({"flow": "simple_dialer"}, "sound"),
        ({"flow": "simple_dialer", "sound": "hi", "tts": "yes"}, "tts"),
        ({"flow": "campaign"}, "flow"),
    ],
)
def test_from_account_refuses_bad_configuration(options: dict[str, Any], complaint: str) -> None:
    """Account options that would send Paycall a wrong request fail at start-up, naming the option."""
    with pytest.raises(SettingsError, match=complaint):
        from_account(account(**options), Settings())


async def test_secrets_stay_out_of_repr_and_errors(paycall: FakePaycall) -> None:
    """The password appears in no repr, error message or raw status, even when Paycall refuses it."""
    secret = "s3cr3t-Pa55"
    provider = from_account(
        replace(account(paycall.url, ivr=SEED_IVR), secrets={"password": Secret(secret)}), Settings()
    )
    paycall.replies.append(Reply(401, b'{"status": "failed", "error": "authentication error"}'))
    try:
        with pytest.raises(StartError) as caught:
            await provider.start_call(start_request())
    finally:
        await provider.close()
    assert (
        paycall.seen[0].headers["Authorization"]
        == "Basic " + base64.b64encode(b"user:" + secret.encode()).decode()
    )
    texts = [repr(provider), str(caught.value), caught.value.raw_status or "", str(vars(provider))]
    assert not [t for t in texts if secret in t]


# -------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("reply", "kind", "outcome"),
    [
        (
            Reply(401, b'{"status": "failed", "error": "authentication error"}'),
            "rejected",
            Outcome.ACCOUNT_ERROR,
        ),
        (Reply(403, b"Forbidden", "text/plain"), "rejected", Outcome.ACCOUNT_ERROR),
        (
            Reply(400, b'{"status": "failed", "error": "number is invalid"}'),
            "rejected",
            Outcome.INVALID_NUMBER,
        ),
        (
            Reply(200, b'{"status": "failed", "error": "Invalid E.164 phone number"}'),
            "rejected",
            Outcome.INVALID_NUMBER,
        ),
        (Reply(400, b'{"error": "return_address is missing"}'), "rejected", Outcome.ACCOUNT_ERROR),
        (Reply(400, b'{"error": "cli is not a valid phone number"}'), "rejected", Outcome.ACCOUNT_ERROR),
        (Reply(404, b"<html>not found</html>", "text/html"), "rejected", Outcome.ACCOUNT_ERROR),
        (Reply(429, b'{"error": "too many requests"}'), "ambiguous", None),
        (Reply(500, b'{"error": "internal error"}'), "ambiguous", None),
        (Reply(503, b"", "text/plain"), "ambiguous", None),
        (Reply(200, b"OK", "text/plain"), "ambiguous", None),
    ],
    ids=[
        "401",
        "403",
        "400-invalid-number",
        "200-with-error-key",
        "400-content",
        "400-cli-not-number",
        "404-wrong-base-url",
        "429-undocumented",
        "500",
        "503",
        "200-not-json",
    ],
)
async def test_start_errors_are_classified(
    paycall: FakePaycall, adapter: PaycallProvider, reply: Reply, kind: str, outcome: Outcome | None
) -> None:
    """Each documented failure maps to the StartError kind and outcome the worker acts on."""
    paycall.replies.append(reply)
    with pytest.raises(StartError) as caught:
        await adapter.start_call(start_request())
    assert (caught.value.kind, caught.value.outcome) == (kind, outcome)


async def test_timeout_after_sending_is_ambiguous(paycall: FakePaycall, adapter: PaycallProvider) -> None:
    """A request that got no answer within the timeout may have dialed: ambiguous, never redialed blind."""
    paycall.replies.append(Reply(stall=True))
    with pytest.raises(StartError) as caught:
        await adapter.start_call(start_request())
    assert caught.value.kind == "ambiguous"
    assert len(paycall.seen) == 1


async def test_connection_refused_is_not_sent() -> None:
    """Nothing listening: provably never sent."""
    provider = PaycallProvider(f"http://127.0.0.1:{free_port()}", USER, PASSWORD, ivr=SEED_IVR)
    try:
        with pytest.raises(StartError) as caught:
            await provider.start_call(start_request())
    finally:
        await provider.close()
    assert caught.value.kind == "not_sent"


@pytest.mark.parametrize(
    ("replies", "kind", "requests"),
    [
        ([Reply(503, b"")], "not_sent", 1),
        ([Reply(stall=True)], "not_sent", 1),
        ([Reply(), Reply(503, b"")], "ambiguous", 2),
        ([Reply(), Reply(400, b'{"error": "no campaign with this unique_id"}')], "rejected", 2),
    ],
    ids=["create-5xx", "create-timeout", "start-5xx", "start-refused"],
)
async def test_simple_dialer_failures_before_start_campaign_dial_nobody(
    paycall: FakePaycall, replies: list[Reply], kind: str, requests: int
) -> None:
    """A failed simple_dialer is safe to requeue (no call without start_campaign); a failed start is not."""
    provider = from_account(account(paycall.url, flow="simple_dialer", sound="hi"), Settings())
    paycall.replies.extend(replies)
    try:
        with pytest.raises(StartError) as caught:
            await provider.start_call(start_request())
    finally:
        await provider.close()
    assert caught.value.kind == kind
    assert len(paycall.seen) == requests


# ------------------------------------------------------------------------------------ callbacks


def cdr_json(**overrides: Any) -> dict[str, Any]:
    """The first row of the seed's cdr_by_campaign example as a JSON callback body."""
    return {
        "cli": "031234567",
        "phone_number": "972501234567",
        "start_time": "2016-03-30 14:53:50+03",
        "answer_time": "2016-03-30 14:53:55+03",
        "hangup_time": "2016-03-30 14:54:06+03",
        "duration": "16",
        "billsec": "11",
        "hangup_cause": "NORMAL_CLEARING",
        "unique_campaign_id": CDR_CAMPAIGN,
        "steps": json.dumps(
            {"steps": [{"dtmf": "12", "step_name": "foo"}], "invalid": [], "unique_id": CDR_CAMPAIGN}
        ),
        **overrides,
    }


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows in the seed's CDR CSV form: header, every field quoted, CRLF."""
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(HEADER.split(","))
    writer.writerows([row[c] for c in HEADER.split(",")] for row in rows)
    return out.getvalue()


def callback(
    body: bytes, token_attempt_id: str | None = CDR_CAMPAIGN, content_type: str = "application/json"
) -> CallbackRequest:
    query = {} if token_attempt_id is None else {"attempt": token_attempt_id, "token": "t"}
    return CallbackRequest(
        url=f"https://dialer.example/callbacks/pc?attempt={token_attempt_id}&token=t",
        headers={"Content-Type": content_type},
        body=body,
        query=query,
        token_attempt_id=token_attempt_id,
    )


ANSWERED = CallEvent(
    attempt_id=CDR_CAMPAIGN,
    call_id=CDR_CAMPAIGN,
    kind="ended",
    outcome=Outcome.ANSWERED_HUMAN,
    answered_at=dt.datetime(2016, 3, 30, 14, 53, 55, tzinfo=IL),
    ended_at=dt.datetime(2016, 3, 30, 14, 54, 6, tzinfo=IL),
    duration_seconds=16.0,
    billsec=11,
    raw_cause="NORMAL_CLEARING",
    dtmf="12",  # the keys the callee pressed, from the CDR's steps report
)


def test_callback_with_token_becomes_the_ended_event(adapter: PaycallProvider) -> None:
    """A CDR-shaped JSON callback on a tokened URL is the call's final event, attempt id from the token."""
    assert adapter.parse_callback(callback(orjson.dumps(cdr_json()))) == ANSWERED


def test_callback_in_form_or_csv_encoding_reads_the_same(adapter: PaycallProvider) -> None:
    """The undocumented body is also read form-encoded or as a one-row CDR CSV, to the same event."""
    for body, content_type in (
        (urlencode(cdr_json()).encode(), "application/x-www-form-urlencoded"),
        (csv_text([cdr_json()]).encode(), "text/csv"),
    ):
        assert adapter.parse_callback(callback(body, content_type=content_type)) == ANSWERED


def test_callback_without_token_is_refused(adapter: PaycallProvider) -> None:
    """Paycall signs nothing: without our per-attempt token on the URL a callback is forged until proven not."""
    with pytest.raises(CallbackError) as caught:
        adapter.parse_callback(callback(orjson.dumps(cdr_json()), token_attempt_id=None))
    assert caught.value.reason == "bad_signature"


@pytest.mark.parametrize("column", ["unique_campaign_id", "unique_id"])
def test_callback_body_naming_another_attempt_is_refused(adapter: PaycallProvider, column: str) -> None:
    """A valid token with a body about another attempt (a tampered or misrouted body) is refused."""
    body = orjson.dumps(cdr_json(**{column: "00000000-0000-4000-8000-000000000000"}))
    with pytest.raises(CallbackError) as caught:
        adapter.parse_callback(callback(body))
    assert caught.value.reason == "bad_signature"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        orjson.dumps(
            {"steps": [{"dtmf": "12", "step_name": "foo"}], "invalid": [], "unique_id": CDR_CAMPAIGN}
        ),
        orjson.dumps({k: v for k, v in cdr_json().items() if k not in ("answer_time", "billsec")}),
        orjson.dumps(cdr_json(answer_time="yesterday")),
        orjson.dumps(cdr_json(billsec="-3")),
        orjson.dumps(cdr_json(hangup_cause="normal clearing!")),
    ],
    ids=[
        "not-json",
        "not-object",
        "steps-only",
        "no-answer-signal",
        "bad-time",
        "negative-billsec",
        "bad-cause",
    ],
)
def test_malformed_callbacks_are_refused(adapter: PaycallProvider, body: bytes) -> None:
    """A body that does not say how the call ended is malformed, never guessed into an outcome."""
    with pytest.raises(CallbackError) as caught:
        adapter.parse_callback(callback(body))
    assert caught.value.reason == "malformed"


@pytest.mark.parametrize(
    ("cause", "answered", "outcome"),
    [
        ("NORMAL_CLEARING", True, Outcome.ANSWERED_HUMAN),
        ("NORMAL CLEARING", True, Outcome.ANSWERED_HUMAN),  # the seed's example spelling
        ("ALLOTTED_TIMEOUT", True, Outcome.ANSWERED_HUMAN),
        ("USER_BUSY", True, Outcome.ANSWERED_HUMAN),  # answer_time decides, not the cause
        ("NORMAL_CLEARING", False, Outcome.UNKNOWN),
        ("ALLOTTED_TIMEOUT", False, Outcome.NO_ANSWER),
        ("USER_BUSY", False, Outcome.BUSY),
        ("NO_ANSWER", False, Outcome.NO_ANSWER),
        ("NO_USER_RESPONSE", False, Outcome.NO_ANSWER),
        ("CALL_REJECTED", False, Outcome.REJECTED),
        ("NORMAL_TEMPORARY_FAILURE", False, Outcome.CONGESTION),
        ("RECOVERY_ON_TIMER_EXPIRE", False, Outcome.CONGESTION),
        ("NO_ROUTE_TRANSIT_NET", False, Outcome.INVALID_NUMBER),
        ("NO_ROUTE_DESTINATION", False, Outcome.INVALID_NUMBER),
        ("UNALLOCATED_NUMBER", False, Outcome.INVALID_NUMBER),
        ("SOME_FUTURE_CAUSE", False, Outcome.UNKNOWN),
    ],
)
def test_hangup_cause_table_maps_to_outcomes(
    adapter: PaycallProvider, cause: str, answered: bool, outcome: Outcome
) -> None:
    """Every hangup_cause of the seed's table, answered or not, maps as providers.md §6 says."""
    fields = cdr_json(hangup_cause=cause)
    if not answered:
        fields.update(answer_time="", billsec="0", duration="15")
    event = adapter.parse_callback(callback(orjson.dumps(fields)))
    assert (event.kind, event.outcome) == ("ended", outcome)
    assert (event.answered_at is not None) is answered


# --------------------------------------------------------------------------------------- lookup


def lookup_request(attempt_id: str = CDR_CAMPAIGN) -> LookupRequest:
    return LookupRequest(
        attempt_id, attempt_id, "+972501234567", dt.datetime(2016, 3, 30, 12, 17, tzinfo=dt.UTC)
    )


async def test_lookup_reads_the_seed_cdr_by_number_example(
    paycall: FakePaycall, adapter: PaycallProvider
) -> None:
    """GET cdr_by_number/{unique_id}/{phone} with Basic auth; the seed's example row (cli moved) is read right."""
    paycall.replies.append(Reply(200, SEED_BY_NUMBER.encode(), "text/csv"))
    event = await adapter.lookup(lookup_request())
    [req] = paycall.seen
    assert (req.method, req.path) == ("GET", f"/v2/calls/cdr_by_number/{CDR_CAMPAIGN}/972501234567")
    assert req.headers["Authorization"] == BASIC
    assert event == CallEvent(
        attempt_id=CDR_CAMPAIGN,
        call_id=CDR_CAMPAIGN,
        kind="ended",
        outcome=Outcome.ANSWERED_HUMAN,
        answered_at=dt.datetime(2016, 3, 30, 15, 17, 8, tzinfo=IL),
        ended_at=dt.datetime(2016, 3, 30, 15, 17, 12, tzinfo=IL),
        duration_seconds=9.0,
        billsec=4,
        raw_cause="NORMAL_CLEARING",
    )


async def test_lookup_of_an_unanswered_call(paycall: FakePaycall, adapter: PaycallProvider) -> None:
    """An empty answer_time is an unanswered call, whatever else the row says."""
    row = f'"031234567","972501234567","2016-03-30 15:17:03+03","","2016-03-30 15:17:18+03","15","0","NO_ANSWER","{CDR_CAMPAIGN}",""\r\n'
    paycall.replies.append(Reply(200, (HEADER + "\r\n" + row).encode(), "text/csv"))
    event = await adapter.lookup(lookup_request())
    assert event is not None
    assert (event.outcome, event.answered_at, event.billsec) == (Outcome.NO_ANSWER, None, 0)


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, (HEADER + "\r\n").encode(), "text/csv"),
        Reply(404, b'{"status": "failed", "error": "no campaign with this unique_id"}'),
        Reply(200, b'{"error": "campaign not found"}'),
        Reply(500, b""),
        Reply(200, (HEADER + '\r\n"1","2"\r\n').encode(), "text/csv"),
        Reply(stall=True),
    ],
    ids=["no-row-yet", "404-json", "200-json-error", "500", "malformed-csv", "timeout"],
)
async def test_lookup_never_claims_the_call_was_not_received(
    paycall: FakePaycall, adapter: PaycallProvider, reply: Reply
) -> None:
    """No documented answer proves Paycall never got the start: lookup says unavailable, never None."""
    paycall.replies.append(reply)
    with pytest.raises(ProviderUnavailable):
        await adapter.lookup(lookup_request())


# ------------------------------------------------------------------------------------------ CSV

# The cdr_by_campaign example's first two rows as the seed prints them (", " between fields, the
# "phone number" header spelling), an unanswered row, and a cli with a quoted comma; CRLF throughout.
CAMPAIGN_CSV = (
    "cli, phone number, start time, answer time, hangup time, duration, billsec, hangup cause, unique campaign id, steps\r\n"
    f'"031234567", "972501234567", "2016-03-30 14:53:50+03", "2016-03-30 14:53:55+03", "2016-03-30 14:54:06+03","16","11","NORMAL CLEARING","{CDR_CAMPAIGN}",{STEPS}\r\n'
    f'"031234567", "972501234568", "2016-03-30 15:10:41+03", "2016-03-30 15:10:46+03", "2016-03-30 15:10:54+03","13","8","NORMAL_CLEARING","{CDR_CAMPAIGN}",{STEPS}\r\n'
    f'"031234567", "972501234569", "2016-03-30 15:14:28+03", "", "2016-03-30 15:14:43+03","15","0","USER_BUSY","{CDR_CAMPAIGN}",""\r\n'
    f'"03,1234567", "972501234560", "2016-03-30 15:17:03+03", "", "2016-03-30 15:17:04+03","1","0","UNALLOCATED_NUMBER","{CDR_CAMPAIGN}",""\r\n'
)


def test_parse_cdr_csv_reads_a_whole_campaign() -> None:
    """Quoted fields, doubled quotes, quoted commas, CRLF, spaced header names and an unanswered row."""
    events = list(parse_cdr_csv(CAMPAIGN_CSV))
    assert [(e.outcome, e.billsec, e.duration_seconds) for e in events] == [
        (Outcome.ANSWERED_HUMAN, 11, 16.0),
        (Outcome.ANSWERED_HUMAN, 8, 13.0),
        (Outcome.BUSY, 0, 15.0),
        (Outcome.INVALID_NUMBER, 0, 1.0),
    ]
    assert {e.attempt_id for e in events} == {CDR_CAMPAIGN}
    assert events[0].answered_at == dt.datetime(2016, 3, 30, 14, 53, 55, tzinfo=IL)
    assert events[2].answered_at is None and events[2].raw_cause == "USER_BUSY"


def test_parse_cdr_csv_names_the_malformed_line() -> None:
    """A bad row stops ingest with a ValueError naming its line, after yielding the good rows before it."""
    broken = (
        CAMPAIGN_CSV
        + f'"031234567","972501234571","2016-03-30 16:57:20+03","","soon","9","0","NO_ANSWER","{CDR_CAMPAIGN}",""\r\n'
    )
    events = parse_cdr_csv(broken)
    assert len([next(events) for _ in range(4)]) == 4
    with pytest.raises(ValueError, match=r"CDR line 6: hangup_time 'soon'"):
        next(events)
    with pytest.raises(ValueError, match=r"CDR line 3: 3 fields where the header has 10"):
        list(parse_cdr_csv(HEADER + "\r\n" + CAMPAIGN_CSV.split("\r\n")[1] + '\r\n"a","b","c"\r\n'))
    with pytest.raises(ValueError, match=r"CDR line 1: header lacks \['hangup_cause'\]"):
        list(
            parse_cdr_csv(
                "cli,phone_number,start_time,answer_time,hangup_time,duration,billsec,unique_campaign_id\r\n"
            )
        )
    with pytest.raises(ValueError, match=r"CDR line 2: ',' expected after '\"'"):
        list(parse_cdr_csv(HEADER + '\r\n"a"b,"c\r\n'))


# ------------------------------------------------------------------------------ simulator dialect

SIM_OPTIONS = {
    "dialects": ["paycall"],
    "dialect_options": {"paycall": {"username": USER, "password": PASSWORD}},
}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(
        time_scale=0.001,
        talk_max_seconds=30,
        seed=5,
        forced_outcomes={"+972501234567": "answered", "+972501234568": "busy", "+972501234569": "failed"},
        **SIM_OPTIONS,
    )
    simulator_ = Simulator(config)
    await simulator_.start()
    yield simulator_
    await simulator_.stop()


@pytest.mark.parametrize(
    ("number", "outcome", "answered"),
    [
        ("+972501234567", Outcome.ANSWERED_HUMAN, True),
        ("+972501234568", Outcome.BUSY, False),
        ("+972501234569", Outcome.INVALID_NUMBER, False),
    ],
)
async def test_simulator_dialect_calls_back_as_the_adapter_reads(
    sim: Simulator, paycall: FakePaycall, number: str, outcome: Outcome, answered: bool
) -> None:
    """The dialect takes the adapter's request, posts a CDR JSON callback to return_address, serves the CDR."""
    attempt = "6f1c1d3e-4b7a-4f59-9a51-0d7d1f2e3a4b"
    provider = PaycallProvider(sim.base_url, USER, PASSWORD, ivr=SEED_IVR)
    request = StartRequest(
        attempt, number, "+97230000000", "1#2", 15, f"{paycall.url}/cb?attempt={attempt}&token=t", "c"
    )
    try:
        await provider.start_call(request)
        await sim.wait_ended(attempt)
        await sim.drain_callbacks()
        [posted] = paycall.seen
        assert (posted.method, posted.path, posted.headers["Content-Type"]) == (
            "POST",
            f"/cb?attempt={attempt}&token=t",
            "application/json",
        )
        event = provider.parse_callback(callback(posted.body, attempt))
        looked_up = await provider.lookup(LookupRequest(attempt, attempt, number, dt.datetime.now(dt.UTC)))
    finally:
        await provider.close()
    assert (event.outcome, event.answered_at is not None) == (outcome, answered)
    assert looked_up == event
    call = sim.state.find(attempt)
    assert call is not None
    assert (call.from_, call.extra["max_retries"], call.extra["phone"]) == ("+97230000000", 0, number[1:])


async def test_simulator_simple_flow_reports_only_through_the_cdr(
    sim: Simulator, paycall: FakePaycall
) -> None:
    """simple_dialer + start_campaign dial once; with no return_address the outcome is read from cdr_by_number."""
    attempt = "0b7e3a52-3c1e-4a43-9d0e-7f3d3c9a1b2c"
    provider = from_account(account(sim.base_url, flow="simple_dialer", **SIMPLE_OPTIONS), Settings())
    request = StartRequest(
        attempt, "+972501234567", None, None, 15, f"{paycall.url}/cb?attempt={attempt}", "c"
    )
    lookup = LookupRequest(attempt, attempt, "+972501234567", dt.datetime.now(dt.UTC))
    try:
        await provider.start_call(request)
        await provider.start_call(request)  # start_campaign again: the same call, not a second one
        await sim.wait_ended(attempt)
        await sim.drain_callbacks()
        event = await provider.lookup(lookup)
    finally:
        await provider.close()
    assert event is not None and event.outcome is Outcome.ANSWERED_HUMAN
    stats = sim.stats()
    assert (stats["calls_started"], stats["duplicate_start_requests"], stats["callbacks_sent"]) == (1, 1, 0)
    assert paycall.seen == []


async def test_simulator_dialect_enforces_auth_and_the_seed_shapes(sim: Simulator) -> None:
    """Wrong credentials get 401; booleans for flags, a missing return_address or a bad number get 400."""
    good = PaycallProvider(sim.base_url, USER, PASSWORD, ivr=SEED_IVR)
    wrong = PaycallProvider(sim.base_url, USER, "guess", ivr=SEED_IVR)
    try:
        with pytest.raises(StartError) as caught:
            await wrong.start_call(start_request())
        assert (caught.value.kind, caught.value.outcome) == ("rejected", Outcome.ACCOUNT_ERROR)
        with pytest.raises(StartError) as caught:
            await good.start_call(start_request(phone_number="+0123"))
        assert (caught.value.kind, caught.value.outcome) == ("rejected", Outcome.INVALID_NUMBER)
        with pytest.raises(ProviderUnavailable):
            await wrong.lookup(lookup_request())
    finally:
        await good.close()
        await wrong.close()
    body = {
        "unique_id": "u1",
        "return_address": "http://x.test/",
        "number": "972501234567",
        "ivr": {**SEED_IVR, "have_dependency": True},
    }
    async with aiohttp.ClientSession(headers={"Authorization": BASIC}) as http:
        for payload, complaint in (
            (body, "have_dependency"),
            ({**body, "ivr": SEED_IVR, "numbers_from_queue": False}, "numbers_from_queue"),
            ({k: v for k, v in body.items() if k != "return_address"}, "return_address"),
        ):
            # The seed's curl -d sends no JSON content type; the dialect reads JSON whatever the type.
            async with http.post(f"{sim.base_url}/v2/calls/dialer", data=json.dumps(payload)) as resp:
                assert resp.status == 400
                assert complaint in (await resp.json())["error"]
    assert sim.stats()["rejected_by_reason"] == {"unauthorized": 1, "invalid": 4}


@pytest.mark.parametrize(
    "options", [{"username": USER}, {"username": USER, "password": PASSWORD, "account_sid": "x"}]
)
def test_simulator_dialect_needs_credentials(options: dict[str, str]) -> None:
    """The dialect refuses to mount without username and password, or with unknown options."""
    with pytest.raises(ValueError, match="username and password"):
        Simulator(SimulatorConfig(dialects=["paycall"], dialect_options={"paycall": options}))


# ------------------------------------------------------------------------------------- pipeline

PAYCALL_OUTCOMES = {
    "0": "answered",
    "1": "answered",
    "2": "busy",
    "3": "no-answer",
    "4": "failed",
    "5": "congestion",
    "6": "answered",
    "7": "busy",
    "8": "answered",
    "9": "no-answer",
}
# (number's final status, attempts, outcome of every attempt) per simulator outcome, max_retries=1.
EXPECTED = {
    "answered": ("completed", 1, "answered_human"),
    "busy": ("failed", 2, "busy"),
    "no-answer": ("failed", 2, "no_answer"),
    "failed": ("failed", 1, "invalid_number"),
    "congestion": ("failed", 2, "congestion"),
}


@pytest.mark.slow
async def test_workers_dial_through_paycall_end_to_end(dsn: str, conn: asyncpg.Connection) -> None:
    """3 workers → Paycall adapter → simulated Paycall → tokened callbacks or CDR lookups → outcomes and retries."""
    async with simulator(
        time_scale=0.005,
        talk_max_seconds=60,
        force_by_last_digit=PAYCALL_OUTCOMES,
        drop_callback_probability=0.1,
        duplicate_callback_probability=0.2,
        error_5xx_after_create_probability=0.05,
        **SIM_OPTIONS,
    ) as sim:
        now = dt.datetime.now(dt.UTC)
        camp = await make_campaign(
            conn,
            name="pc",
            provider="paycall",
            now=now,
            caller_id="+97230000000",
            max_concurrent_calls=10,
            max_calls_per_second=30,
            max_retries=1,
            retry_wait_seconds=1,
            ring_timeout_seconds=5,
        )
        await add_numbers(conn, camp["id"], 30, now=now)
        providers = [
            {
                "name": "paycall",
                "kind": "paycall",
                "base_url": sim.base_url,
                "username": USER,
                "password_env": "PAYCALL_TEST_PASSWORD",
                "ivr": SEED_IVR,
            }
        ]
        env = {"DIALER_PROVIDERS": json.dumps(providers), "PAYCALL_TEST_PASSWORD": PASSWORD}
        workers = [spawn(dsn, sim.base_url, **env) for _ in range(3)]
        with reap(workers):
            await wait_ready(workers)
            await wait_until(
                conn, "SELECT status = 'finished' FROM dialer_campaign WHERE name = 'pc'", timeout=40
            )
            await check_callback_authentication(workers[0].port, conn)
            for w in workers:
                w.signal(signal.SIGTERM)
            assert [w.proc.wait(timeout=20) for w in workers] == [0, 0, 0]

        stats = sim.stats()
        assert stats["duplicate_start_requests"] == 0
        assert stats["max_live_calls"] <= 10
        assert set(stats["rejected_by_reason"]) == {"error_5xx_after_create"}, (
            "ambiguous starts not exercised"
        )
        assert stats["callbacks_dropped"] > 0, "reconciliation through cdr_by_number was not exercised"
        numbers = await conn.fetch("SELECT id, phone, status, attempts FROM dialer_number")
        attempts = await conn.fetch("SELECT id, number_id, outcome FROM dialer_attempt")
        for number in numbers:
            status, count, outcome = EXPECTED[PAYCALL_OUTCOMES[number["phone"][-1]]]
            mine = [a["outcome"] for a in attempts if a["number_id"] == number["id"]]
            assert (number["status"], mine) == (status, [outcome] * count), number["phone"]
        # Every attempt reached Paycall once, in the seed's shape, with its own tokened return_address.
        for a in attempts:
            attempt_id = str(a["id"])
            call = sim.state.find(attempt_id)
            assert call is not None
            number = next(n for n in numbers if n["id"] == a["number_id"])
            token = callback_token(SECRET.encode(), "paycall", attempt_id)
            assert call.callback_url.endswith(f"/callbacks/paycall?attempt={attempt_id}&token={token}")
            assert (call.to, call.from_, call.ring_timeout_seconds) == (number["phone"], "+97230000000", 5)
            assert dict(call.extra) == {"flow": "dialer", "phone": number["phone"][1:], "max_retries": 0}
        assert {phone(i) for i in range(30)} == {n["phone"] for n in numbers}


async def check_callback_authentication(port: int, conn: asyncpg.Connection) -> None:
    """Forged tokens, a URL re-pointed at another attempt and a body about another attempt are refused."""
    a, b = [str(r["id"]) for r in await conn.fetch("SELECT id FROM dialer_attempt ORDER BY id LIMIT 2")]
    base = f"http://127.0.0.1:{port}/callbacks/paycall"
    token_a = callback_token(SECRET.encode(), "paycall", a)
    body_a = orjson.dumps(cdr_json(unique_campaign_id=a))
    async with aiohttp.ClientSession() as http:
        for url, body in (
            (f"{base}?attempt={a}&token={'0' * 32}", body_a),  # forged token
            (f"{base}?attempt={b}&token={token_a}", body_a),  # URL tampered to another attempt
            (
                f"{base}?attempt={a}&token={token_a}",
                orjson.dumps(cdr_json(unique_campaign_id=b)),
            ),  # body tampered
            (base, body_a),  # no token at all
        ):
            async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 401, url
        # The genuine URL is accepted; the attempt is over, so it changes nothing.
        async with http.post(f"{base}?attempt={a}&token={token_a}", data=body_a) as resp:
            assert (resp.status, (await resp.json())["result"]) == (200, "duplicate")
