"""A provider adapter configured entirely from the account's options (kind ``http``).

For providers without a module of their own: where the start request goes and what it carries, how
to read the call id and the errors, and how to authenticate and read callbacks and lookups are all
data, validated when the account is loaded (SettingsError names every bad key).

Templates (``start``, ``lookup``, ``hangup``: path, headers, body) take placeholders ``{attempt_id}``
``{to}`` ``{from}`` ``{ring_timeout_seconds}`` ``{callback_url}`` ``{dtmf}`` ``{campaign}`` (lookup and
hangup: ``{attempt_id}`` ``{call_id}`` ``{to}``) and ``{secret:NAME}`` for ``NAME_env`` secrets. A body
value that is exactly one placeholder keeps its type (``ring_timeout_seconds`` stays a number) and is
left out when it has no value (no caller id, no DTMF). Field paths are dotted (``data.call.id``;
numbers index lists). Example account::

    {"name": "acme", "kind": "http", "base_url": "https://api.acme.example",
     "api_key_env": "ACME_API_KEY", "webhook_secret_env": "ACME_WEBHOOK_SECRET",
     "start": {"method": "POST", "path": "/v2/calls", "encoding": "json",
               "headers": {"Authorization": "Bearer {secret:api_key}"},
               "body": {"to": "{to}", "from": "{from}", "timeout": "{ring_timeout_seconds}",
                        "status_url": "{callback_url}", "reference": "{attempt_id}"}},
     "start_response": {"call_id": "data.id"},
     "error_map": [{"status": 400, "path": "error.code", "value": "bad_number",
                    "kind": "rejected", "outcome": "invalid_number"},
                   {"status": 429, "kind": "rate_limited"}],
     "callback": {"attempt_id": "reference", "call_id": "data.id", "status": "data.status",
                  "status_map": {"ringing": "ringing", "answered": "answered",
                                 "completed": "answered_human", "busy": "busy", "failed": "from_cause"},
                  "cause": "data.q850", "ended_at": "data.ended_at",
                  "signature": {"header": "X-Acme-Signature", "algorithm": "hmac-sha256",
                                "secret": "webhook_secret", "encoding": "hex", "signed": "body"}},
     "lookup": {"method": "GET", "path": "/v2/calls/by-reference/{attempt_id}",
                "not_found_means_never_received": true}}

``status_map`` values are an outcome name, ``ringing`` or ``answered`` (not final), or
``from_cause`` (the Q.850 cause, then the SIP code, decide; answered calls are ANSWERED_HUMAN). A
``"*"`` entry covers statuses not listed; without one such a callback is refused as malformed.
``signature`` is an HMAC spec or ``"token"``: the provider signs nothing and our per-attempt URL
token must be present. One of the two is required: an unauthenticated callback is never accepted.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hmac
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from hashlib import sha1, sha256
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import parse_qsl, quote, urlencode

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
    StartErrorKind,
    StartRequest,
)
from dialer.settings import SettingsError
from scheduler.outcomes import Outcome, from_q850, from_q850_name, from_sip

if TYPE_CHECKING:
    from dialer.providers import ProviderAccount
    from dialer.settings import Settings

START_FIELDS: Final = ("attempt_id", "to", "from", "ring_timeout_seconds", "callback_url", "dtmf", "campaign")
CALL_FIELDS: Final = ("attempt_id", "call_id", "to")
_PLACEHOLDER: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?::[A-Za-z0-9_]+)?)\}")
_METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE")
_KINDS: Final = ("not_sent", "rate_limited", "rejected", "ambiguous")
_NOT_FINAL: Final = ("ringing", "answered")
_FROM_CAUSE: Final = "from_cause"
_EVENT_PATHS: Final = ("call_id", "answered_at", "ended_at", "duration", "billsec", "cause", "sip")
_HASHES: Final[Mapping[str, Callable[[], Any]]] = {"hmac-sha256": sha256, "hmac-sha1": sha1}


# ---------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    encoding: Literal["json", "form"]


@dataclass(frozen=True)
class ErrorRule:
    statuses: frozenset[int] | None  # None: any status in `family`
    family: int | None  # 4 for "4xx", 5 for "5xx"
    path: str | None
    values: tuple[Any, ...]
    kind: StartErrorKind
    outcome: Outcome | None

    def matches(self, status: int, body: Any) -> bool:
        if self.statuses is not None and status not in self.statuses:
            return False
        if self.family is not None and status // 100 != self.family:
            return False
        if self.path is None:
            return True
        found, value = lookup_path(body, self.path)
        return found and any(_same(value, v) for v in self.values)


@dataclass(frozen=True)
class Signature:
    header: str
    digest: Callable[[], Any]
    secret: bytes
    encoding: Literal["hex", "base64"]
    signed: Literal["body", "url+body"]
    prefix: str

    def expected(self, url: str, body: bytes) -> str:
        message = url.encode() + body if self.signed == "url+body" else body
        mac = hmac.new(self.secret, message, self.digest).digest()
        text = mac.hex() if self.encoding == "hex" else base64.b64encode(mac).decode()
        return self.prefix + text

    def __repr__(self) -> str:
        return f"Signature(header={self.header!r}, signed={self.signed!r})"


@dataclass(frozen=True)
class Fields:
    """Where a callback or lookup body keeps what a CallEvent needs."""

    attempt_id: str | None  # None: from our URL token (callbacks) or the request (lookups)
    status: str
    status_map: Mapping[str, str]
    paths: Mapping[str, str]


@dataclass(frozen=True)
class Lookup:
    request: Request
    not_found_means_never_received: bool
    fields: Fields


class _Errors:
    """Collects configuration problems, each under the key that has it."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, key: str, problem: str) -> None:
        self.items.append(f"{key}: {problem}")

    def unknown(self, key: str, value: Mapping[str, Any], known: Sequence[str]) -> None:
        for extra in sorted(set(value) - set(known)):
            self.add(f"{key}.{extra}", f"unknown key (known: {', '.join(known)})")


