from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.pacing import (
    CORRECTION_CREDIBLE_DROPS,
    WARM_UP_PRIOR_ATTEMPTS,
    AgentState,
    Decision,
    Estimates,
    Estimator,
    PacingMode,
    PacingSettings,
    decide,
    pace,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAY = 86_400.0
PREDICTIVE = PacingSettings()


def feed(
    est: Estimator,
    start: float,
    *,
    answered: int,
    unanswered_per_answer: int = 2,
    abandoned: int = 0,
    spacing: float = 10.0,
    handle: float = 120.0,
) -> float:
    """Feed `answered` live answers (the first `abandoned` of them abandoned) plus unanswered attempts."""
    now = start
    for i in range(answered):
        for _ in range(unanswered_per_answer):
            est.attempt_started(now)
            est.not_answered(now + 25.0, 25.0)
        est.attempt_started(now)
        est.answered(now + 8.0, 8.0)
        if i < abandoned:
            est.abandoned(now + 10.0)
        else:
            est.bridged(now + 8.0, 0.0)
            est.handled(now + 8.0 + handle, handle - 10.0, 10.0)
        now += spacing
    return now + handle + 10.0


def warmed(answered: int = 200, abandoned: int = 0, **kw: Any) -> tuple[Estimator, float]:
    est = Estimator(PREDICTIVE)
    now = feed(est, T0, answered=answered, abandoned=abandoned, **kw)
    return est, now


def state(
    free: int = 0, busy: tuple[float, ...] = (), ringing: tuple[float, ...] = (), waiting: int = 0
) -> AgentState:
    return AgentState(
        agents_free=free, busy_elapsed_seconds=busy, ringing_elapsed_seconds=ringing, answered_waiting=waiting
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_abandon_rate": 0.0}, "max_abandon_rate"),
        ({"max_abandon_rate": 1.5}, "max_abandon_rate"),
        ({"max_dial_ratio": 0.5}, "max_dial_ratio"),
        ({"max_dial_ratio": 50.0}, "max_dial_ratio"),
        ({"min_observations": 0}, "min_observations"),
        ({"abandon_after_seconds": 0.0}, "abandon_after_seconds"),
        ({"wrap_up_seconds": -1.0}, "wrap_up_seconds"),
        ({"window_seconds": 1000}, "window_seconds"),
        ({"window_seconds": 86_400}, "window_seconds"),
        ({"warm_up_seconds": 7200}, "warm_up_seconds"),
        ({"emergency_window_answered": 5}, "emergency_window_answered"),
        ({"emergency_abandon_rate": 0.02}, "emergency_abandon_rate"),
        ({"abandon_aim_fraction": 0.0}, "abandon_aim_fraction"),
        ({"base_risk_factor": 0.0}, "base_risk_factor"),
        ({"correction_gain": -1.0}, "correction_gain"),
        ({"max_correction": 0.5}, "max_correction"),
        ({"mode": "turbo"}, "mode"),
    ],
)
def test_impossible_settings_raise_naming_the_setting(change: dict[str, Any], message: str) -> None:
    """Every impossible setting raises ValueError whose message names it."""
    with pytest.raises(ValueError, match=message):
        PacingSettings(**change)


def test_default_settings_are_valid_and_aim_below_the_limit() -> None:
    """The defaults validate, the controller aims below the 3% limit, and a mode name is accepted."""
    PREDICTIVE.validate()
    assert PacingSettings(mode="progressive").mode is PacingMode.PROGRESSIVE  # type: ignore[arg-type]
    assert PREDICTIVE.max_abandon_rate == 0.03
    assert 0 < PREDICTIVE.abandon_aim < PREDICTIVE.max_abandon_rate


def test_estimator_measures_hit_rate_ring_and_handle_times() -> None:
    """Hit rate is live answers over finished ring phases; means come from the histograms."""
    est, now = warmed(answered=100, unanswered_per_answer=3)
    e = est.estimates(now)
    assert e.hit_rate == pytest.approx(0.25)
    assert e.mean_ring_answered_seconds == pytest.approx(8.5)
    assert 110 <= e.mean_handle_seconds <= 130
    assert e.answered_in_window == 100 and e.handled_in_window == 100


