"""The upstream API (`dialer api`): campaigns, numbers, suppression, calls, CDR export, webhook log.

JSON:API documents (`data` / `type` / `attributes`, `links.self/next/last`, `errors` with a
`source.pointer`), page-number pagination and plain query-parameter filters, as the Upcall seed
does. Every route but health, metrics and the OpenAPI document needs a bearer token; a request
that fails validation changes nothing. Filters and values travel as query parameters: no SQL is
ever built from request text.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import hashlib
import io
import itertools
import logging
import re
import secrets
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg
import orjson
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import metrics
from dialer import campaigns, ingest
from dialer.clock import Clock
from dialer.providers import paycall
from dialer.settings import Settings
from dialer.sql import Q
from scheduler import hours

log = logging.getLogger(__name__)

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
# asyncpg.Record reads like a mapping but is not typed as one.
Row: TypeAlias = "asyncpg.Record | Mapping[str, Any]"

JSONAPI = "application/vnd.api+json"
MAX_BATCH = 10_000
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50
_UPLOAD_CHUNK = 50_000
_MAX_LISTED_ERRORS = 1000
_PUBLIC = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_DTMF = re.compile(r"^[0-9#*Ww]{1,64}$")
_TOKEN_PREFIX = "dlr_"

CAMPAIGN_FIELDS = (
    "name",
    "provider",
    "caller_id",
    "ring_timeout_seconds",
    "retry_wait_seconds",
    "max_retries",
    "max_concurrent_calls",
    "max_calls_per_second",
    "max_call_duration_seconds",
    "starts_at",
    "ends_at",
    "time_zone",
    "business_hours",
    "webhook_url",
    "webhook_attempt_events",
    "callee_window_start",
    "callee_window_end",
    "abandon_lockout_seconds",
    "amd_policy",
    "auto_stop_conditions",
    "pacing_mode",
    "pacing_settings",
    "agents_logged_in",
)
_CAMPAIGN_READ_ONLY = ("status", "status_reason", "created_at", "updated_at")
NUMBER_FIELDS = ("phone", "caller_id", "dtmf", "priority", "payload", "time_zone")
# The Upcall seed's number statuses, over ours: "incompleted" is tried but not finished, and
# "voicemail" is a number completed by an answering machine.
NUMBER_STATUS_FILTERS: dict[str, tuple[list[str], bool | None]] = {
    "untried": (["untried"], None),
    "incompleted": (["in_progress", "retry_wait"], None),
    "in_progress": (["in_progress"], None),
    "retry_wait": (["retry_wait"], None),
    "dnc": (["dnc"], None),
    "failed": (["failed"], None),
    "completed": (["completed"], False),
    "voicemail": (["completed"], True),
}
CALL_STATES = ("dialing", "ringing", "answered", "ended")
CAMPAIGN_STATUSES = ("created", "running", "paused", "stopped", "finished")
ACTIONS = ("start", "pause", "resume", "stop")
# The Paycall seed's cdr_by_campaign columns: the same header the Paycall adapter reads back.
CDR_COLUMNS = paycall.CDR_COLUMNS
# Q.850 names for the CDR's hangup_cause when the provider gave none of its own.
_HANGUP_CAUSE = {
    "answered_human": "NORMAL_CLEARING",
    "answered_machine": "NORMAL_CLEARING",
    "answered_fax": "NORMAL_CLEARING",
    "busy": "USER_BUSY",
    "no_answer": "NO_ANSWER",
    "rejected": "CALL_REJECTED",
    "canceled": "ORIGINATOR_CANCEL",
    "congestion": "NORMAL_CIRCUIT_CONGESTION",
    "invalid_number": "UNALLOCATED_NUMBER",
    "blocked": "CALL_REJECTED",
    "account_error": "OUTGOING_CALL_BARRED",
    "provider_error": "NORMAL_TEMPORARY_FAILURE",
    "unknown": "NORMAL_UNSPECIFIED",
}


class ApiError(Exception):
    """An error answered as a JSON:API `errors` document; raising it rolls back the request's work."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        pointer: str | None = None,
        parameter: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.meta = meta
        if errors is not None:
            self.errors = errors
            return
        error: dict[str, Any] = {"status": str(status), "title": title}
        if detail:
            error["detail"] = detail
        if pointer is not None:
            error["source"] = {"pointer": pointer}
        elif parameter is not None:
            error["source"] = {"parameter": parameter}
        self.errors = [error]


def _invalid(pointer: str, detail: str) -> dict[str, Any]:
    return {"status": "422", "title": "Invalid field", "detail": detail, "source": {"pointer": pointer}}


def _json_default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_json_default)


def document(
    data: Any,
    *,
    status: int = 200,
    links: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    included: list[Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"data": data}
    if included is not None:
        body["included"] = included
    if links is not None:
        body["links"] = links
    if meta is not None:
        body["meta"] = meta
    return web.Response(body=dumps(body), status=status, content_type=JSONAPI, headers=headers)


def error_response(exc: ApiError) -> web.Response:
    body: dict[str, Any] = {"errors": exc.errors}
    if exc.meta is not None:
        body["meta"] = exc.meta
    return web.Response(body=dumps(body), status=exc.status, content_type=JSONAPI)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return _TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass
class Api:
    settings: Settings
    pool: asyncpg.Pool
    clock: Clock
    # Names of the configured provider accounts; None accepts any well-formed name (tests, tools).
    provider_accounts: frozenset[str] | None = None

    def now(self) -> dt.datetime:
        return self.clock.now()


API: web.AppKey[Api] = web.AppKey("api", Api)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ---------------------------------------------------------------------------------------------
# Middleware: errors as documents, authentication, metrics


def _route_label(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.route is not None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    route = _route_label(request)
    status = 500
    try:
        if request.path not in _PUBLIC:
            await _authenticate(request)
        response = await handler(request)
        status = response.status
        return response
    except ApiError as exc:
        status = exc.status
        return error_response(exc)
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:
            raise
        title = {404: "Not found", 405: "Method not allowed", 413: "Request body too large"}.get(
            exc.status, exc.reason
        )
        return error_response(ApiError(exc.status, title, exc.text if exc.status != 404 else None))
    except Exception:
        log.exception("API request failed: %s %s", request.method, route)
        return error_response(ApiError(500, "Internal error"))
    finally:
        metrics.API_REQUESTS.labels(route, request.method, str(status)).inc()
        metrics.API_REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)


async def _authenticate(request: web.Request) -> None:
    api = request.app[API]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "Unauthorized", "send an API token: Authorization: Bearer <token>")
    async with api.pool.acquire() as conn:
        row = await conn.fetchrow(Q.api_token_lookup, hash_token(token.strip()))
        if row is None:
            raise ApiError(401, "Unauthorized", "unknown or revoked API token")
        now = api.now()
        if row["last_used_at"] is None or now - row["last_used_at"] > dt.timedelta(minutes=1):
            await conn.execute(Q.api_token_touch, row["id"], now)


