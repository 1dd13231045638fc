"""The Upcall adapter and simulator dialect against the seed document (000, Upcall API reference).

Request and response values come from the seed's own examples (AUTH_TOKEN, campaign 1, contact
"Sam Contact" at Safeway, campaign number 142, calls 506/507). The seed's bodies are not valid JSON
(trailing commas, Ruby `=>`); what is sent is the valid JSON they describe.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web

from dialer.demo import free_port
from dialer.providers import ProviderAccount, load_accounts
from dialer.providers.base import (
    CallbackError,
    CallbackRequest,
    LookupRequest,
    ProviderUnavailable,
    StartError,
    StartRequest,
)
from dialer.providers.upcall import STATUS_OUTCOMES, UpcallProvider, event_from_call, from_account
from dialer.settings import Secret, Settings, SettingsError
from dialer.simulator import Simulator, SimulatorConfig
from scheduler.outcomes import Outcome
from tests.factories import add_numbers, make_campaign, phone
from tests.workers import reap, simulator, spawn, wait_ready, wait_until

TOKEN = "AUTH_TOKEN"
CAMPAIGN = 1
ATTEMPT = "0b6f6f5e-4c1e-4a57-9d3e-2f8f7a1c9e01"
# "Create a Number": the seed's contact, minus `title`, which carries our attempt id.
SEED_CONTACT: dict[str, Any] = {
    "first_name": "Sam",
    "last_name": "Contact",
    "company": "Safeway",
    "email": "sam@safeway.com",
    "address": {
        "recipient": "Sam Contact",
        "line1": "100 Main Street",
        "line2": "Building 500",
        "city": "Mountain View",
        "region": "California",
        "postal_code": "94043",
        "country": "United States",
    },
}
SEED_PHONE = "+16507991234"
SEED_CREATED_NUMBER = {
    "data": {
        "id": "1",
        "type": "number",
        "attributes": {
            "list_id": 1,
            **SEED_CONTACT,
            "title": ATTEMPT,
            "status": "active",
            "phone": SEED_PHONE,
        },
    }
}
# "Add a Number to a Campaign" answer.
SEED_CAMPAIGN_NUMBER = {
    "data": {
        "id": "142",
        "type": "campaign_numbers",
        "attributes": {"status": "active", "first_name": "Sally", "phone": "+16501231234", "title": ATTEMPT},
    }
}


def seed_call(call_id: str, status: str, number_id: int, to: str) -> dict[str, Any]:
    """One record as the seed's "Get All Calls" example shows it."""
    return {
        "id": call_id,
        "type": "call",
        "attributes": {
            "note": "abc",
            "status": status,
            "duration": 30,
            "cost": "0.0",
            "campaign_number_id": number_id,
            "from": "+16507991234",
            "to": to,
            "transcript": None,
            "datetime_called": "2016-07-21T10:45:36.000Z",
            "cost_currency": "EUR",
            "recording_urls": ["http://www.site.com/recording/1"],
            "caller": {
                "id": 100,
                "name": "Billy Caller",
                "profile_url": "https://api.upcall.com/callers/100",
            },
        },
    }


# ------------------------------------------------------------------------------------ fake Upcall


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


Reply = tuple[int, Any]
Handler = Callable[[Seen], Reply]


