from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.hours import BusinessHours, HoursError, Window

NY = "America/New_York"
LONDON = "Europe/London"
WEEKDAYS = (1, 2, 3, 4, 5)  # Retreaver's Monday..Friday (0 = Sunday)


def at(
    zone: str,
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    *,
    fold: int = 0,
) -> datetime:
    """An aware instant given as wall time in `zone`."""
    return datetime(year, month, day, hour, minute, second, tzinfo=ZoneInfo(zone), fold=fold)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def hours(raw: object, zone: str = NY) -> BusinessHours:
    return BusinessHours.parse(raw, zone)


NINE_TO_FIVE = [{"day_of_week": d, "time_open": 900, "time_close": 1700} for d in WEEKDAYS]


# --- explicit cases ---------------------------------------------------------------------------


def test_weekday_window_open_inside_closed_at_and_after_close() -> None:
    """A 0900-1700 weekday window is open at 09:00 and 16:59, closed at 08:59 and 17:00 local."""
    h = hours(NINE_TO_FIVE)
    assert h.is_open(at(NY, 2024, 6, 3, 9, 0))
    assert h.is_open(at(NY, 2024, 6, 3, 16, 59))
    assert not h.is_open(at(NY, 2024, 6, 3, 8, 59))
    assert not h.is_open(at(NY, 2024, 6, 3, 17, 0))


def test_weekend_points_to_monday_morning() -> None:
    """On Saturday the next window is Monday 09:00-17:00 local."""
    h = hours(NINE_TO_FIVE)
    now = at(NY, 2024, 6, 8, 12, 0)
    assert not h.is_open(now)
    assert h.window_at_or_after(now) == Window(utc(2024, 6, 10, 13), utc(2024, 6, 10, 21))


def test_open_window_contains_now() -> None:
    """While open, the window returned is the one containing now."""
    w = hours(NINE_TO_FIVE).window_at_or_after(at(NY, 2024, 6, 4, 12, 0))
    assert w == Window(utc(2024, 6, 4, 13), utc(2024, 6, 4, 21))


def test_several_windows_per_day() -> None:
    """A lunch gap between two windows of one day is closed and points to the afternoon window."""
    h = hours(
        [
            {"day_of_week": 1, "time_open": 900, "time_close": 1200},
            {"day_of_week": 1, "time_open": 1300, "time_close": 1700},
        ]
    )
    assert h.is_open(at(NY, 2024, 6, 3, 11, 59))
    lunch = at(NY, 2024, 6, 3, 12, 30)
    assert not h.is_open(lunch)
    assert h.window_at_or_after(lunch) == Window(utc(2024, 6, 3, 17), utc(2024, 6, 3, 21))


def test_overnight_window_open_early_next_morning() -> None:
    """A Friday 2200-0600 window is open on Saturday at 03:00 and closes Saturday 06:00."""
    h = hours([{"day_of_week": 5, "time_open": 2200, "time_close": 600}])
    saturday_3am = at(NY, 2024, 6, 8, 3, 0)
    assert h.is_open(saturday_3am)
    assert not h.is_open(at(NY, 2024, 6, 8, 6, 0))
    assert not h.is_open(at(NY, 2024, 6, 7, 21, 59))
    assert h.window_at_or_after(saturday_3am) == Window(utc(2024, 6, 8, 2), utc(2024, 6, 8, 10))


def test_inverted_closes_the_range_and_opens_the_rest_of_the_day() -> None:
    """Inverted 1200-1300 on Monday is closed over lunch and open the rest of Monday only."""
    h = hours([{"day_of_week": 1, "time_open": 1200, "time_close": 1300, "inverted": True}])
    assert h.is_open(at(NY, 2024, 6, 3, 0, 0))
    assert h.is_open(at(NY, 2024, 6, 3, 11, 59))
    assert not h.is_open(at(NY, 2024, 6, 3, 12, 30))
    assert h.is_open(at(NY, 2024, 6, 3, 23, 59))
    assert not h.is_open(at(NY, 2024, 6, 4, 0, 0))
    assert h.window_at_or_after(at(NY, 2024, 6, 3, 12, 30)) == Window(utc(2024, 6, 3, 17), utc(2024, 6, 4, 4))


def test_inverted_overnight_range_wraps_within_the_day() -> None:
    """Inverted 2200-0600 means closed 22:00-06:00 of that day, so open 06:00-22:00."""
    h = hours([{"day_of_week": 1, "time_open": 2200, "time_close": 600, "inverted": True}])
    assert not h.is_open(at(NY, 2024, 6, 3, 5, 59))
    assert h.is_open(at(NY, 2024, 6, 3, 6, 0))
    assert not h.is_open(at(NY, 2024, 6, 3, 22, 0))
    assert not h.is_open(at(NY, 2024, 6, 4, 3, 0))


