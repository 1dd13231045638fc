"""Provider account configuration: adapters per campaign, secrets only from the environment."""

from __future__ import annotations

import orjson
import pytest

from dialer.providers import load_accounts
from dialer.settings import Settings, SettingsError


def accounts(raw: object, env: dict[str, str] | None = None) -> list[object]:
    return list(load_accounts(Settings(providers=orjson.dumps(raw).decode()), env or {}))


def test_default_is_one_simulator_account() -> None:
    """Without DIALER_PROVIDERS there is one account named simulator, built from the DIALER_PROVIDER_* settings."""
    (only,) = load_accounts(Settings(), {})
    assert (only.name, only.kind) == ("simulator", "simulator")


def test_secrets_come_from_named_environment_variables() -> None:
    """`api_key_env` names the variable; the value is a Secret that never prints."""
    (acct,) = load_accounts(
        Settings(
            providers='[{"name": "sim-b", "kind": "simulator", "base_url": "http://127.0.0.1:9", '
            '"api_key_env": "SIM_B_KEY", "callback_secret_env": "SIM_B_SECRET", "region": "eu"}]'
        ),
        {"SIM_B_KEY": "k-123", "SIM_B_SECRET": "s-456"},
    )
    assert acct.secret("api_key") == "k-123"
    assert acct.options == {"region": "eu"}
    assert "k-123" not in repr(acct)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            [{"name": "a", "kind": "simulator", "base_url": "http://x", "api_key": "literal"}],
            "use api_key_env",
        ),
        (
            [{"name": "a", "kind": "simulator", "base_url": "http://x", "api_key_env": "MISSING"}],
            "'MISSING' is not set",
        ),
        ([{"name": "a", "kind": "pigeon", "base_url": "http://x"}], "kind: 'pigeon'"),
        ([{"name": "A B", "kind": "simulator", "base_url": "http://x"}], "name"),
        ([{"name": "a", "kind": "simulator", "base_url": "ftp://x"}], "base_url"),
        (
            [{"name": "a", "kind": "simulator", "base_url": "http://x", "max_calls_per_second": -1}],
            "max_calls",
        ),
        (
            # One call in 1,000 s: a window the claim's start log does not keep.
            [{"name": "a", "kind": "simulator", "base_url": "http://x", "max_calls_per_second": 0.001}],
            "0 \\(no limit\\) or a number >= 0.01",
        ),
        ([], "non-empty"),
        ({"name": "a"}, "non-empty JSON list"),
    ],
)
def test_bad_account_configuration_is_refused(raw: object, message: str) -> None:
    """Every mistake in the accounts JSON is a clear start-up error naming the field."""
    with pytest.raises(SettingsError, match=message):
        accounts(raw)


def test_duplicate_account_names_are_refused() -> None:
    """Two accounts with one name would make a campaign's provider ambiguous."""
    one = {"name": "a", "kind": "simulator", "base_url": "http://x"}
    with pytest.raises(SettingsError, match="unique"):
        accounts([one, one])
