"""The provider edge: what every telephony adapter implements."""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256
from typing import Literal, Protocol

import aiohttp
from aiolimiter import AsyncLimiter

import metrics
from scheduler.outcomes import Outcome


@dataclass(frozen=True, slots=True)
class StartRequest:
    attempt_id: str  # idempotency key: the provider may see it twice, it must dial once
    phone: str
    caller_id: str | None
    dtmf: str | None
    ring_timeout_seconds: int
    callback_url: str
    campaign: str


@dataclass(frozen=True, slots=True)
class LookupRequest:
    """What reconciliation knows of an attempt: providers look calls up by different keys."""

    attempt_id: str
    call_id: str | None  # None when the start request's answer never arrived
    phone: str
    claimed_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Accepted:
    call_id: str


StartErrorKind = Literal["not_sent", "rejected", "rate_limited", "ambiguous"]


class StartError(Exception):
    """A start request that did not produce a call id.

    not_sent / rate_limited: provably never reached the network or was refused unprocessed —
    safe to requeue without consuming an attempt. rejected: the provider refused the call for a
    reason that says something about the number or the account (`outcome`). ambiguous: the
    request may have been processed (timeout, 5xx after sending): reconcile, never redial blind.
    """

    def __init__(
        self,
        kind: StartErrorKind,
        message: str,
        *,
        outcome: Outcome | None = None,
        raw_status: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: StartErrorKind = kind
        self.outcome = outcome
        self.raw_status = raw_status


class ProviderUnavailable(Exception):
    """A lookup could not be answered now; try again later."""


class CallbackError(Exception):
    def __init__(self, reason: Literal["bad_signature", "malformed"], message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CallbackRequest:
    """A provider callback as received, for the adapter to authenticate and parse."""

    url: str  # the public URL the provider called (signatures such as Twilio's cover it)
    headers: Mapping[str, str]
    body: bytes
    query: Mapping[str, str]
    # Our own per-attempt token (`?attempt=…&token=…` on every callback URL we hand out), already
    # checked by the HTTP layer: adapters for providers that sign nothing require it.
    token_attempt_id: str | None


@dataclass(frozen=True, slots=True)
class CallEvent:
    """A call's state as the provider reports it, by callback or lookup, already normalized."""

    attempt_id: str
    call_id: str | None
    kind: Literal["ringing", "answered", "ended"]
    outcome: Outcome | None = None
    answered_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    duration_seconds: float = 0.0
    billsec: int = 0
    raw_status: str | None = None
    raw_cause: str | None = None
    sip_code: int | None = None
    # The keys the callee pressed (IVR answers), where the provider reports them: auto-stop per key.
    dtmf: str | None = None


class Provider(Protocol):
    """A provider account's adapter.

    Optional attribute `queue_timeout_seconds`: set by adapters whose "ringing" is a wait in a
    human caller's queue (Upcall); the sweeper then allows that long, not the ring timeout.
    Optional attribute `max_calls_per_second`: the account's contracted rate (0: none), which the
    claim enforces across every worker.
    """

    name: str

    async def throttle(self) -> None:
        """Wait for the account's rate limit. Nothing has been sent while this waits, so a
        drain may cancel it and release the claim."""
        ...

    async def start_call(self, request: StartRequest) -> Accepted: ...

    async def lookup(self, request: LookupRequest) -> CallEvent | None:
        """The call as the provider knows it, or None when it never received the start request."""
        ...

    async def hangup(self, attempt_id: str, call_id: str | None) -> None:
        """End a call we no longer want (ring timeout or maximum duration enforced locally).
        Best effort: a call that already ended is not an error."""
        ...

    def parse_callback(self, request: CallbackRequest) -> CallEvent: ...

    async def poll_events(self) -> list[CallEvent]:
        """Outcomes of providers that report by being polled rather than by callback (Upcall);
        called on every maintenance tick. Callback-driven adapters return []."""
        ...

    async def close(self) -> None: ...


def callback_token(secret: bytes, provider: str, attempt_id: str) -> str:
    """The unguessable per-attempt token we put on callback URLs (for providers that sign nothing)."""
    return hmac.new(secret, f"{provider}:{attempt_id}".encode(), sha256).hexdigest()[:32]


class HttpAdapter:
    """What every HTTP adapter shares: one pooled session, the account's calls-per-second limit,
    and its error counter. Subclasses set `name` and call `_init_http` in their constructor."""

    name: str

    def _init_http(
        self, *, timeout_seconds: float, max_connections: int, max_calls_per_second: float
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        # Per provider account, on top of campaign pacing: accounts have their own CPS contracts.
        # The claim holds the rate across workers; this limiter smooths each worker's share.
        self.max_calls_per_second = max_calls_per_second
        self._limiter = AsyncLimiter(max_calls_per_second, 1.0) if max_calls_per_second > 0 else None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300),
                timeout=self._timeout,
            )
        return self._session

    def _error(self, kind: str) -> None:
        metrics.PROVIDER_ERRORS.labels(self.name, kind).inc()

    def _transport_failure(self, exc: BaseException) -> StartError:
        """Classify a start request that failed in transport, and count it.

        Only a connection that never opened proves nothing was sent; a timeout or a reset after
        that may have reached the provider. Messages carry type names only: aiohttp's exception
        text can include the URL, and some providers put credentials in it.
        """
        if isinstance(exc, aiohttp.ClientConnectorError):
            self._error("not_sent")
            return StartError("not_sent", f"{self.name} unreachable: {type(exc.os_error).__name__}")
        self._error("ambiguous")
        return StartError("ambiguous", f"start request failed after sending: {type(exc).__name__}")

    async def throttle(self) -> None:
        if self._limiter is not None:
            await self._limiter.acquire()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            await asyncio.sleep(0)  # let the connector close its transports before the loop ends
