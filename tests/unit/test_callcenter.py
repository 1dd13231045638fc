from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from scheduler.callcenter import CallCenterConfig, SimResult, simulate
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
    started = time.process_time()
    prog = run(HOUR_20_AGENTS, PROGRESSIVE)
    pred = run(HOUR_20_AGENTS, PREDICTIVE)
    assert time.process_time() - started < 2.0
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
