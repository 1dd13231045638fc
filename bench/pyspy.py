"""Where a process's CPU goes, from py-spy's collapsed stacks (`py-spy record --format raw`).

    python -m bench.pyspy STACKS.txt [--top 25] [--match dialer/]

Prints self time (the sampled leaf frame) and inclusive time (any frame on the stack) per function,
as shares of all non-idle samples.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path

from bench.common import Child, Context

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _name(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m.group("file")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{m.group('func')} ({file})"


def summarize(path: Path, top: int = 25, match: str = "") -> str:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_name(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if frames:
            self_time[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    if not total:
        return f"{path}: no samples"
    out = [f"{path.name}: {total} samples", "", "self %  function (file)"]
    out += [f"{100 * n / total:5.1f}  {f}" for f, n in self_time.most_common(top)]
    out += ["", "incl %  function (file)" + (f"  [only {match!r}]" if match else "")]
    shown = [(f, n) for f, n in inclusive.most_common() if match in f][:top]
    out += [f"{100 * n / total:5.1f}  {f}" for f, n in shown]
    return "\n".join(out)


class Profiler:
    """py-spy on some child processes while a scenario runs; the summaries go to the run's details."""

    def __init__(self, ctx: Context, targets: dict[str, int]) -> None:
        self.ctx = ctx
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.spies: dict[str, tuple[Child, Path]] = {}
        for name, pid in targets.items():
            out = ctx.logs / f"py-spy-{name}.txt"
            args = [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "100",
                "--format",
                "raw",
                *(["--native"] if os.environ.get("BENCH_PYSPY_NATIVE") else ["--nonblocking"]),
                "--output",
                str(out),
            ]
            self.spies[name] = (Child(f"py-spy-{name}", args, ctx.logs), out)

    def stop(self) -> None:
        for child, _ in self.spies.values():
            child.proc.send_signal(signal.SIGINT)
        for name, (child, out) in self.spies.items():
            with contextlib.suppress(Exception):
                child.proc.wait(30)
            child.stop()
            if not out.exists():
                self.ctx.note(f"py-spy {name}: no output ({child.tail(3)})")
                continue
            text = summarize(out, top=40)
            (out.parent / f"{out.stem}.summary.txt").write_text(text + "\n")
            head = [ln.strip() for ln in text.splitlines()[3:11]]
            self.ctx.note(
                f"py-spy {name} (full summary {out.parent / (out.stem + '.summary.txt')}), top self time: "
                + "; ".join(head)
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stacks", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--match", default="")
    args = p.parse_args()
    print(summarize(args.stacks, args.top, args.match))


if __name__ == "__main__":
    main()
