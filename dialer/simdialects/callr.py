"""CALLR's JSON-RPC 2.0 API (v1.1) in front of the simulator's calls; what dialer/providers/callr.py speaks.

`POST /json-rpc/v1.1/` with HTTP Basic login:password serves `calls.realtime` (alias
`dialr/call.realtime`), `calls.broadcast_1`, `calls.hangup`, `cdr.get`, `webhooks.subscribe` and
`webhooks.unsubscribe`. Webhooks go where `webhooks.subscribe` (or the `webhook_url` option) says, as
CALLR sends them: a `Webhook.Event` around a CDR.Out, `call.outbound_start` when a call starts ringing
(with intermediate events on) and `call.outbound_hangup` when it ends, signed in `X-CALLR-HmacSignature`
(base64 HMAC of the body under the subscription's `hmac_secret`, SHA256 unless `hmac_algo` says otherwise).

Options: `login`, `password` (required); `app` (when set, calls.realtime must name this REALTIME10 app);
`webhook_url`, `hmac_secret`, `hmac_algo` (a subscription to both call events made at start-up).

Two liberties, both for the books: the attempt id is the UUID that `cdr_field` carries (as `uuid.hex`),
and a second start with the same cdr_field is answered with the first call rather than dialed again as
CALLR would, and counted as a duplicate, so tests see any blind redial. CALLR's numeric error codes are
not in its published material: errors here use the JSON-RPC reserved codes and CALLR-style messages.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import itertools
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from aiohttp import web

from dialer.simdialects import (
    DEFAULT_START_STATUSES,
    E164,
    Admission,
    Callback,
    CallView,
    StartSpec,
    register,
)
from dialer.simulator import SimulatorConfig, SimulatorState

__all__ = ["CallrDialect", "callid_of", "sign"]

PATH: Final = "/json-rpc/v1.1/"
START_EVENT: Final = "call.outbound_start"
HANGUP_EVENT: Final = "call.outbound_hangup"
TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"
ALGOS: Final[Mapping[str, Callable[[], Any]]] = {
    "MD5": hashlib.md5,
    "SHA1": hashlib.sha1,
    "SHA256": hashlib.sha256,
    "SHA512": hashlib.sha512,
}
START_METHODS: Final = frozenset({"calls.realtime", "dialr/call.realtime", "calls.broadcast_1"})

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
AUTH_FAILED: Final = -32001
RATE_LIMITED: Final = -32029
_CDR_FIELD = re.compile(r"^[0-9A-Za-z]{1,32}$")
_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")


class RpcError(Exception):
    def __init__(self, code: int, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def sign(secret: str, body: bytes, algo: str = "SHA256") -> str:
    """X-CALLR-HmacSignature: base64 of the HMAC of the JSON payload."""
    return base64.b64encode(hmac.new(secret.encode(), body, ALGOS[algo]).digest()).decode()


def callid_of(call: CallView) -> int:
    """CALLR call ids are 64-bit unsigned integers; the simulator's are "CA" + 32 hex digits."""
    return int(call.call_id[2:18], 16)


def _time(wall: float | None) -> str | None:
    return None if wall is None else datetime.fromtimestamp(wall, UTC).strftime(TIME_FORMAT)


def _parse_time(value: Any, name: str) -> float:
    if not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, f"INVALID_DATETIME: {name} must be 'YYYY-MM-DD HH:MM:SS'")
    try:
        return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise RpcError(INVALID_PARAMS, f"INVALID_DATETIME: {name} must be 'YYYY-MM-DD HH:MM:SS'") from None


# (dialstatus, hangupsource) by the simulator's final status; "failed" is split by its Q.850 cause.
_FINAL: Final[Mapping[str, tuple[str, str]]] = {
    "completed": ("ANSWER", "CALLEE"),
    "busy": ("BUSY", "CALLEE"),
    "no-answer": ("NOANSWER", "GATEWAY"),
    "canceled": ("CANCEL", "CALLER"),
}


