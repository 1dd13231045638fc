"""The operators' Grafana dashboard, as code: plain dicts serialised to JSON by `metrics.build`.

Aggregation follows where a value comes from. Backlog, cap and pacing gauges are read from the
database, so every worker reports the same value: they are combined with `max`, never summed.
Counters, histograms and in-flight gauges are per process: they are summed over workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

UID = "pgdialer"
TITLE = "pgdialer: predictive dialer"
SCHEMA_VERSION = 39
GRID_WIDTH = 24

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "[$__rate_interval]"
NS = 'namespace=~"$namespace"'
CAMPAIGN = f'{NS}, campaign=~"$campaign"'
ABANDON_LIMIT = 0.03

JSON = dict[str, Any]


@dataclass
class Target:
    expr: str
    legend: str


@dataclass
class Panel:
    title: str
    description: str
    unit: str
    targets: list[Target]
    width: int = 8
    height: int = 8
    kind: str = "timeseries"
    stack: bool = False
    minimum: float | None = 0
    maximum: float | None = None
    threshold: float | None = None
    dashed: str | None = None  # a regex of series names drawn as dashed lines (caps, limits)


@dataclass
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


def t(expr: str, legend: str = "") -> Target:
    return Target(" ".join(expr.split()), legend)


def quantiles(metric: str, by: str, selector: str, legend: str) -> list[Target]:
    """p50/p95/p99 from a histogram's buckets, summed over workers before the quantile."""
    return [
        t(
            f"histogram_quantile({q}, sum by (le{', ' + by if by else ''}) "
            f"(rate({metric}_bucket{{{selector}}}{RATE})))",
            f"p{round(q * 100)} {legend}".rstrip(),
        )
        for q in (0.5, 0.95, 0.99)
    ]


