"""Adapter for the Paycall Dynamic Dialer API v2.1 (seed 001; providers.md §1.2).

Two start flows, chosen per account by the `flow` option:

- "dialer" (default): one `POST /v2/calls/dialer` per attempt, the attempt id as `unique_id`, our
  tokenized callback URL as `return_address`, the account's `ivr` object as the call's script.
- "simple_dialer": `POST /v2/calls/simple_dialer` (play `sound`, optionally bridge to `leg_b`), then
  `POST /v2/calls/start_campaign/{unique_id}`. The seed gives this API no `return_address`, so its
  outcomes arrive only through reconciliation (`cdr_by_number`) once the attempt is overdue.

Paycall signs nothing, so a callback is believed only when it reached us on the URL carrying our
per-attempt token; its body is not documented (providers.md §9.1), so it is read as a CDR record,
the only call-result vocabulary the seed defines. Paycall has no hangup API.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import parse_qsl, quote

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
from scheduler.outcomes import Outcome, from_q850_name

if TYPE_CHECKING:
    from prometheus_client import Histogram

    from dialer.providers import ProviderAccount
    from dialer.settings import Settings

__all__ = ["CDR_COLUMNS", "PaycallProvider", "event_from_cdr", "from_account", "parse_cdr_csv"]

Flow = Literal["dialer", "simple_dialer"]

CDR_COLUMNS: Final = (
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
# The seed's own cdr_by_number example puts cli after hangup_cause under the header above. A row
# that does not read under its header is tried in this order before it is called malformed.
_SEED_BY_NUMBER_ORDER: Final = (
    "phone_number",
    "start_time",
    "answer_time",
    "hangup_time",
    "duration",
    "billsec",
    "hangup_cause",
    "cli",
    "unique_campaign_id",
    "steps",
)
_REQUIRED_COLUMNS: Final = frozenset(CDR_COLUMNS) - {"steps"}

# Paycall reads flags as the strings "true"/"false" (never JSON booleans); these are every flag key
# the seed names, at any depth of the request.
_FLAG_KEYS: Final = frozenset(
    {
        "numbers_from_queue",
        "have_dependency",
        "prompt_is_file",
        "dtmf_invalid_text_is_file",
        "is_recording",
        "from_campaign",
        "tts",
    }
)
_DIGITS = re.compile(r"^\+?(\d{3,20})$")
_CAUSE = re.compile(r"^[A-Z][A-Z0-9_]*$")
# Paycall's error texts are not documented; only an error that names the dialed-number field is
# the number's fault. Anything else is about our request, i.e. the account's configuration.
_NUMBER_ERROR = re.compile(r"\b(number|leg_a|phone|e\.?164)\b", re.IGNORECASE)
_NOT_NUMBER_FIELD = re.compile(r"\b(cli|cid_a|cid_b|leg_b|caller)\b", re.IGNORECASE)
_MAX_RAW = 200

_DIALER_OPTIONS: Final = frozenset({"flow", "username", "ivr"})
_SIMPLE_OPTIONS: Final = frozenset(
    {"flow", "username", "tts", "sound", "gender", "answer_delay", "leg_b", "cid_b", "dtmf_b"}
)


# ------------------------------------------------------------------------------------------- CDRs


def _timestamp(value: str, column: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{column} {value!r} is not a timestamp like 2016-03-30 14:53:50+03") from None
    # The seed's timestamps all carry an offset; one without is read as UTC rather than guessed.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _seconds(value: Any, column: str) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise ValueError(f"{column} must be a whole number of seconds, got {value!r}")
    try:
        number = float(value) if isinstance(value, int | float) else float(str(value).strip())
    except ValueError:
        raise ValueError(f"{column} {value!r} is not a number of seconds") from None
    if number < 0 or number != int(number):
        raise ValueError(f"{column} {value!r} is not a whole number of seconds >= 0")
    return int(number)


def _text(record: Mapping[str, Any], column: str) -> str:
    value = record.get(column)
    if value is None:
        return ""
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError(f"{column} must be a string")
    return str(value).strip()


def event_from_cdr(record: Mapping[str, Any], attempt_id: str | None = None) -> CallEvent:
    """One CDR record (CSV row or callback body, by column name) as an ended CallEvent.

    Answered is decided by `answer_time` (or billed seconds), never by the cause: NORMAL_CLEARING
    also ends calls nobody picked up. Raises ValueError naming the bad column.
    """
    phone = _text(record, "phone_number")
    if phone and not _DIGITS.match(phone):
        raise ValueError(f"phone_number {phone!r} is not a phone number")
    # The seed's example spells some causes with a space ("NORMAL CLEARING"); its table never does.
    cause = re.sub(r"\s+", "_", _text(record, "hangup_cause")).upper()
    if not _CAUSE.match(cause):
        raise ValueError(f"hangup_cause {cause!r} is not a Q.850 cause name")
    _timestamp(_text(record, "start_time"), "start_time")
    answered_at = _timestamp(_text(record, "answer_time"), "answer_time")
    ended_at = _timestamp(_text(record, "hangup_time"), "hangup_time")
    duration = _seconds(record.get("duration"), "duration")
    billsec = _seconds(record.get("billsec"), "billsec")
    unique_id = attempt_id or _text(record, "unique_campaign_id") or _text(record, "unique_id")
    if not unique_id:
        raise ValueError("unique_campaign_id is empty: the row names no attempt")
    answered = answered_at is not None or billsec > 0
    return CallEvent(
        attempt_id=unique_id,
        call_id=unique_id,
        kind="ended",
        outcome=from_q850_name(cause, answered),
        answered_at=answered_at,
        ended_at=ended_at,
        duration_seconds=float(duration),
        billsec=billsec,
        raw_cause=cause,
        dtmf=steps_dtmf(record.get("steps")),
    )


def steps_dtmf(steps: Any) -> str | None:
    """The keys the callee pressed, from the seed's steps report ({"steps": [{"dtmf": "12", …}]}),
    in step order. Read defensively: the report is undocumented beyond one example, so anything
    unexpected means "no keys", never a rejected CDR."""
    if isinstance(steps, str):
        if not steps.strip():
            return None
        try:
            steps = orjson.loads(steps)
        except orjson.JSONDecodeError:
            return None
    entries = steps.get("steps") if isinstance(steps, Mapping) else None
    if not isinstance(entries, list):
        return None
    keys = "".join(
        str(e["dtmf"]) for e in entries if isinstance(e, Mapping) and isinstance(e.get("dtmf"), str | int)
    )
    keys = "".join(ch for ch in keys if ch in "0123456789*#")
    return keys[:200] or None


def _normalize_header(names: Sequence[str]) -> tuple[str, ...]:
    # The seed's cdr_by_campaign header reads "phone number, start time, ..." while its field table
    # and the cdr_by_number header use underscores.
    return tuple(re.sub(r"\s+", "_", name.strip().lower()) for name in names)


def parse_cdr_csv(text: str) -> Iterator[CallEvent]:
    """Events of a `cdr_by_campaign` / `cdr_by_number` CSV: a header row, then one call per row.

    Fields are double-quoted (quoted commas, doubled quotes and line breaks inside are data), lines
    end in CRLF or LF. Raises ValueError naming the physical line of the first bad row.
    """
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=True)
    header: tuple[str, ...] | None = None
    line = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ValueError(f"CDR line {line}: {exc}") from None
        start, line = line, reader.line_num + 1
        if not row or all(not field.strip() for field in row):
            continue
        if header is None:
            header = _normalize_header(row)
            missing = sorted(_REQUIRED_COLUMNS - set(header))
            if missing:
                raise ValueError(f"CDR line {start}: header lacks {missing} (got {list(header)})")
            continue
        if len(row) != len(header):
            raise ValueError(f"CDR line {start}: {len(row)} fields where the header has {len(header)}")
        yield _row_event(header, row, start)


def _row_event(header: tuple[str, ...], row: list[str], line: int) -> CallEvent:
    try:
        return event_from_cdr(dict(zip(header, row, strict=True)))
    except ValueError as exc:
        first = exc
    if header == CDR_COLUMNS:
        try:
            return event_from_cdr(dict(zip(_SEED_BY_NUMBER_ORDER, row, strict=True)))
        except ValueError:
            pass
    raise ValueError(f"CDR line {line}: {first}")


# --------------------------------------------------------------------------------------- options


def _flags(value: Any, where: str) -> Any:
    """The request fragment with every flag as "true"/"false"; SettingsError on anything else."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in _FLAG_KEYS:
                if isinstance(item, bool):
                    item = "true" if item else "false"
                if item not in ("true", "false"):
                    raise SettingsError(
                        f'invalid settings:\n  {where}.{key}: must be "true" or "false", got {item!r}'
                    )
                out[key] = item
            else:
                out[key] = _flags(item, f"{where}.{key}")
        return out
    if isinstance(value, list):
        return [_flags(item, f"{where}[{i}]") for i, item in enumerate(value)]
    return value


