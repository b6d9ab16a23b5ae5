"""`python -m tests.chaos`: the chaos run (`make chaos`, `make soak`).

    .venv/bin/python -m tests.chaos --seeds 3 --minutes 3.5     # what `make chaos` runs
    .venv/bin/python -m tests.chaos --seed 7 --minutes 2 --keep  # one seed again, keeping its folder

The wall time is shared among the seeds; each gets what is left divided by the seeds still to run, less what
its preparation, drain and checks take. Exit 0 only when no seed found a violation. A seed's folder (logs,
databases, receipts, settings) is kept when it found violations, or with --keep.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos.report import details, table
from tests.chaos.run import run_seed

OVERHEAD_S = 20.0  # per seed: preparing the store, draining, checking
SHORTEST_DRIVE_S = 20.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos", description="Sell under faults, then check every fen."
    )
    parser.add_argument("--seed", type=int, default=1, help="the first seed (default 1)")
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds, from --seed on (default 1)")
    parser.add_argument("--minutes", type=float, default=3.5, help="wall time for the whole run (default 3.5)")
    parser.add_argument("--folder", type=Path, help="where the seeds' folders go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep every seed's folder, not only those with violations")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.minutes <= 0:
        parser.error("--seeds must be at least 1 and --minutes more than 0")

    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    base = args.folder or Path(tempfile.mkdtemp(prefix="pos-chaos-"))
    base.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    budget = args.minutes * 60
    results = []
    for i, seed in enumerate(range(args.seed, args.seed + args.seeds)):
        left = budget - (time.monotonic() - started)
        drive_s = max(SHORTEST_DRIVE_S, left / (args.seeds - i) - OVERHEAD_S)
        folder = base / f"seed-{seed}"
        folder.mkdir()
        result = run_seed(seed, folder, drive_s, say=say)
        results.append(result)
        if not result.findings.violations and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    elapsed = time.monotonic() - started
    print(f"\nchaos run: seeds {args.seed}-{args.seed + args.seeds - 1}, {elapsed / 60:.1f} min\n")
    print(table(results))
    found = details(results)
    if found:
        print("\n" + found)
    if not any(r.findings.violations for r in results) and not args.keep and args.folder is None:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if any(r.findings.violations for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
