"""The member change feed: every change to a member takes a new version from one global counter.

Write transactions call `lock()` first. On PostgreSQL that takes the counter row's lock until commit, so
writers that change members commit one after the other and a version never becomes visible after a higher
one (a reader at cursor 6 can never miss a 5 committed later). On SQLite BEGIN IMMEDIATE already serializes
writers. Taking the lock first, before any other row, also means two writers can never deadlock on it.

Code that changes a member calls `touch()`; the versions are handed out when the session commits (or earlier
with `assign_versions()`), so a change cannot reach the database without reaching the feed.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pydantic_core
import sqlalchemy as sa
from sqlmodel import Session

from central import contract
from central.clock import utcnow
from central.db import CentralSession, read_session
from central.errors import CentralError
from central.models import Coupon, FeedCounter, LedgerEntry, Member, MemberIdentifier

log = logging.getLogger(__name__)

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


@dataclass(frozen=True, slots=True)
class FeedPage:
    """One page of the change feed, already in its wire form: `body` is the JSON of a `contract.ChangesPage`.

    It stays the answer to its (cursor, limit) while the feed's head is still `head` (no member has changed since:
    every change takes a new version) and until `fresh_until`, when the first of its coupons expires and would
    drop out of it.
    """

    body: bytes
    next_cursor: str
    has_more: bool
    count: int
    head: int
    read_at: datetime
    fresh_until: datetime | None

    def answers(self, head: int, now: datetime) -> bool:
        return self.head >= head and self.read_at <= now and (self.fresh_until is None or now < self.fresh_until)


_member = Member.__table__
_ledger = LedgerEntry.__table__
_identifier = MemberIdentifier.__table__
_coupon = Coupon.__table__
# The fields of contract.Coupon, in its order: a page's JSON is written from them without the model.
_COUPON_FIELDS = tuple(contract.Coupon.model_fields)

# A member as the wire needs it, with its points balance (the sum of its ledger entries, by their member index).
_BALANCE = (
    sa.select(sa.cast(sa.func.coalesce(sa.func.sum(_ledger.c.points), 0), sa.BigInteger))
    .where(_ledger.c.member_id == _member.c.id)
    .scalar_subquery()
)
_MEMBER_COLUMNS = (
    _member.c.id,
    _member.c.version,
    _member.c.deleted,
    _member.c.merged_into,
    _member.c.tier,
    _member.c.display_name,
    _member.c.phone_masked,
    _BALANCE.label("points"),
)
_HEAD = sa.select(FeedCounter.value).where(FeedCounter.id == 1)
# Keyset pagination on the unique index of member.version: the same cost at any depth of the feed.
_PAGE = (
    sa.select(*_MEMBER_COLUMNS)
    .where(_member.c.version > sa.bindparam("after"))
    .order_by(_member.c.version)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
# A page's identifiers and coupons, by its members' ids (not by its version range, which on PostgreSQL is a join
# its planner may answer with a scan of the whole table, and whose rows a change in between could move away).
_IDENTIFIERS = (
    sa.select(_identifier.c.member_id, _identifier.c.kind, _identifier.c.value)
    .where(_identifier.c.member_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(_identifier.c.kind, _identifier.c.value)
)
_COUPONS = (
    sa.select(_coupon.c.member_id, *(_coupon.c[name] for name in _COUPON_FIELDS))
    .where(_coupon.c.member_id.in_(sa.bindparam("ids", expanding=True)), _coupon.c.valid_until > sa.bindparam("now"))
    .order_by(_coupon.c.code)
)


def head(session: Session) -> int:
    """The last version handed out: the feed's head."""
    return session.execute(_HEAD).scalar_one()


def changes_page(session: Session, after: int, limit: int, now: datetime) -> FeedPage:
    """Members changed after version `after`, at most `limit` of them, in version order.

    The page is written straight from the rows as JSON, byte for byte what `contract.ChangesPage.model_dump_json()`
    prints (tests/central/test_feed_pages.py): a first sync reads every member, and building then serializing a
    model per member, identifier and coupon was most of what a page cost. Each member is written as soon as it is
    put together, and the page is their JSON joined: no structure of the whole page stays alive for Python's
    cycle collector to walk again and again while it is built.
    """
    at_head = head(session)  # first: the rows read next are at least this recent
    rows = session.execute(_PAGE, {"after": after, "limit": limit + 1}).all()
    has_more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = str(rows[-1].version if rows else after)
    identifiers, coupons = _held_by(session, rows, now)
    members = b",".join([pydantic_core.to_json(m) for m in _wire_members(rows, identifiers, coupons)])
    body = b'{"changes":[%b],"next_cursor":%b,"has_more":%b}' % (
        members,
        pydantic_core.to_json(next_cursor),
        pydantic_core.to_json(has_more),
    )
    expires = min((row.valid_until for row in coupons), default=None)
    return FeedPage(body, next_cursor, has_more, len(rows), at_head, now, expires)


