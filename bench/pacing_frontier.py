"""What the predictive rule itself can trade: occupancy against abandonment at a fixed per-line risk.

    python bench/pacing_frontier.py [--agents 20] [--answer-rate 0.3] [--hours 4] [--seeds 1-24]
                                    [--risks 0.04,0.05,0.06,0.07,0.08] [--processes 2]
                                    [--reveal-releases] [--answer-sigma 0.5]

The controller in scheduler.pacing dials a line while the chance that it is answered with no agent
free stays under a risk budget, which a feedback loop steers and safety rails cut. This runs the same
rule with the loop and the rails taken out (correction gain 0; the limit raised to 50% so no rail
fires), at each fixed risk in --risks, on the simulated contact center (scheduler.callcenter), and
reports occupancy and abandonment pooled over the seeds, with the worst run. The curve is what the rule
can reach at a given abandonment: the real controller, which needs headroom under 3% in every run,
sits on or below it. Then the controller as configured, on the same seeds, for comparison; first,
progressive on the same seeds, whose occupancy times 1.3 is the issue's target.

--reveal-releases adds the same fixed risks with every busy agent's release told to the controller
(CallCenterConfig.reveal_releases, a benchmark device: no dialer knows when a call will end), which
measures what perfect knowledge of the agents would be worth. --answer-sigma changes how spread out
the answered calls' ring times are (lognormal sigma; the center's default is 0.5), which measures
what the uncertainty of *when* a line answers costs.

Pure CPU, no database: seeds run in --processes worker processes.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.predictive import TARGET_ABANDON, TARGET_RATIO, Cell
from scheduler.callcenter import CallCenterConfig, SimResult, simulate
from scheduler.pacing import PacingMode, PacingSettings

# With the limit at 50% no rail fires (24 h, 30 days, the emergency cut, the taper), and with gain 0
# the correction stays 1: the per-line risk is max_abandon_rate x base_risk_factor throughout.
OPEN_LIMIT = 0.5
OPEN_EMERGENCY = 0.9


def open_loop(risk: float) -> PacingSettings:
    return PacingSettings(
        max_abandon_rate=OPEN_LIMIT,
        emergency_abandon_rate=OPEN_EMERGENCY,
        correction_gain=0.0,
        base_risk_factor=risk / OPEN_LIMIT,
    )


def _run(job: tuple[CallCenterConfig, PacingSettings]) -> SimResult:
    return simulate(*job)


def seeds_of(text: str) -> list[int]:
    """'1-24' or '1,2,3'."""
    if "-" in text:
        lo, hi = (int(x) for x in text.split("-", 1))
        return list(range(lo, hi + 1))
    return [int(x) for x in text.split(",")]


def row(label: str, cell: Cell) -> str:
    over = sum(r.abandon_rate > TARGET_ABANDON for r in cell.runs)
    return (
        f"| {label} | {cell.occupancy:.2%} | {cell.abandon:.2%} | {cell.worst_abandon:.2%} |"
        f" {over} of {len(cell.runs)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--answer-rate", type=float, default=0.3)
    parser.add_argument("--hours", type=float, default=4.0)
    parser.add_argument("--seeds", default="1-24")
    parser.add_argument("--risks", default="0.04,0.05,0.06,0.07,0.08")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--reveal-releases", action="store_true")
    parser.add_argument("--answer-sigma", type=float, default=CallCenterConfig.answer_sigma)
    args = parser.parse_args()
    seeds = seeds_of(args.seeds)
    risks = [float(r) for r in args.risks.split(",")]
    configs = [
        CallCenterConfig(
            agents=args.agents,
            answer_rate=args.answer_rate,
            hours=args.hours,
            seed=s,
            answer_sigma=args.answer_sigma,
        )
        for s in seeds
    ]
    variants = [(f"fixed risk {r:g}, no loop, no rails", configs, open_loop(r)) for r in risks]
    if args.reveal_releases:
        revealed = [replace(c, reveal_releases=True) for c in configs]
        variants += [(f"fixed risk {r:g}, every release revealed", revealed, open_loop(r)) for r in risks]
    variants.append(("the controller as configured (loop and rails)", configs, PacingSettings()))
    started = time.perf_counter()
    print(
        f"{args.agents} agents, {args.answer_rate:.0%} answer rate, answered ring time sigma "
        f"{args.answer_sigma:g}, {len(seeds)} seeds x {args.hours:g} h\n\n"
        "| rule | occupancy | abandonment (pooled) | worst run | runs over 3% |\n|---|---:|---:|---:|---:|"
    )
    with ProcessPoolExecutor(args.processes) as pool:
        progressive = PacingSettings(mode=PacingMode.PROGRESSIVE)
        base = Cell(
            args.agents,
            args.answer_rate,
            "progressive",
            tuple(pool.map(_run, [(c, progressive) for c in configs])),
        )
        print(row("progressive (one line per free agent)", base), flush=True)
        for label, center, settings in variants:
            runs = tuple(pool.map(_run, [(c, settings) for c in center]))
            print(row(label, Cell(args.agents, args.answer_rate, settings.mode.value, runs)), flush=True)
    print(f"\n{TARGET_RATIO:g}x progressive's occupancy: {TARGET_RATIO * base.occupancy:.2%}")
    print(f"\n{time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
