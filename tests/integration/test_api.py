"""The upstream API against a real Postgres and a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import gzip
import io
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import yarl
from aiohttp import web
from aiohttp.test_utils import TestServer

from dialer import api as api_mod
from dialer.api import Api, hash_token, make_app, new_token
from dialer.clock import ManualClock
from dialer.settings import Settings
from dialer.sql import Q
from tests.factories import NOW, open_window, phone

JSONAPI = "application/vnd.api+json"
WORKER = uuid.UUID(int=1)


@dataclass
class Client:
    http: aiohttp.ClientSession
    conn: asyncpg.Connection
    clock: ManualClock
    token: str
    app: web.Application

    async def call(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        if body is not None:
            kw["data"] = orjson.dumps(body)
            kw.setdefault("headers", {})["Content-Type"] = JSONAPI
        async with self.http.request(method, path, **kw) as resp:
            raw = await resp.read()
            if resp.content_type in (JSONAPI, "application/json") and raw:
                return resp.status, orjson.loads(raw)
            return resp.status, raw


@pytest.fixture
async def client(pool: asyncpg.Pool, conn: asyncpg.Connection) -> AsyncIterator[Client]:
    clock = ManualClock(NOW)
    settings = Settings(api_max_body_bytes=2 * 1024 * 1024)
    server = TestServer(make_app(Api(settings, pool, clock, frozenset({"simulator", "twilio"}))))
    await server.start_server()
    token = new_token()
    await conn.execute(Q.api_token_insert, "tests", hash_token(token), NOW)
    async with aiohttp.ClientSession(
        base_url=str(server.make_url("")), headers={"Authorization": f"Bearer {token}"}
    ) as http:
        yield Client(http, conn, clock, token, server.app)
    await server.close()


def campaign_doc(**attributes: Any) -> dict[str, Any]:
    return {"data": {"type": "campaigns", "attributes": {"name": "spring", **attributes}}}


def numbers_doc(phones: list[str], **meta: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"data": [{"type": "numbers", "attributes": {"phone": p}} for p in phones]}
    if meta:
        body["meta"] = meta
    return body


async def create(client: Client, **attributes: Any) -> str:
    status, doc = await client.call("POST", "/v1/campaigns", campaign_doc(**attributes))
    assert status == 201, doc
    return str(doc["data"]["id"])


async def counts(conn: asyncpg.Connection) -> tuple[int, int, int]:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM dialer_campaign), (SELECT count(*) FROM dialer_number),"
        " (SELECT count(*) FROM dialer_suppression)"
    )
    assert row is not None
    return row[0], row[1], row[2]


# --- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer nope", "Basic dXNlcjpwYXNz", "Bearer "])
async def test_requests_without_a_valid_token_get_401_and_change_nothing(
    client: Client, header: str | None
) -> None:
    """A missing, unknown or malformed token is refused before anything is written."""
    headers = {"Content-Type": JSONAPI}
    if header is not None:
        headers["Authorization"] = header
    before = await counts(client.conn)
    async with (
        aiohttp.ClientSession(base_url=str(client.http._base_url)) as anon,
        anon.post("/v1/campaigns", data=orjson.dumps(campaign_doc()), headers=headers) as resp,
    ):
        assert resp.status == 401
        body = orjson.loads(await resp.read())
    assert body["errors"][0]["status"] == "401"
    assert await counts(client.conn) == before


async def test_a_revoked_token_stops_working(client: Client) -> None:
    """Revoking a token (as `dialer token revoke` does) takes effect on the next request."""
    assert (await client.call("GET", "/v1/campaigns"))[0] == 200
    await client.conn.execute(Q.api_token_revoke, "tests", NOW)
    assert (await client.call("GET", "/v1/campaigns"))[0] == 401


_TABLES = (
    "dialer_campaign",
    "dialer_number",
    "dialer_attempt",
    "dialer_suppression",
    "dialer_webhook_event",
    "dialer_api_request",
    "dialer_api_token",
    "dialer_compliance",
)


async def snapshot(conn: asyncpg.Connection) -> dict[str, tuple[int, str]]:
    """Row count and a digest of every row of each table an API request could write."""
    out: dict[str, tuple[int, str]] = {}
    for table in _TABLES:
        row = await conn.fetchrow(
            f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"
        )
        assert row is not None
        out[table] = (row[0], row[1])
    return out


async def test_every_route_refuses_a_missing_wrong_or_revoked_token_and_changes_nothing(
    client: Client,
) -> None:
    """Each non-public route of the app answers 401 without a valid token, whatever the request would do."""
    cid = await create(client)
    status, _ = await client.call("POST", f"/v1/campaigns/{cid}/numbers", numbers_doc([phone(1), phone(2)]))
    assert status == 201
    number_id = await client.conn.fetchval("SELECT min(id) FROM dialer_number")
    status, doc = await client.call(
        "POST", "/v1/suppressions", {"data": {"type": "suppressions", "attributes": {"phone": phone(7)}}}
    )
    assert status == 201
    suppression_id = doc["data"]["id"]
    dialed = await create(client, name="dialed", max_concurrent_calls=100, max_calls_per_second=100)
    call_id = (await _dial_and_finish(client, dialed, 1))[0]["attempt_id"]
    revoked = new_token()
    await client.conn.execute(Q.api_token_insert, "revoked", hash_token(revoked), NOW)
    await client.conn.execute(Q.api_token_revoke, "revoked", NOW)

    def fill(path: str) -> str:
        ids = {"/v1/calls/": call_id, "/v1/numbers/": number_id, "/v1/suppressions/": suppression_id}
        target = next((v for k, v in ids.items() if path.startswith(k)), cid)
        return path.format(id=target, action="start")

    # Bodies that would succeed with a valid token, so a hole in the guard would show as a change.
    bodies: dict[tuple[str, str], Any] = {
        ("POST", "/v1/campaigns"): campaign_doc(name="intruder"),
        ("PATCH", "/v1/campaigns/{id}"): {"data": {"type": "campaigns", "attributes": {"max_retries": 9}}},
        ("PUT", "/v1/campaigns/{id}/agents"): {"data": {"type": "agents", "attributes": {"logged_in": 3}}},
        ("POST", "/v1/campaigns/{id}/numbers"): numbers_doc([phone(50)], client_token="intruder"),
        ("POST", "/v1/suppressions"): {"data": {"type": "suppressions", "attributes": {"phone": phone(51)}}},
        ("PUT", "/v1/compliance"): {
            "data": {"type": "compliance", "attributes": {"max_attempts_per_24h": 1}}
        },
    }
    public = {"/healthz", "/readyz", "/metrics", "/openapi.json"}
    routes = sorted(
        {
            (r.method, r.resource.canonical)
            for r in client.app.router.routes()
            if r.resource is not None and r.resource.canonical not in public
        }
    )
    from dialer.openapi import spec

    documented = {(m.upper(), p) for p, item in spec()["paths"].items() for m in item if m != "parameters"}
    assert documented <= set(routes)

    before = await snapshot(client.conn)
    refused = 0
    async with aiohttp.ClientSession(base_url=str(client.http._base_url)) as anon:
        for authorization in (None, f"Bearer {new_token()}", f"Bearer {revoked}"):
            for method, template in routes:
                headers = {} if authorization is None else {"Authorization": authorization}
                if template.endswith("/upload"):
                    data = f"{phone(52)}\r\n".encode()
                    headers["Content-Type"] = "text/csv"
                    params = {"client_token": "intruder"}
                else:
                    data = orjson.dumps(bodies.get((method, template), {}))
                    headers["Content-Type"] = JSONAPI
                    params = {}
                async with anon.request(
                    method, fill(template), data=data, headers=headers, params=params
                ) as resp:
                    raw = await resp.read()
                    assert resp.status == 401, (method, template, authorization, raw)
                    assert orjson.loads(raw)["errors"][0]["status"] == "401"
                refused += 1
    assert refused == 3 * len(routes) and len(routes) >= 26
    assert await snapshot(client.conn) == before


async def test_tokens_are_stored_hashed(client: Client) -> None:
    """The database holds a SHA-256 of the token, never the token itself."""
    stored = await client.conn.fetchval("SELECT token_hash FROM dialer_api_token WHERE name = 'tests'")
    assert stored == hash_token(client.token) and client.token.encode() not in stored


async def test_health_metrics_and_openapi_need_no_token(client: Client) -> None:
    """Probes, scrapes and the API description are public; everything under /v1 is not."""
    async with aiohttp.ClientSession(base_url=str(client.http._base_url)) as anon:
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            async with anon.get(path) as resp:
                assert resp.status == 200, path


# --- campaigns -----------------------------------------------------------------------------


def assert_settings(attributes: dict[str, Any], expected: dict[str, Any]) -> None:
    """Every expected setting reads back as written (times as instants, hours as windows)."""
    for field, value in expected.items():
        got = attributes[field]
        if field in ("starts_at", "ends_at"):
            assert dt.datetime.fromisoformat(got) == dt.datetime.fromisoformat(value), field
        elif field == "business_hours":
            keys = ("day_of_week", "time_open", "time_close")
            windows = sorted(tuple(h[k] for k in keys) for h in got)
            assert windows == sorted(tuple(h[k] for k in keys) for h in value), field
        else:
            assert got == value, field


async def test_campaign_create_read_list_update_delete(client: Client) -> None:
    """Every pacing setting round-trips through create and through update, and the campaign can be deleted."""
    created = {
        "provider": "twilio",
        "caller_id": "+14155550100",
        "ring_timeout_seconds": 25,
        "retry_wait_seconds": 120,
        "max_retries": 3,
        "max_concurrent_calls": 7,
        "max_calls_per_second": 2,
        "time_zone": "America/New_York",
        "business_hours": [
            *({"day_of_week": d, "time_open": 900, "time_close": 1700} for d in range(1, 6)),
            {"day_of_week": 5, "time_open": 2200, "time_close": 600},  # overnight Friday
        ],
        "starts_at": "2026-12-01T09:00:00-05:00",
        "ends_at": "2026-12-31T17:00:00-05:00",
        "webhook_url": "https://crm.example.com/hooks/dialer",
    }
    cid = await create(client, **created)
    status, doc = await client.call("GET", f"/v1/campaigns/{cid}")
    assert status == 200 and doc["data"]["attributes"]["status"] == "created"
    assert_settings(doc["data"]["attributes"], created)

    updated = {
        "provider": "simulator",
        "caller_id": "+12125550100",
        "ring_timeout_seconds": 40,
        "retry_wait_seconds": 900,
        "max_retries": 5,
        "max_concurrent_calls": 11,
        "max_calls_per_second": 4,
        "time_zone": "Europe/Paris",
        "business_hours": [
            {"day_of_week": 6, "time_open": 2300, "time_close": 700},  # overnight Saturday
            {"day_of_week": 0, "time_open": 1000, "time_close": 1400},
        ],
        "starts_at": "2027-01-04T08:00:00+01:00",
        "ends_at": "2027-02-01T18:00:00+01:00",
    }
    status, doc = await client.call(
        "PATCH", f"/v1/campaigns/{cid}", {"data": {"type": "campaigns", "attributes": updated}}
    )
    assert status == 200, doc
    assert_settings(doc["data"]["attributes"], updated)
    status, doc = await client.call("GET", f"/v1/campaigns/{cid}")
    assert_settings(doc["data"]["attributes"], updated)

    status, doc = await client.call(
        "PATCH", f"/v1/campaigns/{cid}", {"data": {"type": "campaigns", "attributes": {"max_retries": 6}}}
    )
    assert status == 200
    assert_settings(doc["data"]["attributes"], {**updated, "max_retries": 6})  # untouched settings stay
    assert doc["data"]["attributes"]["webhook_url"] == created["webhook_url"]

    status, doc = await client.call("GET", "/v1/campaigns?name=spring")
    assert status == 200 and [d["id"] for d in doc["data"]] == [cid]
    assert doc["links"]["next"] is None and doc["meta"]["total"] == 1

    assert (await client.call("DELETE", f"/v1/campaigns/{cid}"))[0] == 204
    assert (await client.call("GET", f"/v1/campaigns/{cid}"))[0] == 404


@pytest.mark.parametrize(
    ("attributes", "pointer"),
    [
        ({"ring_timeout_seconds": 2}, "/data/attributes/ring_timeout_seconds"),
        ({"max_concurrent_calls": "10"}, "/data/attributes/max_concurrent_calls"),
        ({"time_zone": "Mars/Olympus"}, "/data/attributes/time_zone"),
        ({"caller_id": "12345"}, "/data/attributes/caller_id"),
        (
            {"business_hours": [{"day_of_week": 9, "time_open": 900, "time_close": 1700}]},
            "/data/attributes/business_hours",
        ),
        ({"starts_at": "tomorrow"}, "/data/attributes/starts_at"),
        (
            {"starts_at": "2026-12-02T00:00:00+00:00", "ends_at": "2026-12-01T00:00:00+00:00"},
            "/data/attributes/ends_at",
        ),
        ({"provider": "nosuch"}, "/data/attributes/provider"),
        ({"webhook_url": "ftp://x"}, "/data/attributes/webhook_url"),
        ({"colour": "red"}, "/data/attributes/colour"),
    ],
)
async def test_a_bad_campaign_field_gets_422_with_a_pointer_and_changes_nothing(
    client: Client, attributes: dict[str, Any], pointer: str
) -> None:
    """Each impossible setting is named by a JSON pointer; nothing is created."""
    before = await counts(client.conn)
    status, doc = await client.call("POST", "/v1/campaigns", campaign_doc(**attributes))
    assert status == 422, doc
    assert pointer in [e["source"]["pointer"] for e in doc["errors"]]
    assert await counts(client.conn) == before


async def test_malformed_json_and_wrong_media_type_are_refused(client: Client) -> None:
    """Bodies that are not JSON documents get 400/415, never 500."""
    async with client.http.post("/v1/campaigns", data=b"{nope", headers={"Content-Type": JSONAPI}) as resp:
        assert resp.status == 400
    async with client.http.post(
        "/v1/campaigns", data=b"name=x", headers={"Content-Type": "text/plain"}
    ) as resp:
        assert resp.status == 415
    assert (await client.call("POST", "/v1/campaigns", [1, 2]))[0] == 422


async def test_duplicate_campaign_name_is_a_conflict(client: Client) -> None:
    """Names are unique; the second create is a 409, not a second campaign."""
    await create(client)
    status, doc = await client.call("POST", "/v1/campaigns", campaign_doc())
    assert status == 409 and doc["errors"][0]["source"]["pointer"] == "/data/attributes/name"


async def test_actions_follow_the_campaign_state_machine(client: Client) -> None:
    """start → pause → resume → stop works; an impossible transition is a 409."""
    cid = await create(client)
    for action, expected in (
        ("start", "running"),
        ("pause", "paused"),
        ("resume", "running"),
        ("stop", "stopped"),
    ):
        status, doc = await client.call("POST", f"/v1/campaigns/{cid}/actions/{action}")
        assert status == 200 and doc["data"]["attributes"]["status"] == expected
    status, _ = await client.call("POST", f"/v1/campaigns/{cid}/actions/resume")
    assert status == 409
    assert (await client.call("POST", f"/v1/campaigns/{cid}/actions/explode"))[0] == 404


async def test_a_running_campaign_cannot_be_deleted(client: Client) -> None:
    """Deleting would drop live work and CDRs: it must be stopped first."""
    cid = await create(client)
    await client.call("POST", f"/v1/campaigns/{cid}/actions/start")
    assert (await client.call("DELETE", f"/v1/campaigns/{cid}"))[0] == 409
    assert (await client.call("GET", f"/v1/campaigns/{cid}"))[0] == 200


async def test_a_campaign_with_undelivered_webhook_events_cannot_be_deleted(client: Client) -> None:
    """Pending or retrying events would be lost with the campaign: 409 until each is delivered or given up."""
    cid = await create(client, webhook_url="https://crm.example.com/hook")
    await _dial_and_finish(client, cid, 4)
    await client.call("POST", f"/v1/campaigns/{cid}/actions/stop")
    # One event in its retry backoff, one never tried yet.
    await client.conn.execute(
        "UPDATE dialer_webhook_event SET attempts = 2, last_status = 503 WHERE id = "
        "(SELECT min(id::text)::uuid FROM dialer_webhook_event)"
    )
    assert await client.conn.fetchval("SELECT count(*) FROM dialer_webhook_event") == 2
    before = await snapshot(client.conn)
    status, doc = await client.call("DELETE", f"/v1/campaigns/{cid}")
    assert status == 409, doc
    assert doc["errors"][0]["title"] == "Undelivered webhook events"
    assert "webhook event" in doc["errors"][0]["detail"]
    assert doc["meta"] == {"undelivered_webhook_events": 2}
    assert await snapshot(client.conn) == before

    await client.conn.execute("UPDATE dialer_webhook_event SET delivered_at = $1 WHERE attempts = 0", NOW)
    assert (await client.call("DELETE", f"/v1/campaigns/{cid}"))[0] == 409
    await client.conn.execute("UPDATE dialer_webhook_event SET gave_up_at = $1 WHERE attempts = 2", NOW)
    assert (await client.call("DELETE", f"/v1/campaigns/{cid}"))[0] == 204
    assert await client.conn.fetchval("SELECT count(*) FROM dialer_campaign WHERE id = $1", int(cid)) == 0


async def test_an_event_committing_during_a_delete_is_kept(client: Client, pool: asyncpg.Pool) -> None:
    """A delete waits for an outcome's transaction still writing an event, then refuses instead of losing it."""
    cid = await create(client, webhook_url="https://crm.example.com/hook")
    async with pool.acquire() as writer:
        outcome = writer.transaction()
        await outcome.start()
        await writer.execute(
            "INSERT INTO dialer_webhook_event (campaign_id, type, payload, created_at, next_attempt_at)"
            " VALUES ($1, 'number.finished', '{}'::jsonb, $2, $2)",
            int(cid),
            NOW,
        )
        delete = asyncio.create_task(client.call("DELETE", f"/v1/campaigns/{cid}"))
        for _ in range(500):
            waiting = await client.conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            )
            if waiting or delete.done():
                break
            await asyncio.sleep(0.01)
        assert waiting == 1 and not delete.done()
        await outcome.commit()
    status, _ = await delete
    assert status == 409
    assert await client.conn.fetchval("SELECT count(*) FROM dialer_webhook_event") == 1


