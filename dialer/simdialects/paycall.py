"""Paycall Dynamic Dialer API v2.1 (seed 001): what dialer/providers/paycall.py speaks.

HTTP Basic auth (options `username`, `password`) on every path; JSON bodies whatever the
Content-Type (the seed's curl examples send JSON with curl's form default):

- POST /v2/calls/dialer: one call to `number`, reported to `return_address` when it ends.
- POST /v2/calls/simple_dialer, then POST /v2/calls/start_campaign/{unique_id}: the call starts only
  with the second request; the seed gives this API no return_address, so it calls nobody back.
- GET /v2/calls/cdr_by_number/{unique_id}/{phone} and /v2/calls/cdr_by_campaign/{unique_id}: the
  seed's CDR CSV (header, every field quoted, CRLF); a call still live has no row yet.

Where the seed is silent this dialect chooses, and the adapter tolerates more than it: success is
200 `{"status": "success", "unique_id": …}`, errors are `{"status": "failed", "error": "<text>"}`
(401 for credentials, 400 for content), and the `return_address` callback is the call's CDR record
as a JSON object of strings under the CDR column names, unsigned (Paycall signs nothing).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import functools
import hmac
import io
import math
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from aiohttp import web

from dialer.simdialects import (
    DEFAULT_START_STATUSES,
    MAX_ATTEMPT_ID_LENGTH,
    Admission,
    Callback,
    CallView,
    StartSpec,
    register,
)
from dialer.simulator import SimulatorConfig, SimulatorState

__all__ = ["CDR_HEADER", "PaycallDialect", "cause_name", "cdr_row"]

CDR_HEADER: Final = (
    "cli",
    "phone_number",
    "start_time",
    "answer_time",
    "hangup_time",
    "duration",
    "billsec",
    "hangup_cause",
    "unique_campaign_id",
    "steps",
)
_PHONE = re.compile(r"^\+?([1-9]\d{6,14})$")
_DTMF = re.compile(r"^[0-9#*Ww]*$")
_TRUE_FALSE = ("true", "false")

# The simulator's Q.850 codes as the seed's hangup_cause names. Its congestion (34) has no row in the
# seed's table, whose congestion-class causes are NORMAL_TEMPORARY_FAILURE and RECOVERY_ON_TIMER_EXPIRE.
_CAUSES: Final[Mapping[int, str]] = {
    1: "UNALLOCATED_NUMBER",
    16: "NORMAL_CLEARING",
    17: "USER_BUSY",
    19: "NO_ANSWER",
    34: "NORMAL_TEMPORARY_FAILURE",
}


class _BadRequest(Exception):
    pass


def cause_name(call: CallView) -> str:
    """The hangup_cause Paycall would report for a finished simulator call."""
    if call.status == "canceled":
        return "ORIGINATOR_CANCEL"
    if call.status == "completed" and call.answered_wall is not None:
        return "NORMAL_CLEARING"
    return _CAUSES.get(call.cause_code or 0, "NORMAL_UNSPECIFIED")


def _time(wall: float | None) -> str:
    # The seed's form, "2016-03-30 14:53:50+03"; the simulator reports UTC.
    if wall is None:
        return ""
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%d %H:%M:%S+00")


def cdr_row(call: CallView) -> dict[str, str]:
    """A finished call's CDR record, every value a string as in the CSV."""
    answered = call.answered_wall is not None
    steps = {"steps": [], "invalid": [], "unique_id": call.attempt_id} if answered else None
    return {
        "cli": call.from_ or "",
        "phone_number": str(call.extra.get("phone", call.to.lstrip("+"))),
        "start_time": _time(call.started_wall),
        "answer_time": _time(call.answered_wall),
        "hangup_time": _time(call.ended_wall),
        "duration": str(math.ceil(call.duration_seconds)),
        "billsec": str(call.billsec()),
        "hangup_cause": cause_name(call),
        "unique_campaign_id": call.attempt_id,
        "steps": "" if steps is None else orjson.dumps(steps).decode(),
    }


def _csv(rows: list[dict[str, str]]) -> web.Response:
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(CDR_HEADER)
    for row in rows:
        writer.writerow([row[c] for c in CDR_HEADER])
    return web.Response(status=200, text=out.getvalue(), content_type="text/csv")


def _failed(status: int, error: str, **headers: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"status": "failed", "error": error}),
        content_type="application/json",
        headers=headers or None,
    )


def _flag(data: Mapping[str, Any], key: str, default: str) -> str:
    value = data.get(key, default)
    if value not in _TRUE_FALSE:
        raise _BadRequest(f'{key} must be the string "true" or "false", got {value!r}')
    return str(value)