@dataclass
class FakeUpcall:
    """A local server that records every request and answers per (method, path): a queue or a function."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    queues: dict[tuple[str, str], list[Reply]] = field(default_factory=dict)
    handlers: dict[tuple[str, str], Handler] = field(default_factory=dict)
    stall: set[tuple[str, str]] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def reply(self, method: str, path: str, *replies: Reply) -> None:
        self.queues.setdefault((method, path), []).extend(replies)

    async def handle(self, request: web.Request) -> web.Response:
        seen = Seen(
            request.method, request.path, dict(request.query), dict(request.headers), await request.read()
        )
        self.seen.append(seen)
        key = (request.method, request.path)
        if key in self.stall:
            await self.release.wait()
        if self.queues.get(key):
            status, payload = self.queues[key].pop(0)
        elif key in self.handlers:
            status, payload = self.handlers[key](seen)
        else:
            status, payload = 404, {"errors": [{"status": "404", "title": "Not found"}]}
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        return web.Response(status=status, body=body, content_type="application/json")

    def paths(self) -> list[tuple[str, str]]:
        return [(s.method, s.path) for s in self.seen]

    def link(self, page: int, size: int = 2) -> str:
        # The seed's link shape, on this server's origin.
        return f"{self.url}/api/v1/calls?auth_token={TOKEN}&page%5Bnumber%5D={page}&page%5Bsize%5D={size}"


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpcall]:
    server = FakeUpcall()
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
async def adapter(fake: FakeUpcall) -> AsyncIterator[UpcallProvider]:
    provider = UpcallProvider(
        fake.url + "/api/v1", TOKEN, CAMPAIGN, contact=SEED_CONTACT, page_size=2, timeout_seconds=0.5
    )
    yield provider
    await provider.close()


def start_request(attempt_id: str = ATTEMPT, dtmf: str | None = "123") -> StartRequest:
    return StartRequest(
        attempt_id=attempt_id,
        phone=SEED_PHONE,
        caller_id="+16501231234",
        dtmf=dtmf,
        ring_timeout_seconds=30,
        callback_url=f"http://dialer.test/callbacks/upcall?attempt={attempt_id}&token=t",
        campaign="c1",
    )


def lookup_request(call_id: str | None, attempt_id: str = ATTEMPT) -> LookupRequest:
    return LookupRequest(attempt_id, call_id, SEED_PHONE, dt.datetime(2016, 7, 21, tzinfo=dt.UTC))


def accept_start(fake: FakeUpcall) -> None:
    fake.reply("POST", "/api/v1/numbers", (201, SEED_CREATED_NUMBER))
    fake.reply("POST", f"/api/v1/campaigns/{CAMPAIGN}/numbers", (201, SEED_CAMPAIGN_NUMBER))


def calls_page(records: list[dict[str, Any]], fake: FakeUpcall, page: int, last: int) -> dict[str, Any]:
    links = {"self": fake.link(page), "last": fake.link(last)}
    if page < last:
        links["next"] = fake.link(page + 1)
    return {"data": records, "links": links}


def serve_pages(fake: FakeUpcall, pages: dict[int, list[dict[str, Any]]]) -> None:
    """Answer GET /calls by page[number] from `pages` (edited in place by the test as calls appear)."""

    def handler(seen: Seen) -> Reply:
        number = int(seen.query.get("page[number]", "1"))
        last = max(pages) if pages else 1
        return 200, calls_page(pages.get(number, []), fake, number, last)

    fake.handlers[("GET", "/api/v1/calls")] = handler


def serve_numbers(fake: FakeUpcall, numbers: dict[str, str], phone_of: dict[str, str]) -> None:
    """Answer GET /campaigns/1/numbers filtered by phone or title, from {number id: title}."""

    def handler(seen: Seen) -> Reply:
        data = [
            {"id": nid, "type": "campaign_numbers", "attributes": {"title": title, "phone": phone_of[nid]}}
            for nid, title in numbers.items()
            if seen.query.get("phone", phone_of[nid]) == phone_of[nid]
            and seen.query.get("title", title) == title
        ]
        return 200, {"data": data, "links": {}}

    fake.handlers[("GET", f"/api/v1/campaigns/{CAMPAIGN}/numbers")] = handler


def account(base_url: str = "http://upcall.test/api/v1", **options: Any) -> ProviderAccount:
    return ProviderAccount(
        name="upcall-main",
        kind="upcall",
        base_url=base_url,
        timeout_seconds=0.5,
        options={"campaign_id": CAMPAIGN, **options},
        secrets={"auth_token": Secret(TOKEN)},
    )


# ------------------------------------------------------------------------------------- contract


async def test_start_creates_the_contact_then_adds_it_to_the_campaign(
    fake: FakeUpcall, adapter: UpcallProvider
) -> None:
    """Start = the seed's POST /numbers then POST /campaigns/:id/numbers, auth_token in the query, text/json."""
    accept_start(fake)
    accepted = await adapter.start_call(start_request())
    assert accepted.call_id == "142"
    create, add = fake.seen
    assert (create.method, create.path, create.query) == ("POST", "/api/v1/numbers", {"auth_token": TOKEN})
    assert create.headers["Content-Type"] == "text/json"
    assert create.json() == {
        "data": {
            "type": "numbers",
            "attributes": {
                **SEED_CONTACT,
                "campaign_id": 1,
                "phone": SEED_PHONE,
                "title": ATTEMPT,
                "status": "active",
                "extension": "123",
            },
        }
    }
    assert (add.method, add.path, add.query) == ("POST", "/api/v1/campaigns/1/numbers", {"auth_token": TOKEN})
    assert add.headers["Content-Type"] == "text/json"
    # list_contact_id is the created contact's id, a number as in the seed's example (245).
    assert add.json() == {"data": {"type": "numbers", "attributes": {"list_contact_id": 1}}}


async def test_dtmf_pauses_are_dropped_and_no_dtmf_means_no_extension(
    fake: FakeUpcall, adapter: UpcallProvider
) -> None:
    """Human callers dial an extension: DTMF keeps its keys without pauses; none leaves `extension` out."""
    accept_start(fake)
    await adapter.start_call(start_request(dtmf="wW12#*"))
    accept_start(fake)
    await adapter.start_call(start_request(dtmf=None))
    first, second = fake.seen[0].json(), fake.seen[2].json()
    assert first["data"]["attributes"]["extension"] == "12#*"
    assert "extension" not in second["data"]["attributes"]


