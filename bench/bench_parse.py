"""Throughput of dialer.ingest.parse_file on a synthetic upload.

    python bench/bench_parse.py --rows 1000000 [--format csv|gz|zip] [--region IL] [--keep PATH]

The product target is 50,000 validated numbers/s end to end on two cores, with COPY
alone at ~155k rows/s; parsing must therefore stay well above 100k rows/s in one process.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import random
import resource
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dialer.ingest import BadRow, parse_file

# Each generator yields numbers phonenumbers accepts as valid, so the benchmark times the
# accepting path that real uploads mostly take; the 1% of junk rows exercises the slow path.
_NANP_AREAS = ("212", "415", "646", "312", "617", "202", "305", "713", "818", "917")


def _us(rnd: random.Random) -> str:
    exchange = rnd.randrange(200, 1000)
    # N11 exchanges (211, 311, ... 911) are service codes, not assignable numbers.
    if exchange % 100 == 11:
        exchange += 1
    return f"+1{rnd.choice(_NANP_AREAS)}{exchange}{rnd.randrange(10_000):04d}"


def _uk(rnd: random.Random) -> str:
    # Ofcom has allocated all of 07400 and 079111, not all of 07911; mobiles have 10 digits.
    block = rnd.choice(("7400", "79111"))
    rest = 10 - len(block)
    return f"+44{block}{rnd.randrange(10**rest):0{rest}d}"


def _il(rnd: random.Random) -> str:
    # Bare international digits: the seed allows E.164 without the '+'.
    return f"97254{rnd.randrange(4, 10)}{rnd.randrange(1_000_000):06d}"


def _de(rnd: random.Random) -> str:
    return f"+49151{rnd.randrange(10_000_000, 100_000_000)}"


def _fr(rnd: random.Random) -> str:
    return f"+336{rnd.choice('127')}{rnd.randrange(10_000_000):07d}"


def _au(rnd: random.Random) -> str:
    return f"+614{rnd.choice('01')}{rnd.randrange(10_000_000):07d}"


_COUNTRIES: tuple[Callable[[random.Random], str], ...] = (_us, _uk, _il, _de, _fr, _au)
_CLIS = ("+14155550100", "+442071838750", "+97237654321")


def _lines(rows: int, seed: int) -> Iterator[str]:
    rnd = random.Random(seed)
    yield "number,cli,dtmf\r\n"
    for i in range(rows):
        number = rnd.choice(_COUNTRIES)(rnd)
        if i % 100 == 99:
            number = "+1555"
        shape = i % 4
        if shape == 0:
            yield f"{number}\r\n"
        elif shape == 1:
            yield f"{number},{rnd.choice(_CLIS)}\r\n"
        elif shape == 2:
            yield f"{number},,1#2\r\n"
        else:
            yield f"{number},{rnd.choice(_CLIS)},w1#113\r\n"


def write_upload(path: Path, rows: int, fmt: str, seed: int = 1) -> None:
    """Write ``rows`` CRLF lines in the seed's number[,cli[,dtmf]] shape, plus a header.

    Streamed, so that peak RSS measures the parser rather than the generator.
    """
    with contextlib.ExitStack() as stack:
        write: Callable[[bytes], object]
        if fmt == "gz":
            write = stack.enter_context(gzip.open(path, "wb", compresslevel=6)).write
        elif fmt == "zip":
            archive = stack.enter_context(zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED))
            write = stack.enter_context(archive.open("numbers.csv", "w", force_zip64=True)).write
        else:
            write = stack.enter_context(path.open("wb")).write
        batch: list[str] = []
        for line in _lines(rows, seed):
            batch.append(line)
            if len(batch) == 10_000:
                write("".join(batch).encode())
                batch.clear()
        write("".join(batch).encode())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--format", choices=("csv", "gz", "zip"), default="csv")
    parser.add_argument("--region", help="default_region, which sends bare numbers to phonenumbers")
    parser.add_argument("--keep", type=Path, help="write the upload here and keep it")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / f"upload.{args.format}"
        started = time.perf_counter()
        write_upload(path, args.rows, args.format)
        print(
            f"generated {args.rows:,} rows ({path.stat().st_size / 1e6:.1f} MB) in "
            f"{time.perf_counter() - started:.1f}s"
        )

        good = bad = 0
        started = time.perf_counter()
        for row in parse_file(path, default_region=args.region):
            if isinstance(row, BadRow):
                bad += 1
            else:
                good += 1
        elapsed = time.perf_counter() - started

    # ru_maxrss is KiB on Linux and bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak / 1e6 if sys.platform == "darwin" else peak / 1024
    print(
        f"parsed {good:,} rows + {bad:,} bad rows in {elapsed:.2f}s: "
        f"{(good + bad) / elapsed:,.0f} rows/s; peak RSS {peak_mb:.0f} MB"
    )


if __name__ == "__main__":
    main()
