"""What the till forgets, and when: old journal rows central holds, printed receipts, members' personal data.

The till is not the record of account: central keeps every transaction (reconciled day by day), so the till
keeps what it needs to work — refunds and reprints of recent sales, reconciliation of recent days — for
`storage.journal_retention_days`. A journal row is purged only when all of these hold:

- central confirmed it (`accepted` or `duplicate`: the push then deletes its outbox row, so a journal row without
  one is confirmed; a `pending` or `rejected` row keeps its outbox row and stays);
- it is older than the retention (by its `created_at`), which is also the till's refund window: a sale older than
  that is no longer at the till and cannot be refunded here;
- nothing open needs it: no refund of it in flight (`pending_refund`), no receipt of it still waiting to print or
  waiting for a person (`print_job` queued, sending or uncertain), and a refund goes only with its sale (a sale kept
  while one of its refunds is purged would look refundable again).

Rows go as a prefix of each station's chain, oldest first, stopping at the first row that must stay, so the chain
stays one unbroken piece: each batch records the last purged link (seq and hash) as the station's checkpoint and
deletes the rows up to it in one transaction, so a kill at any moment leaves a chain `verify` accepts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from agent import journal
from agent.clock import utcnow
from agent.db import reader
from agent.idempotency import IdempotencyStore
from agent.member_cache import MemberCache
from agent.open_sales import OpenSaleStore
from agent.print_queue import PrintJobStore

log = logging.getLogger(__name__)

BATCH_SIZE = 500  # rows per transaction: short enough that a sale waiting for the write lock never notices


@dataclass(frozen=True)
class RetentionPolicy:
    journal_days: int
    print_job_days: int
    member_days: int
    batch_size: int = BATCH_SIZE


@dataclass(frozen=True)
class RetentionReport:
    journal_rows: int = 0
    print_jobs: int = 0
    members: int = 0
    idempotency_keys: int = 0
    held_back: tuple[str, ...] = ()  # per station, why its purge stopped before the retention's cut-off
    checkpoints: dict[str, tuple[int, str]] = field(
        default_factory=dict
    )  # station -> (seq, hash) of the last purged row
    seconds: float = 0.0


def run_retention(
    engine: sa.Engine,
    members: MemberCache,
    policy: RetentionPolicy,
    now: datetime | None = None,
    after_batch: Callable[[str, int], None] = lambda station, seq: None,
) -> RetentionReport:
    """Purge what the policy lets go, one short transaction per batch. `after_batch` hears each committed batch."""
    started = time.monotonic()
    now = now or utcnow()
    journal_rows, held_back, checkpoints = purge_journal(
        engine, now - timedelta(days=policy.journal_days), now, policy.batch_size, after_batch
    )
    print_jobs = purge_print_jobs(engine, now - timedelta(days=policy.print_job_days), policy.batch_size)
    purged_members = members.purge_personal_data(now - timedelta(days=policy.member_days), policy.batch_size)
    keys = IdempotencyStore(engine).purge_expired(now)
    return RetentionReport(
        journal_rows, print_jobs, purged_members, keys, held_back, checkpoints, time.monotonic() - started
    )


def purge_journal(
    engine: sa.Engine,
    before: datetime,
    now: datetime,
    batch_size: int = BATCH_SIZE,
    after_batch: Callable[[str, int], None] = lambda station, seq: None,
) -> tuple[int, tuple[str, ...], dict[str, tuple[int, str]]]:
    """Purge each station's oldest rows that may go (module docstring); rows purged, why stations stopped early,
    and each station's new checkpoint."""
    open_work = OpenSaleStore(engine)
    with reader(engine) as connection:
        stations = journal.stations(connection)
    total, held_back, checkpoints = 0, [], {}
    for station in stations:
        while True:
            with engine.begin() as connection:
                rows = journal.oldest_rows(connection, station, batch_size)
                # Both few at any time: read once per batch, in the batch's transaction.
                unprinted = PrintJobStore.unfinished_journal_ids(connection)
                refunding = set(open_work.refund_sales(connection))
                taken, reason = _purgeable_prefix(connection, rows, unprinted, refunding, before)
                if taken:
                    last = taken[-1]
                    total += journal.purge_through(connection, station, last["seq"], last["hash"], len(taken), now)
                    checkpoints[station] = (last["seq"], last["hash"])
            if taken:
                after_batch(station, last["seq"])
            if reason is not None:
                held_back.append(f"station {station}: {reason}")
                break
            if len(taken) < batch_size:
                break
    return total, tuple(held_back), checkpoints


def _purgeable_prefix(
    connection: sa.Connection, rows, unprinted: set[str], refunding: set[str], cutoff: datetime
) -> tuple[list, str | None]:
    """The leading rows that may go, and why the next one may not (None: old enough rows ran out, or the batch)."""
    taken: list = []
    ids: set[str] = set()
    for row in rows:
        if row["created_at"] >= cutoff:
            return taken, None  # the rest is younger than the retention: the normal end
        if row["outbox_status"] is not None:
            return (
                taken,
                f"transaction {row['id']} (seq {row['seq']}) is not confirmed by central ({row['outbox_status']})",
            )
        if row["id"] in refunding:
            return taken, f"a refund of sale {row['id']} (seq {row['seq']}) is still in flight"
        if row["id"] in unprinted:
            return (
                taken,
                f"the receipt of transaction {row['id']} (seq {row['seq']}) has not printed or waits for a person",
            )
        original = row["original_id"] if row["kind"] == "refund" else None
        if original and original not in ids and journal.is_journaled(connection, original):
            return taken, f"refund {row['id']} (seq {row['seq']}) goes only with its sale {original}, which is kept"
        taken.append(row)
        ids.add(row["id"])
    return taken, None


def purge_print_jobs(engine: sa.Engine, before: datetime, batch_size: int = BATCH_SIZE) -> int:
    """Receipts printed or cancelled before then: their bytes served their purpose (a reprint is rendered anew
    from the journal). Jobs queued, sending or uncertain stay, whatever their age."""
    return PrintJobStore(engine).purge_finished(before, batch_size)
