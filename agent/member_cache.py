"""The offline member cache: members and every identifier that finds them, kept in step with central's feed.

A batch of the change feed (a page, or several during a long sync) is applied in one transaction, one statement
per table with the batch's rows as one JSON array, so a first sync of a million members takes seconds, and a
crash mid-way leaves the state and cursor of the last transaction, never half of one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from agent.clock import from_storage, to_storage, utcnow
from agent.db import reader
from agent.member_records import CachedCoupon, CachedMember
from agent.models import Member
from agent.pii import phone_hash
from central import contract
from central.contract import IDENTIFIER_KIND_PATTERN

log = logging.getLogger(__name__)

_member = Member.metadata.tables["member"]

IDENTIFIER_KIND = re.compile(IDENTIFIER_KIND_PATTERN)
CURSOR_KEY = "member_feed_cursor"


class UnknownIdentifierKind(ValueError):
    pass


class PhoneLookupUnavailable(Exception):
    """No phone hash key is configured, so a phone number cannot be matched."""


@dataclass(frozen=True, slots=True)
class MemberChange:
    """One entry of the member change feed: an upsert with the member's full identifier set, or a tombstone."""

    member_id: str
    version: int
    deleted: bool = False
    tier: str = ""
    points: int = 0
    display_name: str = ""
    phone_masked: str | None = None
    identifiers: tuple[tuple[str, str], ...] = ()
    coupons: tuple[CachedCoupon, ...] = ()


@dataclass(frozen=True, slots=True)
class ApplyResult:
    upserted: int
    deleted: int


@dataclass(frozen=True, slots=True)
class ChangeRows:
    """Changes of the feed as the rows the cache writes (`MemberCache.rows`), each member once, in feed order.

    What a sync keeps of a page while it waits to be applied: plain tuples take a quarter of the memory of the
    page's models (1 MB against 4 for 1,000 members), and a long sync holds two batches of pages at a time.
    """

    members: list[tuple[str, str, int, str, str | None, int]]  # id, tier, points, display_name, phone_masked, version
    identifiers: list[tuple[str, str, str]]  # kind, value, member id
    coupons: list[tuple[Any, ...]]  # the coupon table's columns, member id second (`_coupon_row`)
    deleted: list[str]  # member ids

    def __len__(self) -> int:
        return len(self.members) + len(self.deleted)


def _columns(count: int) -> str:
    """The columns of one row of a JSON array of rows, as `json_each(?) AS j` walks it: `j.value` is the row."""
    return ", ".join(f"json_extract(j.value, '$[{n}]')" for n in range(count))


# Each statement takes a whole batch as one JSON array of rows (json_each): SQLite does a batch's work for a table
# in one call. Row by row (executemany), Python's GIL changes hands at every row, and each time waits for the
# event loop's thread, busy parsing the next page: that, more than the writing, was the time a first sync took.
# `WHERE true` lets SQLite tell the upsert's ON CONFLICT from a join's ON; ORDER BY j.key keeps the batch's order.