def cdr_out(call: CallView, final: bool) -> dict[str, Any]:
    """The call as a CDR.Out (seed field set); a call still ringing has no dialstatus nor hangup yet."""
    extra = call.extra
    dialstatus, source = "", ""
    if final:
        if call.status == "failed":
            dialstatus, source = ("CHANUNAVAIL" if call.cause_code == 1 else "CONGESTION"), "GATEWAY"
        else:
            dialstatus, source = _FINAL.get(call.status, ("CONGESTION", "GATEWAY"))
    talk = call.billsec() if final else 0
    cli = call.from_ or ""
    return {
        "answer": _time(call.answered_wall) if final else None,
        "billing_customer_cost_label": "",
        "billing_customer_credit_eur": "0.00",
        "billing_customer_debit_eur": "0.00",
        "callid": callid_of(call),
        "callid_in": 0,
        "cli_name": "",
        "cli_number": "" if cli == "BLOCKED" else cli,
        "cli_pres": "prohib_passed_screen" if cli == "BLOCKED" else "allowed_passed_screen",
        "customer_field": extra.get("cdr_field", ""),
        "dialstatus": dialstatus,
        "duration": round(call.duration_seconds) if final else 0,
        "duration_answered": talk,
        "duration_billed": talk,
        "hangup": _time(call.ended_wall) if final else None,
        "hangupcause": (call.cause_code or 0) if final else 0,
        "hangupsource": source,
        "number": call.to,
        "number_country_code": "",
        "number_type": "",
        "package_name": "REALTIME10" if extra.get("app") else "",
        "scenario_hash": extra.get("app") or "",
        "scenario_name": "",
        "start": _time(call.started_wall),
    }


@dataclass(frozen=True, slots=True)
class _Hook:
    hash: str
    type: str
    endpoint: str
    secret: str | None
    algo: str
    created_at: str

    def record(self) -> dict[str, Any]:
        options: dict[str, Any] = {"format": "JSON", "hmac_algo": self.algo}
        return {
            "created_at": self.created_at,
            "endpoint": self.endpoint,
            "hash": self.hash,
            "options": options,
            "status": "ENABLED",
            "type": self.type,
            "updated_at": self.created_at,
        }


def _webhook_options(raw: Any) -> tuple[str | None, str]:
    if raw is None:
        return None, "SHA256"
    if not isinstance(raw, dict):
        raise RpcError(INVALID_PARAMS, "INVALID_OPTIONS: options must be a Webhook.Options object")
    secret = raw.get("hmac_secret")
    algo = raw.get("hmac_algo") or "SHA256"
    if secret is not None and not (isinstance(secret, str) and 8 <= len(secret) <= 1024):
        raise RpcError(INVALID_PARAMS, "INVALID_HMAC_SECRET: hmac_secret length must be 8..1024")
    if algo not in ALGOS:
        raise RpcError(INVALID_PARAMS, f"INVALID_HMAC_ALGO: one of {sorted(ALGOS)}")
    return secret, algo