async def test_changing_hours_clears_the_window_so_it_is_recomputed(client: Client) -> None:
    """A new time zone or new hours take effect at the next maintenance tick, not at the old window's end."""
    cid = await create(client)
    await client.call("POST", f"/v1/campaigns/{cid}/actions/start")
    await open_window(client.conn, int(cid))
    await client.call(
        "PATCH", f"/v1/campaigns/{cid}", {"data": {"type": "campaigns", "attributes": {"max_retries": 1}}}
    )
    assert await client.conn.fetchval("SELECT window_opens_at FROM dialer_campaign WHERE id = $1", int(cid))
    await client.call(
        "PATCH",
        f"/v1/campaigns/{cid}",
        {"data": {"type": "campaigns", "attributes": {"time_zone": "Asia/Tokyo"}}},
    )
    assert (
        await client.conn.fetchval("SELECT window_opens_at FROM dialer_campaign WHERE id = $1", int(cid))
        is None
    )


async def test_pagination_links_walk_every_page(client: Client) -> None:
    """page[number]/page[size] with self/next/last links, as the Upcall seed shows them."""
    for i in range(5):
        await create(client, name=f"c{i}")
    seen: list[str] = []
    path: str | None = "/v1/campaigns?page[size]=2"
    while path:
        status, doc = await client.call("GET", path)
        assert status == 200
        seen += [d["id"] for d in doc["data"]]
        last = yarl.URL(doc["links"]["last"]).query
        assert (last["page[number]"], last["page[size]"]) == ("3", "2")
        path = doc["links"]["next"]
    assert len(seen) == 5 == len(set(seen))
    assert (await client.call("GET", "/v1/campaigns?page[size]=0"))[0] == 400