# A member new to the cache counts as seen when it arrives; after that only identification at this till moves it.
_UPSERT_MEMBERS = f"""
INSERT INTO member (id, tier, points, display_name, phone_masked, version, updated_at, last_seen_at)
SELECT {_columns(6)}, ?2, ?2 FROM json_each(?1) AS j WHERE true ORDER BY j.key
ON CONFLICT (id) DO UPDATE SET
    tier = excluded.tier, points = excluded.points, display_name = excluded.display_name,
    phone_masked = excluded.phone_masked, version = excluded.version, updated_at = excluded.updated_at
"""
# An upsert carries the member's whole identifier set: drop the old set, then insert. An identifier that moved
# from another member (a re-issued card, say) is taken over by this one; within a batch, by the last to hold it.
_CLEAR_IDENTIFIERS = "DELETE FROM member_identifier WHERE member_id IN (SELECT j.value FROM json_each(?) AS j)"
_INSERT_IDENTIFIERS = f"""
INSERT INTO member_identifier (kind, value, member_id)
SELECT {_columns(3)} FROM json_each(?) AS j WHERE true ORDER BY j.key
ON CONFLICT (kind, value) DO UPDATE SET member_id = excluded.member_id
"""
# A coupon used at this till stays used until central's feed says so too (it may not have heard yet).
_UPSERT_COUPONS = f"""
INSERT INTO coupon (code, member_id, title, kind, amount_off_fen, percent_off, threshold_fen, cap_fen,
                    valid_from, valid_until, usable_offline, used_at)
SELECT {_columns(12)} FROM json_each(?) AS j WHERE true ORDER BY j.key
ON CONFLICT (code) DO UPDATE SET
    member_id = excluded.member_id, title = excluded.title, kind = excluded.kind,
    amount_off_fen = excluded.amount_off_fen, percent_off = excluded.percent_off,
    threshold_fen = excluded.threshold_fen, cap_fen = excluded.cap_fen, valid_from = excluded.valid_from,
    valid_until = excluded.valid_until, usable_offline = excluded.usable_offline,
    used_at = COALESCE(coupon.used_at, excluded.used_at)
"""
_COUPON_COLUMNS = "code, title, kind, amount_off_fen, percent_off, threshold_fen, cap_fen, valid_from, valid_until, usable_offline, used_at"


def _coupon(row: sa.Row) -> CachedCoupon:
    # The columns of _COUPON_COLUMNS, in order; a query may select more after them.
    code, title, kind, amount_off, percent_off, threshold, cap, valid_from, valid_until, offline, used_at = row[:11]
    return CachedCoupon(
        code,
        title,
        kind,
        amount_off,
        percent_off,
        threshold,
        cap,
        from_storage(valid_from),
        from_storage(valid_until),
        bool(offline),
        used_at and from_storage(used_at),
    )


# Identifiers and coupons go with the member (ON DELETE CASCADE).
_DELETE_MEMBERS = "DELETE FROM member WHERE id IN (SELECT j.value FROM json_each(?) AS j)"
_SAVE_CURSOR = """
INSERT INTO sync_state (key, value, updated_at) VALUES (?, ?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at
"""
_LOOKUP = """
SELECT m.id, m.tier, m.points, m.display_name, m.phone_masked, m.version
FROM member_identifier AS i JOIN member AS m ON m.id = i.member_id
WHERE i.kind = ? AND i.value = ?
"""


# Personal data of a member: the name, the masked phone, and the identifiers that stand for a person (the phone's
# hash, WeChat/Alipay ids). Kept: id, tier, points, coupons and card numbers, so a member code or a card still
# identifies the member offline; the feed or an online lookup brings the rest back.
_PERSONAL_KIND = "kind <> 'card_no'"
# Walked in rowid order from where the last batch ended, so members already purged are passed over once.
_HOLDS_PERSONAL_DATA = f"""
SELECT m.rowid, m.id FROM member AS m
WHERE m.rowid > ? AND COALESCE(m.last_seen_at, m.updated_at) < ?
  AND (m.display_name <> '' OR m.phone_masked IS NOT NULL
       OR EXISTS (SELECT 1 FROM member_identifier AS i WHERE i.member_id = m.id AND i.{_PERSONAL_KIND}))
ORDER BY m.rowid
LIMIT ?
"""
# Seen once a day is precise enough for a retention counted in months, and spares a write at most identifications.
SEEN_RESOLUTION = timedelta(days=1)


# The page cache while a batch of changes is applied (SQLite's default is 2 MiB). Identifiers are hashes and
# openids: each change writes to pages all over the identifier table and its index, and with a small cache
# every page written is evicted and read back many times within the same transaction.
APPLY_CACHE_KIB = 64 * 1024


@contextmanager
def _page_cache(connection: sa.Connection, kib: int) -> Iterator[None]:
    """This connection's page cache at `kib` KiB for the block, then back to what it was (its memory freed)."""
    before = connection.exec_driver_sql("PRAGMA cache_size").scalar_one()
    connection.exec_driver_sql(f"PRAGMA cache_size = -{int(kib)}")
    try:
        yield
    finally:
        connection.exec_driver_sql(f"PRAGMA cache_size = {int(before)}")


