"""Schemathesis fuzzes the live API (a real `dialer api` process on a real Postgres) against its own
OpenAPI document: no 5xx, and every response matches the documented status codes and schemas."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import asyncpg
import pytest
import requests
from hypothesis import HealthCheck, Phase, settings

from dialer.api import hash_token, new_token
from dialer.demo import free_port
from dialer.sql import Q
from tests.factories import NOW

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode, checks  # noqa: E402

# Bounded: a few dozen cases per operation keeps the whole run to seconds.
EXAMPLES_PER_OPERATION = int(os.environ.get("API_FUZZ_EXAMPLES", "30"))


@pytest.fixture
async def seeded(dsn: str) -> str:
    """A database with a token, one campaign with numbers and one suppression, so ids resolve."""
    conn = await asyncpg.connect(dsn)
    token = new_token()
    await conn.execute(Q.api_token_insert, "fuzz", hash_token(token), NOW)
    await conn.execute("INSERT INTO dialer_campaign (name) VALUES ('fuzz')")
    await conn.fetchval("SELECT dialer_enqueue('fuzz', '[\"+12125550100\", \"+12125550101\"]'::jsonb)")
    await conn.execute("INSERT INTO dialer_suppression (phone) VALUES ('+12125550199')")
    await conn.close()
    return token


@contextlib.contextmanager
def api_process(dsn: str) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "DIALER_HTTP_HOST": "127.0.0.1",
        "DIALER_API_PORT": str(port),
        "DIALER_LOG_LEVEL": "WARNING",
        "DIALER_DB_POOL_SIZE": "4",
        "DIALER_API_MAX_BODY_BYTES": str(1024 * 1024),
    }
    proc = subprocess.Popen([sys.executable, "-m", "dialer", "api"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"dialer api exited with {proc.returncode}"
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "dialer api did not become ready"
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_api_never_fails_and_always_matches_its_openapi_document(dsn: str, seeded: str) -> None:
    """Generated requests for every documented operation get no 5xx and schema-conformant answers."""
    with api_process(dsn) as url:
        schema = schemathesis.openapi.from_url(url + "/openapi.json")
        headers = {"Authorization": f"Bearer {seeded}"}
        operations = [op.ok() for op in schema.get_all_operations()]
        assert len(operations) >= 20
        failures: list[str] = []
        for operation, mode in itertools.product(operations, GenerationMode):
            # Positive cases follow the schema; negative ones break it on purpose (4xx expected).
            strategy = operation.as_strategy(generation_mode=mode)

            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case: schemathesis.Case) -> None:
                case.call_and_validate(
                    base_url=url,
                    headers=headers,
                    checks=[
                        checks.not_a_server_error,
                        checks.status_code_conformance,
                        checks.content_type_conformance,
                        checks.response_schema_conformance,
                    ],
                )

            try:
                from hypothesis import given

                given(case=strategy)(run)()
            except Exception as exc:  # collect every operation's failure, then report them together
                failures.append(f"{operation.label} ({mode.value}): {exc}")
        assert not failures, "\n\n".join(failures)