def _placeholders(template: str) -> list[str]:
    return _PLACEHOLDER.findall(template)


def _check_template(
    errors: _Errors, key: str, value: Any, names: Sequence[str], secrets: Mapping[str, Any]
) -> None:
    if isinstance(value, str):
        for name in _placeholders(value):
            if name.startswith("secret:"):
                if name[7:] not in secrets:
                    errors.add(key, f"{{{name}}} needs {name[7:]}_env naming an environment variable")
            elif name not in names:
                errors.add(key, f"unknown placeholder {{{name}}} (known: {', '.join(names)}, secret:NAME)")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_template(errors, f"{key}.{k}", v, names, secrets)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_template(errors, f"{key}[{i}]", v, names, secrets)


def _request_config(
    errors: _Errors,
    key: str,
    raw: Any,
    names: Sequence[str],
    secrets: Mapping[str, Any],
    *,
    default_method: str,
    extra_keys: Sequence[str] = (),
) -> Request | None:
    if not isinstance(raw, dict):
        errors.add(key, "must be an object with at least a path")
        return None
    errors.unknown(key, raw, ("method", "path", "headers", "body", "encoding", *extra_keys))
    method = raw.get("method", default_method)
    if method not in _METHODS:
        errors.add(f"{key}.method", f"must be one of {', '.join(_METHODS)}")
    path = raw.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        errors.add(f"{key}.path", "required, a path starting with / (appended to base_url)")
        path = "/"
    _check_template(errors, f"{key}.path", path, names, secrets)
    headers = raw.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        errors.add(f"{key}.headers", "must be an object of string values")
        headers = {}
    _check_template(errors, f"{key}.headers", headers, names, secrets)
    encoding = raw.get("encoding", "json")
    if encoding not in ("json", "form"):
        errors.add(f"{key}.encoding", "must be json or form")
        encoding = "json"
    body = raw.get("body")
    if body is not None:
        if not isinstance(body, dict):
            errors.add(f"{key}.body", "must be a JSON object template")
        elif encoding == "form" and any(isinstance(v, dict) for v in body.values()):
            errors.add(f"{key}.body", "a form body is flat: values are strings, numbers or lists")
        _check_template(errors, f"{key}.body", body, names, secrets)
    return Request(str(method), path, dict(headers), body, encoding)


def _outcome_name(value: Any) -> Outcome | None:
    try:
        return Outcome(value)
    except ValueError:
        return None


