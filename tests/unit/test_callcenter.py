from __future__ import annotations

import datetime as dt
import math
import statistics
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from dialer.pacer import agent_state, pacing_settings
from dialer.simulator import SimulatorConfig, SimulatorState
from scheduler.callcenter import (
    FAST_FAIL_SECONDS,
    CallCenterConfig,
    SimResult,
    provider_model,
    simulate,
    simulate_oracle,
)
from scheduler.pacing import PacingMode, PacingSettings

PREDICTIVE = PacingSettings()
PROGRESSIVE = replace(PREDICTIVE, mode=PacingMode.PROGRESSIVE)
HOUR_20_AGENTS = CallCenterConfig(agents=20, answer_rate=0.30, hours=1.0, seed=7)

_RUNS: dict[tuple[CallCenterConfig, PacingSettings], SimResult] = {}


def run(config: CallCenterConfig, settings: PacingSettings) -> SimResult:
    key = (config, settings)
    if key not in _RUNS:
        _RUNS[key] = simulate(config, settings)
    return _RUNS[key]


def test_predictive_beats_progressive_within_the_abandon_limit() -> None:
    """20 agents, 30% answers, one hour: predictive keeps agents busier and abandons at most 3%."""
    prog = run(HOUR_20_AGENTS, PROGRESSIVE)
    pred = run(HOUR_20_AGENTS, PREDICTIVE)
    assert pred.occupancy > prog.occupancy * 1.1
    assert pred.calls_per_agent_hour > prog.calls_per_agent_hour
    assert 0 < pred.abandon_rate <= 0.03
    assert pred.reasons.get("warm_up", 0) > 0 and pred.reasons.get("predictive", 0) > 0


def test_progressive_never_abandons() -> None:
    """One line per free agent: every live answer finds its agent."""
    prog = run(HOUR_20_AGENTS, PROGRESSIVE)
    assert prog.abandoned == 0 and prog.answered == prog.bridged
    assert set(prog.reasons) == {"progressive"}


def test_same_seed_same_run() -> None:
    """The simulator is deterministic for a seed, and another seed gives another run."""
    config = replace(HOUR_20_AGENTS, hours=0.25)
    assert simulate(config, PREDICTIVE) == simulate(config, PREDICTIVE)
    assert simulate(replace(config, seed=8), PREDICTIVE) != simulate(config, PREDICTIVE)


def test_report_is_consistent() -> None:
    """Occupancy is a share of logged-in time; calls per agent-hour count bridged calls."""
    pred = run(HOUR_20_AGENTS, PREDICTIVE)
    assert 0.0 < pred.occupancy <= 1.0
    assert pred.bridged + pred.abandoned <= pred.answered <= pred.dials
    assert pred.calls_per_agent_hour == pytest.approx(pred.bridged / 20)
    assert pred.peak_abandon_rate <= 0.05


def test_no_agents_no_dials() -> None:
    """With nobody logged in, the controller never lets the simulator dial."""
    result = simulate(replace(HOUR_20_AGENTS, agents=0, hours=0.1), PREDICTIVE)
    assert result.dials == 0 and result.occupancy == 0.0 and set(result.reasons) == {"no_agents"}


def test_agentless_mode_is_not_simulated_as_agent_pacing() -> None:
    """Agentless returns no limit, which the simulator treats as no agent-paced dials."""
    result = simulate(replace(HOUR_20_AGENTS, hours=0.05), replace(PREDICTIVE, mode=PacingMode.AGENTLESS))
    assert result.dials == 0 and set(result.reasons) == {"agentless"}


@pytest.mark.parametrize(
    "change",
    [
        {"agents": -1},
        {"answer_rate": 0.0},
        {"answer_rate": 1.5},
        {"hours": 0.0},
        {"ring_timeout_seconds": 5.0},
    ],
)
def test_impossible_config_raises(change: dict[str, Any]) -> None:
    """A simulation that cannot mean anything is refused with ValueError."""
    with pytest.raises(ValueError, match="must"):
        replace(HOUR_20_AGENTS, **change)


def test_provider_model_is_the_same_contact_center() -> None:
    """provider_model gives the provider simulator the model's calls, time-compressed, and the
    campaign its agents, ring timeout and (real-time) wrap-up: the simulator's calls, drawn from the
    translated config, show the model's answer rate, fast-fail share, ring and talk times."""
    model = replace(HOUR_20_AGENTS, answer_rate=0.4, fast_fail_share=0.3, wrap_up_seconds=12.0)
    translated = provider_model(model, 0.05)
    assert (translated.agents_logged_in, translated.ring_timeout_seconds) == (20, 25)
    assert translated.pacing_settings == {"wrap_up_seconds": pytest.approx(0.6)}
    pacing_settings("predictive", translated.pacing_settings)  # a valid campaign override
    config = SimulatorConfig.from_dict(translated.simulator)  # every key is one the simulator knows
    assert (config.time_scale, config.seed, config.intermediate_events) == (0.05, model.seed, True)

    state = SimulatorState(config)
    calls = [state._choose_outcome(f"+1555000{i:04d}") for i in range(20_000)]
    outcomes = [o for o, _, _ in calls]
    assert set(outcomes) == {"answered", "busy", "no-answer"}
    assert outcomes.count("answered") / len(calls) == pytest.approx(0.4, abs=0.015)
    assert outcomes.count("busy") / (len(calls) - outcomes.count("answered")) == pytest.approx(0.3, abs=0.015)
    rings = [ring for o, ring, _ in calls if o == "answered"]
    assert statistics.median(rings) == pytest.approx(model.answer_median_seconds, rel=0.05)
    assert statistics.stdev(math.log(r) for r in rings) == pytest.approx(model.answer_sigma, rel=0.05)
    assert all(FAST_FAIL_SECONDS[0] <= ring <= FAST_FAIL_SECONDS[1] for o, ring, _ in calls if o == "busy")
    talks = [talk for _, _, talk in calls]
    assert statistics.fmean(talks) == pytest.approx(model.talk_mean_seconds, rel=0.05)
    assert statistics.stdev(math.log(t) for t in talks) == pytest.approx(model.talk_sigma, rel=0.05)


