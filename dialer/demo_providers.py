"""What `dialer demo --provider KIND` changes: the simulator speaks KIND's dialect and the workers dial
through KIND's adapter, configured as an operator would (a DIALER_PROVIDERS account whose credentials
sit in environment variables).

Every credential is drawn fresh per run and reaches the workers only through their environment: the
account JSON names the variables, never the values, so nothing secret is printed or written to disk.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

KINDS: Final = ("simulator", "twilio", "paycall", "callr", "upcall", "http")
DEFAULT_KIND: Final = "simulator"

# The campaigns' caller id; dialects that need a number of their own get the same one.
CALLER_ID: Final = "+12125550100"
# CALLR's REALTIME10 app hash from its own RT.Request example: the dialect checks calls name it.
_CALLR_APP: Final = "4346423A"
_UPCALL_CAMPAIGN: Final = 7

# A one-step script: Paycall's dialer flow needs an IVR, and the simulator only checks its shape.
_PAYCALL_IVR: Final[Mapping[str, Any]] = {
    "count_steps": 1,
    "have_dependency": "false",
    "steps": [
        {
            "step_id": "hello",
            "gender": "female",
            "prompt": "This is a dialer demo. Press 1 to hear it again.",
            "dtmf_ivr": ["1"],
            "dtmf_ivr_timeout": 1,
            "dtmf_ivr_invalid_text": "That key does nothing here.",
            "dtmf_ivr_retries": 1,
            "actions": [{"key": "1", "actions": [{"action": "goto", "params": {"step_id": "hello"}}]}],
        }
    ],
}


def generic_http_config() -> dict[str, Any]:
    """The generic adapter's options (kind `http`) for the simulator's `http` dialect
    (dialer/simdialects/http.py): the demo's account, and the adapter's contract tests."""
    auth = {"X-Api-Key": "{secret:api_key}"}
    return {
        "start": {
            "method": "POST",
            "path": "/api/calls",
            "encoding": "json",
            "headers": dict(auth),
            "body": {
                "ref": "{attempt_id}",
                "to": "{to}",
                "from": "{from}",
                "ring_timeout": "{ring_timeout_seconds}",
                "notify_url": "{callback_url}",
                "digits": "{dtmf}",
                "tag": "{campaign}",
            },
        },
        "start_response": {"call_id": "call.id"},
        "error_map": [
            {
                "status": 400,
                "path": "error.code",
                "value": "bad_number",
                "kind": "rejected",
                "outcome": "invalid_number",
            },
            {"status": 429, "path": "error.processed", "value": False, "kind": "rate_limited"},
        ],
        "callback": {
            "attempt_id": "ref",
            "call_id": "call.id",
            "status": "call.state",
            "status_map": {
                "queued": "ringing",
                "ringing": "ringing",
                "talking": "answered",
                "completed": "answered_human",
                "busy": "busy",
                "no_answer": "no_answer",
                "failed": "from_cause",
                "canceled": "canceled",
            },
            "answered_at": "call.answered_at",
            "ended_at": "call.ended_at",
            "duration": "call.duration",
            "billsec": "call.billed",
            "cause": "call.q850",
            "sip": "call.sip",
            "signature": {
                "header": "X-Signature",
                "algorithm": "hmac-sha256",
                "secret": "webhook_secret",
                "encoding": "base64",
                "signed": "url+body",
            },
        },
        "lookup": {
            "method": "GET",
            "path": "/api/calls/by-ref/{attempt_id}",
            "headers": dict(auth),
            "not_found_means_never_received": True,
        },
        "hangup": {"method": "POST", "path": "/api/calls/by-ref/{attempt_id}/hangup", "headers": dict(auth)},
    }


@dataclass(frozen=True)
class DemoProvider:
    """One run's provider side: the simulator's dialect settings and the workers' account."""

    kind: str
    # The provider account campaigns name; callbacks reach /callbacks/<account>.
    account: str
    dialect: str
    # The native dialect's credentials: SimulatorConfig needs them whatever else is mounted, and
    # workers always need a callback secret (it keys the per-attempt callback tokens).
    api_key: str
    callback_secret: str
    dialects: list[str] = field(default_factory=lambda: ["native"])
    dialect_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Further SimulatorConfig fields this provider needs (how the real one delivers callbacks).
    simulator_overrides: dict[str, Any] = field(default_factory=dict)
    # The DIALER_PROVIDERS account without base_url; None keeps the workers' built-in simulator account.
    account_json: dict[str, Any] | None = None
    # Appended to the simulator's URL: where the dialect serves this provider's API.
    base_path: str = ""
    # Environment variable -> value, for the credentials account_json names by *_env keys.
    secret_env: dict[str, str] = field(default_factory=dict)
    # Worker settings (DIALER_* variables) this provider's demo needs changed.
    worker_settings: dict[str, str] = field(default_factory=dict)

    def base_url(self, simulator_url: str) -> str:
        return simulator_url.rstrip("/") + self.base_path

    def worker_env(self, simulator_url: str) -> dict[str, str]:
        """What a worker process needs on top of the demo's other settings."""
        env = {
            "DIALER_PROVIDER_URL": simulator_url,
            "DIALER_PROVIDER_API_KEY": self.api_key,
            "DIALER_CALLBACK_SECRET": self.callback_secret,
            **self.worker_settings,
        }
        if self.account_json is not None:
            account = {**self.account_json, "base_url": self.base_url(simulator_url)}
            # A file named in the caller's environment would win over DIALER_PROVIDERS.
            env["DIALER_PROVIDERS_FILE"] = ""
            env["DIALER_PROVIDERS"] = orjson.dumps([account]).decode()
            env.update(self.secret_env)
        return env

    @property
    def secret_values(self) -> tuple[str, ...]:
        """Every credential drawn for this run: none may ever appear in the demo's output."""
        return (self.api_key, self.callback_secret, *self.secret_env.values())

    @property
    def label(self) -> str:
        """Which adapter talked to which simulator dialect, for the summary."""
        return f"account {self.account!r}: the {self.kind} adapter against the simulator's {self.dialect} dialect"

    def describe(self, simulator_url: str) -> str:
        if self.account_json is None:
            return f"provider: account {self.account!r} (built-in simulator adapter, native dialect)"
        variables = ", ".join(sorted(self.secret_env))
        return (
            f"provider: account {self.account!r} through the {self.kind} adapter, the simulator speaking "
            f"the {self.dialect} dialect at {self.base_url(simulator_url)}; credentials drawn for this run, "
            f"given to the workers only as {variables}"
        )