def test_work_day_false_contributes_nothing() -> None:
    """Entries marked work_day false never open, and no window is found within the horizon."""
    h = hours([{"day_of_week": d, "work_day": False} for d in range(7)])
    now = at(NY, 2024, 6, 3, 12, 0)
    assert not h.always_open
    assert not h.is_open(now)
    assert h.window_at_or_after(now) is None


def test_close_at_2400_is_next_midnight() -> None:
    """A 1700-2400 window closes at the next local midnight."""
    h = hours([{"day_of_week": 1, "time_open": 1700, "time_close": 2400}])
    assert h.is_open(at(NY, 2024, 6, 3, 23, 59, 59))
    assert not h.is_open(at(NY, 2024, 6, 4, 0, 0))
    assert h.window_at_or_after(at(NY, 2024, 6, 3, 18)) == Window(utc(2024, 6, 3, 21), utc(2024, 6, 4, 4))


def test_adjacent_days_merge_into_one_window() -> None:
    """Monday 0000-2400 and Tuesday 0000-0900 form one window from Monday 00:00 to Tuesday 09:00."""
    h = hours([{"day_of_week": 1}, {"day_of_week": 2, "time_close": 900}])
    w = h.window_at_or_after(at(NY, 2024, 6, 3, 10))
    assert w == Window(utc(2024, 6, 3, 4), utc(2024, 6, 4, 13))


def test_window_closing_beyond_the_horizon_is_capped() -> None:
    """Seven full days never close, so the window ends at now + horizon_days."""
    h = hours([{"day_of_week": d} for d in range(7)])
    now = at(NY, 2024, 6, 3, 10)
    w = h.window_at_or_after(now, horizon_days=3)
    assert w is not None
    assert w.closes_at == now + timedelta(days=3)
    assert w.opens_at <= now


def test_nothing_within_horizon_is_none() -> None:
    """A window further away than horizon_days is not reported."""
    h = hours([{"day_of_week": 1, "time_open": 900, "time_close": 1000}])
    tuesday = at(NY, 2024, 6, 4, 12)
    assert h.window_at_or_after(tuesday, horizon_days=5) is None
    assert h.window_at_or_after(tuesday, horizon_days=7) == Window(utc(2024, 6, 10, 13), utc(2024, 6, 10, 14))


@pytest.mark.parametrize("raw", [None, []])
def test_always_open(raw: object) -> None:
    """No hours means always open, with a window running for the horizon from now."""
    h = hours(raw)
    now = at(NY, 2024, 6, 3, 3, 0)
    assert h.always_open
    assert h.is_open(now)
    assert h.window_at_or_after(now, horizon_days=2) == Window(now, now + timedelta(days=2))


def test_window_instants_are_utc() -> None:
    """Window boundaries are UTC whatever zone `now` was given in."""
    w = hours(NINE_TO_FIVE).window_at_or_after(at("Asia/Tokyo", 2024, 6, 4, 12))
    assert w is not None
    assert w.opens_at.tzinfo is UTC
    assert w.closes_at.tzinfo is UTC


# --- DST --------------------------------------------------------------------------------------


def window_on(raw_day: list[dict[str, int]], zone: str, day: date) -> Window:
    h = hours(raw_day, zone)
    w = h.window_at_or_after(datetime.combine(day, time(0, 0), ZoneInfo(zone)))
    assert w is not None
    return w


def entry_for(day: date, time_open: int, time_close: int) -> list[dict[str, int]]:
    return [{"day_of_week": (day.weekday() + 1) % 7, "time_open": time_open, "time_close": time_close}]


@pytest.mark.parametrize(
    ("zone", "day", "expected"),
    [
        # 02:00 EST jumps to 03:00 EDT: 01:00 EST to 03:00 EDT is one real hour.
        (NY, date(2024, 3, 10), Window(utc(2024, 3, 10, 6), utc(2024, 3, 10, 7))),
        # 02:00 EDT falls back to 01:00 EST: 01:00 EDT (first occurrence) to 03:00 EST is three hours.
        (NY, date(2024, 11, 3), Window(utc(2024, 11, 3, 5), utc(2024, 11, 3, 8))),
        # 01:00 GMT jumps to 02:00 BST: wall 01:00 does not exist and opens at the gap end, 01:00Z.
        (LONDON, date(2024, 3, 31), Window(utc(2024, 3, 31, 1), utc(2024, 3, 31, 2))),
        # 02:00 BST falls back to 01:00 GMT: 01:00 BST (00:00Z) to 03:00 GMT is three hours.
        (LONDON, date(2024, 10, 27), Window(utc(2024, 10, 27, 0), utc(2024, 10, 27, 3))),
    ],
)
def test_0100_0300_on_dst_days(zone: str, day: date, expected: Window) -> None:
    """A 0100-0300 window on a DST day spans the real time between those wall times."""
    assert window_on(entry_for(day, 100, 300), zone, day) == expected