@pytest.mark.parametrize(
    ("change", "time_scale"),
    [({"ring_timeout_seconds": 20.5}, 0.1), ({}, 0.0), ({}, 1.5)],
)
def test_provider_model_refuses_what_a_campaign_cannot_run(change: dict[str, Any], time_scale: float) -> None:
    """A fractional ring timeout (campaigns take whole seconds) or a time scale outside (0, 1] is refused."""
    with pytest.raises(ValueError, match="must"):
        provider_model(replace(HOUR_20_AGENTS, **change), time_scale)


def test_oracle_bounds_the_real_controller() -> None:
    """The clairvoyant benchmark pacing (it knows which lines answer and when) keeps agents busier
    than the real controller at no more abandonment, is deterministic, and trades risk for drops."""
    pred = run(HOUR_20_AGENTS, PREDICTIVE)
    careful = simulate_oracle(HOUR_20_AGENTS, PREDICTIVE, risk=0.05)
    bold = simulate_oracle(HOUR_20_AGENTS, PREDICTIVE, risk=0.3)
    assert careful == simulate_oracle(HOUR_20_AGENTS, PREDICTIVE, risk=0.05)
    assert careful.mode == "oracle" and careful.bridged + careful.abandoned <= careful.answered
    assert careful.occupancy > pred.occupancy and careful.abandon_rate <= pred.abandon_rate
    assert bold.abandon_rate > careful.abandon_rate and bold.occupancy >= careful.occupancy
    with pytest.raises(ValueError, match="risk"):
        simulate_oracle(HOUR_20_AGENTS, PREDICTIVE, risk=0.0)


def test_worker_agent_state_tells_wrap_up_from_talk() -> None:
    """A busy agent whose call ended is reported in wrap-up until agent_released_at; the rest talk."""
    now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    ago = [now - dt.timedelta(seconds=s) for s in (100, 60, 30)]
    rows = [{"state": "ringing", "claimed_at": ago[2], "bridged_at": None, "abandoned_at": None}]
    busy = [(ago[0], now + dt.timedelta(seconds=4)), (ago[2], None)]
    state = agent_state(rows, busy, 5, now)
    assert state.wrap_up_remaining_seconds == (4.0,)
    assert state.busy_elapsed_seconds == (30.0,)
    assert state.ringing_elapsed_seconds == (30.0,)
    assert state.agents_free == 3 and state.agents_logged_in == 5


def test_wrap_up_state_raises_occupancy_at_the_same_abandonment() -> None:
    """Told which agents are in wrap-up, the controller keeps agents busier within the 3% limit."""
    told = run(HOUR_20_AGENTS, PREDICTIVE)
    blind = run(replace(HOUR_20_AGENTS, report_wrap_up=False), PREDICTIVE)
    assert told.occupancy > blind.occupancy + 0.01
    assert told.abandon_rate <= 0.03


def test_revealed_releases_are_every_busy_agents_true_release(monkeypatch: pytest.MonkeyPatch) -> None:
    """reveal_releases (benchmark only) reports every busy agent, talking ones too, as a known
    release, and each is released when it said: the controller is told the future exactly."""
    import scheduler.callcenter as callcenter
    from scheduler.pacing import decide

    seen: list[tuple[float, Any]] = []
    clock = iter(range(10**9))

    def spy(settings: PacingSettings, state: Any, est: Any) -> Any:
        seen.append((float(next(clock)), state))
        return decide(settings, state, est)

    monkeypatch.setattr(callcenter, "decide", spy)
    config = replace(HOUR_20_AGENTS, hours=0.25, reveal_releases=True)
    simulate(config, PREDICTIVE)
    busy_ticks = [(t, s) for t, s in seen if s.agents_busy]
    assert busy_ticks and all(not s.busy_elapsed_seconds for _, s in busy_ticks)
    # Talking agents are revealed too: releases further off than the 10 s wrap-up.
    assert any(r > config.wrap_up_seconds for _, s in busy_ticks for r in s.wrap_up_remaining_seconds)
    # Each release is a fixed instant (tick + remaining): the same a second later unless it is due,
    # and gone once due (the agent was freed). Rounded, since the remaining times are float sums.
    by_tick = dict(seen)
    checked = 0
    for t, s in busy_ticks:
        nxt = by_tick.get(t + 1)
        if nxt is None:
            continue
        now = Counter(round(t + r, 6) for r in s.wrap_up_remaining_seconds)
        later = Counter(round(t + 1 + r, 6) for r in nxt.wrap_up_remaining_seconds)
        assert not +(Counter({k: n for k, n in now.items() if k > t + 1}) - later)
        assert all(k > t + 1 for k in later)
        checked += 1
    assert checked > 100
    blind = simulate(replace(config, reveal_releases=False), PREDICTIVE)
    assert simulate(config, PREDICTIVE) != blind