def rows() -> list[Row]:
    """Every row and panel, top to bottom. Editing here and running `python -m metrics.build` is the workflow."""
    return [
        Row(
            "Overview",
            [
                Panel(
                    "Workers",
                    "Workers with a recent heartbeat in the database (max over workers: each reports the same "
                    "count), and pods Prometheus scrapes successfully by component (worker, api).",
                    "short",
                    [
                        t(f"max(dialer_workers{{{NS}}})", "heartbeating"),
                        t(
                            f'count by (component) (up{{job=~".*dialer.*", {NS}}} == 1)',
                            "{{component}} scraped",
                        ),
                    ],
                    width=6,
                    kind="stat",
                ),
                Panel(
                    "Attempts started /s",
                    "Calls sent to the provider per second, all workers and selected campaigns.",
                    "cps",
                    [t(f"sum(rate(dialer_attempts_started_total{{{CAMPAIGN}}}{RATE}))", "started")],
                    width=6,
                    kind="stat",
                ),
                Panel(
                    "Due backlog",
                    "Numbers due for an attempt now, summed over campaigns (each campaign's gauge is "
                    "max'ed over workers first).",
                    "short",
                    [t(f"sum(max by (campaign) (dialer_due_backlog{{{CAMPAIGN}}}))", "due")],
                    width=6,
                    kind="stat",
                ),
                Panel(
                    "Oldest due age",
                    "How long the longest-waiting due number has waited (0 when nothing is due).",
                    "s",
                    [
                        t(
                            f"max(time() - (dialer_oldest_due_timestamp_seconds{{{CAMPAIGN}}} > 0)) or vector(0)",
                            "oldest",
                        )
                    ],
                    width=6,
                    kind="stat",
                ),
            ],
        ),
        Row(
            "Throughput and outcomes",
            [
                Panel(
                    "Attempts started /s by campaign",
                    "Start requests sent per second, summed over workers.",
                    "cps",
                    [
                        t(
                            f"sum by (campaign) (rate(dialer_attempts_started_total{{{CAMPAIGN}}}{RATE}))",
                            "{{campaign}}",
                        )
                    ],
                ),
                Panel(
                    "Outcomes /s by outcome",
                    "Attempt outcomes recorded per second (from callbacks, polling or the sweeper's lookups).",
                    "cps",
                    [t(f"sum by (outcome) (rate(dialer_outcomes_total{{{CAMPAIGN}}}{RATE}))", "{{outcome}}")],
                    stack=True,
                ),
                Panel(
                    "Answer rate by campaign",
                    "Answered (human, machine or fax) share of outcomes that reached the network; provider "
                    "and account errors are left out.",
                    "percentunit",
                    [
                        t(
                            f'sum by (campaign) (rate(dialer_outcomes_total{{{CAMPAIGN}, outcome=~"answered_.*"}}{RATE})) '
                            f"/ sum by (campaign) (rate(dialer_outcomes_total{{{CAMPAIGN}, "
                            f'outcome!~"provider_error|account_error"}}{RATE}))',
                            "{{campaign}}",
                        )
                    ],
                    maximum=1,
                ),
                Panel(
                    "Decisions /s",
                    "What each outcome did to its number: final, retry later, attempts exhausted, or requeued "
                    "without counting (never reached the network).",
                    "cps",
                    [
                        t(
                            f"sum by (decision) (rate(dialer_outcomes_total{{{CAMPAIGN}}}{RATE}))",
                            "{{decision}}",
                        )
                    ],
                    stack=True,
                ),
                Panel(
                    "Reconciled /s by resolution",
                    "Overdue attempts the sweeper resolved by asking the provider; a rise means callbacks "
                    "are being lost.",
                    "cps",
                    [
                        t(
                            f"sum by (resolution) (rate(dialer_reconciled_total{{{NS}}}{RATE}))",
                            "{{resolution}}",
                        )
                    ],
                ),
                Panel(
                    "Claim latency",
                    "Latency of one claim statement p50/p95/p99 (every pacing rule is applied inside it).",
                    "s",
                    quantiles("dialer_claim_seconds", "", NS, ""),
                ),
            ],
        ),
        Row(
            "Capacity and backlog",
            [
                Panel(
                    "Live calls vs cap",
                    "Attempts dialing, ringing or answered per campaign (solid) against the campaign's "
                    "max_concurrent_calls (dashed). Both are database gauges: max over workers.",
                    "short",
                    [
                        t(f"max by (campaign) (dialer_live_attempts{{{CAMPAIGN}}})", "{{campaign}} live"),
                        t(
                            f"max by (campaign) (dialer_campaign_max_concurrent_calls{{{CAMPAIGN}}})",
                            "{{campaign}} cap",
                        ),
                    ],
                    dashed=" cap$",
                ),
                Panel(
                    "Due backlog by campaign",
                    "Numbers due for an attempt now (max over workers: every worker reports the database's value).",
                    "short",
                    [t(f"max by (campaign) (dialer_due_backlog{{{CAMPAIGN}}})", "{{campaign}}")],
                ),
                Panel(
                    "Oldest due age by campaign",
                    "Seconds since the oldest due number became due; only campaigns with due work.",
                    "s",
                    [
                        t(
                            f"time() - max by (campaign) (dialer_oldest_due_timestamp_seconds{{{CAMPAIGN}}} > 0)",
                            "{{campaign}}",
                        )
                    ],
                ),
                Panel(
                    "Held back by reason",
                    "Due numbers not dialing and why: business hours, paused, not started and outside dates "
                    "are intended; concurrency_cap and rate_limit are pacing; dispatching is being dialed.",
                    "short",
                    [
                        t(
                            f"sum by (reason) (max by (campaign, reason) (dialer_held_back{{{CAMPAIGN}}}))",
                            "{{reason}}",
                        )
                    ],
                    stack=True,
                ),
                Panel(
                    "Cap utilisation",
                    "Live calls as a share of each campaign's concurrency cap.",
                    "percentunit",
                    [
                        t(
                            f"max by (campaign) (dialer_live_attempts{{{CAMPAIGN}}}) "
                            f"/ max by (campaign) (dialer_campaign_max_concurrent_calls{{{CAMPAIGN}}} > 0)",
                            "{{campaign}}",
                        )
                    ],
                    maximum=1,
                ),
                Panel(
                    "Workers and in-flight requests",
                    "Heartbeating workers, workers draining after SIGTERM, and start requests in flight "
                    "(summed over workers).",
                    "short",
                    [
                        t(f"max(dialer_workers{{{NS}}})", "workers"),
                        t(f"sum(dialer_draining{{{NS}}})", "draining"),
                        t(f"sum(dialer_inflight_requests{{{NS}}})", "in flight"),
                    ],
                ),
            ],
        ),
        Row(
            "Provider",
            [
                Panel(
                    "Start-call latency",
                    "Provider start-call request latency p50/p95/p99 per provider account.",
                    "s",
                    quantiles(
                        "dialer_provider_request_seconds",
                        "provider, operation",
                        f'{NS}, operation="start_call"',
                        "{{provider}}",
                    ),
                ),
                Panel(
                    "Other provider requests latency",
                    "Lookup, hangup and campaign requests p50/p95/p99 per provider and operation.",
                    "s",
                    quantiles(
                        "dialer_provider_request_seconds",
                        "provider, operation",
                        f'{NS}, operation!="start_call"',
                        "{{provider}} {{operation}}",
                    ),
                ),
                Panel(
                    "Provider requests /s",
                    "Requests to each provider account by operation, summed over workers.",
                    "reqps",
                    [
                        t(
                            f"sum by (provider, operation) (rate(dialer_provider_request_seconds_count{{{NS}}}{RATE}))",
                            "{{provider}} {{operation}}",
                        )
                    ],
                ),
                Panel(
                    "Provider errors /s by kind",
                    "Provider failures: not_sent (never left us), ambiguous (reconciled before any redial), "
                    "rejected, rate_limited, invalid_response, lookup/hangup failures.",
                    "cps",
                    [
                        t(
                            f"sum by (provider, kind) (rate(dialer_provider_errors_total{{{NS}}}{RATE}))",
                            "{{provider}} {{kind}}",
                        )
                    ],
                    stack=True,
                ),
                Panel(
                    "Start error ratio",
                    "Start-request errors per start request, per provider account (alert at 10%).",
                    "percentunit",
                    [
                        t(
                            f"sum by (provider) (rate(dialer_provider_errors_total{{{NS}, "
                            f'kind!~"lookup_failed|hangup_failed|hangup_no_callid"}}{RATE})) '
                            f"/ sum by (provider) (rate(dialer_provider_request_seconds_count{{{NS}, "
                            f'operation="start_call"}}{RATE}))',
                            "{{provider}}",
                        )
                    ],
                    threshold=0.1,
                ),
                Panel(
                    "Open circuits and auto-pauses",
                    "Workers whose circuit breaker for an account is open (sum over workers), and campaigns "
                    "auto-paused because the account refused us (in the interval).",
                    "short",
                    [
                        t(f"sum by (provider) (dialer_circuit_open{{{NS}}})", "{{provider}} open circuits"),
                        t(
                            f"sum by (provider) (increase(dialer_campaigns_auto_paused_total{{{NS}}}{RATE}))",
                            "{{provider}} campaigns auto-paused",
                        ),
                    ],
                ),
            ],
        ),
        Row(
            "Callbacks and writes",
            [
                Panel(
                    "Callbacks /s by result",
                    "Provider callbacks received: applied, duplicate, and the rejected ones (bad_signature, "
                    "malformed, unknown_attempt, error).",
                    "reqps",
                    [t(f"sum by (result) (rate(dialer_callbacks_total{{{NS}}}{RATE}))", "{{result}}")],
                    stack=True,
                ),
                Panel(
                    "Callback lag and handling",
                    "lag: time from the call event at the provider (answer or hang-up, as the callback "
                    "states it) to our receipt of the callback, per account; a rise means the provider "
                    "delivers late or retries. handling: from receipt to our answer, once the outcome is "
                    "durable.",
                    "s",
                    [
                        t(
                            f"histogram_quantile({q}, sum by (le, provider) "
                            f"(rate(dialer_callback_lag_seconds_bucket{{{NS}}}{RATE})))",
                            f"p{round(q * 100)} lag {{{{provider}}}}",
                        )
                        for q in (0.5, 0.95)
                    ]
                    + [
                        t(
                            f"histogram_quantile({q}, sum by (le) (rate(dialer_callback_seconds_bucket{{{NS}}}{RATE})))",
                            f"p{round(q * 100)} handling",
                        )
                        for q in (0.5, 0.95)
                    ],
                ),
                Panel(
                    "Flush latency",
                    "One batched write of outcomes, acceptances and releases (callbacks wait for it).",
                    "s",
                    quantiles("dialer_flush_seconds", "", NS, ""),
                ),
            ],
        ),
        Row(
            "Webhook delivery",
            [
                Panel(
                    "Webhook deliveries /s by result",
                    "Outcome webhook POSTs to upstream systems: delivered, retry (will be tried again), gave_up.",
                    "reqps",
                    [
                        t(
                            f"sum by (result) (rate(dialer_webhook_deliveries_total{{{NS}}}{RATE}))",
                            "{{result}}",
                        )
                    ],
                    width=6,
                    stack=True,
                ),
                Panel(
                    "Webhook backlog",
                    "Webhook events not yet delivered (a database gauge: max over workers).",
                    "short",
                    [t(f"max(dialer_webhook_backlog{{{NS}}})", "pending")],
                    width=6,
                ),
                Panel(
                    "Oldest pending webhook age",
                    "Seconds since the oldest undelivered webhook event was created; empty when none is pending.",
                    "s",
                    [
                        t(
                            f"time() - max(dialer_webhook_oldest_pending_timestamp_seconds{{{NS}}} > 0)",
                            "oldest",
                        )
                    ],
                    width=6,
                ),
                Panel(
                    "Webhook delivery latency",
                    "Latency of one webhook POST p50/p95/p99.",
                    "s",
                    quantiles("dialer_webhook_delivery_seconds", "", NS, ""),
                    width=6,
                ),
            ],
        ),
        Row(
            "Predictive pacing",
            [
                Panel(
                    "Dial ratio",
                    "Lines dialed per available agent (1 for progressive campaigns, 0 when agentless).",
                    "short",
                    [t(f"max by (campaign) (dialer_dial_ratio{{{CAMPAIGN}}})", "{{campaign}}")],
                ),
                Panel(
                    "Hit rate",
                    "Answer rate per campaign: the controller's estimate and the observed rate.",
                    "percentunit",
                    [t(f"max by (campaign, kind) (dialer_hit_rate{{{CAMPAIGN}}})", "{{campaign}} {{kind}}")],
                    maximum=1,
                ),
                Panel(
                    "Abandonment vs 3% limit",
                    "Share of answered calls abandoned because no agent was free in time, rolling 24 h and "
                    "lifetime, against the 3% regulatory line (red).",
                    "percentunit",
                    [
                        t(
                            f"max by (campaign, window) (dialer_abandon_rate{{{CAMPAIGN}}})",
                            "{{campaign}} {{window}}",
                        )
                    ],
                    threshold=ABANDON_LIMIT,
                ),
                Panel(
                    "Agents by state",
                    "Agents of each campaign that are free or busy.",
                    "short",
                    [t(f"max by (campaign, state) (dialer_agents{{{CAMPAIGN}}})", "{{campaign}} {{state}}")],
                ),
                Panel(
                    "Agent occupancy",
                    "Share of logged-in agent time spent on calls, over the controller's window.",
                    "percentunit",
                    [t(f"max by (campaign) (dialer_agent_occupancy{{{CAMPAIGN}}})", "{{campaign}}")],
                    maximum=1,
                ),
            ],
        ),
        Row(
            "Upstream API",
            [
                Panel(
                    "API requests /s",
                    "Upstream API requests by route template and status code, summed over processes.",
                    "reqps",
                    [
                        t(
                            f"sum by (route, status) (rate(dialer_api_requests_total{{{NS}}}{RATE}))",
                            "{{route}} {{status}}",
                        )
                    ],
                ),
                Panel(
                    "API error ratio",
                    "Share of API requests answered with a 5xx, per route.",
                    "percentunit",
                    [
                        t(
                            f'sum by (route) (rate(dialer_api_requests_total{{{NS}, status=~"5.."}}{RATE})) '
                            f"/ sum by (route) (rate(dialer_api_requests_total{{{NS}}}{RATE}))",
                            "{{route}}",
                        )
                    ],
                ),
                Panel(
                    "API latency",
                    "Upstream API request latency p50/p95/p99 per route.",
                    "s",
                    quantiles("dialer_api_request_seconds", "route", NS, "{{route}}"),
                ),
            ],
        ),
    ]


