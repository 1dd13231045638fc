"""The simulator's own dialect: JSON under /v1/calls, a bearer key, HMAC-signed JSON callbacks.

What dialer/providers/simulated.py speaks; the reference for every other dialect.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import time
from collections.abc import Mapping
from typing import Any

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
    iso_utc,
    register,
)
from dialer.simulator import SIGNATURE_HEADER, TIMESTAMP_HEADER, SimulatorConfig, SimulatorState, sign

__all__ = ["BadRequest", "NativeDialect", "parse_start"]


class BadRequest(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": {"code": code, "message": message, **extra}}),
        content_type="application/json",
    )


def _json(status: int, payload: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


def parse_start(raw: bytes) -> StartSpec:
    """A native start body as a StartSpec; BadRequest names the first problem."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("invalid_json", "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("invalid_json", "body must be a JSON object")
    for name in ("attempt_id", "to", "ring_timeout_seconds", "callback_url"):
        if data.get(name) is None:
            raise BadRequest("missing_field", f"{name} is required")
    attempt_id = data["attempt_id"]
    if not isinstance(attempt_id, str) or not 0 < len(attempt_id) <= MAX_ATTEMPT_ID_LENGTH:
        raise BadRequest("invalid_field", f"attempt_id must be a string of 1..{MAX_ATTEMPT_ID_LENGTH}")
    to = data["to"]
    if not isinstance(to, str) or not E164.match(to):
        raise BadRequest("invalid_number", "to must be an E.164 number such as +15551234567")
    ring_timeout = data["ring_timeout_seconds"]
    # bool is an int subclass; true must not pass as a one-second timeout.
    if type(ring_timeout) is not int or not 1 <= ring_timeout <= 600:
        raise BadRequest("invalid_field", "ring_timeout_seconds must be an integer within 1..600")
    callback_url = data["callback_url"]
    if not isinstance(callback_url, str) or not callback_url.startswith(("http://", "https://")):
        raise BadRequest("invalid_field", "callback_url must be an http(s) URL")
    for name in ("from", "dtmf"):
        if data.get(name) is not None and not isinstance(data[name], str):
            raise BadRequest("invalid_field", f"{name} must be a string or null")
    metadata = data.get("metadata")
    campaign: str | None = None
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise BadRequest("invalid_field", "metadata must be an object")
        campaign = metadata.get("campaign")
        if campaign is not None and not isinstance(campaign, str):
            raise BadRequest("invalid_field", "metadata.campaign must be a string")
    return StartSpec(
        attempt_id, to, data.get("from"), ring_timeout, callback_url, campaign, data.get("dtmf"), NO_EXTRA
    )


class NativeDialect:
    name = "native"
    start_statuses = DEFAULT_START_STATUSES

    def __init__(self, options: Mapping[str, Any], config: SimulatorConfig) -> None:
        if options:
            raise ValueError(
                f"the native dialect takes no options (it uses api_key and callback_secret), got {sorted(options)}"
            )
        self._config = config

    def routes(self, state: SimulatorState) -> list[web.RouteDef]:
        return [
            web.post("/v1/calls", functools.partial(self.start, state)),
            web.get("/v1/calls/by-attempt/{attempt_id}", functools.partial(self.lookup, state)),
            web.post("/v1/calls/by-attempt/{attempt_id}/cancel", functools.partial(self.cancel, state)),
            web.post("/v1/calls/by-attempt/{attempt_id}/hangup", functools.partial(self.hangup, state)),
        ]

    def _authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and hmac.compare_digest(
            auth[7:].encode(), self._config.api_key.encode()
        )

    async def start(self, state: SimulatorState, request: web.Request) -> web.Response:
        if not self._authorized(request):
            state.refuse("unauthorized", 401, dialect=self)
            return _error(401, "unauthorized", "missing or wrong bearer token")
        raw = await request.read()
        try:
            spec = parse_start(raw)
        except BadRequest as exc:
            state.refuse("invalid", 400, dialect=self)
            return _error(400, exc.code, exc.message)
        admission = state.admit(spec, dialect=self)
        call = admission.call
        if call is None:
            return self._refusal(state, spec, admission)
        if admission.slow_seconds:
            await asyncio.sleep(admission.slow_seconds)
        if admission.after_create_error:
            return _error(admission.status, "internal_error", "injected failure after the call was created")
        return _json(
            admission.status, {"call_id": call.call_id, "attempt_id": spec.attempt_id, "status": "queued"}
        )

    def _refusal(self, state: SimulatorState, spec: StartSpec, admission: Admission) -> web.Response:
        status = admission.status
        if admission.reason in ("max_cps", "rate_limited"):
            return _error(status, "20429", "Too Many Requests", processed=False)
        if admission.reason == "error_5xx":
            return _error(status, "service_unavailable", "injected failure before the call was created")
        if state.find(spec.attempt_id, dialect=self) is None:
            return _error(status, "attempt_conflict", "attempt_id already used through another dialect")
        return _error(status, "attempt_conflict", "attempt_id already used for a different number")

    async def lookup(self, state: SimulatorState, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "unauthorized", "missing or wrong bearer token")
        call = state.find(request.match_info["attempt_id"], dialect=self)
        if call is None:
            return _error(404, "not_found", "no start request was received for this attempt_id")
        return _json(200, call.record())

    async def cancel(self, state: SimulatorState, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "unauthorized", "missing or wrong bearer token")
        call = state.find(request.match_info["attempt_id"], dialect=self)
        if call is None:
            return _error(404, "not_found", "no start request was received for this attempt_id")
        if state.cancel_call(call):
            return _json(200, call.record())
        return _error(409, "not_cancelable", "only queued or ringing calls can be canceled")

    async def hangup(self, state: SimulatorState, request: web.Request) -> web.Response:
        """End a live call, answered or not (what a dialer does to an abandoned call)."""
        if not self._authorized(request):
            return _error(401, "unauthorized", "missing or wrong bearer token")
        call = state.find(request.match_info["attempt_id"], dialect=self)
        if call is None:
            return _error(404, "not_found", "no start request was received for this attempt_id")
        if state.hangup_call(call):
            return _json(200, call.record())
        return _error(409, "not_live", "the call is over")

    def render_event(
        self, call: CallView, status: str, sequence: int, final: bool, event_id: str
    ) -> Callback | None:
        answered_wall = call.answered_wall
        payload = {
            "event_id": event_id,
            "attempt_id": call.attempt_id,
            "call_id": call.call_id,
            "status": status,
            "answered": answered_wall is not None,
            "answered_at": iso_utc(answered_wall),
            "started_at": iso_utc(call.started_wall),
            "ended_at": iso_utc(call.ended_wall) if final else None,
            "duration_seconds": call.duration_seconds if final else 0.0,
            "billsec": call.billsec() if final else 0,
            "cause_code": call.cause_code if final else None,
            "sip_code": call.sip_code if final else None,
            "sequence": sequence,
        }
        body = orjson.dumps(payload)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._config.callback_secret, body),
            TIMESTAMP_HEADER: str(int(time.time())),
        }
        return call.callback_url, body, headers


register("native", NativeDialect)