# --- numbers -------------------------------------------------------------------------------


async def test_a_batch_is_added_and_the_same_client_token_adds_nothing_twice(client: Client) -> None:
    """Idempotent batches: the repeat returns the first result and writes nothing."""
    cid = await create(client)
    body = numbers_doc([phone(i) for i in range(100)], client_token="batch-1")
    status, first = await client.call("POST", f"/v1/campaigns/{cid}/numbers", body)
    assert status == 201 and first["meta"]["added"] == 100
    status, again = await client.call("POST", f"/v1/campaigns/{cid}/numbers", body)
    assert status == 201 and again["meta"]["replayed"] is True and again["meta"]["added"] == 100
    assert again["data"] == first["data"]
    assert await client.conn.fetchval("SELECT count(*) FROM dialer_number") == 100
    other = numbers_doc([phone(500)], client_token="batch-1")
    status, doc = await client.call("POST", f"/v1/campaigns/{cid}/numbers", other)
    assert status == 422 and doc["errors"][0]["source"]["pointer"] == "/meta/client_token"


async def test_a_replay_answers_with_the_status_of_the_first_response(client: Client) -> None:
    """A first answer of 200 (nothing new) replays as 200, a first 201 as 201, both marked replayed."""
    cid = await create(client)
    await client.call("POST", f"/v1/campaigns/{cid}/numbers", numbers_doc([phone(1)]))
    path = f"/v1/campaigns/{cid}/numbers"
    for body, expected in (
        (numbers_doc([phone(1)], client_token="dup"), 200),
        (numbers_doc([phone(2)], client_token="new"), 201),
    ):
        statuses = []
        for _ in range(2):
            status, doc = await client.call("POST", path, body)
            statuses.append((status, doc["meta"]["replayed"]))
        assert statuses == [(expected, False), (expected, True)]


