"""Callee time zones from the number, for the calling-window gate.

phonenumbers decides a number's zones in two ways: geographical numbers (fixed lines, and mobiles
in the few countries where mobile prefixes are geographical) by the longest prefix of the E.164
digits in its time-zone table; every other type (mobiles elsewhere, toll-free, premium, VoIP…) by
the calling code alone. The tables below let SQL callers (`dialer_callee_zones`) decide the same
way without Python: the prefix table verbatim, and per calling code the patterns of the
non-geographical types, so SQL can tell which lookup phonenumbers would use.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import zoneinfo
from collections.abc import Iterable

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumberDesc
from phonenumbers import timezone as pn_timezone
from phonenumbers.tzdata import TIMEZONE_DATA

UNKNOWN_ZONE = "Etc/Unknown"

# The types phonenumbers' number_type tries before fixed line and mobile; a match on any of them
# makes the number non-geographical.
_NON_GEO_TYPES = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
)


# Zones further apart than this share no calling window (a +1 non-geographic number gets 42 of
# them, Guam to Newfoundland): "the most restrictive" would never open, so such a number counts as
# unplaced and the campaign's zone applies. Measured at two instants, so DST cannot hide a spread.
WIDE_SPREAD = dt.timedelta(hours=6)
_REFERENCE_INSTANTS = (
    dt.datetime(2026, 1, 15, 12, tzinfo=dt.UTC),
    dt.datetime(2026, 7, 15, 12, tzinfo=dt.UTC),
)


@functools.cache
def _offsets(zone: str) -> tuple[dt.timedelta, ...]:
    tz = zoneinfo.ZoneInfo(zone)
    return tuple(at.astimezone(tz).utcoffset() or dt.timedelta(0) for at in _REFERENCE_INSTANTS)


def _placed(zones: list[str]) -> list[str] | None:
    if not zones:
        return None
    if len(zones) > 1:
        offsets = [_offsets(z) for z in zones]
        for i in range(len(_REFERENCE_INSTANTS)):
            column = [o[i] for o in offsets]
            if max(column) - min(column) > WIDE_SPREAD:
                return None
    return zones


def callee_zones(phone: str, known: frozenset[str] | None = None) -> list[str] | None:
    """The number's zones as phonenumbers gives them; None when unknown or too spread out (the
    campaign's zone applies). `known` keeps only zones the database knows. The reference for
    `ZoneResolver` and `dialer_callee_zones()`."""
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return None
    zones = [
        z
        for z in pn_timezone.time_zones_for_number(number)
        if z != UNKNOWN_ZONE and (known is None or z in known)
    ]
    return _placed(zones)


def _compiled(pattern: str | None) -> re.Pattern[str] | None:
    return re.compile(pattern) if pattern else None


class ZoneResolver:
    """`callee_zones` for valid numbers at bulk-load speed (~4 µs, against ~20 µs through
    phonenumbers.parse): the same two lookups `dialer_callee_zones()` makes, with the patterns
    compiled once. The COPY path stores its answer, so loading a million rows stays fast."""

    def __init__(self, known: frozenset[str]) -> None:
        self._known = known
        self._codes: dict[
            str, tuple[re.Pattern[str] | None, re.Pattern[str] | None, re.Pattern[str] | None]
        ] = {}
        for code, nongeo, mobile, fixed in sql_nongeo_patterns():
            self._codes[code] = (_compiled(nongeo), _compiled(mobile), _compiled(fixed))
        self._cache: dict[str, list[str] | None] = {}

    def __call__(self, phone: str) -> list[str] | None:
        digits = phone[1:]
        for size in (1, 2, 3):
            code = digits[:size]
            patterns = self._codes.get(code)
            if patterns is not None:
                break
        else:
            return None
        nongeo, mobile, fixed = patterns
        nsn = digits[len(code) :]
        geographic = not (
            (nongeo is not None and nongeo.fullmatch(nsn))
            or (
                mobile is not None
                and mobile.fullmatch(nsn)
                and not (fixed is not None and fixed.fullmatch(nsn))
            )
        )
        key = digits if geographic else code
        for size in range(min(len(key), 10), 0, -1):
            prefix = key[:size]
            if prefix in TIMEZONE_DATA:
                if prefix not in self._cache:
                    zones = [z for z in TIMEZONE_DATA[prefix] if z != UNKNOWN_ZONE and z in self._known]
                    self._cache[prefix] = _placed(zones)
                cached = self._cache[prefix]
                return None if cached is None else list(cached)
        return None


def sql_phone_zones(known: Iterable[str]) -> list[tuple[str, list[str]]]:
    """(E.164 digit prefix, zones) rows; zones the database does not know are left out, because
    one unknown name would make `AT TIME ZONE` fail the whole claim."""
    names = set(known)
    rows: list[tuple[str, list[str]]] = []
    for prefix, zones in TIMEZONE_DATA.items():
        usable = [z for z in zones if z in names]
        if usable:
            rows.append((prefix, usable))
    return rows


def _pattern(desc: PhoneNumberDesc | None) -> str | None:
    if desc is None or desc.national_number_pattern is None:
        return None
    return str(desc.national_number_pattern)


def _alternation(patterns: Iterable[str | None]) -> str | None:
    unique = sorted({p for p in patterns if p})
    return "|".join(f"(?:{p})" for p in unique) if unique else None


def sql_nongeo_patterns() -> list[tuple[str, str | None, str | None, str | None]]:
    """Per calling code: (code, non-geographical types, mobile, fixed line) patterns, each an
    alternation over the code's regions (NULL when none). Mobiles are non-geographical unless the
    code is one of phonenumbers' geographical-mobile countries; a number matching both the mobile
    and the fixed-line pattern is FIXED_LINE_OR_MOBILE, which is geographical."""
    rows: list[tuple[str, str | None, str | None, str | None]] = []
    for code, regions in sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items()):
        metas: list[PhoneMetadata] = []
        for region in regions:
            md = (
                PhoneMetadata.metadata_for_nongeo_region(code)
                if region == "001"
                else PhoneMetadata.metadata_for_region(region)
            )
            if md is not None:
                metas.append(md)
        nongeo = _alternation(_pattern(getattr(md, t)) for md in metas for t in _NON_GEO_TYPES)
        geo_mobile = phonenumbers.is_number_type_geographical(phonenumbers.PhoneNumberType.MOBILE, code)
        mobile = None if geo_mobile else _alternation(_pattern(md.mobile) for md in metas)
        fixed = _alternation(_pattern(md.fixed_line) for md in metas)
        rows.append((str(code), nongeo, mobile, fixed))
    return rows
