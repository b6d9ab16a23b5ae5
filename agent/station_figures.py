"""The station's figures at a glance, read once in one read transaction: what `/v1/status` shows and the gauges
`/metrics` exports (members cached, journal rows, outbox depth and lag, refunds in flight, the print queue).

Each table's count comes from the table's owner (the member cache, the print-job store); the journal, outbox and
pending-refund counts are read here until their store exists. Blocking: call `read_station_figures` from a
worker thread, or `aread_station_figures` from the event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from agent.clock import from_storage
from agent.db import reader
from agent.member_cache import MemberCache
from agent.print_queue import JobCounts, PrintJobStore


@dataclass(frozen=True)
class StationFigures:
    members: int
    journal_rows: int
    outbox_pending: int
    outbox_rejected: int
    oldest_pending_at: datetime | None
    refunds_pending: int
    print_jobs: JobCounts | None  # the station's printer's waiting jobs; None without a printer

    def sync_lag(self, now: datetime) -> timedelta | None:
        """How long the oldest journal row still waiting for central has waited; None when none waits."""
        return None if self.oldest_pending_at is None else now - self.oldest_pending_at


@dataclass(frozen=True)
class OutboxFigures:
    pending: int
    rejected: int
    oldest_pending_at: datetime | None


def read_outbox(connection: sa.Connection) -> OutboxFigures:
    """Rows waiting for central, rows it refused, and since when the oldest has waited: in the caller's read."""
    counts: dict[str, int] = dict(
        connection.exec_driver_sql("SELECT status, count(*) FROM outbox GROUP BY status").tuples().all()
    )
    oldest = connection.exec_driver_sql("SELECT min(created_at) FROM outbox WHERE status = 'pending'").scalar()
    return OutboxFigures(counts.get("pending", 0), counts.get("rejected", 0), oldest and from_storage(oldest))


def read_station_figures(engine: sa.Engine, printer_id: str | None = None) -> StationFigures:
    """Cheap reads (counts and one min over the outbox), all in one read transaction, so they agree."""
    with reader(engine) as connection:
        count = lambda sql: connection.exec_driver_sql(sql).scalar_one()  # noqa: E731
        outbox = read_outbox(connection)
        return StationFigures(
            members=MemberCache.count_in(connection),
            journal_rows=count("SELECT count(*) FROM journal"),
            outbox_pending=outbox.pending,
            outbox_rejected=outbox.rejected,
            oldest_pending_at=outbox.oldest_pending_at,
            refunds_pending=count("SELECT count(*) FROM pending_refund"),
            print_jobs=None if printer_id is None else PrintJobStore(engine).counts(printer_id, connection),
        )


async def aread_station_figures(engine: sa.Engine, printer_id: str | None = None) -> StationFigures:
    return await asyncio.to_thread(read_station_figures, engine, printer_id)
