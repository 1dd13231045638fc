"""The dialer's benchmark: every figure next to its target and the bare Postgres + aiohttp ceiling.

    python bench/run.py [--quick] [--db embedded|pg15|DSN] [--only bare,dispatch,full,enqueue,claim,wake]

Database: --db, else BENCH_DATABASE_URL / DATABASE_URL, else an embedded PostgreSQL started for the
run. Each scenario gets a fresh database (migrated with dialer.db.migrate) that is dropped afterwards.
Everything talks to 127.0.0.1 or a unix socket only. Prints a markdown table on stdout (progress on
stderr) and writes it, with the machine facts, to bench/results/latest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bare, dialer_loop, sql_level
from bench.common import ROOT, Context, Figure, Server, say, wait_quiet

SCENARIOS = ("bare", "dispatch", "full", "enqueue", "claim", "wake")
# Above this share of a core used by processes outside the benchmark, a figure is flagged as contended.
CONTENDED = 0.25


def machine_facts(server: Server, quick: bool) -> list[tuple[str, str]]:
    meminfo = Path("/proc/meminfo").read_text().split()
    ram_gib = int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024**2
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.machine(),
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("asyncpg", "aiohttp", "uvloop"))
    pg = ", ".join(f"{k}={v}" for k, v in server.settings.items())
    return [
        ("date", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("mode", "--quick" if quick else "full"),
        (
            "machine",
            f"nproc {os.cpu_count()}, {model}, RAM {ram_gib:.1f} GiB, {platform.system()} "
            f"{platform.release()}",
        ),
        ("Python", f"{platform.python_version()} ({versions})"),
        ("PostgreSQL", f"{server.version}, {server.description}; {pg}"),
        ("code", f"git {commit}{' + uncommitted changes' if dirty else ''}"),
        ("worker settings", ", ".join(f"{k}={v}" for k, v in dialer_loop.WORKER_ENV.items())),
    ]


def table(figures: list[Figure]) -> str:
    rows = [
        "| # | figure | measured | target | meets | ÷ ceiling | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        meets = "" if f.ok is None else ("yes" if f.ok else "**no**")
        note = f.note
        if f.contention > CONTENDED:
            note += f" ⚠ other processes on the machine used {100 * f.contention:.0f}% of a core meanwhile"
        rows.append(
            f"| {f.number} | {f.name} | {f.measured()} | {f.target} | {meets} | {f.vs_bare} | {note} |"
        )
    return "\n".join(rows)


async def main_async(args: argparse.Namespace) -> int:
    wanted = set(args.only.split(",")) if args.only else set(SCENARIOS)
    unknown = wanted - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    logs = Path(tempfile.mkdtemp(prefix="dialer-bench-"))
    started = time.monotonic()
    server = await Server.open(args.db)
    ctx = Context(server, args.quick, logs)
    say(f"PostgreSQL {server.version} ({server.description}); logs in {logs}")
    figures: list[Figure] = []
    failures: list[str] = []

    async def step(name: str, fn: Callable[[], Awaitable[list[Figure]]]) -> None:
        await wait_quiet(ctx)
        t = time.monotonic()
        try:
            figures.extend(await fn())
        except Exception as exc:
            failures.append(f"{name}: {exc}")
            say(traceback.format_exc())
            figures.append(Figure("!", f"{name} failed", None, "", note=str(exc).splitlines()[0][:200]))
        say(f"  ({name}: {time.monotonic() - t:.0f}s)")

    try:
        facts = machine_facts(server, args.quick)
        if "bare" in wanted:
            await step("bare", lambda: bare.run(ctx))
        bare_http = next((f.value for f in figures if f.number == "1a"), None)
        bare_sim = next((f.value for f in figures if f.number == "1d"), None)
        if "dispatch" in wanted:
            await step(
                "dispatch", lambda: dialer_loop.dispatch(ctx, bare_http, bare_sim, profile=args.profile)
            )
        if "full" in wanted:
            for n in (1, 2):

                def full(n: int = n) -> Awaitable[list[Figure]]:
                    return dialer_loop.full_loop(
                        ctx, n, bare_http, profile=args.profile, provider=args.provider
                    )

                await step(f"full loop w={n}", full)
        if "enqueue" in wanted:
            await step("enqueue", lambda: sql_level.enqueue(ctx))
        if "claim" in wanted:
            await step("claim latency", lambda: sql_level.claim_latency(ctx))
        if "wake" in wanted:
            await step("enqueue→start latency", lambda: dialer_loop.wake_latency(ctx))
    finally:
        server.close()
    figures.sort(key=lambda f: f.number)
    elapsed = time.monotonic() - started
    facts.append(("benchmark wall time", f"{elapsed:.0f} s"))
    out = table(figures)
    print(out)
    report = [
        "# Dialer benchmark: latest results",
        "",
        "Produced by `python bench/run.py"
        + (" --quick" if args.quick else "")
        + "`; see bench/README.md for the method.",
        "",
    ]
    report += [f"- **{k}**: {v}" for k, v in facts]
    report += ["", out, "", "## Details", ""] + [f"- {d}" for d in ctx.details]
    if failures:
        report += ["", "## Failures", ""] + [f"- {f}" for f in failures]
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    # A partial run (--only) must not overwrite the last complete set of figures.
    out_file = results / ("latest.md" if wanted == set(SCENARIOS) else "partial.md")
    out_file.write_text("\n".join(report) + "\n")
    say(f"\nwrote {out_file} ({elapsed:.0f}s)")
    if failures or args.profile or args.keep_logs:
        say(f"child process logs kept in {logs}")
    else:
        shutil.rmtree(logs, ignore_errors=True)
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (under ~3 minutes)")
    parser.add_argument("--db", help="embedded | pg15 (postgresql://root@127.0.0.1:5432/test) | a DSN")
    parser.add_argument("--only", help="comma-separated subset of: " + ", ".join(SCENARIOS))
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the worker during the 1-worker full loop (collapsed stacks kept in the logs)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the child processes' logs")
    parser.add_argument(
        "--provider",
        default="simulator",
        choices=["simulator", "twilio", "paycall", "callr", "upcall", "http"],
        help="adapter and simulator dialect for the full loop (as `dialer demo --provider`)",
    )
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