def _error_map(errors: _Errors, raw: Any) -> list[ErrorRule]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        errors.add("error_map", "must be a list of rules")
        return []
    rules: list[ErrorRule] = []
    for i, item in enumerate(raw):
        key = f"error_map[{i}]"
        if not isinstance(item, dict):
            errors.add(key, "must be an object")
            continue
        errors.unknown(key, item, ("status", "path", "value", "kind", "outcome"))
        status = item.get("status")
        statuses: frozenset[int] | None = None
        family: int | None = None
        if status in ("4xx", "5xx"):
            family = int(status[0])
        elif type(status) is int and 100 <= status <= 599:
            statuses = frozenset({status})
        elif isinstance(status, list) and status and all(type(s) is int and 100 <= s <= 599 for s in status):
            statuses = frozenset(status)
        else:
            errors.add(f"{key}.status", 'required: an HTTP status, a list of them, "4xx" or "5xx"')
        path = item.get("path")
        if path is not None and (not isinstance(path, str) or not path):
            errors.add(f"{key}.path", "must be a dotted field path")
        if (path is None) != ("value" not in item):
            errors.add(f"{key}.value", "path and value go together")
        value = item.get("value")
        values = tuple(value) if isinstance(value, list) else (value,)
        kind = item.get("kind")
        if kind not in _KINDS:
            errors.add(f"{key}.kind", f"must be one of {', '.join(_KINDS)}")
        outcome = _outcome_name(item["outcome"]) if "outcome" in item else None
        if kind == "rejected" and outcome is None:
            errors.add(f"{key}.outcome", f"a rejection needs an outcome, one of {[o.value for o in Outcome]}")
        elif kind != "rejected" and "outcome" in item:
            errors.add(f"{key}.outcome", "only a rejected start has an outcome")
        if kind in _KINDS:
            rules.append(ErrorRule(statuses, family, path, values, kind, outcome))
    return rules


def _fields(
    errors: _Errors, key: str, raw: Mapping[str, Any], base: Fields | None, *, callback: bool
) -> Fields:
    attempt = raw.get("attempt_id", None if base is None else base.attempt_id)
    if callback:
        if not isinstance(attempt, str) or not attempt:
            errors.add(f"{key}.attempt_id", 'required: the field path of our attempt id, or "token"')
        elif attempt == "token":
            attempt = None
    elif attempt is not None and (not isinstance(attempt, str) or attempt == "token"):
        errors.add(f"{key}.attempt_id", "must be a field path")
    status = raw.get("status", None if base is None else base.status)
    if not isinstance(status, str) or not status:
        errors.add(f"{key}.status", "required: the field path of the call status")
        status = ""
    status_map = raw.get("status_map", None if base is None else base.status_map)
    if not isinstance(status_map, dict) or not status_map:
        errors.add(f"{key}.status_map", "required: an object of provider status → outcome")
        status_map = {}
    allowed = {o.value for o in Outcome} | {*_NOT_FINAL, _FROM_CAUSE}
    for name, target in status_map.items():
        if target not in allowed:
            errors.add(
                f"{key}.status_map.{name}",
                f"{target!r} is not an outcome, ringing, answered or {_FROM_CAUSE}",
            )
    paths = dict(base.paths) if base is not None else {}
    for name in _EVENT_PATHS:
        if name in raw:
            if not isinstance(raw[name], str) or not raw[name]:
                errors.add(f"{key}.{name}", "must be a dotted field path")
            else:
                paths[name] = raw[name]
    return Fields(attempt, status, dict(status_map), paths)


