"""Adapter for Twilio Programmable Voice: the 2010-04-01 REST Calls resource and its status callbacks.

Twilio has no idempotency key for creating calls, so this adapter never repeats a start request
itself, and reconciliation without a call SID can only prove absence, never identity (see lookup).
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from hashlib import sha1
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

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
from scheduler.outcomes import Outcome, from_sip

if TYPE_CHECKING:
    from dialer.providers import ProviderAccount
    from dialer.settings import Settings

API_VERSION = "2010-04-01"
SIGNATURE_HEADER = "X-Twilio-Signature"
ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
# Every progress event: "answered" is what lets the worker tell an answered call from one that only
# reached "completed", and ringing/initiated keep its deadline honest while the phone rings.
STATUS_CALLBACK_EVENTS = ("initiated", "ringing", "answered", "completed")
MACHINE_DETECTION_MODES = ("Enable", "DetectMessageEnd")
TWIML_MAX_CHARS = 4000

_RINGING = frozenset({"queued", "initiated", "ringing"})
_FINAL = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})

# Create-call error codes (twilio.com/docs/api/errors) whose meaning is certain enough to act on.
_INVALID_TO = frozenset({21211, 21214, 21217})  # invalid / unreachable / not a valid phone number
_BLOCKED = frozenset({21215, 21216})  # geo permissions forbid the destination; number blocked
_ACCOUNT = frozenset({20003, 20005, 21210, 21212})  # auth, suspended account, From not verified/invalid
_NOT_PROCESSED = 20429  # "never processed, always safe to retry"

_OPTIONS = frozenset(
    {
        "account_sid",
        "answer_url",
        "twiml",
        "machine_detection",
        "from_number",
        "clock_skew_seconds",
        "max_lookup_pages",
    }
)


def compute_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """X-Twilio-Signature of a request: base64 HMAC-SHA1 over the URL, then name+value for every
    POST parameter sorted by name (repeated names: their values sorted too)."""
    by_name: dict[str, list[str]] = {}
    for name, value in params:
        by_name.setdefault(name, []).append(value)
    parts = [url]
    for name in sorted(by_name):
        for value in sorted(by_name[name]):
            parts.append(name + value)
    mac = hmac.new(auth_token.encode(), "".join(parts).encode(), sha1)
    return base64.b64encode(mac.digest()).decode()


def _url_variants(url: str) -> set[str]:
    # Twilio signs some URLs with the default port spelled out and some without, so its SDKs accept
    # both; we accept exactly what they accept.
    parts = urlsplit(url)
    variants = {url}
    host = parts.netloc
    try:
        port = parts.port
    except ValueError:
        return variants
    if port is not None:
        host = host[: host.rindex(":")]
        variants.add(urlunsplit(parts._replace(netloc=host)))
    else:
        default = 443 if parts.scheme == "https" else 80
        variants.add(urlunsplit(parts._replace(netloc=f"{host}:{default}")))
    return variants


def signature_valid(auth_token: str, url: str, params: Sequence[tuple[str, str]], signature: str) -> bool:
    """True when `signature` is Twilio's for this URL and form body (with or without the port)."""
    given = signature.strip().encode()
    valid = False
    for variant in _url_variants(url):
        # No early exit: the comparison count must not depend on which variant matched.
        valid |= hmac.compare_digest(compute_signature(auth_token, variant, params).encode(), given)
    return valid


def _int_field(fields: Mapping[str, str], name: str) -> int | None:
    raw = fields.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise ValueError(f"{name} must be a non-negative integer, got {raw!r}")
    return int(raw)