def _variables() -> list[JSON]:
    def query(name: str, label: str, definition: str) -> JSON:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "definition": definition,
            "query": {
                "qryType": 1,
                "query": definition,
                "refId": "PrometheusVariableQueryEditor-VariableQuery",
            },
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            # Matches series without the label too (Prometheus outside Kubernetes has no namespace).
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "options": [],
            "regex": "",
            "sort": 1,
            "hide": 0,
        }

    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "options": [],
            "regex": "",
            "refresh": 1,
            "hide": 0,
        },
        query("namespace", "Namespace", "label_values(dialer_workers, namespace)"),
        query("campaign", "Campaign", "label_values(dialer_attempts_started_total, campaign)"),
    ]


def _panel_json(p: Panel, panel_id: int, x: int, y: int) -> JSON:
    custom: JSON = {}
    if p.kind == "timeseries":
        custom = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 30 if p.stack else 0,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if p.stack else "none", "group": "A"},
            "thresholdsStyle": {"mode": "line" if p.threshold is not None else "off"},
        }
    steps: list[JSON] = [{"color": "green", "value": None}]
    if p.threshold is not None:
        steps.append({"color": "red", "value": p.threshold})
    defaults: JSON = {
        "unit": p.unit,
        "color": {"mode": "palette-classic" if p.kind == "timeseries" else "thresholds"},
        "thresholds": {"mode": "absolute", "steps": steps},
        "custom": custom,
    }
    if p.minimum is not None:
        defaults["min"] = p.minimum
    if p.maximum is not None:
        defaults["max"] = p.maximum
    overrides: list[JSON] = []
    if p.dashed is not None:
        overrides.append(
            {
                "matcher": {"id": "byRegexp", "options": p.dashed},
                "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}],
            }
        )
    options: JSON
    if p.kind == "stat":
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        }
    else:
        options = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    return {
        "id": panel_id,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": overrides},
        "options": options,
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": target.expr,
                "legendFormat": target.legend or "__auto",
                "range": True,
                "editorMode": "code",
            }
            for i, target in enumerate(p.targets)
        ],
    }


