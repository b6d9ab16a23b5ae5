"""Refunds of journaled sales, whole or by lines, found by transaction id or receipt number.

What goes back is computed on cumulative quantities, so refunding a line in several goes gives back exactly what
it cost in total, to the fen: for each line, `amount × refunded_qty // qty` after this refund minus the same
before it. Points follow the goods' share of the sale the same way: the points it earned are taken back and the
points spent on it returned; the money refunded is the goods' value less the value of points returned.

Money goes back the way it came: code payments first (through central, to the payer's wallet), then card and
other tenders (the cashier returns them on the terminal, named on the refund receipt), then cash from the drawer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from agent.central_client import CentralClient, CentralError, CentralNotReached
from agent.checkout import CheckoutError, NotFound, Offline, PaymentFailed
from agent.connectivity import Connectivity
from agent.db import reader
from agent.ids import uuid7
from agent.journal import Journal, JournalEntry, JournalRecord
from agent.member_cache import MemberCache
from agent.receipts import Receipt
from agent.sale_receipts import receipt_of_record
from agent.settings import Settings
from central.contract import RefundRequest

# The order money goes back in.
REFUND_ORDER = ("wechat", "alipay", "card", "other", "cash")


class RefundRefused(CheckoutError):
    code = "refund_refused"


@dataclass(frozen=True)
class RefundLine:
    line: int  # index in the sale's lines
    qty: int


class Refunds:
    def __init__(
        self,
        settings: Settings,
        engine: sa.Engine,
        journal: Journal,
        members: MemberCache,
        client: CentralClient,
        connectivity: Connectivity,
        print_receipt: Callable[[Receipt, str, str, bool], Awaitable[str | None]] | None = None,
        push_soon: Callable[[], None] | None = None,
    ):
        self.settings = settings
        self.engine = engine
        self.journal = journal
        self.members = members
        self.client = client
        self.connectivity = connectivity
        self._print_receipt = print_receipt
        self._push_soon = push_soon or (lambda: None)
        self._lock = asyncio.Lock()

    def find(self, reference: str) -> JournalRecord:
        """A transaction by its id or its receipt number (the barcode on the receipt)."""
        record = self.journal.get(reference)
        if record is None:
            with reader(self.engine) as connection:
                found = connection.exec_driver_sql(
                    "SELECT id FROM journal WHERE json_extract(body, '$.receipt_no') = ?", (reference,)
                ).scalar()
            record = None if found is None else self.journal.get(found)
        if record is None:
            raise NotFound(f"no transaction {reference} at this till")
        return record

    def refunds_of(self, sale_id: str) -> list[JournalRecord]:
        with reader(self.engine) as connection:
            ids = connection.exec_driver_sql(
                "SELECT id FROM journal WHERE kind = 'refund' AND json_extract(body, '$.original_id') = ? ORDER BY seq", (sale_id,)
            ).scalars().all()
        return [self.journal.get(i) for i in ids]

    async def refund(self, reference: str, lines: Sequence[RefundLine] | None, reason: str | None) -> tuple[JournalRecord, str | None]:
        """Refund and journal; the refund's journal row and its receipt's print job id."""
        async with self._lock:
            sale = await asyncio.to_thread(self.find, reference)
            if sale.kind != "sale":
                raise RefundRefused(f"transaction {reference} is a {sale.kind}, not a sale: only sales can be refunded")
            earlier = await asyncio.to_thread(self.refunds_of, sale.id)
            plan = _plan(sale, earlier, lines)
            if any(t["kind"] in ("wechat", "alipay") for t in plan.tenders) and not await self.connectivity.online():
                raise Offline(
                    "this sale was paid by code: its refund goes through central, which cannot be reached now; try again later",
                    "网络中断，暂时无法原路退款，请稍后再试",
                )
            refund_id = uuid7()
            tenders = []
            for i, tender in enumerate(plan.tenders):
                tender = dict(tender)
                if tender["kind"] in ("wechat", "alipay"):
                    # Named by the sale and the refund's place among its refunds, not at random: if the till dies
                    # after central refunded but before the journal row, asking again is the same refund.
                    tender["out_refund_no"] = f"{sale.id.replace('-', '')[:25]}R{len(earlier) + 1:03d}{i:03d}"
                    try:
                        answer = await self.client.refund_payment(
                            tender["out_trade_no"], RefundRequest(out_refund_no=tender["out_refund_no"], amount_fen=tender["amount_fen"], reason=reason)
                        )
                    except CentralNotReached as exc:
                        raise Offline(f"the {tender['kind']} refund could not be sent: {exc}; try again later", "网络中断，暂时无法原路退款，请稍后再试") from None
                    except CentralError as exc:
                        # Sent, answer lost: the same refund asked again is the same out_refund_no, never a second one.
                        raise PaymentFailed(
                            f"the {tender['kind']} refund's answer did not arrive ({exc}): ask for the same refund again to finish it",
                            "退款结果未知，请稍后重试同一笔退款",
                        ) from None
                    if answer.state == "FAILED":
                        raise PaymentFailed(f"the {tender['kind']} refund was refused: {answer.reason_en or answer.code}", answer.reason_zh)
                    tender["state"] = answer.state
                tenders.append(tender)
            member = self.members.get(sale.member_id) if sale.member_id else None
            body = {
                "original_id": sale.id,
                "original_receipt_no": sale.body.get("receipt_no"),
                "receipt_no": f"R{sale.body.get('receipt_no') or sale.id[:8]}-{len(earlier) + 1}",
                "reason": reason,
                "online": await self.connectivity.online(),
                "lines": plan.lines,
                "tenders": tenders,
                "coupons": [],
                "subtotal_fen": sum(line["amount_fen"] for line in plan.lines),
                "member": sale.body.get("member"),
                "points_balance": None if member is None else member.points - plan.points_taken_back + plan.points_returned,
            }
            entry = JournalEntry(
                kind="refund",
                id=str(refund_id),
                total_fen=plan.money_fen,
                body=body,
                member_id=sale.member_id,
                points_earned=plan.points_taken_back,
                points_redeemed=plan.points_returned,
            )
            record = await asyncio.to_thread(self.journal.append, entry)
        job_id = None
        if self._print_receipt is not None:
            cash = any(t["kind"] == "cash" for t in tenders)
            job_id = await self._print_receipt(receipt_of_record(record, self.settings), record.id, "refund", cash)
        self._push_soon()
        return record, job_id


@dataclass(frozen=True)
class _Plan:
    lines: list[dict]
    money_fen: int
    points_taken_back: int
    points_returned: int
    tenders: list[dict]


def _plan(sale: JournalRecord, earlier: list[JournalRecord], asked: Sequence[RefundLine] | None) -> _Plan:
    sold = sale.body["lines"]
    before = [0] * len(sold)
    for refund in earlier:
        for line in refund.body["lines"]:
            before[line["line"]] += line["qty"]
    wanted = [0] * len(sold)
    if asked is None:
        wanted = [line["qty"] - done for line, done in zip(sold, before, strict=True)]
    else:
        for item in asked:
            if not 0 <= item.line < len(sold):
                raise RefundRefused(f"the sale has lines 0 to {len(sold) - 1}, not {item.line}")
            if item.qty < 1:
                raise RefundRefused("a refunded quantity must be at least 1")
            wanted[item.line] += item.qty
    for i, (line, done) in enumerate(zip(sold, before, strict=True)):
        if wanted[i] > line["qty"] - done:
            raise RefundRefused(f"line {i} ({line['name']}): {wanted[i]} to refund but only {line['qty'] - done} of {line['qty']} left")
    if not any(wanted):
        raise RefundRefused("nothing is left to refund on this sale")

    goods_total = sum(line["amount_fen"] for line in sold)
    # Points were earned on the goods that earn them (not on excluded categories): they go back with those alone.
    earning_total = sum(line["amount_fen"] for line in sold if line.get("earns_points", True))
    lines, goods_before, goods_after, earning_before, earning_after = [], 0, 0, 0, 0
    for i, line in enumerate(sold):
        cum = lambda q, line=line: line["amount_fen"] * q // line["qty"]  # noqa: E731
        goods_before += cum(before[i])
        goods_after += cum(before[i] + wanted[i])
        if line.get("earns_points", True):
            earning_before += cum(before[i])
            earning_after += cum(before[i] + wanted[i])
        if wanted[i]:
            amount = cum(before[i] + wanted[i]) - cum(before[i])
            lines.append({"line": i, "sku": line["sku"], "name": line["name"], "qty": wanted[i], "unit_price_fen": line["unit_price_fen"], "amount_fen": amount})

    def share(total: int, after: int, before: int, whole: int) -> int:
        """The part of `total` that goes with goods worth `after` in all, less what went with `before`."""
        if whole == 0:
            return 0
        return total * after // whole - total * before // whole

    points_value = share(sale.body.get("points_value_fen", 0), goods_after, goods_before, goods_total)
    money = (goods_after - goods_before) - points_value
    tenders = _allocate(sale, earlier, money)
    earned = share(sale.points_earned, earning_after, earning_before, earning_total)
    returned = share(sale.points_redeemed, goods_after, goods_before, goods_total)
    return _Plan(lines, money, earned, returned, tenders)


def _allocate(sale: JournalRecord, earlier: list[JournalRecord], money: int) -> list[dict]:
    """Split `money` over the sale's tenders in REFUND_ORDER, each up to what it paid less what it gave back."""
    given_back: dict[int, int] = {}
    for refund in earlier:
        for tender in refund.body["tenders"]:
            given_back[tender["tender"]] = given_back.get(tender["tender"], 0) + tender["amount_fen"]
    order = sorted(range(len(sale.body["tenders"])), key=lambda i: REFUND_ORDER.index(sale.body["tenders"][i]["kind"]))
    out, left = [], money
    for i in order:
        tender = sale.body["tenders"][i]
        room = tender["amount_fen"] - given_back.get(i, 0)
        take = min(room, left)
        if take > 0:
            out.append({"tender": i, "kind": tender["kind"], "amount_fen": take, "out_trade_no": tender.get("out_trade_no"), "reference": tender.get("reference")})
            left -= take
    if left > 0:  # only if the journal was edited: the chain check would say so too
        raise RefundRefused(f"¥{left / 100:.2f} of this refund is more than the sale's tenders have left")
    return [{k: v for k, v in t.items() if v is not None} for t in out]