class PageCache:
    """Pages of the feed as built, for the next store that asks for the same one, and the next page built ahead.

    A store's first sync reads the whole feed one page after the other, and it can only ask for a page once it has
    read the cursor in the one before. So when a page with more after it is handed out, the next one is built at
    once in a worker thread, while the store reads the page it has: its next request finds it built (or waits for
    the build under way instead of starting another). Every store's first sync reads the same pages, so a chain's
    stores share them too. A page is served again only while it is still what the feed holds (`FeedPage.answers`).
    """

    def __init__(self, engine: sa.Engine, max_bytes: int = 32 * 1024 * 1024, wait_s: float = 30.0):
        self._engine = weakref.ref(engine)  # the cache lives as long as its engine (see `page_cache`)
        self._max_bytes = max_bytes
        self._wait_s = wait_s
        self._lock = threading.Lock()
        self._pages: OrderedDict[tuple[int, int], FeedPage] = OrderedDict()
        self._bytes = 0
        self._building: dict[tuple[int, int], threading.Event] = {}
        self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feed-ahead")

    def page(self, session: Session, after: int, limit: int, now: datetime) -> FeedPage:
        """The page after `after`: built already and still right, or built now (in `session`)."""
        key = (after, limit)
        current = head(session)
        deadline = time.monotonic() + self._wait_s
        while True:
            with self._lock:
                found = self._pages.get(key)
                if found is not None and found.answers(current, now):
                    self._pages.move_to_end(key)
                    return found
                building = self._building.get(key)
                if building is None:
                    building = self._building[key] = threading.Event()
                    break
            if not building.wait(max(0.0, deadline - time.monotonic())):
                return changes_page(session, after, limit, now)  # that build is stuck: do not wait longer
        try:
            page = changes_page(session, after, limit, now)
            self._keep(key, page)
            return page
        finally:
            with self._lock:
                del self._building[key]
            building.set()

    def build_next(self, page: FeedPage, limit: int, now: datetime) -> None:
        """Start building the page after `page`, unless it is the last or one is being built ahead already."""
        if not page.has_more:
            return
        with self._lock:
            if any(self._building) or (int(page.next_cursor), limit) in self._pages:
                return  # one at a time: under load, pages are built as they are asked for
            self._ahead.submit(self._build, int(page.next_cursor), limit, now)

    def _build(self, after: int, limit: int, now: datetime) -> None:
        engine = self._engine()
        if engine is None:
            return
        try:
            with read_session(engine) as session:
                self.page(session, after, limit, now)
        except Exception:  # the store's own request builds it then
            log.warning("a page of the member feed could not be built ahead", exc_info=True)

    def _keep(self, key: tuple[int, int], page: FeedPage) -> None:
        with self._lock:
            old = self._pages.pop(key, None)
            self._bytes -= len(old.body) if old else 0
            self._pages[key] = page
            self._bytes += len(page.body)
            while self._bytes > self._max_bytes and len(self._pages) > 1:
                _, dropped = self._pages.popitem(last=False)
                self._bytes -= len(dropped.body)


_caches: weakref.WeakKeyDictionary[sa.Engine, PageCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def page_cache(engine: sa.Engine) -> PageCache:
    """The page cache of this database (one per engine, so per process)."""
    with _caches_lock:
        cache = _caches.get(engine)
        if cache is None:
            cache = _caches[engine] = PageCache(engine)
        return cache


def member_rows(session: Session, member_ids: Iterable[str]) -> list[sa.Row]:
    ids = list(dict.fromkeys(member_ids))
    if not ids:
        return []
    found = {row.id: row for row in session.execute(sa.select(*_MEMBER_COLUMNS).where(_member.c.id.in_(ids)))}
    return [found[i] for i in ids if i in found]


def snapshot(session: Session, member_id: str, now: datetime) -> contract.MemberChange | None:
    rows = member_rows(session, [member_id])
    return snapshots(session, rows, now)[0] if rows else None


def snapshots(session: Session, rows: Sequence[sa.Row], now: datetime) -> list[contract.MemberChange]:
    """The wire form of members (rows of `member_rows`): full state for live ones, tombstones otherwise."""
    identifiers, coupons = _held_by(session, rows, now)
    return [contract.MemberChange.model_validate(m) for m in _wire_members(rows, identifiers, coupons)]


def _held_by(session: Session, rows: Sequence[sa.Row], now: datetime) -> tuple[Sequence[sa.Row], Sequence[sa.Row]]:
    """The identifiers and the coupons valid at `now` of the live members among `rows`."""
    live = [row.id for row in rows if not row.deleted]
    if not live:
        return [], []
    return (
        session.execute(_IDENTIFIERS, {"ids": live}).all(),
        session.execute(_COUPONS, {"ids": live, "now": now}).all(),
    )


def _wire_members(
    rows: Sequence[sa.Row], identifiers: Iterable[sa.Row], coupons: Iterable[sa.Row]
) -> Iterator[dict[str, Any]]:
    """Members (rows of `_MEMBER_COLUMNS`, in their order) as dicts shaped like `contract.MemberChange`, every field
    in the model's order with the value the model would hold, from their identifier and coupon rows (member id
    first, in the order they go on the wire). One definition of a member on the wire, for pages and snapshots."""
    held: dict[str, list[tuple[str, str]]] = {}
    for member_id, kind, value in identifiers:
        held.setdefault(member_id, []).append((kind, value))
    given: dict[str, list[tuple[Any, ...]]] = {}
    for row in coupons:
        given.setdefault(row[0], []).append(tuple(row[1:]))
    for member_id, version, deleted, merged_into, tier, display_name, phone_masked, points in rows:
        if deleted:
            yield {
                "member_id": member_id,
                "version": version,
                "deleted": True,
                "merged_into": merged_into,
                "tier": "",
                "points": 0,
                "display_name": "",
                "phone_masked": None,
                "identifiers": [],
                "coupons": [],
            }
        else:
            yield {
                "member_id": member_id,
                "version": version,
                "deleted": False,
                "merged_into": None,
                "tier": tier,
                "points": points,
                "display_name": display_name,
                "phone_masked": phone_masked,
                "identifiers": [{"kind": kind, "value": value} for kind, value in held.get(member_id, ())],
                "coupons": [dict(zip(_COUPON_FIELDS, coupon, strict=True)) for coupon in given.get(member_id, ())],
            }


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
