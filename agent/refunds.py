"""Refunds of journaled sales, whole or by lines, found by transaction id or receipt number.

What goes back is computed on cumulative quantities, so refunding a line in several goes gives back exactly what
it cost in total, to the fen: for each line, `amount × refunded_qty // qty` after this refund minus the same
before it. Points follow the goods' share of the sale the same way: the points it earned are taken back and the
points spent on it returned; the money refunded is the goods' value less the value of points returned.

Money goes back the way it came: code payments first (through central, to the payer's wallet), then card and
other tenders (the cashier returns them on the terminal, named on the refund receipt), then cash from the drawer.

A refund with a code part is written down (`pending_refund`) before its first part is sent, each part under an
`out_refund_no` that follows from the sale and the refund's place among its refunds. An answer that does not come
leaves it pending, never failed: the till finishes it in the background (and at its next start), asking again
under the same numbers — central and the providers refund a number once — and a refund asked for again while
one is pending finishes that one first. Only central's word settles a part: refunded, being refunded, or refused.
The refund is journaled with its receipt's print job, dropping the pending row, in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from pydantic import BaseModel

from agent.central_client import CentralClient, CentralError, CentralNotReached, CentralRejected
from agent.clock import SYSTEM_CLOCK, Clock, utcnow
from agent.connectivity import Connectivity
from agent.errors import AgentError, NotFound, Offline, PaymentFailed, RefundInProgress, RefundRefused
from agent.events import EventHub
from agent.idempotency import kept
from agent.ids import uuid7
from agent.journal import Journal, JournalEntry, JournalRecord
from agent.journal_bodies import refund_body
from agent.member_cache import MemberCache
from agent.open_sales import OpenSaleStore
from agent.receipt_printing import ReceiptPrinting
from agent.settings import Settings
from central.contract import Refund, RefundBody, RefundRequest, SaleBody
from drivers.backoff import Backoff

if TYPE_CHECKING:
    from agent.metrics import AgentMetrics

log = logging.getLogger(__name__)

# The order money goes back in.
REFUND_ORDER = ("wechat", "alipay", "card", "other", "cash")
CODE_KINDS = ("wechat", "alipay")
# Between tries to finish a pending refund in the background: 3 s doubling to 60 s (one follower per sale, so
# no jitter).
RETRY = Backoff(first=3.0, cap=60.0, jitter=0)

OFFLINE_ZH = "网络中断，暂时无法原路退款，请稍后再试"


@dataclass(frozen=True)
class RefundLine:
    line: int  # index in the sale's lines
    qty: int


class PendingRefund(BaseModel):
    """A refund decided and (partly) sent through central, not journaled yet."""

    id: str  # the refund's transaction id once journaled
    sale_id: str
    asked: (
        list[tuple[int, int]] | None
    )  # the lines asked for (None: all that was left): the same request is this refund
    reason: str | None
    approved_by: str | None = None  # the supervisor who approved it
    ordinal: int  # its place among the sale's refunds
    lines: list[dict]
    money_fen: int
    points_taken_back: int
    points_returned: int
    tenders: list[dict]  # a code part also holds out_refund_no, `sent` (it may have left) and central's `state`
    created_at: datetime

    def code_parts(self) -> list[dict]:
        return [t for t in self.tenders if t["kind"] in CODE_KINDS]


class Refunds:
    def __init__(
        self,
        settings: Settings,
        engine: sa.Engine,
        journal: Journal,
        members: MemberCache,
        client: CentralClient,
        connectivity: Connectivity,
        receipts: ReceiptPrinting | None = None,
        push_soon: Callable[[], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        open_sales: OpenSaleStore | None = None,
        events: EventHub | None = None,
    ):
        self.settings = settings
        self.engine = engine
        self.open_sales = open_sales or OpenSaleStore(engine)  # where a refund in flight is kept
        self.journal = journal
        self.members = members
        self.client = client
        self.connectivity = connectivity
        self._receipts = receipts
        self._push_soon = push_soon or (lambda: None)
        self.clock = clock  # the background follower's waits
        self.events = events  # `refunded` for the screens, with the sale's session id
        self._lock = asyncio.Lock()
        self._followers: dict[str, asyncio.Task] = {}
        self.metrics: AgentMetrics | None = None  # counts refunds (agent/metrics.py)

    def find(self, reference: str) -> JournalRecord:
        """A transaction by its id or its receipt number (the barcode on the receipt)."""
        record = self.journal.get(reference) or self.journal.by_receipt_no(reference)
        if record is None:
            raise NotFound(f"no transaction {reference} at this till")
        return record

    def refunds_of(self, sale_id: str) -> list[JournalRecord]:
        # Read together: a refund is never planned without every earlier one.
        return self.journal.refunds_of(sale_id)

    async def refund(
        self, reference: str, lines: Sequence[RefundLine] | None, reason: str | None, approved_by: str | None = None
    ) -> tuple[JournalRecord, str | None]:
        """Refund and journal; the refund's journal row and its receipt's print job id."""
        asked = None if lines is None else sorted((item.line, item.qty) for item in lines)
        async with self._lock:
            sale = await asyncio.to_thread(self.find, reference)
            if sale.kind != "sale":
                raise RefundRefused(f"transaction {reference} is a {sale.kind}, not a sale: only sales can be refunded")
            pending = await asyncio.to_thread(self._pending_of, sale.id)
            if pending is not None:  # sent before, its answer lost: finish it first, never send another
                record = await self._finish(sale, pending)
                if pending.asked == asked:
                    return record, self._job_of(record)
            earlier = await asyncio.to_thread(self.refunds_of, sale.id)
            plan = _plan(sale, earlier, lines)
            if any(t["kind"] in CODE_KINDS for t in plan.tenders) and not await self.connectivity.online():
                raise Offline(
                    "this sale was paid by code: its refund goes through central, which cannot be reached now; try again later",
                    OFFLINE_ZH,
                )
            pending = _pending(sale, len(earlier) + 1, asked, reason, plan, approved_by)
            if pending.code_parts():
                await asyncio.to_thread(self._save_pending, pending)  # on disk before anything is sent
            record = await self._finish(sale, pending)
        return record, self._job_of(record)

    async def recover(self) -> None:
        """After a start: finish the refunds whose answers a stop cut off."""
        for sale_id in await asyncio.to_thread(self._pending_sales):
            log.info("pending refund found; finishing it", extra={"sale": sale_id})
            self._follow(sale_id, at_once=True)

    async def close(self) -> None:
        for task in list(self._followers.values()):
            task.cancel()
        await asyncio.gather(*self._followers.values(), return_exceptions=True)

    # --- finishing a refund --------------------------------------------------------------------------------

    async def _finish(self, sale: JournalRecord, pending: PendingRefund) -> JournalRecord:
        """Send what central has not answered yet, then journal. Raises, leaving it pending, while an answer is
        missing; drops it when nothing could have been refunded."""
        parts = pending.code_parts()
        for part in parts:
            if part.get("state") is not None:
                continue
            try:
                answer = await self._send(part, pending.reason)
            except CentralNotReached as exc:
                if not any(p.get("sent") for p in parts):  # nothing ever left the store: nothing refunded
                    await asyncio.to_thread(self._drop_pending, pending.id)
                    raise Offline(
                        f"the {part['kind']} refund could not be sent: {exc}; try again later", OFFLINE_ZH
                    ) from None
                self._follow(sale.id)
                raise self._in_progress(part, exc) from None
            except CentralRejected as exc:  # central's own refusal: no refund under this number
                part["sent"], part["state"], part["refused"] = True, "FAILED", str(exc)
            except CentralError as exc:
                part["sent"] = True
                await asyncio.to_thread(self._save_pending, pending)
                self._follow(sale.id)
                raise self._in_progress(part, exc) from None
            else:
                part["sent"], part["state"] = True, answer.state
                if answer.state == "FAILED":
                    part["refused"] = answer.reason_en or answer.code or "refused by the provider"
            await asyncio.to_thread(self._save_pending, pending)
        refused = [p for p in parts if p["state"] == "FAILED"]
        if refused and len(refused) == len(parts):
            await asyncio.to_thread(self._drop_pending, pending.id)
            first = refused[0]
            raise PaymentFailed(
                f"the {first['kind']} refund was refused: {first['refused']}", "原路退款失败，请换一种方式退款"
            )
        for part in refused:  # another code part was refunded: this one goes back in cash, so the refund is whole
            part["instead_of"], part["kind"] = part["kind"], "cash"
        record = await asyncio.to_thread(self._journal, sale, pending, await self.connectivity.online())
        if self.metrics is not None:
            self.metrics.refund_journaled(record.refund_body().tenders)
        if self._receipts is not None:
            self._receipts.wake()
        self._push_soon()
        if self.events is not None:
            self.events.publish(
                "refunded",
                sale.id,
                f"refunded ¥{record.total_fen / 100:.2f} of {sale.receipt_no or sale.id}",
                transaction_id=sale.id,
                refund_id=record.id,
                total_fen=record.total_fen,
            )
        return record

    async def in_progress(self, sale_id: str) -> dict[str, Any] | None:
        """The sale's refund sent through central whose outcome is still open, as the transaction view shows it."""
        pending = await asyncio.to_thread(self._pending_of, sale_id)
        if pending is None:
            return None
        parts = [
            {"kind": p["kind"], "amount_fen": p["amount_fen"], "state": p.get("state") or "PROCESSING"}
            for p in pending.code_parts()
        ]
        return {"id": pending.id, "money_fen": pending.money_fen, "reason": pending.reason, "parts": parts}

    async def _send(self, part: dict, reason: str | None) -> Refund:
        request = RefundRequest(out_refund_no=part["out_refund_no"], amount_fen=part["amount_fen"], reason=reason)
        try:
            return await self.client.refund_payment(part["out_trade_no"], request)
        except CentralRejected as exc:
            if exc.status != 409 or exc.code != "conflict":
                raise
        # Central holds a refund under this number already: this one (then it is the answer), or another.
        existing = await self.client.refund(part["out_trade_no"], part["out_refund_no"])
        if existing.amount_fen != part["amount_fen"]:
            raise RefundRefused(
                f"refund number {part['out_refund_no']} is already a refund of ¥{existing.amount_fen / 100:.2f} at central "
                f"({existing.state}), not of ¥{part['amount_fen'] / 100:.2f}: a refund this till has no record of; tell the manager",
                "该退款单号已被使用，请联系店长",
            )
        return existing

    def _in_progress(self, part: dict, exc: Exception) -> RefundInProgress:
        return RefundInProgress(
            f"the {part['kind']} refund was sent but its answer has not come ({exc}): the till finishes it by itself, "
            "under the same refund number (never a second refund); ask for the same refund again to see it done",
            "退款处理中，请稍后查看，请勿重复退款",
        )

    def _follow(self, sale_id: str, at_once: bool = False) -> None:
        if sale_id not in self._followers:
            task = asyncio.get_running_loop().create_task(self._follow_pending(sale_id, at_once))
            self._followers[sale_id] = task
            task.add_done_callback(lambda _: self._followers.pop(sale_id, None))

    async def _follow_pending(self, sale_id: str, at_once: bool) -> None:
        """Finish a pending refund in the background, trying again at growing intervals until central answers."""
        failures = 0 if at_once else 1  # followed because an answer did not come, or found pending at a start
        while True:
            await self.clock.sleep(RETRY.delay(failures))
            failures += 1
            async with self._lock:
                pending = await asyncio.to_thread(self._pending_of, sale_id)
                if pending is None:
                    return
                sale = await asyncio.to_thread(self.journal.get, sale_id)
                assert sale is not None, "retention keeps a sale while a refund of it is in flight"
                try:
                    record = await self._finish(sale, pending)
                except (RefundInProgress, Offline):
                    continue
                except AgentError as exc:
                    log.warning("pending refund ended without a refund", extra={"sale": sale_id, "error": exc.message})
                    return
            log.info(
                "pending refund finished", extra={"sale": sale_id, "refund": record.id, "total_fen": record.total_fen}
            )
            return

    # --- the database ----------------------------------------------------------------------------------------

    def _journal(self, sale: JournalRecord, pending: PendingRefund, online: bool) -> JournalRecord:
        """The refund's journal row, its receipt's print job and the end of its pending row: one transaction."""
        member = self.members.get(sale.member_id) if sale.member_id else None
        tenders = [{k: v for k, v in t.items() if k != "sent"} for t in pending.tenders]
        points_balance = None if member is None else member.points - pending.points_taken_back + pending.points_returned
        body = refund_body(
            sale.id,
            sale.sale_body(),
            pending.ordinal,
            pending.reason,
            online,
            pending.lines,
            tenders,
            points_balance,
            pending.approved_by,
        )
        entry = JournalEntry(
            kind="refund",
            id=pending.id,
            total_fen=pending.money_fen,
            body=body,
            member_id=sale.member_id,
            points_earned=pending.points_taken_back,
            points_redeemed=pending.points_returned,
        )
        cash = any(t.kind == "cash" for t in body.tenders)

        def within(connection: sa.Connection, record: JournalRecord) -> None:
            self.open_sales.drop_refund(pending.id, connection)
            job = None
            if self._receipts is not None:
                try:
                    job = self._receipts.queue_in(connection, record, "refund", cash)
                except Exception:  # a bug must not undo a refund made: its receipt can be reprinted
                    log.exception("refund receipt could not be queued", extra={"transaction": record.id})
            kept(connection, record.view() | {"receipt_job_id": job}, 201)

        return self.journal.append(entry, within)

    def _job_of(self, record: JournalRecord) -> str | None:
        return None if self._receipts is None else f"{record.id}-refund"

    def _pending_of(self, sale_id: str) -> PendingRefund | None:
        body = self.open_sales.refund_body(sale_id)
        return None if body is None else PendingRefund.model_validate_json(body)

    def _pending_sales(self) -> list[str]:
        return self.open_sales.refund_sales()

    def _save_pending(self, pending: PendingRefund) -> None:
        """Kept before a code part is sent; a request sent again with its Idempotency-Key is told it is under way."""
        answer = RefundInProgress(
            f"refund {pending.id} of sale {pending.sale_id} is under way: the till finishes it by itself",
            "退款处理中，请稍后查看，请勿重复退款",
        )
        with self.open_sales.engine.begin() as connection:
            body = pending.model_dump_json()
            self.open_sales.save_refund(pending.id, pending.sale_id, body, pending.created_at, connection)
            kept(connection, answer.body().model_dump(mode="json", exclude_none=True), answer.status)

    def _drop_pending(self, refund_id: str) -> None:
        self.open_sales.drop_refund(refund_id)


