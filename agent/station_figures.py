"""The station's figures at a glance, read once in one read transaction: what `/v1/status` shows and the gauges
`/metrics` exports (members cached, journal rows, outbox depth and lag, refunds in flight, the print queue).

Each count comes from its table's owner (the member cache, the journal and its outbox, the open-sale store, the
print-job store). Blocking: call `read_station_figures` from a worker thread, or `aread_station_figures` from the
event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from agent import journal
from agent.db import reader
from agent.member_cache import MemberCache
from agent.open_sales import OpenSaleStore
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


def read_station_figures(engine: sa.Engine, printer_id: str | None = None) -> StationFigures:
    """Cheap reads (counts and one min over the outbox), all in one read transaction, so they agree."""
    with reader(engine) as connection:
        outbox = journal.read_outbox(connection)
        return StationFigures(
            members=MemberCache.count_in(connection),
            journal_rows=journal.count_rows(connection),
            outbox_pending=outbox.pending,
            outbox_rejected=outbox.rejected,
            oldest_pending_at=outbox.oldest_pending_at,
            refunds_pending=OpenSaleStore(engine).count_refunds(connection),
            print_jobs=None if printer_id is None else PrintJobStore(engine).counts(printer_id, connection),
        )


async def aread_station_figures(engine: sa.Engine, printer_id: str | None = None) -> StationFigures:
    return await asyncio.to_thread(read_station_figures, engine, printer_id)
