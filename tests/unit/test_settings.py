"""Settings: read once from the environment, typed, validated with every problem named, secrets masked."""

from __future__ import annotations

import dataclasses

import pytest

from dialer.runtime import database
from dialer.settings import Secret, Settings, SettingsError

SECRET_VALUE = "supersecretvalue"
API_KEY_VALUE = "pk_live_0123456789abcdef"


def _error(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    return str(info.value)


def test_empty_environment_gives_the_defaults() -> None:
    """No DIALER_* variables at all is a valid configuration: the documented defaults."""
    assert Settings.from_env({}) == Settings()


def test_from_env_parses_ints_floats_and_secrets() -> None:
    """Each variable is converted to its field's type: int, float, Secret or plain string."""
    s = Settings.from_env(
        {
            "DIALER_HTTP_PORT": "9090",
            "DIALER_CLAIM_BATCH_SIZE": " 250 ",
            "DIALER_PROVIDER_TIMEOUT_SECONDS": "2.5",
            "DIALER_POLL_INTERVAL_SECONDS": "0.25",
            "DIALER_CALLBACK_SECRET": SECRET_VALUE,
            "DIALER_PROVIDER_API_KEY": API_KEY_VALUE,
            "DIALER_LOG_LEVEL": "debug",
            "DIALER_PUBLIC_URL": "https://dialer.example.com/",
        }
    )
    assert (s.http_port, s.claim_batch_size) == (9090, 250)
    assert type(s.http_port) is int
    assert (s.provider_timeout_seconds, s.poll_interval_seconds) == (2.5, 0.25)
    assert isinstance(s.callback_secret, Secret)
    assert s.callback_secret.get() == SECRET_VALUE
    assert s.provider_api_key.get() == API_KEY_VALUE
    assert s.log_level == "debug"
    assert s.callback_base_url == "https://dialer.example.com"


def test_empty_variable_means_default() -> None:
    """A variable set to the empty string (a blank ConfigMap entry) falls back to the default."""
    assert Settings.from_env({"DIALER_HTTP_PORT": "", "DIALER_CALLBACK_SECRET": ""}) == Settings()


def test_overrides_win_over_the_environment() -> None:
    """Keyword overrides (used by the CLI and tests) replace what the environment says."""
    assert Settings.from_env({"DIALER_HTTP_PORT": "9090"}, http_port=0).http_port == 0


@pytest.mark.parametrize(
    ("env", "variable", "why"),
    [
        ({"DIALER_HTTP_PORT": "abc"}, "DIALER_HTTP_PORT", "'abc' is not a valid integer"),
        ({"DIALER_HTTP_PORT": "8080.0"}, "DIALER_HTTP_PORT", "not a valid integer"),
        ({"DIALER_HTTP_PORT": "70000"}, "DIALER_HTTP_PORT", "must be a TCP port"),
        ({"DIALER_CLAIM_BATCH_SIZE": "0"}, "DIALER_CLAIM_BATCH_SIZE", "must be between 1 and 10000"),
        ({"DIALER_DIAL_TIMEOUT_SECONDS": "10"}, "DIALER_DIAL_TIMEOUT_SECONDS", "must exceed"),
        (
            {"DIALER_DIAL_TIMEOUT_SECONDS": "20", "DIALER_PROVIDER_TIMEOUT_SECONDS": "25"},
            "DIALER_DIAL_TIMEOUT_SECONDS",
            "must exceed DIALER_PROVIDER_TIMEOUT_SECONDS",
        ),
        (
            {"DIALER_POLL_INTERVAL_SECONDS": "nan"},
            "DIALER_POLL_INTERVAL_SECONDS",
            "'nan' is not a valid number",
        ),
        ({"DIALER_FLUSH_INTERVAL_SECONDS": "NaN"}, "DIALER_FLUSH_INTERVAL_SECONDS", "not a valid number"),
        ({"DIALER_POLL_INTERVAL_SECONDS": "-1"}, "DIALER_POLL_INTERVAL_SECONDS", "must be > 0"),
        ({"DIALER_LOG_LEVEL": "chatty"}, "DIALER_LOG_LEVEL", "must be DEBUG, INFO, WARNING or ERROR"),
        ({"DIALER_PROVIDER_URL": "localhost:8099"}, "DIALER_PROVIDER_URL", "must be an http(s) URL"),
    ],
)
def test_bad_value_names_the_variable(env: dict[str, str], variable: str, why: str) -> None:
    """A bad value raises SettingsError naming the environment variable and what is wrong with it."""
    message = _error(env)
    line = next(line for line in message.splitlines() if variable + ":" in line)
    assert why in line


def test_infinite_interval_is_rejected() -> None:
    """An infinite duration is as invalid as NaN: it passes every '> 0' check but no timer can use it."""
    assert "DIALER_HEARTBEAT_INTERVAL_SECONDS" in _error({"DIALER_HEARTBEAT_INTERVAL_SECONDS": "inf"})


def test_two_unparsable_values_are_both_reported() -> None:
    """Every conversion error is reported at once, so a deploy is fixed in one round trip."""
    message = _error({"DIALER_HTTP_PORT": "abc", "DIALER_DB_POOL_SIZE": "many"})
    assert "DIALER_HTTP_PORT" in message
    assert "DIALER_DB_POOL_SIZE" in message


def test_two_out_of_range_values_are_both_reported() -> None:
    """Every range error is reported at once, so a deploy is fixed in one round trip."""
    message = _error({"DIALER_CLAIM_BATCH_SIZE": "0", "DIALER_DIAL_TIMEOUT_SECONDS": "5"})
    assert "DIALER_CLAIM_BATCH_SIZE" in message
    assert "DIALER_DIAL_TIMEOUT_SECONDS" in message


def test_unparsable_and_out_of_range_values_are_both_reported() -> None:
    """A type error in one variable does not hide a range error in another: both are named at once."""
    message = _error({"DIALER_HTTP_PORT": "abc", "DIALER_CLAIM_BATCH_SIZE": "0"})
    assert "DIALER_HTTP_PORT" in message
    assert "DIALER_CLAIM_BATCH_SIZE" in message


def test_secrets_never_print() -> None:
    """Secret values appear in no repr, str, f-string or asdict() rendering of the settings."""
    s = Settings.from_env({"DIALER_CALLBACK_SECRET": SECRET_VALUE, "DIALER_PROVIDER_API_KEY": API_KEY_VALUE})
    renderings = [
        repr(s),
        str(s),
        f"{s}",
        f"{s!r}",
        f"{s.callback_secret}",
        f"{s.provider_api_key!r}",
        str(dataclasses.asdict(s)),
        repr(s.with_(http_port=1)),
    ]
    for text in renderings:
        assert SECRET_VALUE not in text
        assert API_KEY_VALUE not in text
    assert "Secret('***')" in repr(s)


def test_empty_secret_is_falsy_and_says_so() -> None:
    """An unset secret is falsy (so `worker` can require it) and prints as empty, not as a mask."""
    assert not Secret("")
    assert repr(Secret("")) == "Secret('')"
    assert Secret("x")
    assert Secret("x") == Secret("x") != Secret("y")


DSN = (
    "postgresql://dialer:p%40ss%3Aword@db-a.internal:5432,db-b.internal:5433/dialer"
    "?sslmode=verify-full&sslrootcert=/etc/ssl/rds.pem&target_session_attrs=read-write"
    "&application_name=dialer%20worker&options=-c%20statement_timeout%3D5s"
)


async def test_database_url_is_passed_through_untouched() -> None:
    """DATABASE_URL reaches the runtime byte-identical: sslmode and multi-host settings survive."""
    s = Settings.from_env({"DATABASE_URL": DSN})
    assert s.database_url == DSN
    async with database(s) as dsn:
        assert dsn == DSN


def test_database_url_is_not_a_dialer_prefixed_variable() -> None:
    """The DSN is read from the conventional DATABASE_URL, not DIALER_DATABASE_URL."""
    assert Settings.from_env({"DIALER_DATABASE_URL": DSN}).database_url is None