@pytest.mark.parametrize(
    ("zone", "transition_day"),
    [
        (NY, date(2024, 3, 10)),
        (NY, date(2024, 11, 3)),
        (LONDON, date(2024, 3, 31)),
        (LONDON, date(2024, 10, 27)),
    ],
)
def test_nine_to_five_is_eight_hours_around_transitions(zone: str, transition_day: date) -> None:
    """0900-1700 lasts 8 real hours the day before, of, and after a DST transition."""
    for offset in (-1, 0, 1):
        day = transition_day + timedelta(days=offset)
        w = window_on(entry_for(day, 900, 1700), zone, day)
        assert w.closes_at - w.opens_at == timedelta(hours=8)
        assert w.opens_at.astimezone(ZoneInfo(zone)).time() == time(9, 0)


def test_daily_window_tracks_wall_clock_across_transition() -> None:
    """A daily 09:00 opening stays at 09:00 local across spring-forward, moving from 14:00Z to 13:00Z."""
    h = hours([{"day_of_week": d, "time_open": 900, "time_close": 1700} for d in range(7)])
    saturday = h.window_at_or_after(at(NY, 2024, 3, 8, 18))
    sunday = h.window_at_or_after(at(NY, 2024, 3, 9, 18))
    assert saturday == Window(utc(2024, 3, 9, 14), utc(2024, 3, 9, 22))
    assert sunday == Window(utc(2024, 3, 10, 13), utc(2024, 3, 10, 21))


def test_opening_inside_spring_forward_gap_opens_at_gap_end() -> None:
    """Opening at nonexistent 02:30 EST/EDT opens at 03:00 EDT, the first instant after the gap."""
    w = window_on(entry_for(date(2024, 3, 10), 230, 400), NY, date(2024, 3, 10))
    assert w == Window(utc(2024, 3, 10, 7), utc(2024, 3, 10, 8))
    assert w.opens_at.astimezone(ZoneInfo(NY)).time() == time(3, 0)


def test_window_wholly_inside_gap_is_empty() -> None:
    """A 0200-0230 window on the spring-forward day never opens; the next is a week later."""
    h = hours(entry_for(date(2024, 3, 10), 200, 230))
    assert h.window_at_or_after(at(NY, 2024, 3, 10, 0)) == Window(
        utc(2024, 3, 17, 6), utc(2024, 3, 17, 6, 30)
    )
    assert not h.is_open(utc(2024, 3, 10, 7))


def test_half_hour_gap_in_lord_howe() -> None:
    """Lord Howe jumps 02:00 to 02:30: a 0200-0300 window opens at 02:30 and lasts 30 minutes."""
    zone = "Australia/Lord_Howe"
    w = window_on(entry_for(date(2024, 10, 6), 200, 300), zone, date(2024, 10, 6))
    assert w.closes_at - w.opens_at == timedelta(minutes=30)
    assert w.opens_at.astimezone(ZoneInfo(zone)).time() == time(2, 30)