class CallrDialect:
    name = "callr"
    # JSON-RPC answers its errors in 200; a 429 and a 409 keep rate limits and conflicts visible in the log.
    start_statuses: Mapping[str, int] = {
        **DEFAULT_START_STATUSES,
        "created": 200,
        "duplicate": 200,
        "conflict": 409,
        "after_create_error": 500,
        "error_5xx": 503,
    }

    def __init__(self, options: Mapping[str, Any], config: SimulatorConfig) -> None:
        known = {"login", "password", "app", "webhook_url", "hmac_secret", "hmac_algo"}
        unknown = sorted(set(options) - known)
        if unknown or not options.get("login") or not options.get("password"):
            raise ValueError(
                f"the callr dialect needs login and password and takes {sorted(known)}; got {unknown}"
            )
        credentials = f"{options['login']}:{options['password']}".encode()
        self._auth = f"Basic {base64.b64encode(credentials).decode()}"
        self._app: str | None = options.get("app")
        self._config = config
        self._hooks: dict[str, _Hook] = {}
        self._hook_ids = itertools.count(1)
        # callid -> simulator call id (calls.hangup names calls by callid), and number -> attempt ids
        # (cdr.get filters by number).
        self._callids: dict[int, str] = {}
        self._by_number: dict[str, list[str]] = {}
        self._anonymous = itertools.count(1)
        url = options.get("webhook_url")
        if url is not None:
            secret, algo = _webhook_options(
                {"hmac_secret": options.get("hmac_secret"), "hmac_algo": options.get("hmac_algo")}
            )
            for kind in (START_EVENT, HANGUP_EVENT):
                self._subscribe(kind, str(url), secret, algo)

    def routes(self, state: SimulatorState) -> list[web.RouteDef]:
        handler = functools.partial(self.handle, state)
        return [web.post(PATH, handler), web.post(PATH.rstrip("/"), handler)]

    def _authorized(self, request: web.Request) -> bool:
        return hmac.compare_digest(request.headers.get("Authorization", "").encode(), self._auth.encode())

    async def handle(self, state: SimulatorState, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            envelope = orjson.loads(raw)
        except orjson.JSONDecodeError:
            envelope = None
        rpc_id = envelope.get("id") if isinstance(envelope, dict) else None
        method = envelope.get("method") if isinstance(envelope, dict) else None
        if not self._authorized(request):
            if method in START_METHODS:
                state.refuse("unauthorized", 401, dialect=self)
            return _error(rpc_id, RpcError(AUTH_FAILED, "AUTHENTICATION_FAILED", 401))
        try:
            if envelope is None:
                raise RpcError(PARSE_ERROR, "PARSE_ERROR: body is not JSON")
            params = envelope.get("params", [])
            if (
                envelope.get("jsonrpc") != "2.0"
                or not isinstance(method, str)
                or not isinstance(params, list)
            ):
                raise RpcError(INVALID_REQUEST, "INVALID_REQUEST: not a JSON-RPC 2.0 request")
            if method in START_METHODS:
                return await self._start(state, rpc_id, method, params)
            if method == "calls.hangup":
                return _result(rpc_id, self._hangup(state, params))
            if method == "cdr.get":
                return _result(rpc_id, self._cdr_get(state, params))
            if method == "webhooks.subscribe":
                return _result(rpc_id, self._webhooks_subscribe(params))
            if method == "webhooks.unsubscribe":
                return _result(rpc_id, self._webhooks_unsubscribe(params))
            raise RpcError(METHOD_NOT_FOUND, f"METHOD_NOT_FOUND: {method}")
        except RpcError as exc:
            if method in START_METHODS:
                state.refuse("invalid", exc.status, dialect=self)
            return _error(rpc_id, exc)

    # ------------------------------------------------------------------ start

    def _spec(self, method: str, params: list[Any]) -> StartSpec:
        realtime = method != "calls.broadcast_1"
        if len(params) != 3:
            raise RpcError(INVALID_PARAMS, f"INVALID_PARAMS: {method} takes 3 parameters")
        if realtime:
            app, target, options = params
            if not isinstance(app, str) or not app or (self._app is not None and app != self._app):
                raise RpcError(INVALID_PARAMS, "APP_NOT_FOUND: no REALTIME10 app with this hash")
        else:
            target, messages, options = params
            app = None
            if not isinstance(messages, list) or not messages:
                raise RpcError(INVALID_PARAMS, "INVALID_MESSAGES: messages must be a non-empty list")
            for media in messages:
                if isinstance(media, bool) or not isinstance(media, int | str) or media == "":
                    raise RpcError(INVALID_PARAMS, "INVALID_MESSAGES: media ids or 'TTS|voice|text'")
        if not isinstance(target, dict):
            raise RpcError(INVALID_PARAMS, "INVALID_TARGET: target must be a Target object")
        number, timeout = target.get("number"), target.get("timeout")
        if not isinstance(number, str) or not E164.match(number):
            raise RpcError(INVALID_PARAMS, "INVALID_PHONE_NUMBER: target.number must be E.164")
        if type(timeout) is not int or not 5 <= timeout <= 300:
            raise RpcError(INVALID_PARAMS, "INVALID_DIAL_TIMEOUT: timeout must be within 5..300 seconds")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise RpcError(INVALID_PARAMS, "INVALID_OPTIONS: options must be an object")
        cdr_field = options.get("cdr_field") or ""
        if cdr_field and not (isinstance(cdr_field, str) and _CDR_FIELD.match(cdr_field)):
            raise RpcError(INVALID_PARAMS, "INVALID_CDR_FIELD: at most 32 alphanumeric characters")
        cli = options.get("cli")
        if cli is not None and not (isinstance(cli, str) and (cli == "BLOCKED" or E164.match(cli))):
            raise RpcError(INVALID_PARAMS, "INVALID_CLI: 'BLOCKED' or an authorized E.164 number")
        loop = options.get("loop")
        if not realtime and loop is not None and (type(loop) is not int or not 1 <= loop <= 10):
            raise RpcError(INVALID_PARAMS, "INVALID_LOOP: loop must be within 1..10")
        if _HEX32.match(cdr_field):
            attempt_id = str(uuid.UUID(hex=cdr_field))
        else:
            # CALLR needs no cdr_field; the simulator keys calls by one, so it invents one per request.
            attempt_id = f"callr-{cdr_field}-{next(self._anonymous)}"
        extra = {"method": method, "app": app, "cdr_field": cdr_field, "params": params}
        return StartSpec(attempt_id, number, cli, timeout, "", None, None, extra)

    async def _start(
        self, state: SimulatorState, rpc_id: Any, method: str, params: list[Any]
    ) -> web.Response:
        spec = self._spec(method, params)
        admission = state.admit(spec, dialect=self)
        call = admission.call
        if call is None:
            return self._refusal(rpc_id, admission)
        callid = callid_of(call)
        if admission.outcome == "created":
            self._callids[callid] = call.call_id
            self._by_number.setdefault(call.to, []).append(call.attempt_id)
        if admission.slow_seconds:
            await asyncio.sleep(admission.slow_seconds)
        if admission.after_create_error:
            return web.Response(status=admission.status, text="Internal Server Error")
        # calls.realtime answers the call id; broadcast_1 a request id (the call id comes with the CDR).
        result: Any = callid if method != "calls.broadcast_1" else call.call_id[2:]
        return _result(rpc_id, result, admission.status)

    def _refusal(self, rpc_id: Any, admission: Admission) -> web.Response:
        if admission.reason in ("max_cps", "rate_limited"):
            error = RpcError(RATE_LIMITED, "RATE_LIMIT_EXCEEDED: too many calls, the call was not started")
            return _error(rpc_id, error, admission.status)
        if admission.reason == "error_5xx":
            return web.Response(status=admission.status, text="Service Unavailable")
        error = RpcError(INVALID_PARAMS, "CDR_FIELD_CONFLICT: this cdr_field belongs to another call")
        return _error(rpc_id, error, admission.status)

    # ------------------------------------------------------------------ other methods

    def _hangup(self, state: SimulatorState, params: list[Any]) -> bool:
        if len(params) != 2 or type(params[0]) is not int or not isinstance(params[1], dict):
            raise RpcError(INVALID_PARAMS, "INVALID_PARAMS: calls.hangup takes [int callid, object options]")
        call_id = self._callids.get(params[0])
        call = None if call_id is None else state.find_by_call_id(call_id, dialect=self)
        if call is None:
            raise RpcError(INVALID_PARAMS, "CALL_NOT_FOUND: no call with this callid")
        # False: already over, or answered (the simulator cannot cut a call in conversation).
        return state.cancel_call(call)

    def _cdr_get(self, state: SimulatorState, params: list[Any]) -> list[dict[str, Any]]:
        if len(params) != 5:
            raise RpcError(INVALID_PARAMS, "INVALID_PARAMS: cdr.get takes [type, from, to, app, number]")
        kind, since, until, app, number = params
        if kind not in ("IN", "OUT"):
            raise RpcError(INVALID_PARAMS, "INVALID_CDR_TYPE: type must be IN or OUT")
        lo, hi = _parse_time(since, "from"), _parse_time(until, "to")
        if app is not None and not isinstance(app, str):
            raise RpcError(INVALID_PARAMS, "INVALID_APP: app must be a hash or null")
        if number is not None and not isinstance(number, str):
            raise RpcError(INVALID_PARAMS, "INVALID_NUMBER_FILTER: number must be a string or null")
        if kind == "IN":
            return []
        if number is None:
            attempts = [a for ids in self._by_number.values() for a in ids]
        else:
            attempts = self._by_number.get(number, [])
        cdrs = []
        for attempt_id in attempts:
            call = state.find(attempt_id, dialect=self)
            # A CDR is written when the call hangs up; `to` is inclusive, to the second.
            if call is None or call.ended_wall is None or not lo <= int(call.started_wall) <= hi:
                continue
            if app is not None and call.extra.get("app") != app:
                continue
            cdrs.append(cdr_out(call, final=True))
        return cdrs

    def _subscribe(self, kind: str, endpoint: str, secret: str | None, algo: str) -> _Hook:
        hook = _Hook(
            f"H{next(self._hook_ids):07d}",
            kind,
            endpoint,
            secret,
            algo,
            datetime.now(UTC).strftime(TIME_FORMAT + ".%f")[:-3],
        )
        self._hooks[kind] = hook
        return hook

    def _webhooks_subscribe(self, params: list[Any]) -> dict[str, Any]:
        if len(params) not in (2, 3):
            raise RpcError(
                INVALID_PARAMS, "INVALID_PARAMS: webhooks.subscribe takes [type, endpoint, options]"
            )
        kind, endpoint = params[0], params[1]
        if not isinstance(kind, str) or not kind:
            raise RpcError(INVALID_PARAMS, "INVALID_TYPE: type must be a webhook type")
        if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
            raise RpcError(INVALID_PARAMS, "INVALID_ENDPOINT: endpoint must be an HTTP(S) URL")
        secret, algo = _webhook_options(params[2] if len(params) == 3 else None)
        return self._subscribe(kind, endpoint, secret, algo).record()

    def _webhooks_unsubscribe(self, params: list[Any]) -> bool:
        if len(params) != 1 or not isinstance(params[0], str):
            raise RpcError(INVALID_PARAMS, "INVALID_PARAMS: webhooks.unsubscribe takes [hash]")
        for kind, hook in list(self._hooks.items()):
            if hook.hash == params[0]:
                del self._hooks[kind]
                return True
        raise RpcError(INVALID_PARAMS, "WEBHOOK_NOT_FOUND: no webhook with this hash")

    # ------------------------------------------------------------------ webhooks

    def render_event(
        self, call: CallView, status: str, sequence: int, final: bool, event_id: str
    ) -> Callback | None:
        # CALLR has no "answered" webhook: a call starts, then hangs up.
        kind = HANGUP_EVENT if final else START_EVENT if sequence == 1 else None
        hook = None if kind is None else self._hooks.get(kind)
        if kind is None or hook is None:
            return None
        now = datetime.now(UTC)
        body = orjson.dumps(
            {
                "data": cdr_out(call, final),
                "event_at": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
                "event_id": event_id,
                "hook_hash": hook.hash,
                "try": 0,
                "type": kind,
            }
        )
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "CALLR/API (simulator)",
            "X-CALLR-EventId": event_id,
        }
        if hook.secret is not None:
            headers["X-CALLR-HmacSignature"] = sign(hook.secret, body, hook.algo)
        return hook.endpoint, body, headers


def _result(rpc_id: Any, result: Any, status: int = 200) -> web.Response:
    body = orjson.dumps({"id": rpc_id, "jsonrpc": "2.0", "result": result})
    return web.Response(status=status, body=body, content_type="application/json")


def _error(rpc_id: Any, error: RpcError, status: int | None = None) -> web.Response:
    body = orjson.dumps(
        {"error": {"code": error.code, "message": error.message}, "id": rpc_id, "jsonrpc": "2.0"}
    )
    return web.Response(
        status=error.status if status is None else status, body=body, content_type="application/json"
    )


register("callr", CallrDialect)
