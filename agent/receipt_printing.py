"""Receipts onto the station's print queue: laid out for its paper, rendered for its printer, queued under a job id
that says what it is (`<transaction>-receipt`, `-refund`), so the same receipt is never queued twice.

A sale's or refund's receipt is queued in the same SQLite transaction as its journal row (`queue_in`): a till that
dies right after "paid" still has the receipt waiting when it comes back. A reprint is a job of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import sqlalchemy as sa

from agent.ids import uuid7
from agent.journal import JournalRecord
from agent.print_queue import PrintQueue, insert_job
from agent.receipts import Receipt, layout
from agent.sale_receipts import receipt_of_record
from agent.settings import Settings
from drivers.document import Document


class ReceiptPrinting:
    def __init__(
        self,
        settings: Settings,
        render: Callable[[Document], bytes],
        columns: int,
        queue: Callable[[], PrintQueue | None],
    ):
        if settings.devices.printer is None:
            raise ValueError("receipts are printed only on a station with a printer in its settings")
        self.settings = settings
        self._printer_id = settings.devices.printer.id
        self._render = render
        self._columns = columns
        self._queue = queue  # the running queue, once the devices are started

    def queue_in(self, connection: sa.Connection, record: JournalRecord, purpose: str, open_drawer: bool) -> str:
        """Queue the receipt of a journal row being written, in that row's transaction; the job id."""
        job_id = f"{record.id}-{purpose}"
        data = self._bytes(receipt_of_record(record, self.settings), open_drawer)
        insert_job(connection, self._printer_id, job_id, data, purpose, record.id)
        return job_id

    def wake(self) -> None:
        """After the commit of `queue_in`: the printer looks for the job now."""
        queue = self._queue()
        if queue is not None:
            queue.wake()

    async def reprint(self, record: JournalRecord, approved_by: str | None = None) -> str | None:
        """A copy of a journaled receipt, marked as such: a new job each time, counted with who approved it. None
        while the printer is not running."""
        queue = self._queue()
        if queue is None:
            return None
        data = await asyncio.to_thread(self._bytes, receipt_of_record(record, self.settings, reprint=True), False)
        job_id = f"{record.id}-reprint-{uuid7().hex[-12:]}"  # the random end: the start is the time
        job = await asyncio.to_thread(queue.enqueue_reprint, job_id, data, record.id, approved_by)
        return job.id

    async def reprints_of(self, record: JournalRecord) -> int:
        """Reprints so far of the transaction's receipt (0 while the printer is not running: none can be made)."""
        queue = self._queue()
        return 0 if queue is None else await asyncio.to_thread(queue.reprints_of, record.id)

    def _bytes(self, receipt: Receipt, open_drawer: bool) -> bytes:
        return self._render(layout(receipt, self._columns, self.settings.store.zone, open_drawer=open_drawer))
