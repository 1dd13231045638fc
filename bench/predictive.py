"""Predictive vs progressive pacing in the simulated contact center, side by side on the same seeds.

    python bench/predictive.py [--hours 4] [--seeds 1,2,3] [--agents 5,20,100] [--answer-rates 0.15,0.3,0.6]
                               [--oracle-agents 5,20,100] [--oracle-steps 7]

Pure CPU (no database, no network): scheduler.callcenter drives the real scheduler.pacing
controller. For the rows whose agent count is in --oracle-agents (empty: none) it also bounds what any
pacing could do there: scheduler.callcenter.simulate_oracle, a clairvoyant dialer, with its risk
threshold bisected (--oracle-steps runs of all seeds per bound) to the largest whose abandonment is
within 3% in every seed, and to the largest within predictive's pooled abandonment.
Prints a markdown table and writes it, with the method and the pacing notes
(scheduler/PACING.md), to bench/results/predictive.md, and a plot to bench/results/predictive.png
(needs matplotlib: pip install matplotlib).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import math

from scheduler.callcenter import CallCenterConfig, SimResult, simulate, simulate_oracle
from scheduler.pacing import PacingMode, PacingSettings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# The target, for 20 agents and more.
TARGET_AGENTS = 20
TARGET_OCCUPANCY = 0.85
TARGET_ABANDON = 0.03
TARGET_RATIO = 1.3


@dataclass(frozen=True)
class Cell:
    agents: int
    answer_rate: float
    mode: str
    runs: tuple[SimResult, ...]

    @property
    def occupancy(self) -> float:
        return sum(r.occupancy for r in self.runs) / len(self.runs)

    @property
    def abandon(self) -> float:
        answered = sum(r.answered for r in self.runs)
        return sum(r.abandoned for r in self.runs) / answered if answered else 0.0

    @property
    def worst_abandon(self) -> float:
        return max(r.abandon_rate for r in self.runs)

    @property
    def worst_peak(self) -> float:
        return max(r.peak_abandon_rate for r in self.runs)

    @property
    def calls_per_agent_hour(self) -> float:
        return sum(r.calls_per_agent_hour for r in self.runs) / len(self.runs)

    @property
    def wait(self) -> float:
        return sum(r.mean_wait_seconds for r in self.runs) / len(self.runs)


# The oracle's per-call risk threshold is searched between these (log scale).
ORACLE_RISK_RANGE = (0.005, 0.5)


@dataclass(frozen=True)
class Bound:
    """The oracle at two risk thresholds: the largest found within the 3% limit in every seed, and
    the largest found within the predictive controller's pooled abandonment on the same seeds."""

    at_limit: Cell
    at_limit_risk: float
    at_predictive: Cell
    at_predictive_risk: float
    runs: int
    cpu: float


def oracle_bound(
    agents: int, rate: float, seeds: list[int], hours: float, predictive_abandon: float, steps: int
) -> Bound:
    started = time.process_time()
    settings = PacingSettings()
    cache: dict[float, Cell] = {}

    def cell(risk: float) -> Cell:
        if risk not in cache:
            runs = tuple(
                simulate_oracle(
                    CallCenterConfig(agents=agents, answer_rate=rate, hours=hours, seed=s), settings, risk
                )
                for s in seeds
            )
            cache[risk] = Cell(agents, rate, "oracle", runs)
        return cache[risk]

    def largest(ok: Callable[[Cell], bool]) -> float:
        # Bisection on log(risk): abandonment grows with the risk the oracle accepts.
        lo, hi = (math.log(r) for r in ORACLE_RISK_RANGE)
        best = ORACLE_RISK_RANGE[0]
        for _ in range(steps):
            mid = math.exp((lo + hi) / 2)
            if ok(cell(mid)):
                lo, best = math.log(mid), mid
            else:
                hi = math.log(mid)
        return best

    at_limit = largest(lambda c: c.worst_abandon <= TARGET_ABANDON)
    at_pred = largest(lambda c: c.abandon <= predictive_abandon)
    return Bound(
        cell(at_limit),
        at_limit,
        cell(at_pred),
        at_pred,
        len(cache) * len(seeds),
        time.process_time() - started,
    )


