"""Adapter for the built-in provider simulator's dialect (`dialer simulate-provider`)."""

from __future__ import annotations

import datetime as dt
import hmac
import time
from collections.abc import Mapping
from hashlib import sha256
from typing import TYPE_CHECKING, Any

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
from scheduler.outcomes import Outcome, from_q850, from_sip

if TYPE_CHECKING:
    from dialer.providers import ProviderAccount
    from dialer.settings import Settings

_FINAL = {"completed", "busy", "no-answer", "failed", "canceled"}


def _ts(value: Any) -> dt.datetime | None:
    if not value:
        return None
    if not isinstance(value, str):
        raise ValueError("timestamp must be an ISO 8601 string")
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def outcome_of(status: str, answered: bool, cause: int | None, sip: int | None) -> Outcome:
    if status == "completed":
        return Outcome.ANSWERED_HUMAN if answered else Outcome.NO_ANSWER
    if status == "busy":
        return Outcome.BUSY
    if status == "no-answer":
        return Outcome.NO_ANSWER
    if status == "canceled":
        return Outcome.CANCELED
    # "failed": the Q.850 cause is the most specific signal, then the SIP code.
    if cause is not None:
        return from_q850(cause, answered)
    if sip is not None:
        return from_sip(sip)
    return Outcome.UNKNOWN


def event_from_record(data: Mapping[str, Any]) -> CallEvent:
    """Normalize a callback body or a lookup record. Raises ValueError/KeyError/TypeError on bad input."""
    attempt_id = data["attempt_id"]
    status = data["status"]
    if not isinstance(attempt_id, str) or not isinstance(status, str):
        raise TypeError("attempt_id and status must be strings")
    call_id = data.get("call_id")
    cause = data.get("cause_code")
    sip = data.get("sip_code")
    if cause is not None and not isinstance(cause, int):
        raise TypeError("cause_code must be an integer")
    if sip is not None and not isinstance(sip, int):
        raise TypeError("sip_code must be an integer")
    answered_at = _ts(data.get("answered_at"))
    answered = bool(data.get("answered")) or answered_at is not None
    if status in _FINAL:
        duration = float(data.get("duration_seconds") or 0.0)
        billsec = int(data.get("billsec") or 0)
        if duration < 0 or billsec < 0:
            raise ValueError("durations must be >= 0")
        return CallEvent(
            attempt_id=attempt_id,
            call_id=call_id if isinstance(call_id, str) else None,
            kind="ended",
            outcome=outcome_of(status, answered, cause, sip),
            answered_at=answered_at,
            ended_at=_ts(data.get("ended_at")),
            duration_seconds=duration,
            billsec=billsec,
            raw_status=status,
            raw_cause=None if cause is None else str(cause),
            sip_code=sip,
            dtmf=data["digits"][:200] if isinstance(data.get("digits"), str) and data["digits"] else None,
        )
    if status == "in-progress" or (answered and status not in ("queued", "ringing")):
        return CallEvent(
            attempt_id=attempt_id,
            call_id=call_id,
            kind="answered",
            answered_at=answered_at,
            raw_status=status,
        )
    if status in ("queued", "ringing"):
        return CallEvent(attempt_id=attempt_id, call_id=call_id, kind="ringing", raw_status=status)
    raise ValueError(f"unknown call status {status!r}")