def _json(rows: list) -> str:
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":"))


def _coupon_row(member_id: str, c: CachedCoupon | contract.Coupon, times: dict[datetime, str]) -> tuple:
    """The coupon table's row; `times` keeps the text of times already written (a campaign's coupons share them)."""
    return (
        c.code,
        member_id,
        c.title,
        c.kind,
        c.amount_off_fen,
        c.percent_off,
        c.threshold_fen,
        c.cap_fen,
        times.get(c.valid_from) or times.setdefault(c.valid_from, to_storage(c.valid_from)),
        times.get(c.valid_until) or times.setdefault(c.valid_until, to_storage(c.valid_until)),
        c.usable_offline,
        c.used_at and to_storage(c.used_at),
    )


def _merge(batches: Sequence[ChangeRows]) -> ChangeRows:
    """One `ChangeRows` of consecutive ones: a member's rows from the last that holds it, where they stand there."""
    last: dict[str, int] = {}
    for n, batch in enumerate(batches):
        last.update(dict.fromkeys([m[0] for m in batch.members], n))
        last.update(dict.fromkeys(batch.deleted, n))
    merged = ChangeRows([], [], [], [])
    every = len(last) == sum(len(batch) for batch in batches)  # no member twice: the usual case, nothing to drop
    for n, batch in enumerate(batches):
        merged.members.extend(batch.members if every else [m for m in batch.members if last[m[0]] == n])
        merged.identifiers.extend(batch.identifiers if every else [i for i in batch.identifiers if last[i[2]] == n])
        merged.coupons.extend(batch.coupons if every else [c for c in batch.coupons if last[c[1]] == n])
        merged.deleted.extend(batch.deleted if every else [d for d in batch.deleted if last[d] == n])
    return merged