# ---------------------------------------------------------------------------------------------
# Request parsing


async def _body(request: web.Request) -> dict[str, Any]:
    ctype = request.content_type
    if ctype not in (JSONAPI, "application/json"):
        raise ApiError(415, "Unsupported media type", f"send {JSONAPI} or application/json, not {ctype!r}")
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "Malformed JSON", str(exc)) from None
    if not isinstance(body, dict):
        raise ApiError(422, "Invalid document", "the body must be a JSON object", pointer="")
    return body


def _resource(body: dict[str, Any], type_: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    data = body.get("data")
    if not isinstance(data, dict):
        raise ApiError(422, "Invalid document", "data must be a resource object", pointer="/data")
    if data.get("type") != type_:
        raise ApiError(422, "Invalid document", f"data.type must be {type_!r}", pointer="/data/type")
    attributes = data.get("attributes", {})
    if not isinstance(attributes, dict):
        raise ApiError(422, "Invalid document", "attributes must be an object", pointer="/data/attributes")
    unknown = [k for k in attributes if k not in allowed]
    if unknown:
        raise ApiError(
            422,
            "Invalid document",
            errors=[_invalid(f"/data/attributes/{k}", f"unknown attribute {k!r}") for k in unknown],
        )
    return attributes


def _int_id(request: web.Request, name: str = "id") -> int:
    raw = request.match_info[name]
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(404, "Not found", f"no such {name}")
    return int(raw)


def _uuid_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise ApiError(404, "Not found", "no such call") from None


def _page(request: web.Request) -> tuple[int, int]:
    def read(name: str, default: int, lo: int, hi: int) -> int:
        raw = request.query.get(name)
        if raw is None:
            return default
        if not raw.isdigit() or not lo <= int(raw) <= hi:
            raise ApiError(400, "Invalid parameter", f"{name} must be an integer {lo}-{hi}", parameter=name)
        return int(raw)

    return read("page[number]", 1, 1, 1_000_000), read("page[size]", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)


def _links(request: web.Request, number: int, size: int, total: int) -> dict[str, str | None]:
    last = max(1, -(-total // size))

    def at(n: int) -> str:
        return str(request.rel_url.update_query({"page[number]": str(n), "page[size]": str(size)}))

    return {"self": at(number), "next": at(number + 1) if number < last else None, "last": at(last)}


def _query_phone(request: web.Request, name: str = "phone") -> str | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return _e164(raw)
    except ValueError as exc:
        raise ApiError(400, "Invalid parameter", f"{name}: {exc}", parameter=name) from None


def _query_choice(request: web.Request, name: str, choices: Any) -> str | None:
    raw = request.query.get(name)
    if raw is not None and raw not in choices:
        raise ApiError(
            400, "Invalid parameter", f"{name} must be one of {', '.join(choices)}", parameter=name
        )
    return raw


def _query_int(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(400, "Invalid parameter", f"{name} must be a positive integer id", parameter=name)
    return int(raw)


def _query_float(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value == value and 0 <= value <= 1e9):
        raise ApiError(400, "Invalid parameter", f"{name} must be a number of seconds", parameter=name)
    return value


def _query_time(request: web.Request, name: str) -> dt.datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise ApiError(
            400, "Invalid parameter", f"{name} must be an ISO 8601 time with a UTC offset", parameter=name
        )
    return value


def _query_bool(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise ApiError(400, "Invalid parameter", f"{name} must be true or false", parameter=name)
    return raw == "true"


def _e164(raw: object, region: str | None = None) -> str:
    if not isinstance(raw, str):
        raise ValueError("must be a string")
    number = ingest.normalize_e164(raw, region)
    # phonenumbers accepts a few numbers longer than E.164's 15 digits; the queue does not.
    if not _E164.match(number):
        raise ValueError(f"{number} is longer than E.164 allows (15 digits)")
    return number


# ---------------------------------------------------------------------------------------------
# Resources


def campaign_resource(row: Row) -> dict[str, Any]:
    attributes = {k: row[k] for k in (*CAMPAIGN_FIELDS, *_CAMPAIGN_READ_ONLY)}
    return {
        "type": "campaigns",
        "id": str(row["id"]),
        "attributes": attributes,
        "links": {"self": f"/v1/campaigns/{row['id']}"},
    }


def number_resource(row: Row) -> dict[str, Any]:
    attributes = {
        k: row[k]
        for k in (
            "phone",
            "caller_id",
            "dtmf",
            "priority",
            "payload",
            "status",
            "attempts",
            "dials",
            "next_attempt_at",
            "last_outcome",
            "held_reason",
            "callee_zones",
            "created_at",
            "updated_at",
        )
    }
    return {
        "type": "numbers",
        "id": str(row["id"]),
        "attributes": attributes,
        "relationships": {"campaign": {"data": {"type": "campaigns", "id": str(row["campaign_id"])}}},
        "links": {"self": f"/v1/numbers/{row['id']}"},
    }


def call_resource(row: Row) -> dict[str, Any]:
    attributes = {
        "phone": row["phone"],
        "attempt_no": row["attempt_no"],
        "provider": row["provider"],
        "provider_call_id": row["provider_call_id"],
        "state": row["state"],
        "outcome": row["outcome"],
        "decision": row["decision"],
        "consumed_attempt": row["consumed_attempt"],
        "started_at": row["claimed_at"],
        "answered_at": row["answered_at"],
        "ended_at": row["ended_at"],
        "duration_seconds": row["duration_seconds"],
        "billsec": row["billsec"],
        "raw_status": row["raw_status"],
        "raw_cause": row["raw_cause"],
        "sip_code": row["sip_code"],
        "next_attempt_at": row["next_attempt_at"],
    }
    return {
        "type": "calls",
        "id": str(row["id"]),
        "attributes": attributes,
        "relationships": {
            "campaign": {"data": {"type": "campaigns", "id": str(row["campaign_id"])}},
            "number": {"data": {"type": "numbers", "id": str(row["number_id"])}},
        },
        "links": {"self": f"/v1/calls/{row['id']}"},
    }


def suppression_resource(row: Row) -> dict[str, Any]:
    return {
        "type": "suppressions",
        "id": str(row["id"]),
        "attributes": {
            "phone": row["phone"],
            "campaign_id": None if row["campaign_id"] is None else str(row["campaign_id"]),
            "reason": row["reason"],
            "source": row["source"],
            "created_at": row["created_at"],
        },
        "links": {"self": f"/v1/suppressions/{row['id']}"},
    }


def webhook_event_resource(row: Row) -> dict[str, Any]:
    status = "delivered" if row["delivered_at"] else "gave_up" if row["gave_up_at"] else "pending"
    return {
        "type": "webhook-events",
        "id": str(row["id"]),
        "attributes": {
            "event_type": row["type"],
            "status": status,
            "created_at": row["created_at"],
            "attempts": row["attempts"],
            "next_attempt_at": None if status != "pending" else row["next_attempt_at"],
            "delivered_at": row["delivered_at"],
            "gave_up_at": row["gave_up_at"],
            "last_status": row["last_status"],
            "last_error": row["last_error"],
            "payload": row["payload"],
            "deliveries": row["deliveries"],
        },
    }


def _page_response(
    request: web.Request,
    rows: list[asyncpg.Record],
    render: Callable[[Any], dict[str, Any]],
    number: int,
    size: int,
) -> web.Response:
    total = rows[0]["total"] if rows else 0
    if not rows and number > 1:
        # Past the end the window count has no row to ride on, so the total is unknown here;
        # say nothing rather than a wrong 0 (the links still point back to page 1).
        total = -1
    return document(
        [render(r) for r in rows],
        links=_links(request, number, size, max(total, 0)),
        meta={"total": total} if total >= 0 else None,
    )


async def _campaign_row(conn: Conn, campaign_id: int) -> asyncpg.Record:
    row: asyncpg.Record | None = await conn.fetchrow(Q.api_campaign_by_id, campaign_id)
    if row is None:
        raise ApiError(404, "Not found", f"no campaign {campaign_id}")
    return row


# ---------------------------------------------------------------------------------------------
# Campaigns


def _spec(attributes: Mapping[str, Any], api: Api) -> campaigns.CampaignSpec:
    values = dict(attributes)
    errors: list[dict[str, Any]] = []
    for field in ("starts_at", "ends_at"):
        raw = values.get(field)
        if isinstance(raw, str):
            try:
                values[field] = dt.datetime.fromisoformat(raw)
            except ValueError:
                errors.append(_invalid(f"/data/attributes/{field}", f"{raw!r} is not an ISO 8601 time"))
        elif raw is not None and not isinstance(raw, dt.datetime):
            errors.append(_invalid(f"/data/attributes/{field}", "must be an ISO 8601 time or null"))
    if "name" not in values:
        errors.append(_invalid("/data/attributes/name", "name is required"))
    if errors:
        raise ApiError(422, "Invalid campaign", errors=errors)
    defaults = campaigns.CampaignSpec(name="")
    kwargs = {f: values.get(f, getattr(defaults, f)) for f in CAMPAIGN_FIELDS}
    for field in ("time_zone", "provider"):
        if kwargs[field] is None:
            kwargs[field] = getattr(defaults, field)
    if kwargs["pacing_settings"] == {}:
        kwargs["pacing_settings"] = None
    spec = campaigns.CampaignSpec(**kwargs)
    try:
        spec.validate()
    except campaigns.CampaignError as exc:
        raise ApiError(
            422,
            "Invalid campaign",
            errors=[_invalid(f"/data/attributes/{field}", why) for field, why in exc.fields.items()],
        ) from None
    if api.provider_accounts is not None and spec.provider not in api.provider_accounts:
        raise ApiError(
            422,
            "Invalid campaign",
            f"no provider account named {spec.provider!r} (configured: {', '.join(sorted(api.provider_accounts))})",
            pointer="/data/attributes/provider",
        )
    return spec


async def list_campaigns(request: web.Request) -> web.Response:
    api = request.app[API]
    number, size = _page(request)
    name = request.query.get("name")
    status = _query_choice(request, "status", CAMPAIGN_STATUSES)
    rows = await api.pool.fetch(Q.api_campaign_page, name, status, size, (number - 1) * size)
    return _page_response(request, rows, campaign_resource, number, size)


async def create_campaign(request: web.Request) -> web.Response:
    api = request.app[API]
    attributes = _resource(await _body(request), "campaigns", CAMPAIGN_FIELDS)
    spec = _spec(attributes, api)
    async with api.pool.acquire() as conn:
        try:
            row = await campaigns.create(conn, spec, api.now())
        except campaigns.CampaignError as exc:
            raise ApiError(409, "Conflict", str(exc), pointer="/data/attributes/name") from None
    resource = campaign_resource(row)
    return document(resource, status=201, headers={"Location": resource["links"]["self"]})


async def get_campaign(request: web.Request) -> web.Response:
    api = request.app[API]
    async with api.pool.acquire() as conn:
        return document(campaign_resource(await _campaign_row(conn, _int_id(request))))


async def update_campaign(request: web.Request) -> web.Response:
    api = request.app[API]
    campaign_id = _int_id(request)
    attributes = _resource(await _body(request), "campaigns", CAMPAIGN_FIELDS)
    async with api.pool.acquire() as conn, conn.transaction():
        current = await conn.fetchrow(Q.api_campaign_lock, campaign_id)
        if current is None:
            raise ApiError(404, "Not found", f"no campaign {campaign_id}")
        merged = {f: current[f] for f in CAMPAIGN_FIELDS}
        merged.update(attributes)
        spec = _spec(merged, api)
        hours = spec.validate()
        try:
            row = await conn.fetchrow(
                Q.api_campaign_update,
                campaign_id,
                *(getattr(spec, f) for f in CAMPAIGN_FIELDS[:12]),
                hours,
                spec.webhook_url,
                spec.webhook_attempt_events,
                api.now(),
            )
        except asyncpg.UniqueViolationError:
            raise ApiError(
                409,
                "Conflict",
                f"a campaign named {spec.name!r} already exists",
                pointer="/data/attributes/name",
            ) from None
        assert row is not None
        row = await campaigns.set_compliance(conn, campaign_id, spec)
        row = await campaigns.set_pacing(conn, campaign_id, spec, api.now())
    assert row is not None
    return document(campaign_resource(row))


async def delete_campaign(request: web.Request) -> web.Response:
    """Delete a campaign that cannot dial and owes upstream no webhook event."""
    api = request.app[API]
    campaign_id = _int_id(request)
    async with api.pool.acquire() as conn, conn.transaction():
        # The cascade would drop undelivered events unsent. Inserting an event key-share locks
        # its campaign row, so FOR UPDATE waits out an outcome still committing (its event is
        # then counted below) and holds off any new one until the delete is done.
        row = await conn.fetchrow(Q.api_campaign_lock, campaign_id)
        if row is None:
            raise ApiError(404, "Not found", f"no campaign {campaign_id}")
        pending = await conn.fetch(Q.api_webhook_event_page, campaign_id, "pending", 1, 0)
        if pending:
            undelivered = pending[0]["total"]
            raise ApiError(
                409,
                "Undelivered webhook events",
                f"campaign {campaign_id} has {undelivered} webhook event(s) not yet delivered; deleting it"
                f" would lose them. Wait until GET /v1/campaigns/{campaign_id}/webhook-events?status=pending"
                " is empty, then delete.",
                meta={"undelivered_webhook_events": undelivered},
            )
        if await conn.fetchval(Q.api_campaign_delete, campaign_id) is None:
            raise ApiError(
                409,
                "Conflict",
                f"campaign {campaign_id} is {row['status']} or has calls in progress: stop it first",
            )
    return web.Response(status=204)


async def campaign_action(request: web.Request) -> web.Response:
    api = request.app[API]
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise ApiError(404, "Not found", f"no action {action!r} (one of {', '.join(ACTIONS)})")
    async with api.pool.acquire() as conn:
        row = await _campaign_row(conn, _int_id(request))
        try:
            row = await campaigns.transition(conn, row["name"], action, api.now(), reason=f"{action} via API")
        except campaigns.CampaignError as exc:
            raise ApiError(409, "Conflict", str(exc)) from None
    return document(campaign_resource(row))


async def set_campaign_agents(request: web.Request) -> web.Response:
    """Agents logged in now, reported by upstream (a contact center's ACD, a CRM's presence)."""
    api = request.app[API]
    campaign_id = _int_id(request)
    attributes = _resource(await _body(request), "agents", ("logged_in",))
    agents = attributes.get("logged_in")
    if isinstance(agents, bool) or not isinstance(agents, int) or not 0 <= agents <= 100_000:
        raise ApiError(
            422,
            "Invalid agents",
            "logged_in must be an integer between 0 and 100000",
            pointer="/data/attributes/logged_in",
        )
    async with api.pool.acquire() as conn:
        await _campaign_row(conn, campaign_id)
        row = await campaigns.set_agents(conn, campaign_id, agents, api.now())
    decision = row["pacing_decision"] or {}
    attributes = {
        "logged_in": row["agents_logged_in"],
        # As of the last tick; null before the first one.
        "free": decision.get("agents_free"),
        "busy": decision.get("agents_busy"),
    }
    return document({"type": "agents", "id": str(row["id"]), "attributes": attributes})


async def campaign_pacing(request: web.Request) -> web.Response:
    """The pacing controller's last decision and the rates behind it (read-only)."""
    api = request.app[API]
    async with api.pool.acquire() as conn:
        row = await _campaign_row(conn, _int_id(request))
    d: dict[str, Any] = row["pacing_decision"] or {}
    agentless = row["pacing_mode"] == "agentless"

    def windows(prefix: str) -> dict[str, Any]:
        return {w: d.get(f"{prefix}_{w}") for w in ("24h", "30d", "lifetime")}

    attributes = {
        "pacing_mode": row["pacing_mode"],
        "pacing_settings": row["pacing_settings"],
        "agents_logged_in": row["agents_logged_in"],
        "budget": None if agentless else row["pacing_budget"],
        "ticked_at": row["pacing_ticked_at"],
        "reason": "agentless" if agentless else d.get("reason"),
        "new_attempts": d.get("new_attempts"),
        "dial_ratio": d.get("dial_ratio"),
        "hit_rate": {"predicted": d.get("hit_rate_predicted"), "observed": d.get("hit_rate_observed")},
        "abandon_rate": windows("abandon_rate"),
        "answered": windows("answered"),
        "abandoned": windows("abandoned"),
        "agents": {"free": d.get("agents_free"), "busy": d.get("agents_busy")},
        "occupancy": d.get("occupancy"),
        "ringing": d.get("ringing"),
        "answered_waiting": d.get("answered_waiting"),
    }
    return document({"type": "campaign-pacing", "id": str(row["id"]), "attributes": attributes})


async def campaign_status(request: web.Request) -> web.Response:
    """Counters in the spirit of the CALLR seed's Sendr campaign status."""
    api = request.app[API]
    async with api.pool.acquire() as conn:
        row = await _campaign_row(conn, _int_id(request))
        stats = await conn.fetchrow(Q.api_campaign_status, row["id"])
        by_status = {
            r["status"]: r["n"] for r in await conn.fetch(Q.api_campaign_numbers_by_status, row["id"])
        }
        outcomes: dict[str, int] = {}
        retries: dict[str, int] = {}
        for r in await conn.fetch(Q.api_campaign_outcomes, row["id"]):
            outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + r["n"]
            if r["decision"] in ("retry", "requeue"):
                retries[r["outcome"]] = retries.get(r["outcome"], 0) + r["n"]
    assert stats is not None
    total, done = stats["items_total"], stats["items_done"]
    attributes = {
        "state": row["status"],
        "state_reason": row["status_reason"],
        "items_total": total,
        "items_done": done,
        "percent": round(100.0 * done / total, 2) if total else 0.0,
        "numbers_by_status": by_status,
        "calls": stats["calls"],
        "active_calls": stats["active_calls"],
        "answered": stats["answered"],
        "average_call_seconds": stats["average_call_seconds"],
        "outcomes": outcomes,
        "retries_by_cause": retries,
    }
    return document({"type": "campaign-status", "id": str(row["id"]), "attributes": attributes})


# ---------------------------------------------------------------------------------------------
# Numbers


def _client_token(request: web.Request, meta: Mapping[str, Any] | None = None) -> str | None:
    token = request.headers.get("Idempotency-Key")
    if meta is not None and "client_token" in meta:
        token = meta["client_token"]
    if token is None:
        return None
    if not isinstance(token, str) or not 1 <= len(token) <= 200:
        raise ApiError(
            422, "Invalid client token", "a string of 1-200 characters", pointer="/meta/client_token"
        )
    return token


async def _replay(
    conn: Conn, scope: str, token: str | None, request_hash: bytes, now: dt.datetime
) -> dict[str, Any] | None:
    """Claim the client token for this request, or return the stored first answer to it.

    Called inside the request's transaction: a concurrent request with the same token blocks on
    the insert until this one commits, then replays its answer.
    """
    if token is None:
        return None
    if await conn.fetchval(Q.api_request_claim, scope, token, request_hash, now) is not None:
        return None
    stored = await conn.fetchrow(Q.api_request_get, scope, token)
    assert stored is not None
    if stored["request_hash"] != request_hash:
        raise ApiError(
            422,
            "Client token reused",
            "this client token was already used for a different request",
            pointer="/meta/client_token",
        )
    answer: dict[str, Any] = stored["response"]
    return answer


def _replayed(answer: Mapping[str, Any]) -> web.Response:
    """The stored first answer again, with its status code, marked as a replay."""
    # Answers stored before the status was kept had it follow from the count added.
    status = answer.get("status") or (201 if answer["meta"]["added"] else 200)
    return document(answer["data"], meta={**answer["meta"], "replayed": True}, status=status)


def _number_item(
    base: str, item: Any, region: str | None
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    if (
        not isinstance(item, dict)
        or item.get("type") != "numbers"
        or not isinstance(item.get("attributes"), dict)
    ):
        return None, [_invalid(base, "must be a resource object of type 'numbers' with attributes")]
    attrs = item["attributes"]
    errors = [
        _invalid(f"{base}/attributes/{k}", f"unknown attribute {k!r}")
        for k in attrs
        if k not in NUMBER_FIELDS
    ]
    out: dict[str, Any] = {}
    try:
        out["phone"] = _e164(attrs.get("phone"), region)
    except ValueError as exc:
        errors.append(_invalid(f"{base}/attributes/phone", str(exc)))
    if attrs.get("caller_id") is not None:
        try:
            out["caller_id"] = _e164(attrs["caller_id"], region)
        except ValueError as exc:
            errors.append(_invalid(f"{base}/attributes/caller_id", str(exc)))
    dtmf = attrs.get("dtmf")
    if dtmf is not None:
        if isinstance(dtmf, str) and _DTMF.match(dtmf):
            out["dtmf"] = dtmf
        else:
            errors.append(_invalid(f"{base}/attributes/dtmf", "digits, #, * and W only (1-64)"))
    priority = attrs.get("priority")
    if priority is not None:
        if isinstance(priority, int) and not isinstance(priority, bool) and -1000 <= priority <= 1000:
            out["priority"] = priority
        else:
            errors.append(_invalid(f"{base}/attributes/priority", "an integer between -1000 and 1000"))
    zone = attrs.get("time_zone")
    if zone is not None:
        # dialer_enqueue() checks it again against the zones PostgreSQL knows, which decide.
        try:
            hours.load_zone(zone)
            out["time_zone"] = zone
        except hours.HoursError as exc:
            errors.append(_invalid(f"{base}/attributes/time_zone", str(exc)))
    if "payload" in attrs:
        out["payload"] = attrs["payload"]
    return (None if errors else out), errors


def _region(raw: Any, pointer: str) -> str | None:
    if raw is None:
        return None
    try:
        return ingest.check_region(str(raw))
    except ValueError as exc:
        raise ApiError(422, "Invalid region", str(exc), pointer=pointer) from None


async def add_numbers(request: web.Request) -> web.Response:
    """Add one number (`data` an object) or up to 10,000 (`data` an array).

    All or nothing unless `meta.partial` asks for per-item errors. Either way the answer is the
    campaign with the counts in `meta`, so one number is simply a batch of one.
    """
    api = request.app[API]
    campaign_id = _int_id(request)
    raw = await request.read()
    body = await _body(request)
    meta = body.get("meta", {})
    if not isinstance(meta, dict):
        raise ApiError(422, "Invalid document", "meta must be an object", pointer="/meta")
    partial = meta.get("partial", False)
    if not isinstance(partial, bool):
        raise ApiError(422, "Invalid document", "partial must be true or false", pointer="/meta/partial")
    region = _region(meta.get("default_region"), "/meta/default_region")
    token = _client_token(request, meta)
    data = body.get("data")
    single = isinstance(data, dict)
    if single:
        data = [data]
    if not isinstance(data, list) or not data:
        raise ApiError(
            422,
            "Invalid document",
            "data must be a number resource object or a non-empty array of them",
            pointer="/data",
        )
    if len(data) > MAX_BATCH:
        raise ApiError(
            413,
            "Too many numbers",
            f"at most {MAX_BATCH} per request (got {len(data)}); upload a file instead",
        )
    items: list[dict[str, Any]] = []
    indices: list[int] = []
    errors: list[dict[str, Any]] = []
    # Pointers point into the document as sent: /data for one object, /data/<i> in an array.
    pointers = ["/data"] if single else [f"/data/{i}" for i in range(len(data))]
    for i, item in enumerate(data):
        parsed, item_errors = _number_item(pointers[i], item, region)
        errors.extend(item_errors)
        if parsed is not None:
            items.append(parsed)
            indices.append(i)
    if errors and not partial:
        raise ApiError(
            422,
            "Invalid numbers",
            errors=errors[:_MAX_LISTED_ERRORS],
            meta={"rejected": len(data) - len(items), "received": len(data), "added": 0},
        )
    async with api.pool.acquire() as conn, conn.transaction():
        campaign = await _campaign_row(conn, campaign_id)
        stored = await _replay(conn, f"numbers:{campaign_id}", token, hashlib.sha256(raw).digest(), api.now())
        if stored is not None:
            return _replayed(stored)
        added = 0
        if items:
            try:
                result = await conn.fetchval(Q.api_enqueue, campaign["name"], items, None, api.now())
            except asyncpg.InvalidParameterValueError as exc:
                raise ApiError(
                    422, "Invalid numbers", _sql_errors(exc, [pointers[i] for i in indices])
                ) from None
            added = result["added"]
        meta_out = {
            "received": len(data),
            "accepted": len(items),
            "rejected": len(data) - len(items),
            "added": added,
            "duplicates": len(items) - added,
            "errors": errors[:_MAX_LISTED_ERRORS],
            "replayed": False,
        }
        status = 201 if added else 200
        answer = {"status": status, "data": campaign_resource(campaign), "meta": meta_out}
        if token is not None:
            await conn.execute(Q.api_request_store, f"numbers:{campaign_id}", token, answer)
    return document(answer["data"], meta=meta_out, status=status)


def _sql_errors(exc: asyncpg.PostgresError, pointers: list[str]) -> str:
    detail = getattr(exc, "detail", None) or ""
    try:
        bad = orjson.loads(detail)
        return "; ".join(f"{pointers[b['index']]}: {b['error']}" for b in bad[:20])
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return str(exc)


async def _spool(request: web.Request, limit: int) -> tuple[Path, bytes, str]:
    """The upload (raw body, or the `numbers` field of a multipart form) in a temporary file."""
    digest = hashlib.sha256()
    name = "upload"
    fd, path = tempfile.mkstemp(prefix="dialer-upload-")
    size = 0
    try:
        # Local temp-file writes of 64 KiB land in the page cache; a thread hop per chunk costs more.
        with open(fd, "wb") as out:  # noqa: ASYNC230
            if request.content_type == "multipart/form-data":
                reader = await request.multipart()
                while True:
                    part = await reader.next()
                    if part is None:
                        raise ApiError(
                            422, "Missing file", "the form needs a 'numbers' file field", parameter="numbers"
                        )
                    if isinstance(part, BodyPartReader) and part.name == "numbers":
                        name = part.filename or name
                        while chunk := await part.read_chunk(1 << 16):
                            size += len(chunk)
                            if size > limit:
                                raise ApiError(413, "Request body too large", f"at most {limit} bytes")
                            digest.update(chunk)
                            out.write(chunk)
                        break
            else:
                async for chunk in request.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(413, "Request body too large", f"at most {limit} bytes")
                    digest.update(chunk)
                    out.write(chunk)
    except HttpProcessingError as exc:
        Path(path).unlink(missing_ok=True)  # noqa: ASYNC240
        raise ApiError(400, "Malformed upload", exc.message or "unreadable multipart body") from None
    except BaseException:
        Path(path).unlink(missing_ok=True)  # noqa: ASYNC240
        raise
    return Path(path), digest.digest(), name


async def upload_numbers(request: web.Request) -> web.Response:
    """The Paycall seed's upload_phones: CSV / TXT / ZIP / GZ of `number[,cli[,dtmf]]`, streamed."""
    api = request.app[API]
    campaign_id = _int_id(request)
    partial = _query_bool(request, "partial") or False
    region = request.query.get("default_region")
    try:
        region = ingest.check_region(region)
    except ValueError as exc:
        raise ApiError(400, "Invalid parameter", str(exc), parameter="default_region") from None
    token = _client_token(
        request, {"client_token": request.query["client_token"]} if "client_token" in request.query else None
    )
    path, digest, _ = await _spool(request, api.settings.api_max_body_bytes)
    try:
        return await _load_upload(request, api, campaign_id, path, digest, partial, region, token)
    finally:
        path.unlink(missing_ok=True)


async def _load_upload(
    request: web.Request,
    api: Api,
    campaign_id: int,
    path: Path,
    digest: bytes,
    partial: bool,
    region: str | None,
    token: str | None,
) -> web.Response:
    request_hash = hashlib.sha256(digest + f"|{partial}|{region}".encode()).digest()
    bad: list[ingest.BadRow] = []
    counts = {"rows": 0, "valid": 0}
    try:
        rows = ingest.parse_file(path, default_region=region)
        first = await asyncio.to_thread(_take, rows, _UPLOAD_CHUNK, bad, counts)
    except ingest.IngestError as exc:
        raise ApiError(422, "Unreadable upload", str(exc), parameter="numbers") from None

    def rest() -> Iterator[campaigns.NumberRow]:
        while chunk := _take(rows, _UPLOAD_CHUNK, bad, counts):
            yield from chunk

    async with api.pool.acquire() as conn, conn.transaction():
        campaign = await _campaign_row(conn, campaign_id)
        stored = await _replay(conn, f"upload:{campaign_id}", token, request_hash, api.now())
        if stored is not None:
            return _replayed(stored)
        try:
            # enqueue() parses in a thread, a chunk ahead of the merge: off the event loop.
            added = await campaigns.enqueue(
                conn, campaign_id, itertools.chain(first, rest()), api.now(), chunk=_UPLOAD_CHUNK
            )
        except ingest.IngestError as exc:
            raise ApiError(422, "Unreadable upload", str(exc), parameter="numbers") from None
        bad_list = [{"line": b.line, "reason": b.reason, "raw": b.raw} for b in bad[:_MAX_LISTED_ERRORS]]
        if bad and not partial:
            # Raising rolls the staged rows back: nothing of a rejected upload is queued.
            raise ApiError(
                422,
                "Invalid rows",
                errors=[
                    {
                        "status": "422",
                        "title": "Invalid row",
                        "detail": f"line {b.line}: {b.reason}",
                        "source": {"parameter": "numbers"},
                        "meta": {"line": b.line},
                    }
                    for b in bad[:_MAX_LISTED_ERRORS]
                ],
                meta={"rows": counts["rows"], "invalid": len(bad), "added": 0},
            )
        meta = {
            "rows": counts["rows"],
            "valid": counts["valid"],
            "invalid": len(bad),
            "added": added,
            "duplicates": counts["valid"] - added,
            "errors": bad_list,
            "replayed": False,
        }
        status = 201 if added else 200
        answer = {"status": status, "data": campaign_resource(campaign), "meta": meta}
        if token is not None:
            await conn.execute(Q.api_request_store, f"upload:{campaign_id}", token, answer)
    return document(answer["data"], meta=meta, status=status)


def _take(
    rows: Iterator[ingest.Row | ingest.BadRow], n: int, bad: list[ingest.BadRow], counts: dict[str, int]
) -> list[campaigns.NumberRow]:
    out: list[campaigns.NumberRow] = []
    for item in itertools.islice(rows, n):
        counts["rows"] += 1
        if isinstance(item, ingest.BadRow):
            bad.append(item)
            continue
        if not _E164.match(item.number):
            bad.append(ingest.BadRow(item.line, "longer than E.164 allows (15 digits)", item.number))
            continue
        counts["valid"] += 1
        out.append(campaigns.NumberRow(phone=item.number, caller_id=item.cli, dtmf=item.dtmf, line=item.line))
    return out


async def list_numbers(request: web.Request) -> web.Response:
    api = request.app[API]
    campaign_id = _int_id(request)
    number, size = _page(request)
    status = _query_choice(request, "status", NUMBER_STATUS_FILTERS)
    statuses, machine = NUMBER_STATUS_FILTERS[status] if status else (None, None)
    phone = _query_phone(request)
    async with api.pool.acquire() as conn:
        await _campaign_row(conn, campaign_id)
        rows = await conn.fetch(
            Q.api_number_page, campaign_id, statuses, phone, machine, size, (number - 1) * size
        )
    return _page_response(request, rows, number_resource, number, size)


async def get_number(request: web.Request) -> web.Response:
    api = request.app[API]
    number_id = _int_id(request)
    async with api.pool.acquire() as conn:
        row = await conn.fetchrow(Q.api_number_by_id, number_id)
        if row is None:
            raise ApiError(404, "Not found", f"no number {number_id}")
        attempts = await conn.fetch(Q.api_number_attempts, number_id)
    resource = number_resource(row)
    resource["relationships"]["calls"] = {"data": [{"type": "calls", "id": str(a["id"])} for a in attempts]}
    return document(resource, included=[call_resource(a) for a in attempts])


async def delete_number(request: web.Request) -> web.Response:
    api = request.app[API]
    number_id = _int_id(request)
    async with api.pool.acquire() as conn:
        row = await conn.fetchrow(Q.api_number_by_id, number_id)
        if row is None:
            raise ApiError(404, "Not found", f"no number {number_id}")
        if await conn.fetchval(Q.api_number_delete, number_id) is None:
            raise ApiError(
                409, "Conflict", f"number {number_id} has been dialed ({row['status']}); its calls are kept"
            )
    return web.Response(status=204)


# ---------------------------------------------------------------------------------------------
# Suppression (do-not-call)


async def list_suppressions(request: web.Request) -> web.Response:
    api = request.app[API]
    number, size = _page(request)
    phone = _query_phone(request)
    campaign = _query_int(request, "campaign")
    scope = _query_choice(request, "scope", ("global", "campaign"))
    is_global = None if scope is None else scope == "global"
    rows = await api.pool.fetch(Q.api_suppression_page, phone, campaign, is_global, size, (number - 1) * size)
    return _page_response(request, rows, suppression_resource, number, size)


async def add_suppressions(request: web.Request) -> web.Response:
    """Suppress one number or a batch (`data` an object or an array); repeats are no-ops."""
    api = request.app[API]
    body = await _body(request)
    data = body.get("data")
    items = data if isinstance(data, list) else [data]
    if not items or len(items) > MAX_BATCH:
        raise ApiError(422, "Invalid document", f"data must hold 1-{MAX_BATCH} suppressions", pointer="/data")
    errors: list[dict[str, Any]] = []
    groups: dict[tuple[int | None, str | None], list[str]] = {}
    for i, item in enumerate(items):
        base = f"/data/{i}" if isinstance(data, list) else "/data"
        if (
            not isinstance(item, dict)
            or item.get("type") != "suppressions"
            or not isinstance(item.get("attributes"), dict)
        ):
            errors.append(_invalid(base, "must be a resource object of type 'suppressions' with attributes"))
            continue
        attrs = item["attributes"]
        errors.extend(
            _invalid(f"{base}/attributes/{k}", f"unknown attribute {k!r}")
            for k in attrs
            if k not in ("phone", "campaign_id", "reason")
        )
        try:
            phone = _e164(attrs.get("phone"))
        except ValueError as exc:
            errors.append(_invalid(f"{base}/attributes/phone", str(exc)))
            continue
        campaign_raw = attrs.get("campaign_id")
        campaign_id: int | None = None
        if campaign_raw is not None:
            if isinstance(campaign_raw, str) and campaign_raw.isdigit() and len(campaign_raw) <= 18:
                campaign_id = int(campaign_raw)
            elif (
                isinstance(campaign_raw, int)
                and not isinstance(campaign_raw, bool)
                and 0 < campaign_raw < 2**62
            ):
                campaign_id = campaign_raw
            else:
                errors.append(_invalid(f"{base}/attributes/campaign_id", "a campaign id, or null for global"))
                continue
        reason = attrs.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
            errors.append(_invalid(f"{base}/attributes/reason", "a string of at most 500 characters"))
            continue
        groups.setdefault((campaign_id, reason), []).append(phone)
    if errors:
        raise ApiError(422, "Invalid suppressions", errors=errors[:_MAX_LISTED_ERRORS])
    out: list[dict[str, Any]] = []
    created = 0
    async with api.pool.acquire() as conn, conn.transaction():
        for (campaign_id, reason), phones in groups.items():
            if campaign_id is not None and await conn.fetchval(Q.api_campaign_by_id, campaign_id) is None:
                raise ApiError(422, "Invalid suppressions", f"no campaign {campaign_id}", pointer="/data")
            for row in await conn.fetch(Q.api_suppression_insert, phones, campaign_id, reason, api.now()):
                created += row["created"]
                out.append(suppression_resource(row))
    data_out: Any = out if isinstance(data, list) else out[0]
    return document(
        data_out, status=201 if created else 200, meta={"created": created, "existing": len(out) - created}
    )


async def get_suppression(request: web.Request) -> web.Response:
    api = request.app[API]
    row = await api.pool.fetchrow(Q.api_suppression_by_id, _int_id(request))
    if row is None:
        raise ApiError(404, "Not found", "no such suppression")
    return document(suppression_resource(row))


async def delete_suppression(request: web.Request) -> web.Response:
    api = request.app[API]
    if await api.pool.fetchval(Q.api_suppression_delete, _int_id(request)) is None:
        raise ApiError(404, "Not found", "no such suppression")
    return web.Response(status=204)


async def check_suppression(request: web.Request) -> web.Response:
    api = request.app[API]
    phone = _query_phone(request)
    if phone is None:
        raise ApiError(400, "Invalid parameter", "phone is required", parameter="phone")
    campaign = _query_int(request, "campaign")
    rows = await api.pool.fetch(Q.api_suppression_check, phone, campaign)
    return document(
        {
            "type": "suppression-checks",
            "id": phone,
            "attributes": {
                "phone": phone,
                "campaign_id": None if campaign is None else str(campaign),
                "suppressed": bool(rows),
                "entries": [suppression_resource(r) for r in rows],
            },
        }
    )


# ---------------------------------------------------------------------------------------------
# Calls and CDRs


async def list_calls(request: web.Request) -> web.Response:
    api = request.app[API]
    number, size = _page(request)
    from scheduler.outcomes import Outcome

    status = _query_choice(request, "status", (*CALL_STATES, *(o.value for o in Outcome)))
    args = (
        _query_int(request, "campaign"),
        status,
        _query_phone(request),
        _query_float(request, "min_duration"),
        _query_float(request, "max_duration"),
        _query_time(request, "started_after"),
        _query_time(request, "started_before"),
    )
    rows = await api.pool.fetch(Q.api_call_page, *args, size, (number - 1) * size)
    return _page_response(request, rows, call_resource, number, size)


async def get_call(request: web.Request) -> web.Response:
    api = request.app[API]
    row = await api.pool.fetchrow(Q.api_call_by_id, _uuid_id(request))
    if row is None:
        raise ApiError(404, "Not found", "no such call")
    return document(call_resource(row))


def _cdr_time(value: dt.datetime | None) -> str:
    # The seed's "2016-03-30 14:53:50+03" shape, in UTC.
    return "" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S+00")


def cdr_row(r: Row) -> list[str]:
    start, end = r["claimed_at"], r["ended_at"]
    duration = max(0, round((end - start).total_seconds())) if start and end else 0
    cause = r["raw_cause"] if r["raw_cause"] and re.fullmatch(r"[A-Z_ ]{3,60}", r["raw_cause"]) else None
    steps = {"steps": [{"dtmf": r["dtmf"]}] if r["dtmf"] else [], "invalid": [], "unique_id": str(r["id"])}
    return [
        r["cli"],
        r["phone"].lstrip("+"),
        _cdr_time(start),
        _cdr_time(r["answered_at"]),
        _cdr_time(end),
        str(duration),
        str(r["billsec"] or 0),
        cause or _HANGUP_CAUSE.get(r["outcome"] or "unknown", "NORMAL_UNSPECIFIED"),
        str(r["campaign_id"]),
        orjson.dumps(steps).decode(),
    ]


async def _stream_cdr(
    request: web.Request, campaign_id: int | None, phone: str | None, filename: str
) -> web.StreamResponse:
    api = request.app[API]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{filename}"',
        }
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(CDR_COLUMNS)
    async with api.pool.acquire() as conn, conn.transaction(readonly=True):
        # Headers go out only once the query is known to run, so an error is still a JSON error.
        cursor = conn.cursor(Q.api_cdr, campaign_id, phone, prefetch=2000)
        await response.prepare(request)
        await response.write(buffer.getvalue().encode())
        buffer.seek(0)
        buffer.truncate()
        count = 0
        async for r in cursor:
            writer.writerow(cdr_row(r))
            count += 1
            if count % 2000 == 0:
                await response.write(buffer.getvalue().encode())
                buffer.seek(0)
                buffer.truncate()
        await response.write(buffer.getvalue().encode())
    await response.write_eof()
    return response


async def campaign_cdr(request: web.Request) -> web.StreamResponse:
    api = request.app[API]
    campaign_id = _int_id(request)
    async with api.pool.acquire() as conn:
        await _campaign_row(conn, campaign_id)
    return await _stream_cdr(request, campaign_id, None, f"cdr-campaign-{campaign_id}.csv")


async def number_cdr(request: web.Request) -> web.StreamResponse:
    phone = _query_phone(request)
    if phone is None:
        raise ApiError(400, "Invalid parameter", "phone is required", parameter="phone")
    campaign = _query_int(request, "campaign")
    return await _stream_cdr(request, campaign, phone, f"cdr-{phone.lstrip('+')}.csv")


async def list_webhook_events(request: web.Request) -> web.Response:
    api = request.app[API]
    campaign_id = _int_id(request)
    number, size = _page(request)
    status = _query_choice(request, "status", ("pending", "delivered", "gave_up"))
    async with api.pool.acquire() as conn:
        await _campaign_row(conn, campaign_id)
        rows = await conn.fetch(Q.api_webhook_event_page, campaign_id, status, size, (number - 1) * size)
    return _page_response(request, rows, webhook_event_resource, number, size)


# ---------------------------------------------------------------------------------------------
# Compliance settings shared by every campaign


def compliance_resource(row: Row | None) -> dict[str, Any]:
    attributes = {
        "max_attempts_per_24h": None if row is None else row["max_attempts_per_24h"],
        "max_attempts_lifetime": None if row is None else row["max_attempts_lifetime"],
        "updated_at": None if row is None else row["updated_at"],
    }
    return {"type": "compliance", "id": "global", "attributes": attributes}


async def get_compliance(request: web.Request) -> web.Response:
    """Attempt caps per phone across all campaigns (null = no cap)."""
    api = request.app[API]
    return document(compliance_resource(await api.pool.fetchrow(Q.compliance_get)))


async def put_compliance(request: web.Request) -> web.Response:
    api = request.app[API]
    fields = ("max_attempts_per_24h", "max_attempts_lifetime")
    attributes = _resource(await _body(request), "compliance", fields)
    values: dict[str, int | None] = {}
    errors: list[dict[str, Any]] = []
    for field in fields:
        value = attributes.get(field)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000
        ):
            errors.append(_invalid(f"/data/attributes/{field}", "an integer 1-1000, or null for no cap"))
        values[field] = value
    if errors:
        raise ApiError(422, "Invalid compliance settings", errors=errors)
    row = await api.pool.fetchrow(
        Q.compliance_set, values["max_attempts_per_24h"], values["max_attempts_lifetime"], api.now()
    )
    return document(compliance_resource(row))


# ---------------------------------------------------------------------------------------------
# Service endpoints


async def openapi(request: web.Request) -> web.Response:
    from dialer.openapi import spec

    return web.Response(body=dumps(spec()), content_type="application/json")


async def metrics_endpoint(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    api = request.app[API]
    try:
        async with api.pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")
    except Exception as exc:
        return web.json_response({"status": "database unreachable", "error": type(exc).__name__}, status=503)
    return web.json_response({"status": "ready"})


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/v1/campaigns", list_campaigns),
    ("POST", "/v1/campaigns", create_campaign),
    ("GET", "/v1/campaigns/{id}", get_campaign),
    ("PATCH", "/v1/campaigns/{id}", update_campaign),
    ("DELETE", "/v1/campaigns/{id}", delete_campaign),
    ("POST", "/v1/campaigns/{id}/actions/{action}", campaign_action),
    ("GET", "/v1/campaigns/{id}/status", campaign_status),
    ("PUT", "/v1/campaigns/{id}/agents", set_campaign_agents),
    ("GET", "/v1/campaigns/{id}/pacing", campaign_pacing),
    ("GET", "/v1/campaigns/{id}/numbers", list_numbers),
    ("POST", "/v1/campaigns/{id}/numbers", add_numbers),
    ("POST", "/v1/campaigns/{id}/numbers/upload", upload_numbers),
    ("GET", "/v1/campaigns/{id}/cdr.csv", campaign_cdr),
    ("GET", "/v1/campaigns/{id}/webhook-events", list_webhook_events),
    ("GET", "/v1/numbers/{id}", get_number),
    ("DELETE", "/v1/numbers/{id}", delete_number),
    ("GET", "/v1/suppressions", list_suppressions),
    ("POST", "/v1/suppressions", add_suppressions),
    ("GET", "/v1/suppressions/check", check_suppression),
    ("GET", "/v1/suppressions/{id}", get_suppression),
    ("DELETE", "/v1/suppressions/{id}", delete_suppression),
    ("GET", "/v1/calls", list_calls),
    ("GET", "/v1/calls/{id}", get_call),
    ("GET", "/v1/cdr.csv", number_cdr),
    ("GET", "/v1/compliance", get_compliance),
    ("PUT", "/v1/compliance", put_compliance),
    ("GET", "/openapi.json", openapi),
    ("GET", "/metrics", metrics_endpoint),
    ("GET", "/healthz", healthz),
    ("GET", "/readyz", readyz),
]


def make_app(api: Api) -> web.Application:
    app = web.Application(client_max_size=api.settings.api_max_body_bytes, middlewares=[middleware])
    app[API] = api
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app