def _layout(all_rows: list[Row]) -> Iterator[JSON]:
    """Row headers and panels left to right, wrapping at the grid width.

    Ids are 100 * row number + position, so adding a panel to one row renumbers no other row's
    panels (Grafana keys links and saved state by id).
    """
    y = 0
    for r_index, r in enumerate(all_rows, start=1):
        yield {
            "id": r_index * 100,
            "type": "row",
            "title": r.title,
            "collapsed": False,
            "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
            "panels": [],
        }
        y += 1
        x, line_height = 0, 0
        for p_index, p in enumerate(r.panels, start=1):
            if x + p.width > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            yield _panel_json(p, r_index * 100 + p_index, x, y)
            x += p.width
            line_height = max(line_height, p.height)
        y += line_height


def build() -> JSON:
    """The dashboard as Grafana's JSON model, ready for provisioning (no __inputs: a datasource variable)."""
    return {
        "uid": UID,
        "title": TITLE,
        "description": "Throughput, backlog, provider health, callbacks, webhooks and pacing of pgdialer workers.",
        "tags": ["pgdialer", "dialer"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "timezone": "",
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {"list": _variables()},
        "panels": list(_layout(rows())),
    }


def expressions(dashboard: JSON) -> list[str]:
    """Every panel target's PromQL expression."""
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def variable_metrics(dashboard: JSON) -> list[str]:
    """Metrics the query variables read (`label_values(metric, label)`)."""
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append(variable["definition"].removeprefix("label_values(").split(",")[0].strip())
    return found
