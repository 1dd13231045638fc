"""One typed settings object, read from the environment once at start-up and validated."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class SettingsError(ValueError):
    pass


class Secret:
    """A string that never prints: repr, str and logs show a mask."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def _env(name: str) -> str:
    return "DIALER_" + name.upper()


@dataclass(frozen=True)
class Settings:
    # Handed to asyncpg untouched: rebuilding a DSN clobbers sslmode and multi-host options.
    database_url: str | None = field(
        default=None,
        repr=False,  # a DSN may carry a password
        metadata={
            "env": "DATABASE_URL",
            "doc": "Postgres DSN. Unset: an embedded PostgreSQL is started in `data_dir`.",
        },
    )
    data_dir: str = field(
        default="~/.cache/pgdialer",
        metadata={"doc": "Where the embedded PostgreSQL keeps its data when DATABASE_URL is unset."},
    )
    db_pool_size: int = field(default=8, metadata={"doc": "Connections per worker process."})
    http_host: str = field(default="0.0.0.0", metadata={"doc": "Address of the worker's HTTP server."})
    http_port: int = field(
        default=8080,
        metadata={
            "doc": "Port of the worker's HTTP server (/metrics, /healthz, /readyz, provider callbacks)."
        },
    )
    public_url: str = field(
        default="",
        metadata={
            "doc": "Base URL providers use to reach this service's callbacks. Default http://127.0.0.1:<port>."
        },
    )
    callback_secret: Secret = field(
        default_factory=lambda: Secret(""),
        metadata={
            "doc": "Shared secret that signs provider callbacks (simulator dialect). Required by `worker`."
        },
    )
    provider_url: str = field(
        default="http://127.0.0.1:8099",
        metadata={"doc": "Base URL of the telephony provider's API (the simulator by default)."},
    )
    provider_api_key: Secret = field(
        default_factory=lambda: Secret(""),
        metadata={"doc": "Provider API key (from a Kubernetes Secret in production)."},
    )
    provider_timeout_seconds: float = field(
        default=10.0,
        metadata={
            "doc": "Timeout of one start-call request. A timeout is ambiguous: the attempt is reconciled."
        },
    )
    provider_max_calls_per_second: float = field(
        default=0.0,
        metadata={
            "doc": "The simulator account's start-request rate, held across all workers (0 = none; >= 0.01)."
        },
    )
    providers: str = field(
        default="",
        metadata={
            "doc": "Provider accounts as a JSON list (see README, Providers). Unset: one simulator account."
        },
    )
    providers_file: str = field(
        default="",
        metadata={"doc": "Path of a JSON file with the provider accounts (instead of DIALER_PROVIDERS)."},
    )
    circuit_failure_threshold: int = field(
        default=5, metadata={"doc": "Consecutive start failures that open a provider account's circuit."}
    )
    circuit_cooldown_seconds: float = field(
        default=30.0, metadata={"doc": "How long an open circuit waits before one probe claim."}
    )
    max_inflight_requests: int = field(
        default=200,
        metadata={
            "doc": "Start requests in flight per worker; claims run at most one claim batch ahead of free slots."
        },
    )
    claim_batch_size: int = field(default=100, metadata={"doc": "Most attempts one claim statement takes."})
    claim_concurrency: int = field(
        default=2,
        metadata={
            "doc": "Claim loops per worker while claims come back at least half full (overlaps a claim's round trip with sending); one while capacity is the limit."
        },
    )
    poll_interval_seconds: float = field(
        default=1.0,
        metadata={"doc": "Fallback poll when idle; LISTEN/NOTIFY wakes workers at once on new work."},
    )
    rate_poll_interval_seconds: float = field(
        default=0.05,
        metadata={"doc": "Re-claim delay while due work is held back by a campaign's calls-per-second cap."},
    )
    flush_interval_seconds: float = field(
        default=0.005, metadata={"doc": "Longest an outcome waits to be batched into one database write."}
    )
    dial_timeout_seconds: int = field(
        default=30,
        metadata={
            "doc": "Start-request allowance: a new attempt is looked up if nothing is heard within this plus its ring timeout."
        },
    )
    reconcile_grace_seconds: int = field(
        default=20,
        metadata={"doc": "Added to ring timeout + max call duration before a silent call is looked up."},
    )
    requeue_backoff_seconds: int = field(
        default=30,
        metadata={"doc": "Delay before redialing after a provider error that never reached the network."},
    )
    shutdown_grace_seconds: float = field(
        default=20.0, metadata={"doc": "SIGTERM drain budget (keep below terminationGracePeriodSeconds)."}
    )
    heartbeat_interval_seconds: float = field(default=5.0, metadata={"doc": "Worker heartbeat period."})
    maintenance_interval_seconds: float = field(
        default=1.0,
        metadata={"doc": "Period of business-hours refresh, sweeper and campaign completion checks."},
    )
    stats_interval_seconds: float = field(
        default=10.0,
        metadata={"doc": "Period of the backlog gauges (due backlog, oldest due, held back by reason)."},
    )
    metrics_max_campaigns: int = field(
        default=200,
        metadata={"doc": "Distinct campaign label values; further campaigns are reported as 'other'."},
    )
    api_port: int = field(
        default=8081,
        metadata={
            "doc": "Port of the upstream API server (`dialer api`): /v1, /openapi.json, /metrics, health."
        },
    )
    api_max_body_bytes: int = field(
        default=64 * 1024 * 1024,
        metadata={"doc": "Largest API request body (file uploads included); larger ones get 413."},
    )
    webhook_secret: Secret = field(
        default_factory=lambda: Secret(""),
        metadata={
            "doc": "HMAC-SHA256 key that signs outcome webhooks (X-Dialer-Signature). Required to deliver."
        },
    )
    webhook_timeout_seconds: float = field(
        default=10.0, metadata={"doc": "Timeout of one webhook POST; a timeout is retried."}
    )
    webhook_max_attempts: int = field(
        default=12, metadata={"doc": "Deliveries tried per event before it is given up (kept in the log)."}
    )
    webhook_backoff_seconds: float = field(
        default=5.0,
        metadata={"doc": "First retry delay of a failed webhook; doubles per attempt, capped at one hour."},
    )
    webhook_concurrency: int = field(
        default=20,
        metadata={"doc": "Webhook POSTs in flight per worker (0 disables delivery in this process)."},
    )
    log_level: str = field(default="INFO", metadata={"doc": "Python logging level."})

    def __post_init__(self) -> None:
        errors: list[str] = []

        def need(ok: bool, name: str, why: str) -> None:
            if not ok:
                errors.append(f"{_env_name(name)}: {why}")

        need(1 <= self.db_pool_size <= 200, "db_pool_size", "must be between 1 and 200")
        need(0 <= self.http_port <= 65535, "http_port", "must be a TCP port (0-65535)")
        need(self.provider_timeout_seconds > 0, "provider_timeout_seconds", "must be > 0")
        need(
            self.provider_max_calls_per_second == 0 or self.provider_max_calls_per_second >= 0.01,
            "provider_max_calls_per_second",
            "must be 0 (no limit) or >= 0.01",
        )
        need(
            1 <= self.max_inflight_requests <= 100_000,
            "max_inflight_requests",
            "must be between 1 and 100000",
        )
        need(1 <= self.claim_concurrency <= 16, "claim_concurrency", "must be between 1 and 16")
        need(1 <= self.claim_batch_size <= 10_000, "claim_batch_size", "must be between 1 and 10000")
        need(self.poll_interval_seconds > 0, "poll_interval_seconds", "must be > 0")
        need(self.rate_poll_interval_seconds > 0, "rate_poll_interval_seconds", "must be > 0")
        need(0 < self.flush_interval_seconds <= 1, "flush_interval_seconds", "must be in (0, 1]")
        need(
            self.dial_timeout_seconds > self.provider_timeout_seconds,
            "dial_timeout_seconds",
            "must exceed DIALER_PROVIDER_TIMEOUT_SECONDS, or live requests would be reconciled",
        )
        need(self.reconcile_grace_seconds >= 0, "reconcile_grace_seconds", "must be >= 0")
        need(self.requeue_backoff_seconds >= 0, "requeue_backoff_seconds", "must be >= 0")
        need(self.shutdown_grace_seconds > 0, "shutdown_grace_seconds", "must be > 0")
        need(self.heartbeat_interval_seconds > 0, "heartbeat_interval_seconds", "must be > 0")
        need(self.maintenance_interval_seconds > 0, "maintenance_interval_seconds", "must be > 0")
        need(self.stats_interval_seconds > 0, "stats_interval_seconds", "must be > 0")
        need(self.circuit_failure_threshold >= 1, "circuit_failure_threshold", "must be >= 1")
        need(self.circuit_cooldown_seconds > 0, "circuit_cooldown_seconds", "must be > 0")
        need(self.metrics_max_campaigns >= 1, "metrics_max_campaigns", "must be >= 1")
        need(0 <= self.api_port <= 65535, "api_port", "must be a TCP port (0-65535)")
        need(self.api_max_body_bytes >= 1024, "api_max_body_bytes", "must be >= 1024")
        need(self.webhook_timeout_seconds > 0, "webhook_timeout_seconds", "must be > 0")
        need(1 <= self.webhook_max_attempts <= 100, "webhook_max_attempts", "must be between 1 and 100")
        need(self.webhook_backoff_seconds > 0, "webhook_backoff_seconds", "must be > 0")
        need(0 <= self.webhook_concurrency <= 1000, "webhook_concurrency", "must be between 0 and 1000")
        need(
            self.log_level.upper() in {"DEBUG", "INFO", "WARNING", "ERROR"},
            "log_level",
            "must be DEBUG, INFO, WARNING or ERROR",
        )
        need(self.provider_url.startswith(("http://", "https://")), "provider_url", "must be an http(s) URL")
        need(
            not self.public_url or self.public_url.startswith(("http://", "https://")),
            "public_url",
            "must be an http(s) URL",
        )
        if errors:
            raise SettingsError("invalid settings:\n  " + "\n  ".join(errors))

    @property
    def callback_base_url(self) -> str:
        return (self.public_url or f"http://127.0.0.1:{self.http_port}").rstrip("/")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        errors: list[str] = []
        for f in dataclasses.fields(cls):
            name = f.metadata.get("env", _env(f.name))
            if name not in env or env[name] == "":
                continue
            raw = env[name]
            try:
                values[f.name] = _convert(f.type, raw)
            except ValueError:
                errors.append(f"{name}: {raw!r} is not a valid {_type_name(f.type)}")
        values.update(overrides)
        try:
            settings = cls(**values)
        except SettingsError as exc:
            # Report unparsable and out-of-range values together: one restart fixes them all.
            errors.extend(str(exc).splitlines()[1:])
            errors = [e.strip() for e in errors]
        if errors:
            raise SettingsError("invalid settings:\n  " + "\n  ".join(errors))
        return settings

    def with_(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _env_name(field_name: str) -> str:
    for f in dataclasses.fields(Settings):
        if f.name == field_name:
            return str(f.metadata.get("env", _env(f.name)))
    return field_name


def _type_name(t: object) -> str:
    return {"int": "integer", "float": "number", "Secret": "string"}.get(str(t), str(t))


def _convert(t: object, raw: str) -> Any:
    if t == "int":
        return int(raw)
    if t == "float":
        value = float(raw)
        if not math.isfinite(value):  # NaN and inf slip past every range check
            raise ValueError(raw)
        return value
    if t == "Secret":
        return Secret(raw)
    return raw


def settings_table() -> str:
    """The README's configuration table, generated from the dataclass so the two cannot drift."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(Settings):
        name = f.metadata.get("env", _env(f.name))
        if f.default_factory is not dataclasses.MISSING:
            default = "(secret, empty)"
        else:
            default = "(unset)" if f.default in (None, "") else f"`{f.default}`"
        rows.append(f"| `{name}` | {default} | {f.metadata.get('doc', '')} |")
    return "\n".join(rows)
