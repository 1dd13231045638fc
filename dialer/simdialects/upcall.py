"""Upcall (seed 000): contacts, campaign numbers and polled call results, JSON-API under /api/v1.

Emulates the seed's endpoints over the simulator's calls: POST /numbers creates a contact (nobody
calls it yet), POST /campaigns/:id/numbers puts it in front of the "callers", which is the start
request the core admits, with the attempt id read from the contact's ``attempt_field`` (default
``title``). A call's result appears in GET /calls (and /campaigns/:id/numbers/calls) once the core
ends it, in the order calls ended, paginated with ``page[number]``/``page[size]`` and JSON-API
``links`` (self, next, last) that carry the auth token as the seed's do. PATCH /numbers/:id with
``status: disabled`` cancels a call that is not yet answered. Upcall has no webhooks: nothing is
posted to anyone. Every request is checked for ``?auth_token=`` and kept in ``requests`` (method,
path, query without the token's value, Content-Type, JSON body) for tests to inspect.

Options: ``auth_token`` (required), ``campaign_id`` (1), ``from_number`` (the campaign's caller id),
``ring_timeout_seconds`` (30: how long a simulated caller lets it ring), ``attempt_field``
(``title``), ``status_overrides`` ({phone: Upcall call status}: report that status instead of the
core's, for statuses only people produce, such as ``dnc`` or ``call_back_later``).
"""

from __future__ import annotations

import asyncio
import hmac
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

import orjson
from aiohttp import web

from dialer.simdialects import (
    DEFAULT_START_STATUSES,
    E164,
    MAX_ATTEMPT_ID_LENGTH,
    NO_EXTRA,
    Admission,
    Callback,
    CallView,
    StartSpec,
    register,
)
from dialer.simulator import FINAL_STATUSES, SimulatorConfig, SimulatorState

__all__ = ["CALL_STATUSES", "UpcallDialect"]

# The call statuses the seed lists for GET /calls.
CALL_STATUSES: Final = frozenset(
    {
        "completed",
        "completed_fu_call",
        "completed_fu_email",
        "completed_fu_inperson",
        "call_back_later",
        "busy",
        "no_answer",
        "voicemail",
        "hungup",
        "not_interested",
        "dnc",
        "no_service",
        "technical_issue",
        "wrong_number",
        "untried",
    }
)
# Campaign-number status (the seed's filter vocabulary) once a call has that status.
_NUMBER_STATUS: Final[Mapping[str, str]] = {
    "completed": "completed",
    "completed_fu_call": "completed",
    "completed_fu_email": "completed",
    "completed_fu_inperson": "completed",
    "not_interested": "completed",
    "hungup": "completed",
    "voicemail": "voicemail",
    "dnc": "dnc",
    "no_service": "failed",
    "wrong_number": "failed",
    "technical_issue": "failed",
    "busy": "incompleted",
    "no_answer": "incompleted",
    "call_back_later": "incompleted",
}
_CONTACT_FIELDS: Final = frozenset(
    {"first_name", "last_name", "title", "company", "email", "phone", "extension", "status"}
)
_ADDRESS_FIELDS: Final = ("recipient", "line1", "line2", "city", "region", "postal_code", "country")
_FILTERS: Final = (*sorted(_CONTACT_FIELDS), *_ADDRESS_FIELDS)
_OPTIONS: Final = frozenset(
    {"auth_token", "campaign_id", "from_number", "ring_timeout_seconds", "attempt_field", "status_overrides"}
)
_DEFAULT_PAGE_SIZE: Final = 25
_MAX_PAGE_SIZE: Final = 1000


def _errors(status: int, title: str, pointer: str | None = None) -> web.Response:
    error: dict[str, Any] = {"status": str(status), "title": title}
    if pointer is not None:
        error["source"] = {"pointer": pointer}
    return web.Response(
        status=status, body=orjson.dumps({"errors": [error]}), content_type="application/json"
    )


def _json(status: int, payload: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


def _iso(wall: float) -> str:
    return (
        datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(wall * 1000) % 1000:03d}Z"
    )


class _BadRequest(Exception):
    def __init__(self, status: int, title: str, pointer: str | None = None) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.pointer = pointer


class _Number:
    """A contact on the campaign; its call, once started, is the core's call for ``attempt_id``."""

    __slots__ = ("attempt_id", "contact_id", "id")

    def __init__(self, number_id: int, contact_id: int, attempt_id: str) -> None:
        self.id = number_id
        self.contact_id = contact_id
        self.attempt_id = attempt_id