def _rfc2822(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def answered_outcome(answered_by: str | None) -> Outcome:
    """AnsweredBy → outcome: AMD off, "human" and "unknown" are a person (we cannot prove otherwise)."""
    if answered_by is None:
        return Outcome.ANSWERED_HUMAN
    if answered_by.startswith("machine"):
        return Outcome.ANSWERED_MACHINE
    if answered_by == "fax":
        return Outcome.ANSWERED_FAX
    return Outcome.ANSWERED_HUMAN


def was_answered(status: str, call_duration: int, sip: int | None, answered_by: str | None) -> bool:
    """The answer signal of a final status (providers.md §6): talk time, an AMD verdict or SIP 2xx.

    "completed" alone is not one: a completed call with no talk time and no verdict is not claimed
    as a conversation (which would end the number) nor as a ring-out.
    """
    if status != "completed":
        return False
    return call_duration > 0 or bool(answered_by) or (sip is not None and 200 <= sip < 300)


def outcome_of(
    status: str, *, call_duration: int = 0, sip: int | None = None, answered_by: str | None = None
) -> Outcome:
    """Outcome of a final CallStatus with what Twilio reports beside it."""
    if status == "completed":
        if was_answered(status, call_duration, sip, answered_by):
            return answered_outcome(answered_by)
        return Outcome.UNKNOWN
    if status == "busy":
        return Outcome.BUSY
    if status == "no-answer":
        # Twilio folds "declined" into no-answer; the SIP code is the only way to see it.
        if sip is not None and from_sip(sip) is Outcome.REJECTED:
            return Outcome.REJECTED
        return Outcome.NO_ANSWER
    if status == "canceled":
        return Outcome.CANCELED
    if status == "failed":
        if sip is None:
            return Outcome.UNKNOWN
        outcome = from_sip(sip)
        # A 2xx on a failed call contradicts itself; never let it end the number as answered.
        return Outcome.UNKNOWN if outcome is Outcome.ANSWERED_HUMAN else outcome
    raise ValueError(f"{status!r} is not a final call status")


def event_from_callback(attempt_id: str, fields: Mapping[str, str]) -> CallEvent:
    """A status callback's form fields as an event. Raises ValueError on what no call status can be."""
    status = fields.get("CallStatus")
    call_sid = fields.get("CallSid")
    if not status or not call_sid:
        raise ValueError("CallStatus and CallSid are required")
    _int_field(fields, "SequenceNumber")  # ordering is the worker's (forward-only); garbage is not
    sip = _int_field(fields, "SipResponseCode")
    duration = _int_field(fields, "CallDuration") or 0
    answered_by = fields.get("AnsweredBy") or None
    at = _rfc2822(fields.get("Timestamp"))
    if status in _RINGING:
        # Also a `ringing` that arrives after `completed`: it stays a ringing event, which the worker
        # cannot move an ended attempt backwards with.
        return CallEvent(attempt_id=attempt_id, call_id=call_sid, kind="ringing", raw_status=status)
    if status == "in-progress":
        return CallEvent(
            attempt_id=attempt_id, call_id=call_sid, kind="answered", answered_at=at, raw_status=status
        )
    if status not in _FINAL:
        raise ValueError(f"unknown CallStatus {status!r}")
    answered = was_answered(status, duration, sip, answered_by)
    return CallEvent(
        attempt_id=attempt_id,
        call_id=call_sid,
        kind="ended",
        outcome=outcome_of(status, call_duration=duration, sip=sip, answered_by=answered_by),
        answered_at=at - dt.timedelta(seconds=duration) if answered and at is not None else None,
        ended_at=at,
        duration_seconds=float(duration),
        billsec=duration if answered else 0,
        raw_status=status,
        raw_cause=answered_by,
        sip_code=sip,
    )


def event_from_resource(attempt_id: str, data: Mapping[str, Any]) -> CallEvent:
    """A Call resource (fetch or list) as an event; it carries no SIP code, so failures say less."""
    status = data.get("status")
    sid = data.get("sid")
    if not isinstance(status, str) or not isinstance(sid, str):
        raise TypeError("status and sid must be strings")
    raw_duration = data.get("duration")
    duration = int(raw_duration) if raw_duration not in (None, "") else 0
    if duration < 0:
        raise ValueError("duration must be >= 0")
    answered_by = data.get("answered_by") if isinstance(data.get("answered_by"), str) else None
    if status in _RINGING:
        return CallEvent(attempt_id=attempt_id, call_id=sid, kind="ringing", raw_status=status)
    if status == "in-progress":
        return CallEvent(attempt_id=attempt_id, call_id=sid, kind="answered", raw_status=status)
    if status not in _FINAL:
        raise ValueError(f"unknown call status {status!r}")
    ended = _rfc2822(data.get("end_time"))
    answered = was_answered(status, duration, None, answered_by)
    return CallEvent(
        attempt_id=attempt_id,
        call_id=sid,
        kind="ended",
        outcome=outcome_of(status, call_duration=duration, answered_by=answered_by),
        answered_at=ended - dt.timedelta(seconds=duration) if answered and ended is not None else None,
        ended_at=ended,
        duration_seconds=float(duration),
        billsec=duration if answered else 0,
        raw_status=status,
        raw_cause=answered_by,
    )


def _error_code(payload: bytes) -> int | None:
    try:
        code = orjson.loads(payload)["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


class TwilioProvider(HttpAdapter):
    def __init__(
        self,
        base_url: str,
        account_sid: str,
        auth_token: str,
        *,
        answer_url: str | None = None,
        twiml: str | None = None,
        machine_detection: str | None = None,
        from_number: str | None = None,
        api_key: tuple[str, str] | None = None,
        timeout_seconds: float = 10.0,
        max_connections: int = 200,
        max_calls_per_second: float = 0.0,
        clock_skew_seconds: float = 5.0,
        max_lookup_pages: int = 5,
        name: str = "twilio",
    ) -> None:
        if not ACCOUNT_SID.match(account_sid):
            raise ValueError("account_sid must look like AC followed by 32 hex digits")
        if (answer_url is None) == (twiml is None):
            raise ValueError("exactly one of answer_url and twiml is required")
        if answer_url is not None and not answer_url.startswith(("http://", "https://")):
            raise ValueError("answer_url must be an http(s) URL")
        if twiml is not None and not 0 < len(twiml) <= TWIML_MAX_CHARS:
            raise ValueError(f"twiml must be 1..{TWIML_MAX_CHARS} characters")
        if machine_detection is not None and machine_detection not in MACHINE_DETECTION_MODES:
            raise ValueError(f"machine_detection must be one of {list(MACHINE_DETECTION_MODES)}")
        if clock_skew_seconds < 0 or max_lookup_pages < 1:
            raise ValueError("clock_skew_seconds must be >= 0 and max_lookup_pages >= 1")
        self.name = name
        self.account_sid = account_sid
        self._base = base_url.rstrip("/")
        self._calls_url = f"{self._base}/{API_VERSION}/Accounts/{account_sid}/Calls.json"
        self._call_prefix = f"{self._base}/{API_VERSION}/Accounts/{account_sid}/Calls/"
        self._auth_token = auth_token
        # An API key, when given, replaces the auth token for REST calls only: Twilio still signs
        # callbacks with the account's auth token.
        login, password = api_key if api_key is not None else (account_sid, auth_token)
        self._headers = {
            "Authorization": "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode(),
            "Accept": "application/json",
        }
        self._form_headers = {**self._headers, "Content-Type": "application/x-www-form-urlencoded"}
        self._answer: tuple[str, str] = (
            ("Url", answer_url) if answer_url is not None else ("Twiml", twiml or "")
        )
        self._machine_detection = machine_detection
        self._from_number = from_number
        self._skew = dt.timedelta(seconds=clock_skew_seconds)
        self._max_pages = max_lookup_pages
        self._init_http(
            timeout_seconds=timeout_seconds,
            max_connections=max_connections,
            max_calls_per_second=max_calls_per_second,
        )
        self._latency_start = metrics.PROVIDER_REQUEST_SECONDS.labels(self.name, "start_call")
        self._latency_lookup = metrics.PROVIDER_REQUEST_SECONDS.labels(self.name, "lookup")
        self._latency_hangup = metrics.PROVIDER_REQUEST_SECONDS.labels(self.name, "hangup")

    def __repr__(self) -> str:
        return f"TwilioProvider(name={self.name!r}, account_sid={self.account_sid!r})"

    def start_fields(self, request: StartRequest) -> list[tuple[str, str]]:
        """The CreateCall form, in sending order; repeated names are how Twilio takes lists."""
        caller_id = request.caller_id or self._from_number
        if caller_id is None:
            raise StartError(
                "rejected",
                "no caller ID: set the campaign's caller_id or the account's from_number",
                outcome=Outcome.ACCOUNT_ERROR,
                raw_status="no_caller_id",
            )
        fields = [
            ("To", request.phone),
            ("From", caller_id),
            self._answer,
            ("Timeout", str(request.ring_timeout_seconds)),
            ("StatusCallback", request.callback_url),
            ("StatusCallbackMethod", "POST"),
            *(("StatusCallbackEvent", event) for event in STATUS_CALLBACK_EVENTS),
        ]
        if request.dtmf:
            fields.append(("SendDigits", request.dtmf))
        if self._machine_detection is not None:
            # Twilio ignores MachineDetection when SendDigits is set; sent anyway, so the request
            # says what the account asked for.
            fields.append(("MachineDetection", self._machine_detection))
        return fields

    async def start_call(self, request: StartRequest) -> Accepted:
        body = urlencode(self.start_fields(request)).encode()
        started = time.perf_counter()
        try:
            async with self._client().post(self._calls_url, data=body, headers=self._form_headers) as resp:
                payload = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_failure(exc) from None
        finally:
            self._latency_start.observe(time.perf_counter() - started)
        if status in (200, 201):
            try:
                sid = orjson.loads(payload)["sid"]
                if not isinstance(sid, str) or not sid:
                    raise TypeError("sid must be a non-empty string")
            except (orjson.JSONDecodeError, KeyError, TypeError):
                self._error("invalid_response")
                raise StartError("ambiguous", "Twilio accepted the call with an unreadable body") from None
            return Accepted(call_id=sid)
        raise self._classify(status, _error_code(payload))

    def _classify(self, status: int, code: int | None) -> StartError:
        raw = str(code) if code is not None else str(status)
        if status == 429:
            if code == _NOT_PROCESSED:
                self._error("rate_limited")
                return StartError(
                    "rate_limited", "Twilio 20429: too many requests (not processed)", raw_status=raw
                )
            self._error("ambiguous")
            return StartError(
                "ambiguous", f"Twilio answered 429 with code {code} (not 20429)", raw_status=raw
            )
        if status >= 500:
            self._error("ambiguous")
            return StartError("ambiguous", f"Twilio answered {status}", raw_status=raw)
        self._error("rejected")
        if code in _INVALID_TO:
            return StartError(
                "rejected",
                f"Twilio {code}: invalid To number",
                outcome=Outcome.INVALID_NUMBER,
                raw_status=raw,
            )
        if code in _BLOCKED:
            return StartError(
                "rejected",
                f"Twilio {code}: destination not permitted",
                outcome=Outcome.BLOCKED,
                raw_status=raw,
            )
        if code in _ACCOUNT or status in (401, 403, 404):
            # 404 on create means the account path itself is wrong.
            return StartError(
                "rejected",
                f"Twilio refused the account ({status}, code {code})",
                outcome=Outcome.ACCOUNT_ERROR,
                raw_status=raw,
            )
        # Unlisted 4xx: not PROVIDER_ERROR, which spends no attempt and would requeue forever.
        return StartError(
            "rejected", f"Twilio answered {status} (code {code})", outcome=Outcome.UNKNOWN, raw_status=raw
        )

    async def _get(self, url: str, params: Sequence[tuple[str, str]] | None = None) -> tuple[int, bytes]:
        started = time.perf_counter()
        try:
            async with self._client().get(url, params=params, headers=self._headers) as resp:
                return resp.status, await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._error("lookup_failed")
            raise ProviderUnavailable(f"Twilio lookup failed: {type(exc).__name__}") from None
        finally:
            self._latency_lookup.observe(time.perf_counter() - started)

    async def lookup(self, request: LookupRequest) -> CallEvent | None:
        if request.call_id is None:
            await self._prove_never_received(request)
            return None
        status, payload = await self._get(self._call_prefix + quote(request.call_id, safe="") + ".json")
        if status != 200:
            # A 404 for a SID Twilio gave us is not "never received": the call existed.
            self._error("lookup_failed")
            raise ProviderUnavailable(f"Twilio call fetch answered {status} (code {_error_code(payload)})")
        try:
            data = orjson.loads(payload)
            if not isinstance(data, dict):
                raise TypeError("call resource must be an object")
            return event_from_resource(request.attempt_id, data)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            self._error("invalid_response")
            raise ProviderUnavailable(f"unreadable Twilio call resource: {exc}") from None

    async def _prove_never_received(self, request: LookupRequest) -> None:
        """Returns only when Twilio's complete list holds no call to the number that could be ours.

        The start response was lost, and the Call resource does not carry our callback URL, so a
        call to the number created after the claim cannot be told apart from another attempt's:
        any such call makes the answer "cannot tell" (ProviderUnavailable), never a match. Calls
        created before the claim (less clock skew and Twilio's whole-second dates) are provably
        not this attempt's.
        """
        since = request.claimed_at - self._skew
        base = [("To", request.phone)]
        # `StartTime>` misses calls still queued (no start time yet), so they get a query of their own.
        queries = [
            [*base, ("StartTime>", since.astimezone(dt.UTC).date().isoformat()), ("PageSize", "1000")],
            [*base, ("Status", "queued"), ("PageSize", "1000")],
        ]
        candidates = 0
        for params in queries:
            url: str = self._calls_url
            query: Sequence[tuple[str, str]] | None = params
            complete = False
            for _ in range(self._max_pages):
                status, payload = await self._get(url, query)
                if status != 200:
                    self._error("lookup_failed")
                    raise ProviderUnavailable(f"Twilio call list answered {status}")
                try:
                    page = orjson.loads(payload)
                    calls = page["calls"]
                    next_uri = page.get("next_page_uri")
                    if not isinstance(calls, list) or not (next_uri is None or isinstance(next_uri, str)):
                        raise TypeError("calls must be a list and next_page_uri a string or null")
                except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                    self._error("invalid_response")
                    raise ProviderUnavailable(f"unreadable Twilio call list: {exc}") from None
                candidates += sum(1 for call in calls if self._could_be_ours(call, request.phone, since))
                if not next_uri:
                    complete = True
                    break
                if not next_uri.startswith("/"):
                    raise ProviderUnavailable("Twilio call list has a next page outside the API")
                # The next page's URI carries every filter and the page token.
                url, query = self._base + next_uri, None
            if not complete:
                raise ProviderUnavailable(f"Twilio call list longer than {self._max_pages} pages")
        if candidates:
            raise ProviderUnavailable(
                f"{candidates} call(s) to the number since the claim; Twilio cannot tell whether one is this attempt's"
            )

    @staticmethod
    def _could_be_ours(call: Any, phone: str, since: dt.datetime) -> bool:
        if not isinstance(call, dict):
            return True
        if isinstance(call.get("to"), str) and call["to"] != phone:
            return False
        # Inbound calls and <Dial> legs are not created by POST /Calls.
        direction = call.get("direction")
        if isinstance(direction, str) and direction != "outbound-api":
            return False
        created = _rfc2822(call.get("date_created"))
        return created is None or created + dt.timedelta(seconds=1) > since

    async def _update(self, call_id: str, status: str) -> str | None:
        started = time.perf_counter()
        url = self._call_prefix + quote(call_id, safe="") + ".json"
        try:
            async with self._client().post(
                url, data=urlencode([("Status", status)]).encode(), headers=self._form_headers
            ) as resp:
                payload = await resp.read()
                if resp.status != 200:
                    # Already over, or never existed: the outcome we record stands either way.
                    if resp.status >= 500 or resp.status in (401, 403):
                        self._error("hangup_failed")
                    return None
        except (TimeoutError, aiohttp.ClientError):
            self._error("hangup_failed")
            return None
        finally:
            self._latency_hangup.observe(time.perf_counter() - started)
        try:
            current = orjson.loads(payload).get("status")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return current if isinstance(current, str) else None

    async def hangup(self, attempt_id: str, call_id: str | None) -> None:
        if call_id is None:
            return  # Twilio addresses calls only by SID, and a list cannot prove which is ours
        # canceled first: it never cuts a conversation, so a call answered in the meantime survives
        # it; completed is only sent once Twilio says the call is talking (maximum duration).
        if await self._update(call_id, "canceled") == "in-progress":
            await self._update(call_id, "completed")

    def parse_callback(self, request: CallbackRequest) -> CallEvent:
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            raise CallbackError("bad_signature", f"no {SIGNATURE_HEADER} header")
        try:
            params = parse_qsl(request.body.decode("utf-8"), keep_blank_values=True)
        except (UnicodeDecodeError, ValueError):
            raise CallbackError("malformed", "callback body is not a UTF-8 form") from None
        if not signature_valid(self._auth_token, request.url, params, signature):
            raise CallbackError("bad_signature", "X-Twilio-Signature does not match")
        fields: dict[str, str] = {}
        for name, value in params:
            fields.setdefault(name, value)
        account = fields.get("AccountSid")
        if account is not None and account != self.account_sid:
            raise CallbackError("bad_signature", "callback is for another Twilio account")
        # Twilio echoes nothing of ours in the body: the attempt is the one our URL token names.
        if request.token_attempt_id is None:
            raise CallbackError("malformed", "callback URL carries no attempt token")
        try:
            return event_from_callback(request.token_attempt_id, fields)
        except ValueError as exc:
            raise CallbackError("malformed", f"malformed callback: {exc}") from None

    async def poll_events(self) -> list[CallEvent]:
        return []


def _invalid(account: ProviderAccount, problem: str) -> SettingsError:
    return SettingsError(f"invalid settings:\n  provider {account.name!r}: {problem}")


def from_account(account: ProviderAccount, settings: Settings) -> TwilioProvider:
    options = dict(account.options)
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise _invalid(account, f"unknown twilio options {unknown}; known: {sorted(_OPTIONS)}")
    account_sid = options.get("account_sid")
    if not isinstance(account_sid, str):
        raise _invalid(account, "needs account_sid (AC followed by 32 hex digits)")
    for key in ("answer_url", "twiml", "machine_detection", "from_number"):
        if options.get(key) is not None and not isinstance(options[key], str):
            raise _invalid(account, f"{key} must be a string")
    secrets = account.secrets
    api_key: tuple[str, str] | None = None
    if "api_key_sid" in secrets or "api_key_secret" in secrets:
        # Both named together or neither: half an API key would fall back to the auth token silently.
        api_key = (account.secret("api_key_sid"), account.secret("api_key_secret"))
    skew = options.get("clock_skew_seconds", 5.0)
    pages = options.get("max_lookup_pages", 5)
    if not isinstance(skew, int | float) or isinstance(skew, bool):
        raise _invalid(account, "clock_skew_seconds must be a number")
    if not isinstance(pages, int) or isinstance(pages, bool):
        raise _invalid(account, "max_lookup_pages must be an integer")
    try:
        return TwilioProvider(
            account.base_url,
            account_sid,
            account.secret("auth_token"),
            answer_url=options.get("answer_url"),
            twiml=options.get("twiml"),
            machine_detection=options.get("machine_detection"),
            from_number=options.get("from_number"),
            api_key=api_key,
            timeout_seconds=account.timeout_seconds,
            max_connections=settings.max_inflight_requests,
            max_calls_per_second=account.max_calls_per_second,
            clock_skew_seconds=float(skew),
            max_lookup_pages=pages,
            name=account.name,
        )
    except ValueError as exc:
        raise _invalid(account, str(exc)) from None