def test_estimator_window_forgets_old_buckets() -> None:
    """Events older than window_seconds leave the estimates; the 24 h and 30 d ledgers keep them."""
    est = Estimator(PREDICTIVE)
    feed(est, T0, answered=100, unanswered_per_answer=1)  # hit rate 50%, an hour before
    later = T0 + 2 * 3600
    feed(est, later, answered=50, unanswered_per_answer=4)  # hit rate 20%, now
    e = est.estimates(later + 900)
    assert e.hit_rate == pytest.approx(0.2)
    assert e.answered_in_window == 50
    assert e.answered_24h == 150 and e.answered_30d == 150


def test_answer_probability_falls_as_a_call_keeps_ringing() -> None:
    """A fresh line is answered at about the hit rate; one ringing past every answer seen, never."""
    est, now = warmed(answered=100, unanswered_per_answer=3)
    e = est.estimates(now)
    assert e.answer_probability(0.0) == pytest.approx(0.25, abs=0.01)
    assert e.answer_probability(7.0) > e.answer_probability(8.5)
    assert e.answer_probability(20.0) == 0.0
    assert e.answer_probability(10_000.0) == 0.0


def test_free_probability_rises_as_a_call_nears_its_typical_end() -> None:
    """An agent 130 s into calls of 120-140 s is far likelier to be free soon than one who just started."""
    est, now = warmed()
    e = est.estimates(now)
    assert e.free_probability(0.0) < 0.05
    assert e.free_probability(130.0) > 0.9


def test_estimator_round_trips_through_json() -> None:
    """to_dict survives JSON and from_dict restores identical estimates."""
    est, now = warmed(answered=120, abandoned=3)
    data = json.loads(json.dumps(est.to_dict()))
    restored = Estimator.from_dict(data, PREDICTIVE)
    assert restored.to_dict() == est.to_dict()
    assert restored.estimates(now) == est.estimates(now)


def test_estimator_state_stays_small_whatever_the_volume() -> None:
    """Forty days of calls serialize to a bounded few kilobytes (buckets, not event lists)."""
    est = Estimator(PREDICTIVE)
    now = T0
    for _day in range(40):
        now = feed(est, now, answered=300, abandoned=6, spacing=30.0) + DAY - 300 * 30.0
    data = est.to_dict()
    assert len(data["buckets"]) <= PREDICTIVE.window_seconds // 300 + 1
    assert len(data["ledger_30d"]) <= 30 and len(data["ledger_24h"]) <= 144
    assert len(data["recent"]) <= PREDICTIVE.emergency_window_answered
    assert len(json.dumps(data)) < 32_000


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"v": 99},
        {"v": 1},
        {"v": 1, "bucket_seconds": 300, "buckets": {}, "ledger_24h": [], "ledger_30d": []},
    ],
)
def test_estimator_rejects_state_it_did_not_write(data: dict[str, Any]) -> None:
    """from_dict raises ValueError instead of guessing at malformed or foreign state."""
    with pytest.raises(ValueError, match="pacing estimator state"):
        Estimator.from_dict(data, PREDICTIVE)


def test_estimator_rejects_a_negative_count() -> None:
    """A tampered count is refused, not loaded."""
    est, _ = warmed(answered=60)
    data = est.to_dict()
    data["lifetime"] = [-1, 0]
    with pytest.raises(ValueError, match="non-negative"):
        Estimator.from_dict(data, PREDICTIVE)


def test_progressive_dials_one_line_per_free_agent() -> None:
    """Progressive: free agents minus lines already ringing or answered and waiting."""
    est, now = warmed()
    settings = replace(PREDICTIVE, mode=PacingMode.PROGRESSIVE)
    e = est.estimates(now)
    assert decide(settings, state(free=5, busy=(30.0,) * 5), e).new_attempts == 5
    d = decide(settings, state(free=5, busy=(30.0,) * 5, ringing=(3.0, 4.0), waiting=1), e)
    assert d.new_attempts == 2 and d.reason == "progressive" and d.dial_ratio == 1.0
    assert decide(settings, state(free=1, ringing=(1.0, 2.0)), e).new_attempts == 0


