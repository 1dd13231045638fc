"""Which errors are a lost database connection (retried by the worker's loops) and which are bugs."""

from __future__ import annotations

import asyncpg
import pytest

from dialer.db import connection_lost


def _raised_while_handling(first: BaseException, second: BaseException) -> BaseException:
    try:
        try:
            raise first
        except BaseException:
            raise second  # noqa: B904 - exactly what asyncpg's Transaction.__aexit__ does
    except BaseException as exc:
        return exc


def test_leaving_a_transaction_whose_connection_died_is_a_connection_loss() -> None:
    """asyncpg replaces the lost connection with an InterfaceError from Transaction.__aexit__;
    before, that killed the worker (a sweeper transaction cut by a network blip started a drain)."""
    exc = _raised_while_handling(
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("cannot call Transaction.__aexit__(): the underlying connection is closed"),
    )
    assert isinstance(exc, asyncpg.InterfaceError)
    assert connection_lost(exc)


@pytest.mark.parametrize(
    "exc",
    [asyncpg.ConnectionDoesNotExistError("closed"), ConnectionRefusedError(111, "refused"), TimeoutError()],
)
def test_connection_errors_are_losses(exc: BaseException) -> None:
    assert connection_lost(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        asyncpg.UndefinedColumnError("column x does not exist"),
        ValueError("bug"),
        _raised_while_handling(ValueError("bug"), KeyError("another bug")),
    ],
)
def test_anything_else_is_a_bug(exc: BaseException) -> None:
    assert not connection_lost(exc)
