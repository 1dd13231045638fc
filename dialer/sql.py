"""The queue's SQL, loaded from the top-level queue/ folder (or the copy a wheel carries)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def sql_dir() -> Path:
    # A source checkout (and an editable install) reads queue/ itself; a wheel carries a copy
    # inside the package because queue/ must never be a Python package of its own.
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "queue", here / "_queue_sql"):
        if (candidate / "queries.sql").is_file():
            return candidate
    raise FileNotFoundError("queue SQL not found next to the dialer package")


def parse_queries(text: str) -> dict[str, str]:
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"duplicate query name {name!r}")
        queries[name] = body.strip()
    return queries


@functools.cache
def queries() -> dict[str, str]:
    return parse_queries((sql_dir() / "queries.sql").read_text())


class _Q:
    """Attribute access to named queries, so a typo fails at import of the caller's test."""

    def __getattr__(self, name: str) -> str:
        try:
            return queries()[name]
        except KeyError:
            raise AttributeError(f"no query named {name!r} in queue/queries.sql") from None


Q = _Q()


def migrations() -> list[tuple[str, str]]:
    files = sorted((sql_dir() / "migrations").glob("*.sql"))
    return [(f.stem, f.read_text()) for f in files]


def schema() -> str:
    return (sql_dir() / "schema.sql").read_text()
