"""`dialer demo --provider KIND`: every adapter dials the simulator speaking its provider's dialect, end
to end with a worker process, and no credential drawn for the run reaches the output."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from dialer import cli, demo, demo_providers
from dialer.demo_providers import KINDS, DemoProvider


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
async def test_demo_finishes_through_each_provider_without_printing_secrets(
    kind: str,
    dsn: str,
    conn: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The demo finishes its campaign through KIND's adapter, names it, and prints no secret."""
    plans: list[DemoProvider] = []
    real_plan = demo_providers.plan

    def spy(kind: str, worker_urls: Any) -> DemoProvider:
        plans.append(real_plan(kind, worker_urls))
        return plans[-1]

    monkeypatch.setattr(demo_providers, "plan", spy)
    monkeypatch.setenv("DATABASE_URL", dsn)
    # run_demo owns an event loop (asyncio.run); the test's loop stays free in the meantime.
    code = await asyncio.to_thread(
        demo.run_demo,
        numbers=40,
        campaigns=1,
        workers=1,
        time_scale=0.001,
        timeout_seconds=60,
        provider=kind,
    )
    out, err = capfd.readouterr()

    [plan] = plans
    assert code == 0, out + err
    assert "status finished" in out
    assert f"provider {plan.label}" in out
    assert plan.account == kind
    leaked = [name for name, value in _secrets(plan).items() if value in out or value in err]
    assert not leaked, f"secrets printed: {leaked}"
    # The campaign dialed through KIND's account, and every attempt reached an outcome.
    assert await conn.fetchval("SELECT array_agg(DISTINCT provider) FROM dialer_campaign") == [plan.account]
    states = await conn.fetch("SELECT state, count(*) AS n FROM dialer_attempt GROUP BY state")
    assert [r["state"] for r in states] == ["ended"]
    assert states[0]["n"] >= 40


def _secrets(plan: DemoProvider) -> dict[str, str]:
    named = {"api_key": plan.api_key, "callback_secret": plan.callback_secret, **plan.secret_env}
    assert set(named.values()) == set(plan.secret_values)
    # A dialect's own copy of each credential is the same value, drawn once.
    for options in plan.dialect_options.values():
        for key in ("auth_token", "password", "hmac_secret", "api_key", "callback_secret"):
            if key in options:
                assert options[key] in plan.secret_values, key
    return named


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_gets_fresh_secrets_only_in_the_environment(kind: str) -> None:
    """Credentials are drawn per run, named by *_env keys in DIALER_PROVIDERS, and never in its JSON."""
    first = demo_providers.plan(kind, ["http://127.0.0.1:1"])
    second = demo_providers.plan(kind, ["http://127.0.0.1:1"])
    assert set(first.secret_values).isdisjoint(second.secret_values)
    env = first.worker_env("http://127.0.0.1:2")
    accounts = env.get("DIALER_PROVIDERS", "")
    assert all(value not in accounts for value in first.secret_values)
    for name, value in first.secret_env.items():
        assert env[name] == value
        assert f'"{name}"' in accounts
    if kind == "simulator":
        assert "DIALER_PROVIDERS" not in env  # the workers' built-in simulator account, as ever
    else:
        assert '"base_url":"http://127.0.0.1:2' in accounts


@pytest.mark.parametrize(("argv", "expected"), [([], "simulator"), (["--provider", "upcall"], "upcall")])
def test_cli_passes_the_provider_to_the_demo(
    argv: list[str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dialer demo [--provider KIND]` runs the demo with that kind, the simulator by default."""
    seen: dict[str, Any] = {}

    def fake_run_demo(**kwargs: Any) -> int:
        seen.update(kwargs)
        return 0

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert cli.main(["demo", *argv]) == 0
    assert seen["provider"] == expected


def test_cli_refuses_an_unknown_provider(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown --provider is a usage error listing the choices."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--provider", "asterisk"])
    assert exc.value.code == 2
    assert "choose from" in capsys.readouterr().err
