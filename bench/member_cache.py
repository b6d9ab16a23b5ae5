"""Member cache throughput and lookup latency.

Applies N members (3 identifiers each: unionid, card_no, phone_hash) in pages to a fresh file database through
`MemberCache.apply`, and, in the same run, the same rows through raw `sqlite3.executemany` INSERTs into a
database with the same schema and pragmas: the baseline. Then times lookups by each identifier kind.

    python bench/member_cache.py [--members 1000000] [--page 5000] [--lookups 20000]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent.db import open_database
from agent.member_cache import MemberCache, MemberChange

TIERS = ("normal", "silver", "gold", "platinum")
KEY = b"bench-phone-hash-key-0123456789"


def member_row(n: int) -> MemberChange:
    member_id = f"m{n:09d}"
    return MemberChange(
        member_id=member_id,
        version=n + 1,
        tier=TIERS[n % 4],
        points=n % 10_000,
        display_name=f"会员{n}",
        phone_masked=f"138****{n % 10_000:04d}",
        identifiers=(
            ("unionid", f"oUnion{n:022d}"),
            ("card_no", f"8800{n:09d}"),
            ("phone_hash", hashlib.sha256(b"%d" % n).hexdigest()),
        ),
    )


def pages(total: int, size: int) -> list[list[MemberChange]]:
    return [[member_row(n) for n in range(start, min(start + size, total))] for start in range(0, total, size)]


def run_cache(path: Path, all_pages: list[list[MemberChange]]) -> tuple[float, MemberCache]:
    cache = MemberCache(open_database(path), KEY)
    started = time.perf_counter()
    for number, page in enumerate(all_pages):
        cache.apply(page, cursor=str(number))
    return time.perf_counter() - started, cache


def run_baseline(path: Path, all_pages: list[list[MemberChange]]) -> float:
    # Same schema and pragmas (copied from a migrated database), plain INSERTs, one transaction per page.
    schema_source = open_database(path.with_suffix(".schema.db"))
    with schema_source.connect() as connection:
        ddl = [
            row[0]
            for row in connection.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
            )
        ]
    schema_source.dispose()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    for statement in ddl:
        db.execute(statement)
    started = time.perf_counter()
    for page in all_pages:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO member (id, tier, points, display_name, phone_masked, version, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    c.member_id,
                    c.tier,
                    c.points,
                    c.display_name,
                    c.phone_masked,
                    c.version,
                    "2026-01-01T00:00:00.000000+00:00",
                )
                for c in page
            ],
        )
        db.executemany(
            "INSERT INTO member_identifier (kind, value, member_id) VALUES (?, ?, ?)",
            [(kind, value, c.member_id) for c in page for kind, value in c.identifiers],
        )
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def lookup_latencies(cache: MemberCache, kind: str, values: list[str]) -> tuple[float, float]:
    samples = []
    for value in values:
        started = time.perf_counter_ns()
        found = cache.lookup(kind, value)
        samples.append(time.perf_counter_ns() - started)
        if found is None:
            sys.exit(f"lookup of a known {kind} found nothing")
    samples.sort()
    return statistics.median(samples) / 1e6, samples[int(len(samples) * 0.99)] / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--page", type=int, default=5_000)
    parser.add_argument("--lookups", type=int, default=20_000)
    args = parser.parse_args()

    all_pages = pages(args.members, args.page)
    rows = args.members * 4  # one member row and three identifier rows each
    with tempfile.TemporaryDirectory() as tmp:
        baseline_s = run_baseline(Path(tmp) / "baseline.db", all_pages)
        cache_s, cache = run_cache(Path(tmp) / "cache.db", all_pages)
        print(f"members={args.members} page={args.page} rows={rows} (member + 3 identifiers each)")
        print(f"baseline raw sqlite3.executemany INSERT: {baseline_s:7.2f} s  {rows / baseline_s:>10,.0f} rows/s")
        print(f"MemberCache.apply (upsert + identifiers): {cache_s:7.2f} s  {rows / cache_s:>10,.0f} rows/s")
        print(f"ratio cache/baseline: {baseline_s / cache_s:.2f}  (target >= 0.50)")

        rng = random.Random(7)
        picks = [member_row(rng.randrange(args.members)) for _ in range(args.lookups)]
        for index, kind in enumerate(("unionid", "card_no", "phone_hash")):
            p50, p99 = lookup_latencies(cache, kind, [m.identifiers[index][1] for m in picks])
            print(f"lookup by {kind:<10} p50 {p50:.3f} ms  p99 {p99:.3f} ms  (target p99 < 0.5 ms)")
        cache.engine.dispose()


if __name__ == "__main__":
    main()