async def test_idempotency_key_header_works_like_the_client_token(client: Client) -> None:
    """The Idempotency-Key header is the same guarantee for clients that prefer headers."""
    cid = await create(client)
    body = numbers_doc([phone(1)])
    for replayed in (False, True):
        status, doc = await client.call(
            "POST", f"/v1/campaigns/{cid}/numbers", body, headers={"Idempotency-Key": "k1"}
        )
        assert status == 201 and doc["meta"]["replayed"] is replayed
    assert (
        await client.conn.fetchval(
            "SELECT count(*) FROM api_r FROM dialer_api_request".replace("api_r FROM ", "")
        )
        == 1
    )


async def test_one_number_as_a_resource_object_is_added_like_a_batch_of_one(client: Client) -> None:
    """`data` may be one number object: same answer shape as a batch, pointers without an index."""
    cid = await create(client)
    path = f"/v1/campaigns/{cid}/numbers"
    one = {
        "data": {"type": "numbers", "attributes": {"phone": phone(1), "dtmf": "1#"}},
        "meta": {"client_token": "one"},
    }
    status, doc = await client.call("POST", path, one)
    assert status == 201, doc
    assert doc["data"]["type"] == "campaigns" and doc["data"]["id"] == cid
    assert doc["meta"] | {"replayed": False} == {
        "received": 1,
        "accepted": 1,
        "rejected": 0,
        "added": 1,
        "duplicates": 0,
        "errors": [],
        "replayed": False,
    }
    status, again = await client.call("POST", path, one)
    assert status == 201 and again["meta"]["replayed"] is True
    status, batch = await client.call("POST", path, numbers_doc([phone(2)]))
    assert status == 201 and batch.keys() == doc.keys() and batch["meta"].keys() == doc["meta"].keys()
    rows = await client.conn.fetch("SELECT phone, dtmf FROM dialer_number ORDER BY phone")
    assert [(r["phone"], r["dtmf"]) for r in rows] == [(phone(1), "1#"), (phone(2), None)]

    bad = {"data": {"type": "numbers", "attributes": {"phone": "+1555"}}}
    status, doc = await client.call("POST", path, bad)
    assert status == 422 and [e["source"]["pointer"] for e in doc["errors"]] == ["/data/attributes/phone"]
    status, doc = await client.call("POST", path, {**bad, "meta": {"partial": True}})
    assert status == 200 and doc["meta"]["added"] == 0
    assert doc["meta"]["errors"][0]["source"]["pointer"] == "/data/attributes/phone"
    status, doc = await client.call("POST", path, {"data": {"type": "suppressions", "attributes": {}}})
    assert status == 422 and doc["errors"][0]["source"]["pointer"] == "/data"
    assert await client.conn.fetchval("SELECT count(*) FROM dialer_number") == 2


async def test_ten_thousand_numbers_in_one_request(client: Client) -> None:
    """The batch limit is at least 10,000; one more is refused with 413 and nothing is added."""
    cid = await create(client)
    status, doc = await client.call(
        "POST", f"/v1/campaigns/{cid}/numbers", numbers_doc([phone(i) for i in range(10_000)])
    )
    assert status == 201 and doc["meta"]["added"] == 10_000
    status, _ = await client.call(
        "POST", f"/v1/campaigns/{cid}/numbers", numbers_doc([phone(i) for i in range(10_001)])
    )
    assert status == 413
    assert await client.conn.fetchval("SELECT count(*) FROM dialer_number") == 10_000


