"""Sync throughput against a local central service (`pos-central serve`, its own process, on SQLite by default).

1. Drain N queued transactions (default 10,000) from a fresh agent database in batches (the setting's default
   of 200) and, as the baseline in the same run, the same number one transaction per request (batch size 1).
2. Pull M member changes (default 100,000) into an empty member cache, in pages of 1,000; `--pulls` times, each
   into a new empty cache as another till's first sync would be (a later one may find pages central built for the
   one before, as a chain's stores do: the first is the figure).

    python bench/sync.py [--transactions 10000] [--members 100000] [--batch 200] [--pulls 1] [--page-size 1000]
                         [--postgres | --database-url postgresql://...]

`--postgres` runs central on a throw-away PostgreSQL cluster (`tests.central.plugin.PostgresCluster`: the server
binaries must be installed, as for the tests); `--database-url` on an empty database of your own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
from pydantic import SecretStr

from agent.central_client import CentralClient
from agent.db import open_database
from agent.journal import Journal, JournalEntry
from agent.member_cache import MemberCache
from agent.member_code_gate import MemberCodeGate
from agent.settings import CentralSettings
from agent.sync import PullReport, Sync
from central.db import open_database as open_central_database
from central.db import write_session
from central.seed import seed_demo
from central.stores import add_store

PHONE_KEY = "bench-phone-hash-key-0123456789"
TOKEN = "bench-store-token-0123456789"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_central(folder: Path, members: int, database_url: str, page_size: int) -> tuple[subprocess.Popen, str]:
    config = folder / "central.toml"
    port = free_port()
    config.write_text(
        f'environment = "development"\ndatabase_url = "{database_url}"\n'
        f'phone_hash_key = "{PHONE_KEY}"\nport = {port}\nmax_page_size = {page_size}\nlog_level = "WARNING"\n'
    )
    engine = open_central_database(database_url)
    started = time.perf_counter()
    seed_demo(engine, PHONE_KEY.encode(), members, 1)
    with write_session(engine) as session:
        add_store(session, "BENCH01", datetime.now(UTC), token=TOKEN)
        session.commit()
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:  # the planner's statistics, as autovacuum would have them by now
            connection.exec_driver_sql("ANALYZE")
            connection.commit()
    engine.dispose()
    print(f"central seeded with {members:,} members in {time.perf_counter() - started:.1f} s")
    server = subprocess.Popen(
        [sys.executable, "-m", "central", "serve", "--config", str(config)], stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if (
                httpx.get(
                    f"{url}/v1/keys/member-code", headers={"Authorization": f"Bearer {TOKEN}", "X-Store-Id": "BENCH01"}
                ).status_code
                == 200
            ):
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.kill()
    sys.exit("central did not start")


def make_sync(path: Path, url: str, batch: int, page_size: int = 1000) -> Sync:
    engine = open_database(path)
    settings = CentralSettings(url=url, token=SecretStr(TOKEN), read_timeout_s=60)
    return Sync(
        engine,
        MemberCache(engine, PHONE_KEY.encode()),
        MemberCodeGate(engine),
        CentralClient(settings, "BENCH01"),
        batch_size=batch,
        page_size=page_size,
    )


def queue_sales(sync: Sync, count: int, station: str) -> None:
    journal = Journal(sync.engine, station, ZoneInfo("Asia/Shanghai"), 4)
    for n in range(count):
        amount = 100 + n % 9000
        journal.append(
            JournalEntry(
                kind="sale",
                total_fen=amount,
                body={
                    "lines": [{"sku": "6901234567892", "qty": 1, "amount_fen": amount}],
                    "tenders": [{"kind": "cash", "amount_fen": amount}],
                },
            )
        )


async def timed(coroutine: Coroutine[Any, Any, T]) -> tuple[float, T]:
    started = time.perf_counter()
    result = await coroutine
    return time.perf_counter() - started, result


async def drain(sync: Sync) -> tuple[float, int]:
    seconds, report = await timed(sync.push())
    await sync.client.aclose()
    return seconds, report.accepted


def postgres_cluster() -> Any:
    """A throw-away PostgreSQL cluster, started: the tests' own (tests/ is not an installed package)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.central.plugin import start_postgres

    return start_postgres()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=10_000)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--pulls", type=int, default=1, help="first syncs of the members, each into an empty cache")
    parser.add_argument("--page-size", type=int, default=1000, help="members per page (the settings' default: 1000)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--postgres", action="store_true", help="central on a throw-away PostgreSQL cluster")
    where.add_argument("--database-url", help="central on this empty database (default: a SQLite file)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cluster = postgres_cluster() if args.postgres else None
        database_url = cluster.new_database() if cluster else args.database_url or f"sqlite:///{folder / 'central.db'}"
        print(f"central on {database_url.split(':', 1)[0].split('+', 1)[0]}")
        server, url = start_central(folder, args.members, database_url, args.page_size)
        try:
            batched = make_sync(folder / "batched.db", url, args.batch)
            single = make_sync(folder / "single.db", url, 1)
            queue_sales(batched, args.transactions, "T01")
            queue_sales(single, args.transactions, "T02")
            os.sync()

            batched_s, accepted = asyncio.run(drain(batched))
            assert accepted == args.transactions, f"only {accepted} accepted"
            single_s, accepted = asyncio.run(drain(single))
            assert accepted == args.transactions, f"only {accepted} accepted"
            print(
                f"drain {args.transactions:,} transactions, batch {args.batch:>4}: {batched_s:6.2f} s  {args.transactions / max(batched_s, 1e-9):8,.0f} tx/s  (target < 10 s)"
            )
            print(
                f"drain {args.transactions:,} transactions, batch    1: {single_s:6.2f} s  {args.transactions / max(single_s, 1e-9):8,.0f} tx/s  (baseline)"
            )
            print(f"ratio batched/baseline: {single_s / max(batched_s, 1e-9):.1f}x")
            for sync in (batched, single):
                sync.engine.dispose()

            for n in range(1, args.pulls + 1):
                puller = make_sync(folder / f"pull-{n}.db", url, args.batch, args.page_size)
                os.sync()  # what seeding and draining wrote goes to disk now, not during the pull's commits

                async def pull(puller: Sync = puller) -> tuple[float, PullReport]:
                    seconds, report = await timed(puller.pull())
                    await puller.client.aclose()
                    return seconds, report

                pull_s, report = asyncio.run(pull())
                assert report.upserted == args.members, f"pulled {report.upserted}"
                print(
                    f"pull {args.members:,} members into an empty cache ({report.pages} pages): {pull_s:6.2f} s  {args.members / pull_s:8,.0f} members/s  (target <= 5.4 s)"
                )
                puller.engine.dispose()
        finally:
            server.terminate()
            server.wait(timeout=15)
            if cluster:
                cluster.stop()


if __name__ == "__main__":
    os.environ.setdefault("POS_CENTRAL_LOG_LEVEL", "WARNING")
    main()
