"""The receipt of a journaled sale or refund, built from its journal row alone: the row holds everything the
paper shows, so a reprint next week prints what the customer got today."""

from __future__ import annotations

from agent.journal import JournalRecord
from agent.receipts import CouponUse, MemberInfo, Points, Receipt, ReceiptLine, StoreHeader, Totals, e_receipt_url
from agent.receipts import Tender as ReceiptTender
from agent.sale import TENDER_NAMES_ZH
from agent.settings import Settings
from central.contract import JournalLine, PaidTender, RefundBody, RefundedLine, RefundTender, SaleBody


def receipt_of_record(record: JournalRecord, settings: Settings, reprint: bool = False) -> Receipt:
    body = record.typed_body()
    refund = isinstance(body, RefundBody)
    lines = tuple(_line(line, refund) for line in body.lines)
    tenders = tuple(_tender(tender) for tender in body.tenders)
    # A void (a reprint of one) shows what was taken: no member, points, discounts or receipt number of its own.
    sale_or_refund = body if isinstance(body, SaleBody | RefundBody) else None
    member = None if sale_or_refund is None else sale_or_refund.member
    points = None
    if record.member_id and sale_or_refund is not None and sale_or_refund.points_balance is not None:
        points = Points(
            earned=record.points_earned,
            redeemed=record.points_redeemed,
            balance=sale_or_refund.points_balance,
            provisional=not body.online,
        )
    subtotal = sum(line.amount_fen for line in lines) if sale_or_refund is None else sale_or_refund.subtotal_fen
    return Receipt(
        kind="refund" if refund else "sale",
        store=StoreHeader(
            settings.store.name, settings.station.name or settings.station.id, settings.receipt.address or None
        ),
        transaction_id=record.id,
        created_at=record.created_at,
        lines=lines,
        totals=Totals(
            subtotal_fen=subtotal,
            discount_fen=body.discount_fen if isinstance(body, SaleBody) else 0,
            total_fen=record.total_fen,
        ),
        tenders=tenders,
        member=None
        if member is None
        else MemberInfo(
            member.display_name, member.phone_masked, settings.points.tier_name(member.tier) if member.tier else None
        ),
        points=points,
        coupons=tuple(CouponUse(c.title, c.amount_off_fen) for c in body.coupons if c.amount_off_fen),
        # Only a sale has an e-receipt page: its link carries a token minted here, offline if need be.
        e_receipt_url=e_receipt_url(settings.e_receipt_template, record.id, settings.privacy.key_bytes())
        if isinstance(body, SaleBody)
        else None,
        footer=settings.receipt.footer,
        original_transaction_id=body.original_id if isinstance(body, RefundBody) else None,
        original_receipt_no=body.original_receipt_no if isinstance(body, RefundBody) else None,
        reason=body.reason if isinstance(body, RefundBody) else None,
        approved_by=body.approved_by,
        receipt_no=None if sale_or_refund is None else sale_or_refund.receipt_no,
        reprint=reprint,
    )


def _line(line: JournalLine | RefundedLine, refund: bool) -> ReceiptLine:
    list_price = line.qty * line.unit_price_fen
    amount = list_price if line.amount_fen is None else line.amount_fen  # a void's line never priced: list price
    return ReceiptLine(
        name=line.name,
        qty=line.qty,
        unit_price_fen=line.unit_price_fen,
        amount_fen=amount,
        discount_fen=0 if refund else list_price - amount,
    )


def _tender(tender: PaidTender | RefundTender) -> ReceiptTender:
    """Cash paid shows what was handed over, and the change; money given back shows the amount."""
    name = TENDER_NAMES_ZH.get(tender.kind, tender.kind)
    if isinstance(tender, PaidTender):
        paid = tender.tendered_fen if tender.kind == "cash" else tender.amount_fen
        return ReceiptTender(kind=name, amount_fen=paid, change_fen=tender.change_fen)
    return ReceiptTender(kind=name, amount_fen=tender.amount_fen, change_fen=0)