def test_no_agents_means_no_dialling() -> None:
    """With nobody logged in, no mode but agentless dials."""
    est, now = warmed()
    for mode in (PacingMode.PROGRESSIVE, PacingMode.PREDICTIVE):
        d = decide(replace(PREDICTIVE, mode=mode), state(ringing=(1.0,)), est.estimates(now))
        assert d.new_attempts == 0 and d.reason == "no_agents"


def test_agentless_leaves_pacing_to_the_campaign_caps() -> None:
    """Agentless returns no agent-based limit at all."""
    est, now = warmed()
    d = decide(replace(PREDICTIVE, mode=PacingMode.AGENTLESS), state(), est.estimates(now))
    assert d.new_attempts is None and d.target_lines is None and d.reason == "agentless"


def test_warm_up_dials_ahead_only_for_free_agents_at_a_cautious_hit_rate() -> None:
    """Below min_observations answers (or a too-young window) busy agents are not counted as freeing
    up, and the hit rate is shrunk toward 1 (progressive) by WARM_UP_PRIOR_ATTEMPTS answered attempts."""
    est, now = warmed(answered=20)  # 20 answers in 60 finished attempts: observed hit rate 1/3
    d = decide(PREDICTIVE, state(free=10, busy=(100.0,) * 10), est.estimates(now))
    cautious = (20 + WARM_UP_PRIOR_ATTEMPTS) / (60 + WARM_UP_PRIOR_ATTEMPTS)
    assert d.reason == "warm_up" and d.new_attempts is not None
    assert 10 < d.new_attempts <= 10 / cautious
    # Busy agents near the end of their calls change nothing; lines ringing count at the cautious rate.
    assert decide(PREDICTIVE, state(free=10, busy=(300.0,) * 10), est.estimates(now)) == d
    ringing = decide(PREDICTIVE, state(free=10, busy=(100.0,) * 10, ringing=(1.0,) * 6), est.estimates(now))
    assert ringing.new_attempts is not None and ringing.new_attempts < d.new_attempts
    assert ringing.expected_answers == pytest.approx(6 * cautious)
    # Nothing finished yet: the prior alone, i.e. one line per free agent.
    fresh = Estimator(PREDICTIVE)
    fresh.attempt_started(T0)
    assert decide(PREDICTIVE, state(free=10), fresh.estimates(T0 + 1)).new_attempts == 10
    assert decide(PREDICTIVE, state(busy=(100.0,) * 10), est.estimates(now)).new_attempts == 0
    young = Estimator(PREDICTIVE)
    now = feed(young, T0, answered=200, spacing=1.0, handle=30.0)
    assert young.estimates(now).window_span_seconds < PREDICTIVE.warm_up_seconds
    assert decide(PREDICTIVE, state(free=3, busy=(20.0,) * 7), young.estimates(now)).reason == "warm_up"


def test_predictive_dials_ahead_for_agents_about_to_be_free() -> None:
    """With agents near the end of their calls, predictive dials more lines than free agents."""
    est, now = warmed(unanswered_per_answer=3)
    s = state(free=2, busy=(115.0,) * 18)
    d = decide(PREDICTIVE, s, est.estimates(now))
    assert d.reason == "predictive"
    assert d.new_attempts is not None and d.new_attempts > 2 / 0.25
    assert d.dial_ratio > 1.0 and d.expected_free_agents > 2.0


def test_predictive_counts_lines_already_ringing() -> None:
    """Lines already ringing (likely answers) reduce the new dials one for one in expectation."""
    est, now = warmed(unanswered_per_answer=3)
    e = est.estimates(now)
    quiet = decide(PREDICTIVE, state(free=5, busy=(30.0,) * 15), e)
    busy_lines = decide(PREDICTIVE, state(free=5, busy=(30.0,) * 15, ringing=(1.0,) * 12), e)
    assert quiet.new_attempts is not None and busy_lines.new_attempts is not None
    assert busy_lines.new_attempts < quiet.new_attempts
    assert busy_lines.expected_answers == pytest.approx(12 * e.answer_probability(1.0))


def test_ratio_floor_is_progressive() -> None:
    """Even when the controller wants nothing, each free agent without a line gets one."""
    est, now = warmed(unanswered_per_answer=3)
    d = decide(PREDICTIVE, state(free=4, busy=(1.0,) * 16, ringing=(20.0,) * 2), est.estimates(now))
    assert d.new_attempts is not None and d.new_attempts >= 2
    assert d.dial_ratio >= 1.0


