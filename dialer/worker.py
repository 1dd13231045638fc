"""The worker: claim under the campaign's pacing rules, start calls, record outcomes, sweep.

Per-attempt work is kept small (one task per in-flight start request, plain tuples, batched
writes) because the HTTP leg already costs most of a core at a few thousand calls per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import asyncpg
from prometheus_client import Counter

import metrics
from dialer import db, pacer, webhooks
from dialer.breaker import CircuitBreaker
from dialer.clock import Clock
from dialer.providers.base import (
    CallEvent,
    LookupRequest,
    Provider,
    ProviderUnavailable,
    StartError,
    StartRequest,
    callback_token,
)
from dialer.settings import Settings
from dialer.sql import Q
from scheduler.hours import BusinessHours, HoursError
from scheduler.outcomes import Outcome, classify

log = logging.getLogger(__name__)

# Runtime asyncpg classes are not generic; only the stubs are, hence the string alias.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

# How long the sweeper holds an overdue attempt while it asks the provider about it.
_SWEEP_LEASE_SECONDS = 30
_SWEEP_BATCH = 200
_SWEEP_CONCURRENCY = 20


@dataclass(slots=True)
class _Outcome:
    event: CallEvent
    future: asyncio.Future[str] | None


@dataclass
class _Buffers:
    accepted: list[tuple[uuid.UUID, str]] = field(default_factory=list)
    answered: list[tuple[uuid.UUID, dt.datetime, str | None, asyncio.Future[None] | None]] = field(
        default_factory=list
    )
    outcomes: list[_Outcome] = field(default_factory=list)
    release: list[uuid.UUID] = field(default_factory=list)
    pauses: dict[str, str] = field(default_factory=dict)  # provider account → reason

    def __bool__(self) -> bool:
        return bool(self.accepted or self.answered or self.outcomes or self.release or self.pauses)


class Worker:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        providers: dict[str, Provider],
        clock: Clock,
        *,
        worker_id: uuid.UUID | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.providers = providers
        self.clock = clock
        self.id = worker_id or uuid.uuid4()  # a fresh identity per process, never reused
        self.labels = metrics.CampaignLabels(settings.metrics_max_campaigns)
        self.draining = False
        self.ready = False
        self._stopping = False
        self._reserved = 0
        self._wake = asyncio.Event()
        self._flush_now = asyncio.Event()
        self._buffers = _Buffers()
        self._inflight: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._sent: set[uuid.UUID] = set()
        self._slots_free = asyncio.Event()
        # Set while claims come back at least half full (due work beyond what one claim takes): only
        # then do the extra claim loops claim. Once claims come back mostly empty, capacity (the
        # campaigns' caps, pacing budgets, business hours) is what limits dialing, and one loop takes
        # what frees up; every extra loop would walk the campaigns at their caps again for a few slots.
        self._backlog = asyncio.Event()
        # Start requests in flight are capped here; claims run up to one batch ahead of the cap, so
        # the next batch is already claimed when slots free up instead of waiting a claim's round
        # trip with its slots reserved and idle (dispatch is bound by that latency, not by CPU).
        self._send_gate = asyncio.Semaphore(settings.max_inflight_requests)
        # Read at scrape time: a gauge set twice per call cost 2.4% of worker CPU (py-spy, dispatch).
        metrics.INFLIGHT_REQUESTS.set_function(lambda: len(self._inflight))
        self._started_by_label: dict[str, Counter] = {}  # the started counter's child per campaign label
        self._flush_lock = asyncio.Lock()
        self._listener: asyncpg.pool.PoolConnectionProxy[asyncpg.Record] | None = None
        self._callback_base = settings.callback_base_url + "/callbacks/"
        self.webhooks: webhooks.WebhookDeliverer | None = None
        # Pacing: answers and hang-ups of agent campaigns wake the pacer at once (bridging cannot
        # wait for the next tick: the abandon grace is two seconds).
        self._pace_wake = asyncio.Event()
        self._pace_interval = min(0.5, settings.maintenance_interval_seconds)
        self._agent_campaigns: list[int] = []
        self._hangups: set[asyncio.Task[None]] = set()
        self._token_secret = settings.callback_secret.get().encode()
        self.breakers = {
            name: CircuitBreaker(
                name,
                threshold=settings.circuit_failure_threshold,
                cooldown_seconds=settings.circuit_cooldown_seconds,
            )
            for name in providers
        }

    # ---------------------------------------------------------------- lifecycle

    async def run(self, stop: asyncio.Event, close_http: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run until `stop` is set, then drain. A dying side task stops the worker (and re-raises).

        `close_http` stops the HTTP server during the drain, after in-flight start requests and
        before the flusher stops: callback handlers wait on the flusher to make them durable.
        """
        now = self.clock.now()
        async with self.pool.acquire() as conn:
            await conn.execute(Q.worker_register, self.id, socket.gethostname(), os.getpid(), now)
            # The claim spends each account's rate across workers; it reads it from here.
            rates = {name: getattr(p, "max_calls_per_second", 0.0) for name, p in self.providers.items()}
            await conn.execute(Q.provider_accounts_sync, list(rates), list(rates.values()), now)
        await self._listen()
        side = [
            asyncio.create_task(self._flusher(), name="flusher"),
            asyncio.create_task(
                self._periodic(self.settings.heartbeat_interval_seconds, self.heartbeat), name="heartbeat"
            ),
            asyncio.create_task(
                self._periodic(self.settings.maintenance_interval_seconds, self.maintain), name="maintenance"
            ),
            asyncio.create_task(
                self._periodic(self.settings.stats_interval_seconds, self.refresh_stats), name="stats"
            ),
            asyncio.create_task(self._pacer(), name="pacer"),
        ]
        # Bounded by its own concurrency and HTTP session, off the dial slots; None when off here.
        self.webhooks = webhooks.create_deliverer(self.settings, self.pool, self.clock)
        if self.webhooks is not None:
            side.append(asyncio.create_task(self.webhooks.run(), name="webhooks"))
        claimer = asyncio.create_task(self._claim_loop(), name="claimer")
        stopper = asyncio.create_task(stop.wait(), name="stop")
        self.ready = True
        try:
            done, _ = await asyncio.wait([stopper, claimer, *side], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self.ready = False
            await self._drain(claimer, side, stopper, close_http)

    async def _drain(
        self,
        claimer: asyncio.Task[None],
        side: list[asyncio.Task[None]],
        stopper: asyncio.Task[bool],
        close_http: Callable[[], Awaitable[None]] | None,
    ) -> None:
        self.draining = True
        metrics.DRAINING.set(1)
        stopper.cancel()
        # Not cancelled: a claim interrupted between commit and return would strand its rows
        # until the sweeper's deadline. The loop sees the flag at its next turn.
        self._stopping = True
        self._wake.set()
        self._slots_free.set()
        self._backlog.set()
        grace_ends = time.monotonic() + self.settings.shutdown_grace_seconds
        if self.webhooks is not None:
            self.webhooks.stop()  # takes no more events; its POSTs in flight finish below
        # A claimer that died is already reported by run(); here it must not cut the drain short,
        # or the side tasks and the LISTEN connection would keep the process alive forever.
        await asyncio.gather(claimer, return_exceptions=True)
        try:
            # In-flight start requests get the grace period to finish; whatever has not been sent
            # by then is cancelled and released without counting as an attempt.
            pending = list(self._inflight.values())
            if pending:
                _, still = await asyncio.wait(pending, timeout=self.settings.shutdown_grace_seconds)
                for task in still:
                    task.cancel()
                if still:
                    await asyncio.wait(still)
            # Webhook POSTs drained alongside, within the same grace; past it, cancelling the
            # deliverer releases the leases of those still unfinished.
            hooks = [task for task in side if task.get_name() == "webhooks"]
            if hooks:
                await asyncio.wait(hooks, timeout=max(0.0, grace_ends - time.monotonic()))
            await self.flush()
            if close_http is not None:
                await close_http()
        finally:
            for task in [*side, *self._hangups]:
                task.cancel()
            await asyncio.gather(*side, *self._hangups, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.flush()
            if self._listener is not None:
                listener, self._listener = self._listener, None
                with contextlib.suppress(Exception):
                    await listener.remove_listener("dialer_due", self._on_notify)
                    await self.pool.release(listener)
            with contextlib.suppress(Exception):
                async with self.pool.acquire() as conn:
                    await conn.execute(Q.worker_deregister, self.id)
            metrics.DRAINING.set(0)

    async def _listen(self) -> None:
        conn = await self.pool.acquire()
        self._listener = conn
        await conn.add_listener("dialer_due", self._on_notify)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _periodic(self, every: float, fn: Callable[[], Awaitable[Any]]) -> None:
        while True:
            try:
                await fn()
            except Exception as exc:
                # A database blip must not kill the worker; a bug (anything else) must.
                if not db.connection_lost(exc):
                    raise
                log.warning("%s failed, retrying: %s", getattr(fn, "__name__", fn), exc)
            await asyncio.sleep(every)

    # ---------------------------------------------------------------- claiming and dialing

    async def _claim_loop(self) -> None:
        # Several claim loops overlap one claim's database round trip with the previous batch's
        # sends. Slots are reserved before claiming so together they never exceed the in-flight cap.
        loops = [
            asyncio.create_task(self._claim_one_loop(lead=i == 0))
            for i in range(self.settings.claim_concurrency)
        ]
        try:
            await asyncio.gather(*loops)
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _claim_one_loop(self, *, lead: bool) -> None:
        s = self.settings
        while not self._stopping:
            if not lead and not self._backlog.is_set():
                await self._backlog.wait()
                continue
            free = s.max_inflight_requests + s.claim_batch_size - len(self._inflight) - self._reserved
            if free <= 0:
                self._slots_free.clear()
                await self._slots_free.wait()
                continue
            want = min(free, s.claim_batch_size)
            self._wake.clear()
            self._reserved += want
            try:
                got = await self.claim_and_dial(want)
            except Exception as exc:
                if not db.connection_lost(exc):
                    raise
                log.warning("claim failed, retrying: %s", exc)
                got = 0
            finally:
                self._reserved -= want
            # Half a batch or more: due work, not capacity, is what the claim ran into.
            if 2 * got >= want:
                self._backlog.set()
            else:
                self._backlog.clear()
            if got >= want:
                await asyncio.sleep(0)  # more may be due right away; let sends and callbacks run
                continue
            # Short poll while due work may be held back only by a per-second cap (it frees up
            # within a second); otherwise sleep until NOTIFY (new work, freed capacity) or the poll.
            timeout = s.rate_poll_interval_seconds if got > 0 else s.poll_interval_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def claim_and_dial(self, limit: int) -> int:
        now = self.clock.now()
        skip = [name for name, breaker in self.breakers.items() if not breaker.admits(now)]
        if any(b.probing for b in self.breakers.values()):
            limit = 1  # a half-open circuit is probed with a single call, not a batch
        started = time.perf_counter()
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(Q.claim, self.id, limit, now, self.settings.dial_timeout_seconds, skip)
        metrics.CLAIM_SECONDS.observe(time.perf_counter() - started)
        metrics.CLAIM_BATCH.observe(len(rows))
        for row in rows:
            attempt_id: uuid.UUID = row["attempt_id"]
            self._inflight[attempt_id] = asyncio.create_task(self._dial(row))
        return len(rows)

    async def _dial(self, row: asyncpg.Record) -> None:
        attempt_id: uuid.UUID = row["attempt_id"]
        provider_name: str = row["provider"]
        campaign = self.labels(row["campaign"])
        try:
            provider = self.providers.get(provider_name)
            if provider is None:
                reason = f"provider account {provider_name!r} is not configured in this deployment"
                self._buffers.pauses[provider_name] = reason
                self._push_outcome(_failed(attempt_id, Outcome.ACCOUNT_ERROR, "unknown_provider"))
                return
            id_text = str(attempt_id)
            token = callback_token(self._token_secret, provider_name, id_text)
            request = StartRequest(
                attempt_id=id_text,
                phone=row["phone"],
                caller_id=row["caller_id"],
                dtmf=row["dtmf"],
                ring_timeout_seconds=row["ring_timeout_seconds"],
                callback_url=f"{self._callback_base}{provider_name}?attempt={id_text}&token={token}",
                campaign=row["campaign"],
            )
            async with self._send_gate:
                await provider.throttle()
                self._sent.add(attempt_id)
                started = self._started_by_label.get(campaign)
                if started is None:
                    started = self._started_by_label[campaign] = metrics.ATTEMPTS_STARTED.labels(campaign)
                started.inc()
                breaker = self.breakers[provider_name]
                try:
                    accepted = await provider.start_call(request)
                except StartError as exc:
                    self._start_failed(attempt_id, provider_name, exc)
                    return
            breaker.success()
            self._buffers.accepted.append((attempt_id, accepted.call_id))
        except asyncio.CancelledError:
            # Cancelled by the drain. Before the provider call began, nothing left this process.
            if attempt_id not in self._sent:
                self._buffers.release.append(attempt_id)
            raise
        finally:
            self._sent.discard(attempt_id)
            del self._inflight[attempt_id]
            self._slots_free.set()

    def _start_failed(self, attempt_id: uuid.UUID, provider: str, exc: StartError) -> None:
        breaker = self.breakers[provider]
        if exc.outcome is Outcome.ACCOUNT_ERROR:
            breaker.failure(str(exc), self.clock.now(), trip=True)
            self._buffers.pauses[provider] = f"provider account error: {exc}"
        elif exc.kind in ("not_sent", "ambiguous"):
            breaker.failure(str(exc), self.clock.now())
        elif exc.kind == "rejected":
            breaker.success()  # the provider is up and answering; the number was the problem
        if exc.kind == "ambiguous":
            # The provider may have the call. Leave the attempt live and let the sweeper look it up
            # by its idempotency key soon; a blind redial could ring a person twice.
            log.info("ambiguous start for %s: %s", attempt_id, exc)
            return
        outcome = exc.outcome if exc.kind == "rejected" and exc.outcome else Outcome.PROVIDER_ERROR
        self._push_outcome(_failed(attempt_id, outcome, exc.raw_status or exc.kind))

    # ---------------------------------------------------------------- outcomes

    def _push_outcome(self, event: CallEvent, future: asyncio.Future[str] | None = None) -> None:
        self._buffers.outcomes.append(_Outcome(event, future))
        if len(self._buffers.outcomes) >= 500:
            self._flush_now.set()

    async def apply_event(self, event: CallEvent) -> str:
        """Apply a provider callback durably; returns applied / duplicate / unknown_attempt."""
        attempt_id = uuid.UUID(event.attempt_id)
        loop = asyncio.get_running_loop()
        if event.kind == "ended":
            fut: asyncio.Future[str] = loop.create_future()
            self._push_outcome(event, fut)
            return await fut
        if event.kind == "answered":
            done: asyncio.Future[None] = loop.create_future()
            when = event.answered_at or self.clock.now()
            self._buffers.answered.append((attempt_id, when, event.call_id, done))
            await done
            return "applied"
        return "applied"  # ringing carries nothing the accepted flush does not already record

    async def _flusher(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), self.settings.flush_interval_seconds)
            self._flush_now.clear()
            if self._buffers:
                await self.flush()

    async def flush(self) -> None:
        # Serialised: a caller that flushes (the sweeper, the drain) must find its items written
        # when flush returns, even if the background flusher had already taken them.
        async with self._flush_lock:
            started = time.perf_counter()
            await self._flush()
            metrics.FLUSH_SECONDS.observe(time.perf_counter() - started)

    async def _flush(self) -> None:
        buffers, self._buffers = self._buffers, _Buffers()
        if not buffers:
            return
        now = self.clock.now()
        try:
            # One transaction: one WAL flush per batch instead of one per statement, and the
            # outcomes are durable (answered 2xx) only together with the rest.
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(Q.key_lookups_only)
                if buffers.release:
                    await conn.execute(Q.release_attempts, buffers.release, now)
                if buffers.accepted:
                    ids, calls = zip(*buffers.accepted, strict=True)
                    await conn.execute(Q.mark_accepted, list(ids), list(calls))
                if buffers.answered:
                    await conn.execute(
                        Q.mark_answered,
                        [a[0] for a in buffers.answered],
                        [a[1] for a in buffers.answered],
                        [a[2] for a in buffers.answered],
                    )
                if buffers.outcomes:
                    await self._record(conn, buffers.outcomes, now)
                for provider, reason in buffers.pauses.items():
                    for row in await conn.fetch(Q.pause_provider_campaigns, provider, reason, now):
                        metrics.CAMPAIGNS_PAUSED.labels(provider).inc()
                        log.error("paused campaign %s: %s", row["name"], reason)
        except BaseException as exc:
            for o in buffers.outcomes:
                if o.future is not None and not o.future.done():
                    o.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("shutdown"))
            for a in buffers.answered:
                if a[3] is not None and not a[3].done():
                    a[3].set_exception(exc if isinstance(exc, Exception) else RuntimeError("shutdown"))
            if isinstance(exc, Exception) and not isinstance(exc, asyncio.CancelledError):
                # Keep the work: accepted marks and releases are retried on the next flush; a
                # callback whose write failed was answered 5xx, so the provider redelivers it.
                self._buffers.accepted.extend(buffers.accepted)
                self._buffers.release.extend(buffers.release)
                self._buffers.pauses.update(buffers.pauses)
                log.warning("flush failed, will retry: %s", exc)
                return
            raise
        for a in buffers.answered:
            if a[3] is not None and not a[3].done():
                a[3].set_result(None)
        if self._agent_campaigns and (buffers.answered or buffers.outcomes):
            self._pace_wake.set()  # an answer to bridge, or an agent freed for a waiting one

    async def _record(self, conn: Conn, items: Sequence[_Outcome], now: dt.datetime) -> None:
        results, rows = await apply_outcomes(
            conn, [item.event for item in items], now, self.settings.requeue_backoff_seconds
        )
        for r in rows:
            metrics.OUTCOMES.labels(self.labels(r["campaign"]), r["outcome"], r["decision"]).inc()
        answered: set[uuid.UUID] = set()
        for item in items:
            key = uuid.UUID(item.event.attempt_id)
            # The first event of an attempt in a batch carries its result; repeats are duplicates.
            result = "duplicate" if key in answered else results[key]
            answered.add(key)
            if item.future is not None and not item.future.done():
                item.future.set_result(result)

    # ---------------------------------------------------------------- maintenance

    async def heartbeat(self) -> None:
        now = self.clock.now()
        async with self.pool.acquire() as conn:
            await conn.execute(Q.worker_heartbeat, self.id, now, self.draining)
            # Rows of workers that died without deregistering; nothing depends on them but the count.
            await conn.execute(
                Q.workers_prune, now - dt.timedelta(seconds=10 * self.settings.heartbeat_interval_seconds)
            )
            alive = await conn.fetchval(
                Q.workers_live, now - dt.timedelta(seconds=3 * self.settings.heartbeat_interval_seconds)
            )
        metrics.WORKERS.set(alive)

    async def maintain(self) -> None:
        await self.refresh_windows()
        await self.sweep()
        await self.poll_providers()
        now = self.clock.now()
        async with self.pool.acquire() as conn:
            for row in await conn.fetch(Q.finish_campaigns, now):
                log.info("campaign %s finished", row["name"])
            await conn.execute(Q.prune_provider_starts, now)

    async def _pacer(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pace_wake.wait(), self._pace_interval)
            self._pace_wake.clear()
            try:
                await self.pace()
            except Exception as exc:
                if not db.connection_lost(exc):
                    raise
                log.warning("pacing failed, retrying: %s", exc)

    async def pace(self) -> None:
        """Bridge and tick every running agent campaign; each tick is due once per pacing interval
        across all workers, and the one that takes the campaign's row lock does it."""
        async with self.pool.acquire() as conn:
            self._agent_campaigns = [r["id"] for r in await conn.fetch(Q.pacing_campaigns)]
            for campaign_id in self._agent_campaigns:
                now = self.clock.now()
                # 0.9: a pass that wakes a little early must not skip its tick for a whole interval.
                result = await pacer.tick(conn, campaign_id, now, 0.9 * self._pace_interval)
                if result is None:
                    changed = await pacer.bridge(conn, campaign_id, now)
                    abandoned = [r for r in changed if r["action"] == "abandoned"]
                else:
                    abandoned = result.abandoned
                    self._report_pacing(result)
                    if result.decision.new_attempts:
                        self._wake.set()
                for row in abandoned:
                    self._hang_up(row)

    def _report_pacing(self, result: pacer.TickResult) -> None:
        label = self.labels(result.campaign)
        d, e = result.decision, result.estimates
        metrics.DIAL_RATIO.labels(label).set(d.dial_ratio)
        metrics.HIT_RATE.labels(label, "predicted").set(d.hit_rate)
        metrics.HIT_RATE.labels(label, "observed").set(result.hit_rate_observed)
        metrics.ABANDON_RATE.labels(label, "24h").set(e.abandon_rate_24h)
        metrics.ABANDON_RATE.labels(label, "lifetime").set(e.abandon_rate_lifetime)
        metrics.AGENTS.labels(label, "free").set(result.state.agents_free)
        metrics.AGENTS.labels(label, "busy").set(result.agents_busy)
        metrics.AGENT_OCCUPANCY.labels(label).set(result.occupancy)

    def _hang_up(self, row: asyncpg.Record) -> None:
        """Ask the provider to end an abandoned call (a real dialer plays its message and hangs up
        rather than leave a person holding a silent line). Best effort: the abandonment is recorded
        whether or not the provider can end an answered call."""
        provider = self.providers.get(row["provider"])
        if provider is None:
            return

        async def hang_up() -> None:
            try:
                await provider.hangup(str(row["attempt_id"]), row["provider_call_id"])
            except (ProviderUnavailable, OSError) as exc:
                log.warning("hangup of abandoned call %s failed: %s", row["attempt_id"], exc)

        task = asyncio.create_task(hang_up())
        self._hangups.add(task)
        task.add_done_callback(self._hangups.discard)

    async def poll_providers(self) -> None:
        """Apply outcomes that pull-model providers report when asked rather than by callback."""
        for provider in self.providers.values():
            try:
                events = await provider.poll_events()
            except ProviderUnavailable as exc:
                log.warning("polling %s failed: %s", provider.name, exc)
                continue
            for event in events:
                if event.kind == "ended":
                    self._push_outcome(event)
        await self.flush()

    async def refresh_windows(self) -> None:
        """Compute the business-hours window of running campaigns whose window is unset or over."""
        now = self.clock.now()
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(Q.campaigns_needing_window, now)
            for row in rows:
                try:
                    hours = BusinessHours.parse(row["business_hours"], row["time_zone"])
                except HoursError as exc:
                    # Validated on write, so this means the stored data was edited by hand.
                    log.error("campaign %s has invalid business hours: %s", row["id"], exc)
                    continue
                window = hours.window_at_or_after(now)
                if window is None:
                    continue
                await conn.execute(Q.set_window, row["id"], window.opens_at, window.closes_at)
                if window.opens_at <= now:
                    self._wake.set()

    async def sweep(self) -> int:
        """Reconcile live attempts past their deadline through the provider's lookup.

        Batches are taken until one comes back short, and each batch's lookups run concurrently
        (bounded): after an outage thousands of attempts can be overdue at once.
        """
        total = 0
        while True:
            n = await self._sweep_batch()
            total += n
            if n < _SWEEP_BATCH:
                return total

    async def _sweep_batch(self) -> int:
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(Q.key_lookups_only)  # the lease update finds attempts by id (see the query)
            rows = await conn.fetch(Q.take_overdue, _SWEEP_BATCH, now, _SWEEP_LEASE_SECONDS)
        if not rows:
            return 0
        release: list[uuid.UUID] = []
        deadlines: list[tuple[uuid.UUID, dt.datetime, bool, str | None]] = []
        grace = dt.timedelta(seconds=self.settings.reconcile_grace_seconds)
        gate = asyncio.Semaphore(_SWEEP_CONCURRENCY)

        async def reconcile(row: asyncpg.Record) -> None:
            async with gate:
                await self._reconcile(row, now, grace, release, deadlines)

        await asyncio.gather(*(reconcile(row) for row in rows))
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(Q.key_lookups_only)
            if release:
                await conn.execute(Q.release_attempts, release, now)
            if deadlines:
                await conn.execute(Q.set_deadline, *[list(c) for c in zip(*deadlines, strict=True)])
        await self.flush()
        return len(rows)

    async def _reconcile(
        self,
        row: asyncpg.Record,
        now: dt.datetime,
        grace: dt.timedelta,
        release: list[uuid.UUID],
        deadlines: list[tuple[uuid.UUID, dt.datetime, bool, str | None]],
    ) -> None:
        attempt_id: uuid.UUID = row["id"]
        if attempt_id in self._inflight:
            return  # our own request is still running; its result will land
        provider = self.providers.get(row["provider"])
        # Ring timeout and maximum duration are enforced here too, not only trusted to the
        # provider: past them we hang up and record the outcome ourselves.
        ring_over = row["claimed_at"] + dt.timedelta(seconds=row["ring_timeout_seconds"]) + grace
        life_over = ring_over + dt.timedelta(seconds=row["max_call_duration_seconds"])
        queue_seconds = getattr(provider, "queue_timeout_seconds", None)
        if queue_seconds:
            # Human-worked campaigns (Upcall): "ringing" means waiting in a caller's queue,
            # which lasts far longer than any ring timeout.
            ring_over = row["claimed_at"] + dt.timedelta(seconds=queue_seconds) + grace
        try:
            if provider is None:
                raise ProviderUnavailable(f"no provider {row['provider']!r} configured")
            event = await provider.lookup(
                LookupRequest(str(attempt_id), row["provider_call_id"], row["phone"], row["claimed_at"])
            )
        except ProviderUnavailable as exc:
            if now >= life_over + grace:
                # The call is long over whatever happened; record it as unknown (which
                # consumes an attempt) rather than keep the number locked forever.
                self._push_outcome(_failed(attempt_id, Outcome.UNKNOWN, "lookup_unavailable"))
                metrics.RECONCILED.labels("unknown").inc()
            log.warning("lookup of %s failed: %s", attempt_id, exc)
            return
        if event is None:
            if row["state"] == "dialing" and row["provider_call_id"] is None:
                release.append(attempt_id)  # the provider never got it: not an attempt
                metrics.RECONCILED.labels("never_sent").inc()
            else:
                self._push_outcome(_failed(attempt_id, Outcome.UNKNOWN, "provider_lost_call"))
                metrics.RECONCILED.labels("unknown").inc()
        elif event.kind == "ended":
            self._push_outcome(event)
            metrics.RECONCILED.labels("ended").inc()
        elif event.kind == "ringing" and now >= ring_over:
            await provider.hangup(str(attempt_id), event.call_id)
            self._push_outcome(_failed(attempt_id, Outcome.NO_ANSWER, "local_ring_timeout"))
            metrics.RECONCILED.labels("ring_timeout").inc()
        elif event.kind == "answered" and now >= life_over:
            await provider.hangup(str(attempt_id), event.call_id)
            self._push_outcome(
                CallEvent(
                    attempt_id=str(attempt_id),
                    call_id=event.call_id,
                    kind="ended",
                    outcome=Outcome.ANSWERED_HUMAN,
                    answered_at=event.answered_at,
                    raw_status="local_max_call_duration",
                )
            )
            metrics.RECONCILED.labels("max_duration").inc()
        else:
            # Still ringing or talking: look again at the next limit, or after the grace.
            # A talking call is looked at less often: it may last an hour, and each look is a
            # provider API request.
            limit = ring_over if event.kind == "ringing" else life_over
            step = grace if event.kind == "ringing" else 4 * grace
            next_look = max(now + dt.timedelta(seconds=1), min(limit, now + step))
            deadlines.append((attempt_id, next_look, True, event.call_id))
            metrics.RECONCILED.labels("still_live").inc()

    async def refresh_stats(self) -> None:
        now = self.clock.now()
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(Q.backlog_stats, now)
            held = await conn.fetch(Q.held_back_stats, now)
            await webhooks.refresh_gauges(conn)
        metrics.HELD_BACK.clear()
        for r in rows:
            label = self.labels(r["name"])
            due = int(r["due"])
            live = int(r["live"])
            metrics.DUE_BACKLOG.labels(label).set(due)
            metrics.LIVE_ATTEMPTS.labels(label).set(live)
            metrics.CONCURRENCY_CAP.labels(label).set(r["max_concurrent_calls"])
            oldest = r["oldest_due"]
            metrics.OLDEST_DUE.labels(label).set(oldest.timestamp() if oldest else 0)
            if due:
                metrics.HELD_BACK.labels(label, held_back_reason(r)).set(due)
        # Numbers a compliance gate rescheduled (callee_window, attempt_cap, abandon_lockout): not
        # due, so not in the backlog above, but an operator asking "why is it not dialing?" needs them.
        for h in held:
            metrics.HELD_BACK.labels(self.labels(h["name"]), h["reason"]).set(h["held"])


