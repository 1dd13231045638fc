"""Twilio Programmable Voice: the 2010-04-01 Calls resource over HTTP Basic, form-encoded status
callbacks signed with X-Twilio-Signature.

What dialer/providers/twilio.py speaks. Options: ``account_sid`` and ``auth_token`` (the Basic
credentials and the signing key), and ``answered_by_last_digit`` ({"7": "machine_start"}): the
AnsweredBy an answered call reports when its start request asked for MachineDetection ("human"
otherwise). The attempt id is the ``attempt`` query parameter of StatusCallback, as the worker sends
it: Twilio itself has no idempotency key.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import math
import re
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from hashlib import sha1
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson
from aiohttp import web
from multidict import MultiDictProxy

from dialer.simdialects import (
    DEFAULT_START_STATUSES,
    E164,
    MAX_ATTEMPT_ID_LENGTH,
    Admission,
    Callback,
    CallView,
    StartSpec,
    register,
)
from dialer.simulator import SimulatorConfig, SimulatorState

__all__ = ["CREATE_CALL_PARAMETERS", "TwilioDialect", "sign"]

API = "/2010-04-01/Accounts/{AccountSid}"
ACCOUNT_SID: Final = re.compile(r"^AC[0-9a-fA-F]{32}$")
SEND_DIGITS: Final = re.compile(r"^[0-9A-D#*wW]{1,32}$")
EVENTS: Final = frozenset({"initiated", "ringing", "answered", "completed"})
MACHINE_DETECTION: Final = frozenset({"Enable", "DetectMessageEnd"})
# Every form parameter of CreateCallRequest in Twilio's OpenAPI (twilio_api_v2010, Calls.json POST).
# Anything else is refused, so an adapter that drifts from the API fails here first.
CREATE_CALL_PARAMETERS: Final = frozenset(
    {
        "To", "From", "Method", "FallbackUrl", "FallbackMethod", "StatusCallback", "StatusCallbackEvent",
        "StatusCallbackMethod", "SendDigits", "Timeout", "Record", "RecordingChannels",
        "RecordingStatusCallback", "RecordingStatusCallbackMethod", "SipAuthUsername", "SipAuthPassword",
        "MachineDetection", "MachineDetectionTimeout", "RecordingStatusCallbackEvent", "Trim", "CallerId",
        "MachineDetectionSpeechThreshold", "MachineDetectionSpeechEndThreshold",
        "MachineDetectionSilenceTimeout", "AsyncAmd", "AsyncAmdStatusCallback",
        "AsyncAmdStatusCallbackMethod", "Byoc", "CallReason", "CallToken", "RecordingTrack", "TimeLimit",
        "ClientNotificationUrl", "Url", "Twiml", "ApplicationSid",
    }
)  # fmt: skip
_PAGE_SIZE_MAX = 1000


def sign(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    """X-Twilio-Signature: base64 HMAC-SHA1 of the URL plus name+value of each sorted parameter."""
    data = url + "".join(name + value for name, value in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), sha1).digest()).decode()


def _rfc2822(wall: float | None) -> str | None:
    if wall is None:
        return None
    return format_datetime(datetime.fromtimestamp(wall, UTC).replace(microsecond=0))


def _error(status: int, code: int, message: str) -> web.Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class _Invalid(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _one(form: MultiDictProxy[Any], name: str) -> str | None:
    values = form.getall(name, [])
    if len(values) > 1:
        raise _Invalid(21200, f"{name} must be given once")
    value = values[0] if values else None
    if value is not None and not isinstance(value, str):
        raise _Invalid(21200, f"{name} must be a form field, not a file")
    return value


class TwilioDialect:
    name = "twilio"
    # Twilio answers 201 to every create; it has no idempotency, so a repeat looks new to the caller
    # (the core still counts it as a duplicate).
    start_statuses: Mapping[str, int] = {
        **DEFAULT_START_STATUSES,
        "duplicate": 201,
        "after_create_error": 500,
        "error_5xx": 503,
    }

    def __init__(self, options: Mapping[str, Any], config: SimulatorConfig) -> None:
        unknown = sorted(set(options) - {"account_sid", "auth_token", "answered_by_last_digit"})
        account_sid, auth_token = options.get("account_sid"), options.get("auth_token")
        if unknown or not isinstance(account_sid, str) or not isinstance(auth_token, str) or not auth_token:
            raise ValueError(
                "the twilio dialect needs account_sid and auth_token and takes answered_by_last_digit; "
                f"unknown: {unknown}"
            )
        if not ACCOUNT_SID.match(account_sid):
            raise ValueError("account_sid must be AC followed by 32 hex digits")
        answered_by = {str(k): v for k, v in dict(options.get("answered_by_last_digit") or {}).items()}
        for digit, value in answered_by.items():
            if len(digit) != 1 or not digit.isdigit() or not isinstance(value, str):
                raise ValueError("answered_by_last_digit maps single digits to AnsweredBy strings")
        self.account_sid = account_sid
        self._auth_token = auth_token
        self._basic = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self._answered_by: dict[str, str] = answered_by
        self._config = config
        # Calls by To, for the list endpoint; the core keeps no such index. Entries left behind by a
        # reset are skipped (and dropped) when listed.
        self._by_to: dict[str, list[CallView]] = {}
        # Sorted parameter names of each start request received, repeats included: what the tests
        # read to check the exact request shape an adapter sent.
        self.request_shapes: Counter[tuple[str, ...]] = Counter()

    def routes(self, state: SimulatorState) -> list[web.RouteDef]:
        return [
            web.post(f"{API}/Calls.json", functools.partial(self.start, state)),
            web.get(f"{API}/Calls.json", functools.partial(self.list_calls, state)),
            web.get(f"{API}/Calls/{{Sid}}.json", functools.partial(self.fetch, state)),
            web.post(f"{API}/Calls/{{Sid}}.json", functools.partial(self.update, state)),
        ]

    def _authorized(self, request: web.Request) -> bool:
        return request.match_info["AccountSid"] == self.account_sid and hmac.compare_digest(
            request.headers.get("Authorization", "").encode(), self._basic.encode()
        )

    def resource(self, call: CallView) -> dict[str, Any]:
        """The Call resource as Twilio renders it (the fields a client reads, nulls where unknown)."""
        answered_by = call.extra.get("answered_by") if call.answered_wall is not None else None
        over = call.ended_wall is not None
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Calls/{call.call_id}.json"
        return {
            "sid": call.call_id,
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "direction": "outbound-api",
            "to": call.to,
            "from": call.from_,
            "status": call.status,
            "date_created": _rfc2822(call.started_wall),
            "date_updated": _rfc2822(call.ended_wall or call.answered_wall or call.started_wall),
            # Twilio has no start time for a call still queued.
            "start_time": None if call.status == "queued" else _rfc2822(call.started_wall),
            "end_time": _rfc2822(call.ended_wall),
            "duration": str(call.billsec()) if over else None,
            "answered_by": answered_by,
            "parent_call_sid": None,
            "price": None,
            "price_unit": "USD",
            "queue_time": "0",
            "uri": uri,
        }

    def _json(self, status: int, payload: Any) -> web.Response:
        return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")

    def _spec(self, form: MultiDictProxy[Any]) -> StartSpec:
        unknown = sorted(set(form) - CREATE_CALL_PARAMETERS)
        if unknown:
            raise _Invalid(21200, f"unknown parameters {unknown}")
        to = _one(form, "To")
        if not to:
            raise _Invalid(21201, "No 'To' number is specified")
        if not E164.match(to):
            raise _Invalid(21211, f"Invalid 'To' Phone Number: {to}")
        from_ = _one(form, "From")
        if not from_:
            raise _Invalid(21213, "No 'From' number is specified")
        if not E164.match(from_):
            raise _Invalid(21212, f"Invalid 'From' Phone Number: {from_}")
        url, twiml = _one(form, "Url"), _one(form, "Twiml")
        if not (url or twiml or _one(form, "ApplicationSid")):
            raise _Invalid(21200, "Url, Twiml or ApplicationSid is required")
        if url is not None and not url.startswith(("http://", "https://")):
            raise _Invalid(21200, "Url must be an absolute http(s) URL")
        timeout_raw = _one(form, "Timeout") or "60"
        if not timeout_raw.isdigit() or not 1 <= int(timeout_raw) <= 600:
            raise _Invalid(21200, "Timeout must be an integer within 1..600")
        callback = _one(form, "StatusCallback") or ""
        if callback and not callback.startswith(("http://", "https://")):
            raise _Invalid(21200, "StatusCallback must be an absolute http(s) URL")
        # The simulator's delivery only POSTs.
        if (_one(form, "StatusCallbackMethod") or "POST") != "POST":
            raise _Invalid(21200, "StatusCallbackMethod: this simulator delivers callbacks by POST only")
        events = form.getall("StatusCallbackEvent", []) or ["completed"]
        bad = sorted({str(e) for e in events} - EVENTS)
        if bad:
            raise _Invalid(21200, f"StatusCallbackEvent values {bad} are not among {sorted(EVENTS)}")
        digits = _one(form, "SendDigits")
        if digits is not None and not SEND_DIGITS.match(digits):
            raise _Invalid(21200, "SendDigits must be up to 32 of 0-9 A-D # * w W")
        amd = _one(form, "MachineDetection")
        if amd is not None and amd not in MACHINE_DETECTION:
            raise _Invalid(21200, f"MachineDetection must be one of {sorted(MACHINE_DETECTION)}")
        attempt = parse_qs(urlsplit(callback).query).get("attempt", [""])[0]
        if not 0 < len(attempt) <= MAX_ATTEMPT_ID_LENGTH:
            # Without it the simulator cannot key the call; real Twilio would not care.
            raise _Invalid(21200, "this simulator needs ?attempt=<id> on StatusCallback")
        extra: dict[str, Any] = {"events": frozenset(events)}
        # SendDigits switches machine detection off (Twilio's rule), so no verdict is reported.
        if amd is not None and digits is None:
            extra["answered_by"] = self._answered_by.get(to[-1], "human")
        return StartSpec(attempt, to, from_, int(timeout_raw), callback, None, digits, extra)

    async def start(self, state: SimulatorState, request: web.Request) -> web.Response:
        if not self._authorized(request):
            state.refuse("unauthorized", 401, dialect=self)
            return _error(401, 20003, "Authenticate")
        form = await request.post()
        self.request_shapes[tuple(sorted(name for name, _ in form.items()))] += 1
        try:
            spec = self._spec(form)
        except _Invalid as exc:
            to = form.get("To")
            state.refuse("invalid", 400, dialect=self, to=to if isinstance(to, str) else None)
            return _error(400, exc.code, exc.message)
        admission = state.admit(spec, dialect=self)
        call = admission.call
        if call is None:
            return self._refusal(admission)
        if admission.outcome == "created":
            self._by_to.setdefault(call.to, []).append(call)
        if admission.slow_seconds:
            await asyncio.sleep(admission.slow_seconds)
        if admission.after_create_error:
            return _error(admission.status, 20500, "Internal Server Error")
        # A new call is always "queued" in Twilio's answer, whatever the simulation has done since.
        return self._json(admission.status, {**self.resource(call), "status": "queued"})

    def _refusal(self, admission: Admission) -> web.Response:
        if admission.reason in ("max_cps", "rate_limited"):
            return _error(admission.status, 20429, "Too Many Requests")
        if admission.reason == "error_5xx":
            return _error(admission.status, 20503, "Service Unavailable")
        return _error(admission.status, 20409, "attempt id already used for another call")

    async def fetch(self, state: SimulatorState, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, 20003, "Authenticate")
        call = state.find_by_call_id(request.match_info["Sid"], dialect=self)
        if call is None:
            return _error(404, 20404, "The requested resource was not found")
        return self._json(200, self.resource(call))

    async def update(self, state: SimulatorState, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, 20003, "Authenticate")
        call = state.find_by_call_id(request.match_info["Sid"], dialect=self)
        if call is None:
            return _error(404, 20404, "The requested resource was not found")
        form = await request.post()
        status = form.get("Status")
        if set(form) != {"Status"} or status not in ("canceled", "completed"):
            return _error(400, 21200, "only Status=canceled or Status=completed is simulated")
        # canceled ends only a queued or ringing call (Twilio: "no effect on in-progress calls");
        # completed would also cut a talking call, which the simulator cannot do: it answers with the
        # call unchanged, as Twilio does for a call already over.
        if call.status in ("queued", "ringing"):
            state.cancel_call(call)
        return self._json(200, self.resource(call))

    async def list_calls(self, state: SimulatorState, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, 20003, "Authenticate")
        query = request.query
        to = query.get("To")
        if not to:
            return _error(400, 21200, "this simulator lists calls by To only")
        try:
            page_size = min(int(query.get("PageSize", "50")), _PAGE_SIZE_MAX)
            page = int(query.get("Page", "0"))
        except ValueError:
            return _error(400, 21200, "PageSize and Page must be integers")
        if page_size < 1 or page < 0:
            return _error(400, 21200, "PageSize must be >= 1 and Page >= 0")
        since = query.get("StartTime>")
        status = query.get("Status")
        known = [c for c in self._by_to.get(to, ()) if state.find(c.attempt_id, dialect=self) is c]
        self._by_to[to] = known
        matches: list[CallView] = []
        for call in reversed(known):  # newest first, as Twilio lists
            if status is not None and call.status != status:
                continue
            if since is not None:
                started = self.resource(call)["start_time"]
                # StartTime> takes a date (YYYY-MM-DD, UTC); a call not started yet never matches.
                day = datetime.fromtimestamp(call.started_wall, UTC).date().isoformat()
                if started is None or day < since[:10]:
                    continue
            matches.append(call)
        chunk = matches[page * page_size : (page + 1) * page_size]
        base = f"/2010-04-01/Accounts/{self.account_sid}/Calls.json"
        filters = [(k, v) for k, v in query.items() if k not in ("Page", "PageSize", "PageToken")]

        def uri(n: int) -> str:
            return f"{base}?{urlencode([*filters, ('PageSize', str(page_size)), ('Page', str(n)), ('PageToken', f'PT{n}')])}"

        more = (page + 1) * page_size < len(matches)
        return self._json(
            200,
            {
                "calls": [self.resource(c) for c in chunk],
                "page": page,
                "page_size": page_size,
                "start": page * page_size,
                "end": page * page_size + max(len(chunk) - 1, 0),
                "uri": uri(page),
                "first_page_uri": uri(0),
                "next_page_uri": uri(page + 1) if more else None,
                "previous_page_uri": uri(page - 1) if page > 0 else None,
            },
        )

    def render_event(
        self, call: CallView, status: str, sequence: int, final: bool, event_id: str
    ) -> Callback | None:
        url = call.callback_url
        event = "completed" if final else "answered" if status == "in-progress" else "ringing"
        if not url or event not in call.extra.get("events", ()):
            return None
        if final:
            at = call.ended_wall
        elif status == "in-progress":
            at = call.answered_wall
        else:
            at = call.started_wall
        params = [
            ("AccountSid", self.account_sid),
            ("ApiVersion", "2010-04-01"),
            ("CallSid", call.call_id),
            ("CallStatus", status),
            ("Called", call.to),
            ("Caller", call.from_ or ""),
            ("CallbackSource", "call-progress-events"),
            ("Direction", "outbound-api"),
            ("From", call.from_ or ""),
            # 0 is "initiated", which the simulator's calls skip.
            ("SequenceNumber", str(sequence)),
            ("Timestamp", _rfc2822(at if at is not None else time.time()) or ""),
            ("To", call.to),
        ]
        answered_by = call.extra.get("answered_by")
        if answered_by is not None and call.answered_wall is not None and (final or status == "in-progress"):
            params.append(("AnsweredBy", answered_by))
        if final:
            billsec = call.billsec()
            params.append(("CallDuration", str(billsec)))
            params.append(("Duration", str(math.ceil(billsec / 60))))
            if call.sip_code is not None:
                params.append(("SipResponseCode", str(call.sip_code)))
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": sign(self._auth_token, url, params),
            "I-Twilio-Idempotency-Token": event_id,
            "User-Agent": "TwilioProxy/1.1",
        }
        return url, urlencode(params).encode(), headers


register("twilio", TwilioDialect)