def _signature(errors: _Errors, raw: Any, account: ProviderAccount) -> Signature | None:
    key = "callback.signature"
    if raw == "token":
        return None
    if not isinstance(raw, dict):
        errors.add(key, 'required: an HMAC spec {header, algorithm, secret, encoding, signed} or "token"')
        return None
    errors.unknown(key, raw, ("header", "algorithm", "secret", "encoding", "signed", "prefix"))
    header = raw.get("header")
    if not isinstance(header, str) or not header:
        errors.add(f"{key}.header", "required: the header carrying the signature")
    algorithm = raw.get("algorithm", "hmac-sha256")
    if algorithm not in _HASHES:
        errors.add(f"{key}.algorithm", f"must be one of {', '.join(_HASHES)}")
    secret_name = raw.get("secret")
    if not isinstance(secret_name, str) or secret_name not in account.secrets:
        errors.add(f"{key}.secret", "required: NAME of a NAME_env secret holding the signing key")
    encoding = raw.get("encoding", "hex")
    if encoding not in ("hex", "base64"):
        errors.add(f"{key}.encoding", "must be hex or base64")
    signed = raw.get("signed", "body")
    if signed not in ("body", "url+body"):
        errors.add(f"{key}.signed", "must be body or url+body")
    prefix = raw.get("prefix", "")
    if not isinstance(prefix, str):
        errors.add(f"{key}.prefix", "must be a string")
    if errors.items:
        return None
    return Signature(
        str(header),
        _HASHES[algorithm],
        account.secret(str(secret_name)).encode(),
        encoding,
        signed,
        prefix,
    )


@dataclass(frozen=True)
class Config:
    start: Request
    call_id_path: str
    error_map: Sequence[ErrorRule]
    callback: Fields
    callback_encoding: Literal["json", "form", "auto"]
    signature: Signature | None  # None: our per-attempt URL token authenticates the callback
    lookup: Lookup | None
    hangup: Request | None


def parse_config(account: ProviderAccount) -> Config:
    """The account's options as a Config; SettingsError lists every problem, each under its key."""
    opts = dict(account.options)
    errors = _Errors()
    errors.unknown("options", opts, ("start", "start_response", "error_map", "callback", "lookup", "hangup"))
    secrets = account.secrets
    start = _request_config(errors, "start", opts.get("start"), START_FIELDS, secrets, default_method="POST")
    response = opts.get("start_response")
    call_id_path = ""
    if (
        not isinstance(response, dict)
        or not isinstance(response.get("call_id"), str)
        or not response["call_id"]
    ):
        errors.add("start_response.call_id", "required: the field path of the provider's call id")
    else:
        errors.unknown("start_response", response, ("call_id",))
        call_id_path = response["call_id"]
    rules = _error_map(errors, opts.get("error_map"))
    raw_cb = opts.get("callback")
    if not isinstance(raw_cb, dict):
        errors.add("callback", "required: how to authenticate and read status callbacks")
        raw_cb = {}
    errors.unknown(
        "callback",
        raw_cb,
        ("attempt_id", "status", "status_map", "signature", "encoding", *_EVENT_PATHS),
    )
    callback = _fields(errors, "callback", raw_cb, None, callback=True)
    cb_encoding = raw_cb.get("encoding", "auto")
    if cb_encoding not in ("json", "form", "auto"):
        errors.add("callback.encoding", "must be json, form or auto (by Content-Type)")
        cb_encoding = "auto"
    before = len(errors.items)
    signature = _signature(errors, raw_cb.get("signature"), account)
    if len(errors.items) > before:
        signature = None
    lookup: Lookup | None = None
    raw_lookup = opts.get("lookup")
    if raw_lookup is not None:
        request = _request_config(
            errors,
            "lookup",
            raw_lookup,
            CALL_FIELDS,
            secrets,
            default_method="GET",
            extra_keys=(
                "not_found_means_never_received",
                "attempt_id",
                "status",
                "status_map",
                *_EVENT_PATHS,
            ),
        )
        never = (
            raw_lookup.get("not_found_means_never_received", False) if isinstance(raw_lookup, dict) else False
        )
        if not isinstance(never, bool):
            errors.add("lookup.not_found_means_never_received", "must be true or false")
        fields = _fields(
            errors, "lookup", raw_lookup if isinstance(raw_lookup, dict) else {}, callback, callback=False
        )
        if request is not None:
            lookup = Lookup(request, bool(never), fields)
    hangup: Request | None = None
    if opts.get("hangup") is not None:
        hangup = _request_config(
            errors, "hangup", opts["hangup"], CALL_FIELDS, secrets, default_method="POST"
        )
    if errors.items or start is None:
        raise SettingsError(
            "invalid settings:\n  " + "\n  ".join(f"provider {account.name!r}: {e}" for e in errors.items)
        )
    return Config(start, call_id_path, rules, callback, cb_encoding, signature, lookup, hangup)