def test_ratio_ceiling_caps_lines_per_agent() -> None:
    """A low hit rate asks for many lines; max_dial_ratio caps all calls per logged-in agent."""
    est, now = warmed(unanswered_per_answer=30)
    settings = replace(PREDICTIVE, max_dial_ratio=1.5)
    d = decide(settings, state(free=10, busy=(115.0,) * 10), est.estimates(now))
    assert d.reason == "max_ratio"
    assert d.new_attempts == 20 and d.dial_ratio == 1.5


def test_emergency_cut_on_a_recent_spike() -> None:
    """More than 8% of the last 100 live answers abandoned: straight to progressive."""
    est, now = warmed(answered=1000)
    for i in range(40):
        est.answered(now + i, 8.0)
        if i % 4 == 0:
            est.abandoned(now + i + 2)
        else:
            est.bridged(now + i, 0.0)
    e = est.estimates(now + 60)
    assert e.abandon_rate_24h < PREDICTIVE.max_abandon_rate
    assert e.abandon_rate_recent > PREDICTIVE.emergency_abandon_rate
    d = decide(PREDICTIVE, state(free=3, busy=(115.0,) * 17), e)
    assert d.reason == "emergency_cut" and d.new_attempts == 3


def test_rolling_24h_over_limit_falls_back_to_progressive() -> None:
    """Over 3% in the last 24 h falls back to progressive even when 30 days are far under."""
    est = Estimator(PREDICTIVE)
    feed(est, T0, answered=2000)
    now = feed(est, T0 + 10 * DAY, answered=100, abandoned=5)
    e = est.estimates(now)
    assert e.abandon_rate_30d < 0.01 < 0.03 < e.abandon_rate_24h
    assert (
        decide(PREDICTIVE, state(free=3, busy=(115.0,) * 17), e).reason == "over_target_fallback_progressive"
    )


def test_rolling_30d_over_limit_falls_back_after_the_24h_rate_recovers() -> None:
    """A clean last day does not erase a 30-day (campaign lifetime) rate over 3%."""
    est = Estimator(PREDICTIVE)
    feed(est, T0, answered=1000, abandoned=60)
    now = feed(est, T0 + 2 * DAY, answered=300)
    e = est.estimates(now)
    assert e.abandon_rate_24h == 0.0 and e.abandon_rate_30d > 0.03
    assert e.abandon_rate_lifetime == e.abandon_rate_30d
    assert (
        decide(PREDICTIVE, state(free=3, busy=(115.0,) * 17), e).reason == "over_target_fallback_progressive"
    )
    recovered = est.estimates(now + 31 * DAY)
    assert recovered.abandon_rate_30d == 0.0 and recovered.abandon_rate_lifetime > 0.03


def test_abandonment_denominator_is_live_answers() -> None:
    """Abandon rate = abandoned / live-answered: unanswered attempts do not dilute it."""
    est = Estimator(PREDICTIVE)
    now = feed(est, T0, answered=100, abandoned=3, unanswered_per_answer=9)
    e = est.estimates(now)
    assert e.abandon_rate_24h == pytest.approx(0.03)
    assert e.attempts_in_window == 1000


def test_decisions_are_deterministic() -> None:
    """The same inputs give the same decision, and pace() equals decide() on a fresh snapshot
    (which counts the busy agents' calls as handle times still in progress)."""
    est, now = warmed(unanswered_per_answer=3)
    s = state(free=2, busy=(10.0, 50.0, 100.0, 130.0) * 4, ringing=(1.0, 5.0, 12.0))
    first = decide(PREDICTIVE, s, est.estimates(now, s.busy_elapsed_seconds))
    restored = Estimator.from_dict(json.loads(json.dumps(est.to_dict())), PREDICTIVE)
    assert decide(PREDICTIVE, s, restored.estimates(now, s.busy_elapsed_seconds)) == first
    assert pace(PREDICTIVE, s, est, now) == first


_SNAPSHOTS: dict[int, tuple[Estimates, Estimates]] = {}