def run(agents: list[int], rates: list[float], seeds: list[int], hours: float) -> list[tuple[Cell, Cell]]:
    pairs = []
    for n in agents:
        for p in rates:
            cells = []
            for mode in (PacingMode.PROGRESSIVE, PacingMode.PREDICTIVE):
                settings = PacingSettings(mode=mode)
                started = time.process_time()
                runs = tuple(
                    simulate(CallCenterConfig(agents=n, answer_rate=p, hours=hours, seed=s), settings)
                    for s in seeds
                )
                cpu = time.process_time() - started
                print(f"{n:>4} agents, {p:.0%}, {mode.value}: {cpu:.1f} s CPU", file=sys.stderr)
                cells.append(Cell(n, p, mode.value, runs))
            pairs.append((cells[0], cells[1]))
    return pairs


def without_wrap_up(pairs: list[tuple[Cell, Cell]], seeds: list[int], hours: float) -> str:
    """Predictive at TARGET_AGENTS with and without the wrap-up state (report_wrap_up=False)."""
    lines = [
        "| agents | answer rate | predictive, wrap-up state reported | predictive, time since bridge only |",
        "|---:|---:|---:|---:|",
    ]
    settings = PacingSettings()
    for _, pred in pairs:
        if pred.agents != TARGET_AGENTS:
            continue
        runs = tuple(
            simulate(
                CallCenterConfig(
                    agents=pred.agents,
                    answer_rate=pred.answer_rate,
                    hours=hours,
                    seed=s,
                    report_wrap_up=False,
                ),
                settings,
            )
            for s in seeds
        )
        blind = Cell(pred.agents, pred.answer_rate, "predictive", runs)
        lines.append(
            f"| {pred.agents} | {pred.answer_rate:.0%} | {pred.occupancy:.1%} ({pred.abandon:.2%} / "
            f"{pred.worst_abandon:.2%}) | {blind.occupancy:.1%} ({blind.abandon:.2%} / {blind.worst_abandon:.2%}) |"
        )
    return "\n".join(lines)


