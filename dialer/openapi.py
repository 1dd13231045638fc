"""The API's OpenAPI 3.1 document, served at /openapi.json. Tests hold it to the routes and fuzz
the live API against it (schemathesis), so it cannot drift from what the server does."""

from __future__ import annotations

import functools
from typing import Any

from scheduler.outcomes import Outcome

JSONAPI = "application/vnd.api+json"
_NULLABLE_STRING = {"type": ["string", "null"]}
_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_E164 = {"type": "string", "pattern": r"^\+[1-9][0-9]{6,14}$", "examples": ["+14155550100"]}
_ID = {"type": "string", "pattern": "^[0-9]+$"}
_OUTCOMES = [o.value for o in Outcome]


def _obj(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = required
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _int(lo: int, hi: int, description: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": lo, "maximum": hi}
    if description:
        schema["description"] = description
    return schema


_HOURS_ENTRY = _obj(
    {
        "day_of_week": _int(0, 6, "0 = Sunday … 6 = Saturday"),
        "time_open": _int(0, 2359, "HHMM in the campaign's time zone"),
        "time_close": _int(0, 2359, "HHMM; at or before time_open means the window crosses midnight"),
        "work_day": {"type": "boolean"},
        "inverted": {"type": "boolean", "description": "Closed between the times instead (Retreaver)"},
    },
    ["day_of_week", "time_open", "time_close"],
    additionalProperties=False,
)

_PACING_SETTINGS = (
    "max_abandon_rate",
    "abandon_aim_fraction",
    "max_dial_ratio",
    "min_observations",
    "warm_up_seconds",
    "abandon_after_seconds",
    "wrap_up_seconds",
    "window_seconds",
    "emergency_window_answered",
    "emergency_abandon_rate",
    "base_risk_factor",
    "correction_gain",
    "max_correction",
)
_PACING_INT_SETTINGS = ("min_observations", "warm_up_seconds", "window_seconds", "emergency_window_answered")
_NULLABLE_NUMBER = {"type": ["number", "null"]}
_BY_WINDOW = _obj({w: _NULLABLE_NUMBER for w in ("24h", "30d", "lifetime")}, ["24h", "30d", "lifetime"])

_CAMPAIGN_SETTINGS: dict[str, Any] = {
    "name": {"type": "string", "minLength": 1, "maxLength": 200},
    "provider": {
        "type": "string",
        "pattern": "^[a-z0-9_-]{1,64}$",
        "description": "A configured provider account",
    },
    "caller_id": {"type": ["string", "null"], "pattern": r"^\+[1-9][0-9]{6,14}$"},
    "ring_timeout_seconds": _int(5, 300),
    "retry_wait_seconds": _int(0, 2_592_000),
    "max_retries": _int(0, 100),
    "max_concurrent_calls": _int(1, 100_000),
    "max_calls_per_second": _int(1, 10_000),
    "max_call_duration_seconds": _int(10, 86_400),
    "starts_at": _NULLABLE_TIME,
    "ends_at": _NULLABLE_TIME,
    "time_zone": {"type": "string", "description": "IANA time zone", "examples": ["America/New_York"]},
    "business_hours": {
        "type": ["array", "null"],
        "items": _HOURS_ENTRY,
        "description": "No hours means always open",
    },
    "webhook_url": {"type": ["string", "null"], "format": "uri", "maxLength": 2000},
    "webhook_attempt_events": {"type": "boolean"},
    "callee_window_start": {
        "type": ["integer", "null"],
        "minimum": 0,
        "maximum": 1439,
        "description": "Calling window start in the callee's zone(s), minutes after midnight (480 = 08:00); "
        "null together with callee_window_end: no window",
    },
    "callee_window_end": {
        "type": ["integer", "null"],
        "minimum": 1,
        "maximum": 1440,
        "description": "Window end, minutes after midnight (1260 = 21:00); at or before the start crosses midnight",
    },
    "abandon_lockout_seconds": _int(0, 31_536_000, "No redial of a phone this long after an abandoned call"),
    "amd_policy": {
        "enum": ["retry", "final"],
        "description": "Answering machine: retry after retry_wait_seconds, or final (a message was left)",
    },
    "auto_stop_conditions": {
        "type": ["object", "null"],
        "description": "CALLR Sendr AutoStopConditions: stop after N answered calls or N presses of a key",
        "properties": {
            "enabled": {"type": "boolean"},
            "per_answer_count": _obj(
                {"enabled": {"type": "boolean"}, "count": _int(0, 10_000_000)}, [], additionalProperties=False
            ),
            "per_key": _obj(
                {"enabled": {"type": "boolean"}, **{f"key_{k}": _int(0, 10_000_000) for k in range(10)}},
                [],
                additionalProperties=False,
            ),
        },
        "additionalProperties": False,
    },
    "pacing_mode": {
        "enum": ["agentless", "progressive", "predictive"],
        "description": "agentless: the fixed caps; progressive: one line per free agent; predictive: "
        "dial ahead of free agents toward an abandonment target",
    },
    "pacing_settings": {
        "type": ["object", "null"],
        "description": "Overrides of the predictive controller's settings (scheduler/PACING.md)",
        "properties": {
            name: ({"type": "integer"} if name in _PACING_INT_SETTINGS else {"type": "number"})
            for name in _PACING_SETTINGS
        },
        "additionalProperties": False,
    },
    "agents_logged_in": _int(0, 100_000, "Agents taking this campaign's calls (also PUT .../agents)"),
}

_CAMPAIGN_ATTRIBUTES = _obj(
    {
        **_CAMPAIGN_SETTINGS,
        "status": {"enum": ["created", "running", "paused", "stopped", "finished"]},
        "status_reason": _NULLABLE_STRING,
        "created_at": _TIME,
        "updated_at": _TIME,
    },
    [*_CAMPAIGN_SETTINGS, "status", "status_reason", "created_at", "updated_at"],
)

_RELATION = _obj({"data": _obj({"type": {"type": "string"}, "id": {"type": "string"}}, ["type", "id"])})

_NUMBER_ATTRIBUTES = _obj(
    {
        "phone": _E164,
        "caller_id": {"type": ["string", "null"]},
        "dtmf": _NULLABLE_STRING,
        "priority": {"type": "integer"},
        "payload": {},
        "status": {"enum": ["untried", "in_progress", "retry_wait", "completed", "failed", "dnc"]},
        "attempts": {"type": "integer", "minimum": 0},
        "dials": {"type": "integer", "minimum": 0},
        "next_attempt_at": _TIME,
        "last_outcome": _NULLABLE_STRING,
        "held_reason": {
            "enum": ["callee_window", "attempt_cap", "abandon_lockout", None],
            "description": "The dispatch gate that last held the number back (cleared when dialed)",
        },
        "callee_zones": {"type": ["array", "null"], "items": {"type": "string"}},
        "created_at": _TIME,
        "updated_at": _TIME,
    },
    ["phone", "status", "attempts", "dials", "next_attempt_at", "created_at", "updated_at"],
)

_CALL_ATTRIBUTES = _obj(
    {
        "phone": {"type": "string"},
        "attempt_no": {"type": "integer", "minimum": 1},
        "provider": {"type": "string"},
        "provider_call_id": _NULLABLE_STRING,
        "state": {"enum": ["dialing", "ringing", "answered", "ended"]},
        "outcome": {"enum": [*_OUTCOMES, None]},
        "decision": {"enum": ["final", "retry", "exhausted", "requeue", None]},
        "consumed_attempt": {"type": ["boolean", "null"]},
        "started_at": _TIME,
        "answered_at": _NULLABLE_TIME,
        "ended_at": _NULLABLE_TIME,
        "duration_seconds": {"type": ["number", "null"]},
        "billsec": {"type": ["integer", "null"]},
        "raw_status": _NULLABLE_STRING,
        "raw_cause": _NULLABLE_STRING,
        "sip_code": {"type": ["integer", "null"]},
        "next_attempt_at": _NULLABLE_TIME,
    },
    ["phone", "attempt_no", "provider", "state", "started_at"],
)

_SUPPRESSION_ATTRIBUTES = _obj(
    {
        "phone": _E164,
        "campaign_id": {"type": ["string", "null"], "description": "null: suppressed in every campaign"},
        "reason": {"type": ["string", "null"], "maxLength": 500},
        "source": {"enum": ["api", "sql", "outcome"]},
        "created_at": _TIME,
    },
    ["phone", "campaign_id", "source", "created_at"],
)


def _resource(type_: str, attributes: dict[str, Any], *, relationships: bool = False) -> dict[str, Any]:
    props: dict[str, Any] = {
        "type": {"const": type_},
        "id": {"type": "string"},
        "attributes": attributes,
        "links": _obj({"self": {"type": "string"}}),
    }
    if relationships:
        props["relationships"] = {"type": "object", "additionalProperties": True}
    return _obj(props, ["type", "id", "attributes"])


_LINKS = _obj(
    {"self": {"type": "string"}, "next": _NULLABLE_STRING, "last": {"type": "string"}},
    ["self", "next", "last"],
)


def _single(schema: str) -> dict[str, Any]:
    return _obj({"data": _ref(schema), "meta": {"type": "object"}, "included": {"type": "array"}}, ["data"])


def _list(schema: str) -> dict[str, Any]:
    return _obj(
        {"data": {"type": "array", "items": _ref(schema)}, "links": _LINKS, "meta": {"type": "object"}},
        ["data", "links"],
    )


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSONAPI: {"schema": schema}}}