class UpcallDialect:
    name = "upcall"
    start_statuses: Mapping[str, int] = {**DEFAULT_START_STATUSES, "conflict": 422}

    def __init__(self, options: Mapping[str, Any], config: SimulatorConfig) -> None:
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise ValueError(f"unknown upcall dialect options {unknown}; known: {sorted(_OPTIONS)}")
        token = options.get("auth_token")
        if not isinstance(token, str) or not token:
            raise ValueError("the upcall dialect needs auth_token")
        campaign = options.get("campaign_id", 1)
        if type(campaign) is not int or campaign < 1:
            raise ValueError("campaign_id must be a positive integer")
        from_number = options.get("from_number", "+16501231234")
        if not isinstance(from_number, str) or not E164.match(from_number):
            raise ValueError("from_number must be an E.164 number")
        ring = options.get("ring_timeout_seconds", 30)
        if type(ring) is not int or not 1 <= ring <= 600:
            raise ValueError("ring_timeout_seconds must be an integer within 1..600")
        field = options.get("attempt_field", "title")
        if field not in ("title", "company", "first_name", "last_name"):
            raise ValueError("attempt_field must be title, company, first_name or last_name")
        overrides = dict(options.get("status_overrides") or {})
        bad = sorted(v for v in overrides.values() if v not in CALL_STATUSES - {"untried"})
        if bad:
            raise ValueError(f"status_overrides has statuses the seed does not list: {bad}")
        self._token = token
        self.campaign_id = campaign
        self._from = from_number
        self._ring = ring
        self._field = field
        self._overrides: dict[str, str] = overrides
        self._contacts: dict[int, dict[str, Any]] = {}
        self._numbers: dict[int, _Number] = {}
        self._number_by_attempt: dict[str, int] = {}
        self._number_by_contact: dict[int, int] = {}
        # Numbers whose call has not reached /calls yet, and the calls that have, in the order they ended.
        self._pending: dict[int, None] = {}
        self._calls: list[tuple[int, int, str]] = []  # (call id, campaign-number id, Upcall status)
        self._call_index: dict[int, int] = {}
        self._next_contact = 100
        self._next_number = 2000
        self._next_call = 500
        self.requests: deque[dict[str, Any]] = deque(maxlen=10_000)

    # ------------------------------------------------------------------ plumbing

    def routes(self, state: SimulatorState) -> list[web.RouteDef]:
        def bind(handler: Any, *, start: bool = False) -> Any:
            # Refusals of the start request are counted and logged by the core; other endpoints are not.
            async def wrapped(request: web.Request) -> web.Response:
                raw = await request.read()
                self._note(request, raw)
                if not self._authorized(request):
                    if start:
                        state.refuse("unauthorized", 401, dialect=self)
                    return _errors(401, "Unauthorized")
                body: Any = None
                if raw:
                    try:
                        body = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        if start:
                            state.refuse("invalid", 400, dialect=self)
                        return _errors(400, "Body is not valid JSON")
                try:
                    response: web.Response = await handler(state, request, body)
                except _BadRequest as exc:
                    if start:
                        state.refuse("invalid", exc.status, dialect=self)
                    return _errors(exc.status, exc.title, exc.pointer)
                return response

            return wrapped

        prefix = "/api/v1"
        return [
            web.post(f"{prefix}/numbers", bind(self._create_contact)),
            web.get(f"{prefix}/numbers", bind(self._list_contacts)),
            web.get(f"{prefix}/numbers/{{id}}", bind(self._get_contact)),
            web.patch(f"{prefix}/numbers/{{id}}", bind(self._update_contact)),
            web.post(f"{prefix}/campaigns/{{cid}}/numbers", bind(self._add_to_campaign, start=True)),
            web.get(f"{prefix}/campaigns/{{cid}}/numbers", bind(self._list_numbers)),
            web.get(f"{prefix}/campaigns/{{cid}}/numbers/calls", bind(self._list_calls)),
            web.get(f"{prefix}/calls", bind(self._list_calls)),
            web.get(f"{prefix}/calls/{{id}}", bind(self._get_call)),
        ]

    def _note(self, request: web.Request, raw: bytes) -> None:
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = raw.decode(errors="replace")
        query = {k: ("<token>" if k == "auth_token" else v) for k, v in request.query.items()}
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": query,
                "content_type": request.headers.get("Content-Type"),
                "body": body,
            }
        )

    def _authorized(self, request: web.Request) -> bool:
        return hmac.compare_digest(request.query.get("auth_token", "").encode(), self._token.encode())

    def _campaign(self, request: web.Request) -> None:
        if request.match_info.get("cid", str(self.campaign_id)) != str(self.campaign_id):
            raise _BadRequest(404, "Campaign not found")

    # ------------------------------------------------------------------ contacts

    def _contact_record(self, contact_id: int) -> dict[str, Any]:
        return {"id": str(contact_id), "type": "number", "attributes": self._contacts[contact_id]}

    async def _create_contact(self, state: SimulatorState, request: web.Request, body: Any) -> web.Response:
        attrs = _attributes(body, "numbers")
        if attrs.get("campaign_id") != self.campaign_id:
            raise _BadRequest(404, "Campaign not found", "/data/attributes/campaign_id")
        contact: dict[str, Any] = {"list_id": self.campaign_id, "status": "active", "extension": None}
        for key, value in attrs.items():
            if key == "campaign_id":
                continue
            if key == "address":
                if not isinstance(value, dict) or set(value) - set(_ADDRESS_FIELDS):
                    raise _BadRequest(422, "Invalid address", "/data/attributes/address")
                contact["address"] = value
            elif key in _CONTACT_FIELDS and (value is None or isinstance(value, str)):
                contact[key] = value
            else:
                raise _BadRequest(422, f"Invalid attribute {key}", f"/data/attributes/{key}")
        if not isinstance(contact.get("phone"), str) or not E164.match(contact["phone"]):
            raise _BadRequest(422, "Phone is not a valid phone number", "/data/attributes/phone")
        if contact["status"] not in ("active", "disabled"):
            raise _BadRequest(422, "Status must be active or disabled", "/data/attributes/status")
        contact_id = self._next_contact
        self._next_contact += 1
        self._contacts[contact_id] = contact
        return _json(201, {"data": self._contact_record(contact_id)})

    def _contact_id(self, request: web.Request) -> int:
        raw = request.match_info["id"]
        if not raw.isdigit() or int(raw) not in self._contacts:
            raise _BadRequest(404, "Number not found")
        return int(raw)

    async def _get_contact(self, state: SimulatorState, request: web.Request, body: Any) -> web.Response:
        return _json(200, {"data": self._contact_record(self._contact_id(request))})

    async def _list_contacts(self, state: SimulatorState, request: web.Request, body: Any) -> web.Response:
        records = [
            self._contact_record(i) for i in self._contacts if _matches(self._contacts[i], request.query)
        ]
        return _page(request, records)

    async def _update_contact(self, state: SimulatorState, request: web.Request, body: Any) -> web.Response:
        contact_id = self._contact_id(request)
        attrs = _attributes(body, "numbers")
        contact = self._contacts[contact_id]
        for key, value in attrs.items():
            if key not in _CONTACT_FIELDS - {"phone"} or not (value is None or isinstance(value, str)):
                raise _BadRequest(422, f"Invalid attribute {key}", f"/data/attributes/{key}")
        if attrs.get("status", "active") not in ("active", "disabled"):
            raise _BadRequest(422, "Status must be active or disabled", "/data/attributes/status")
        contact.update(attrs)
        number_id = self._number_by_contact.get(contact_id)
        if contact["status"] == "disabled" and number_id is not None:
            # A disabled contact is taken off the callers' lists; a call already talking goes on.
            call = state.find(self._numbers[number_id].attempt_id, dialect=self)
            if call is not None:
                state.cancel_call(call)
        return _json(200, {"data": self._contact_record(contact_id)})

    # ------------------------------------------------------------------ campaign numbers (the start)

    def _number_record(self, number_id: int, state: SimulatorState) -> dict[str, Any]:
        number = self._numbers[number_id]
        contact = self._contacts[number.contact_id]
        status = self._call_status(state, number)
        attrs = {k: v for k, v in contact.items() if k != "list_id"}
        attrs["status"] = "untried" if status is None else _NUMBER_STATUS.get(status, "incompleted")
        return {"id": str(number_id), "type": "campaign_numbers", "attributes": attrs}

    async def _add_to_campaign(self, state: SimulatorState, request: web.Request, body: Any) -> web.Response:
        self._campaign(request)
        attrs = _attributes(body, "numbers")
        raw_id = attrs.get("list_contact_id")
        contact_id = int(raw_id) if isinstance(raw_id, str) and raw_id.isdigit() else raw_id
        if type(contact_id) is not int or contact_id not in self._contacts:
            raise _BadRequest(422, "Unknown list_contact_id", "/data/attributes/list_contact_id")
        contact = self._contacts[contact_id]
        if contact["list_id"] != self.campaign_id or contact["status"] != "active":
            raise _BadRequest(
                422, "Contact is not active on this campaign's list", "/data/attributes/list_contact_id"
            )
        attempt_id = contact.get(self._field)
        if not isinstance(attempt_id, str) or not 0 < len(attempt_id) <= MAX_ATTEMPT_ID_LENGTH:
            # The simulator keys calls by attempt id; real Upcall would take the number anyway.
            raise _BadRequest(422, f"The simulator needs the attempt id in {self._field}", "/data/attributes")
        extension = contact.get("extension")
        spec = StartSpec(
            attempt_id,
            contact["phone"],
            self._from,
            self._ring,
            "",
            str(self.campaign_id),
            extension if isinstance(extension, str) else None,
            NO_EXTRA,
        )
        admission = state.admit(spec, dialect=self)
        if admission.call is None:
            return self._refusal(admission)
        number_id = self._number_by_attempt.get(attempt_id)
        if number_id is None:
            number_id = self._next_number
            self._next_number += 1
            self._numbers[number_id] = _Number(number_id, contact_id, attempt_id)
            self._number_by_attempt[attempt_id] = number_id
            self._number_by_contact[contact_id] = number_id
            self._pending[number_id] = None
        if admission.slow_seconds:
            await asyncio.sleep(admission.slow_seconds)
        if admission.after_create_error:
            return _errors(admission.status, "Internal server error")
        return _json(admission.status, {"data": self._number_record(number_id, state)})

    def _refusal(self, admission: Admission) -> web.Response:
        if admission.reason in ("max_cps", "rate_limited"):
            return _errors(admission.status, "Too many requests")
        if admission.reason == "error_5xx":
            return _errors(admission.status, "Service unavailable")
        return _errors(admission.status, "Attempt id already used for another number", "/data/attributes")

    async def _list_numbers(self, state: SimulatorState, request: web.Request, body: Any) -> web.Response:
        self._campaign(request)
        self._harvest(state)
        records = [self._number_record(i, state) for i in self._numbers]
        records = [r for r in records if _matches(r["attributes"], request.query)]
        return _page(request, records)

    # ------------------------------------------------------------------ calls

    def _call_status(self, state: SimulatorState, number: _Number) -> str | None:
        """The Upcall status of the number's call, or None while no caller has finished it."""
        call = state.find(number.attempt_id, dialect=self)
        if call is None or call.status not in FINAL_STATUSES or call.status == "canceled":
            return None
        override = self._overrides.get(call.to)
        if override is not None:
            return override
        if call.status == "completed":
            return "completed"
        if call.status == "busy":
            return "busy"
        if call.status == "no-answer":
            return "no_answer"
        # failed: an unallocated number is a dead line to a caller; anything else broke on the way.
        return "no_service" if call.cause_code in (1, 2, 3, 22, 28) else "technical_issue"

    def _harvest(self, state: SimulatorState) -> None:
        """Move calls the core has ended onto /calls, in the order they ended."""
        ended: list[tuple[float, int, str]] = []
        for number_id in list(self._pending):
            number = self._numbers[number_id]
            call = state.find(number.attempt_id, dialect=self)
            if call is None or call.status == "canceled":
                del self._pending[number_id]  # never called by anyone: no call record
                continue
            if call.status in FINAL_STATUSES:
                status = self._call_status(state, number)
                assert status is not None
                ended.append((call.ended_wall or 0.0, number_id, status))
                del self._pending[number_id]
        for _, number_id, status in sorted(ended):
            self._call_index[self._next_call] = len(self._calls)
            self._calls.append((self._next_call, number_id, status))
            self._next_call += 1

    def _call_record(
        self, state: SimulatorState, call_id: int, number_id: int, status: str
    ) -> dict[str, Any]:
        number = self._numbers[number_id]
        call = state.find(number.attempt_id, dialect=self)
        to = call.to if call is not None else self._contacts[number.contact_id]["phone"]
        answered = call is not None and call.answered_wall is not None
        duration = (
            int(call.billsec() if answered else round(call.duration_seconds)) if call is not None else 0
        )
        # Durations are simulated seconds and times real ones; dating the call back from its real end
        # keeps the end it implies (datetime_called + duration) true under any time_scale.
        called = None if call is None else _iso((call.ended_wall or call.started_wall) - duration)
        return {
            "id": str(call_id),
            "type": "call",
            "attributes": {
                "note": "",
                "status": status,
                "duration": duration,
                "cost": "0.0",
                "campaign_number_id": number_id,
                "from": self._from,
                "to": to,
                "transcript": None,
                "datetime_called": called,
                "cost_currency": "USD",
                "recording_urls": [],
                "caller": {
                    "id": 100,
                    "name": "Simulated Caller",
                    "profile_url": "https://api.upcall.com/callers/100",
                },
            },
        }

    async def _list_calls(self, state: SimulatorState, request: web.Request, body: Any) -> web.Response:
        self._campaign(request)
        self._harvest(state)
        q = request.query
        campaign = q.get("campaign_id")
        if campaign is not None and campaign != str(self.campaign_id):
            return _page(request, [])
        number = q.get("to_number_id")
        status = q.get("status")
        if status is not None and status not in CALL_STATUSES:
            raise _BadRequest(400, "Unknown status filter")
        low = _number(q, "min_duration")
        high = _number(q, "max_duration")
        records = []
        for call_id, number_id, call_status in self._calls:
            if (number is not None and number != str(number_id)) or (
                status is not None and status != call_status
            ):
                continue
            record = self._call_record(state, call_id, number_id, call_status)
            duration = record["attributes"]["duration"]
            if (low is not None and duration < low) or (high is not None and duration > high):
                continue
            records.append(record)
        return _page(request, records)

    async def _get_call(self, state: SimulatorState, request: web.Request, body: Any) -> web.Response:
        self._harvest(state)
        raw = request.match_info["id"]
        index = self._call_index.get(int(raw)) if raw.isdigit() else None
        if index is None:
            raise _BadRequest(404, "Call not found")
        # The seed shows this one record without the "data" envelope the others have.
        return _json(200, self._call_record(state, *self._calls[index]))

    def render_event(
        self, call: CallView, status: str, sequence: int, final: bool, event_id: str
    ) -> Callback | None:
        return None  # Upcall has no webhooks: results are read from /calls