def _token(nbytes: int = 16) -> str:
    return secrets.token_hex(nbytes)


def plan(kind: str, worker_urls: Sequence[str]) -> DemoProvider:
    """The provider side of one demo run of ``kind``; ``worker_urls`` are the workers' base URLs."""
    if kind not in KINDS:
        raise ValueError(f"unknown demo provider {kind!r}; known: {list(KINDS)}")
    callback_secret, api_key = _token(16), _token(8)
    if kind == "simulator":
        return DemoProvider(kind, "simulator", "native", api_key, callback_secret)
    if kind == "twilio":
        token = _token()
        # An account SID is an identifier, not a credential: Twilio shows it in every URL.
        sid = "AC" + secrets.token_hex(16)
        return DemoProvider(
            kind,
            "twilio",
            "twilio",
            api_key,
            callback_secret,
            dialects=["native", "twilio"],
            # Calls to numbers ending in 5 are answered by a machine, when the start asks for AMD.
            dialect_options={
                "twilio": {
                    "account_sid": sid,
                    "auth_token": token,
                    "answered_by_last_digit": {"5": "machine_end_beep"},
                }
            },
            account_json={
                "name": "twilio",
                "kind": "twilio",
                "account_sid": sid,
                "auth_token_env": "DIALER_DEMO_TWILIO_AUTH_TOKEN",
                "answer_url": "https://dialer-demo.invalid/twiml/answer",
                "machine_detection": "Enable",
                "from_number": CALLER_ID,
            },
            secret_env={"DIALER_DEMO_TWILIO_AUTH_TOKEN": token},
        )
    if kind == "paycall":
        password = _token()
        return DemoProvider(
            kind,
            "paycall",
            "paycall",
            api_key,
            callback_secret,
            dialects=["native", "paycall"],
            dialect_options={"paycall": {"username": "dialer-demo", "password": password}},
            account_json={
                "name": "paycall",
                "kind": "paycall",
                "username": "dialer-demo",
                "password_env": "DIALER_DEMO_PAYCALL_PASSWORD",
                "ivr": _PAYCALL_IVR,
            },
            secret_env={"DIALER_DEMO_PAYCALL_PASSWORD": password},
        )
    if kind == "callr":
        password, hmac_secret = _token(), _token()
        return DemoProvider(
            kind,
            "callr",
            "callr",
            api_key,
            callback_secret,
            dialects=["native", "callr"],
            # CALLR webhooks are one account-wide subscription, not a URL per call: every start and
            # hangup event goes to the first worker, which may still be starting when another one
            # places the first calls.
            dialect_options={
                "callr": {
                    "login": "dialer-demo",
                    "password": password,
                    "app": _CALLR_APP,
                    "webhook_url": f"{worker_urls[0].rstrip('/')}/callbacks/callr",
                    "hmac_secret": hmac_secret,
                }
            },
            # So webhooks outlast that start-up (0.2 s doubling: about 6 s) rather than wait for the
            # sweeper's lookup after ring timeout and grace.
            simulator_overrides={"callback_max_attempts": 6},
            account_json={
                "name": "callr",
                "kind": "callr",
                "login": "dialer-demo",
                "password_env": "DIALER_DEMO_CALLR_PASSWORD",
                "hmac_secret_env": "DIALER_DEMO_CALLR_HMAC_SECRET",
                "app": _CALLR_APP,
            },
            secret_env={
                "DIALER_DEMO_CALLR_PASSWORD": password,
                "DIALER_DEMO_CALLR_HMAC_SECRET": hmac_secret,
            },
        )
    if kind == "upcall":
        token = _token()
        return DemoProvider(
            kind,
            "upcall",
            "upcall",
            api_key,
            callback_secret,
            dialects=["native", "upcall"],
            dialect_options={
                "upcall": {"auth_token": token, "campaign_id": _UPCALL_CAMPAIGN, "from_number": CALLER_ID}
            },
            account_json={
                "name": "upcall",
                "kind": "upcall",
                "auth_token_env": "DIALER_DEMO_UPCALL_AUTH_TOKEN",
                "campaign_id": _UPCALL_CAMPAIGN,
                # Results are polled, never pushed: the workers read /calls on every maintenance tick.
                # A number nobody worked is given up after a minute (the least Upcall's adapter
                # allows) rather than its default day, so a demo never waits on one.
                "queue_timeout_seconds": 60,
            },
            base_path="/api/v1",
            secret_env={"DIALER_DEMO_UPCALL_AUTH_TOKEN": token},
            worker_settings={
                # Upcall reports a congested line as "technical_issue", a provider error: it spends
                # no attempt and is redialed after the requeue backoff, 30 s by default, which would
                # hold the demo (retries after 3 s) for half a minute per congested call.
                "DIALER_REQUEUE_BACKOFF_SECONDS": "0",
                # Results arrive only when a worker polls, once per maintenance tick.
                "DIALER_MAINTENANCE_INTERVAL_SECONDS": "0.2",
            },
        )
    key, webhook_secret = _token(), _token()
    return DemoProvider(
        kind,
        "http",
        "http",
        api_key,
        callback_secret,
        dialects=["native", "http"],
        dialect_options={"http": {"api_key": key, "callback_secret": webhook_secret}},
        account_json={
            "name": "http",
            "kind": "http",
            "api_key_env": "DIALER_DEMO_HTTP_API_KEY",
            "webhook_secret_env": "DIALER_DEMO_HTTP_WEBHOOK_SECRET",
            **generic_http_config(),
        },
        secret_env={"DIALER_DEMO_HTTP_API_KEY": key, "DIALER_DEMO_HTTP_WEBHOOK_SECRET": webhook_secret},
    )
