"""The journal bodies of the till's transactions, built through the wire contract's types: a sale's from the paid
`Sale`, a void's from the cancelled one, a refund's from its plan and the sale's own body.

Pure: no database, no clock, no network. Each model writes exactly the JSON the journal hashes (central/contract.py,
"transactions"): these functions decide only what goes in.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from agent.journal import JournalEntry
from agent.sale import Sale, SaleLine, Tender
from central.contract import (
    BodyMember,
    JournalLine,
    PaidTender,
    RefundBody,
    RefundedLine,
    RefundTender,
    SaleBody,
    SoldLine,
    UsedCoupon,
    VoidBody,
)

VOID_REASON = "sale cancelled at the till"


def sale_body(sale: Sale, excluded_categories: Collection[str]) -> SaleBody:
    """A paid sale: priced, with its receipt number. Lines in `excluded_categories` earn no points."""
    pricing = sale.pricing
    assert pricing is not None, "a sale is paid, so journaled, only once its basket is priced"
    assert sale.receipt_no is not None, "a sale gets its receipt number as it is journaled"
    points = sale.points()
    return SaleBody(
        receipt_no=sale.receipt_no,
        online=sale.online,
        guide_id=sale.guide_id,
        lines=[_sold(line, line.category not in excluded_categories) for line in sale.lines],
        tenders=[_paid(tender) for tender in sale.tenders],
        coupons=[UsedCoupon(code=c.code, title=c.title, amount_off_fen=c.amount_off_fen) for c in sale.coupons],
        subtotal_fen=pricing.subtotal_fen,
        tier_discount_fen=pricing.tier_discount_fen,
        discount_fen=pricing.discount_fen,
        points_value_fen=pricing.points_value_fen,
        member=None
        if sale.member is None
        else BodyMember(
            display_name=sale.member.display_name,
            tier=sale.member.tier,
            phone_masked=sale.member.phone_masked,
            via=sale.member.via,
        ),
        points_balance=None if points is None else points.balance,
        approved_by=sale.price_approved_by,
    )


def sale_entry(sale: Sale, excluded_categories: Collection[str]) -> JournalEntry:
    """The journal row of a paid sale: its body, total and the member's points."""
    body = sale_body(sale, excluded_categories)
    pricing, member_id = sale.pricing, sale.member.id if sale.member else None
    assert pricing is not None
    return JournalEntry(
        kind="sale",
        id=sale.id,
        total_fen=pricing.amount_due_fen,
        body=body,
        member_id=member_id,
        points_earned=pricing.points_earned if member_id else 0,
        points_redeemed=pricing.points_redeemed if member_id else 0,
    )


def void_entry(sale: Sale, approved_by: str | None = None) -> JournalEntry:
    """The journal row of a sale cancelled after money moved: what was taken and given back, no points."""
    member_id = sale.member.id if sale.member else None
    body = void_body(sale, approved_by)
    return JournalEntry(kind="void", id=sale.id, total_fen=sale.paid_fen, body=body, member_id=member_id)


def void_body(sale: Sale, approved_by: str | None = None) -> VoidBody:
    """A sale cancelled after money moved: what was taken (given back as the sale is cancelled)."""
    return VoidBody(
        lines=[JournalLine.model_validate(line, from_attributes=True) for line in sale.lines],
        tenders=[_paid(tender) for tender in sale.tenders],
        coupons=[],
        reason=VOID_REASON,
        online=sale.online,
        approved_by=approved_by,
    )


def refund_body(
    sale_id: str,
    sale: SaleBody,
    ordinal: int,
    reason: str | None,
    online: bool,
    lines: Sequence[Mapping[str, Any]],
    tenders: Sequence[Mapping[str, Any]],
    points_balance: int | None,
    approved_by: str | None = None,
) -> RefundBody:
    """Refund number `ordinal` of the sale `sale_id`: its planned lines and the parts of money given back (code parts
    with central's answer), and the member's balance after it (None without a member)."""
    refunded = [RefundedLine.model_validate(line) for line in lines]
    return RefundBody(
        original_id=sale_id,
        original_receipt_no=sale.receipt_no,
        receipt_no=f"R{sale.receipt_no or sale_id[:8]}-{ordinal}",
        reason=reason,
        online=online,
        lines=refunded,
        tenders=[RefundTender.model_validate(tender) for tender in tenders],
        coupons=[],
        subtotal_fen=sum(line.amount_fen for line in refunded),
        member=sale.member,
        points_balance=points_balance,
        approved_by=approved_by,
    )


def _sold(line: SaleLine, earns_points: bool) -> SoldLine:
    assert line.amount_fen is not None, "pricing gives every line of a priced sale its amount"
    return SoldLine(
        sku=line.sku,
        name=line.name,
        qty=line.qty,
        unit_price_fen=line.unit_price_fen,
        category=line.category,
        amount_fen=line.amount_fen,
        earns_points=earns_points,
        list_price_fen=line.list_price_fen if line.overridden else None,
    )


def _paid(tender: Tender) -> PaidTender:
    return PaidTender.model_validate(tender, from_attributes=True)