_ERRORS = _json(_ref("ErrorDocument"), "An error document; nothing was changed")


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    operation_id: str,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "operationId": operation_id,
        "responses": {**responses, "default": _ERRORS},
    }
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = body
    if tags:
        op["tags"] = tags
    return op


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    p: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        p["description"] = description
    return p


def _path(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or _ID}


_PAGE = [
    _query("page[number]", _int(1, 1_000_000), "Page number, from 1"),
    _query("page[size]", _int(1, 1000), "Items per page (default 50)"),
]
_PHONE_FILTER = _query("phone", {"type": "string"}, "E.164 number (or digits with a country code)")


def _doc_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {JSONAPI: {"schema": schema}, "application/json": {"schema": schema}},
    }


@functools.cache
def spec() -> dict[str, Any]:
    campaign_write = _obj(
        {
            "data": _obj(
                {
                    "type": {"const": "campaigns"},
                    "attributes": _obj(_CAMPAIGN_SETTINGS, additionalProperties=False),
                },
                ["type", "attributes"],
            )
        },
        ["data"],
    )
    number_item = _obj(
        {
            "type": {"const": "numbers"},
            "attributes": _obj(
                {
                    "phone": _E164,
                    "caller_id": {"type": ["string", "null"]},
                    "dtmf": {"type": ["string", "null"], "pattern": "^[0-9#*Ww]{1,64}$"},
                    "priority": _int(-1000, 1000),
                    "payload": {"description": "Any JSON, returned in webhooks and number reads"},
                    "time_zone": {
                        "type": ["string", "null"],
                        "description": "The callee's IANA time zone as upstream knows it (the lead's "
                        "address): the calling window must be open there and in the number's own "
                        "zones, or there alone when the two share no window",
                        "examples": ["America/Chicago"],
                    },
                },
                ["phone"],
                additionalProperties=False,
            ),
        },
        ["type", "attributes"],
    )
    numbers_write = _obj(
        {
            "data": {
                "oneOf": [
                    number_item,
                    {"type": "array", "items": number_item, "minItems": 1, "maxItems": 10_000},
                ],
                "description": "One number resource object, or an array of up to 10,000. The answer is the "
                "same either way: the campaign, with the counts in meta (error pointers are /data/... for "
                "one object, /data/<index>/... in an array)",
            },
            "meta": _obj(
                {
                    "client_token": {"type": "string", "minLength": 1, "maxLength": 200},
                    "partial": {"type": "boolean", "description": "Accept the valid items, report the rest"},
                    "default_region": {"type": "string", "description": "ISO region for national numbers"},
                }
            ),
        },
        ["data"],
    )
    suppression_item = _obj(
        {
            "type": {"const": "suppressions"},
            "attributes": _obj(
                {
                    "phone": _E164,
                    "campaign_id": {"type": ["string", "null"], "pattern": "^[0-9]{1,18}$"},
                    "reason": {"type": ["string", "null"], "maxLength": 500},
                },
                ["phone"],
                additionalProperties=False,
            ),
        },
        ["type", "attributes"],
    )
    suppressions_write = _obj(
        {"data": {"oneOf": [suppression_item, {"type": "array", "items": suppression_item, "minItems": 1}]}},
        ["data"],
    )
    nullable_int = {"type": ["integer", "null"]}
    agents_resource = _obj(
        {
            "type": {"const": "agents"},
            "id": {"type": "string"},
            "attributes": _obj(
                {"logged_in": {"type": "integer"}, "free": nullable_int, "busy": nullable_int},
                ["logged_in", "free", "busy"],
            ),
        },
        ["type", "id", "attributes"],
    )
    pacing_resource = _obj(
        {
            "type": {"const": "campaign-pacing"},
            "id": {"type": "string"},
            "attributes": _obj(
                {
                    "pacing_mode": {"enum": ["agentless", "progressive", "predictive"]},
                    "pacing_settings": {"type": "object"},
                    "agents_logged_in": {"type": "integer"},
                    "budget": nullable_int,
                    "ticked_at": {"type": ["string", "null"], "format": "date-time"},
                    "reason": _NULLABLE_STRING,
                    "new_attempts": nullable_int,
                    "dial_ratio": _NULLABLE_NUMBER,
                    "hit_rate": _obj(
                        {"predicted": _NULLABLE_NUMBER, "observed": _NULLABLE_NUMBER},
                        ["predicted", "observed"],
                    ),
                    "abandon_rate": _BY_WINDOW,
                    "answered": _BY_WINDOW,
                    "abandoned": _BY_WINDOW,
                    "agents": _obj({"free": nullable_int, "busy": nullable_int}, ["free", "busy"]),
                    "occupancy": _NULLABLE_NUMBER,
                    "ringing": nullable_int,
                    "answered_waiting": nullable_int,
                },
                [
                    "pacing_mode",
                    "agents_logged_in",
                    "reason",
                    "dial_ratio",
                    "hit_rate",
                    "abandon_rate",
                    "agents",
                ],
            ),
        },
        ["type", "id", "attributes"],
    )
    status_attributes = _obj(
        {
            "state": {"type": "string"},
            "state_reason": _NULLABLE_STRING,
            "items_total": {"type": "integer"},
            "items_done": {"type": "integer"},
            "percent": {"type": "number"},
            "numbers_by_status": {"type": "object", "additionalProperties": {"type": "integer"}},
            "calls": {"type": "integer"},
            "active_calls": {"type": "integer"},
            "answered": {"type": "integer"},
            "average_call_seconds": {"type": ["number", "null"]},
            "outcomes": {"type": "object", "additionalProperties": {"type": "integer"}},
            "retries_by_cause": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
        ["state", "items_total", "items_done", "percent", "calls", "active_calls", "answered", "outcomes"],
    )
    webhook_event_attributes = _obj(
        {
            "event_type": {"enum": ["number.finished", "attempt.ended"]},
            "status": {"enum": ["pending", "delivered", "gave_up"]},
            "created_at": _TIME,
            "attempts": {"type": "integer"},
            "next_attempt_at": _NULLABLE_TIME,
            "delivered_at": _NULLABLE_TIME,
            "gave_up_at": _NULLABLE_TIME,
            "last_status": {"type": ["integer", "null"]},
            "last_error": _NULLABLE_STRING,
            "payload": {"type": "object"},
            "deliveries": {"type": "array", "items": {"type": "object"}},
        },
        ["event_type", "status", "created_at", "attempts", "payload", "deliveries"],
    )
    campaign_id = _path("id")
    csv_response = {
        "description": "CSV with the Paycall seed's CDR columns, every field quoted, CRLF line ends",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }
    paths: dict[str, Any] = {
        "/v1/campaigns": {
            "get": _op(
                "List campaigns",
                {"200": _json(_list("Campaign"), "Campaigns")},
                params=[
                    _query("name", {"type": "string"}),
                    _query("status", {"enum": ["created", "running", "paused", "stopped", "finished"]}),
                    *_PAGE,
                ],
                tags=["campaigns"],
                operation_id="listCampaigns",
            ),
            "post": _op(
                "Create a campaign",
                {"201": _json(_single("Campaign"), "Created")},
                body=_doc_body(campaign_write, "The campaign's settings"),
                tags=["campaigns"],
                operation_id="createCampaign",
            ),
        },
        "/v1/campaigns/{id}": {
            "parameters": [campaign_id],
            "get": _op(
                "Get a campaign",
                {"200": _json(_single("Campaign"), "The campaign")},
                tags=["campaigns"],
                operation_id="getCampaign",
            ),
            "patch": _op(
                "Change a campaign's settings (only the attributes given)",
                {"200": _json(_single("Campaign"), "The changed campaign")},
                body=_doc_body(
                    _obj(
                        {
                            "data": _obj(
                                {
                                    "type": {"const": "campaigns"},
                                    "attributes": _obj(_CAMPAIGN_SETTINGS, additionalProperties=False),
                                },
                                ["type"],
                            )
                        },
                        ["data"],
                    ),
                    "Attributes to change",
                ),
                tags=["campaigns"],
                operation_id="updateCampaign",
            ),
            "delete": _op(
                "Delete a campaign that is not running or paused (its CDRs go with it)",
                {
                    "204": {"description": "Deleted"},
                    "409": _json(
                        _ref("ErrorDocument"),
                        "Not deleted, nothing changed: the campaign is running or paused, has calls in "
                        "progress, or still has webhook events not yet delivered (pending or retrying; "
                        "meta.undelivered_webhook_events counts them). Stop it, let the events be "
                        "delivered or given up, then delete.",
                    ),
                },
                tags=["campaigns"],
                operation_id="deleteCampaign",
            ),
        },
        "/v1/campaigns/{id}/actions/{action}": {
            "parameters": [campaign_id, _path("action", {"enum": ["start", "pause", "resume", "stop"]})],
            "post": _op(
                "Start, pause, resume or stop a campaign",
                {"200": _json(_single("Campaign"), "The campaign in its new state")},
                tags=["campaigns"],
                operation_id="campaignAction",
            ),
        },
        "/v1/campaigns/{id}/status": {
            "parameters": [campaign_id],
            "get": _op(
                "Campaign progress counters",
                {
                    "200": _json(
                        _obj(
                            {
                                "data": _obj(
                                    {
                                        "type": {"const": "campaign-status"},
                                        "id": {"type": "string"},
                                        "attributes": status_attributes,
                                    },
                                    ["type", "id", "attributes"],
                                )
                            },
                            ["data"],
                        ),
                        "Counters",
                    )
                },
                tags=["campaigns"],
                operation_id="campaignStatus",
            ),
        },
        "/v1/campaigns/{id}/agents": {
            "parameters": [campaign_id],
            "put": _op(
                "Report the agents logged in now (progressive and predictive campaigns)",
                {"200": _json(_obj({"data": agents_resource}, ["data"]), "The agents as now known")},
                body=_doc_body(
                    _obj(
                        {
                            "data": _obj(
                                {
                                    "type": {"const": "agents"},
                                    "attributes": _obj(
                                        {"logged_in": _int(0, 100_000)},
                                        ["logged_in"],
                                        additionalProperties=False,
                                    ),
                                },
                                ["type", "attributes"],
                            )
                        },
                        ["data"],
                    ),
                    "Agents logged in",
                ),
                tags=["campaigns"],
                operation_id="setCampaignAgents",
            ),
        },
        "/v1/campaigns/{id}/pacing": {
            "parameters": [campaign_id],
            "get": _op(
                "The pacing controller's last decision: dial ratio, hit rate, abandonment, agents",
                {"200": _json(_obj({"data": pacing_resource}, ["data"]), "Pacing state")},
                tags=["campaigns"],
                operation_id="campaignPacing",
            ),
        },
        "/v1/campaigns/{id}/numbers": {
            "parameters": [campaign_id],
            "get": _op(
                "List a campaign's numbers",
                {"200": _json(_list("Number"), "Numbers")},
                params=[
                    _query(
                        "status",
                        {
                            "enum": [
                                "untried",
                                "incompleted",
                                "dnc",
                                "failed",
                                "completed",
                                "voicemail",
                                "in_progress",
                                "retry_wait",
                            ]
                        },
                    ),
                    _PHONE_FILTER,
                    *_PAGE,
                ],
                tags=["numbers"],
                operation_id="listNumbers",
            ),
            "post": _op(
                "Add one number or up to 10,000 (idempotent with a client token)",
                {
                    "200": _json(
                        _single("Campaign"),
                        "Nothing new was added (all duplicates); meta has the counts. A repeat with the "
                        "same client token answers with the first response and its status, meta.replayed true",
                    ),
                    "201": _json(
                        _single("Campaign"),
                        "Numbers added; meta has the counts. A repeat with the same client token answers "
                        "with the first response and its status, meta.replayed true",
                    ),
                },
                params=[
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    }
                ],
                body=_doc_body(numbers_write, "Numbers to add"),
                tags=["numbers"],
                operation_id="addNumbers",
            ),
        },
        "/v1/campaigns/{id}/numbers/upload": {
            "parameters": [campaign_id],
            "post": _op(
                "Upload a number file: CSV / TXT / ZIP / GZ of number[,cli[,dtmf]] (Paycall upload_phones)",
                {
                    "200": _json(
                        _single("Campaign"),
                        "Nothing new was added; meta has the counts. A repeat with the same client_token "
                        "answers with the first response and its status, meta.replayed true",
                    ),
                    "201": _json(
                        _single("Campaign"),
                        "Numbers added; meta has the counts. A repeat with the same client_token answers "
                        "with the first response and its status, meta.replayed true",
                    ),
                },
                params=[
                    _query("partial", {"enum": ["true", "false"]}, "Accept valid rows, report the rest"),
                    _query("default_region", {"type": "string"}, "ISO region for national numbers"),
                    _query("client_token", {"type": "string", "minLength": 1, "maxLength": 200}),
                ],
                body={
                    "required": True,
                    "content": {
                        "text/csv": {"schema": {"type": "string"}},
                        "text/plain": {"schema": {"type": "string"}},
                        "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                        "application/zip": {"schema": {"type": "string", "format": "binary"}},
                        "multipart/form-data": {
                            "schema": _obj({"numbers": {"type": "string", "format": "binary"}}, ["numbers"])
                        },
                    },
                },
                tags=["numbers"],
                operation_id="uploadNumbers",
            ),
        },
        "/v1/campaigns/{id}/cdr.csv": {
            "parameters": [campaign_id],
            "get": _op(
                "Export a campaign's CDRs as CSV (streamed)",
                {"200": csv_response},
                tags=["calls"],
                operation_id="campaignCdr",
            ),
        },
        "/v1/campaigns/{id}/webhook-events": {
            "parameters": [campaign_id],
            "get": _op(
                "The campaign's webhook events and their delivery log",
                {"200": _json(_list("WebhookEvent"), "Events")},
                params=[_query("status", {"enum": ["pending", "delivered", "gave_up"]}), *_PAGE],
                tags=["webhooks"],
                operation_id="listWebhookEvents",
            ),
        },
        "/v1/numbers/{id}": {
            "parameters": [_path("id")],
            "get": _op(
                "A number with its attempt history (included calls)",
                {"200": _json(_single("Number"), "The number")},
                tags=["numbers"],
                operation_id="getNumber",
            ),
            "delete": _op(
                "Remove a number that has not been dialed",
                {"204": {"description": "Removed"}},
                tags=["numbers"],
                operation_id="deleteNumber",
            ),
        },
        "/v1/suppressions": {
            "get": _op(
                "List suppressed numbers",
                {"200": _json(_list("Suppression"), "Suppressions")},
                params=[
                    _PHONE_FILTER,
                    _query("campaign", {"type": "string", "pattern": "^[0-9]{1,18}$"}),
                    _query("scope", {"enum": ["global", "campaign"]}),
                    *_PAGE,
                ],
                tags=["suppression"],
                operation_id="listSuppressions",
            ),
            "post": _op(
                "Suppress one number or a batch, globally or for one campaign (repeats are no-ops)",
                {
                    "200": _json(
                        _obj(
                            {
                                "data": {
                                    "oneOf": [
                                        _ref("Suppression"),
                                        {"type": "array", "items": _ref("Suppression")},
                                    ]
                                }
                            }
                        ),
                        "Already suppressed",
                    ),
                    "201": _json(
                        _obj(
                            {
                                "data": {
                                    "oneOf": [
                                        _ref("Suppression"),
                                        {"type": "array", "items": _ref("Suppression")},
                                    ]
                                }
                            }
                        ),
                        "Suppressed",
                    ),
                },
                body=_doc_body(suppressions_write, "Numbers to suppress"),
                tags=["suppression"],
                operation_id="addSuppressions",
            ),
        },
        "/v1/suppressions/check": {
            "get": _op(
                "Is this number suppressed (globally or for a campaign)?",
                {
                    "200": _json(
                        _obj(
                            {
                                "data": _obj(
                                    {
                                        "type": {"const": "suppression-checks"},
                                        "id": {"type": "string"},
                                        "attributes": _obj(
                                            {
                                                "phone": {"type": "string"},
                                                "campaign_id": _NULLABLE_STRING,
                                                "suppressed": {"type": "boolean"},
                                                "entries": {"type": "array", "items": _ref("Suppression")},
                                            },
                                            ["phone", "suppressed", "entries"],
                                        ),
                                    },
                                    ["type", "id", "attributes"],
                                )
                            },
                            ["data"],
                        ),
                        "The answer",
                    )
                },
                params=[
                    {"name": "phone", "in": "query", "required": True, "schema": {"type": "string"}},
                    _query("campaign", {"type": "string", "pattern": "^[0-9]{1,18}$"}),
                ],
                tags=["suppression"],
                operation_id="checkSuppression",
            ),
        },
        "/v1/suppressions/{id}": {
            "parameters": [_path("id")],
            "get": _op(
                "Get a suppression",
                {"200": _json(_single("Suppression"), "The suppression")},
                tags=["suppression"],
                operation_id="getSuppression",
            ),
            "delete": _op(
                "Lift a suppression",
                {"204": {"description": "Lifted"}},
                tags=["suppression"],
                operation_id="deleteSuppression",
            ),
        },
        "/v1/calls": {
            "get": _op(
                "List calls (attempts)",
                {"200": _json(_list("Call"), "Calls")},
                params=[
                    _query("campaign", {"type": "string", "pattern": "^[0-9]{1,18}$"}),
                    _query("status", {"enum": ["dialing", "ringing", "answered", "ended", *_OUTCOMES]}),
                    _PHONE_FILTER,
                    _query("min_duration", {"type": "number", "minimum": 0}),
                    _query("max_duration", {"type": "number", "minimum": 0}),
                    _query("started_after", {"type": "string", "format": "date-time"}),
                    _query("started_before", {"type": "string", "format": "date-time"}),
                    *_PAGE,
                ],
                tags=["calls"],
                operation_id="listCalls",
            ),
        },
        "/v1/calls/{id}": {
            "parameters": [_path("id", {"type": "string", "format": "uuid"})],
            "get": _op(
                "Get one call",
                {"200": _json(_single("Call"), "The call")},
                tags=["calls"],
                operation_id="getCall",
            ),
        },
        "/v1/compliance": {
            "get": _op(
                "Attempt caps per phone across all campaigns",
                {"200": _json(_single("Compliance"), "The caps (null = no cap)")},
                tags=["compliance"],
                operation_id="getCompliance",
            ),
            "put": _op(
                "Set the attempt caps per phone across all campaigns",
                {"200": _json(_single("Compliance"), "The caps now in force")},
                body=_doc_body(
                    _obj(
                        {
                            "data": _obj(
                                {
                                    "type": {"const": "compliance"},
                                    "attributes": _obj(
                                        {
                                            "max_attempts_per_24h": {
                                                "type": ["integer", "null"],
                                                "minimum": 1,
                                                "maximum": 1000,
                                            },
                                            "max_attempts_lifetime": {
                                                "type": ["integer", "null"],
                                                "minimum": 1,
                                                "maximum": 1000,
                                            },
                                        },
                                        additionalProperties=False,
                                    ),
                                },
                                ["type", "attributes"],
                            )
                        },
                        ["data"],
                    ),
                    "Caps; an omitted or null cap is removed",
                ),
                tags=["compliance"],
                operation_id="putCompliance",
            ),
        },
        "/v1/cdr.csv": {
            "get": _op(
                "Export one number's CDRs as CSV (optionally within one campaign)",
                {"200": csv_response},
                params=[
                    {"name": "phone", "in": "query", "required": True, "schema": {"type": "string"}},
                    _query("campaign", {"type": "string", "pattern": "^[0-9]{1,18}$"}),
                ],
                tags=["calls"],
                operation_id="numberCdr",
            ),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pgdialer API",
            "version": "1",
            "description": "Campaigns, numbers, suppression, calls, CDR export and outcome webhooks. "
            "JSON:API documents; authenticate with `Authorization: Bearer <token>` (`dialer token create`).",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Campaign": _resource("campaigns", _CAMPAIGN_ATTRIBUTES),
                "Number": _resource("numbers", _NUMBER_ATTRIBUTES, relationships=True),
                "Call": _resource("calls", _CALL_ATTRIBUTES, relationships=True),
                "Suppression": _resource("suppressions", _SUPPRESSION_ATTRIBUTES),
                "WebhookEvent": _obj(
                    {
                        "type": {"const": "webhook-events"},
                        "id": {"type": "string", "format": "uuid"},
                        "attributes": webhook_event_attributes,
                    },
                    ["type", "id", "attributes"],
                ),
                "Relation": _RELATION,
                "Compliance": _obj(
                    {
                        "type": {"const": "compliance"},
                        "id": {"type": "string"},
                        "attributes": _obj(
                            {
                                "max_attempts_per_24h": {"type": ["integer", "null"]},
                                "max_attempts_lifetime": {"type": ["integer", "null"]},
                                "updated_at": _NULLABLE_TIME,
                            },
                            ["max_attempts_per_24h", "max_attempts_lifetime", "updated_at"],
                        ),
                    },
                    ["type", "id", "attributes"],
                ),
                "ErrorDocument": _obj(
                    {
                        "errors": {
                            "type": "array",
                            "minItems": 1,
                            "items": _obj(
                                {
                                    "status": {"type": "string", "pattern": "^[45][0-9]{2}$"},
                                    "title": {"type": "string"},
                                    "detail": {"type": "string"},
                                    "source": _obj(
                                        {"pointer": {"type": "string"}, "parameter": {"type": "string"}}
                                    ),
                                    "meta": {"type": "object"},
                                },
                                ["status", "title"],
                            ),
                        },
                        "meta": {"type": "object"},
                    },
                    ["errors"],
                ),
            },
        },
    }
