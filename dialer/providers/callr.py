"""Adapter for CALLR's JSON-RPC 2.0 API (v1.1): calls.realtime or calls.broadcast_1, CDR.Out webhooks, cdr.get.

Wire format, from the seed (CALLR objects) and the official SDKs: one endpoint,
`POST https://api.callr.com/json-rpc/v1.1/`, `Content-Type: application/json-rpc; charset=utf-8`, HTTP
Basic login:password, body `{"id", "jsonrpc": "2.0", "method", "params": [...]}`; the answer carries
`result` or `error {code, message}`. CALLR keeps no idempotency key: `cdr_field` (written to the CDR as
`customer_field`, at most 32 alphanumerics) carries the attempt id as `uuid.hex`, and that is how webhooks
and lookups find the attempt again.

Outcomes arrive by webhook (`call.outbound_start`, `call.outbound_hangup`: a `Webhook.Event` whose `data`
is a CDR.Out), signed in `X-CALLR-HmacSignature` as base64 HMAC (SHA256 unless the subscription chose
MD5, SHA1 or SHA512) of the JSON payload under the subscription's `hmac_secret`. Webhooks are account
subscriptions (`webhooks.subscribe`), not per-call URLs, so they reach `/callbacks/<account>` without our
attempt token: the attempt id comes from the CDR.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import itertools
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlsplit

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
from scheduler.outcomes import Outcome, from_q850

if TYPE_CHECKING:
    from dialer.providers import ProviderAccount
    from dialer.settings import Settings

__all__ = [
    "DEFAULT_ENDPOINT_PATH",
    "CallrProvider",
    "attempt_id_of",
    "cdr_field_of",
    "classify_rpc_error",
    "event_from_cdr",
    "from_account",
    "outcome_of",
    "verify_signature",
]

DEFAULT_ENDPOINT_PATH: Final = "/json-rpc/v1.1/"
CONTENT_TYPE: Final = "application/json-rpc; charset=utf-8"
SIGNATURE_HEADER: Final = "X-CALLR-HmacSignature"
EVENT_ID_HEADER: Final = "X-CALLR-EventId"
METHODS: Final = ("calls.realtime", "calls.broadcast_1")
HMAC_ALGOS: Final[Mapping[str, Callable[[], Any]]] = {
    "MD5": hashlib.md5,
    "SHA1": hashlib.sha1,
    "SHA256": hashlib.sha256,
    "SHA512": hashlib.sha512,
}
# Target.timeout, "Must be between 5 and 300 seconds".
TARGET_TIMEOUT_MIN: Final = 5
TARGET_TIMEOUT_MAX: Final = 300
CDR_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"
START_EVENT: Final = "call.outbound_start"
HANGUP_EVENT: Final = "call.outbound_hangup"

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_CLASSES = ("rate_limited", "ambiguous", *(o.value for o in Outcome))
# cdr.get filters on the call's start; claimed_at is our clock, so allow for skew before it, and for the
# longest call after it (the worker's maximum call duration is at most a day).
_LOOKUP_BEFORE = dt.timedelta(minutes=10)
_LOOKUP_AFTER = dt.timedelta(days=1)


def cdr_field_of(attempt_id: str) -> str:
    """The attempt id as CALLR can store it: cdr_field takes at most 32 alphanumerics."""
    return uuid.UUID(attempt_id).hex


def attempt_id_of(cdr_field: str) -> str:
    """The attempt id a cdr_field / customer_field carries; ValueError when it is not one of ours."""
    # uuid.UUID would also take braces, hyphens and "urn:uuid:" forms we never send.
    if not _HEX32.match(cdr_field):
        raise ValueError("customer_field is not an attempt id (32 hex characters)")
    return str(uuid.UUID(hex=cdr_field))


def verify_signature(secret: bytes, body: bytes, signature: str, algo: str = "SHA256") -> bool:
    """Whether `signature` is CALLR's base64 HMAC of the payload under `secret`.

    The raw body is what arrived; CALLR documents the signature as "of the json payload", and public
    integrations verify it over the compact JSON serialisation of the parsed body, so that form is
    accepted too. Either way the secret is needed: a whitespace-only change is all it lets through.
    """
    digest = HMAC_ALGOS[algo]
    given = signature.strip().encode()
    if not given:
        return False
    if hmac.compare_digest(given, base64.b64encode(hmac.new(secret, body, digest).digest())):
        return True
    try:
        compact = orjson.dumps(orjson.loads(body))
    except orjson.JSONDecodeError:
        return False
    return compact != body and hmac.compare_digest(
        given, base64.b64encode(hmac.new(secret, compact, digest).digest())
    )


def outcome_of(dialstatus: str, cause: int | None, answered: bool) -> Outcome:
    """providers.md §6 for CALLR: the Asterisk-style dialstatus, refined by the Q.850 hangupcause."""
    if answered:
        return Outcome.ANSWERED_HUMAN
    if cause == 21:
        # CALL_REJECTED: the callee declined, whichever dialstatus the switch chose to report it as.
        return Outcome.REJECTED
    if dialstatus == "BUSY":
        return Outcome.BUSY
    if dialstatus == "NOANSWER":
        return Outcome.NO_ANSWER
    if dialstatus == "CANCEL":
        return Outcome.CANCELED
    refined = from_q850(cause, False) if cause is not None else Outcome.UNKNOWN
    if dialstatus in ("CONGESTION", "CHANUNAVAIL"):
        # Asterisk reports an unallocated number as CONGESTION too: only the cause tells them apart.
        return Outcome.CONGESTION if refined is Outcome.UNKNOWN else refined
    if dialstatus == "NODIAL":
        # CALLR refused to dial: the cause may say why; otherwise the destination is barred for us.
        if refined in (Outcome.INVALID_NUMBER, Outcome.ACCOUNT_ERROR, Outcome.BLOCKED):
            return refined
        return Outcome.BLOCKED
    if dialstatus in ("DONTCALL", "TORTURE"):
        # Asterisk's privacy-manager statuses: the callee asked not to be called.
        return Outcome.BLOCKED
    return refined


def _uint(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer")
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an integer")
    if value < 0:
        raise ValueError(f"{name} must be >= 0")
    return value


def _cdr_time(value: Any, name: str) -> dt.datetime | None:
    if value is None or value == "" or (isinstance(value, str) and value.startswith("0000-00-00")):
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a datetime string")
    try:
        parsed = dt.datetime.strptime(value, CDR_TIME_FORMAT)
    except ValueError:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def event_from_cdr(
    cdr: Mapping[str, Any], *, attempt_id: str, final: bool, event_id: str | None = None
) -> CallEvent:
    """A CDR.Out as a CallEvent. Raises ValueError/TypeError on bad input."""
    callid = _uint(cdr.get("callid"), "callid")
    call_id = str(callid) if callid else None
    raw_dialstatus = cdr.get("dialstatus") or ""
    if not isinstance(raw_dialstatus, str):
        raise TypeError("dialstatus must be a string")
    dialstatus = raw_dialstatus.strip().upper()
    cause = _uint(cdr.get("hangupcause"), "hangupcause")
    talk = _uint(cdr.get("duration_answered"), "duration_answered")
    billed = _uint(cdr.get("duration_billed"), "duration_billed")
    duration = _uint(cdr.get("duration"), "duration")
    # The answer signal is dialstatus or talk time, never the `answer` column alone: the seed's own
    # example CDR.Out has a NOANSWER call with an `answer` datetime in it.
    answered = dialstatus == "ANSWER" or bool(talk)
    answered_at = _cdr_time(cdr.get("answer"), "answer") if answered else None
    raw_cause = ";".join(
        part for part in (None if cause is None else str(cause), event_id and f"event_id={event_id}") if part
    )
    if final and not dialstatus:
        raise ValueError("a hangup CDR must carry a dialstatus")
    if not final:
        return CallEvent(
            attempt_id=attempt_id,
            call_id=call_id,
            kind="answered" if answered else "ringing",
            answered_at=answered_at,
            raw_status=dialstatus or "STARTED",
            raw_cause=raw_cause or None,
        )
    return CallEvent(
        attempt_id=attempt_id,
        call_id=call_id,
        kind="ended",
        outcome=outcome_of(dialstatus, cause, answered),
        answered_at=answered_at,
        ended_at=_cdr_time(cdr.get("hangup"), "hangup"),
        duration_seconds=float(duration or 0),
        # Talk seconds, as Asterisk's billsec; duration_billed may be rounded up to billing increments.
        billsec=talk if talk is not None else billed or 0,
        raw_status=dialstatus,
        raw_cause=raw_cause or None,
    )


_RATE_WORDS = frozenset({"RATE", "RATELIMIT", "THROTTLE", "THROTTLED", "THROTTLING", "QUOTA"})
_NUMBER_WORDS = frozenset({"PHONE", "NUMBER", "DESTINATION", "E164", "MSISDN"})
_BLOCKED_WORDS = frozenset({"BLACKLIST", "BLACKLISTED", "BARRED", "BLOCKLIST", "BLOCKLISTED"})
_ACCOUNT_WORDS = frozenset(
    {
        "AUTH",
        "AUTHENTICATION",
        "UNAUTHORIZED",
        "UNAUTHORISED",
        "PERMISSION",
        "FORBIDDEN",
        "DENIED",
        "CREDIT",
        "BALANCE",
        "FUNDS",
        "ACCOUNT",
        "SUSPENDED",
        "CLI",
        "APP",
    }
)


def classify_rpc_error(code: Any, message: str, overrides: Mapping[str, str] | None = None) -> StartError:
    """A JSON-RPC error answered to a start request, as a StartError.

    CALLR's v1.1 error-code table is not in the seed nor in the SDKs, so: an operator's `error_outcomes`
    entry for the code wins; then the words of the message (CALLR messages are constant-style, e.g.
    `INVALID_PHONE_NUMBER`); then the JSON-RPC reserved codes. Any JSON-RPC error means the method did
    not return a call id, so a rate-limit error is one the provider says it did not process.
    """
    raw = f"rpc:{code}"
    kind = (overrides or {}).get(str(code))
    words = set(re.split(r"[^A-Z0-9]+", message.upper()))
    text = f"CALLR refused the call: {code} {message}"[:300]
    if kind == "rate_limited" or (kind is None and (words & _RATE_WORDS or {"TOO", "MANY"} <= words)):
        return StartError("rate_limited", text, raw_status=raw)
    if kind == "ambiguous":
        return StartError("ambiguous", text, raw_status=raw)
    if kind is not None:
        return StartError("rejected", text, outcome=Outcome(kind), raw_status=raw)
    if words & _NUMBER_WORDS and "CLI" not in words:
        return StartError("rejected", text, outcome=Outcome.INVALID_NUMBER, raw_status=raw)
    if words & _BLOCKED_WORDS:
        return StartError("rejected", text, outcome=Outcome.BLOCKED, raw_status=raw)
    if words & _ACCOUNT_WORDS:
        return StartError("rejected", text, outcome=Outcome.ACCOUNT_ERROR, raw_status=raw)
    if isinstance(code, int) and not isinstance(code, bool):
        if code in (-32700, -32600, -32601):
            # Our request or our configuration is wrong (a method the account lacks): every call would
            # fail the same way, so stop the campaigns rather than burn numbers.
            return StartError("rejected", text, outcome=Outcome.ACCOUNT_ERROR, raw_status=raw)
        if code == -32603 or -32099 <= code <= -32000:
            # An internal failure may come after the call was queued.
            return StartError("ambiguous", text, raw_status=raw)
    return StartError("rejected", text, outcome=Outcome.PROVIDER_ERROR, raw_status=raw)


def _rpc_error(payload: bytes) -> tuple[Any, str] | None:
    """(code, message) of a JSON-RPC error body, or None when the body is not one."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("error"), dict):
        return None
    error = data["error"]
    message = error.get("message")
    return error.get("code"), message if isinstance(message, str) else ""


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


