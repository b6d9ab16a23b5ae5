"""The member card: tiers, the points ledger and coupons.

Points live only in ledger entries; a balance is their sum (`feed.balances`). Every entry and coupon change
touches the member, so the new balance reaches every till through the change feed.
"""

from __future__ import annotations

import secrets
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session

from central import feed
from central.errors import Invalid, NotFound
from central.models import Coupon, LedgerEntry, Member

TIERS = ("normal", "silver", "gold", "platinum")
COUPON_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def book(
    session: Session, member_id: str, kind: str, points: int, source: str, now: datetime, store_id: str | None = None
) -> bool:
    """Add one ledger entry unless (source, member, kind) is booked already; True when added.

    The unique key on those three columns is the guarantee; the check only avoids raising on a replay.
    """
    if points == 0:
        return False
    table = LedgerEntry.__table__
    exists = session.execute(
        sa.select(table.c.id).where(
            table.c.transaction_id == source, table.c.member_id == member_id, table.c.kind == kind
        )
    ).first()
    if exists is not None:
        return False
    session.execute(
        sa.insert(table).values(
            member_id=member_id, kind=kind, points=points, transaction_id=source, store_id=store_id, created_at=now
        )
    )
    feed.touch(session, member_id)
    return True


def set_tier(session: Session, member_id: str, tier: str) -> None:
    if tier not in TIERS:
        raise Invalid(f"unknown tier {tier!r}; one of {', '.join(TIERS)}")
    member = session.get(Member, member_id)
    if member is None or member.deleted:
        raise NotFound(f"no member {member_id}")
    member.tier = tier
    feed.touch(session, member_id)


def new_coupon_code() -> str:
    """`CP` + 10 of [0-9A-Z]: the coupon pattern the demo store's scanners are set up for."""
    return "CP" + "".join(secrets.choice(COUPON_ALPHABET) for _ in range(10))


def issue_coupon(session: Session, member_id: str, coupon: Coupon) -> Coupon:
    """Give `coupon` (its code, terms and validity filled in) to a live member."""
    member = session.get(Member, member_id)
    if member is None or member.deleted:
        raise NotFound(f"no member {member_id}")
    if coupon.valid_until <= coupon.valid_from:
        raise Invalid("a coupon's valid_until must come after its valid_from")
    if coupon.kind not in ("amount_off", "percent_off"):
        raise Invalid("coupon kind must be amount_off or percent_off")
    coupon.member_id = member_id
    session.add(coupon)
    feed.touch(session, member_id)
    return coupon


def use_coupons(session: Session, codes: list[str], transaction_id: str, at: datetime) -> None:
    """Mark coupons redeemed by a transaction. A code central does not know, or one already used, does not
    stop the transaction: the sale happened at the till (an offline double use shows in `used_in_transaction`)."""
    if not codes:
        return
    table = Coupon.__table__
    rows = session.execute(
        sa.select(table.c.code, table.c.member_id).where(table.c.code.in_(codes), table.c.used_at.is_(None))
    ).all()
    for code, member_id in rows:
        session.execute(
            sa.update(table).where(table.c.code == code).values(used_at=at, used_in_transaction=transaction_id)
        )
        feed.touch(session, member_id)
