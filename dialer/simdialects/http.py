"""A small configurable JSON call API, for the generic HTTP adapter (provider kind ``http``) to be
configured against: its own paths, auth header, field names and state names, none of them native.

``POST {prefix}/calls`` with ``X-Api-Key`` and a JSON (or form) body ``{ref, to, from, ring_timeout,
notify_url, digits, tag}`` answers 201 ``{"call": {"id", "ref", "state"}}`` (200 for a repeated ref).
Errors are ``{"error": {"code", "message"}}``: 400 ``bad_number`` / ``bad_request``, 401 ``auth``, 409
``ref_conflict``, 429 ``slow_down`` with ``processed: false``, 503 ``unavailable``, 500 ``internal``
(the call exists). ``GET {prefix}/calls/by-ref/{ref}`` returns the event body below (404 if the ref
was never received); ``POST {prefix}/calls/by-ref/{ref}/hangup`` cancels a call that is not answered.

Events are posted to ``notify_url`` as ``{"ref", "event_id", "call": {"id", "state", "answered_at",
"ended_at", "duration", "billed", "q850", "sip"}}`` with states queued, ringing, talking, completed,
busy, no_answer, failed, canceled, signed in ``X-Signature``.

Options: ``api_key`` and ``callback_secret`` (required), ``prefix`` ("/api"), ``algorithm`` (sha256 |
sha1), ``signature_encoding`` (base64 | hex), ``signed`` (url+body | body), ``callback_encoding``
(json | form: form flattens ``call.x`` into ``call.x`` keys).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections import deque
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlencode

import orjson
from aiohttp import web

from dialer.simdialects import (
    DEFAULT_START_STATUSES,
    E164,
    MAX_ATTEMPT_ID_LENGTH,
    NO_EXTRA,
    Callback,
    CallView,
    StartSpec,
    iso_utc,
    register,
)
from dialer.simulator import SimulatorConfig, SimulatorState

__all__ = ["STATES", "HttpDialect"]

# The core's call statuses in this API's words.
STATES: Final[Mapping[str, str]] = {
    "queued": "queued",
    "ringing": "ringing",
    "in-progress": "talking",
    "completed": "completed",
    "busy": "busy",
    "no-answer": "no_answer",
    "failed": "failed",
    "canceled": "canceled",
}
_OPTIONS: Final = frozenset(
    {"api_key", "callback_secret", "prefix", "algorithm", "signature_encoding", "signed", "callback_encoding"}
)
_CHOICES: Final[Mapping[str, tuple[str, ...]]] = {
    "algorithm": ("sha256", "sha1"),
    "signature_encoding": ("base64", "hex"),
    "signed": ("url+body", "body"),
    "callback_encoding": ("json", "form"),
}


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": {"code": code, "message": message, **extra}}),
        content_type="application/json",
    )


def _json(status: int, payload: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


class HttpDialect:
    name = "http"
    start_statuses = DEFAULT_START_STATUSES

    def __init__(self, options: Mapping[str, Any], config: SimulatorConfig) -> None:
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise ValueError(f"unknown http dialect options {unknown}; known: {sorted(_OPTIONS)}")
        for key in ("api_key", "callback_secret"):
            if not isinstance(options.get(key), str) or not options[key]:
                raise ValueError(f"the http dialect needs {key}")
        for key, choices in _CHOICES.items():
            if options.get(key, choices[0]) not in choices:
                raise ValueError(f"{key} must be one of {choices}")
        prefix = options.get("prefix", "/api")
        if not isinstance(prefix, str) or not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError("prefix must start with / and not end with one")
        self._key: str = options["api_key"]
        self._secret: bytes = options["callback_secret"].encode()
        self._prefix = prefix
        self._digest = hashlib.sha256 if options.get("algorithm", "sha256") == "sha256" else hashlib.sha1
        self._hex = options.get("signature_encoding", "base64") == "hex"
        self._url_signed = options.get("signed", "url+body") == "url+body"
        self._form = options.get("callback_encoding", "json") == "form"
        self.requests: deque[dict[str, Any]] = deque(maxlen=10_000)

    def sign(self, url: str, body: bytes) -> str:
        """What X-Signature carries for a callback posted to ``url`` with ``body``."""
        message = url.encode() + body if self._url_signed else body
        mac = hmac.new(self._secret, message, self._digest).digest()
        return mac.hex() if self._hex else base64.b64encode(mac).decode()

    def _authorized(self, request: web.Request) -> bool:
        return hmac.compare_digest(request.headers.get("X-Api-Key", "").encode(), self._key.encode())

    def _note(self, request: web.Request, body: Any) -> None:
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "content_type": request.headers.get("Content-Type"),
                "api_key": request.headers.get("X-Api-Key") == self._key,
                "body": body,
            }
        )

    def routes(self, state: SimulatorState) -> list[web.RouteDef]:
        async def start(request: web.Request) -> web.Response:
            raw = await request.read()
            body: Any
            try:
                if request.content_type == "application/x-www-form-urlencoded":
                    body = dict((await request.post()).items())
                else:
                    body = orjson.loads(raw)
            except (orjson.JSONDecodeError, UnicodeDecodeError, ValueError):
                body = None
            self._note(request, body)
            if not self._authorized(request):
                state.refuse("unauthorized", 401, dialect=self)
                return _error(401, "auth", "missing or wrong X-Api-Key")
            problem = _invalid(body)
            if problem is not None:
                code, message = problem
                ref = body.get("ref") if isinstance(body, dict) else None
                state.refuse("invalid", 400, dialect=self, attempt_id=ref if isinstance(ref, str) else None)
                return _error(400, code, message)
            assert isinstance(body, dict)
            timeout = int(body["ring_timeout"])
            spec = StartSpec(
                body["ref"],
                body["to"],
                body.get("from"),
                timeout,
                body["notify_url"],
                body.get("tag"),
                body.get("digits"),
                NO_EXTRA,
            )
            admission = state.admit(spec, dialect=self)
            call = admission.call
            if call is None:
                if admission.reason in ("max_cps", "rate_limited"):
                    return _error(admission.status, "slow_down", "over the rate limit", processed=False)
                if admission.reason == "error_5xx":
                    return _error(admission.status, "unavailable", "try again later")
                return _error(admission.status, "ref_conflict", "ref already used for another call")
            if admission.slow_seconds:
                await asyncio.sleep(admission.slow_seconds)
            if admission.after_create_error:
                return _error(admission.status, "internal", "internal error")
            return _json(
                admission.status,
                {"call": {"id": call.call_id, "ref": call.attempt_id, "state": STATES[call.status]}},
            )

        async def by_ref(request: web.Request) -> web.Response:
            self._note(request, None)
            if not self._authorized(request):
                return _error(401, "auth", "missing or wrong X-Api-Key")
            call = state.find(request.match_info["ref"], dialect=self)
            if call is None:
                return _error(404, "not_found", "no call with this ref was ever requested")
            return _json(200, self._event(call, call.status, "", final=True))

        async def hangup(request: web.Request) -> web.Response:
            self._note(request, None)
            if not self._authorized(request):
                return _error(401, "auth", "missing or wrong X-Api-Key")
            call = state.find(request.match_info["ref"], dialect=self)
            if call is None:
                return _error(404, "not_found", "no call with this ref was ever requested")
            if state.cancel_call(call):
                return _json(200, self._event(call, call.status, "", final=True))
            return _error(409, "not_cancelable", "only queued or ringing calls can be hung up")

        p = self._prefix
        return [
            web.post(f"{p}/calls", start),
            web.get(f"{p}/calls/by-ref/{{ref}}", by_ref),
            web.post(f"{p}/calls/by-ref/{{ref}}/hangup", hangup),
        ]

    def _event(self, call: CallView, status: str, event_id: str, *, final: bool) -> dict[str, Any]:
        over = final and call.ended_wall is not None
        return {
            "ref": call.attempt_id,
            "event_id": event_id,
            "call": {
                "id": call.call_id,
                "state": STATES.get(status, status),
                "answered_at": iso_utc(call.answered_wall),
                "ended_at": iso_utc(call.ended_wall) if over else None,
                "duration": call.duration_seconds if over else 0,
                "billed": call.billsec() if over else 0,
                "q850": call.cause_code if over else None,
                "sip": call.sip_code if over else None,
            },
        }

    def render_event(
        self, call: CallView, status: str, sequence: int, final: bool, event_id: str
    ) -> Callback | None:
        payload = self._event(call, status, event_id, final=final)
        if self._form:
            flat = {"ref": payload["ref"], "event_id": event_id}
            flat.update({f"call.{k}": "" if v is None else str(v) for k, v in payload["call"].items()})
            body = urlencode(flat).encode()
            content_type = "application/x-www-form-urlencoded"
        else:
            body = orjson.dumps(payload)
            content_type = "application/json"
        url = call.callback_url
        return url, body, {"Content-Type": content_type, "X-Signature": self.sign(url, body)}


def _invalid(body: Any) -> tuple[str, str] | None:
    """(code, message) of the first problem with a start body, or None."""
    if not isinstance(body, dict):
        return "bad_request", "body must be a JSON object or a form"
    ref = body.get("ref")
    if not isinstance(ref, str) or not 0 < len(ref) <= MAX_ATTEMPT_ID_LENGTH:
        return "bad_request", f"ref must be a string of 1..{MAX_ATTEMPT_ID_LENGTH}"
    to = body.get("to")
    if not isinstance(to, str) or not E164.match(to):
        return "bad_number", "to must be an E.164 number"
    timeout = body.get("ring_timeout")
    if isinstance(timeout, str) and timeout.isdigit():
        timeout = int(timeout)
    if type(timeout) is not int or not 1 <= timeout <= 600:
        return "bad_request", "ring_timeout must be an integer within 1..600"
    body["ring_timeout"] = timeout
    url = body.get("notify_url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return "bad_request", "notify_url must be an http(s) URL"
    for key in ("from", "digits", "tag"):
        if body.get(key) is not None and not isinstance(body[key], str):
            return "bad_request", f"{key} must be a string"
    return None


register("http", HttpDialect)