class CallrProvider(HttpAdapter):
    def __init__(
        self,
        endpoint: str,
        login: str,
        password: str,
        hmac_secret: str,
        *,
        method: Literal["calls.realtime", "calls.broadcast_1"] = "calls.realtime",
        app: str | None = None,
        messages: Sequence[int | str] = (),
        loop: int | None = None,
        default_cli: str | None = None,
        hmac_algo: str = "SHA256",
        error_outcomes: Mapping[str, str] | None = None,
        timeout_seconds: float = 10.0,
        max_connections: int = 200,
        max_calls_per_second: float = 0.0,
        name: str = "callr",
    ) -> None:
        if method == "calls.realtime" and not app:
            raise ValueError("calls.realtime needs the REALTIME10 app hash")
        if method == "calls.broadcast_1" and not messages:
            raise ValueError("calls.broadcast_1 needs messages to play")
        if hmac_algo not in HMAC_ALGOS:
            raise ValueError(f"hmac_algo must be one of {sorted(HMAC_ALGOS)}")
        self.name = name
        parts = urlsplit(endpoint)
        self._endpoint = (
            endpoint if parts.path not in ("", "/") else endpoint.rstrip("/") + DEFAULT_ENDPOINT_PATH
        )
        credentials = base64.b64encode(f"{login}:{password}".encode()).decode()
        self._headers = {"Content-Type": CONTENT_TYPE, "Authorization": f"Basic {credentials}"}
        self._hmac_secret = hmac_secret.encode()
        self._hmac_algo = hmac_algo
        self._method = method
        self._app = app
        self._messages = list(messages)
        self._loop = loop
        self._default_cli = default_cli
        self._error_outcomes = dict(error_outcomes or {})
        self._ids = itertools.count(1)
        self._init_http(
            timeout_seconds=timeout_seconds,
            max_connections=max_connections,
            max_calls_per_second=max_calls_per_second,
        )
        self._latency = {
            op: metrics.PROVIDER_REQUEST_SECONDS.labels(self.name, op)
            for op in ("start_call", "lookup", "hangup")
        }

    def __repr__(self) -> str:
        return f"CallrProvider(name={self.name!r}, method={self._method!r}, endpoint={self._endpoint!r})"

    async def _call(self, op: str, method: str, params: list[Any]) -> tuple[int, bytes]:
        """POST one JSON-RPC request; transport errors propagate for the caller to classify."""
        body = orjson.dumps({"id": next(self._ids), "jsonrpc": "2.0", "method": method, "params": params})
        started = time.perf_counter()
        try:
            async with self._client().post(self._endpoint, data=body, headers=self._headers) as resp:
                return resp.status, await resp.read()
        finally:
            self._latency[op].observe(time.perf_counter() - started)

    def start_params(self, request: StartRequest) -> list[Any]:
        """The JSON-RPC params of the start request, in the method's positional order."""
        timeout = min(TARGET_TIMEOUT_MAX, max(TARGET_TIMEOUT_MIN, request.ring_timeout_seconds))
        target = {"number": request.phone, "timeout": timeout}
        options: dict[str, Any] = {"cdr_field": cdr_field_of(request.attempt_id)}
        cli = request.caller_id or self._default_cli
        if cli:
            options["cli"] = cli
        if self._method == "calls.realtime":
            return [self._app, target, options]
        if self._loop is not None:
            options["loop"] = self._loop
        return [target, self._messages, options]

    async def start_call(self, request: StartRequest) -> Accepted:
        if not _E164.match(request.phone):
            # CALLR takes E.164 only; refusing here spares a request that can only fail.
            self._error("rejected")
            raise StartError(
                "rejected", "number is not E.164", outcome=Outcome.INVALID_NUMBER, raw_status="not_e164"
            )
        params = self.start_params(request)
        try:
            status, payload = await self._call("start_call", self._method, params)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_failure(exc) from None
        if status in (401, 403):
            self._error("rejected")
            raise StartError(
                "rejected",
                f"CALLR refused our credentials ({status})",
                outcome=Outcome.ACCOUNT_ERROR,
                raw_status=str(status),
            )
        if status >= 500:
            self._error("ambiguous")
            raise StartError("ambiguous", f"CALLR answered {status}")
        error = _rpc_error(payload)
        if error is not None:
            refusal = classify_rpc_error(*error, self._error_outcomes)
            self._error(refusal.kind)
            raise refusal
        if status != 200:
            if status == 429:
                # A bare 429 (a proxy's, say) does not tell whether the method ran.
                self._error("ambiguous")
                raise StartError("ambiguous", "429 without a JSON-RPC error")
            self._error("rejected")
            raise StartError(
                "rejected", f"CALLR answered {status}", outcome=Outcome.PROVIDER_ERROR, raw_status=str(status)
            )
        call_id = self._accepted_id(payload)
        if call_id is None:
            self._error("invalid_response")
            raise StartError("ambiguous", "CALLR answered 200 with an unreadable result")
        return Accepted(call_id=call_id)

    def _accepted_id(self, payload: bytes) -> str | None:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        result = data.get("result") if isinstance(data, dict) else None
        if self._method == "calls.realtime":
            # The call id, a 64-bit unsigned integer (CDR.Out.callid; what calls.hangup takes).
            if isinstance(result, int) and not isinstance(result, bool) and result > 0:
                return str(result)
            if isinstance(result, str) and result.isdigit():
                return result
            return None
        # broadcast_1 answers a request id; the call id arrives with the CDR.
        return result if isinstance(result, str) and result else None

    async def lookup(self, request: LookupRequest) -> CallEvent | None:
        """The attempt's CDR through cdr.get, else ProviderUnavailable.

        Never None: CALLR writes a CDR only for calls it placed and offers no way to ask about a start
        request it did not act on, so "no CDR" cannot prove the request never arrived.
        """
        since = request.claimed_at.astimezone(dt.UTC) - _LOOKUP_BEFORE
        until = request.claimed_at.astimezone(dt.UTC) + _LOOKUP_AFTER
        params = [
            "OUT",
            since.strftime(CDR_TIME_FORMAT),
            until.strftime(CDR_TIME_FORMAT),
            self._app if self._method == "calls.realtime" else None,
            request.phone,
        ]
        try:
            status, payload = await self._call("lookup", "cdr.get", params)
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._error("lookup_failed")
            raise ProviderUnavailable(f"cdr.get failed: {type(exc).__name__}") from None
        error = _rpc_error(payload)
        if status != 200 or error is not None:
            self._error("lookup_failed")
            detail = f"error {error[0]} {error[1]}" if error else f"HTTP {status}"
            raise ProviderUnavailable(f"cdr.get answered {detail}"[:300])
        try:
            data = orjson.loads(payload)
            cdrs = data["result"]
            if not isinstance(cdrs, list):
                raise TypeError("cdr.get result must be a list")
            field = cdr_field_of(request.attempt_id)
            mine = [
                c for c in cdrs if isinstance(c, dict) and str(c.get("customer_field") or "").lower() == field
            ]
            if not mine:
                raise ProviderUnavailable("no CDR for this attempt (yet)")
            # One attempt places one call; should CALLR hold two, the latest start is the one that counts.
            cdr = max(mine, key=lambda c: str(c.get("start") or ""))
            # A CDR still without a dialstatus is a call in progress: the sweeper asks again later.
            return event_from_cdr(cdr, attempt_id=request.attempt_id, final=bool(cdr.get("dialstatus")))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            self._error("invalid_response")
            raise ProviderUnavailable(f"unreadable cdr.get answer: {exc}") from None

    async def hangup(self, attempt_id: str, call_id: str | None) -> None:
        if not call_id or not call_id.isdigit():
            # broadcast_1 answers a request id, and calls.hangup takes the call id only CDRs carry.
            self._error("hangup_no_callid")
            return
        try:
            status, payload = await self._call("hangup", "calls.hangup", [int(call_id), {}])
        except (TimeoutError, aiohttp.ClientError):
            self._error("hangup_failed")
            return
        # `false` or an error: the call is already over (or answered); the outcome we record stands.
        if status != 200 or _rpc_error(payload) is not None:
            self._error("hangup_failed")

    def parse_callback(self, request: CallbackRequest) -> CallEvent:
        signature = _header(request.headers, SIGNATURE_HEADER) or ""
        if not verify_signature(self._hmac_secret, request.body, signature, self._hmac_algo):
            raise CallbackError("bad_signature", "X-CALLR-HmacSignature does not match")
        try:
            event = orjson.loads(request.body)
            if not isinstance(event, dict):
                raise TypeError("webhook body must be a JSON object")
            kind = event.get("type")
            if kind not in (START_EVENT, HANGUP_EVENT):
                raise ValueError(f"not an outbound call event: {kind!r}")
            cdr = event.get("data")
            if not isinstance(cdr, dict):
                raise TypeError("data must be a CDR.Out object")
            event_id = event.get("event_id") or _header(request.headers, EVENT_ID_HEADER)
            if event_id is not None and not isinstance(event_id, str):
                raise TypeError("event_id must be a string")
            field = cdr.get("customer_field")
            if field is not None and not isinstance(field, str):
                raise TypeError("customer_field must be a string")
            attempt_id = attempt_id_of(field.strip()) if field and field.strip() else None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CallbackError("malformed", f"malformed webhook: {exc}") from None
        token = request.token_attempt_id
        if attempt_id is not None and token is not None and attempt_id != token:
            raise CallbackError("bad_signature", "customer_field names another attempt than the URL token")
        attempt_id = attempt_id or token
        if attempt_id is None:
            raise CallbackError("malformed", "webhook names no attempt (no customer_field, no token)")
        try:
            return event_from_cdr(cdr, attempt_id=attempt_id, final=kind == HANGUP_EVENT, event_id=event_id)
        except (TypeError, ValueError) as exc:
            raise CallbackError("malformed", f"malformed CDR: {exc}") from None

    async def poll_events(self) -> list[CallEvent]:
        return []


