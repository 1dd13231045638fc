"""Provider dialects for the simulator: one provider's HTTP API in front of the one call state machine.

Adding a dialect is one module, ``dialer/simdialects/<name>.py``, that ends with
``register("<name>", Factory)``. ``SimulatorConfig(dialects=["native", "<name>"],
dialect_options={"<name>": {...}})`` mounts it: the module is imported on first use because its file
name is the dialect's name. The factory is called once per simulator as ``Factory(options, config)``
with that dialect's options (raise ValueError on unknown or missing keys) and the whole SimulatorConfig.

What a dialect implements (the ``Dialect`` protocol; ``native.py`` is the reference, the "form" dialect
in tests/integration/test_simulator.py the smallest complete one):

- ``routes(state)``: the provider's start, lookup and cancel endpoints at its real paths. The start
  handler checks the dialect's own credentials and parses the request in the provider's format. A
  request refused there still goes to ``state.refuse(reason, status, dialect=self)``, so it is counted
  and logged; a parsed one becomes a ``StartSpec`` for ``state.admit(spec, dialect=self)``. The handler
  turns the ``Admission`` into the provider's answer with status ``admission.status``, after sleeping
  ``admission.slow_seconds`` when it is set. Lookups and cancels use ``state.find``,
  ``state.find_by_call_id`` and ``state.cancel_call``, passing ``dialect=self``. Request data the
  callbacks need later (event filters, machine detection...) goes in ``StartSpec.extra``; the call keeps it.
- ``start_statuses``: the HTTP status the dialect answers for each admission (keys of
  ``DEFAULT_START_STATUSES``, which is the native set); the core writes it to the request log.
- ``render_event(call, status, sequence, final, event_id)``: one status callback as (url, body,
  headers), signed as the provider signs it, or None to send nothing for that event.

What the core guarantees, the same for every dialect: outcome choice and timers; idempotency on
``StartSpec.attempt_id``, one namespace across dialects (an id reused for another number, or through
another dialect, is a conflict); max_cps and every injected fault; stats and the request log (each
entry names its dialect); callback delivery, in order per call, with retries, the drop, duplicate and
out-of-order faults, and the counters. A call keeps the dialect that created it, which renders all of
its callbacks. The core trusts a StartSpec: validate E.164 (``E164``), lengths and URLs in the dialect.

To test: mount the dialect next to "native" with the make_sim fixture of test_simulator.py, drive it
in its provider's request format, and check what a local receiver gets, ``sim.stats()`` and ``sim.log()``.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, Protocol

if TYPE_CHECKING:
    from aiohttp import web

    from dialer.simulator import SimulatorConfig, SimulatorState

__all__ = [
    "DEFAULT_START_STATUSES",
    "E164",
    "MAX_ATTEMPT_ID_LENGTH",
    "NO_EXTRA",
    "Admission",
    "CallView",
    "Callback",
    "Dialect",
    "DialectFactory",
    "StartSpec",
    "build",
    "iso_utc",
    "known_dialects",
    "register",
    "resolve",
]

E164: Final = re.compile(r"^\+[1-9]\d{6,14}$")
MAX_ATTEMPT_ID_LENGTH: Final = 64

# Admission outcome (or rejection reason) -> the HTTP status a dialect answers with it.
DEFAULT_START_STATUSES: Final[Mapping[str, int]] = MappingProxyType(
    {
        "created": 201,
        "duplicate": 200,
        "after_create_error": 500,
        "max_cps": 429,
        "rate_limited": 429,
        "error_5xx": 503,
        "conflict": 409,
    }
)

# StartSpec.extra when a dialect has nothing to add; pass it explicitly on hot paths (cheaper than the
# default factory).
NO_EXTRA: Final[Mapping[str, Any]] = MappingProxyType({})

Callback = tuple[str, bytes, dict[str, str]]
RejectReason = Literal["max_cps", "rate_limited", "error_5xx", "conflict"]


def _no_extra() -> Mapping[str, Any]:
    return NO_EXTRA


@dataclass(frozen=True, slots=True)
class StartSpec:
    """A start request as the core sees it, whatever the provider's wire format."""

    # The idempotency key: a provider without one carries it somewhere it echoes back, such as a
    # query parameter of the status callback URL.
    attempt_id: str
    to: str
    from_: str | None
    ring_timeout_seconds: int
    callback_url: str
    campaign: str | None = None
    dtmf: str | None = None
    # Dialect-specific request data kept on the call for render_event (event filters, AMD flags...).
    extra: Mapping[str, Any] = field(default_factory=_no_extra)