def _check_flags(value: Any, where: str) -> None:
    flag_keys = ("have_dependency", "prompt_is_file", "dtmf_invalid_text_is_file", "is_recording")
    if isinstance(value, dict):
        for key, item in value.items():
            if key in flag_keys and item not in _TRUE_FALSE:
                raise _BadRequest(f'{where}.{key} must be the string "true" or "false", got {item!r}')
            _check_flags(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_flags(item, f"{where}[{i}]")


def _int(data: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = data.get(key, default)
    # "Integer/String" in the seed; a JSON true is neither.
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if type(value) is not int or not low <= value <= high:
        raise _BadRequest(f"{key} must be an integer within {low}..{high}")
    return value


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _BadRequest(f"{key} must be a string")
    return value


def _unique_id(data: Mapping[str, Any]) -> str:
    unique_id = data.get("unique_id")
    if unique_id is None:
        # "If none provided, a custom id will be returned."
        return str(uuid.uuid4())
    if not isinstance(unique_id, str) or not 0 < len(unique_id) <= MAX_ATTEMPT_ID_LENGTH:
        raise _BadRequest(f"unique_id must be a string of 1..{MAX_ATTEMPT_ID_LENGTH} characters")
    return unique_id


def _phone(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    match = _PHONE.match(value) if isinstance(value, str) else None
    if match is None:
        raise _BadRequest(f"{key} is invalid: expected an E.164 phone number such as +97272000000")
    return match.group(1)


def _dtmf(data: Mapping[str, Any], key: str) -> str | None:
    value = _optional_str(data, key)
    if value is not None and not _DTMF.match(value):
        raise _BadRequest(f"{key} may hold only 0-9, #, *, W and w")
    return value


def parse_dialer(data: Mapping[str, Any]) -> StartSpec:
    """A /v2/calls/dialer body as a StartSpec; _BadRequest names the first problem."""
    return_address = data.get("return_address")
    if not isinstance(return_address, str) or not return_address.startswith(("http://", "https://")):
        raise _BadRequest("return_address is required: an http(s) URL to report to")
    if _flag(data, "numbers_from_queue", "false") == "true":
        raise _BadRequest(
            'numbers_from_queue "true" needs upload_phones, which this simulator does not serve'
        )
    unique_id = _unique_id(data)
    phone = _phone(data, "number")
    ring_timeout = _int(data, "ring_timeout", 10, 1, 600)
    max_retries = _int(data, "max_retries", 3, 0, 10000)
    _int(data, "retry_wait_time", 0, 0, 86400)
    if data.get("schedule") not in (None, 0, "0"):
        raise _BadRequest("schedule is not simulated: send none, or 0, to dial at once")
    ivr = data.get("ivr")
    if not isinstance(ivr, dict):
        raise _BadRequest("ivr is required: an object with count_steps and steps")
    steps = ivr.get("steps")
    count = ivr.get("count_steps")
    if type(count) is not int or count < 1 or not isinstance(steps, list) or not steps:
        raise _BadRequest("ivr needs count_steps >= 1 and a non-empty steps list")
    _flag(ivr, "have_dependency", "false")
    _check_flags(ivr, "ivr")
    return StartSpec(
        unique_id,
        f"+{phone}",
        _optional_str(data, "cli"),
        ring_timeout,
        return_address,
        None,
        _dtmf(data, "dtmf_originator"),
        {"flow": "dialer", "phone": phone, "max_retries": max_retries},
    )


def parse_simple(data: Mapping[str, Any]) -> StartSpec:
    """A /v2/calls/simple_dialer body as a StartSpec (dialed at start_campaign)."""
    if _flag(data, "from_campaign", "false") == "true":
        raise _BadRequest('from_campaign "true" needs upload_phones, which this simulator does not serve')
    unique_id = _unique_id(data)
    phone = _phone(data, "leg_a")
    _flag(data, "tts", "true")
    sound = data.get("sound")
    if not isinstance(sound, str) or not sound:
        raise _BadRequest("sound is required: the text (tts) or uploaded file to play")
    if data.get("dial_at") not in (None, 0, "", "0"):
        raise _BadRequest("dial_at is not simulated: send none, or 0, to dial at start_campaign")
    ring_timeout = _int(data, "ring_timeout", 10, 1, 600)
    max_retries = _int(data, "max_retries", 1, 0, 10000)
    _int(data, "answer_delay", 1, 0, 3600)
    _int(data, "retry_wait_time", 3, 0, 86400)
    if data.get("leg_b"):
        _phone(data, "leg_b")
    _dtmf(data, "dtmf_b")
    # No return_address in this API: the spec's URL is a placeholder nobody is called on.
    return StartSpec(
        unique_id,
        f"+{phone}",
        _optional_str(data, "cid_a"),
        ring_timeout,
        "http://paycall.invalid/simple_dialer",
        None,
        _dtmf(data, "dtmf_a"),
        {"flow": "simple_dialer", "phone": phone, "max_retries": max_retries},
    )


class PaycallDialect:
    name = "paycall"
    # Paycall answers 200 to an accepted call; a unique_id reused for another number is refused as
    # request content, like any other content error.
    start_statuses: Mapping[str, int] = {
        **DEFAULT_START_STATUSES,
        "created": 200,
        "duplicate": 200,
        "conflict": 400,
    }

    def __init__(self, options: Mapping[str, Any], config: SimulatorConfig) -> None:
        unknown = sorted(set(options) - {"username", "password"})
        if unknown or not options.get("username") or not options.get("password"):
            raise ValueError(f"the paycall dialect needs username and password; unknown options: {unknown}")
        self._username = str(options["username"])
        self._password = str(options["password"])
        # simple_dialer campaigns waiting for start_campaign, kept afterwards so a repeated
        # start_campaign is a duplicate rather than unknown.
        self._campaigns: dict[str, StartSpec] = {}

    def routes(self, state: SimulatorState) -> list[web.RouteDef]:
        return [
            web.post("/v2/calls/dialer", functools.partial(self.dialer, state)),
            web.post("/v2/calls/simple_dialer", functools.partial(self.simple_dialer, state)),
            web.post("/v2/calls/start_campaign/{unique_id}", functools.partial(self.start_campaign, state)),
            web.get("/v2/calls/cdr_by_number/{unique_id}/{phone}", functools.partial(self.cdr, state)),
            web.get("/v2/calls/cdr_by_campaign/{unique_id}", functools.partial(self.cdr, state)),
        ]

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        username, sep, password = decoded.partition(":")
        # Both compared, always: no early exit that times which half was wrong.
        user_ok = hmac.compare_digest(username.encode(), self._username.encode())
        password_ok = hmac.compare_digest(password.encode(), self._password.encode())
        return bool(sep) and user_ok and password_ok

    @staticmethod
    def _unauthorized() -> web.Response:
        return _failed(401, "authentication error", **{"WWW-Authenticate": 'Basic realm="dialer"'})

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            data = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise _BadRequest("the body must be a JSON document") from None
        if not isinstance(data, dict):
            raise _BadRequest("the body must be a JSON object")
        return data

    async def dialer(self, state: SimulatorState, request: web.Request) -> web.Response:
        if not self._authorized(request):
            state.refuse("unauthorized", 401, dialect=self)
            return self._unauthorized()
        try:
            spec = parse_dialer(await self._body(request))
        except _BadRequest as exc:
            state.refuse("invalid", 400, dialect=self)
            return _failed(400, str(exc))
        return await self._admit(state, spec)

    async def simple_dialer(self, state: SimulatorState, request: web.Request) -> web.Response:
        if not self._authorized(request):
            state.refuse("unauthorized", 401, dialect=self)
            return self._unauthorized()
        try:
            spec = parse_simple(await self._body(request))
        except _BadRequest as exc:
            state.refuse("invalid", 400, dialect=self)
            return _failed(400, str(exc))
        known = self._campaigns.get(spec.attempt_id)
        if known is not None and known.to != spec.to:
            state.refuse("conflict", 400, dialect=self, attempt_id=spec.attempt_id, to=spec.to)
            return _failed(400, "unique_id already names another campaign")
        self._campaigns.setdefault(spec.attempt_id, spec)
        return web.json_response({"status": "success", "unique_id": spec.attempt_id})

    async def start_campaign(self, state: SimulatorState, request: web.Request) -> web.Response:
        if not self._authorized(request):
            state.refuse("unauthorized", 401, dialect=self)
            return self._unauthorized()
        unique_id = request.match_info["unique_id"]
        spec = self._campaigns.get(unique_id)
        if spec is None:
            state.refuse("invalid", 404, dialect=self, attempt_id=unique_id)
            return _failed(404, "no campaign with this unique_id")
        return await self._admit(state, spec)

    async def _admit(self, state: SimulatorState, spec: StartSpec) -> web.Response:
        admission: Admission = state.admit(spec, dialect=self)
        if admission.slow_seconds:
            await asyncio.sleep(admission.slow_seconds)
        if admission.call is None:
            if admission.reason in ("max_cps", "rate_limited"):
                return _failed(admission.status, "too many requests")
            if admission.reason == "conflict":
                return _failed(admission.status, "unique_id already used for another call")
            return _failed(admission.status, "internal error")
        if admission.after_create_error:
            return _failed(admission.status, "internal error")
        return web.json_response({"status": "success", "unique_id": spec.attempt_id}, status=admission.status)

    async def cdr(self, state: SimulatorState, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        unique_id = request.match_info["unique_id"]
        call = state.find(unique_id, dialect=self)
        if call is None:
            if unique_id in self._campaigns:
                return _csv([])  # created, never started: no call, no row
            return _failed(404, "no campaign with this unique_id")
        phone = request.match_info.get("phone")
        if call.ended_wall is None or (phone is not None and phone.lstrip("+") != call.to.lstrip("+")):
            return _csv([])
        return _csv([cdr_row(call)])

    def render_event(
        self, call: CallView, status: str, sequence: int, final: bool, event_id: str
    ) -> Callback | None:
        # Paycall reports once, "when everything else is done", and only where a return_address was
        # given (the dialer API).
        if not final or call.extra.get("flow") != "dialer":
            return None
        body = orjson.dumps(cdr_row(call))
        return call.callback_url, body, {"Content-Type": "application/json"}


register("paycall", PaycallDialect)
