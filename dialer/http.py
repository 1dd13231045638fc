"""The worker's HTTP face: provider callbacks, metrics, health."""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from functools import cache

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

import metrics
from dialer.providers.base import CallbackError, CallbackRequest, callback_token
from dialer.worker import Worker

log = logging.getLogger(__name__)

WORKER: web.AppKey[Worker] = web.AppKey("worker", Worker)
MAX_CALLBACK_BYTES = 64 * 1024


@cache
def _result_body(result: str) -> bytes:
    # A handful of results, answered thousands of times a second: encoded once each.
    return orjson.dumps({"result": result})


@cache
def _callbacks_counted(provider: str, result: str) -> Counter:
    # Every callback counts once; labels() takes a lock and validates on every call. Bounded:
    # provider accounts times results and rejection reasons.
    return metrics.CALLBACKS.labels(provider, result)


async def callback(request: web.Request) -> web.Response:
    worker = request.app[WORKER]
    name = request.match_info["provider"]
    provider = worker.providers.get(name)
    if provider is None:
        raise web.HTTPNotFound(text="unknown provider")
    started = time.perf_counter()
    received_at = worker.clock.now()
    body = await request.read()
    token_attempt: str | None = None
    attempt, token = request.query.get("attempt"), request.query.get("token")
    if attempt is not None or token is not None:
        expected = callback_token(worker.settings.callback_secret.get().encode(), name, attempt or "")
        if not (attempt and token and hmac.compare_digest(token, expected)):
            _callbacks_counted(name, "bad_signature").inc()
            return web.json_response({"error": "bad_signature"}, status=401)
        token_attempt = attempt
    received = CallbackRequest(
        # The URL the provider called, as the public base URL spells it: signatures cover it.
        url=worker.settings.callback_base_url + request.path_qs,
        headers=request.headers,
        body=body,
        query=request.query,
        token_attempt_id=token_attempt,
    )
    try:
        event = provider.parse_callback(received)
        uuid.UUID(event.attempt_id)
        if token_attempt is not None and event.attempt_id != token_attempt:
            raise CallbackError("bad_signature", "callback body names another attempt than its token")
    except CallbackError as exc:
        _callbacks_counted(name, exc.reason).inc()
        status = 401 if exc.reason == "bad_signature" else 400
        return web.json_response({"error": exc.reason}, status=status)
    except ValueError:
        _callbacks_counted(name, "malformed").inc()
        return web.json_response({"error": "malformed"}, status=400)
    happened_at = {"ended": event.ended_at, "answered": event.answered_at}.get(event.kind)
    if happened_at is not None:
        # Provider timestamps are often whole seconds and their clocks drift: a slightly
        # "future" event is a lag of zero, not a negative observation.
        lag = (received_at - happened_at).total_seconds()
        metrics.CALLBACK_LAG_SECONDS.labels(name).observe(max(0.0, lag))
    try:
        result = await worker.apply_event(event)
    except Exception:
        # Not durable: answer 5xx so the provider redelivers (the sweeper is the last resort).
        log.exception("could not record callback")
        _callbacks_counted(name, "error").inc()
        return web.json_response({"error": "unavailable"}, status=503)
    _callbacks_counted(name, result).inc()
    metrics.CALLBACK_SECONDS.observe(time.perf_counter() - started)
    if result == "unknown_attempt":
        return web.json_response({"error": "unknown attempt"}, status=404)
    return web.Response(body=_result_body(result), content_type="application/json")


async def metrics_endpoint(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    worker = request.app[WORKER]
    if worker.draining or not worker.ready:
        return web.json_response({"status": "draining" if worker.draining else "starting"}, status=503)
    try:
        async with worker.pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")
    except Exception as exc:
        return web.json_response({"status": "database unreachable", "error": type(exc).__name__}, status=503)
    return web.json_response({"status": "ready"})


def make_app(worker: Worker) -> web.Application:
    app = web.Application(client_max_size=MAX_CALLBACK_BYTES)
    app[WORKER] = worker
    app.router.add_post("/callbacks/{provider}", callback)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
