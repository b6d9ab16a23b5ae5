"""Transactions: idempotent ingestion of journal rows, and the day summary stores reconcile against.

A batch is one database transaction. Each row is judged on its own (accepted, duplicate, rejected with a
reason); a row is stored once by its id, and its points are booked as ledger entries whose unique key
(transaction id, member, kind) makes booking twice impossible even if a duplicate slipped past the id check.
A batch that was committed but whose answer was lost is answered `duplicate` row by row when it comes again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import Session

from central import card, contract, feed, identity
from central.errors import TooLarge
from central.models import LedgerEntry, Transaction
from central.payments import brand_cards, cards


def ingest(
    session: Session, store_id: str, rows: Sequence[Any], now: datetime, member_card: str = "legacy"
) -> contract.BatchResult:
    """Judge and store a batch of journal rows (raw JSON values) for `store_id`, then commit. `member_card` is the
    `wechat_member_card` setting: which WeChat member card the entries' pushes are queued for."""
    if len(rows) > contract.MAX_BATCH_SIZE:
        raise TooLarge(
            f"a batch holds at most {contract.MAX_BATCH_SIZE} transactions, this one {len(rows)}; send smaller batches",
            code="batch_too_large",
        )
    parsed = [_parse(raw) for raw in rows]
    if any(isinstance(row, contract.TransactionIn) and (row.member_id or row.body.coupons) for row in parsed):
        feed.lock(session)  # points or coupons: members change, in the feed's one order
    else:
        _lock_store(session, store_id)  # members untouched: only this store's batches wait for each other
    ids = [row.id for row in parsed if isinstance(row, contract.TransactionIn)]
    table = Transaction.__table__
    stored: dict[str, sa.Row] = {}
    if ids:
        stored = {
            row.id: row
            for row in session.execute(
                sa.select(table.c.id, table.c.store_id, *_FINGERPRINT).where(table.c.id.in_(ids))
            )
        }

    results: list[contract.RowResult] = []
    new_rows: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    coupon_uses: list[tuple[list[str], str, datetime]] = []
    touched: list[str] = []  # members whose balance the answer reports
    seen: dict[str, tuple] = {}  # id -> fingerprint, for rows repeated inside this batch
    for raw, row in zip(rows, parsed, strict=True):
        if isinstance(row, contract.RowResult):
            results.append(row)
            continue
        previous = stored.get(row.id)
        if previous is not None and previous.store_id != store_id:
            results.append(_rejected(row.id, "other_store", "this id is another store's transaction"))
            continue
        known = tuple(previous[2:]) if previous is not None else seen.get(row.id)
        if known is not None:
            if known != _fingerprint(row):
                results.append(_rejected(row.id, "id_conflict", "this id was stored with different amounts or hash"))
                continue
            results.append(contract.RowResult(id=row.id, status="duplicate"))
            if (member_id := row.member_id) and (member := identity.resolve(session, member_id)) is not None:
                touched.append(member.id)
            continue
        if problem := _negative(row):
            results.append(_rejected(row.id, "negative_amount", problem))
            continue
        member = None
        if row.member_id is not None:
            member = identity.resolve(session, row.member_id)
            if member is None:
                results.append(_rejected(row.id, "unknown_member", f"central has no member {row.member_id}"))
                continue

        seen[row.id] = _fingerprint(row)
        # The body is stored as sent (extra fields included), not as the model would write it again.
        new_rows.append(
            dict(
                id=row.id,
                store_id=store_id,
                station_id=row.station_id,
                kind=row.kind,
                business_day=row.business_day,
                created_at=row.created_at,
                member_id=row.member_id,
                total_fen=row.total_fen,
                points_earned=row.points_earned,
                points_redeemed=row.points_redeemed,
                body=raw["body"],
                prev_hash=row.prev_hash,
                hash=row.hash,
                received_at=now,
            )
        )
        if member is not None:
            entries.extend(_entries(row, member.id, store_id, now))
            touched.append(member.id)
            feed.touch(session, member.id)
        if row.body.coupons:
            coupon_uses.append(([c.code for c in row.body.coupons], row.id, row.created_at))
        results.append(contract.RowResult(id=row.id, status="accepted"))

    if new_rows:
        session.execute(sa.insert(table), new_rows)
    if entries:
        session.execute(sa.insert(LedgerEntry.__table__), entries)
        # Members with a WeChat member card get a push per entry, queued in this same transaction.
        sources = {entry["transaction_id"] for entry in entries}
        if member_card == "legacy":
            cards.enqueue(session, sources, now)
        elif member_card == "brand":
            brand_cards.enqueue(session, sources, now)
    for codes, transaction_id, at in coupon_uses:
        card.use_coupons(session, codes, transaction_id, at)
    points = feed.balances(session, touched)
    session.commit()
    return contract.BatchResult(
        results=results, balances=[contract.Balance(member_id=m, points=p) for m, p in points.items()]
    )