async def test_a_batch_with_a_bad_number_is_rejected_whole_with_pointers(client: Client) -> None:
    """Without partial acceptance one bad item rejects the batch and names every bad item."""
    cid = await create(client)
    phones = [phone(1), "+1555", phone(2), "not a number"]
    status, doc = await client.call("POST", f"/v1/campaigns/{cid}/numbers", numbers_doc(phones))
    assert status == 422
    assert [e["source"]["pointer"] for e in doc["errors"]] == [
        "/data/1/attributes/phone",
        "/data/3/attributes/phone",
    ]
    assert await client.conn.fetchval("SELECT count(*) FROM dialer_number") == 0


async def test_partial_acceptance_returns_per_item_errors(client: Client) -> None:
    """With meta.partial the valid items are added and each bad one is reported, none dropped silently."""
    cid = await create(client)
    phones = [phone(1), "+1555", phone(2)]
    status, doc = await client.call("POST", f"/v1/campaigns/{cid}/numbers", numbers_doc(phones, partial=True))
    assert status == 201
    assert doc["meta"]["added"] == 2 and doc["meta"]["rejected"] == 1
    assert doc["meta"]["errors"][0]["source"]["pointer"] == "/data/1/attributes/phone"


async def test_number_attributes_are_validated_and_stored(client: Client) -> None:
    """caller id, DTMF, priority and payload travel with the number; bad ones are named."""
    cid = await create(client)
    item = {
        "phone": "2125550123",
        "caller_id": "+14155550100",
        "dtmf": "12#",
        "priority": 5,
        "payload": {"crm": 7},
    }
    body = {"data": [{"type": "numbers", "attributes": item}], "meta": {"default_region": "US"}}
    status, _ = await client.call("POST", f"/v1/campaigns/{cid}/numbers", body)
    assert status == 201
    row = await client.conn.fetchrow("SELECT * FROM dialer_number")
    assert row["phone"] == "+12125550123" and row["dtmf"] == "12#" and row["priority"] == 5
    assert row["payload"] == {"crm": 7}
    bad = {"phone": phone(9), "dtmf": "12x", "priority": 5000}
    status, doc = await client.call(
        "POST", f"/v1/campaigns/{cid}/numbers", {"data": [{"type": "numbers", "attributes": bad}]}
    )
    assert status == 422
    assert {e["source"]["pointer"] for e in doc["errors"]} == {
        "/data/0/attributes/dtmf",
        "/data/0/attributes/priority",
    }


async def test_number_time_zone_from_upstream(client: Client) -> None:
    """time_zone (the lead's address) joins the number's zones, visible as callee_zones; an unknown
    one is named at its pointer, and with meta.partial only that number is left out."""
    cid = await create(client)
    path = f"/v1/campaigns/{cid}/numbers"
    item = {"type": "numbers", "attributes": {"phone": phone(1), "time_zone": "America/Chicago"}}
    status, _ = await client.call("POST", path, {"data": [item]})
    assert status == 201
    status, doc = await client.call("GET", f"{path}?phone={phone(1)}")
    assert status == 200 and doc["data"][0]["attributes"]["callee_zones"] == [
        "America/New_York",
        "America/Chicago",
    ]
    bad = {"type": "numbers", "attributes": {"phone": phone(2), "time_zone": "Mars/Olympus_Mons"}}
    good = {"type": "numbers", "attributes": {"phone": phone(3), "time_zone": None}}
    status, doc = await client.call("POST", path, {"data": [good, bad]})
    assert status == 422
    assert [(e["source"]["pointer"], e["detail"]) for e in doc["errors"]] == [
        ("/data/1/attributes/time_zone", "unknown time zone 'Mars/Olympus_Mons'")
    ]
    assert await client.conn.fetchval("SELECT count(*) FROM dialer_number") == 1
    status, doc = await client.call("POST", path, {"data": [good, bad], "meta": {"partial": True}})
    assert status == 201 and (doc["meta"]["added"], doc["meta"]["rejected"]) == (1, 1)


async def test_numbers_list_filters_by_upcall_status_and_phone(client: Client) -> None:
    """status=untried|incompleted|completed|voicemail|… and phone filter the campaign's numbers."""
    cid = await create(client)
    await client.call("POST", f"/v1/campaigns/{cid}/numbers", numbers_doc([phone(i) for i in range(4)]))
    await client.conn.execute(
        "UPDATE dialer_number SET status = 'completed', last_outcome = 'answered_machine' WHERE phone = $1",
        phone(0),
    )
    await client.conn.execute(
        "UPDATE dialer_number SET status = 'completed', last_outcome = 'answered_human' WHERE phone = $1",
        phone(1),
    )
    await client.conn.execute("UPDATE dialer_number SET status = 'retry_wait' WHERE phone = $1", phone(2))

    async def phones(query: str) -> list[str]:
        status, doc = await client.call("GET", f"/v1/campaigns/{cid}/numbers?{query}")
        assert status == 200, doc
        return [d["attributes"]["phone"] for d in doc["data"]]

    assert await phones("status=voicemail") == [phone(0)]
    assert await phones("status=completed") == [phone(1)]
    assert await phones("status=incompleted") == [phone(2)]
    assert await phones("status=untried") == [phone(3)]
    assert await phones(f"phone={phone(2).replace('+', '%2B')}") == [phone(2)]
    assert (await client.call("GET", f"/v1/campaigns/{cid}/numbers?status=bogus"))[0] == 400


async def test_a_number_shows_its_attempt_history_and_only_undialed_numbers_can_be_removed(
    client: Client,
) -> None:
    """GET /v1/numbers/{id} includes its calls; DELETE works before the first dial only."""
    cid = await create(client)
    await client.call("POST", f"/v1/campaigns/{cid}/actions/start")
    await open_window(client.conn, int(cid))
    await client.call("POST", f"/v1/campaigns/{cid}/numbers", numbers_doc([phone(1), phone(2)]))
    claimed = await client.conn.fetch(Q.claim, WORKER, 1, NOW, 30, [])
    dialed = claimed[0]["number_id"]
    untouched = await client.conn.fetchval("SELECT id FROM dialer_number WHERE id <> $1", dialed)
    status, doc = await client.call("GET", f"/v1/numbers/{dialed}")
    assert status == 200 and len(doc["included"]) == 1 and doc["included"][0]["type"] == "calls"
    assert doc["data"]["relationships"]["calls"]["data"][0]["id"] == str(claimed[0]["attempt_id"])
    assert (await client.call("DELETE", f"/v1/numbers/{dialed}"))[0] == 409
    assert (await client.call("DELETE", f"/v1/numbers/{untouched}"))[0] == 204
    assert (await client.call("GET", f"/v1/numbers/{untouched}"))[0] == 404