# ---------------------------------------------------------------------------- values


def lookup_path(data: Any, path: str) -> tuple[bool, Any]:
    """(found, value) at a dotted path; a key holding the whole path (form fields) wins."""
    if isinstance(data, Mapping) and path in data:
        return True, data[path]
    value = data
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return False, None
    return True, value


def _same(actual: Any, expected: Any) -> bool:
    if actual == expected and type(actual) is type(expected):
        return True
    scalar = (str, int, float)
    # Error codes arrive as numbers from one provider and strings from another.
    return isinstance(actual, scalar) and isinstance(expected, scalar) and str(actual) == str(expected)


def _fill(template: str, values: Mapping[str, Any], *, quote_values: bool = False) -> str:
    def one(match: re.Match[str]) -> str:
        value = values.get(match.group(1))
        text = "" if value is None else str(value)
        return quote(text, safe="") if quote_values else text

    return _PLACEHOLDER.sub(one, template)


_OMIT: Final = object()


def render(template: Any, values: Mapping[str, Any]) -> Any:
    """A body template with its placeholders filled; a whole-value placeholder keeps its type."""
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template)
        if whole is not None:
            value = values.get(whole.group(1))
            return _OMIT if value is None else value
        return _fill(template, values)
    if isinstance(template, dict):
        out = {k: render(v, values) for k, v in template.items()}
        return {k: v for k, v in out.items() if v is not _OMIT}
    if isinstance(template, list):
        return [v for v in (render(x, values) for x in template) if v is not _OMIT]
    return template


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def encode_body(body: Any, encoding: str) -> tuple[bytes, str]:
    if encoding == "form":
        pairs: list[tuple[str, str]] = []
        for k, v in body.items():
            for item in v if isinstance(v, list) else [v]:
                pairs.append((k, _form_value(item)))
        return urlencode(pairs).encode(), "application/x-www-form-urlencoded"
    return orjson.dumps(body), "application/json"


def _timestamp(value: Any) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("a timestamp cannot be a boolean")
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    if not isinstance(value, str):
        raise ValueError("timestamps are ISO 8601, RFC 2822 or Unix seconds")
    text = value.strip()
    try:
        return dt.datetime.fromtimestamp(float(text), dt.UTC)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            raise ValueError(f"unreadable timestamp {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _number(value: Any, name: str) -> float:
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number")
    number = float(value)
    if number < 0 or number != number:
        raise ValueError(f"{name} must be a number >= 0")
    return number


def _code(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer")
    if isinstance(value, str) and not value.strip().isdigit():
        raise ValueError(f"{name} must be an integer")
    return int(value)


def event_from(
    data: Any, fields: Fields, attempt_id: str, *, default_call_id: str | None = None
) -> CallEvent:
    """Normalize a callback or lookup body. Raises ValueError/TypeError on bad input."""
    found, raw_status = lookup_path(data, fields.status)
    if not found or not isinstance(raw_status, str | int) or isinstance(raw_status, bool):
        raise ValueError(f"no status at {fields.status!r}")
    status = str(raw_status)
    target = fields.status_map.get(status, fields.status_map.get("*"))
    if target is None:
        raise ValueError(f"status {status!r} is not in status_map")

    def get(name: str) -> Any:
        path = fields.paths.get(name)
        return None if path is None else lookup_path(data, path)[1]

    call_id = get("call_id")
    call_id = default_call_id if call_id is None else str(call_id)
    answered_at = _timestamp(get("answered_at"))
    if target == "ringing":
        return CallEvent(attempt_id=attempt_id, call_id=call_id, kind="ringing", raw_status=status)
    if target == "answered":
        return CallEvent(
            attempt_id=attempt_id,
            call_id=call_id,
            kind="answered",
            answered_at=answered_at,
            raw_status=status,
        )
    duration = _number(get("duration"), "duration")
    billsec = int(_number(get("billsec"), "billsec"))
    raw_cause = get("cause")
    sip = _code(get("sip"), "sip")
    answered = answered_at is not None or billsec > 0
    if target == _FROM_CAUSE:
        if raw_cause is not None and raw_cause != "":
            if isinstance(raw_cause, str) and not raw_cause.strip().isdigit():
                outcome = from_q850_name(raw_cause, answered)
            else:
                cause_code = _code(raw_cause, "cause")
                assert cause_code is not None
                outcome = from_q850(cause_code, answered)
        elif answered:
            outcome = Outcome.ANSWERED_HUMAN
        elif sip is not None:
            outcome = from_sip(sip)
        else:
            outcome = Outcome.UNKNOWN
    else:
        outcome = Outcome(target)
    return CallEvent(
        attempt_id=attempt_id,
        call_id=call_id,
        kind="ended",
        outcome=outcome,
        answered_at=answered_at,
        ended_at=_timestamp(get("ended_at")),
        duration_seconds=duration,
        billsec=billsec,
        raw_status=status,
        raw_cause=None if raw_cause in (None, "") else str(raw_cause),
        sip_code=sip,
    )


def _parse_body(body: bytes, encoding: str, content_type: str) -> Any:
    if encoding == "auto":
        encoding = "form" if "application/x-www-form-urlencoded" in content_type.lower() else "json"
    if encoding == "form":
        return dict(parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body)))
    return orjson.loads(body)