def _attributes(body: Any, kind: str) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        raise _BadRequest(400, "Body must be a JSON-API document with data", "/data")
    data = body["data"]
    if data.get("type") != kind:
        raise _BadRequest(422, f"data.type must be {kind}", "/data/type")
    attrs = data.get("attributes")
    if not isinstance(attrs, dict):
        raise _BadRequest(422, "data.attributes must be an object", "/data/attributes")
    return attrs


def _matches(attrs: Mapping[str, Any], query: Mapping[str, str]) -> bool:
    address = attrs.get("address") or {}
    for key in _FILTERS:
        wanted = query.get(key)
        if wanted is None:
            continue
        value = address.get(key) if key in _ADDRESS_FIELDS else attrs.get(key)
        if value != wanted:
            return False
    return True


def _number(query: Mapping[str, str], key: str) -> float | None:
    raw = query.get(key)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise _BadRequest(400, f"{key} must be a number") from None


def _page(request: web.Request, records: list[dict[str, Any]]) -> web.Response:
    q = request.query
    try:
        number = max(1, int(q.get("page[number]", "1")))
        size = min(_MAX_PAGE_SIZE, max(1, int(q.get("page[size]", str(_DEFAULT_PAGE_SIZE)))))
    except ValueError:
        raise _BadRequest(400, "page[number] and page[size] must be integers") from None
    last = max(1, -(-len(records) // size))
    base = f"{request.scheme}://{request.host}{request.path}"
    others = [(k, v) for k, v in q.items() if k not in ("page[number]", "page[size]")]

    def link(page: int) -> str:
        return f"{base}?{urlencode([*others, ('page[number]', str(page)), ('page[size]', str(size))])}"

    links: dict[str, str] = {"self": link(number), "last": link(last)}
    if number < last:
        links["next"] = link(number + 1)
    start = (number - 1) * size
    return _json(200, {"data": records[start : start + size], "links": links})


register("upcall", UpcallDialect)