# --- uploads -------------------------------------------------------------------------------


def _csv(n: int, start: int = 0) -> bytes:
    return "".join(f"{phone(start + i)},+14155550100,1#\r\n" for i in range(n)).encode()


@pytest.mark.parametrize("kind", ["csv", "txt", "gz", "zip", "multipart"])
async def test_upload_accepts_csv_txt_gz_zip_and_a_form_field(client: Client, kind: str) -> None:
    """The Paycall upload_phones formats, as a raw body or the form's `numbers` field."""
    cid = await create(client)
    data = _csv(50)
    path = f"/v1/campaigns/{cid}/numbers/upload"
    if kind == "multipart":
        form = aiohttp.FormData()
        form.add_field("numbers", data, filename="list.csv", content_type="text/csv")
        async with client.http.post(path, data=form) as resp:
            status, doc = resp.status, orjson.loads(await resp.read())
    else:
        if kind == "gz":
            data, ctype = gzip.compress(data), "application/gzip"
        elif kind == "zip":
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as z:
                z.writestr("list.csv", data)
            data, ctype = buf.getvalue(), "application/zip"
        else:
            ctype = "text/csv" if kind == "csv" else "text/plain"
        async with client.http.post(path, data=data, headers={"Content-Type": ctype}) as resp:
            status, doc = resp.status, orjson.loads(await resp.read())
    assert status == 201, doc
    assert doc["meta"]["added"] == 50
    row = await client.conn.fetchrow("SELECT caller_id, dtmf FROM dialer_number LIMIT 1")
    assert row["caller_id"] == "+14155550100" and row["dtmf"] == "1#"


async def test_an_upload_with_bad_rows_is_rejected_whole_unless_partial(client: Client) -> None:
    """Bad lines are listed by line number; without partial=true nothing of the file is queued."""
    cid = await create(client)
    data = _csv(3) + b"12345\r\n" + _csv(2, start=10)
    path = f"/v1/campaigns/{cid}/numbers/upload"
    async with client.http.post(path, data=data, headers={"Content-Type": "text/csv"}) as resp:
        assert resp.status == 422
        doc = orjson.loads(await resp.read())
    assert doc["errors"][0]["meta"]["line"] == 4
    assert await client.conn.fetchval("SELECT count(*) FROM dialer_number") == 0
    async with client.http.post(
        path + "?partial=true", data=data, headers={"Content-Type": "text/csv"}
    ) as resp:
        assert resp.status == 201
        doc = orjson.loads(await resp.read())
    assert doc["meta"]["added"] == 5 and doc["meta"]["invalid"] == 1


