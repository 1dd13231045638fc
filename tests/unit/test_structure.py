"""The layout rules of STYLE.md, pinned: the queue folder, named queries, import boundaries, README table."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from dialer import sql
from dialer.settings import Settings, settings_table

ROOT = Path(__file__).resolve().parents[2]

# Run with the repo root first on sys.path, exactly as pytest and `python -m` put it there.
_SHADOW_PROBE = """
import sys
sys.path.insert(0, '')
import asyncio, json, queue, concurrent.futures
loop = asyncio.get_event_loop_policy().new_event_loop()
try:
    infos = loop.run_until_complete(loop.getaddrinfo('localhost', 80))
finally:
    loop.close()
print(json.dumps({'queue': queue.__file__, 'futures': concurrent.futures.__file__, 'addrinfo': len(infos)}))
"""


def _python_files(*folders: str) -> Iterator[Path]:
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def _query_names_used(*folders: str) -> dict[str, set[str]]:
    """Query name -> files using it, as `Q.<name>` or `queries()["<name>"]` in the code (not in comments)."""
    used: dict[str, set[str]] = {}
    for path in _python_files(*folders):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = None
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Q":
                name = node.attr
            elif (
                isinstance(node, ast.Subscript)
                and isinstance(node.value, ast.Call)
                and getattr(node.value.func, "attr", getattr(node.value.func, "id", None)) == "queries"
                and isinstance(node.slice, ast.Constant)
                and isinstance(node.slice.value, str)
            ):
                name = node.slice.value
            if name is not None:
                used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return used


def _imported_top_levels(path: Path) -> set[str]:
    """Top-level names a module imports anywhere in it (function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_queue_folder_is_not_a_python_package() -> None:
    """queue/ holds SQL only: no __init__.py and no Python module that could shadow the stdlib."""
    assert (ROOT / "queue" / "queries.sql").is_file()
    assert not (ROOT / "queue" / "__init__.py").exists()
    assert list((ROOT / "queue").rglob("*.py")) == []


def test_import_queue_is_the_stdlib_with_repo_root_on_path() -> None:
    """With the repo root first on sys.path, `queue` is the stdlib and loop.getaddrinfo still works."""
    out = subprocess.run(
        [sys.executable, "-c", _SHADOW_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert Path(seen["queue"]).resolve().parent == stdlib
    assert stdlib in Path(seen["futures"]).resolve().parents
    assert seen["addrinfo"] >= 1


def test_shadow_probe_detects_a_queue_package(tmp_path: Path) -> None:
    """The probe above is not vacuous: a queue/__init__.py on the path does shadow the stdlib."""
    (tmp_path / "queue").mkdir()
    (tmp_path / "queue" / "__init__.py").write_text("")
    out = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, ''); import queue; print(queue.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert Path(out.stdout.strip()).resolve() == (tmp_path / "queue" / "__init__.py").resolve()


def test_every_query_the_code_uses_exists() -> None:
    """Each `Q.<name>` in dialer/ names a query in queue/queries.sql (a typo fails here, not in production)."""
    defined = set(sql.queries())
    missing = {name: files for name, files in _query_names_used("dialer").items() if name not in defined}
    assert missing == {}


def test_every_named_query_is_used() -> None:
    """No named query in queue/queries.sql is dead code: dialer/, bench/ or tests/ uses each one."""
    used = _query_names_used("dialer", "bench", "tests")
    assert sorted(set(sql.queries()) - set(used)) == []


def test_named_queries_have_bodies() -> None:
    """Every `-- name:` block in queries.sql carries a statement (a stray marker would yield an empty one)."""
    queries = sql.queries()
    assert queries
    assert [name for name, body in queries.items() if not body.strip()] == []


def test_parse_queries_rejects_duplicate_names() -> None:
    """Two blocks with one name are an error, not a silent override of the first."""
    text = "-- name: a\nSELECT 1;\n\n-- name: b\nSELECT 2;\n\n-- name: a\nSELECT 3;\n"
    with pytest.raises(ValueError, match="duplicate query name 'a'"):
        sql.parse_queries(text)


def test_unknown_query_name_is_an_attribute_error() -> None:
    """A query name missing from queries.sql fails loudly and names the file to look in."""
    with pytest.raises(AttributeError, match=r"queue/queries\.sql"):
        _ = sql.Q.no_such_query_anywhere


@pytest.mark.parametrize("path", list(_python_files("scheduler")), ids=lambda p: p.name)
def test_scheduler_is_pure(path: Path) -> None:
    """Pacing maths does no I/O: scheduler/ imports no database, HTTP, event loop, dialer or metrics code."""
    forbidden = {
        "asyncpg",
        "aiohttp",
        "asyncio",
        "dialer",
        "metrics",
        "prometheus_client",
        "socket",
        "uvloop",
    }
    assert _imported_top_levels(path) & forbidden == set()


@pytest.mark.parametrize("path", list(_python_files("metrics")), ids=lambda p: p.name)
def test_metrics_is_a_leaf(path: Path) -> None:
    """metrics/ imports nothing of ours, so every other package can import it without a cycle."""
    assert _imported_top_levels(path) & {"dialer", "scheduler"} == set()


def test_settings_table_lists_every_setting() -> None:
    """The generated configuration table has one row per Settings field, keyed by its environment variable."""
    table = settings_table()
    rows = [line for line in table.splitlines()[2:] if line.startswith("| `")]
    names = [row.split("`")[1] for row in rows]
    expected = [f.metadata.get("env", "DIALER_" + f.name.upper()) for f in dataclasses.fields(Settings)]
    assert names == expected
    assert all(row.rstrip("| ").split("|")[-1].strip() for row in rows), "every setting needs a doc"


def test_readme_table_matches_settings() -> None:
    """Once README.md carries the configuration table, it is exactly the generated one (no drift)."""
    readme = (ROOT / "README.md").read_text()
    header = settings_table().splitlines()[0]
    if header not in readme:
        pytest.skip("README.md has no configuration table yet")
    assert settings_table() in readme
