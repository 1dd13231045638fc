"""Benchmarks of the dialer against the bare Postgres + aiohttp ceiling (entry point: bench/run.py)."""