def _validate_ivr(ivr: Any, where: str) -> dict[str, Any]:
    if not isinstance(ivr, Mapping):
        raise SettingsError(f"invalid settings:\n  {where}: the dialer flow needs an `ivr` object")
    steps = ivr.get("steps")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, Mapping) for s in steps):
        raise SettingsError(f"invalid settings:\n  {where}.steps: must be a non-empty list of step objects")
    count = ivr.get("count_steps", len(steps))
    if type(count) is not int or count < 1:
        raise SettingsError(f"invalid settings:\n  {where}.count_steps: must be an integer >= 1")
    normalized: dict[str, Any] = _flags(dict(ivr), where)
    # Paycall stops at min(count_steps, len(steps)); an omitted count means every step.
    normalized["count_steps"] = count
    return normalized


# -------------------------------------------------------------------------------------- provider


def _dial_digits(phone: str) -> str:
    # The seed accepts E.164 with or without "+" and writes its CDRs without it; sending the same
    # spelling we later look the CDR up by keeps the two from disagreeing.
    return phone[1:] if phone.startswith("+") else phone


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _error_text(error: Any) -> str:
    if isinstance(error, str):
        return error
    if isinstance(error, Mapping):
        parts = [str(error.get(k)) for k in ("code", "message", "field") if error.get(k) is not None]
        return " ".join(parts) or orjson.dumps(error).decode()
    return orjson.dumps(error).decode() if error is not None else ""