async def test_a_malformed_or_oversized_upload_is_refused(client: Client) -> None:
    """A binary file, a corrupt zip or a body over the limit gets 4xx and adds nothing."""
    cid = await create(client)
    path = f"/v1/campaigns/{cid}/numbers/upload"
    for data, ctype in (
        (b"PK\x03\x04garbage", "application/zip"),
        (b"\x00\x01\x02" * 10, "application/octet-stream"),
    ):
        async with client.http.post(path, data=data, headers={"Content-Type": ctype}) as resp:
            assert resp.status == 422, await resp.text()
    big = b"+12125550100\r\n" * (3 * 1024 * 1024 // 14)
    async with client.http.post(path, data=big, headers={"Content-Type": "text/csv"}) as resp:
        assert resp.status == 413
    assert await client.conn.fetchval("SELECT count(*) FROM dialer_number") == 0


async def test_an_upload_with_a_client_token_is_applied_once(client: Client) -> None:
    """Re-sending the same file with the same token replays the first answer."""
    cid = await create(client)
    path = f"/v1/campaigns/{cid}/numbers/upload?client_token=file-1"
    for expected in (False, True):
        async with client.http.post(path, data=_csv(20), headers={"Content-Type": "text/csv"}) as resp:
            status, doc = resp.status, orjson.loads(await resp.read())
        assert status == 201 and doc["meta"]["replayed"] is expected and doc["meta"]["added"] == 20
    assert await client.conn.fetchval("SELECT count(*) FROM dialer_number") == 20


# --- enqueue from SQL ---------------------------------------------------------------------


async def test_sql_enqueue_inside_an_upstream_transaction(client: Client) -> None:
    """dialer_enqueue() commits or rolls back with the caller's own transaction."""
    await create(client)
    conn = client.conn
    try:
        async with conn.transaction():
            await conn.execute("CREATE TABLE crm_lead (id int)")
            await conn.execute("INSERT INTO crm_lead VALUES (1)")
            await conn.fetchval("SELECT dialer_enqueue('spring', $1::jsonb)", [phone(1), {"phone": phone(2)}])
            raise RuntimeError("upstream rolls back")
    except RuntimeError:
        pass
    assert await conn.fetchval("SELECT count(*) FROM dialer_number") == 0
    async with conn.transaction():
        result = await conn.fetchval(
            "SELECT dialer_enqueue('spring', $1::jsonb, 'tok-1')",
            [phone(1), {"phone": phone(2), "priority": 3}],
        )
    assert result["added"] == 2
    again = await conn.fetchval(
        "SELECT dialer_enqueue('spring', $1::jsonb, 'tok-1')", [phone(1), {"phone": phone(2), "priority": 3}]
    )
    assert again["replayed"] is True and await conn.fetchval("SELECT count(*) FROM dialer_number") == 2


async def test_sql_enqueue_validates_like_the_http_route(client: Client) -> None:
    """Invalid numbers (per phonenumbers' metadata, not just the E.164 shape) reject the whole call."""
    await create(client)
    # +1 555 0100 is E.164-shaped but not a valid NANP number; the HTTP route refuses it too.
    items = [phone(1), "+15550100999", {"phone": phone(2), "dtmf": "x"}]
    with pytest.raises(asyncpg.InvalidParameterValueError) as info:
        await client.conn.fetchval("SELECT dialer_enqueue('spring', $1::jsonb)", items)
    bad = orjson.loads(info.value.detail)
    assert [b["index"] for b in bad] == [1, 2]
    assert await client.conn.fetchval("SELECT count(*) FROM dialer_number") == 0
    cid = await client.conn.fetchval("SELECT id FROM dialer_campaign")
    status, _ = await client.call("POST", f"/v1/campaigns/{cid}/numbers", numbers_doc(["+15550100999"]))
    assert status == 422
    with pytest.raises(asyncpg.ProgramLimitExceededError):
        await client.conn.fetchval(
            "SELECT dialer_enqueue('spring', $1::jsonb)", [phone(i) for i in range(10_001)]
        )


# --- suppression --------------------------------------------------------------------------


async def test_suppression_add_check_list_and_remove(client: Client) -> None:
    """Global and per-campaign do-not-call entries; adding one twice is a no-op."""
    cid = await create(client)
    body = {"data": {"type": "suppressions", "attributes": {"phone": phone(1), "reason": "asked"}}}
    status, doc = await client.call("POST", "/v1/suppressions", body)
    assert status == 201 and doc["data"]["attributes"]["campaign_id"] is None
    sid = doc["data"]["id"]
    status, doc = await client.call("POST", "/v1/suppressions", body)
    assert status == 200 and doc["data"]["id"] == sid
    batch = {
        "data": [
            {"type": "suppressions", "attributes": {"phone": phone(i), "campaign_id": cid}} for i in (2, 3)
        ]
    }
    assert (await client.call("POST", "/v1/suppressions", batch))[0] == 201

    status, doc = await client.call(
        "GET", f"/v1/suppressions/check?phone={phone(2).replace('+', '%2B')}&campaign={cid}"
    )
    assert doc["data"]["attributes"]["suppressed"] is True
    status, doc = await client.call("GET", f"/v1/suppressions/check?phone={phone(2).replace('+', '%2B')}")
    assert doc["data"]["attributes"]["suppressed"] is False  # only suppressed in that campaign
    status, doc = await client.call("GET", "/v1/suppressions?scope=campaign")
    assert doc["meta"]["total"] == 2
    assert (await client.call("DELETE", f"/v1/suppressions/{sid}"))[0] == 204
    status, doc = await client.call("GET", f"/v1/suppressions/check?phone={phone(1).replace('+', '%2B')}")
    assert doc["data"]["attributes"]["suppressed"] is False


async def test_a_suppression_added_after_enqueue_still_wins_at_dispatch(client: Client) -> None:
    """The claim checks suppression: the number is closed as dnc and never dialed."""
    cid = await create(client, webhook_url="https://crm.example.com/hook")
    await client.call("POST", f"/v1/campaigns/{cid}/actions/start")
    await open_window(client.conn, int(cid))
    await client.call("POST", f"/v1/campaigns/{cid}/numbers", numbers_doc([phone(i) for i in range(3)]))
    await client.call(
        "POST", "/v1/suppressions", {"data": {"type": "suppressions", "attributes": {"phone": phone(1)}}}
    )
    await client.call(
        "POST",
        "/v1/suppressions",
        {"data": {"type": "suppressions", "attributes": {"phone": phone(2), "campaign_id": cid}}},
    )
    claimed = await client.conn.fetch(Q.claim, WORKER, 10, NOW, 30, [])
    assert [r["phone"] for r in claimed] == [phone(0)]
    rows = await client.conn.fetch(
        "SELECT phone, status, last_outcome, dials FROM dialer_number ORDER BY phone"
    )
    assert [(r["status"], r["last_outcome"], r["dials"]) for r in rows[1:]] == [("dnc", "suppressed", 0)] * 2
    events = await client.conn.fetch("SELECT type, payload FROM dialer_webhook_event")
    assert sorted(e["payload"]["number"]["phone"] for e in events) == [phone(1), phone(2)]


async def test_bad_suppressions_change_nothing(client: Client) -> None:
    """An invalid number or an unknown campaign in a batch rejects all of it."""
    batch = {
        "data": [
            {"type": "suppressions", "attributes": {"phone": phone(1)}},
            {"type": "suppressions", "attributes": {"phone": "+1"}},
        ]
    }
    status, doc = await client.call("POST", "/v1/suppressions", batch)
    assert status == 422 and doc["errors"][0]["source"]["pointer"] == "/data/1/attributes/phone"
    one = {"data": {"type": "suppressions", "attributes": {"phone": phone(1), "campaign_id": "999"}}}
    assert (await client.call("POST", "/v1/suppressions", one))[0] == 422
    assert (await counts(client.conn))[2] == 0


# --- calls, CDR, status -------------------------------------------------------------------


async def _dial_and_finish(client: Client, cid: str, n: int) -> list[asyncpg.Record]:
    await client.call("POST", f"/v1/campaigns/{cid}/actions/start")
    await open_window(client.conn, int(cid))
    await client.call("POST", f"/v1/campaigns/{cid}/numbers", numbers_doc([phone(i) for i in range(n)]))
    claimed = await client.conn.fetch(Q.claim, WORKER, n, NOW, 30, [])
    outcomes = ["answered_human", "busy", "no_answer", "answered_machine"]
    ids = [r["attempt_id"] for r in claimed]
    chosen = [outcomes[i % 4] for i in range(len(ids))]
    final = [o.startswith("answered") for o in chosen]
    ended = [NOW + dt.timedelta(seconds=20 + i) for i in range(len(ids))]
    answered = [NOW + dt.timedelta(seconds=5) if f else None for f in final]
    await client.conn.fetch(
        Q.record_outcomes,
        ids,
        chosen,
        final,
        [True] * len(ids),
        ["completed"] * len(ids),
        answered,
        ended,
        [float(20 + i) for i in range(len(ids))],
        [15 if f else 0 for f in final],
        ["completed" if f else o for f, o in zip(final, chosen, strict=True)],
        ["NORMAL_CLEARING" if f else None for f in final],
        [None] * len(ids),
        [f"call-{i}" for i in range(len(ids))],
        NOW,
        30,
    )
    return claimed


async def test_calls_list_filters_and_one_call(client: Client) -> None:
    """Calls filter by status, campaign, number, duration and time range."""
    cid = await create(client, max_concurrent_calls=100_000, max_calls_per_second=10_000)
    claimed = await _dial_and_finish(client, cid, 8)

    async def total(query: str) -> int:
        status, doc = await client.call("GET", f"/v1/calls?{query}")
        assert status == 200, doc
        return int(doc["meta"]["total"]) if doc["data"] else 0

    assert await total(f"campaign={cid}") == 8
    assert await total("status=busy") == 2
    assert await total("status=ended") == 8
    assert await total("min_duration=24") == 4
    assert await total("max_duration=21.5") == 2
    assert await total(f"phone={phone(3).replace('+', '%2B')}") == 1
    assert await total("started_after=2026-11-25T15:00:01%2B00:00") == 0
    assert await total("started_before=2026-11-25T15:00:01%2B00:00") == 8
    assert (await client.call("GET", "/v1/calls?min_duration=abc"))[0] == 400
    status, doc = await client.call("GET", f"/v1/calls/{claimed[0]['attempt_id']}")
    assert status == 200 and doc["data"]["attributes"]["outcome"] == "answered_human"
    assert (await client.call("GET", f"/v1/calls/{uuid.uuid4()}"))[0] == 404
    assert (await client.call("GET", "/v1/calls/not-a-uuid"))[0] == 404


async def test_cdr_csv_has_the_paycall_columns_quoted_with_crlf(client: Client) -> None:
    """The export is the seed's cdr_by_campaign format, and the Paycall CDR parser reads it back."""
    cid = await create(client, max_concurrent_calls=100_000, max_calls_per_second=10_000)
    claimed = await _dial_and_finish(client, cid, 4)
    async with client.http.get(f"/v1/campaigns/{cid}/cdr.csv") as resp:
        assert resp.status == 200 and resp.content_type == "text/csv"
        raw = await resp.read()
    text = raw.decode()
    assert text.startswith(
        '"cli","phone_number","start_time","answer_time","hangup_time","duration","billsec",'
    )
    assert text.count("\r\n") == 5 and "\n" not in text.replace("\r\n", "")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["hangup_cause"] for r in rows} == {"NORMAL_CLEARING", "USER_BUSY", "NO_ANSWER"}
    assert rows[0]["start_time"] == "2026-11-25 15:00:00+00"
    assert {orjson.loads(r["steps"])["unique_id"] for r in rows} == {str(r["attempt_id"]) for r in claimed}
    assert {r["unique_campaign_id"] for r in rows} == {cid}
    async with client.http.get(f"/v1/cdr.csv?phone={phone(1).replace('+', '%2B')}") as resp:
        assert len((await resp.read()).decode().strip().split("\r\n")) == 2
    assert (await client.call("GET", "/v1/cdr.csv"))[0] == 400