class CallView(Protocol):
    """A call as a dialect sees it; read it, never assign to it. Times are Unix wall-clock seconds."""

    @property
    def call_id(self) -> str: ...
    @property
    def attempt_id(self) -> str: ...
    @property
    def to(self) -> str: ...
    @property
    def from_(self) -> str | None: ...
    @property
    def campaign(self) -> str:
        """Empty when the start request named no campaign."""
        ...

    @property
    def callback_url(self) -> str: ...
    @property
    def ring_timeout_seconds(self) -> int: ...
    @property
    def extra(self) -> Mapping[str, Any]: ...
    @property
    def status(self) -> str:
        """queued, ringing, in-progress, then completed, busy, no-answer, failed or canceled."""
        ...

    @property
    def started_wall(self) -> float: ...
    @property
    def answered_wall(self) -> float | None: ...
    @property
    def ended_wall(self) -> float | None: ...
    @property
    def duration_seconds(self) -> float:
        """Simulated seconds from start to end; 0.0 until the call is over."""
        ...

    @property
    def cause_code(self) -> int | None:
        """Q.850 cause, once the call is over."""
        ...

    @property
    def sip_code(self) -> int | None: ...
    def billsec(self) -> int:
        """Billed whole seconds of talk, 0 until the call is over."""
        ...

    def record(self) -> dict[str, Any]:
        """The native lookup body."""
        ...


# A NamedTuple rather than a frozen dataclass: one is built per start request, at a third of the cost.
class Admission(NamedTuple):
    """What the core did with a StartSpec, and how the dialect must answer."""

    outcome: Literal["created", "duplicate", "rejected"]
    # The dialect's start_statuses entry for this admission; already written to the request log.
    status: int
    # The new call, or the existing one for a duplicate; None when rejected.
    call: CallView | None = None
    # max_cps and rate_limited: refused unprocessed, as a provider's 429; error_5xx: failed before any
    # call exists; conflict: the attempt id belongs to another number or another dialect.
    reason: RejectReason | None = None
    # The call exists, but the answer must be a server error: the caller cannot tell it was created.
    after_create_error: bool = False
    # Real seconds to hold the answer back (0.0: answer at once); the call already exists meanwhile.
    slow_seconds: float = 0.0


class Dialect(Protocol):
    """One provider's API over the simulator's calls."""

    @property
    def name(self) -> str:
        """The registered name; request log entries carry it."""
        ...

    @property
    def start_statuses(self) -> Mapping[str, int]:
        """HTTP status per admission; needs every key of DEFAULT_START_STATUSES."""
        ...

    def routes(self, state: SimulatorState) -> list[web.RouteDef]:
        """The provider's start, lookup and cancel endpoints, bound to this state."""
        ...

    def render_event(
        self, call: CallView, status: str, sequence: int, final: bool, event_id: str
    ) -> Callback | None:
        """(url, body, headers) of one callback, or None to send nothing for this event.

        Called from the call's timer on the event loop: no I/O, and it must not raise.

        ``sequence`` is 1 for ringing, 2 for in-progress and 3 for the final status, whatever the
        delivery order. ``event_id`` is fresh per event, except that a stale ringing event sent out of
        order repeats the id of the ringing event it copies; a duplicated callback is the very bytes
        returned here, sent twice.
        """
        ...


DialectFactory = Callable[[Mapping[str, Any], "SimulatorConfig"], Dialect]

_FACTORIES: dict[str, DialectFactory] = {}


def register(name: str, factory: DialectFactory) -> None:
    """Make ``name`` mountable; a dialect module calls this once, at import."""
    if not name.isidentifier():
        raise ValueError(f"dialect names are Python identifiers (they name a module), got {name!r}")
    known = _FACTORIES.get(name)
    if known is not None and known is not factory:
        raise ValueError(f"dialect {name!r} is already registered to {known!r}")
    _FACTORIES[name] = factory


def _modules() -> set[str]:
    return {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}


def known_dialects() -> list[str]:
    """Every dialect that can be mounted: registered ones and modules of this package."""
    return sorted(set(_FACTORIES) | _modules())


def resolve(name: str) -> DialectFactory:
    """The factory registered for ``name``, importing dialer.simdialects.<name> the first time."""
    factory = _FACTORIES.get(name)
    if factory is None and name in _modules():
        importlib.import_module(f"{__name__}.{name}")
        factory = _FACTORIES.get(name)
        if factory is None:
            raise ValueError(f"module {__name__}.{name} did not register a dialect named {name!r}")
    if factory is None:
        raise ValueError(f"unknown simulator dialect {name!r}; known: {known_dialects()}")
    return factory


def build(config: SimulatorConfig) -> dict[str, Dialect]:
    """One instance of each dialect the config mounts, by name."""
    dialects: dict[str, Dialect] = {}
    for name in config.dialects:
        dialect = resolve(name)(config.dialect_options.get(name, {}), config)
        if dialect.name != name:
            raise ValueError(f"dialect registered as {name!r} calls itself {dialect.name!r}")
        missing = sorted(set(DEFAULT_START_STATUSES) - set(dialect.start_statuses))
        if missing:
            raise ValueError(f"dialect {name!r} has no start_statuses for {missing}")
        dialects[name] = dialect
    return dialects


def iso_utc(wall: float | None) -> str | None:
    """ISO 8601 in UTC with milliseconds, as native bodies carry times; None stays None."""
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")
