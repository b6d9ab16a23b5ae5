"""The receipt of a journaled sale or refund, built from its journal row alone: the row holds everything the
paper shows, so a reprint next week prints what the customer got today."""

from __future__ import annotations

from agent.journal import JournalRecord
from agent.receipts import CouponUse, MemberInfo, Points, Receipt, ReceiptLine, StoreHeader, Totals, e_receipt_url
from agent.receipts import Tender as ReceiptTender
from agent.sale import TENDER_NAMES_ZH
from agent.settings import Settings


def receipt_of_record(record: JournalRecord, settings: Settings, reprint: bool = False) -> Receipt:
    body = record.body
    refund = record.kind == "refund"
    lines = tuple(
        ReceiptLine(
            name=line["name"],
            qty=line["qty"],
            unit_price_fen=line["unit_price_fen"],
            amount_fen=line["amount_fen"],
            discount_fen=line["qty"] * line["unit_price_fen"] - line["amount_fen"] if not refund else 0,
        )
        for line in body.get("lines", [])
    )
    tenders = tuple(
        ReceiptTender(
            kind=TENDER_NAMES_ZH.get(t["kind"], t["kind"]),
            amount_fen=t.get("tendered_fen", t["amount_fen"])
            if t["kind"] == "cash" and not refund
            else t["amount_fen"],
            change_fen=t.get("change_fen", 0),
        )
        for t in body.get("tenders", [])
    )
    member = body.get("member")
    points = None
    if record.member_id and body.get("points_balance") is not None:
        points = Points(
            earned=record.points_earned,
            redeemed=record.points_redeemed,
            balance=body["points_balance"],
            provisional=not body.get("online", False),
        )
    subtotal = body.get("subtotal_fen", sum(line.amount_fen for line in lines))
    return Receipt(
        kind="refund" if refund else "sale",
        store=StoreHeader(
            settings.store.name, settings.station.name or settings.station.id, settings.receipt.address or None
        ),
        transaction_id=record.id,
        created_at=record.created_at,
        lines=lines,
        totals=Totals(subtotal_fen=subtotal, discount_fen=body.get("discount_fen", 0), total_fen=record.total_fen),
        tenders=tenders,
        member=None
        if not member
        else MemberInfo(member["display_name"], member.get("phone_masked"), member.get("tier") or None),
        points=points,
        coupons=tuple(
            CouponUse(c["title"], c["amount_off_fen"]) for c in body.get("coupons", []) if c.get("amount_off_fen")
        ),
        e_receipt_url=None if refund else e_receipt_url(settings.receipt.e_receipt_url, record.id),
        footer=settings.receipt.footer,
        original_transaction_id=body.get("original_id"),
        receipt_no=body.get("receipt_no"),
        reprint=reprint,
    )