async def test_cdr_export_streams_in_constant_memory(client: Client) -> None:
    """The export reads through a cursor and writes in chunks: many rows arrive over several writes."""
    cid = await create(client, max_concurrent_calls=100_000, max_calls_per_second=10_000)
    await _dial_and_finish(client, cid, 5000)
    chunks = 0
    lines = 0
    async with client.http.get(f"/v1/campaigns/{cid}/cdr.csv") as resp:
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        async for chunk in resp.content.iter_any():
            chunks += 1
            lines += chunk.count(b"\r\n")
    assert lines == 5001 and chunks > 1


async def test_campaign_status_counters(client: Client) -> None:
    """Totals, done, percent, answered, average duration and retries by cause, like Sendr's status."""
    cid = await create(client, max_concurrent_calls=100_000, max_calls_per_second=10_000)
    await _dial_and_finish(client, cid, 8)
    status, doc = await client.call("GET", f"/v1/campaigns/{cid}/status")
    a = doc["data"]["attributes"]
    assert status == 200
    assert a["items_total"] == 8 and a["items_done"] == 4 and a["percent"] == 50.0
    assert a["calls"] == 8 and a["active_calls"] == 0 and a["answered"] == 4
    assert a["average_call_seconds"] == 15.0
    assert a["retries_by_cause"] == {"busy": 2, "no_answer": 2}
    assert a["outcomes"]["answered_machine"] == 2


async def test_every_route_is_in_the_openapi_document(client: Client) -> None:
    """The OpenAPI document lists exactly the routes the server has."""
    from dialer.openapi import spec

    documented = {(m.upper(), p) for p, item in spec()["paths"].items() for m in item if m != "parameters"}
    served = {(m, p) for m, p, _ in api_mod.ROUTES if p.startswith("/v1")}
    assert documented == served


async def test_api_metrics_use_route_templates_not_ids(client: Client) -> None:
    """Request metrics are labelled by route template, so ids never become label values."""
    cid = await create(client)
    await client.call("GET", f"/v1/campaigns/{cid}")
    async with client.http.get("/metrics") as resp:
        text = await resp.text()
    assert 'route="/v1/campaigns/{id}"' in text
    assert f'/v1/campaigns/{cid}"' not in text


async def test_an_oversized_json_body_is_refused_with_413(client: Client) -> None:
    """A JSON body over the configured limit is refused before it is parsed; nothing is written."""
    cid = await create(client)
    padding = "x" * (3 * 1024 * 1024)
    body = {"data": [{"type": "numbers", "attributes": {"phone": phone(1), "payload": {"p": padding}}}]}
    status, doc = await client.call("POST", f"/v1/campaigns/{cid}/numbers", body)
    assert status == 413 and doc["errors"][0]["status"] == "413"
    assert await client.conn.fetchval("SELECT count(*) FROM dialer_number") == 0


async def test_compliance_caps_are_read_and_set_over_the_api(client: Client) -> None:
    """The cross-campaign attempt caps are global settings: read, set, refused when impossible."""
    status, doc = await client.call("GET", "/v1/compliance")
    assert status == 200 and doc["data"]["attributes"]["max_attempts_per_24h"] is None
    body = {
        "data": {"type": "compliance", "attributes": {"max_attempts_per_24h": 3, "max_attempts_lifetime": 10}}
    }
    status, doc = await client.call("PUT", "/v1/compliance", body)
    assert status == 200 and doc["data"]["attributes"]["max_attempts_per_24h"] == 3
    bad = {"data": {"type": "compliance", "attributes": {"max_attempts_per_24h": 0}}}
    status, doc = await client.call("PUT", "/v1/compliance", bad)
    assert status == 422 and doc["errors"][0]["source"]["pointer"] == "/data/attributes/max_attempts_per_24h"
    assert await client.conn.fetchval("SELECT max_attempts_per_24h FROM dialer_compliance") == 3