async def test_attempt_field_and_content_type_are_configurable(fake: FakeUpcall) -> None:
    """attempt_field moves our id to another filterable field; content_type overrides the seed's text/json."""
    provider = from_account(
        account(fake.url + "/api/v1", attempt_field="company", content_type="application/json"), Settings()
    )
    try:
        accept_start(fake)
        await provider.start_call(start_request(dtmf=None))
    finally:
        await provider.close()
    attrs = fake.seen[0].json()["data"]["attributes"]
    assert attrs["company"] == ATTEMPT and "title" not in attrs
    assert fake.seen[0].headers["Content-Type"] == "application/json"


def test_documented_account_json_loads() -> None:
    """The DIALER_PROVIDERS example in the report loads, the token coming from its environment variable."""
    raw = json.dumps(
        [
            {
                "name": "upcall-main",
                "kind": "upcall",
                "base_url": "https://api.upcall.com/api/v1",
                "auth_token_env": "UPCALL_AUTH_TOKEN",
                "campaign_id": 876,
                "contact": {"company": "Acme"},
                "page_size": 100,
                "max_pages_per_poll": 5,
            }
        ]
    )
    [acct] = load_accounts(Settings(providers=raw), environ={"UPCALL_AUTH_TOKEN": "s3cr3t"})
    provider = from_account(acct, Settings())
    assert provider.name == "upcall-main"
    assert "s3cr3t" not in repr(provider)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"campaign_id": None}, "campaign_id"),
        ({"campaign_id": "abc"}, "campaign_id"),
        ({"attempt_field": "email"}, "attempt_field"),
        ({"contact": {"title": "x"}}, "contact.title"),
        ({"contact": {"phone": "+1"}}, "contact.phone"),
        ({"contact": {"address": {"planet": "Mars"}}}, "contact.address"),
        ({"page_size": 0}, "page_size"),
        ({"max_pages_per_poll": 1000}, "max_pages_per_poll"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_options_are_refused_naming_the_key(options: dict[str, Any], key: str) -> None:
    """Every bad option is a SettingsError at construction that names the key."""
    with pytest.raises(SettingsError, match=rf"'upcall-main': {key}:"):
        from_account(account(**options), Settings())


def test_missing_token_is_refused() -> None:
    """No auth_token_env: refused at construction, naming the variable to set."""
    acct = ProviderAccount("upcall-main", "upcall", "http://u.test", options={"campaign_id": 1})
    with pytest.raises(SettingsError, match="auth_token_env"):
        from_account(acct, Settings())


def test_upcall_has_no_callbacks() -> None:
    """Upcall pushes nothing (the seed documents no webhooks): any callback is refused as malformed."""
    provider = UpcallProvider("http://u.test/api/v1", TOKEN, 1)
    request = CallbackRequest("http://d/callbacks/upcall", {}, b"{}", {}, ATTEMPT)
    with pytest.raises(CallbackError) as info:
        provider.parse_callback(request)
    assert info.value.reason == "malformed"


# ------------------------------------------------------------------------------ status mapping


@pytest.mark.parametrize(
    ("status", "outcome", "answered"),
    [
        ("completed", Outcome.ANSWERED_HUMAN, True),
        ("completed_fu_call", Outcome.ANSWERED_HUMAN, True),
        ("completed_fu_email", Outcome.ANSWERED_HUMAN, True),
        ("completed_fu_inperson", Outcome.ANSWERED_HUMAN, True),
        ("not_interested", Outcome.ANSWERED_HUMAN, True),
        ("hungup", Outcome.ANSWERED_HUMAN, True),
        ("voicemail", Outcome.ANSWERED_MACHINE, True),
        ("busy", Outcome.BUSY, False),
        ("no_answer", Outcome.NO_ANSWER, False),
        ("no_service", Outcome.INVALID_NUMBER, False),
        ("wrong_number", Outcome.INVALID_NUMBER, True),
        ("dnc", Outcome.BLOCKED, True),
        ("technical_issue", Outcome.PROVIDER_ERROR, False),
        # Retryable by design: the callee asked to be called later, which the campaign's retry does.
        ("call_back_later", Outcome.BUSY, True),
        ("a_status_nobody_listed", Outcome.UNKNOWN, False),
    ],
)
def test_call_status_maps_to_outcome(status: str, outcome: Outcome, answered: bool) -> None:
    """Each Upcall call status gives the providers.md §6 outcome, with talk time only when someone answered."""
    event = event_from_call(seed_call("506", status, 2470, "+16508881100"), ATTEMPT)
    assert event is not None
    assert (event.kind, event.outcome, event.raw_status, event.call_id) == ("ended", outcome, status, "2470")
    called = dt.datetime(2016, 7, 21, 10, 45, 36, tzinfo=dt.UTC)
    assert event.ended_at == called + dt.timedelta(seconds=30)
    assert event.duration_seconds == 30.0
    assert (event.answered_at, event.billsec) == ((called, 30) if answered else (None, 0))


def test_every_status_the_seed_lists_is_mapped() -> None:
    """The seed's /calls status list is covered: every final one mapped, `untried` is not a result."""
    listed = {
        "completed", "completed_fu_call", "completed_fu_email", "completed_fu_inperson", "call_back_later",
        "busy", "no_answer", "voicemail", "hungup", "not_interested", "dnc", "no_service",
        "technical_issue", "wrong_number", "untried",
    }  # fmt: skip
    assert set(STATUS_OUTCOMES) == listed - {"untried"}
    assert event_from_call(seed_call("1", "untried", 1, SEED_PHONE), ATTEMPT) is None


# --------------------------------------------------------------------------------- start errors


@pytest.mark.parametrize(
    ("status", "payload", "kind", "outcome"),
    [
        (401, {"errors": [{"status": "401", "title": "Unauthorized"}]}, "rejected", Outcome.ACCOUNT_ERROR),
        (403, {"errors": [{"status": "403", "title": "Forbidden"}]}, "rejected", Outcome.ACCOUNT_ERROR),
        (
            402,
            {"errors": [{"status": "402", "title": "Not enough credit"}]},
            "rejected",
            Outcome.ACCOUNT_ERROR,
        ),
        (
            404,
            {"errors": [{"status": "404", "title": "Campaign not found"}]},
            "rejected",
            Outcome.ACCOUNT_ERROR,
        ),
        (
            422,
            {"errors": [{"title": "is invalid", "source": {"pointer": "/data/attributes/phone"}}]},
            "rejected",
            Outcome.INVALID_NUMBER,
        ),
        (422, {"phone": ["is not a valid phone number"]}, "rejected", Outcome.INVALID_NUMBER),
        (422, {"errors": [{"title": "email is invalid"}]}, "rejected", Outcome.PROVIDER_ERROR),
        # Nothing is on the campaign until step 2: every failure of step 1 is safe to requeue.
        (429, {"errors": [{"title": "Too many requests"}]}, "rate_limited", None),
        (503, {"errors": [{"title": "Service unavailable"}]}, "not_sent", None),
    ],
)
async def test_contact_creation_errors(
    fake: FakeUpcall, adapter: UpcallProvider, status: int, payload: Any, kind: str, outcome: Outcome | None
) -> None:
    """Step 1 failures: credentials and campaign are account errors, a bad phone is INVALID_NUMBER."""
    fake.reply("POST", "/api/v1/numbers", (status, payload))
    with pytest.raises(StartError) as info:
        await adapter.start_call(start_request())
    assert (info.value.kind, info.value.outcome) == (kind, outcome)
    assert fake.paths() == [("POST", "/api/v1/numbers")]


@pytest.mark.parametrize(
    ("status", "kind", "outcome"),
    [
        (401, "rejected", Outcome.ACCOUNT_ERROR),
        (429, "ambiguous", None),  # the seed promises nothing about a 429 being unprocessed
        (500, "ambiguous", None),
        (503, "ambiguous", None),
        (422, "rejected", Outcome.PROVIDER_ERROR),
    ],
)
async def test_add_to_campaign_errors(
    fake: FakeUpcall, adapter: UpcallProvider, status: int, kind: str, outcome: Outcome | None
) -> None:
    """Step 2 puts the number before the callers: 5xx and 429 are ambiguous, for lookup to settle."""
    fake.reply("POST", "/api/v1/numbers", (201, SEED_CREATED_NUMBER))
    fake.reply("POST", "/api/v1/campaigns/1/numbers", (status, {"errors": [{"status": str(status)}]}))
    with pytest.raises(StartError) as info:
        await adapter.start_call(start_request())
    assert (info.value.kind, info.value.outcome) == (kind, outcome)


async def test_timeouts_step_one_is_not_sent_step_two_is_ambiguous(
    fake: FakeUpcall, adapter: UpcallProvider
) -> None:
    """A timeout creating the contact queues nothing (not_sent); adding it to the campaign, ambiguous."""
    fake.stall.add(("POST", "/api/v1/numbers"))
    with pytest.raises(StartError) as first:
        await adapter.start_call(start_request())
    assert first.value.kind == "not_sent"
    fake.stall.clear()
    fake.reply("POST", "/api/v1/numbers", (201, SEED_CREATED_NUMBER))
    fake.stall.add(("POST", "/api/v1/campaigns/1/numbers"))
    with pytest.raises(StartError) as second:
        await adapter.start_call(start_request())
    assert second.value.kind == "ambiguous"


async def test_unreadable_success_of_step_two_is_ambiguous(fake: FakeUpcall, adapter: UpcallProvider) -> None:
    """A 201 to the campaign add without a readable id may still have queued the number: ambiguous."""
    fake.reply("POST", "/api/v1/numbers", (201, SEED_CREATED_NUMBER))
    fake.reply("POST", "/api/v1/campaigns/1/numbers", (201, b"<html>"))
    with pytest.raises(StartError) as info:
        await adapter.start_call(start_request())
    assert info.value.kind == "ambiguous"


async def test_connection_refused_is_not_sent_and_never_shows_the_token() -> None:
    """Nothing listening: not_sent, and neither the message nor the repr carries the auth token."""
    provider = UpcallProvider(
        f"http://127.0.0.1:{free_port()}/api/v1", "tok-SECRET-123", 1, timeout_seconds=0.5
    )
    try:
        with pytest.raises(StartError) as info:
            await provider.start_call(start_request())
        assert info.value.kind == "not_sent"
        assert "tok-SECRET-123" not in str(info.value) + repr(provider)
        with pytest.raises(ProviderUnavailable) as lookup_info:
            await provider.lookup(lookup_request(None))
        assert "tok-SECRET-123" not in str(lookup_info.value)
    finally:
        await provider.close()


# ----------------------------------------------------------------------------- lookup and hangup


async def test_lookup_without_call_id_finds_the_number_by_attempt_then_its_call(
    fake: FakeUpcall, adapter: UpcallProvider
) -> None:
    """An ambiguous start is reconciled: campaign number by our id in `title`, then its calls."""
    serve_numbers(fake, {"142": ATTEMPT}, {"142": SEED_PHONE})
    fake.reply("GET", "/api/v1/calls", (200, {"data": [seed_call("506", "completed", 142, SEED_PHONE)]}))
    event = await adapter.lookup(lookup_request(None))
    assert event is not None and (event.kind, event.outcome, event.call_id) == (
        "ended",
        Outcome.ANSWERED_HUMAN,
        "142",
    )
    numbers, calls = fake.seen
    assert numbers.path == "/api/v1/campaigns/1/numbers"
    assert numbers.query == {"auth_token": TOKEN, "title": ATTEMPT, "page[size]": "2"}
    assert calls.path == "/api/v1/calls"
    assert calls.query == {"auth_token": TOKEN, "campaign_id": "1", "to_number_id": "142", "page[size]": "2"}


async def test_lookup_of_a_number_never_added_is_none(fake: FakeUpcall, adapter: UpcallProvider) -> None:
    """No campaign number carries the attempt id: no caller will ever dial it, so None."""
    serve_numbers(fake, {"142": "another-attempt"}, {"142": SEED_PHONE})
    assert await adapter.lookup(lookup_request(None)) is None


async def test_lookup_of_a_number_still_waiting_is_ringing(fake: FakeUpcall, adapter: UpcallProvider) -> None:
    """On the campaign with no finished call (none, or only `untried`): ringing, with the call id."""
    fake.reply("GET", "/api/v1/calls", (200, {"data": [seed_call("9", "untried", 142, SEED_PHONE)]}))
    event = await adapter.lookup(lookup_request("142"))
    assert event is not None and (event.kind, event.call_id, event.outcome) == ("ringing", "142", None)


async def test_lookup_takes_the_latest_call_of_the_number_only(
    fake: FakeUpcall, adapter: UpcallProvider
) -> None:
    """Upcall may call a number twice: the latest call decides; calls of other numbers are ignored."""
    early = seed_call("506", "no_answer", 142, SEED_PHONE)
    late = seed_call("507", "completed", 142, SEED_PHONE)
    late["attributes"]["datetime_called"] = "2016-07-22T09:00:00.000Z"
    other = seed_call("508", "dnc", 999, SEED_PHONE)
    other["attributes"]["datetime_called"] = "2016-07-23T09:00:00.000Z"
    fake.reply("GET", "/api/v1/calls", (200, {"data": [late, early, other]}))
    event = await adapter.lookup(lookup_request("142"))
    assert event is not None and (event.outcome, event.raw_status) == (Outcome.ANSWERED_HUMAN, "completed")


@pytest.mark.parametrize("status", [401, 500, 503])
async def test_lookup_errors_are_unavailable(fake: FakeUpcall, adapter: UpcallProvider, status: int) -> None:
    """A lookup that cannot be answered now raises ProviderUnavailable, never None."""
    fake.reply("GET", "/api/v1/calls", (status, {"errors": []}))
    with pytest.raises(ProviderUnavailable):
        await adapter.lookup(lookup_request("142"))


async def test_hangup_disables_the_contact(fake: FakeUpcall, adapter: UpcallProvider) -> None:
    """Hangup = the seed's PATCH /numbers/:id with status disabled, so no caller dials it."""
    accept_start(fake)
    await adapter.start_call(start_request())
    fake.reply("PATCH", "/api/v1/numbers/1", (200, SEED_CREATED_NUMBER))
    await adapter.hangup(ATTEMPT, "142")
    patch = fake.seen[-1]
    assert (patch.method, patch.path, patch.query) == ("PATCH", "/api/v1/numbers/1", {"auth_token": TOKEN})
    assert patch.headers["Content-Type"] == "text/json"
    assert patch.json() == {"data": {"type": "numbers", "attributes": {"status": "disabled"}}}


async def test_hangup_by_another_process_finds_the_contact_by_attempt(
    fake: FakeUpcall, adapter: UpcallProvider
) -> None:
    """A process that did not start the call finds the contact with GET /numbers?title=<attempt>."""
    fake.reply("GET", "/api/v1/numbers", (200, {"data": [SEED_CREATED_NUMBER["data"]]}))
    fake.reply("PATCH", "/api/v1/numbers/1", (200, SEED_CREATED_NUMBER))
    await adapter.hangup(ATTEMPT, None)
    assert fake.paths() == [("GET", "/api/v1/numbers"), ("PATCH", "/api/v1/numbers/1")]
    assert fake.seen[0].query == {"auth_token": TOKEN, "title": ATTEMPT}


# ------------------------------------------------------------------------------------- polling


async def test_poll_follows_links_next_then_asks_only_from_its_cursor(
    fake: FakeUpcall, adapter: UpcallProvider
) -> None:
    """Pages are read through links.next; the next poll starts at the last page and reports only new calls."""
    pages: dict[int, list[dict[str, Any]]] = {}
    serve_pages(fake, pages)
    other = str(uuid.uuid4())
    serve_numbers(fake, {"2470": ATTEMPT, "2471": other}, {"2470": "+16508881100", "2471": "+16508881101"})
    assert await adapter.poll_events() == []
    # The seed's two calls on page 1, then a third call on page 2.
    pages[1] = [
        seed_call("506", "completed", 2470, "+16508881100"),
        seed_call("507", "busy", 2471, "+16508881101"),
    ]
    pages[2] = [seed_call("508", "voicemail", 2470, "+16508881100")]
    events = await adapter.poll_events()
    assert [(e.attempt_id, e.outcome, e.call_id) for e in events] == [
        (ATTEMPT, Outcome.ANSWERED_HUMAN, "2470"),
        (other, Outcome.BUSY, "2471"),
        (ATTEMPT, Outcome.ANSWERED_MACHINE, "2470"),
    ]
    polled = [s.query for s in fake.seen if s.path == "/api/v1/calls"]
    assert polled[-2:] == [
        {"auth_token": TOKEN, "campaign_id": "1", "page[number]": "1", "page[size]": "2"},
        {"auth_token": TOKEN, "campaign_id": "1", "page[number]": "2", "page[size]": "2"},
    ]
    before = len(fake.seen)
    assert await adapter.poll_events() == []
    assert [s.query["page[number]"] for s in fake.seen[before:]] == ["2"]
    pages[2].append(seed_call("509", "dnc", 2471, "+16508881101"))
    assert [(e.attempt_id, e.outcome) for e in await adapter.poll_events()] == [(other, Outcome.BLOCKED)]


async def test_poll_reads_at_most_max_pages_per_poll(fake: FakeUpcall) -> None:
    """A backlog is read a bounded number of pages per poll, resuming where the last poll stopped."""
    pages: dict[int, list[dict[str, Any]]] = {}
    serve_pages(fake, pages)
    ids = {str(n): str(uuid.uuid4()) for n in range(1, 7)}
    serve_numbers(fake, ids, {n: f"+1650888110{n}" for n in ids})
    provider = UpcallProvider(fake.url + "/api/v1", TOKEN, 1, page_size=2, max_pages_per_poll=2)
    try:
        await provider.poll_events()
        for page in (1, 2, 3):
            pages[page] = [
                seed_call(f"{page}{i}", "busy", 2 * page - 1 + i, f"+1650888110{2 * page - 1 + i}")
                for i in (0, 1)
            ]
        first = await provider.poll_events()
        second = await provider.poll_events()
    finally:
        await provider.close()
    assert [e.attempt_id for e in first] == [ids[str(n)] for n in (1, 2, 3, 4)]
    assert [e.attempt_id for e in second] == [ids[str(n)] for n in (5, 6)]


async def test_a_new_process_starts_at_the_newest_page(fake: FakeUpcall, adapter: UpcallProvider) -> None:
    """The first poll jumps to links.last: history is for lookup, not for replaying every old call."""
    pages = {n: [seed_call(str(500 + n), "busy", n, "+16508881100")] for n in range(1, 11)}
    serve_pages(fake, pages)
    serve_numbers(
        fake,
        {str(n): str(uuid.uuid4()) for n in range(1, 11)},
        {str(n): "+16508881100" for n in range(1, 11)},
    )
    events = await adapter.poll_events()
    assert [e.call_id for e in events] == ["10"]
    assert [s.query["page[number]"] for s in fake.seen if s.path == "/api/v1/calls"] == ["1", "10"]


async def test_poll_skips_numbers_that_are_not_ours_and_links_to_other_hosts(
    fake: FakeUpcall, adapter: UpcallProvider
) -> None:
    """A number without our attempt id is not reported, and a links.next elsewhere is never followed."""
    evil = "http://evil.example/api/v1/calls?auth_token=AUTH_TOKEN&page%5Bnumber%5D=2"
    fake.handlers[("GET", "/api/v1/calls")] = lambda seen: (
        200,
        {
            "data": [seed_call("506", "completed", 2470, "+16508881100")],
            "links": {"self": fake.link(1), "next": evil, "last": fake.link(1)},
        },
    )
    serve_numbers(fake, {"2470": "Manager"}, {"2470": "+16508881100"})
    assert await adapter.poll_events() == []
    assert all(s.path.startswith("/api/v1/") for s in fake.seen)
    assert [s.query.get("page[number]") for s in fake.seen if s.path == "/api/v1/calls"] == ["1"]


async def test_poll_error_mid_way_keeps_what_it_found_and_resumes(
    fake: FakeUpcall, adapter: UpcallProvider
) -> None:
    """A page that fails ends the poll with the events so far; the next poll resumes at that page."""
    pages: dict[int, list[dict[str, Any]]] = {}
    serve_pages(fake, pages)
    serve_numbers(fake, {"1": ATTEMPT, "2": str(uuid.uuid4())}, {"1": "+16508881101", "2": "+16508881102"})
    await adapter.poll_events()
    pages[1] = [seed_call("506", "completed", 1, "+16508881101"), seed_call("507", "busy", 1, "+16508881101")]
    pages[2] = [seed_call("508", "no_answer", 2, "+16508881102")]
    fake.reply("GET", "/api/v1/calls", (200, calls_page(pages[1], fake, 1, 2)), (503, {"errors": []}))
    assert [e.raw_status for e in await adapter.poll_events()] == ["completed", "busy"]
    assert [e.raw_status for e in await adapter.poll_events()] == ["no_answer"]
    fake.reply("GET", "/api/v1/calls", (503, {"errors": []}))
    with pytest.raises(ProviderUnavailable):
        await adapter.poll_events()


# ----------------------------------------------------------------------------- simulator dialect


UPCALL_DIALECT = {"auth_token": TOKEN, "campaign_id": 7}


async def test_dialect_checks_the_token_and_lists_finished_calls_in_pages() -> None:
    """The simulator's Upcall: 401 without auth_token; ended calls appear in /calls with links.next."""
    config = SimulatorConfig(
        time_scale=0.001,
        talk_max_seconds=5,
        seed=1,
        dialects=["upcall"],
        dialect_options={"upcall": UPCALL_DIALECT},
        force_by_last_digit={"1": "answered", "2": "busy", "3": "failed"},
    )
    async with Simulator(config) as sim, aiohttp.ClientSession() as http:
        base = sim.base_url + "/api/v1"
        async with http.post(f"{base}/campaigns/7/numbers", params={"auth_token": "wrong"}, data=b"{}") as r:
            assert r.status == 401
        assert sim.stats()["rejected_by_reason"] == {"unauthorized": 1}
        provider = UpcallProvider(base, TOKEN, 7, page_size=2)
        try:
            assert await provider.poll_events() == []
            ids = [str(uuid.uuid4()) for _ in range(3)]
            for n, attempt in enumerate(ids, start=1):
                request = StartRequest(attempt, f"+1555000000{n}", None, None, 30, "http://x/cb", "c")
                await provider.start_call(request)
            for attempt in ids:
                await sim.wait_ended(attempt)
            async with http.get(f"{base}/calls", params={"auth_token": TOKEN, "page[size]": "2"}) as r:
                page = await r.json()
            assert len(page["data"]) == 2
            assert parse_qsl(urlsplit(page["links"]["next"]).query)[0] == ("auth_token", TOKEN)
            events = await provider.poll_events()
        finally:
            await provider.close()
    assert sorted((e.attempt_id, e.raw_status) for e in events) == sorted(
        [(ids[0], "completed"), (ids[1], "busy"), (ids[2], "no_service")]
    )


async def test_dialect_disable_cancels_a_waiting_call_which_never_reaches_calls() -> None:
    """PATCH status=disabled before a caller finishes cancels the call; no call record appears."""
    config = SimulatorConfig(
        time_scale=1.0, seed=1, dialects=["upcall"], dialect_options={"upcall": UPCALL_DIALECT}
    )
    async with Simulator(config) as sim:
        provider = UpcallProvider(sim.base_url + "/api/v1", TOKEN, 7)
        try:
            attempt = str(uuid.uuid4())
            accepted = await provider.start_call(
                StartRequest(attempt, "+15550000001", None, None, 30, "http://x", "c")
            )
            await provider.hangup(attempt, accepted.call_id)
            assert (await sim.wait_ended(attempt))["status"] == "canceled"
            ringing = await provider.lookup(lookup_request(accepted.call_id, attempt))
        finally:
            await provider.close()
        assert ringing is not None and ringing.kind == "ringing"
        dialect = sim.state.dialects["upcall"]
        assert [r["method"] for r in dialect.requests] == ["POST", "POST", "PATCH", "GET"]  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- full pipeline


@pytest.mark.slow
async def test_three_workers_dial_through_upcall_and_poll_results(dsn: str, conn: asyncpg.Connection) -> None:
    """3 workers → Upcall adapter → simulator's Upcall → polled /calls → outcomes and retries, no duplicates."""
    # Last digit → the core's outcome; 7, 8 and 9 are answered calls whose caller logged a status only
    # a person produces.
    by_digit = {"0": "answered", "1": "answered", "2": "answered", "3": "answered", "4": "busy",
                "5": "no-answer", "6": "failed", "7": "answered", "8": "answered", "9": "answered"}  # fmt: skip
    overrides = {}
    for i in range(20):
        status = {"7": "dnc", "8": "call_back_later", "9": "voicemail"}.get(phone(i)[-1])
        if status:
            overrides[phone(i)] = status
    async with simulator(
        time_scale=0.01,
        talk_max_seconds=20,
        force_by_last_digit=by_digit,
        dialects=["upcall"],
        dialect_options={
            "upcall": {"auth_token": "tok-3f9", "campaign_id": 7, "status_overrides": overrides}
        },
    ) as sim:
        now = dt.datetime.now(dt.UTC)
        camp = await make_campaign(
            conn, name="u", now=now, provider="upcall-main", max_retries=1, retry_wait_seconds=1
        )
        await add_numbers(conn, camp["id"], 20, now=now)
        providers = [
            {
                "name": "upcall-main",
                "kind": "upcall",
                "base_url": sim.base_url + "/api/v1",
                "auth_token_env": "UPCALL_TOKEN",
                "campaign_id": 7,
                "page_size": 5,
                "max_pages_per_poll": 2,
            }
        ]
        env = {"DIALER_PROVIDERS": json.dumps(providers), "UPCALL_TOKEN": "tok-3f9"}
        workers = [spawn(dsn, sim.base_url, **env) for _ in range(3)]
        with reap(workers):
            await wait_ready(workers)
            await wait_until(
                conn, "SELECT status = 'finished' FROM dialer_campaign WHERE name = 'u'", timeout=30
            )
            for w in workers:
                w.signal(signal.SIGTERM)
            assert [w.proc.wait(timeout=20) for w in workers] == [0, 0, 0]

    statuses = {
        r["status"]: r["n"]
        for r in await conn.fetch("SELECT status, count(*) AS n FROM dialer_number GROUP BY 1")
    }
    assert statuses == {"completed": 8, "dnc": 2, "failed": 10}
    outcomes = {
        (r["outcome"], r["raw_status"]): r["n"]
        for r in await conn.fetch(
            "SELECT outcome, raw_status, count(*) AS n FROM dialer_attempt GROUP BY 1, 2"
        )
    }
    assert outcomes == {
        ("answered_human", "completed"): 8,
        ("blocked", "dnc"): 2,
        ("invalid_number", "no_service"): 2,
        ("busy", "busy"): 4,
        ("busy", "call_back_later"): 4,
        ("no_answer", "no_answer"): 4,
        ("answered_machine", "voicemail"): 4,
    }
    stats = sim.stats()
    assert stats["duplicate_start_requests"] == 0
    attempts = {str(r["id"]) for r in await conn.fetch("SELECT id FROM dialer_attempt")}
    assert {e["attempt_id"] for e in sim.log() if e["response_status"] in (200, 201)} == attempts
    # The request shapes the provider saw: the seed's two steps, token in the query, text/json.
    requests = list(sim.state.dialects["upcall"].requests)  # type: ignore[attr-defined]
    creates = [r for r in requests if (r["method"], r["path"]) == ("POST", "/api/v1/numbers")]
    adds = [r for r in requests if (r["method"], r["path"]) == ("POST", "/api/v1/campaigns/7/numbers")]
    assert len(creates) == len(adds) == 28
    assert all(
        r["query"] == {"auth_token": "<token>"} and r["content_type"] == "text/json" for r in creates + adds
    )
    assert {r["body"]["data"]["attributes"]["title"] for r in creates} == attempts
    assert all(
        r["body"]["data"]["type"] == "numbers"
        and set(r["body"]["data"]["attributes"]) == {"campaign_id", "phone", "title", "status"}
        for r in creates
    )
    assert all(isinstance(r["body"]["data"]["attributes"]["list_contact_id"], int) for r in adds)
    polls = [r for r in requests if (r["method"], r["path"]) == ("GET", "/api/v1/calls")]
    assert polls and all(r["query"]["campaign_id"] == "7" and r["query"]["page[size]"] == "5" for r in polls)
    assert {r["query"]["page[number]"] for r in polls} >= {"1", "2", "3", "4", "5", "6"}