def test_ambiguous_times_use_first_occurrence() -> None:
    """A 0100-0130 window on fall-back day is open during the first 01:15 (EDT), not the second (EST)."""
    h = hours(entry_for(date(2024, 11, 3), 100, 130))
    assert h.is_open(at(NY, 2024, 11, 3, 1, 15, fold=0))
    assert not h.is_open(at(NY, 2024, 11, 3, 1, 15, fold=1))
    assert h.window_at_or_after(at(NY, 2024, 11, 3, 0)) == Window(
        utc(2024, 11, 3, 5), utc(2024, 11, 3, 5, 30)
    )


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("Mon-Fri", "business_hours: expected a list of entries, got str"),
        ({"day_of_week": 1}, "business_hours: expected a list of entries, got dict"),
        ([1], r"business_hours\[0\]: expected an object, got int"),
        ([{"time_open": 900}], r"business_hours\[0\].day_of_week: required"),
        ([{"day_of_week": 7}], r"business_hours\[0\].day_of_week: 7 is not a day"),
        ([{"day_of_week": -1}], r"business_hours\[0\].day_of_week: -1 is not a day"),
        ([{"day_of_week": "1"}], r"business_hours\[0\].day_of_week: expected an integer, got '1'"),
        ([{"day_of_week": True}], r"business_hours\[0\].day_of_week: expected an integer, got True"),
        (
            [{"day_of_week": 1}, {"day_of_week": 2}, {"day_of_week": 3, "time_open": 2460}],
            r"business_hours\[2\].time_open: 2460 is not a valid HHMM time",
        ),
        (
            [{"day_of_week": 1, "time_open": 960}],
            r"business_hours\[0\].time_open: 960 is not a valid HHMM time",
        ),
        (
            [{"day_of_week": 1, "time_open": 2400}],
            r"business_hours\[0\].time_open: 2400 is not a valid HHMM time",
        ),
        (
            [{"day_of_week": 1, "time_open": -5}],
            r"business_hours\[0\].time_open: -5 is not a valid HHMM time",
        ),
        (
            [{"day_of_week": 1, "time_close": 2401}],
            r"business_hours\[0\].time_close: 2401 is not a valid HHMM",
        ),
        (
            [{"day_of_week": 1, "time_close": 2500}],
            r"business_hours\[0\].time_close: 2500 is not a valid HHMM",
        ),
        (
            [{"day_of_week": 1, "time_close": 1775}],
            r"business_hours\[0\].time_close: 1775 is not a valid HHMM",
        ),
        ([{"day_of_week": 1, "time_close": 17.0}], r"business_hours\[0\].time_close: expected an integer"),
        ([{"day_of_week": 1, "work_day": 1}], r"business_hours\[0\].work_day: expected true or false, got 1"),
        ([{"day_of_week": 1, "inverted": "yes"}], r"business_hours\[0\].inverted: expected true or false"),
        ([{"day_of_week": 1, "open": 900}], r"business_hours\[0\]: unknown key\(s\) 'open'"),
    ],
)
def test_invalid_hours_are_rejected_naming_entry_and_field(raw: object, message: str) -> None:
    """Each malformed input raises HoursError naming the entry index and field."""
    with pytest.raises(HoursError, match=message):
        BusinessHours.parse(raw, NY)


@pytest.mark.parametrize("zone", ["Mars/Base", "", "/etc/localtime", "../zoneinfo/UTC"])
def test_unknown_time_zone_is_rejected(zone: str) -> None:
    """An unknown or malformed zone name raises HoursError quoting the name."""
    with pytest.raises(HoursError, match=f"unknown time zone {zone!r}"):
        BusinessHours.parse([], zone)


def test_hours_error_is_a_value_error() -> None:
    """Callers catching ValueError also catch invalid hours."""
    assert issubclass(HoursError, ValueError)


@pytest.mark.parametrize("call", ["is_open", "window_at_or_after"])
def test_naive_now_is_rejected(call: str) -> None:
    """A naive datetime is refused rather than silently read as some zone."""
    with pytest.raises(ValueError, match="timezone-aware"):
        getattr(hours(NINE_TO_FIVE), call)(datetime(2024, 6, 3, 12))


def test_non_positive_horizon_is_rejected() -> None:
    """horizon_days below 1 cannot contain any window and is refused."""
    with pytest.raises(ValueError, match="horizon_days"):
        hours(NINE_TO_FIVE).window_at_or_after(utc(2024, 6, 3), horizon_days=0)


def test_to_json_fills_defaults_and_round_trips() -> None:
    """to_json makes every field explicit, sorts entries, and parses back to equal hours."""
    h = hours([{"day_of_week": 3, "time_open": 900}, {"day_of_week": 1, "work_day": False}])
    assert h.to_json() == [
        {"day_of_week": 1, "time_open": 0, "time_close": 2400, "work_day": False, "inverted": False},
        {"day_of_week": 3, "time_open": 900, "time_close": 2400, "work_day": True, "inverted": False},
    ]
    assert BusinessHours.parse(h.to_json(), NY) == h


# --- properties -------------------------------------------------------------------------------

ZONES = [
    "UTC",
    NY,
    LONDON,
    "Australia/Sydney",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "America/St_Johns",
    "America/Santiago",  # transitions at local midnight
]
START = datetime(2019, 1, 1, tzinfo=UTC)
END = datetime(2030, 1, 1, tzinfo=UTC)


