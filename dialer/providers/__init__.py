"""Provider accounts: which adapter, where, with which credentials; chosen per campaign by name.

Accounts come from `DIALER_PROVIDERS` (a JSON list) or the file named by `DIALER_PROVIDERS_FILE`.
Credentials never sit in that JSON: a key ending in `_env` names the environment variable (a
Kubernetes Secret) that holds the value, e.g. `{"auth_token_env": "TWILIO_AUTH_TOKEN"}`.
Without either setting there is one account, `simulator`, built from the DIALER_PROVIDER_* settings.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from dialer.providers.base import Provider
from dialer.settings import Secret, Settings, SettingsError

_NAME = re.compile(r"^[a-z0-9_\-]{1,64}$")
_SECRET_WORDS = ("token", "secret", "password", "api_key", "apikey", "key")


@dataclass(frozen=True)
class ProviderAccount:
    name: str
    kind: str
    base_url: str
    max_calls_per_second: float = 0.0
    timeout_seconds: float = 10.0
    options: Mapping[str, Any] = field(default_factory=dict)
    secrets: Mapping[str, Secret] = field(default_factory=dict)

    def secret(self, name: str) -> str:
        try:
            return self.secrets[name].get()
        except KeyError:
            raise SettingsError(
                f"invalid settings:\n  provider {self.name!r}: needs {name}_env naming an environment variable"
            ) from None


Factory = Callable[[ProviderAccount, Settings], Provider]
_FACTORIES: dict[str, Factory] = {}


def register(kind: str, factory: Factory) -> None:
    _FACTORIES[kind] = factory


def kinds() -> list[str]:
    _load_builtin()
    return sorted(_FACTORIES)


# kind → module exposing `from_account(account, settings) -> Provider`. Imported lazily so an
# adapter can import this package without a cycle, and only the kinds in use pay the import.
_BUILTIN = {
    "simulator": "dialer.providers.simulated",
    "twilio": "dialer.providers.twilio",
    "paycall": "dialer.providers.paycall",
    "callr": "dialer.providers.callr",
    "upcall": "dialer.providers.upcall",
    "http": "dialer.providers.generic",
}


def _load_builtin() -> None:
    for kind, module_name in _BUILTIN.items():
        if kind in _FACTORIES:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # an adapter not shipped in this build
            raise
        register(kind, module.from_account)


def load_accounts(settings: Settings, environ: Mapping[str, str] | None = None) -> list[ProviderAccount]:
    env = os.environ if environ is None else environ
    raw: Any
    if settings.providers_file:
        try:
            raw = orjson.loads(Path(settings.providers_file).expanduser().read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise SettingsError(f"invalid settings:\n  DIALER_PROVIDERS_FILE: {exc}") from None
    elif settings.providers:
        try:
            raw = orjson.loads(settings.providers)
        except orjson.JSONDecodeError as exc:
            raise SettingsError(f"invalid settings:\n  DIALER_PROVIDERS: not JSON ({exc})") from None
    else:
        return [
            ProviderAccount(
                name="simulator",
                kind="simulator",
                base_url=settings.provider_url,
                max_calls_per_second=settings.provider_max_calls_per_second,
                timeout_seconds=settings.provider_timeout_seconds,
                secrets={"api_key": settings.provider_api_key, "callback_secret": settings.callback_secret},
            )
        ]
    if not isinstance(raw, list) or not raw:
        raise SettingsError(
            "invalid settings:\n  DIALER_PROVIDERS: must be a non-empty JSON list of accounts"
        )
    known = kinds()
    accounts: list[ProviderAccount] = []
    errors: list[str] = []
    for i, item in enumerate(raw):
        where = f"provider[{i}]"
        if not isinstance(item, dict):
            errors.append(f"{where}: must be an object")
            continue
        item = dict(item)
        name, kind, base_url = item.pop("name", None), item.pop("kind", None), item.pop("base_url", None)
        if not isinstance(name, str) or not _NAME.match(name):
            errors.append(f"{where}.name: {name!r} must match {_NAME.pattern}")
        if kind not in known:
            errors.append(f"{where}.kind: {kind!r} is not one of {known}")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            errors.append(f"{where}.base_url: {base_url!r} must be an http(s) URL")
        cps = item.pop("max_calls_per_second", 0.0)
        timeout = item.pop("timeout_seconds", settings.provider_timeout_seconds)
        if not isinstance(cps, int | float) or not (cps == 0 or cps >= 0.01):
            errors.append(f"{where}.max_calls_per_second: must be 0 (no limit) or a number >= 0.01")
        if not isinstance(timeout, int | float) or timeout <= 0:
            errors.append(f"{where}.timeout_seconds: must be a number > 0")
        secrets: dict[str, Secret] = {}
        options: dict[str, Any] = {}
        for key, value in item.items():
            if key.endswith("_env"):
                if not isinstance(value, str) or not env.get(value):
                    errors.append(f"{where}.{key}: environment variable {value!r} is not set")
                else:
                    secrets[key[:-4]] = Secret(env[value])
            elif any(word in key.lower() for word in _SECRET_WORDS):
                errors.append(f"{where}.{key}: secrets go in environment variables; use {key}_env")
            else:
                options[key] = value
        if not errors:
            accounts.append(
                ProviderAccount(
                    str(name), str(kind), str(base_url), float(cps), float(timeout), options, secrets
                )
            )
    names = [a.name for a in accounts]
    if len(set(names)) != len(names):
        errors.append("provider names must be unique")
    if errors:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(errors))
    return accounts


def build(settings: Settings) -> dict[str, Provider]:
    _load_builtin()
    providers: dict[str, Provider] = {}
    for account in load_accounts(settings):
        providers[account.name] = _FACTORIES[account.kind](account, settings)
    return providers
