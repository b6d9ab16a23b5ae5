"""The offline member cache: members and every identifier that finds them, kept in step with central's feed.

A page of the change feed is applied in one transaction with bulk statements (`executemany` on the driver),
so a first sync of a million members takes seconds, and a crash mid-page leaves the previous page's state and
cursor, never half a page.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from agent.clock import from_storage, to_storage, utcnow
from agent.db import reader
from agent.member_records import CachedCoupon, CachedMember
from agent.models import Member
from agent.pii import phone_hash
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


# A member new to the cache counts as seen when it arrives; after that only identification at this till moves it.
_UPSERT_MEMBER = """
INSERT INTO member (id, tier, points, display_name, phone_masked, version, updated_at, last_seen_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    tier = excluded.tier, points = excluded.points, display_name = excluded.display_name,
    phone_masked = excluded.phone_masked, version = excluded.version, updated_at = excluded.updated_at
"""
# An upsert carries the member's whole identifier set: drop the old set, then insert. An identifier that moved
# from another member (a re-issued card, say) is taken over by this one.
_CLEAR_IDENTIFIERS = "DELETE FROM member_identifier WHERE member_id = ?"
_INSERT_IDENTIFIER = """
INSERT INTO member_identifier (kind, value, member_id) VALUES (?, ?, ?)
ON CONFLICT (kind, value) DO UPDATE SET member_id = excluded.member_id
"""
# A coupon used at this till stays used until central's feed says so too (it may not have heard yet).
_UPSERT_COUPON = """
INSERT INTO coupon (code, member_id, title, kind, amount_off_fen, percent_off, threshold_fen, cap_fen,
                    valid_from, valid_until, usable_offline, used_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
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
_DELETE_MEMBER = "DELETE FROM member WHERE id = ?"
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


def _coupon_row(member_id: str, c: CachedCoupon) -> tuple:
    return (
        c.code,
        member_id,
        c.title,
        c.kind,
        c.amount_off_fen,
        c.percent_off,
        c.threshold_fen,
        c.cap_fen,
        to_storage(c.valid_from),
        to_storage(c.valid_until),
        c.usable_offline,
        c.used_at and to_storage(c.used_at),
    )


class MemberCache:
    def __init__(self, engine: sa.Engine, phone_hash_key: bytes | None):
        self.engine = engine
        self._phone_hash_key = phone_hash_key

    def apply(
        self, changes: Sequence[MemberChange], cursor: str | None = None, now: datetime | None = None
    ) -> ApplyResult:
        """Apply one page of the change feed and, in the same transaction, the cursor that follows it."""
        stamp = to_storage(now or utcnow())
        upserts = [c for c in changes if not c.deleted]
        tombstones = [(c.member_id,) for c in changes if c.deleted]
        with self.engine.begin() as connection:
            if upserts:
                connection.exec_driver_sql(
                    _UPSERT_MEMBER,
                    [
                        (c.member_id, c.tier, c.points, c.display_name, c.phone_masked, c.version, stamp, stamp)
                        for c in upserts
                    ],
                )
                connection.exec_driver_sql(_CLEAR_IDENTIFIERS, [(c.member_id,) for c in upserts])
                identifiers = [(kind, value, c.member_id) for c in upserts for kind, value in c.identifiers]
                if identifiers:
                    connection.exec_driver_sql(_INSERT_IDENTIFIER, identifiers)
                coupons = [_coupon_row(c.member_id, coupon) for c in upserts for coupon in c.coupons]
                if coupons:
                    connection.exec_driver_sql(_UPSERT_COUPON, coupons)
            if tombstones:
                connection.exec_driver_sql(_DELETE_MEMBER, tombstones)
            if cursor is not None:
                connection.exec_driver_sql(_SAVE_CURSOR, (CURSOR_KEY, cursor, stamp))
        return ApplyResult(upserted=len(upserts), deleted=len(tombstones))

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

    async def aapply(self, changes: Sequence[MemberChange], cursor: str | None = None) -> ApplyResult:
        return await asyncio.to_thread(self.apply, changes, cursor)

    async def amark_seen(self, member_id: str) -> None:
        await asyncio.to_thread(self.mark_seen, member_id)