def _snapshots(unanswered: int) -> tuple[Estimates, Estimates]:
    if unanswered not in _SNAPSHOTS:
        est, now = warmed(unanswered_per_answer=unanswered)
        cold = Estimator(PREDICTIVE).estimates(now)
        _SNAPSHOTS[unanswered] = (est.estimates(now), cold)
    return _SNAPSHOTS[unanswered]


@settings(max_examples=300, deadline=None)
@given(
    free=st.integers(0, 60),
    busy=st.lists(st.floats(0, 4000), max_size=60),
    ringing=st.lists(st.floats(0, 400), max_size=120),
    waiting=st.integers(0, 10),
    unanswered=st.sampled_from([0, 1, 3, 9, 30]),
    ratio=st.floats(1.0, 5.0),
    warm=st.booleans(),
    mode=st.sampled_from([PacingMode.PROGRESSIVE, PacingMode.PREDICTIVE]),
)
def test_decision_bounds_hold_for_any_state(
    free: int,
    busy: list[float],
    ringing: list[float],
    waiting: int,
    unanswered: int,
    ratio: float,
    warm: bool,
    mode: PacingMode,
) -> None:
    """Never negative, never below progressive, never past max_dial_ratio x agents, zero without agents."""
    snapshot = _snapshots(unanswered)[0 if warm else 1]
    settings = replace(PREDICTIVE, max_dial_ratio=ratio, mode=mode)
    s = AgentState(free, tuple(busy), tuple(ringing), waiting)
    d: Decision = decide(settings, s, snapshot)
    agents = s.agents_logged_in
    assert d.new_attempts is not None and d.new_attempts >= 0
    assert d.new_attempts >= max(0, free - len(ringing) - waiting)
    # The controller forgives float noise (0.3 * 10 = 2.9999…) with the same 1e-9.
    assert d.new_attempts <= ratio * agents + 1e-9
    outstanding = len(busy) + len(ringing) + waiting
    if outstanding + d.new_attempts > agents:
        assert outstanding + d.new_attempts <= max(ratio * agents + 1e-9, outstanding)
    if agents == 0:
        assert d.new_attempts == 0
    assert decide(settings, s, snapshot) == d


def test_late_events_are_accepted_and_stale_ones_ignored() -> None:
    """Events a little out of order still count; one from before the window changes nothing."""
    est, now = warmed(answered=100)
    before = est.estimates(now)
    est.answered(now - 30.0, 8.0)
    assert est.estimates(now).answered_in_window == before.answered_in_window + 1
    est.not_answered(now - 3 * 3600, 25.0)
    assert est.estimates(now).not_answered_in_window == before.not_answered_in_window
    assert len(est.to_dict()["buckets"]) <= PREDICTIVE.window_seconds // 300 + 1


def test_correction_boost_needs_rolling_24h_evidence() -> None:
    """Few drops in few answers may not raise the per-line risk much: the correction's upper bound
    grows with the 24 h answers until they would have held CORRECTION_CREDIBLE_DROPS drops at the aim."""
    s = state(free=2, busy=(115.0,) * 18)
    young, now = warmed(answered=60)
    d = decide(PREDICTIVE, s, young.estimates(now))
    assert d.reason == "predictive"
    ceiling = PREDICTIVE.max_correction ** (60 * PREDICTIVE.abandon_aim / CORRECTION_CREDIBLE_DROPS)
    assert 1.0 < d.correction == pytest.approx(ceiling)
    old, now = warmed(answered=2000)
    assert decide(PREDICTIVE, s, old.estimates(now)).correction == pytest.approx(PREDICTIVE.max_correction)


def test_calls_in_progress_correct_the_handle_time_for_censoring() -> None:
    """Early on only short calls have ended; agents still on long calls say the handle time is longer."""
    est = Estimator(PREDICTIVE)
    now = feed(est, T0, answered=60, handle=60.0, spacing=5.0)
    plain = est.estimates(now)
    assert est.estimates(now, ()) == plain
    censored = est.estimates(now, [400.0] * 20)
    assert censored.mean_handle_seconds > plain.mean_handle_seconds + 50
    assert censored.free_probability(50.0) < plain.free_probability(50.0)
    # pace() passes the busy agents' elapsed times.
    s = state(free=1, busy=(400.0,) * 20)
    assert pace(PREDICTIVE, s, est, now) == decide(PREDICTIVE, s, est.estimates(now, s.busy_elapsed_seconds))