def _pending(
    sale: JournalRecord,
    ordinal: int,
    asked: list[tuple[int, int]] | None,
    reason: str | None,
    plan: _Plan,
    approved_by: str | None = None,
) -> PendingRefund:
    tenders = []
    for i, tender in enumerate(plan.tenders):
        tender = dict(tender)
        if tender["kind"] in CODE_KINDS:
            # Named by the sale and the refund's place among its refunds, not at random: asking again after a lost
            # answer or a crash is the same refund at central and at the provider.
            tender["out_refund_no"] = f"{sale.id.replace('-', '')[:25]}R{ordinal:03d}{i:03d}"
            tender["sent"] = False
        tenders.append(tender)
    return PendingRefund(
        id=str(uuid7()),
        sale_id=sale.id,
        asked=asked,
        reason=reason,
        approved_by=approved_by,
        ordinal=ordinal,
        lines=plan.lines,
        money_fen=plan.money_fen,
        points_taken_back=plan.points_taken_back,
        points_returned=plan.points_returned,
        tenders=tenders,
        created_at=utcnow(),
    )


@dataclass(frozen=True)
class _Plan:
    lines: list[dict]
    money_fen: int
    points_taken_back: int
    points_returned: int
    tenders: list[dict]


def _plan(sale: JournalRecord, earlier: list[JournalRecord], asked: Sequence[RefundLine] | None) -> _Plan:
    body = sale.sale_body()
    refunds = [refund.refund_body() for refund in earlier]
    sold = body.lines
    before = [0] * len(sold)
    for refund in refunds:
        for given in refund.lines:
            before[given.line] += given.qty
    wanted = [0] * len(sold)
    if asked is None:
        wanted = [line.qty - done for line, done in zip(sold, before, strict=True)]
    else:
        for item in asked:
            if not 0 <= item.line < len(sold):
                raise RefundRefused(f"the sale has lines 0 to {len(sold) - 1}, not {item.line}")
            if item.qty < 1:
                raise RefundRefused("a refunded quantity must be at least 1")
            wanted[item.line] += item.qty
    for i, (line, done) in enumerate(zip(sold, before, strict=True)):
        if wanted[i] > line.qty - done:
            raise RefundRefused(
                f"line {i} ({line.name}): {wanted[i]} to refund but only {line.qty - done} of {line.qty} left"
            )
    if not any(wanted):
        raise RefundRefused("nothing is left to refund on this sale")

    goods_total = sum(line.amount_fen for line in sold)
    # Points were earned on the goods that earn them (not on excluded categories): they go back with those alone.
    earning_total = sum(line.amount_fen for line in sold if line.earns_points)
    lines, goods_before, goods_after, earning_before, earning_after = [], 0, 0, 0, 0
    for i, line in enumerate(sold):
        cum = lambda q, line=line: line.amount_fen * q // line.qty  # noqa: E731
        goods_before += cum(before[i])
        goods_after += cum(before[i] + wanted[i])
        if line.earns_points:
            earning_before += cum(before[i])
            earning_after += cum(before[i] + wanted[i])
        if wanted[i]:
            amount = cum(before[i] + wanted[i]) - cum(before[i])
            lines.append(
                {
                    "line": i,
                    "sku": line.sku,
                    "name": line.name,
                    "qty": wanted[i],
                    "unit_price_fen": line.unit_price_fen,
                    "amount_fen": amount,
                }
            )

    def share(total: int, after: int, before: int, whole: int) -> int:
        """The part of `total` that goes with goods worth `after` in all, less what went with `before`."""
        if whole == 0:
            return 0
        return total * after // whole - total * before // whole

    points_value = share(body.points_value_fen, goods_after, goods_before, goods_total)
    money = (goods_after - goods_before) - points_value
    tenders = _allocate(body, refunds, money)
    earned = share(sale.points_earned, earning_after, earning_before, earning_total)
    returned = share(sale.points_redeemed, goods_after, goods_before, goods_total)
    return _Plan(lines, money, earned, returned, tenders)


def _allocate(sale: SaleBody, earlier: list[RefundBody], money: int) -> list[dict]:
    """Split `money` over the sale's tenders in REFUND_ORDER, each up to what it paid less what it gave back."""
    given_back: dict[int, int] = {}
    for refund in earlier:
        for part in refund.tenders:
            given_back[part.tender] = given_back.get(part.tender, 0) + part.amount_fen
    order = sorted(range(len(sale.tenders)), key=lambda i: REFUND_ORDER.index(sale.tenders[i].kind))
    out, left = [], money
    for i in order:
        tender = sale.tenders[i]
        room = tender.amount_fen - given_back.get(i, 0)
        take = min(room, left)
        if take > 0:
            out.append(
                {
                    "tender": i,
                    "kind": tender.kind,
                    "amount_fen": take,
                    "out_trade_no": tender.out_trade_no,
                    "reference": tender.reference,
                }
            )
            left -= take
    if left > 0:  # only if the journal was edited: the chain check would say so too
        raise RefundRefused(f"¥{left / 100:.2f} of this refund is more than the sale's tenders have left")
    return [{k: v for k, v in t.items() if v is not None} for t in out]
