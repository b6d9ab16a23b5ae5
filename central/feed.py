"""The member change feed: every change to a member takes a new version from one global counter.

Write transactions call `lock()` first. On PostgreSQL that takes the counter row's lock until commit, so
writers that change members commit one after the other and a version never becomes visible after a higher
one (a reader at cursor 6 can never miss a 5 committed later). On SQLite BEGIN IMMEDIATE already serializes
writers. Taking the lock first, before any other row, also means two writers can never deadlock on it.

Code that changes a member calls `touch()`; the versions are handed out when the session commits (or earlier
with `assign_versions()`), so a change cannot reach the database without reaching the feed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session

from central import contract
from central.clock import utcnow
from central.db import CentralSession
from central.errors import CentralError
from central.models import Coupon, FeedCounter, LedgerEntry, Member, MemberIdentifier

_LOCKED = "central.feed.locked"
_TOUCHED = "central.feed.touched"


def lock(session: Session) -> None:
    """Serialize this write transaction with every other one that changes members (call it first)."""
    session.execute(sa.select(FeedCounter.value).where(FeedCounter.id == 1).with_for_update())
    session.info[_LOCKED] = True


def touch(session: Session, member_id: str) -> None:
    """Record that a member changed in this transaction: it gets a new version at commit."""
    session.info.setdefault(_TOUCHED, {})[member_id] = None  # a dict keeps first-touch order


def next_versions(session: Session, count: int) -> list[int]:
    """Take `count` new versions from the counter (the caller holds the lock)."""
    if not session.info.get(_LOCKED):
        raise RuntimeError("feed.lock(session) must come first in a transaction that changes members")
    top = session.execute(
        sa.update(FeedCounter)
        .where(FeedCounter.id == 1)
        .values(value=FeedCounter.value + count)
        .returning(FeedCounter.value)
    ).scalar_one()
    return list(range(top - count + 1, top + 1))


def assign_versions(session: Session, now: datetime | None = None) -> None:
    """Give every member touched so far its new version now."""
    touched = list(session.info.pop(_TOUCHED, {}))
    if not touched:
        return
    session.flush()
    versions = next_versions(session, len(touched))
    stamp = now or utcnow()
    table = Member.__table__
    session.execute(
        sa.update(table)
        .where(table.c.id == sa.bindparam("member_id"))
        .values(version=sa.bindparam("v"), updated_at=sa.bindparam("at")),
        [
            {"member_id": member_id, "v": version, "at": stamp}
            for member_id, version in zip(touched, versions, strict=True)
        ],
    )
    # ORM copies of these members now hold the old version: load them again when next used.
    changed = set(touched)
    for obj in list(session.identity_map.values()):
        if isinstance(obj, Member) and obj.id in changed:
            session.expire(obj)


def _before_commit(session: Session) -> None:
    assign_versions(session)


def _reset(session: Session, *_args) -> None:
    session.info.pop(_LOCKED, None)
    session.info.pop(_TOUCHED, None)


sa.event.listen(CentralSession, "before_commit", _before_commit)
sa.event.listen(CentralSession, "after_commit", _reset)
sa.event.listen(CentralSession, "after_rollback", _reset)


# --- reading the feed ----------------------------------------------------------------------------------------


class InvalidCursor(CentralError):
    code = "invalid_cursor"


def parse_cursor(cursor: str | None) -> int:
    """Cursors are opaque to clients; today they are the decimal version of the last change delivered."""
    if cursor is None or cursor == "":
        return 0
    # Versions are 64-bit database integers: a larger number cannot even be compared with one (SQLite raises).
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 19 or int(cursor) >= 2**63:
        raise InvalidCursor("cursor is not one this service handed out; start again without a cursor")
    return int(cursor)


def changes_page(session: Session, after: int, limit: int, now: datetime) -> contract.ChangesPage:
    table = Member.__table__
    rows = session.execute(
        sa.select(table).where(table.c.version > after).order_by(table.c.version).limit(limit + 1)
    ).all()
    has_more = len(rows) > limit
    rows = rows[:limit]
    changes = snapshots(session, rows, now)
    next_cursor = str(rows[-1].version if rows else after)
    return contract.ChangesPage(changes=changes, next_cursor=next_cursor, has_more=has_more)


def member_rows(session: Session, member_ids: Iterable[str]) -> list[sa.Row]:
    table = Member.__table__
    ids = list(dict.fromkeys(member_ids))
    if not ids:
        return []
    found = {row.id: row for row in session.execute(sa.select(table).where(table.c.id.in_(ids)))}
    return [found[i] for i in ids if i in found]


def snapshot(session: Session, member_id: str, now: datetime) -> contract.MemberChange | None:
    rows = member_rows(session, [member_id])
    return snapshots(session, rows, now)[0] if rows else None


def snapshots(session: Session, rows: Sequence[sa.Row], now: datetime) -> list[contract.MemberChange]:
    """The wire form of members (rows of the member table): full state for live ones, tombstones otherwise."""
    live = [row.id for row in rows if not row.deleted]
    identifiers: dict[str, list[contract.Identifier]] = {member_id: [] for member_id in live}
    coupons: dict[str, list[contract.Coupon]] = {member_id: [] for member_id in live}
    points = balances(session, live)
    if live:
        ident = MemberIdentifier.__table__
        for row in session.execute(
            sa.select(ident.c.member_id, ident.c.kind, ident.c.value)
            .where(ident.c.member_id.in_(live))
            .order_by(ident.c.kind, ident.c.value)
        ):
            identifiers[row.member_id].append(contract.Identifier(kind=row.kind, value=row.value))
        coupon = Coupon.__table__
        for row in session.execute(
            sa.select(coupon).where(coupon.c.member_id.in_(live), coupon.c.valid_until > now).order_by(coupon.c.code)
        ):
            coupons[row.member_id].append(
                contract.Coupon(
                    code=row.code,
                    title=row.title,
                    kind=row.kind,
                    amount_off_fen=row.amount_off_fen,
                    percent_off=row.percent_off,
                    threshold_fen=row.threshold_fen,
                    cap_fen=row.cap_fen,
                    valid_from=row.valid_from,
                    valid_until=row.valid_until,
                    usable_offline=row.usable_offline,
                    used_at=row.used_at,
                )
            )
    changes = []
    for row in rows:
        if row.deleted:
            changes.append(
                contract.MemberChange(member_id=row.id, version=row.version, deleted=True, merged_into=row.merged_into)
            )
        else:
            changes.append(
                contract.MemberChange(
                    member_id=row.id,
                    version=row.version,
                    tier=row.tier,
                    points=points.get(row.id, 0),
                    display_name=row.display_name,
                    phone_masked=row.phone_masked,
                    identifiers=identifiers[row.id],
                    coupons=coupons[row.id],
                )
            )
    return changes


def balances(session: Session, member_ids: Iterable[str]) -> dict[str, int]:
    """Points balance per member: the sum of the member's ledger entries (0 without any)."""
    ids = list(dict.fromkeys(member_ids))
    if not ids:
        return {}
    table = LedgerEntry.__table__
    sums = session.execute(
        sa.select(table.c.member_id, sa.func.sum(table.c.points))
        .where(table.c.member_id.in_(ids))
        .group_by(table.c.member_id)
    )
    result = dict.fromkeys(ids, 0)
    # PostgreSQL sums bigint as numeric (Decimal): points are whole numbers either way.
    result.update({member_id: int(total) for member_id, total in sums})
    return result