def _options(account: ProviderAccount) -> dict[str, Any]:
    opts = dict(account.options)
    errors: list[str] = []
    where = f"provider {account.name!r}"
    unknown = sorted(
        set(opts) - {"login", "method", "app", "messages", "loop", "cli", "hmac_algo", "error_outcomes"}
    )
    if unknown:
        errors.append(f"{where}: unknown options {unknown}")
    if not isinstance(opts.get("login"), str) or not opts["login"] or ":" in opts["login"]:
        errors.append(f"{where}.login: the CALLR login is required (no ':')")
    method = opts.get("method", "calls.realtime")
    if method not in METHODS:
        errors.append(f"{where}.method: {method!r} is not one of {list(METHODS)}")
    if method == "calls.realtime" and not (isinstance(opts.get("app"), str) and opts["app"]):
        errors.append(f"{where}.app: calls.realtime needs the hash of a REALTIME10 voice app")
    messages = opts.get("messages")
    if method == "calls.broadcast_1" and not (
        isinstance(messages, list)
        and messages
        and all(
            (isinstance(m, int) and not isinstance(m, bool)) or (isinstance(m, str) and m) for m in messages
        )
    ):
        errors.append(f"{where}.messages: calls.broadcast_1 needs a list of media ids or 'TTS|voice|text'")
    loop = opts.get("loop")
    if loop is not None and (not isinstance(loop, int) or isinstance(loop, bool) or not 1 <= loop <= 10):
        errors.append(f"{where}.loop: must be an integer within 1..10")
    cli = opts.get("cli")
    if cli is not None and not (isinstance(cli, str) and (cli == "BLOCKED" or _E164.match(cli))):
        errors.append(f"{where}.cli: must be 'BLOCKED' or an E.164 number")
    if opts.get("hmac_algo", "SHA256") not in HMAC_ALGOS:
        errors.append(f"{where}.hmac_algo: must be one of {sorted(HMAC_ALGOS)}")
    overrides = opts.get("error_outcomes", {})
    if not isinstance(overrides, dict) or any(v not in _CLASSES for v in overrides.values()):
        errors.append(f"{where}.error_outcomes: maps error codes to one of {list(_CLASSES)}")
    if errors:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(errors))
    return opts


def from_account(account: ProviderAccount, settings: Settings) -> CallrProvider:
    opts = _options(account)
    return CallrProvider(
        account.base_url,
        opts["login"],
        account.secret("password"),
        account.secret("hmac_secret"),
        method=opts.get("method", "calls.realtime"),
        app=opts.get("app"),
        messages=opts.get("messages") or (),
        loop=opts.get("loop"),
        default_cli=opts.get("cli"),
        hmac_algo=opts.get("hmac_algo", "SHA256"),
        error_outcomes={str(k): str(v) for k, v in opts.get("error_outcomes", {}).items()},
        timeout_seconds=account.timeout_seconds,
        max_connections=settings.max_inflight_requests,
        max_calls_per_second=account.max_calls_per_second,
        name=account.name,
    )