class MemberCache:
    def __init__(self, engine: sa.Engine, phone_hash_key: bytes | None):
        self.engine = engine
        self._phone_hash_key = phone_hash_key

    @staticmethod
    def rows(changes: Sequence[MemberChange | contract.MemberChange]) -> ChangeRows:
        """The rows `changes` write: the cache's own `MemberChange`s or the feed's `contract.MemberChange`s as the
        sync receives them. Each change is a member's whole state, so only a member's last change counts, where it
        stands in the feed: its older identifier set must not be inserted beside the newer one."""
        latest: dict[str, MemberChange | contract.MemberChange] = {}
        for change in changes:
            latest.pop(change.member_id, None)
            latest[change.member_id] = change
        rows = ChangeRows([], [], [], [])
        times: dict[datetime, str] = {}
        for c in latest.values():
            if c.deleted:
                rows.deleted.append(c.member_id)
                continue
            rows.members.append((c.member_id, c.tier, c.points, c.display_name, c.phone_masked, c.version))
            if isinstance(c, MemberChange):
                rows.identifiers.extend([(kind, value, c.member_id) for kind, value in c.identifiers])
            else:
                rows.identifiers.extend([(i.kind, i.value, c.member_id) for i in c.identifiers])
            rows.coupons.extend([_coupon_row(c.member_id, coupon, times) for coupon in c.coupons])
        return rows

    def apply(
        self,
        changes: Sequence[MemberChange | contract.MemberChange],
        cursor: str | None = None,
        now: datetime | None = None,
    ) -> ApplyResult:
        """Apply changes of the feed, in feed order, and in the same transaction the cursor that follows them."""
        return self.apply_rows([self.rows(changes)], cursor, now)

    def apply_rows(
        self, batches: Sequence[ChangeRows], cursor: str | None = None, now: datetime | None = None
    ) -> ApplyResult:
        """Apply the rows of consecutive stretches of the feed (`rows`) in one transaction, with the cursor that
        follows the last. A member changed while a sync was under way can be in two of them: its last counts."""
        stamp = to_storage(now or utcnow())
        rows = batches[0] if len(batches) == 1 else _merge(batches)
        with self.engine.begin() as connection, _page_cache(connection, APPLY_CACHE_KIB):
            if rows.members:
                connection.exec_driver_sql(_UPSERT_MEMBERS, (_json(rows.members), stamp))
                connection.exec_driver_sql(_CLEAR_IDENTIFIERS, (_json([m[0] for m in rows.members]),))
            if rows.identifiers:
                connection.exec_driver_sql(_INSERT_IDENTIFIERS, (_json(rows.identifiers),))
            if rows.coupons:
                connection.exec_driver_sql(_UPSERT_COUPONS, (_json(rows.coupons),))
            if rows.deleted:
                connection.exec_driver_sql(_DELETE_MEMBERS, (_json(rows.deleted),))
            if cursor is not None:
                connection.exec_driver_sql(_SAVE_CURSOR, (CURSOR_KEY, cursor, stamp))
        return ApplyResult(upserted=len(rows.members), deleted=len(rows.deleted))

    def coupons(self, member_id: str) -> list[CachedCoupon]:
        with reader(self.engine) as connection:
            rows = connection.exec_driver_sql(
                f"SELECT {_COUPON_COLUMNS} FROM coupon WHERE member_id = ? ORDER BY valid_until", (member_id,)
            ).all()
        return [_coupon(row) for row in rows]

    def coupon(self, code: str) -> tuple[str | None, CachedCoupon] | None:
        """The coupon with this code and the member it was issued to, or None if the till does not know it."""
        with reader(self.engine) as connection:
            row = connection.exec_driver_sql(
                f"SELECT {_COUPON_COLUMNS}, member_id FROM coupon WHERE code = ?", (code,)
            ).first()
        return None if row is None else (row[11], _coupon(row))

    def mark_coupons_used(self, codes: Sequence[str], at: datetime, connection: sa.Connection | None = None) -> None:
        """Coupons used at this till stay used here until central's feed says so too. With `connection`, inside
        the caller's transaction (the sale's journal row)."""
        if not codes:
            return
        if connection is None:
            with self.engine.begin() as own:
                self.mark_coupons_used(codes, at, own)
            return
        connection.exec_driver_sql(
            "UPDATE coupon SET used_at = ? WHERE code = ? AND used_at IS NULL",
            [(to_storage(at), code) for code in codes],
        )

    @staticmethod
    def set_points(connection: sa.Connection, balances: Sequence[tuple[str, int]]) -> None:
        """Central's authoritative balances (member id, points), in the caller's transaction (the push that
        confirmed the rows they follow from)."""
        if balances:
            connection.execute(
                sa.update(_member).where(_member.c.id == sa.bindparam("member")).values(points=sa.bindparam("points")),
                [{"member": member_id, "points": points} for member_id, points in balances],
            )

    def lookup(self, kind: str, value: str) -> CachedMember | None:
        """The member holding identifier (kind, value), in one indexed query."""
        if not IDENTIFIER_KIND.match(kind):
            raise UnknownIdentifierKind(
                f"unknown identifier kind {kind!r}; use unionid, card_no, phone_hash or openid:<appid>"
            )
        with reader(self.engine) as connection:
            row = connection.exec_driver_sql(_LOOKUP, (kind, value)).first()
        return None if row is None else CachedMember(*row)

    def get(self, member_id: str) -> CachedMember | None:
        with reader(self.engine) as connection:
            row = connection.exec_driver_sql(
                "SELECT id, tier, points, display_name, phone_masked, version FROM member WHERE id = ?", (member_id,)
            ).first()
        return None if row is None else CachedMember(*row)

    def card_no(self, member_id: str) -> str | None:
        """The member's card number, the first when they hold several (the wallet shows it as a QR)."""
        with reader(self.engine) as connection:
            row = connection.exec_driver_sql(
                "SELECT value FROM member_identifier WHERE member_id = ? AND kind = 'card_no' ORDER BY value LIMIT 1",
                (member_id,),
            ).first()
        return None if row is None else row[0]

    def phone_hash(self, phone: str) -> str:
        """The keyed hash of a mobile number; raises pii.InvalidPhoneNumber or PhoneLookupUnavailable."""
        if self._phone_hash_key is None:
            raise PhoneLookupUnavailable(
                "members cannot be found by phone: set privacy.phone_hash_key (the central service's key)"
            )
        return phone_hash(self._phone_hash_key, phone)

    def lookup_phone(self, phone: str) -> CachedMember | None:
        """The member with this mobile number; raises pii.InvalidPhoneNumber for anything else."""
        return self.lookup("phone_hash", self.phone_hash(phone))

    def cursor(self) -> str | None:
        with reader(self.engine) as connection:
            return connection.exec_driver_sql("SELECT value FROM sync_state WHERE key = ?", (CURSOR_KEY,)).scalar()

    def mark_seen(self, member_id: str, at: datetime | None = None) -> None:
        """The member was identified at this till: their personal data stays for storage.member_retention_days more.
        Best effort: a write that fails (a busy or full disk) is logged and never stops the identification."""
        at = at or utcnow()
        try:
            with reader(self.engine) as connection:
                seen = connection.exec_driver_sql("SELECT last_seen_at FROM member WHERE id = ?", (member_id,)).scalar()
            if seen is not None and from_storage(seen) > at - SEEN_RESOLUTION:
                return
            with self.engine.begin() as connection:
                connection.exec_driver_sql(
                    "UPDATE member SET last_seen_at = ? WHERE id = ? AND (last_seen_at IS NULL OR last_seen_at < ?)",
                    (to_storage(at), member_id, to_storage(at)),
                )
        except sa.exc.OperationalError as exc:
            log.warning("member last-seen time not saved", extra={"error": str(exc.orig)})

    def purge_personal_data(self, not_seen_since: datetime, batch_size: int = 1000) -> int:
        """Drop the personal data of members not seen since then, `batch_size` members per transaction; how many."""
        purged, after = 0, 0
        while True:
            with self.engine.begin() as connection:
                found = connection.exec_driver_sql(
                    _HOLDS_PERSONAL_DATA, (after, to_storage(not_seen_since), batch_size)
                ).all()
                ids = [(member_id,) for _, member_id in found]
                if ids:
                    connection.exec_driver_sql(
                        "UPDATE member SET display_name = '', phone_masked = NULL WHERE id = ?", ids
                    )
                    connection.exec_driver_sql(
                        f"DELETE FROM member_identifier WHERE member_id = ? AND {_PERSONAL_KIND}", ids
                    )
            purged += len(ids)
            if len(found) < batch_size:
                return purged
            after = found[-1][0]

    def count(self) -> int:
        with reader(self.engine) as connection:
            return self.count_in(connection)

    @staticmethod
    def count_in(connection: sa.Connection) -> int:
        """Members in the cache, read in the caller's transaction (the station's figures, agent/station_figures.py)."""
        return connection.execute(sa.select(sa.func.count()).select_from(_member)).scalar_one()

    # --- the same, from the event loop: each hops to a worker thread, since a read may wait on the disk ----------

    async def acoupons(self, member_id: str) -> list[CachedCoupon]:
        return await asyncio.to_thread(self.coupons, member_id)

    async def acoupons_by_code(self, codes: Sequence[str]) -> dict[str, tuple[str | None, CachedCoupon]]:
        """The coupons with these codes the till knows, each with the member it was issued to."""

        def read() -> dict[str, tuple[str | None, CachedCoupon]]:
            return {code: found for code in codes if (found := self.coupon(code)) is not None}

        return await asyncio.to_thread(read) if codes else {}

    async def alookup(self, kind: str, value: str) -> CachedMember | None:
        return await asyncio.to_thread(self.lookup, kind, value)

    async def acard_no(self, member_id: str) -> str | None:
        return await asyncio.to_thread(self.card_no, member_id)

    async def aget(self, member_id: str) -> CachedMember | None:
        return await asyncio.to_thread(self.get, member_id)

    async def aapply(
        self, changes: Sequence[MemberChange | contract.MemberChange], cursor: str | None = None
    ) -> ApplyResult:
        return await asyncio.to_thread(self.apply, changes, cursor)

    async def amark_seen(self, member_id: str) -> None:
        await asyncio.to_thread(self.mark_seen, member_id)
