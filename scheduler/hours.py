"""Business hours as wall-clock times in a campaign's IANA time zone.

Hours are wall-clock times because that is how people and calling-hours rules state them: "9 to 5"
means 9 to 5 on the callee's clock, so a 0900-1700 window is 8 real hours on a normal day and on a
DST day alike, and a window that spans a transition is longer or shorter in real time.

Two wall times need a rule because the zone does not map them to exactly one instant:

* a wall time inside a spring-forward gap (02:30 America/New_York on the DST start day) never
  happens; it maps to the end of the gap, the first instant the clock shows a later time (03:00
  EDT). Opening "at 02:30" then opens as soon as the clock passes 02:30, and a window lying wholly
  inside the gap is empty.
* a wall time repeated by a fall-back (01:30 America/New_York on the DST end day) maps to its
  first occurrence (fold=0), for opening and closing alike.

Both rules keep the wall-to-instant mapping monotonic, so windows stay ordered and never invert.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_MINUTES_PER_DAY = 24 * 60
_ONE_DAY = timedelta(days=1)
_ONE_SECOND = timedelta(seconds=1)
_KEYS = ("day_of_week", "time_open", "time_close", "work_day", "inverted")

# A local range is (start, end) in minutes after the local midnight that starts its day; an end
# past 1440 belongs to the next calendar day, so an overnight shift stays one range.
_LocalRange = tuple[int, int]


class HoursError(ValueError):
    """Business hours or their time zone are invalid."""


@dataclass(frozen=True)
class Window:
    """One open period, as aware UTC instants: open for opens_at <= t < closes_at."""

    opens_at: datetime
    closes_at: datetime


@dataclass(frozen=True, order=True)
class _Entry:
    day_of_week: int  # 0 = Sunday, as Retreaver counts
    time_open: int  # HHMM
    time_close: int  # HHMM, 2400 allowed
    work_day: bool
    inverted: bool

    def local_ranges(self) -> tuple[_LocalRange, ...]:
        if not self.work_day:
            return ()
        opens, closes = _minutes(self.time_open), _minutes(self.time_close)
        if self.inverted:
            # The closed range wraps inside the same calendar day when close <= open ("closed
            # 2200-0600" means open 0600-2200): a closed range spilling into the next day would
            # contradict that day's own entry, which is what decides the next day.
            if closes > opens:
                return tuple(r for r in ((0, opens), (closes, _MINUTES_PER_DAY)) if r[0] < r[1])
            return ((closes, opens),) if closes < opens else ()
        if closes <= opens:
            return ((opens, closes + _MINUTES_PER_DAY),)
        return ((opens, closes),)

    def to_json(self) -> dict[str, int | bool]:
        return {
            "day_of_week": self.day_of_week,
            "time_open": self.time_open,
            "time_close": self.time_close,
            "work_day": self.work_day,
            "inverted": self.inverted,
        }


@dataclass(frozen=True)
class BusinessHours:
    """When a campaign may dial, as wall-clock hours in its time zone; no entries means always open."""

    time_zone: str
    entries: tuple[_Entry, ...] = ()
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    # Indexed by date.weekday() (Monday = 0), each sorted by start, so that walking days yields
    # ranges already in instant order.
    _ranges: tuple[tuple[_LocalRange, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_zone", load_zone(self.time_zone))
        by_weekday: list[list[_LocalRange]] = [[] for _ in range(7)]
        for entry in self.entries:
            # Retreaver counts from Sunday; date.weekday() from Monday.
            by_weekday[(entry.day_of_week - 1) % 7].extend(entry.local_ranges())
        object.__setattr__(self, "_ranges", tuple(tuple(sorted(day)) for day in by_weekday))

    @classmethod
    def parse(cls, raw: object, time_zone: str) -> BusinessHours:
        """Validate JSON-shaped hours; None or [] means always open."""
        if raw is None:
            return cls(time_zone)
        if not isinstance(raw, list):
            raise HoursError(f"business_hours: expected a list of entries, got {type(raw).__name__}")
        entries = tuple(sorted(_parse_entry(i, item) for i, item in enumerate(raw)))
        return cls(time_zone, entries)

    def to_json(self) -> list[dict[str, int | bool]]:
        """Every field explicit, entries sorted, so equal hours serialize identically."""
        return [entry.to_json() for entry in self.entries]

    @property
    def always_open(self) -> bool:
        return not self.entries

    def is_open(self, now: datetime) -> bool:
        """Whether dialing is allowed at the instant `now` (aware, any zone)."""
        _require_aware(now)
        if not self.entries:
            return True
        instant = now.astimezone(UTC)
        today = instant.astimezone(self._zone).date()
        yesterday = today - _ONE_DAY
        # Only yesterday's overnight ranges can reach into today: a range ending by midnight ended
        # before any instant whose local date is today, since the mapping is monotonic.
        for start, end in self._ranges[yesterday.weekday()]:
            if end <= _MINUTES_PER_DAY:
                continue
            if self._instant(yesterday, start) <= instant < self._instant(yesterday, end):
                return True
        for start, end in self._ranges[today.weekday()]:
            if self._instant(today, start) <= instant < self._instant(today, end):
                return True
        return False

    def window_at_or_after(self, now: datetime, horizon_days: int = 14) -> Window | None:
        """The open window containing `now`, else the next one opening within horizon_days.

        Touching or overlapping ranges merge into one window (Mon 0000-2400 plus Tue 0000-0900 is
        one window). closes_at is capped at now + horizon_days, and opens_at of a window already
        open reaches back at most to the previous local day; callers ask again when it closes.
        """
        _require_aware(now)
        if horizon_days < 1:
            raise ValueError(f"horizon_days must be at least 1, got {horizon_days}")
        instant = now.astimezone(UTC)
        limit = instant + timedelta(days=horizon_days)
        if not self.entries:
            return Window(opens_at=instant, closes_at=limit)
        # Walk calendar days in local time and convert each boundary: adding 24 h in UTC would
        # shift every boundary after a DST transition by the size of the transition.
        day = instant.astimezone(self._zone).date() - _ONE_DAY
        last_day = limit.astimezone(self._zone).date()
        current: tuple[datetime, datetime] | None = None
        while day <= last_day:
            for start, end in self._ranges[day.weekday()]:
                opens, closes = self._instant(day, start), self._instant(day, end)
                if opens >= closes:
                    continue  # the range lies wholly inside a spring-forward gap
                if current is not None and opens <= current[1]:
                    current = (current[0], max(current[1], closes))
                    continue
                if current is not None and current[1] > instant:
                    return Window(current[0], min(current[1], limit))
                if opens >= limit:
                    return None
                current = (opens, closes)
            day += _ONE_DAY
        if current is not None and current[1] > instant:
            return Window(current[0], min(current[1], limit))
        return None

    def _instant(self, day: date, minute: int) -> datetime:
        """The UTC instant at which the wall clock reads `minute` minutes after midnight of `day`."""
        extra_days, minute = divmod(minute, _MINUTES_PER_DAY)
        if extra_days:
            day += timedelta(days=extra_days)
        wall = datetime(day.year, day.month, day.day, minute // 60, minute % 60, tzinfo=self._zone)
        before = _offset(self._zone, wall)
        after = _offset(self._zone, wall.replace(fold=1))
        naive = wall.replace(tzinfo=None)
        if after <= before:
            # Unambiguous, or repeated by a fall-back: fold=0 is the first occurrence.
            return (naive - before).replace(tzinfo=UTC)
        # In a gap fold=0 reads the wall time with the old offset, landing after the transition,
        # and fold=1 with the new one, landing before it; the gap's end lies between.
        return _transition_between(self._zone, naive - after, naive - before).replace(tzinfo=UTC)


def _transition_between(zone: ZoneInfo, earlier: datetime, later: datetime) -> datetime:
    """First naive-UTC second in (earlier, later] that has `later`'s offset (bisection).

    Only gap boundaries come here (a couple of times a year per zone), and zoneinfo exposes no
    public transition list, so bisection over whole seconds (tz transitions are whole seconds)
    is simpler than computing the transition from the wall time.
    """
    target = _utc_offset(zone, later)
    while later - earlier > _ONE_SECOND:
        middle = earlier + (later - earlier) // _ONE_SECOND // 2 * _ONE_SECOND
        if _utc_offset(zone, middle) == target:
            later = middle
        else:
            earlier = middle
    return later


def _utc_offset(zone: ZoneInfo, naive_utc: datetime) -> timedelta:
    return _offset(zone, zone.fromutc(naive_utc.replace(tzinfo=zone)))


def _offset(zone: ZoneInfo, wall: datetime) -> timedelta:
    offset = zone.utcoffset(wall)
    if offset is None:  # pragma: no cover - ZoneInfo always knows the offset of a datetime
        raise AssertionError(f"{zone.key} gave no UTC offset for {wall}")
    return offset


def load_zone(name: str) -> ZoneInfo:
    """The zone; HoursError names a non-string or an unknown name (campaigns, and upstream's callee
    zones, are checked by this one rule)."""
    if not isinstance(name, str):
        raise HoursError(f"time zone must be a string, got {type(name).__name__}")
    try:
        return ZoneInfo(name)
    # ZoneInfo raises ValueError, not ZoneInfoNotFoundError, for keys that are not relative paths.
    except (ZoneInfoNotFoundError, ValueError):
        raise HoursError(f"unknown time zone {name!r}") from None


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got naive {now.isoformat()}")


def _minutes(hhmm: int) -> int:
    return hhmm // 100 * 60 + hhmm % 100


def _parse_entry(index: int, item: object) -> _Entry:
    where = f"business_hours[{index}]"
    if not isinstance(item, Mapping):
        raise HoursError(f"{where}: expected an object, got {type(item).__name__}")
    unknown = sorted(str(key) for key in item if key not in _KEYS)
    if unknown:
        raise HoursError(f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}")
    if "day_of_week" not in item:
        raise HoursError(f"{where}.day_of_week: required")
    day = _integer(where, "day_of_week", item["day_of_week"])
    if not 0 <= day <= 6:
        raise HoursError(f"{where}.day_of_week: {day} is not a day (0 = Sunday ... 6 = Saturday)")
    time_open = _hhmm(where, "time_open", item.get("time_open", 0), allow_2400=False)
    time_close = _hhmm(where, "time_close", item.get("time_close", 2400), allow_2400=True)
    return _Entry(
        day_of_week=day,
        time_open=time_open,
        time_close=time_close,
        work_day=_boolean(where, "work_day", item.get("work_day", True)),
        inverted=_boolean(where, "inverted", item.get("inverted", False)),
    )


def _integer(where: str, name: str, value: object) -> int:
    # bool is an int subclass; `true` as a time or a day is a client bug worth reporting.
    if isinstance(value, bool) or not isinstance(value, int):
        raise HoursError(f"{where}.{name}: expected an integer, got {value!r}")
    return value


def _hhmm(where: str, name: str, value: object, *, allow_2400: bool) -> int:
    hhmm = _integer(where, name, value)
    hours, minutes = divmod(hhmm, 100)
    valid = hhmm >= 0 and minutes < 60 and (hours < 24 or (allow_2400 and hhmm == 2400))
    if not valid:
        raise HoursError(f"{where}.{name}: {hhmm} is not a valid HHMM time")
    return hhmm


def _boolean(where: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise HoursError(f"{where}.{name}: expected true or false, got {value!r}")
    return value