def table(pairs: list[tuple[Cell, Cell]], bounds: dict[tuple[int, float], Bound]) -> str:
    lines = [
        "| agents | answer rate | mode | occupancy | abandonment (pooled / worst seed) | peak running abandonment | calls / agent-hour | mean wait s | predictive ÷ progressive occupancy | target met | oracle bound: occupancy at ≤ 3% every seed / at predictive's abandonment |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for prog, pred in pairs:
        bound = bounds.get((pred.agents, pred.answer_rate))
        ratio = pred.occupancy / prog.occupancy if prog.occupancy else 0.0
        for cell in (prog, pred):
            met = ""
            if cell is pred:
                ok = (
                    pred.occupancy >= TARGET_OCCUPANCY
                    and pred.worst_abandon <= TARGET_ABANDON
                    and ratio >= TARGET_RATIO
                )
                met = (
                    ("yes" if ok else "**no**")
                    if cell.agents >= TARGET_AGENTS
                    else ("yes" if ok else "no (not required)")
                )
            lines.append(
                f"| {cell.agents} | {cell.answer_rate:.0%} | {cell.mode} | {cell.occupancy:.1%} | "
                f"{cell.abandon:.2%} / {cell.worst_abandon:.2%} | {cell.worst_peak:.2%} | "
                f"{cell.calls_per_agent_hour:.1f} | {cell.wait:.2f} | "
                f"{f'{ratio:.2f}×' if cell is pred else ''} | {met} | "
                f"{f'{bound.at_limit.occupancy:.1%} / {bound.at_predictive.occupancy:.1%}' if bound and cell is pred else ''} |"
            )
    return "\n".join(lines)


def verdicts(pairs: list[tuple[Cell, Cell]], bounds: dict[tuple[int, float], Bound]) -> str:
    """One line per row the target covers: met, impossible, or missed (and by how much)."""
    out = []
    for prog, pred in pairs:
        if pred.agents < TARGET_AGENTS:
            continue
        need = max(TARGET_OCCUPANCY, TARGET_RATIO * prog.occupancy)
        b = bounds.get((pred.agents, pred.answer_rate))
        head = f"- {pred.agents} agents, {pred.answer_rate:.0%}: "
        oracle = (
            f"; the oracle reaches {b.at_limit.occupancy:.1%} within 3% ({b.at_predictive.occupancy:.1%} "
            f"at predictive's {pred.abandon:.2%})"
            if b
            else ""
        )
        if pred.occupancy >= need and pred.worst_abandon <= TARGET_ABANDON:
            out.append(f"{head}**met** ({pred.occupancy:.1%}, {pred.worst_abandon:.2%} worst seed){oracle}.")
        elif need > 1.0:
            out.append(
                f"{head}**infeasible**: {TARGET_RATIO} × progressive's {prog.occupancy:.1%} is {need:.0%}, "
                f"more than the agents' time; predictive {pred.occupancy:.1%}, the 85% part is met{oracle}."
            )
        elif b and b.at_limit.occupancy < need:
            out.append(
                f"{head}**infeasible** even for the clairvoyant oracle ({b.at_limit.occupancy:.1%} < "
                f"{need:.1%} needed); predictive {pred.occupancy:.1%}."
            )
        else:
            out.append(
                f"{head}**missed by the controller**: needs {need:.1%}, predictive reaches "
                f"{pred.occupancy:.1%} ({pred.worst_abandon:.2%} worst seed){oracle}, so the center does "
                f"not rule it out."
            )
    return "\n".join(out)


def bound_table(pairs: list[tuple[Cell, Cell]], bounds: dict[tuple[int, float], Bound]) -> str:
    lines = [
        "| agents | answer rate | progressive | predictive (pooled / worst abandonment) | 1.3 × progressive | oracle within 3% every seed: occupancy (pooled / worst abandonment; risk) | oracle within predictive's pooled abandonment: occupancy (pooled abandonment; risk) | oracle runs, CPU s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for prog, pred in pairs:
        b = bounds.get((pred.agents, pred.answer_rate))
        if b is None:
            continue
        lines.append(
            f"| {pred.agents} | {pred.answer_rate:.0%} | {prog.occupancy:.1%} | {pred.occupancy:.1%} "
            f"({pred.abandon:.2%} / {pred.worst_abandon:.2%}) | {TARGET_RATIO * prog.occupancy:.1%} | "
            f"{b.at_limit.occupancy:.1%} ({b.at_limit.abandon:.2%} / {b.at_limit.worst_abandon:.2%}; "
            f"{b.at_limit_risk:.3f}) | {b.at_predictive.occupancy:.1%} ({b.at_predictive.abandon:.2%}; "
            f"{b.at_predictive_risk:.3f}) | {b.runs}, {b.cpu:.0f} |"
        )
    return "\n".join(lines)


def plot(
    pairs: list[tuple[Cell, Cell]],
    bounds: dict[tuple[int, float], Bound],
    path: Path,
    hours: float,
    seeds: int,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agents = sorted({prog.agents for prog, _ in pairs})
    fig, axes = plt.subplots(2, len(agents), figsize=(4.2 * len(agents), 7), sharey="row", squeeze=False)
    width = 0.38
    for col, n in enumerate(agents):
        row = [pair for pair in pairs if pair[0].agents == n]
        xs = list(range(len(row)))
        labels = [f"{prog.answer_rate:.0%}" for prog, _ in row]
        top, bottom = axes[0][col], axes[1][col]
        for offset, idx, name, color in (
            (-width / 2, 0, "progressive", "#9aa5b1"),
            (width / 2, 1, "predictive", "#1f77b4"),
        ):
            occ = [pair[idx].occupancy * 100 for pair in row]
            bars = top.bar([x + offset for x in xs], occ, width, label=name, color=color)
            top.bar_label(bars, fmt="%.1f", fontsize=7, label_type="center", color="white")
            ab = [pair[idx].abandon * 100 for pair in row]
            worst = [pair[idx].worst_abandon * 100 for pair in row]
            bars = bottom.bar([x + offset for x in xs], ab, width, label=name, color=color)
            bottom.errorbar(
                [x + offset for x in xs],
                ab,
                yerr=[[0] * len(ab), [w - a for w, a in zip(worst, ab, strict=True)]],
                fmt="none",
                ecolor="black",
                capsize=3,
                linewidth=0.8,
            )
        marks = [
            (x + width / 2, bounds[(pred.agents, pred.answer_rate)].at_limit.occupancy * 100)
            for x, (_, pred) in zip(xs, row, strict=True)
            if (pred.agents, pred.answer_rate) in bounds
        ]
        if marks:
            top.scatter(
                [m[0] for m in marks],
                [m[1] for m in marks],
                marker="_",
                s=300,
                linewidths=2,
                color="black",
                zorder=3,
                label="oracle bound (≤ 3%)",
            )
        top.axhline(TARGET_OCCUPANCY * 100, color="green", linestyle="--", linewidth=1, label="85% target")
        bottom.axhline(TARGET_ABANDON * 100, color="red", linestyle="--", linewidth=1, label="3% limit")
        top.set_title(f"{n} agents")
        top.set_ylim(0, 120)
        top.set_yticks(range(0, 101, 20))
        bottom.set_ylim(0, 4)
        for ax in (top, bottom):
            ax.set_xticks(xs, labels)
            ax.set_xlabel("answer rate")
        if col == 0:
            top.set_ylabel("agent occupancy, % (talk + wrap-up)")
            bottom.set_ylabel("abandonment, % of live answers\n(bar: pooled, whisker: worst seed)")
            top.legend(loc="upper left", fontsize=7, ncol=2)
            bottom.legend(loc="upper left", fontsize=8)
    fig.suptitle(
        f"Predictive vs progressive pacing, simulated contact center ({hours:g} h × {seeds} seeds per bar)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hours", type=float, default=4.0)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--agents", default="5,20,100")
    parser.add_argument("--answer-rates", default="0.15,0.3,0.6")
    parser.add_argument(
        "--oracle-agents",
        default="5,20,100",
        help="agent counts whose rows get the oracle bound ('' for none)",
    )
    parser.add_argument("--oracle-steps", type=int, default=7, help="bisection steps per oracle bound")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    agents = [int(a) for a in args.agents.split(",")]
    rates = [float(r) for r in args.answer_rates.split(",")]
    oracle_agents = {int(a) for a in args.oracle_agents.split(",") if a.strip()}
    started = time.process_time()
    pairs = run(agents, rates, seeds, args.hours)
    cpu = time.process_time() - started
    bounds: dict[tuple[int, float], Bound] = {}
    for _, pred in pairs:
        if pred.agents in oracle_agents:
            b = oracle_bound(
                pred.agents, pred.answer_rate, seeds, args.hours, pred.abandon, args.oracle_steps
            )
            bounds[(pred.agents, pred.answer_rate)] = b
            print(
                f"{pred.agents:>4} agents, {pred.answer_rate:.0%}, oracle: {b.at_limit.occupancy:.1%} "
                f"({b.runs} runs, {b.cpu:.1f} s CPU)",
                file=sys.stderr,
            )
    body = table(pairs, bounds)
    detail = bound_table(pairs, bounds)
    wrap_up = without_wrap_up(pairs, seeds, args.hours)
    print(body)
    print()
    print(detail)
    print()
    print(wrap_up)
    if args.no_write:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    config = CallCenterConfig()
    settings = PacingSettings()
    notes = (ROOT / "scheduler" / "PACING.md").read_text()
    report = f"""{notes}
## Results

Produced by `python bench/predictive.py` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC (Python
{platform.python_version()}, {cpu:.0f} s of CPU for the whole table, plus
{sum(b.cpu for b in bounds.values()):.0f} s for the oracle bounds). Plot: `bench/results/predictive.png`.

Each row: {len(seeds)} seeds ({args.seeds}) × {args.hours:g} simulated hours, progressive and
predictive on the same seeds. Occupancy is the seeds' mean; abandonment is pooled over the seeds
(abandoned / live answers), with the worst single seed after the slash; "peak running abandonment"
is the highest the run's cumulative rate reached after its first 100 live answers (the rolling-24 h
figure at that moment), worst seed. Target ({TARGET_AGENTS}+ agents): occupancy ≥
{TARGET_OCCUPANCY:.0%}, abandonment ≤ {TARGET_ABANDON:.0%} in every seed, and ≥ {TARGET_RATIO}× the
occupancy of progressive.

Simulated center: ring until answer lognormal (median {config.answer_median_seconds:g} s, σ
{config.answer_sigma}); unanswered calls ring to a {config.ring_timeout_seconds:g} s timeout, or
{config.fast_fail_share:.0%} of them fail fast in 1–6 s (busy, invalid); talk lognormal (mean
{config.talk_mean_seconds:g} s, σ {config.talk_sigma}) + {config.wrap_up_seconds:g} s wrap-up;
abandoned when no agent is free {settings.abandon_after_seconds:g} s after the answer; the controller
is asked every {config.tick_seconds:g} s. Controller defaults: max abandonment
{settings.max_abandon_rate:.0%} (aim {settings.abandon_aim:.1%}), max dial ratio
{settings.max_dial_ratio:g}, warm-up {settings.min_observations} answers and
{settings.warm_up_seconds} s, window {settings.window_seconds} s.

{body}

Target verdicts (occupancy ≥ {TARGET_OCCUPANCY:.0%} and ≥ {TARGET_RATIO}× progressive, every seed within
{TARGET_ABANDON:.0%}):

{verdicts(pairs, bounds)}

### The oracle bound

`simulate_oracle` (scheduler/callcenter.py, a benchmark device no dialer can implement) runs the same
center with a clairvoyant pacing: before dialling it knows whether each number will be answered by a
person and after how long it will ring, so it dials unanswered numbers freely (within the
{settings.max_dial_ratio:g} lines per agent cap) and places every live answer at an instant it
chooses. It does not know talk times: like the real controller it sees each busy agent's elapsed
talk time, or that its call has ended and when its wrap-up will, but it knows the true talk-time
distribution (no estimation, no warm-up). It dials the next
answered number only while, for that call and every answered call already ringing that would land
after it, P(fewer agents free by landing + {settings.abandon_after_seconds:g} s than answers landing by
then) stays under a risk threshold (exact Poisson binomial over the busy agents). The threshold is
bisected ({args.oracle_steps} steps, {len(seeds)} seeds per step) to the largest keeping every seed
within 3%, and to the largest keeping the pooled rate within predictive's in the same row. Since the
answer outcomes are given to it, the answer rate barely matters to it: its bound is that of the center
(talk-time uncertainty, the 2 s grace, the number of agents), not of what a real dialer can know.

{detail}

How to read it: the oracle shows what no pacing can beat; it is loose for a real dialer, which must
dial without knowing which lines will answer or when. With a 30% answer rate a free agent needs about
three lines ringing for one answer, and whether 0, 1 or 2 of them answer is luck: most idle agent time
is spent with fewer answers expected than free agents, where one more line would risk a drop if two
answer. That, not the abandonment budget, is what is left between the controller and the oracle at
20 agents (raising the aim to 80% of the limit does not raise occupancy: the loop only drops more).

### What the wrap-up state buys

An agent whose call has ended is released at a known time (call end + wrap-up; the worker reads it
from `agent_released_at`, the simulator from its call ends), and an agent still talking cannot be
free before its talk ends and its whole wrap-up has run. Told which busy agents are in wrap-up
(`AgentState.wrap_up_remaining_seconds`), the controller counts each as free or not for each
equally likely answer delay of the new line, instead of giving every busy agent a chance averaged
from the time since its bridge. Same seeds, same settings, the state withheld
(`CallCenterConfig(report_wrap_up=False)`, the controller as it was before):

{wrap_up}

Where the 1.3× target cannot hold at all: progressive loses, per connected call, the ringing of every
unanswered attempt before it. At a 60% answer rate that is only ~20 s against a 130 s handle time, so
progressive already keeps agents ~85% busy and 1.3× of it would be >100% of the agents' time.

Early in a run the cumulative (rolling-24 h) rate can pass 3% for a moment (peak column): with a
hundred or two answers one drop moves it by half a point. The 24 h / 30 d fallback then holds
progressive until it is back under the limit; every run ends under 3%.
"""
    (RESULTS / "predictive.md").write_text(report)
    plot(pairs, bounds, RESULTS / "predictive.png", args.hours, len(seeds))
    print(f"wrote {RESULTS / 'predictive.md'} and {RESULTS / 'predictive.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
