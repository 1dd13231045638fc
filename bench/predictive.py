"""Predictive vs progressive pacing in the simulated contact center, side by side on the same seeds.

    python bench/predictive.py [--hours 4] [--seeds 1,2,3] [--agents 5,20,100] [--answer-rates 0.15,0.3,0.6]

Pure CPU (no database, no network): scheduler.callcenter drives the real scheduler.pacing
controller. Prints a markdown table and writes it, with the method and the pacing notes
(scheduler/PACING.md), to bench/results/predictive.md, and a plot to bench/results/predictive.png
(needs matplotlib: pip install matplotlib).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scheduler.callcenter import CallCenterConfig, SimResult, simulate
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


def table(pairs: list[tuple[Cell, Cell]]) -> str:
    lines = [
        "| agents | answer rate | mode | occupancy | abandonment (pooled / worst seed) | peak running abandonment | calls / agent-hour | mean wait s | predictive ÷ progressive occupancy | target met |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for prog, pred in pairs:
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
                f"{f'{ratio:.2f}×' if cell is pred else ''} | {met} |"
            )
    return "\n".join(lines)


def plot(pairs: list[tuple[Cell, Cell]], path: Path, hours: float, seeds: int) -> None:
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
            top.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
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
        top.axhline(TARGET_OCCUPANCY * 100, color="green", linestyle="--", linewidth=1, label="85% target")
        bottom.axhline(TARGET_ABANDON * 100, color="red", linestyle="--", linewidth=1, label="3% limit")
        top.set_title(f"{n} agents")
        top.set_ylim(0, 105)
        bottom.set_ylim(0, 4)
        for ax in (top, bottom):
            ax.set_xticks(xs, labels)
            ax.set_xlabel("answer rate")
        if col == 0:
            top.set_ylabel("agent occupancy, % (talk + wrap-up)")
            bottom.set_ylabel("abandonment, % of live answers\n(bar: pooled, whisker: worst seed)")
            top.legend(loc="upper left", fontsize=8)
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
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    agents = [int(a) for a in args.agents.split(",")]
    rates = [float(r) for r in args.answer_rates.split(",")]
    started = time.process_time()
    pairs = run(agents, rates, seeds, args.hours)
    cpu = time.process_time() - started
    body = table(pairs)
    print(body)
    if args.no_write:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    config = CallCenterConfig()
    settings = PacingSettings()
    notes = (ROOT / "scheduler" / "PACING.md").read_text()
    report = f"""{notes}
## Results

Produced by `python bench/predictive.py` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC (Python
{platform.python_version()}, {cpu:.0f} s of CPU for the whole table). Plot: `bench/results/predictive.png`.

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

Where the 1.3× target cannot hold: progressive loses, per connected call, the ringing of every
unanswered attempt before it. At a 60% answer rate that is only ~20 s against a 130 s handle time, so
progressive already keeps agents ~85% busy and no pacing can reach 1.3× of it (that would be >100%).
At 30% progressive reaches ~70%, and 1.3× would need ~91%. With 5 agents, every over-dialled call
that finds nobody free is a large share of few answers, so predictive must stay close to progressive.

Early in a run the cumulative (rolling-24 h) rate can briefly pass 3% (peak column, up to ~3.4%): with
a few hundred answers one or two drops move it by a point. The 24 h / 30 d fallback then holds
progressive until it is back under the limit; every run ends under 3%.
"""
    (RESULTS / "predictive.md").write_text(report)
    plot(pairs, RESULTS / "predictive.png", args.hours, len(seeds))
    print(f"wrote {RESULTS / 'predictive.md'} and {RESULTS / 'predictive.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