def test_mean_wrap_up_is_learned_and_an_older_state_reads_as_unknown() -> None:
    """Handled calls teach the wrap-up length; a saved state without it loads as no wrap-up known."""
    est, now = warmed()
    assert est.estimates(now).mean_wrap_up_seconds == pytest.approx(10.0)
    data = json.loads(json.dumps(est.to_dict()))
    assert Estimator.from_dict(data, PREDICTIVE).estimates(now) == est.estimates(now)
    for bucket in data["buckets"].values():
        del bucket["wrapped"], bucket["wrap_total"]
    assert Estimator.from_dict(data, PREDICTIVE).estimates(now).mean_wrap_up_seconds == 0.0


def test_an_agent_still_talking_is_not_free_before_its_wrap_up_is_done() -> None:
    """With 10 s of wrap-up and answers after 8-9 s (+ 2 s grace), a talking agent is barely in time."""
    est, now = warmed()  # handle 120 s = 110 s talk + 10 s wrap-up; answers after 8-9 s (one bin)
    e = est.estimates(now)
    # Time since bridge alone: 112 s in, the agent might be well into its wrap-up already.
    talking = e.talking_free_probabilities(112.0)
    assert e.free_probability(112.0) > 0.1 > 4 * sum(talking) / len(talking)
    assert talking[0] < 0.005  # answered after 8.06 s: 0.06 s for the talk to end, 1 s bins
    on_calls = AgentState(agents_free=0, busy_elapsed_seconds=(112.0,) * 20, wrap_up_remaining_seconds=())
    assert decide(PREDICTIVE, on_calls, e).new_attempts == 0


def test_agents_in_wrap_up_are_counted_free_at_their_known_release() -> None:
    """An agent released within the answer delay + grace is counted on; one released later is not."""
    est, now = warmed()
    e = est.estimates(now)
    soon = AgentState(agents_free=0, busy_elapsed_seconds=(30.0,) * 17, wrap_up_remaining_seconds=(1.0,) * 3)
    late = AgentState(agents_free=0, busy_elapsed_seconds=(30.0,) * 17, wrap_up_remaining_seconds=(15.0,) * 3)
    d_soon, d_late = decide(PREDICTIVE, soon, e), decide(PREDICTIVE, late, e)
    assert soon.agents_logged_in == 20 and soon.agents_busy == 20
    assert d_soon.reason == "predictive" and d_soon.expected_free_agents == pytest.approx(3.0, abs=0.01)
    assert d_soon.new_attempts is not None and d_soon.new_attempts >= 3
    assert d_late.new_attempts == 0 and d_late.expected_free_agents < 0.01
    # Time since bridge alone (122 s into calls that end at 120 s) bets on the agents released in 15 s.
    blind = decide(PREDICTIVE, state(busy=(30.0,) * 17 + (122.0,) * 3), e)
    assert blind.new_attempts is not None and blind.new_attempts > 0


def test_the_frontier_benchmark_runs_the_rule_without_loop_or_rails() -> None:
    """bench/pacing_frontier.py's fixed-risk settings: 10% abandoned over the 24 h fires no rail and
    leaves the correction at exactly 1, so every line is dialled at the risk asked for; the same
    history under the defaults falls back to progressive."""
    from bench.pacing_frontier import open_loop

    fixed = open_loop(0.06)
    assert fixed.max_abandon_rate * fixed.base_risk_factor == pytest.approx(0.06)
    agents = state(free=3, busy=(115.0,) * 17)
    decisions = {}
    for name, chosen in (("fixed", fixed), ("default", PREDICTIVE)):
        est = Estimator(chosen)
        now = feed(est, T0, answered=200, abandoned=20)
        e = est.estimates(now)
        assert e.abandon_rate_24h == pytest.approx(0.10)
        decisions[name] = decide(chosen, agents, e)
    assert decisions["fixed"].reason == "predictive"
    assert decisions["fixed"].correction == 1.0
    assert decisions["default"].reason == "over_target_fallback_progressive"