class PaycallProvider(HttpAdapter):
    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        flow: Flow = "dialer",
        ivr: Mapping[str, Any] | None = None,
        simple: Mapping[str, Any] | None = None,
        timeout_seconds: float = 10.0,
        max_connections: int = 200,
        max_calls_per_second: float = 0.0,
        name: str = "paycall",
    ) -> None:
        self.name = name
        self._base = base_url.rstrip("/")
        # Raw credentials in the header: the seed's "URI-escape them" applies to user:password@host
        # URLs only. UTF-8, as curl sends what the escaped URL decodes to.
        auth = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._headers = {"Authorization": auth, "Content-Type": "application/json"}
        self._auth_only = {"Authorization": auth}
        self._flow: Flow = flow
        self._ivr = dict(ivr or {})
        self._simple = dict(simple or {})
        if flow == "dialer" and not self._ivr:
            raise ValueError("the dialer flow needs an ivr")
        if flow == "simple_dialer" and not self._simple.get("sound"):
            raise ValueError("the simple_dialer flow needs a sound")
        self._init_http(
            timeout_seconds=timeout_seconds,
            max_connections=max_connections,
            max_calls_per_second=max_calls_per_second,
        )
        self._latency_start = metrics.PROVIDER_REQUEST_SECONDS.labels(self.name, "start_call")
        self._latency_campaign = metrics.PROVIDER_REQUEST_SECONDS.labels(self.name, "start_campaign")
        self._latency_lookup = metrics.PROVIDER_REQUEST_SECONDS.labels(self.name, "lookup")

    def __repr__(self) -> str:
        return f"PaycallProvider(name={self.name!r}, base_url={self._base!r}, flow={self._flow!r})"

    # ------------------------------------------------------------------------------------ start

    def dialer_body(self, request: StartRequest) -> dict[str, Any]:
        """The /v2/calls/dialer body, fields in the seed's order."""
        body: dict[str, Any] = {
            "unique_id": request.attempt_id,
            "return_address": request.callback_url,
            # We own retries: Paycall's own would turn one attempt into several rings.
            "max_retries": 0,
            "ring_timeout": request.ring_timeout_seconds,
            "numbers_from_queue": "false",
            "number": _dial_digits(request.phone),
        }
        if request.caller_id:
            body["cli"] = request.caller_id
        if request.dtmf:
            body["dtmf_originator"] = request.dtmf
        body["ivr"] = self._ivr
        return body

    def simple_dialer_body(self, request: StartRequest) -> dict[str, Any]:
        """The /v2/calls/simple_dialer body, fields in the seed's order."""
        opts = self._simple
        body: dict[str, Any] = {
            "unique_id": request.attempt_id,
            "from_campaign": "false",
            "leg_a": _dial_digits(request.phone),
        }
        if request.caller_id:
            body["cid_a"] = request.caller_id
        if request.dtmf:
            body["dtmf_a"] = request.dtmf
        body["tts"] = opts.get("tts", "true")
        body["sound"] = opts["sound"]
        for key in ("gender", "answer_delay"):
            if key in opts:
                body[key] = opts[key]
        body["ring_timeout"] = request.ring_timeout_seconds
        body["max_retries"] = 0
        for key in ("leg_b", "cid_b", "dtmf_b"):
            if key in opts:
                body[key] = opts[key]
        return body

    async def _post(self, path: str, body: bytes | None, latency: Histogram) -> tuple[int, bytes] | Exception:
        """(status, body), or the exception that cut the exchange short: _check classifies both."""
        started = time.perf_counter()
        try:
            async with self._client().post(
                f"{self._base}{path}",
                data=body,
                headers=self._headers if body is not None else self._auth_only,
            ) as resp:
                return resp.status, await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            return exc
        finally:
            latency.observe(time.perf_counter() - started)

    async def start_call(self, request: StartRequest) -> Accepted:
        if self._flow == "dialer":
            result = await self._post(
                "/v2/calls/dialer", orjson.dumps(self.dialer_body(request)), self._latency_start
            )
            self._check(result, "dialer", nothing_dials=False)
            return Accepted(call_id=request.attempt_id)
        result = await self._post(
            "/v2/calls/simple_dialer", orjson.dumps(self.simple_dialer_body(request)), self._latency_start
        )
        # Until start_campaign is sent a simple_dialer campaign rings nobody, so any failure here
        # leaves nothing to reconcile.
        self._check(result, "simple_dialer", nothing_dials=True)
        result = await self._post(
            f"/v2/calls/start_campaign/{quote(request.attempt_id, safe='')}", None, self._latency_campaign
        )
        self._check(result, "start_campaign", nothing_dials=False)
        return Accepted(call_id=request.attempt_id)

    def _check(self, result: tuple[int, bytes] | Exception, op: str, *, nothing_dials: bool) -> None:
        """Return when Paycall accepted the request; raise the StartError that classifies it."""
        if isinstance(result, aiohttp.ClientConnectorError):
            self._error("not_sent")
            raise StartError("not_sent", f"Paycall {op} unreachable: {result.os_error}")
        if isinstance(result, Exception):
            raise self._unknown(f"Paycall {op} failed after sending: {type(result).__name__}", nothing_dials)
        status, payload = result
        data = _json_object(payload)
        error = None if data is None else data.get("error")
        if status in (401, 403):
            self._error("rejected")
            raise StartError(
                "rejected",
                f"Paycall {op} refused our credentials ({status})",
                outcome=Outcome.ACCOUNT_ERROR,
                raw_status=str(status),
            )
        if status >= 500:
            raise self._unknown(f"Paycall {op} answered {status}", nothing_dials)
        if 200 <= status < 300 and error is None:
            if data is None:
                self._error("invalid_response")
                raise self._unknown(f"Paycall {op} answered {status} with a non-JSON body", nothing_dials)
            return
        if status == 429:
            # Paycall documents no rate limit, so nothing says a 429 went unprocessed.
            raise self._unknown(f"Paycall {op} answered 429", nothing_dials)
        text = _error_text(error) if error is not None else f"HTTP {status}"
        raw = text[:_MAX_RAW]
        self._error("rejected")
        if error is not None and _NUMBER_ERROR.search(text) and not _NOT_NUMBER_FIELD.search(text):
            raise StartError(
                "rejected",
                f"Paycall {op}: the number is invalid",
                outcome=Outcome.INVALID_NUMBER,
                raw_status=raw,
            )
        # A request Paycall finds wrong, for a reason that is not the number, is built from the
        # account's options: retrying every number with it would loop, pausing gets it fixed.
        raise StartError(
            "rejected",
            f"Paycall {op} refused the request ({status}): {raw}",
            outcome=Outcome.ACCOUNT_ERROR,
            raw_status=raw,
        )

    def _unknown(self, message: str, nothing_dials: bool) -> StartError:
        """A failure that may have reached Paycall: ambiguous, unless it cannot have made a call."""
        if nothing_dials:
            self._error("not_sent")
            return StartError("not_sent", f"{message}; no call starts without start_campaign")
        self._error("ambiguous")
        return StartError("ambiguous", message)

    # ----------------------------------------------------------------------------------- lookup

    async def lookup(self, request: LookupRequest) -> CallEvent | None:
        # Never None: no documented answer proves Paycall never received a start request (the CDR
        # is written at hangup, so "no row" is also what a live call looks like).
        path = (
            f"/v2/calls/cdr_by_number/{quote(request.attempt_id, safe='')}"
            f"/{quote(_dial_digits(request.phone), safe='')}"
        )
        started = time.perf_counter()
        try:
            async with self._client().get(f"{self._base}{path}", headers=self._auth_only) as resp:
                payload = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._error("lookup_failed")
            raise ProviderUnavailable(f"cdr_by_number failed: {type(exc).__name__}") from None
        finally:
            self._latency_lookup.observe(time.perf_counter() - started)
        data = _json_object(payload)
        if status != 200 or data is not None:
            self._error("lookup_failed")
            detail = _error_text(data.get("error"))[:_MAX_RAW] if data else ""
            raise ProviderUnavailable(f"cdr_by_number answered {status} {detail}".rstrip())
        try:
            events = list(parse_cdr_csv(payload.decode("utf-8-sig")))
        except (UnicodeDecodeError, ValueError) as exc:
            self._error("invalid_response")
            raise ProviderUnavailable(f"unreadable cdr_by_number: {exc}") from None
        if not events:
            raise ProviderUnavailable("no CDR yet: Paycall writes it when the call hangs up")
        # One row per call with max_retries 0; should Paycall still have dialed twice, an answered
        # leg is what happened to the person.
        answered = [e for e in events if e.answered_at is not None or e.billsec > 0]
        chosen = (answered or events)[-1]
        return CallEvent(
            attempt_id=request.attempt_id,
            call_id=request.attempt_id,
            kind="ended",
            outcome=chosen.outcome,
            answered_at=chosen.answered_at,
            ended_at=chosen.ended_at,
            duration_seconds=chosen.duration_seconds,
            billsec=chosen.billsec,
            raw_cause=chosen.raw_cause,
        )

    async def hangup(self, attempt_id: str, call_id: str | None) -> None:
        # The seed has no hangup or cancel API: ring_timeout (sent on every start) ends unanswered
        # calls at Paycall, and Paycall's own ALLOTTED_TIMEOUT caps answered ones.
        return None

    # -------------------------------------------------------------------------------- callbacks

    def parse_callback(self, request: CallbackRequest) -> CallEvent:
        attempt_id = request.token_attempt_id
        if attempt_id is None:
            raise CallbackError(
                "bad_signature", "Paycall signs nothing: a callback needs our per-attempt token on its URL"
            )
        try:
            record = _callback_record(request)
            for column in ("unique_campaign_id", "unique_id"):
                echoed = _text(record, column)
                if echoed and echoed != attempt_id:
                    raise CallbackError("bad_signature", f"callback {column} is not the attempt of its token")
            if not _text(record, "hangup_cause"):
                raise ValueError("no hangup_cause: not a call result (the CDR lookup will settle it)")
            if "answer_time" not in record and "billsec" not in record:
                raise ValueError("neither answer_time nor billsec: cannot tell whether anyone answered")
            return event_from_cdr(record, attempt_id)
        except (ValueError, TypeError, UnicodeDecodeError, csv.Error) as exc:
            raise CallbackError("malformed", f"malformed Paycall callback: {exc}") from None

    async def poll_events(self) -> list[CallEvent]:
        return []


