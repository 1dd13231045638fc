"""Adapter for Upcall (seed 000): a JSON-API campaign service whose calls are made by human callers.

There is no per-call originate. Starting a call is the seed's two documented steps: create a contact
(`POST /numbers`, with `campaign_id` so it joins that campaign's contact list), then add it to the
campaign (`POST /campaigns/:id/numbers` with `list_contact_id`), which is what tells Upcall's callers
to dial it. Results are pulled: `poll_events` walks `GET /calls?campaign_id=…` page by page through
`links.next`. Upcall has no webhooks and no per-call ring timeout, DTMF or idempotency key.

Seed facts this module relies on, and the choices made where the seed is silent:

* Auth is the `auth_token` query parameter on every request; requests carry the seed's
  `Content-Type: text/json` (the `content_type` option overrides it).
* The seed offers no custom or external field. Our attempt id goes in a contact text field that the
  campaign-numbers list can filter on (`title` by default, option `attempt_field`), so a result maps
  back from Upcall's own records, in any worker process, after any restart.
* `Accepted.call_id` is the campaign-number id: calls reference it as `campaign_number_id`.
* `/calls` has no "updated since" filter (only status, to_number_id, campaign_id, duration and cost),
  so the cursor is a position in the pages, assuming new calls are appended at the end. A worker
  starts from `links.last`: calls that ended while no worker was polling are reconciled by `lookup`.
* `to_number_id` is read as the campaign-number id (calls carry no other number id), and every
  result is checked against `campaign_number_id` in case it is not.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, NoReturn
from urllib.parse import parse_qs, urlsplit

import aiohttp
import orjson

import metrics
from dialer.providers.base import (
    Accepted,
    CallbackError,
    CallbackRequest,
    CallEvent,
    HttpAdapter,
    LookupRequest,
    ProviderUnavailable,
    StartError,
    StartRequest,
)
from dialer.settings import SettingsError
from scheduler.outcomes import Outcome

if TYPE_CHECKING:
    from dialer.providers import ProviderAccount
    from dialer.settings import Settings

log = logging.getLogger(__name__)

# Call statuses the seed lists for /calls, and what each means for the attempt (providers.md §6).
STATUS_OUTCOMES: Final[Mapping[str, Outcome]] = {
    "completed": Outcome.ANSWERED_HUMAN,
    "completed_fu_call": Outcome.ANSWERED_HUMAN,
    "completed_fu_email": Outcome.ANSWERED_HUMAN,
    "completed_fu_inperson": Outcome.ANSWERED_HUMAN,
    "not_interested": Outcome.ANSWERED_HUMAN,
    "hungup": Outcome.ANSWERED_HUMAN,
    "voicemail": Outcome.ANSWERED_MACHINE,
    "busy": Outcome.BUSY,
    "no_answer": Outcome.NO_ANSWER,
    "no_service": Outcome.INVALID_NUMBER,
    "wrong_number": Outcome.INVALID_NUMBER,
    "dnc": Outcome.BLOCKED,
    "technical_issue": Outcome.PROVIDER_ERROR,
    # The callee was reached and asked to be called later. Upcall reports no time for it, so it is a
    # plain retry after the campaign's retry wait; BUSY ("reached, could not talk now") is the
    # retryable outcome that says that, and raw_status keeps the difference for reports.
    "call_back_later": Outcome.BUSY,
}
# A human picked up: the call's time was talk time.
_ANSWERED_STATUSES: Final = frozenset(
    {
        "completed",
        "completed_fu_call",
        "completed_fu_email",
        "completed_fu_inperson",
        "not_interested",
        "hungup",
        "call_back_later",
        "dnc",
        "wrong_number",
        "voicemail",
    }
)
# Listed as a call status but says nothing has happened yet.
PENDING_STATUSES: Final = frozenset({"untried"})

# Contact attributes the seed documents for POST /numbers, besides the ones this adapter sets.
_CONTACT_FIELDS: Final = frozenset({"first_name", "last_name", "title", "company", "email"})
_ADDRESS_FIELDS: Final = frozenset(
    {"recipient", "line1", "line2", "city", "region", "postal_code", "country"}
)
# Text fields the campaign-numbers list filters on, so an attempt can be found by its id.
ATTEMPT_FIELDS: Final = frozenset({"title", "company", "first_name", "last_name"})
_DTMF_KEYS: Final = frozenset("0123456789*#")
_MAX_REMEMBERED: Final = 100_000


def outcome_of(status: str) -> Outcome:
    """Outcome of a final Upcall call status; statuses nobody listed retry as UNKNOWN."""
    return STATUS_OUTCOMES.get(status, Outcome.UNKNOWN)


def _ts(value: Any) -> dt.datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def event_from_call(record: Mapping[str, Any], attempt_id: str) -> CallEvent | None:
    """A /calls record as a final CallEvent, or None while it is untried. Raises on a malformed record."""
    attrs = record["attributes"]
    status = attrs["status"]
    if not isinstance(status, str):
        raise TypeError("call status must be a string")
    if status in PENDING_STATUSES:
        return None
    raw_duration = attrs.get("duration") or 0
    if not isinstance(raw_duration, int | float) or isinstance(raw_duration, bool) or raw_duration < 0:
        raise ValueError("call duration must be a number >= 0")
    duration = float(raw_duration)
    called_at = _ts(attrs.get("datetime_called"))
    answered = status in _ANSWERED_STATUSES
    number_id = attrs.get("campaign_number_id")
    return CallEvent(
        attempt_id=attempt_id,
        call_id=None if number_id is None else str(number_id),
        kind="ended",
        outcome=outcome_of(status),
        answered_at=called_at if answered else None,
        ended_at=called_at + dt.timedelta(seconds=duration) if called_at else None,
        duration_seconds=duration,
        billsec=math.ceil(duration) if answered else 0,
        raw_status=status,
    )


class _NotSent(Exception):
    """The TCP connection never opened: nothing reached Upcall."""


class _Failed(Exception):
    """The request may have reached Upcall, but no answer came back."""


class UpcallProvider(HttpAdapter):
    def __init__(
        self,
        base_url: str,
        auth_token: str,
        campaign_id: int,
        *,
        attempt_field: str = "title",
        contact: Mapping[str, Any] | None = None,
        content_type: str = "text/json",
        page_size: int = 100,
        max_pages_per_poll: int = 5,
        timeout_seconds: float = 10.0,
        max_connections: int = 200,
        max_calls_per_second: float = 0.0,
        name: str = "upcall",
        queue_timeout_seconds: float = 86400.0,
    ) -> None:
        self.name = name
        # A number waits in the human callers' queue until someone dials it: the sweeper must
        # not give it up after a ring timeout (see dialer.worker.Worker.sweep).
        self.queue_timeout_seconds = queue_timeout_seconds
        self._base = base_url.rstrip("/")
        base = urlsplit(self._base)
        self._origin = (base.scheme, base.netloc)
        self._token = auth_token
        self._campaign = campaign_id
        self._attempt_field = attempt_field
        self._contact = dict(contact or {})
        self._headers = {"Content-Type": content_type}
        self._page_size = page_size
        self._max_pages = max_pages_per_poll
        self._init_http(
            timeout_seconds=timeout_seconds,
            max_connections=max_connections,
            max_calls_per_second=max_calls_per_second,
        )
        self._latency = {
            op: metrics.PROVIDER_REQUEST_SECONDS.labels(self.name, op)
            for op in ("start_call", "lookup", "hangup", "poll")
        }
        # What this process has learnt, each bounded: campaign-number id → attempt id ("" when the
        # number is not one of ours), attempt id → contact id (for hangup), and call ids handled.
        self._attempt_by_number: dict[str, str] = {}
        self._contact_by_attempt: dict[str, str] = {}
        self._seen_calls: dict[str, None] = {}
        # The /calls page to read next; None until the first poll finds the newest page.
        self._page: int | None = None

    def __repr__(self) -> str:
        return f"UpcallProvider(name={self.name!r}, base_url={self._base!r}, campaign_id={self._campaign})"

    async def _request(
        self,
        op: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
    ) -> tuple[int, bytes]:
        # Exception text is never passed on: aiohttp puts the URL, and so the token, in some of it.
        query: dict[str, str | int] = {"auth_token": self._token, **(params or {})}
        started = time.perf_counter()
        try:
            async with self._client().request(
                method,
                f"{self._base}{path}",
                params=query,
                data=None if body is None else orjson.dumps(body),
                headers=self._headers if body is not None else None,
                allow_redirects=False,
            ) as resp:
                return resp.status, await resp.read()
        except aiohttp.ClientConnectorError:
            raise _NotSent("connection refused or unreachable") from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _Failed(type(exc).__name__) from None
        finally:
            self._latency[op].observe(time.perf_counter() - started)

    def _remember(self, table: dict[str, Any], key: str, value: Any) -> None:
        if len(table) >= _MAX_REMEMBERED:
            del table[next(iter(table))]
        table[key] = value

    # ------------------------------------------------------------------ start

    def contact_body(self, request: StartRequest) -> dict[str, Any]:
        """The POST /numbers body for an attempt (the seed's "Create a Number")."""
        attributes: dict[str, Any] = {
            **self._contact,
            "campaign_id": self._campaign,
            "phone": request.phone,
            self._attempt_field: request.attempt_id,
            "status": "active",
        }
        # Human callers dial an extension after connecting, which is what DTMF after answer is for;
        # pauses ("w", "W") mean nothing to a person.
        if request.dtmf:
            digits = "".join(c for c in request.dtmf if c in _DTMF_KEYS)
            if digits:
                attributes["extension"] = digits
        return {"data": {"type": "numbers", "attributes": attributes}}

    async def start_call(self, request: StartRequest) -> Accepted:
        # Step 1: the contact. Until step 2 nobody dials it, so every failure here is safe to requeue.
        try:
            status, payload = await self._request(
                "start_call", "POST", "/numbers", body=self.contact_body(request)
            )
        except _NotSent as exc:
            self._error("not_sent")
            raise StartError("not_sent", f"Upcall unreachable: {exc}") from None
        except _Failed as exc:
            self._error("not_sent")
            raise StartError(
                "not_sent", f"contact creation failed ({exc}); the number was not added to the campaign"
            ) from None
        if status not in (200, 201):
            self._reject(status, payload, step_one=True)
        contact_id = _data_id(payload)
        if contact_id is None:
            self._error("invalid_response")
            raise StartError(
                "not_sent", "contact created with an unreadable answer; not added to the campaign"
            )
        self._remember(self._contact_by_attempt, request.attempt_id, contact_id)
        # Step 2: adding the contact to the campaign is what puts it in front of the callers.
        body = {"data": {"type": "numbers", "attributes": {"list_contact_id": _int_or_str(contact_id)}}}
        try:
            status, payload = await self._request(
                "start_call", "POST", f"/campaigns/{self._campaign}/numbers", body=body
            )
        except _NotSent as exc:
            self._error("not_sent")
            raise StartError("not_sent", f"Upcall unreachable: {exc}") from None
        except _Failed as exc:
            self._error("ambiguous")
            raise StartError(
                "ambiguous", f"adding the number to the campaign failed after sending: {exc}"
            ) from None
        if status not in (200, 201):
            self._reject(status, payload, step_one=False)
        number_id = _data_id(payload)
        if number_id is None:
            self._error("invalid_response")
            raise StartError("ambiguous", "Upcall added the number with an unreadable answer")
        self._remember(self._attempt_by_number, number_id, request.attempt_id)
        return Accepted(call_id=number_id)

    def _reject(self, status: int, payload: bytes, *, step_one: bool) -> NoReturn:
        # The seed documents no error statuses or bodies: what is classified here is HTTP's meaning.
        if status == 429:
            if step_one:
                self._error("rate_limited")
                raise StartError("rate_limited", "Upcall rate limit on contact creation; nothing was queued")
            self._error("ambiguous")
            raise StartError("ambiguous", "429 while adding the number, without a not-processed guarantee")
        if status >= 500:
            if step_one:
                self._error("not_sent")
                raise StartError("not_sent", f"contact creation answered {status}; nothing was queued")
            self._error("ambiguous")
            raise StartError("ambiguous", f"adding the number to the campaign answered {status}")
        self._error("rejected")
        if status in (401, 402, 403, 404):
            # 404: the configured campaign does not exist. Every call would fail the same way.
            raise StartError(
                "rejected",
                f"Upcall refused the account or campaign ({status})",
                outcome=Outcome.ACCOUNT_ERROR,
                raw_status=str(status),
            )
        if status in (400, 422) and _mentions_phone(payload):
            raise StartError(
                "rejected",
                "Upcall says the phone number is invalid",
                outcome=Outcome.INVALID_NUMBER,
                raw_status=str(status),
            )
        raise StartError(
            "rejected",
            f"Upcall answered {status}",
            outcome=Outcome.PROVIDER_ERROR,
            raw_status=str(status),
        )

    # ------------------------------------------------------------------ lookup

    async def _numbers_where(self, op: str, field: str, value: str) -> list[dict[str, Any]]:
        """Campaign numbers whose `field` is `value` (the seed's filters on GET /campaigns/:id/numbers)."""
        try:
            status, payload = await self._request(
                op,
                "GET",
                f"/campaigns/{self._campaign}/numbers",
                params={field: value, "page[size]": self._page_size},
            )
        except (_NotSent, _Failed) as exc:
            raise ProviderUnavailable(f"listing campaign numbers failed: {exc}") from None
        if status != 200:
            raise ProviderUnavailable(f"listing campaign numbers answered {status}")
        return _records(payload)

    async def lookup(self, request: LookupRequest) -> CallEvent | None:
        try:
            return await self._lookup(request)
        except ProviderUnavailable:
            self._error("lookup_failed")
            raise

    async def _lookup(self, request: LookupRequest) -> CallEvent | None:
        number_id = request.call_id
        if number_id is None:
            found = [
                r
                for r in await self._numbers_where("lookup", self._attempt_field, request.attempt_id)
                if r.get("attributes", {}).get(self._attempt_field) == request.attempt_id
            ]
            if not found:
                # Not on the campaign, so no caller will ever dial it (a contact alone is never called).
                return None
            number_id = str(found[0]["id"])
            self._remember(self._attempt_by_number, number_id, request.attempt_id)
        try:
            status, payload = await self._request(
                "lookup",
                "GET",
                "/calls",
                params={
                    "campaign_id": self._campaign,
                    "to_number_id": number_id,
                    "page[size]": self._page_size,
                },
            )
        except (_NotSent, _Failed) as exc:
            raise ProviderUnavailable(f"listing calls failed: {exc}") from None
        if status != 200:
            raise ProviderUnavailable(f"listing calls answered {status}")
        # Upcall may call a number more than once (its callers retry); the latest call is the result.
        latest: CallEvent | None = None
        try:
            for record in _records(payload):
                if str(record["attributes"].get("campaign_number_id")) != number_id:
                    continue
                event = event_from_call(record, request.attempt_id)
                if event is not None and (latest is None or _called(event) >= _called(latest)):
                    latest = event
        except (KeyError, TypeError, ValueError) as exc:
            self._error("invalid_response")
            raise ProviderUnavailable(f"unreadable call record: {exc}") from None
        if latest is not None:
            return latest
        # On the campaign, waiting for a caller: the nearest thing to ringing Upcall has.
        return CallEvent(
            attempt_id=request.attempt_id, call_id=number_id, kind="ringing", raw_status="untried"
        )

    # ------------------------------------------------------------------ hangup

    async def hangup(self, attempt_id: str, call_id: str | None) -> None:
        """Disable the contact so no caller dials it (the seed has no way to end a call in progress)."""
        try:
            contact_id = self._contact_by_attempt.get(attempt_id)
            if contact_id is None:
                status, payload = await self._request(
                    "hangup", "GET", "/numbers", params={self._attempt_field: attempt_id}
                )
                if status != 200:
                    self._error("hangup_failed")
                    return
                ids = [
                    str(r["id"])
                    for r in _records(payload)
                    if r.get("attributes", {}).get(self._attempt_field) == attempt_id
                ]
            else:
                ids = [contact_id]
            body = {"data": {"type": "numbers", "attributes": {"status": "disabled"}}}
            for contact in ids:
                status, _ = await self._request("hangup", "PATCH", f"/numbers/{contact}", body=body)
                if status not in (200, 204, 404):
                    self._error("hangup_failed")
        except (_NotSent, _Failed, ProviderUnavailable, KeyError, TypeError):
            self._error("hangup_failed")

    # ------------------------------------------------------------------ callbacks and polling

    def parse_callback(self, request: CallbackRequest) -> CallEvent:
        raise CallbackError("malformed", "Upcall sends no callbacks; its results are polled from /calls")

    async def poll_events(self) -> list[CallEvent]:
        """Final calls that appeared since the last poll, at most max_pages_per_poll pages of them.

        On an error mid-way the events found so far are returned and the cursor stays on the page
        that failed, so nothing is skipped; only a poll that got nowhere raises.
        """
        events: list[CallEvent] = []
        try:
            page: _Page | None = None
            if self._page is None:
                # A new process starts at the newest page; older calls belong to attempts that are
                # finished or that the sweeper reconciles through lookup.
                page = await self._calls_page(1)
                self._page = page.last_page or 1
                if self._page != 1:
                    page = None
            for _ in range(self._max_pages):
                if page is None:
                    page = await self._calls_page(self._page)
                for record in page.records:
                    call_id = str(record.get("id"))
                    if call_id in self._seen_calls:
                        continue
                    event = await self._event_for(record)
                    if event is not None:
                        events.append(event)
                    self._remember(self._seen_calls, call_id, None)
                if page.next_page is None or not page.records:
                    break
                self._page = page.next_page
                page = None
        except ProviderUnavailable as exc:
            self._error("poll_failed")
            if not events:
                raise
            # The cursor stayed on the page that failed: the next poll resumes there.
            log.warning("polling %s stopped early: %s", self.name, exc)
        return events

    async def _calls_page(self, number: int) -> _Page:
        try:
            status, payload = await self._request(
                "poll",
                "GET",
                "/calls",
                params={
                    "campaign_id": self._campaign,
                    "page[number]": number,
                    "page[size]": self._page_size,
                },
            )
        except (_NotSent, _Failed) as exc:
            raise ProviderUnavailable(f"polling calls failed: {exc}") from None
        if status != 200:
            raise ProviderUnavailable(f"polling calls answered {status}")
        try:
            data = orjson.loads(payload)
            records = data["data"]
            if not isinstance(records, list):
                raise TypeError("data must be a list")
            links = data.get("links") or {}
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            self._error("invalid_response")
            raise ProviderUnavailable(f"unreadable calls page: {type(exc).__name__}") from None
        return _Page(
            [r for r in records if isinstance(r, dict)],
            self._page_of(links.get("next"), number + 1),
            self._page_of(links.get("last"), None),
        )

    def _page_of(self, link: Any, default: int | None) -> int | None:
        """The page number a pagination link points at; links elsewhere are not followed."""
        if not isinstance(link, str) or not link:
            return None
        parts = urlsplit(link)
        if parts.scheme and (parts.scheme, parts.netloc) != self._origin:
            return None
        values = parse_qs(parts.query).get("page[number]")
        if not values:
            return default
        try:
            return max(1, int(values[0]))
        except ValueError:
            return default

    async def _event_for(self, record: Mapping[str, Any]) -> CallEvent | None:
        try:
            attrs = record["attributes"]
            number_id = str(attrs["campaign_number_id"])
            if attrs.get("status") in PENDING_STATUSES:
                return None
            attempt_id = self._attempt_by_number.get(number_id)
            if attempt_id is None:
                attempt_id = await self._resolve(number_id, attrs.get("to"))
            if not attempt_id:
                return None  # a number someone else put on the campaign
            return event_from_call(record, attempt_id)
        except (KeyError, TypeError, ValueError):
            self._error("invalid_response")
            return None  # one unreadable record must not stall the cursor

    async def _resolve(self, number_id: str, phone: Any) -> str:
        """The attempt id written on a campaign number this process did not create ("" if none)."""
        if isinstance(phone, str) and phone:
            for r in await self._numbers_where("poll", "phone", phone):
                value = r.get("attributes", {}).get(self._attempt_field)
                self._remember(self._attempt_by_number, str(r.get("id")), value if _is_uuid(value) else "")
        if number_id not in self._attempt_by_number:
            self._remember(self._attempt_by_number, number_id, "")
        return self._attempt_by_number[number_id]


_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _called(event: CallEvent) -> dt.datetime:
    if event.ended_at is None:
        return _EPOCH
    return event.ended_at - dt.timedelta(seconds=event.duration_seconds)


class _Page:
    __slots__ = ("last_page", "next_page", "records")

    def __init__(self, records: list[dict[str, Any]], next_page: int | None, last_page: int | None) -> None:
        self.records = records
        self.next_page = next_page
        self.last_page = last_page


def _is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _int_or_str(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def _data_id(payload: bytes) -> str | None:
    try:
        value = orjson.loads(payload)["data"]["id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) and str(value) else None


def _records(payload: bytes) -> list[dict[str, Any]]:
    try:
        data = orjson.loads(payload)["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise ProviderUnavailable("unreadable list answer") from None
    if not isinstance(data, list):
        raise ProviderUnavailable("list answer without a data list")
    return [r for r in data if isinstance(r, dict) and "id" in r]


def _mentions_phone(payload: bytes) -> bool:
    """Whether an error body blames the phone: JSON-API `errors[].source.pointer` or a Rails-style key."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return b"phone" in payload.lower()
    if not isinstance(data, dict):
        return False
    errors = data.get("errors")
    if isinstance(errors, list):
        for e in errors:
            if isinstance(e, dict):
                source = e.get("source")
                pointer = source.get("pointer", "") if isinstance(source, dict) else ""
                text = f"{pointer} {e.get('title', '')} {e.get('detail', '')} {e.get('code', '')}"
                if "phone" in text.lower():
                    return True
    elif isinstance(errors, dict) and "phone" in errors:
        return True
    return "phone" in data


def _config(account: ProviderAccount) -> dict[str, Any]:
    """The account's options, validated; SettingsError names every bad key."""
    opts = dict(account.options)
    errors: list[str] = []
    known = {
        "campaign_id",
        "attempt_field",
        "contact",
        "content_type",
        "page_size",
        "max_pages_per_poll",
        "queue_timeout_seconds",
    }
    for key in sorted(set(opts) - known):
        errors.append(f"{key}: unknown option (known: {sorted(known)})")
    campaign = opts.get("campaign_id")
    if isinstance(campaign, str) and campaign.isdigit():
        campaign = int(campaign)
    if type(campaign) is not int or campaign < 1:
        errors.append("campaign_id: required, the Upcall campaign's numeric id")
    field = opts.get("attempt_field", "title")
    if field not in ATTEMPT_FIELDS:
        errors.append(f"attempt_field: must be one of {sorted(ATTEMPT_FIELDS)}, got {field!r}")
    contact = opts.get("contact", {})
    if not isinstance(contact, dict):
        errors.append("contact: must be an object of contact attributes")
        contact = {}
    for key, value in contact.items():
        if key == "address":
            if (
                not isinstance(value, dict)
                or set(value) - _ADDRESS_FIELDS
                or not all(isinstance(v, str) for v in value.values())
            ):
                errors.append(f"contact.address: must map {sorted(_ADDRESS_FIELDS)} to strings")
        elif key not in _CONTACT_FIELDS or key == field:
            errors.append(
                f"contact.{key}: not settable (allowed: {sorted(_CONTACT_FIELDS - {field})} and address)"
            )
        elif not isinstance(value, str):
            errors.append(f"contact.{key}: must be a string")
    content_type = opts.get("content_type", "text/json")
    if not isinstance(content_type, str) or "/" not in content_type:
        errors.append("content_type: must be a media type such as text/json")
    for key, default, hi in (("page_size", 100, 1000), ("max_pages_per_poll", 5, 100)):
        value = opts.get(key, default)
        if type(value) is not int or not 1 <= value <= hi:
            errors.append(f"{key}: must be an integer within 1..{hi}")
    queue = opts.get("queue_timeout_seconds", 86400)
    if not isinstance(queue, int | float) or isinstance(queue, bool) or not 60 <= queue <= 30 * 86400:
        errors.append("queue_timeout_seconds: must be a number of seconds within 60..2592000")
    if "auth_token" not in account.secrets:
        errors.append("auth_token_env: required, the environment variable holding the Upcall API token")
    if errors:
        raise SettingsError(
            "invalid settings:\n  " + "\n  ".join(f"provider {account.name!r}: {e}" for e in errors)
        )
    return {
        "campaign_id": campaign,
        "attempt_field": field,
        "contact": contact,
        "content_type": content_type,
        "page_size": opts.get("page_size", 100),
        "max_pages_per_poll": opts.get("max_pages_per_poll", 5),
        "queue_timeout_seconds": float(queue) if isinstance(queue, int | float) else 86400.0,
    }


def from_account(account: ProviderAccount, settings: Settings) -> UpcallProvider:
    config = _config(account)
    return UpcallProvider(
        account.base_url,
        account.secret("auth_token"),
        config["campaign_id"],
        attempt_field=config["attempt_field"],
        contact=config["contact"],
        content_type=config["content_type"],
        page_size=config["page_size"],
        max_pages_per_poll=config["max_pages_per_poll"],
        timeout_seconds=account.timeout_seconds,
        max_connections=settings.max_inflight_requests,
        max_calls_per_second=account.max_calls_per_second,
        name=account.name,
        queue_timeout_seconds=config["queue_timeout_seconds"],
    )
