"""Compliance settings a campaign can hold, validated before they reach the database.

The gates themselves run in SQL at dispatch (dialer_claim, dialer_record_outcomes); this module
only decides what a well-formed setting is, so the API, the CLI and the database agree.
"""

from __future__ import annotations

import re
from typing import Any

DEFAULT_WINDOW = (8 * 60, 21 * 60)  # 08:00-21:00 in the callee's zone (US TCPA, UK practice)
DEFAULT_ABANDON_LOCKOUT_SECONDS = 72 * 3600  # Ofcom: no repeat call within 72 h of an abandoned one
AMD_POLICIES = ("retry", "final")
_KEYS = tuple(f"key_{k}" for k in range(10))
_WINDOW = re.compile(r"^([01][0-9]|2[0-4])([0-5][0-9])-([01][0-9]|2[0-4])([0-5][0-9])$")


class ComplianceError(ValueError):
    pass


def parse_window(text: str) -> tuple[int, int] | None:
    """'0800-2100' → (480, 1260) in minutes after local midnight; 'off' → None (no window)."""
    if text.strip().lower() in ("off", "none", ""):
        return None
    m = _WINDOW.match(text.strip().replace(":", ""))
    if m is None:
        raise ComplianceError(f"{text!r} is not a window like 0800-2100 (or 'off')")
    start = int(m[1]) * 60 + int(m[2])
    end = int(m[3]) * 60 + int(m[4])
    window = (start, end)
    check_window(*window)
    return window


def check_window(start: Any, end: Any) -> None:
    if start is None and end is None:
        return
    if start is None or end is None:
        raise ComplianceError(
            "callee_window_start and callee_window_end are set together (both null: no window)"
        )
    for name, value, lo, hi in (("start", start, 0, 1439), ("end", end, 1, 1440)):
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ComplianceError(f"callee_window_{name} {value!r} must be minutes after midnight, {lo}-{hi}")
    if start == end:
        raise ComplianceError("an empty window (start = end) would never dial; use null for no window")


def check_auto_stop(value: Any) -> None:
    """The CALLR Sendr AutoStopConditions shape: {enabled, per_answer_count: {enabled, count},
    per_key: {enabled, key_0 … key_9}}; unknown keys are refused so a typo cannot disable a stop."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise ComplianceError("must be an object or null")
    _only(value, {"enabled", "per_answer_count", "per_key"}, "")
    _bool(value, "enabled", "")
    answers = value.get("per_answer_count")
    if answers is not None:
        if not isinstance(answers, dict):
            raise ComplianceError("per_answer_count must be an object")
        _only(answers, {"enabled", "count"}, "per_answer_count.")
        _bool(answers, "enabled", "per_answer_count.")
        _count(answers, "count", "per_answer_count.")
    keys = value.get("per_key")
    if keys is not None:
        if not isinstance(keys, dict):
            raise ComplianceError("per_key must be an object")
        _only(keys, {"enabled", *_KEYS}, "per_key.")
        _bool(keys, "enabled", "per_key.")
        for key in _KEYS:
            _count(keys, key, "per_key.")


def _only(value: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(value) - allowed)
    if extra:
        raise ComplianceError(f"unknown field(s) {', '.join(where + e for e in extra)}")


def _bool(value: dict[str, Any], key: str, where: str) -> None:
    if key in value and not isinstance(value[key], bool):
        raise ComplianceError(f"{where}{key} must be true or false")


def _count(value: dict[str, Any], key: str, where: str) -> None:
    v = value.get(key, 0)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 10_000_000:
        raise ComplianceError(f"{where}{key} must be an integer between 0 and 10000000")