def _lock_store(session: Session, store_id: str) -> None:
    """Serialize this store's batches without holding up other stores' (PostgreSQL: a transaction advisory lock on
    the store; SQLite's writers queue anyway): the same batch sent twice at once, through two replicas, is then
    stored by one and answered `duplicate` by the other instead of failing on the primary key."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"ingest:{store_id}".encode()).digest()[:8], "big", signed=True)
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))


_FINGERPRINT = [
    Transaction.__table__.c[name]
    for name in (
        "station_id",
        "kind",
        "business_day",
        "member_id",
        "total_fen",
        "points_earned",
        "points_redeemed",
        "hash",
    )
]


def _fingerprint(row: contract.TransactionIn) -> tuple:
    """What must be equal for a row with a known id to be a duplicate rather than a conflict."""
    return (
        row.station_id,
        row.kind,
        row.business_day,
        row.member_id,
        row.total_fen,
        row.points_earned,
        row.points_redeemed,
        row.hash,
    )


def _parse(raw: Any) -> contract.TransactionIn | contract.RowResult:
    row_id = raw.get("id") if isinstance(raw, Mapping) and isinstance(raw.get("id"), str) else None
    try:
        return contract.TransactionIn.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}" for e in exc.errors()[:5])
        return _rejected(row_id, "malformed", problems)


def _rejected(row_id: str | None, reason: contract.RejectReason, message: str) -> contract.RowResult:
    return contract.RowResult(id=row_id, status="rejected", reason=reason, message=message)


def _negative(row: contract.TransactionIn) -> str | None:
    if row.kind != "sale":
        return None
    for name in ("total_fen", "points_earned", "points_redeemed"):
        if getattr(row, name) < 0:
            return f"a sale with negative {name} ({getattr(row, name)})"
    for tender in row.body.tenders:
        if tender.amount_fen < 0:
            return f"a sale with a negative {tender.kind} tender ({tender.amount_fen})"
    return None


def _entries(row: contract.TransactionIn, member_id: str, store_id: str, now: datetime) -> list[dict[str, Any]]:
    """A sale earns and spends points; a refund or void gives them back the other way (whatever sign the
    row's amounts carry, since a refund states what is given back)."""
    if row.kind == "sale":
        earned, redeemed = row.points_earned, -row.points_redeemed
    else:
        earned, redeemed = -abs(row.points_earned), abs(row.points_redeemed)
    return [
        dict(member_id=member_id, kind=kind, points=points, transaction_id=row.id, store_id=store_id, created_at=now)
        for kind, points in (("earn", earned), ("redeem", redeemed))
        if points != 0
    ]


# --- day summary ---------------------------------------------------------------------------------------------


def digest(rows: Sequence[tuple[str, int]]) -> str:
    """sha256 hex over `"\\n".join(f"{id}:{total_fen}")` of (id, total_fen) pairs sorted by id (see contract)."""
    text = "\n".join(f"{row_id}:{total}" for row_id, total in sorted(rows))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def day_summary(
    session: Session,
    store_id: str,
    business_day: date,
    station_id: str | None = None,
    payments: contract.PaymentsCheck | None = None,
) -> contract.DaySummary:
    """The summary of a store's (or station's) business day; `payments`, the check of its code payments, goes with it."""
    table = Transaction.__table__
    query = sa.select(
        table.c.id,
        table.c.station_id,
        table.c.kind,
        table.c.total_fen,
        table.c.points_earned,
        table.c.points_redeemed,
        table.c.body,
    ).where(table.c.store_id == store_id, table.c.business_day == business_day)
    if station_id is not None:
        query = query.where(table.c.station_id == station_id)
    # Sorted here, not by the database: PostgreSQL collations need not sort by code point.
    rows = sorted(session.execute(query).all(), key=lambda row: row.id)
    tenders: dict[str, int] = {}
    for row in rows:
        for tender in contract.TransactionBody.model_validate(row.body).tenders:
            tenders[tender.kind] = tenders.get(tender.kind, 0) + tender.amount_fen
    return contract.DaySummary(
        store_id=store_id,
        business_day=business_day,
        station_id=station_id,
        count=len(rows),
        total_fen=sum(row.total_fen for row in rows),
        tenders=dict(sorted(tenders.items())),
        points_earned=sum(row.points_earned for row in rows),
        points_redeemed=sum(row.points_redeemed for row in rows),
        digest=digest([(row.id, row.total_fen) for row in rows]),
        transactions=[
            contract.TransactionAmount(
                id=row.id,
                station_id=row.station_id,
                kind=row.kind,
                total_fen=row.total_fen,
                points_earned=row.points_earned,
                points_redeemed=row.points_redeemed,
            )
            for row in rows
        ],
        payments=payments,
    )
