"""Every metric the service exports. A leaf package: it imports nothing of ours.

Labels never carry phone numbers, call ids or attempt ids; campaign labels are capped by
`CampaignLabels` so a tenant creating thousands of campaigns cannot blow up the series count.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

ATTEMPTS_STARTED = Counter(
    "dialer_attempts_started", "Attempts claimed and sent to the provider.", ["campaign"], registry=REGISTRY
)
OUTCOMES = Counter(
    "dialer_outcomes",
    "Attempt outcomes recorded, by normalized outcome and the decision taken (final, retry, exhausted, requeue).",
    ["campaign", "outcome", "decision"],
    registry=REGISTRY,
)
PROVIDER_REQUEST_SECONDS = Histogram(
    "dialer_provider_request_seconds",
    "Latency of provider HTTP requests.",
    ["provider", "operation"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
PROVIDER_ERRORS = Counter(
    "dialer_provider_errors",
    "Provider request failures by kind (not_sent, rejected, rate_limited, ambiguous, invalid_response).",
    ["provider", "kind"],
    registry=REGISTRY,
)
CALLBACKS = Counter(
    "dialer_callbacks",
    "Provider callbacks received, by result (applied, duplicate, bad_signature, malformed, unknown_attempt).",
    ["provider", "result"],
    registry=REGISTRY,
)
RECONCILED = Counter(
    "dialer_reconciled",
    "Overdue attempts resolved by the sweeper through a provider lookup, by resolution.",
    ["resolution"],
    registry=REGISTRY,
)
LIVE_ATTEMPTS = Gauge(
    "dialer_live_attempts",
    "Attempts dialing, ringing or answered (all workers).",
    ["campaign"],
    registry=REGISTRY,
)
CONCURRENCY_CAP = Gauge(
    "dialer_campaign_max_concurrent_calls", "The campaign's concurrency cap.", ["campaign"], registry=REGISTRY
)
DUE_BACKLOG = Gauge(
    "dialer_due_backlog", "Numbers due for an attempt now (all workers).", ["campaign"], registry=REGISTRY
)
OLDEST_DUE = Gauge(
    "dialer_oldest_due_timestamp_seconds",
    "Unix time at which the oldest due number became due (0 when nothing is due).",
    ["campaign"],
    registry=REGISTRY,
)
HELD_BACK = Gauge(
    "dialer_held_back",
    "Numbers not dialing, by the reason that holds them: due ones (concurrency_cap, rate_limit, business_hours, "
    "paused, not_started, outside_dates) and ones a compliance gate rescheduled (callee_window, attempt_cap, "
    "abandon_lockout).",
    ["campaign", "reason"],
    registry=REGISTRY,
)
FLUSH_SECONDS = Histogram(
    "dialer_flush_seconds",
    "Latency of one batched write of outcomes, acceptances and releases (callbacks wait for it).",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
CALLBACK_SECONDS = Histogram(
    "dialer_callback_seconds",
    "Time from receiving a provider callback to answering it (after the outcome is durable).",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
CALLBACK_LAG_SECONDS = Histogram(
    "dialer_callback_lag_seconds",
    "Time from the call event at the provider (answered_at, ended_at as the callback states it) to our "
    "receipt of its callback; callbacks that carry no event time are not observed.",
    ["provider"],
    # Provider retries after a failed delivery arrive minutes late: the buckets reach that far.
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0),
    registry=REGISTRY,
)
CLAIM_SECONDS = Histogram(
    "dialer_claim_seconds", "Latency of one claim statement.", buckets=_LATENCY_BUCKETS, registry=REGISTRY
)
CLAIM_BATCH = Histogram(
    "dialer_claim_batch_size",
    "Attempts returned by one claim.",
    buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
    registry=REGISTRY,
)
CIRCUIT_OPEN = Gauge(
    "dialer_circuit_open",
    "1 while this worker's circuit breaker for a provider account is open or half-open.",
    ["provider"],
    registry=REGISTRY,
)
CIRCUIT_TRANSITIONS = Counter(
    "dialer_circuit_transitions",
    "Circuit breaker state changes, by new state.",
    ["provider", "state"],
    registry=REGISTRY,
)
CAMPAIGNS_PAUSED = Counter(
    "dialer_campaigns_auto_paused",
    "Campaigns paused by the worker because their provider account refused us (credentials, funds, caller id).",
    ["provider"],
    registry=REGISTRY,
)
INFLIGHT_REQUESTS = Gauge(
    "dialer_inflight_requests", "Start requests in flight in this worker.", registry=REGISTRY
)
WORKERS = Gauge("dialer_workers", "Workers with a recent heartbeat (all pods).", registry=REGISTRY)
DRAINING = Gauge("dialer_draining", "1 while this worker drains after SIGTERM.", registry=REGISTRY)

WEBHOOK_DELIVERIES = Counter(
    "dialer_webhook_deliveries",
    "Outcome webhook delivery attempts, by result (delivered, retry, gave_up).",
    ["result"],
    registry=REGISTRY,
)
WEBHOOK_DELIVERY_SECONDS = Histogram(
    "dialer_webhook_delivery_seconds",
    "Latency of one webhook POST to an upstream system.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
WEBHOOK_BACKLOG = Gauge(
    "dialer_webhook_backlog", "Webhook events not yet delivered (all workers).", registry=REGISTRY
)
WEBHOOK_OLDEST_PENDING = Gauge(
    "dialer_webhook_oldest_pending_timestamp_seconds",
    "Unix time at which the oldest undelivered webhook event was created (0 when none is pending).",
    registry=REGISTRY,
)
API_REQUESTS = Counter(
    "dialer_api_requests",
    "Upstream API requests, by route template, method and status code.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
API_REQUEST_SECONDS = Histogram(
    "dialer_api_request_seconds",
    "Upstream API request latency, by route template.",
    ["route"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
DIAL_RATIO = Gauge(
    "dialer_dial_ratio",
    "Lines the pacing controller dials per available agent (1 for progressive, 0 when agentless).",
    ["campaign"],
    registry=REGISTRY,
)
HIT_RATE = Gauge(
    "dialer_hit_rate",
    "Answer (hit) rate per campaign: the controller's estimate and the observed rate.",
    ["campaign", "kind"],
    registry=REGISTRY,
)
ABANDON_RATE = Gauge(
    "dialer_abandon_rate",
    "Share of answered calls abandoned (no agent free in time), over a rolling 24 h and the campaign's lifetime.",
    ["campaign", "window"],
    registry=REGISTRY,
)
AGENTS = Gauge(
    "dialer_agents",
    "Agents of a campaign by state (free, busy).",
    ["campaign", "state"],
    registry=REGISTRY,
)
AGENT_OCCUPANCY = Gauge(
    "dialer_agent_occupancy",
    "Share of logged-in agent time spent on calls, over the controller's window.",
    ["campaign"],
    registry=REGISTRY,
)

OTHER = "other"


class CampaignLabels:
    """Maps campaign names to label values, keeping at most `limit` distinct ones."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, campaign: str) -> str:
        if campaign in self._seen:
            return campaign
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(campaign)
                return campaign
        return OTHER