def _callback_record(request: CallbackRequest) -> Mapping[str, Any]:
    """The callback body as CDR columns: JSON (Paycall's default encoding), a form or a CDR CSV."""
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    text = request.body.decode("utf-8-sig")
    if content_type == "application/x-www-form-urlencoded" and not text.lstrip().startswith("{"):
        return dict(parse_qsl(text, keep_blank_values=True))
    if content_type in ("text/csv", "text/plain") and not text.lstrip().startswith("{"):
        rows = list(csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=True))
        rows = [r for r in rows if r]
        if len(rows) != 2:
            raise ValueError("a CSV callback must be one header and one row")
        header = _normalize_header(rows[0])
        if len(rows[1]) != len(header):
            raise ValueError("the CSV callback row does not match its header")
        return dict(zip(header, rows[1], strict=True))
    try:
        data = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        raise ValueError("body is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data


def from_account(account: ProviderAccount, settings: Settings) -> PaycallProvider:
    where = f"provider {account.name!r}"
    options = account.options
    flow = options.get("flow", "dialer")
    if flow not in ("dialer", "simple_dialer"):
        raise SettingsError(f'invalid settings:\n  {where}.flow: must be "dialer" or "simple_dialer"')
    allowed = _DIALER_OPTIONS if flow == "dialer" else _SIMPLE_OPTIONS
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise SettingsError(f"invalid settings:\n  {where}: unknown options for the {flow} flow: {unknown}")
    username = options.get("username")
    if not isinstance(username, str) or not username or ":" in username:
        raise SettingsError(
            f"invalid settings:\n  {where}.username: Paycall's user name is required (and has no ':')"
        )
    password = account.secret("password")
    ivr: dict[str, Any] | None = None
    simple: dict[str, Any] | None = None
    if flow == "dialer":
        ivr = _validate_ivr(options.get("ivr"), f"{where}.ivr")
    else:
        simple = _flags({k: v for k, v in options.items() if k not in ("flow", "username")}, where)
        if not isinstance(simple.get("sound"), str) or not simple["sound"]:
            raise SettingsError(
                f"invalid settings:\n  {where}.sound: the simple_dialer flow needs the text or file to play"
            )
    return PaycallProvider(
        account.base_url,
        username,
        password,
        flow=flow,
        ivr=ivr,
        simple=simple,
        timeout_seconds=account.timeout_seconds,
        max_connections=settings.max_inflight_requests,
        max_calls_per_second=account.max_calls_per_second,
        name=account.name,
    )