def held_back_reason(r: asyncpg.Record | dict[str, Any]) -> str:
    """Why a campaign's due numbers are not dialing (the first rule in claim order that blocks)."""
    if r["status"] == "paused":
        return "paused"
    if r["status"] == "created":
        return "not_started"
    if not r["in_dates"]:
        return "outside_dates"
    if not r["window_open"]:
        return "business_hours"
    if r["live"] >= r["max_concurrent_calls"]:
        return "concurrency_cap"
    if r["recent"] >= r["max_calls_per_second"]:
        return "rate_limit"
    if r.get("account_full"):
        return "account_rate_limit"
    return "dispatching"


def _failed(attempt_id: uuid.UUID, outcome: Outcome, raw: str) -> CallEvent:
    return CallEvent(attempt_id=str(attempt_id), call_id=None, kind="ended", outcome=outcome, raw_status=raw)


async def apply_outcomes(
    conn: Conn, events: Sequence[CallEvent], now: dt.datetime, requeue_seconds: int
) -> tuple[dict[uuid.UUID, str], list[asyncpg.Record]]:
    """Record final events in one statement; per attempt: applied, duplicate or unknown_attempt.

    The first event of an attempt wins within a batch; across batches the database applies each
    attempt's outcome once (forward only).
    """
    first: dict[uuid.UUID, CallEvent] = {}
    for event in events:
        first.setdefault(uuid.UUID(event.attempt_id), event)
    cols: list[list[Any]] = [[] for _ in range(14)]
    for key, e in first.items():
        assert e.outcome is not None
        klass = classify(e.outcome)
        values = (
            key,
            e.outcome.value,
            klass.final,
            klass.consumes_attempt,
            klass.final_status,
            e.answered_at,
            e.ended_at or now,
            e.duration_seconds,
            e.billsec,
            e.raw_status,
            e.raw_cause,
            e.sip_code,
            e.call_id,
            e.dtmf,
        )
        for col, value in zip(cols, values, strict=True):
            col.append(value)
    rows = list(await conn.fetch(Q.record_outcomes_keys, *cols, now, requeue_seconds))
    applied = {r["attempt_id"] for r in rows}
    missing = [k for k in first if k not in applied]
    known = {r["id"] for r in await conn.fetch(Q.attempts_known, missing)} if missing else set()
    results = {
        k: "applied" if k in applied else "duplicate" if k in known else "unknown_attempt" for k in first
    }
    return results, rows