# ---------------------------------------------------------------------------- the adapter


class GenericHttpProvider(HttpAdapter):
    def __init__(
        self,
        base_url: str,
        config: Config,
        secrets: Mapping[str, str],
        *,
        timeout_seconds: float = 10.0,
        max_connections: int = 200,
        max_calls_per_second: float = 0.0,
        name: str = "http",
    ) -> None:
        self.name = name
        self._base = base_url.rstrip("/")
        self._config = config
        self._secrets = {f"secret:{k}": v for k, v in secrets.items()}
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
        return f"GenericHttpProvider(name={self.name!r}, base_url={self._base!r})"

    def build(
        self, request: Request, values: Mapping[str, Any]
    ) -> tuple[str, str, dict[str, str], bytes | None]:
        """(method, url, headers, body) of a configured request for these values."""
        filled = {**values, **self._secrets}
        url = self._base + _fill(request.path, filled, quote_values=True)
        headers = {k: _fill(v, filled) for k, v in request.headers.items()}
        data: bytes | None = None
        if request.body is not None:
            data, content_type = encode_body(render(request.body, filled), request.encoding)
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = content_type
        return request.method, url, headers, data

    async def _send(self, op: str, request: Request, values: Mapping[str, Any]) -> tuple[int, bytes]:
        method, url, headers, data = self.build(request, values)
        started = time.perf_counter()
        try:
            async with self._client().request(
                method, url, data=data, headers=headers, allow_redirects=False
            ) as resp:
                return resp.status, await resp.read()
        finally:
            self._latency[op].observe(time.perf_counter() - started)

    async def start_call(self, request: StartRequest) -> Accepted:
        values = {
            "attempt_id": request.attempt_id,
            "to": request.phone,
            "from": request.caller_id,
            "ring_timeout_seconds": request.ring_timeout_seconds,
            "callback_url": request.callback_url,
            "dtmf": request.dtmf,
            "campaign": request.campaign,
        }
        try:
            status, payload = await self._send("start_call", self._config.start, values)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_failure(exc) from None
        body: Any = None
        try:
            body = _parse_body(payload, "auto", "") if payload else None
        except (orjson.JSONDecodeError, UnicodeDecodeError, ValueError):
            body = None
        if 200 <= status < 300:
            found, call_id = lookup_path(body, self._config.call_id_path)
            if not found or call_id is None or call_id == "" or isinstance(call_id, dict | list | bool):
                self._error("invalid_response")
                raise StartError("ambiguous", "provider accepted the call without a readable call id")
            return Accepted(call_id=str(call_id))
        for rule in self._config.error_map:
            if rule.matches(status, body):
                self._error(rule.kind)
                raise StartError(
                    rule.kind,
                    f"provider answered {status} ({rule.kind} by error_map)",
                    outcome=rule.outcome,
                    raw_status=str(status),
                )
        if status in (401, 403):
            self._error("rejected")
            raise StartError(
                "rejected",
                f"provider refused our credentials ({status})",
                outcome=Outcome.ACCOUNT_ERROR,
                raw_status=str(status),
            )
        if status == 429 or status >= 500:
            # Nothing in the configuration says these were not processed.
            self._error("ambiguous")
            raise StartError("ambiguous", f"provider answered {status}")
        self._error("rejected")
        raise StartError(
            "rejected", f"provider answered {status}", outcome=Outcome.PROVIDER_ERROR, raw_status=str(status)
        )

    async def lookup(self, request: LookupRequest) -> CallEvent | None:
        config = self._config.lookup
        if config is None:
            raise ProviderUnavailable("no lookup is configured for this provider")
        uses_call_id = any(
            "call_id" in _placeholders(t) for t in (config.request.path, *config.request.headers.values())
        )
        if uses_call_id and request.call_id is None:
            raise ProviderUnavailable("the lookup needs the provider's call id, which never arrived")
        values = {"attempt_id": request.attempt_id, "call_id": request.call_id, "to": request.phone}
        try:
            status, payload = await self._send("lookup", config.request, values)
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._error("lookup_failed")
            raise ProviderUnavailable(f"lookup failed: {type(exc).__name__}") from None
        if status == 404 and config.not_found_means_never_received:
            return None
        if status != 200:
            self._error("lookup_failed")
            raise ProviderUnavailable(f"lookup answered {status}")
        try:
            data = _parse_body(payload, "auto", "")
            fields = config.fields
            attempt_id = request.attempt_id
            if fields.attempt_id is not None:
                found, echoed = lookup_path(data, fields.attempt_id)
                if found and echoed is not None and str(echoed) != attempt_id:
                    raise ValueError("the lookup answered for another attempt")
            return event_from(data, fields, attempt_id, default_call_id=request.call_id)
        except (orjson.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as exc:
            self._error("invalid_response")
            raise ProviderUnavailable(f"unreadable lookup: {exc}") from None

    async def hangup(self, attempt_id: str, call_id: str | None) -> None:
        config = self._config.hangup
        if config is None:
            return
        values = {"attempt_id": attempt_id, "call_id": call_id, "to": None}
        try:
            status, _ = await self._send("hangup", config, values)
            # 404/409: gone or already over; the outcome we record stands either way.
            if status >= 300 and status not in (404, 409):
                self._error("hangup_failed")
        except (TimeoutError, aiohttp.ClientError):
            self._error("hangup_failed")

    def parse_callback(self, request: CallbackRequest) -> CallEvent:
        signature = self._config.signature
        if signature is None:
            if request.token_attempt_id is None:
                raise CallbackError("bad_signature", "callback URL carries no valid per-attempt token")
        else:
            given = request.headers.get(signature.header, "")
            if not hmac.compare_digest(
                given.encode(), signature.expected(request.url, request.body).encode()
            ):
                raise CallbackError("bad_signature", "callback signature does not match")
        fields = self._config.callback
        try:
            data = _parse_body(
                request.body, self._config.callback_encoding, request.headers.get("Content-Type", "")
            )
            if fields.attempt_id is None:
                if request.token_attempt_id is None:
                    raise CallbackError(
                        "bad_signature", "attempt id comes from our URL token, which is missing"
                    )
                attempt_id = request.token_attempt_id
            else:
                found, value = lookup_path(data, fields.attempt_id)
                if not found or not isinstance(value, str) or not value:
                    raise ValueError(f"no attempt id at {fields.attempt_id!r}")
                attempt_id = value
            return event_from(data, fields, attempt_id)
        except CallbackError:
            raise
        except (
            orjson.JSONDecodeError,
            UnicodeDecodeError,
            TypeError,
            ValueError,
            OverflowError,
            OSError,
        ) as exc:
            raise CallbackError("malformed", f"malformed callback: {exc}") from None

    async def poll_events(self) -> list[CallEvent]:
        return []


def from_account(account: ProviderAccount, settings: Settings) -> GenericHttpProvider:
    config = parse_config(account)
    return GenericHttpProvider(
        account.base_url,
        config,
        {name: secret.get() for name, secret in account.secrets.items()},
        timeout_seconds=account.timeout_seconds,
        max_connections=settings.max_inflight_requests,
        max_calls_per_second=account.max_calls_per_second,
        name=account.name,
    )