@cache
def transitions(zone_name: str) -> tuple[datetime, ...]:
    """UTC instants where `zone_name` changes offset between START and END, to aim samples at."""
    zone = ZoneInfo(zone_name)
    found = []
    t = START
    while t < END:
        nxt = t + timedelta(days=1)
        if t.astimezone(zone).utcoffset() != nxt.astimezone(zone).utcoffset():
            lo, hi = t, nxt
            while hi - lo > timedelta(minutes=1):
                mid = lo + (hi - lo) / 2
                if mid.astimezone(zone).utcoffset() == hi.astimezone(zone).utcoffset():
                    hi = mid
                else:
                    lo = mid
            found.append(hi)
        t = nxt
    return tuple(found)


hhmm_open = st.one_of(
    st.sampled_from([0, 30, 100, 130, 200, 230, 300, 900, 1700, 2200, 2330]),
    st.builds(lambda h, m: h * 100 + m, st.integers(0, 23), st.integers(0, 59)),
)
hhmm_close = st.one_of(hhmm_open, st.just(2400))
entry = st.fixed_dictionaries(
    {"day_of_week": st.integers(0, 6), "time_open": hhmm_open, "time_close": hhmm_close},
    optional={"work_day": st.booleans(), "inverted": st.booleans()},
)
raw_hours = st.lists(entry, max_size=6)


@st.composite
def zone_and_instant(draw: st.DrawFn) -> tuple[str, datetime]:
    zone = draw(st.sampled_from(ZONES))
    near = transitions(zone)
    aim_at_transition = draw(st.booleans())
    if near and aim_at_transition:
        base = draw(st.sampled_from(near))
        instant = base + timedelta(minutes=draw(st.integers(-36 * 60, 36 * 60)))
    else:
        instant = START + timedelta(seconds=draw(st.integers(0, int((END - START).total_seconds()))))
    return zone, instant


def reference_instant(zone: ZoneInfo, day: date, hhmm: int) -> datetime:
    """Wall time to UTC by brute force: step through a gap minute by minute; fold=0 when repeated."""
    day += timedelta(days=hhmm // 2400)
    hhmm %= 2400
    wall = datetime.combine(day, time(hhmm // 100, hhmm % 100))
    while True:
        candidate = wall.replace(tzinfo=zone).astimezone(UTC)
        if candidate.astimezone(zone).replace(tzinfo=None) == wall:
            return candidate
        wall += timedelta(minutes=1)


def reference_is_open(raw: list[dict[str, int | bool]], zone_name: str, now: datetime) -> bool:
    """Check the raw entries of now's local day and the day before directly, in HHMM arithmetic."""
    if not raw:
        return True
    zone = ZoneInfo(zone_name)
    today = now.astimezone(zone).date()
    for day in (today - timedelta(days=1), today):
        for e in raw:
            if e["day_of_week"] != (day.weekday() + 1) % 7 or not e.get("work_day", True):
                continue
            o, c = int(e["time_open"]), int(e["time_close"])
            if e.get("inverted", False):
                pieces = [(0, o), (c, 2400)] if c > o else [(c, o)]
            else:
                pieces = [(o, c)] if c > o else [(o, c + 2400)]
            for a, b in pieces:
                if reference_instant(zone, day, a) <= now < reference_instant(zone, day, b):
                    return True
    return False


@settings(max_examples=200, deadline=None)
@given(raw=raw_hours, where=zone_and_instant())
def test_properties_against_window_and_reference(
    raw: list[dict[str, int | bool]], where: tuple[str, datetime]
) -> None:
    """is_open matches a brute-force reference and window_at_or_after's window, with no open gap before it."""
    zone, now = where
    h = BusinessHours.parse(raw, zone)
    horizon = 14
    w = h.window_at_or_after(now, horizon_days=horizon)
    open_now = h.is_open(now)

    assert open_now == reference_is_open(raw, zone, now)
    assert open_now == (w is not None and w.opens_at <= now < w.closes_at)
    if w is None:
        return
    assert w.opens_at < w.closes_at
    assert h.is_open(w.opens_at)
    assert h.is_open(w.closes_at - timedelta(microseconds=1))
    if not h.always_open and w.closes_at < now + timedelta(days=horizon):
        assert not h.is_open(w.closes_at)
    if not open_now:
        gap = w.opens_at - now
        for sample in (
            now,
            now + gap / 4,
            now + gap / 2,
            now + gap * 3 / 4,
            w.opens_at - timedelta(microseconds=1),
        ):
            assert not h.is_open(sample)


@settings(max_examples=100, deadline=None)
@given(raw=raw_hours, zone=st.sampled_from(ZONES))
def test_to_json_round_trips_for_any_valid_hours(raw: list[dict[str, int | bool]], zone: str) -> None:
    """Any valid hours survive to_json → parse unchanged."""
    h = BusinessHours.parse(raw, zone)
    assert BusinessHours.parse(h.to_json(), zone) == h
