"""The station's sales, kept: the open one and the last closed ones in memory, the open one on disk (`open_sale`),
a paid one in the journal. A step the sale's rules decided (agent/sale_rules.py) is carried out here, under the
station's lock: its given-up payments voided at central, the sale saved, the screens told, its open payments
followed (agent/payment_follower.py), and a sale paid in full journaled with its receipt and closed.

The order that keeps money safe: the sale is saved before a charge leaves the store, and journaled with its outbox
row before any screen hears "paid" and before its receipt is queued.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from agent import sale_rules as rules
from agent.central_client import CentralClient
from agent.clock import Clock, utcnow
from agent.connectivity import Connectivity
from agent.errors import NotFound
from agent.events import EventHub
from agent.idempotency import kept
from agent.journal import Journal, JournalEntry, JournalRecord
from agent.journal_bodies import sale_entry
from agent.member_cache import MemberCache
from agent.open_sales import OpenSaleStore
from agent.payment_follower import PaymentFollower
from agent.receipt_printing import ReceiptPrinting
from agent.sale import Sale
from agent.settings import Settings

if TYPE_CHECKING:
    from agent.metrics import AgentMetrics

log = logging.getLogger(__name__)

KEEP_CLOSED = 20  # closed sales kept in memory for `GET /v1/sessions/{id}` after they end


class StationSales:
    def __init__(
        self,
        settings: Settings,
        engine: sa.Engine,
        members: MemberCache,
        journal: Journal,
        connectivity: Connectivity,
        client: CentralClient,
        events: EventHub,
        receipts: ReceiptPrinting | None,
        push_soon: Callable[[], None],
        clock: Clock,
    ):
        self.settings = settings
        self.members = members
        self.journal = journal
        self.connectivity = connectivity
        self.events = events
        self.open_sales = OpenSaleStore(engine)
        self.receipts = receipts
        self._push_soon = push_soon
        self.clock = clock
        self.station_id = settings.station.id
        self.lock = asyncio.Lock()  # one step at a time at this station
        self.current: Sale | None = None
        self._closed: OrderedDict[str, Sale] = OrderedDict()
        self.follower = PaymentFollower(self, client, connectivity, clock, settings.checkout.code_payment_limit_s)
        self.metrics: AgentMetrics | None = None  # counts sales and code payments (agent/metrics.py)

    def get(self, sale_id: str) -> Sale:
        if (sale := self.find(sale_id)) is None:
            raise NotFound(f"no session {sale_id} at this station")
        return sale

    def find(self, sale_id: str) -> Sale | None:
        if self.current is not None and self.current.id == sale_id:
            return self.current
        return self._closed.get(sale_id)

    # --- carrying out a step --------------------------------------------------------------------------------

    async def carry_out(self, step: rules.Step, offline: bool = False) -> Sale:
        """Keep a decided step: give up the payments it asks to, follow what is open, save, tell the screens,
        complete a sale paid in full; then raise the step's refusal, if any. `offline`: a charge in it never left
        the store."""
        sale = await self.voided(step, offline)
        if step.complete:
            return await self._complete(sale)
        self.follower.follow_unsettled(sale)
        if step.save:
            await self._save(sale)
        if step.event is not None:
            self.publish(step.event, sale, sale.message)
        if step.refusal is not None:
            raise step.refusal
        return sale

    async def voided(self, step: rules.Step, offline: bool = False) -> Sale:
        """The step's sale once central has been asked to void its given-up payments, kept as the station's sale."""
        sale = step.sale
        for out_trade_no in step.voids:
            sale = (await self.follower.void(sale, out_trade_no)).sale
        self._keep(sale, offline)
        return sale

    async def cancelled(self, step: rules.Step, void: JournalEntry | None) -> Sale:
        """A sale cancelled: its payments voided, then the void of what was taken journaled (if anything was)."""
        sale = await self.voided(step)
        if void is not None:
            view = sale.view()
            await asyncio.to_thread(self.journal.append, void, lambda connection, _: kept(connection, view))
        await self.finish(sale)
        self.publish("cancelled", sale, sale.message)
        self.follower.follow_unsettled(sale)
        return sale

    def opened(self, sale: Sale) -> None:
        self.current = sale

    async def finish(self, sale: Sale, on_disk: bool = True) -> None:
        """The sale left the open states: off disk (unless already, or while a payment of it is being given up)
        and into the short memory of closed sales (a sale still giving a payment up is never dropped from it)."""
        sale.version += 1
        if on_disk:
            await self._save(sale)
        if self.current is not None and self.current.id == sale.id:
            self.current = None
        self._closed[sale.id] = sale
        settled = [s for s in self._closed.values() if not s.unsettled_payments]
        for old in settled[: max(0, len(self._closed) - KEEP_CLOSED)]:
            del self._closed[old.id]

    def publish(self, type: str, sale: Sale | None, message: str | None, **data: Any) -> None:
        self.events.publish(type, sale.id if sale else None, message, session=sale.view() if sale else None, **data)

    def _keep(self, sale: Sale, offline: bool = False) -> None:
        """The new sale replaces the old in memory; a code payment that ended is counted."""
        old = self.find(sale.id)
        if self.current is not None and self.current.id == sale.id:
            self.current = sale
        elif sale.id in self._closed:
            self._closed[sale.id] = sale
        if self.metrics is None:
            return
        before = {p.out_trade_no: p for p in old.payments} if old is not None else {}
        for payment in sale.payments:
            earlier = before.get(payment.out_trade_no)
            if payment.final and (earlier is None or not earlier.final):
                took = None if offline else self.clock.now() - payment.created_at
                self.metrics.code_payment_ended(payment.provider, payment.state, took, offline)

    async def _save(self, sale: Sale) -> None:
        """An open sale is kept on disk; so is a cancelled one until its code payments are settled (a restart then
        goes on giving them up). A journaled sale lives in the journal, not here. The request's answer is kept with
        it (agent/idempotency.py)."""
        if sale.is_open or sale.unsettled_payments or sale.state == "cancelled":
            await asyncio.to_thread(self._write, sale, sale.view())

    def _write(self, sale: Sale, view: dict[str, Any]) -> None:
        with self.open_sales.engine.begin() as connection:
            if sale.is_open or sale.unsettled_payments:
                body = sale.model_dump_json()
                self.open_sales.save(sale.id, sale.station_id, sale.state, body, sale.created_at, connection)
            else:
                self.open_sales.delete(sale.id, connection)
            kept(connection, view)

    # --- paid in full ---------------------------------------------------------------------------------------

    async def _complete(self, sale: Sale) -> Sale:
        """Journal the sale with its outbox row, its receipt's print job and its coupons used, dropping its saved
        copy, in one transaction; then tell the screens, and close."""
        sale = sale.model_copy(deep=True)
        sale.online = await self.connectivity.online()
        sale.receipt_no = await self.journal.anext_receipt_no(utcnow())
        cash = any(t.kind == "cash" for t in sale.tenders)
        job: list[str | None] = [None]

        def within(connection: sa.Connection, record: JournalRecord) -> None:
            self.open_sales.delete(sale.id, connection)
            self.members.mark_coupons_used([c.code for c in sale.coupons], record.created_at, connection)
            job[0] = self._queue_receipt(connection, record, cash)
            done = rules.closed(rules.paid(sale.model_copy(deep=True), record.id, job[0]), self.receipts is not None)
            kept(connection, done.view())

        entry = sale_entry(sale, self.settings.points.excluded_categories)
        record = await asyncio.to_thread(self.journal.append, entry, within)
        if self.metrics is not None:
            self.metrics.sale_journaled(sale.tenders)
        sale = rules.paid(sale, record.id, job[0])
        self._keep(sale)
        self.publish("paid", sale, sale.message)
        if self.receipts is not None:
            self.receipts.wake()
        sale = rules.closed(sale, printer=self.receipts is not None)
        self._keep(sale)
        await self.finish(sale, on_disk=False)  # dropped with the journal row
        self.publish("closed", sale, sale.message)
        self._push_soon()
        return sale

    def _queue_receipt(self, connection: sa.Connection, record: JournalRecord, open_drawer: bool) -> str | None:
        """The receipt's print job, in the journal row's transaction; None without a printer, or if it could not be
        rendered (a bug must not undo a paid sale: the receipt can be reprinted)."""
        if self.receipts is None:
            return None
        try:
            return self.receipts.queue_in(connection, record, "receipt", open_drawer)
        except Exception:
            log.exception("receipt could not be queued", extra={"transaction": record.id})
            return None

    # --- after a start, and printed receipts -----------------------------------------------------------------

    async def recover(self) -> None:
        """Finish or reopen the sale that was open when the agent stopped, asking central how its code payments
        ended."""
        for body in await self.open_sales.abodies(self.station_id):
            sale = Sale.model_validate_json(body)
            journaled = await asyncio.to_thread(self.journal.get, sale.id)
            voided = journaled is not None and journaled.kind == "void" and bool(sale.unsettled_payments)
            if journaled is not None and not voided:
                await self.open_sales.adelete(sale.id)  # journaled just before the stop
                continue
            step = rules.restored(sale, voided)
            sale = step.sale
            if sale.is_open:
                if self.current is not None:
                    log.warning("more than one open sale found; keeping the newest", extra={"sale": sale.id})
                self.current = sale
            else:  # cancelled, with a payment still being given up: finish that, in the background
                self._closed[sale.id] = sale
            log.info(
                "sale restored", extra={"sale": sale.id, "state": sale.state, "payments": len(sale.unsettled_payments)}
            )
            await self._save(sale)
            self.follower.follow_unsettled(sale)
            if step.complete:
                await self._complete(sale)  # paid in full when the agent stopped, but not journaled yet
            elif step.event is not None:
                self.publish(step.event, sale, sale.message)

    def on_printed_threadsafe(self, loop: asyncio.AbstractEventLoop) -> Callable[[str], None]:
        """A print-queue hook: tell the screens when a receipt has printed (job ids are `<transaction>-<purpose>`)."""

        def printed(job_id: str) -> None:
            for purpose in ("-receipt", "-refund", "-reprint"):
                if purpose in job_id:
                    loop.call_soon_threadsafe(self._printed, job_id.split(purpose)[0], purpose[1:], job_id)

        return printed

    def _printed(self, transaction_id: str, purpose: str, job_id: str) -> None:
        sale = self._closed.get(transaction_id)
        self.publish("printed", sale, f"{purpose} printed", transaction_id=transaction_id, job_id=job_id)