class SimulatedProvider(HttpAdapter):
    def __init__(
        self,
        base_url: str,
        api_key: str,
        callback_secret: str,
        *,
        timeout_seconds: float = 10.0,
        max_connections: int = 200,
        max_calls_per_second: float = 0.0,
        name: str = "simulator",
    ) -> None:
        self.name = name
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._secret = callback_secret.encode()
        self._init_http(
            timeout_seconds=timeout_seconds,
            max_connections=max_connections,
            max_calls_per_second=max_calls_per_second,
        )
        self._latency_start = metrics.PROVIDER_REQUEST_SECONDS.labels(self.name, "start_call")
        self._latency_lookup = metrics.PROVIDER_REQUEST_SECONDS.labels(self.name, "lookup")
        self._latency_hangup = metrics.PROVIDER_REQUEST_SECONDS.labels(self.name, "hangup")

    async def start_call(self, request: StartRequest) -> Accepted:
        body = orjson.dumps(
            {
                "attempt_id": request.attempt_id,
                "to": request.phone,
                "from": request.caller_id,
                "ring_timeout_seconds": request.ring_timeout_seconds,
                "callback_url": request.callback_url,
                "dtmf": request.dtmf,
                "metadata": {"campaign": request.campaign},
            }
        )
        started = time.perf_counter()
        try:
            async with self._client().post(
                f"{self._base}/v1/calls", data=body, headers=self._headers
            ) as resp:
                payload = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_failure(exc) from None
        finally:
            self._latency_start.observe(time.perf_counter() - started)
        if status in (200, 201):
            try:
                call_id = orjson.loads(payload)["call_id"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                self._error("invalid_response")
                raise StartError("ambiguous", "provider accepted the call with an unreadable body") from None
            return Accepted(call_id=str(call_id))
        code = _error_code(payload)
        if status == 429:
            if _not_processed(payload):
                self._error("rate_limited")
                raise StartError("rate_limited", "provider rate limit (request not processed)")
            self._error("ambiguous")
            raise StartError("ambiguous", "429 without a not-processed guarantee")
        if status >= 500:
            self._error("ambiguous")
            raise StartError("ambiguous", f"provider answered {status}")
        self._error("rejected")
        if status in (401, 403):
            raise StartError(
                "rejected",
                f"provider refused our credentials ({status})",
                outcome=Outcome.ACCOUNT_ERROR,
                raw_status=str(status),
            )
        if code == "invalid_number":
            raise StartError(
                "rejected",
                "provider says the number is invalid",
                outcome=Outcome.INVALID_NUMBER,
                raw_status=code,
            )
        raise StartError(
            "rejected",
            f"provider answered {status} ({code or 'no code'})",
            outcome=Outcome.PROVIDER_ERROR,
            raw_status=str(status),
        )

    async def lookup(self, request: LookupRequest) -> CallEvent | None:
        attempt_id = request.attempt_id
        started = time.perf_counter()
        try:
            async with self._client().get(
                f"{self._base}/v1/calls/by-attempt/{attempt_id}", headers=self._headers
            ) as resp:
                payload = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._error("lookup_failed")
            raise ProviderUnavailable(f"lookup failed: {type(exc).__name__}") from None
        finally:
            self._latency_lookup.observe(time.perf_counter() - started)
        if status == 404:
            return None
        if status != 200:
            self._error("lookup_failed")
            raise ProviderUnavailable(f"lookup answered {status}")
        try:
            return event_from_record(orjson.loads(payload))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            self._error("invalid_response")
            raise ProviderUnavailable(f"unreadable lookup: {exc}") from None

    async def hangup(self, attempt_id: str, call_id: str | None) -> None:
        started = time.perf_counter()
        try:
            async with self._client().post(
                f"{self._base}/v1/calls/by-attempt/{attempt_id}/cancel", headers=self._headers
            ) as resp:
                await resp.read()
                status = resp.status
            if status == 409:
                # Answered (cancel ends only ringing calls) or already over: end a talking call.
                async with self._client().post(
                    f"{self._base}/v1/calls/by-attempt/{attempt_id}/hangup", headers=self._headers
                ) as resp:
                    await resp.read()
                    # 404 from a simulator without the route, 409: over. The outcome we record stands.
                    status = 200 if resp.status in (404, 409) else resp.status
            if status not in (200, 404):
                self._error("hangup_failed")
        except (TimeoutError, aiohttp.ClientError):
            self._error("hangup_failed")
        finally:
            self._latency_hangup.observe(time.perf_counter() - started)

    def parse_callback(self, request: CallbackRequest) -> CallEvent:
        body = request.body
        signature = request.headers.get("X-Simulator-Signature", "")
        expected = hmac.new(self._secret, body, sha256).hexdigest()
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            raise CallbackError("bad_signature", "callback signature does not match")
        try:
            data = orjson.loads(body)
            if not isinstance(data, dict):
                raise TypeError("callback body must be a JSON object")
            return event_from_record(data)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CallbackError("malformed", f"malformed callback: {exc}") from None

    async def poll_events(self) -> list[CallEvent]:
        return []


def _error_code(payload: bytes) -> str | None:
    try:
        data = orjson.loads(payload)
        code = data["error"]["code"]
        return str(code)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def _not_processed(payload: bytes) -> bool:
    try:
        return orjson.loads(payload)["error"].get("processed") is False
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return False


def from_account(account: ProviderAccount, settings: Settings) -> SimulatedProvider:
    return SimulatedProvider(
        account.base_url,
        account.secret("api_key"),
        account.secret("callback_secret"),
        timeout_seconds=account.timeout_seconds,
        max_connections=settings.max_inflight_requests,
        max_calls_per_second=account.max_calls_per_second,
        name=account.name,
    )
