"""The transaction journal: every sale, refund and void, durable before the till is told "paid".

Rows are append-only (database triggers refuse UPDATE and DELETE) and each row carries the hash of the
previous row of the same station, so an edit, a removed row or a truncated tail is found by `verify`.
Retention (agent/retention.py) may purge the oldest rows central confirmed: it first records the last purged
link of the station as a checkpoint (`journal_checkpoint`), and `verify` starts the remaining rows from it.
A row and its outbox row are written in one SQLite transaction: nothing is journaled without being queued
for the central service, and nothing is queued that was not journaled.

The body of a row is one of the wire contract's `SaleBody`, `RefundBody`, `VoidBody` (by its kind), stored as its
canonical JSON; the hash covers that text. SQLite generates two indexed columns from it for lookups, `receipt_no`
and `original_id` (the sale a refund gives back); they are not hashed (the body they come from is), and being
generated they cannot say anything the body does not.

This module is the one place with SQL on `journal`, `journal_checkpoint` and `outbox` (docs/storage.md, "Owners"):
`Journal` for one station's rows, and module functions for the reads and writes that span stations or work inside
the caller's transaction (the push, retention, reconciliation, backups, the station's figures). Statements are
SQLAlchemy Core on the tables of agent/models.py; a row's `created_at` is read and written as the text it is
stored as, because the hash covers that text.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from pydantic import BaseModel, ValidationError
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from agent import models
from agent.clock import business_day, from_storage, to_storage, utcnow
from agent.db import reader
from agent.ids import new_transaction_id
from central.contract import RefundBody, SaleBody, VoidBody

GENESIS = "0" * 64
KINDS = frozenset({"sale", "refund", "void"})

JournalBody = SaleBody | RefundBody | VoidBody
BODY_TYPES: dict[str, type[JournalBody]] = {"sale": SaleBody, "refund": RefundBody, "void": VoidBody}

_journal = models.Journal.metadata.tables["journal"]
_checkpoint = models.JournalCheckpoint.metadata.tables["journal_checkpoint"]
_outbox = models.Outbox.metadata.tables["outbox"]
# The stored text of a row's time, not the time it stands for: the hash covers the text.
_created_at_text = sa.type_coerce(_journal.c.created_at, sa.Text).label("created_at")


def _row_columns(*names: str) -> list[sa.ColumnElement[Any]]:
    return [_created_at_text if name == "created_at" else _journal.c[name] for name in names]


# What a row's hash covers, and its seq: the columns a journal of every release has (a backup may be older).
_HASHED_COLUMNS = _row_columns(
    "seq",
    "id",
    "station_id",
    "kind",
    "business_day",
    "created_at",
    "member_id",
    "total_fen",
    "points_earned",
    "points_redeemed",
    "body",
    "prev_hash",
    "hash",
)
_COLUMNS = [*_HASHED_COLUMNS, *_row_columns("receipt_no", "original_id")]
_Body = TypeVar("_Body", bound=BaseModel)

# The statements of every sale, built once (building and keying a statement costs more than running it).
_ROW_BY_ID = sa.select(*_COLUMNS).where(_journal.c.id == sa.bindparam("transaction_id"))
_LAST_HASH = (
    sa.select(_journal.c.hash)
    .where(_journal.c.station_id == sa.bindparam("station"))
    .order_by(_journal.c.seq.desc())
    .limit(1)
)
_CHECKPOINT_HASH = sa.select(_checkpoint.c.hash).where(_checkpoint.c.station_id == sa.bindparam("station"))
# A row is stored as the very text hashed: its time goes in as that text, not through the column's time type.
_INSERT_ROW = sa.insert(_journal).values(created_at=sa.bindparam("created_at_text", type_=sa.Text))
_INSERT_OUTBOX = sa.insert(_outbox)
_DAY_COUNT = (
    sa.select(sa.func.count())
    .select_from(_journal)
    .where(_journal.c.station_id == sa.bindparam("station"), _journal.c.business_day == sa.bindparam("day"))
)
_OFFLINE_POINTS_SPENT = sa.select(sa.func.coalesce(sa.func.sum(_journal.c.points_redeemed), 0)).where(
    _journal.c.member_id == sa.bindparam("member"),
    _journal.c.business_day == sa.bindparam("day"),
    _journal.c.kind == "sale",
    sa.func.json_extract(_journal.c.body, "$.online") == 0,
)


class JournalError(Exception):
    pass


@dataclass(frozen=True)
class JournalEntry:
    """What the checkout hands the journal. Amounts are integer fen; the body holds no floats. The till writes typed
    bodies (the model of the entry's kind); a plain mapping is stored as it is (tools and tests)."""

    kind: str
    total_fen: int
    body: JournalBody | Mapping[str, Any] = field(default_factory=dict)
    member_id: str | None = None
    points_earned: int = 0
    points_redeemed: int = 0
    # Chosen by the caller when it must be able to retry the append after a crash; new otherwise.
    id: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class JournalRecord:
    seq: int
    id: str
    station_id: str
    kind: str
    business_day: date
    created_at: datetime
    member_id: str | None
    total_fen: int
    points_earned: int
    points_redeemed: int
    body: dict[str, Any]  # the JSON object as stored (and hashed); read it through sale_body() and its siblings
    prev_hash: str
    hash: str
    receipt_no: str | None = None
    original_id: str | None = None

    def view(self) -> dict[str, Any]:
        """The transaction as the local API shows it (`Transaction` in agent/checkout_api.py)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "receipt_no": self.receipt_no,
            "business_day": self.business_day.isoformat(),
            "created_at": self.created_at.isoformat(),
            "member_id": self.member_id,
            "total_fen": self.total_fen,
            "points_earned": self.points_earned,
            "points_redeemed": self.points_redeemed,
            "body": self.body,
        }

    def sale_body(self) -> SaleBody:
        return self._typed("sale", SaleBody)

    def refund_body(self) -> RefundBody:
        return self._typed("refund", RefundBody)

    def typed_body(self) -> JournalBody:
        """The body through the model of the row's kind."""
        if self.kind not in BODY_TYPES:
            raise JournalError(f"transaction {self.id} is a {self.kind!r}, which has no body type")
        return self._typed(self.kind, BODY_TYPES[self.kind])

    def _typed(self, kind: str, model: type[_Body]) -> _Body:
        if self.kind != kind:
            raise JournalError(f"transaction {self.id} is a {self.kind}, not a {kind}")
        try:
            return model.model_validate(self.body)
        except ValidationError as exc:
            raise JournalError(f"transaction {self.id}: its body does not read as a {kind} body: {exc}") from exc


@dataclass(frozen=True)
class BrokenLink:
    seq: int
    id: str
    station_id: str
    reason: str


@dataclass(frozen=True)
class Checkpoint:
    """The last purged link of a station's chain: its first remaining row must follow `hash`."""

    station_id: str
    seq: int
    hash: str
    purged_rows: int


@dataclass(frozen=True)
class OutboxFigures:
    pending: int
    rejected: int
    oldest_pending_at: datetime | None


@dataclass(frozen=True)
class VerifyReport:
    rows: int
    stations: int
    first_break: BrokenLink | None
    purged: int = 0  # rows removed by retention before the stations' checkpoints

    @property
    def ok(self) -> bool:
        return self.first_break is None


def canonical_json(value: Any) -> str:
    _refuse_floats(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def body_json(body: JournalBody | Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object a body is stored as: a typed body as its model writes it (absent-when-null fields left out,
    unknown fields kept), a mapping as it is."""
    return body.model_dump(mode="json") if isinstance(body, BaseModel) else dict(body)


def row_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    """The chain's hash of one row: SHA-256 over a canonical JSON list of the previous hash and the row's fields.
    The columns generated from the body (`receipt_no`, `original_id`) are not in it: the body is."""
    material = [
        prev_hash,
        row["id"],
        row["station_id"],
        row["kind"],
        row["business_day"],
        row["created_at"],
        row["member_id"],
        row["total_fen"],
        row["points_earned"],
        row["points_redeemed"],
        row["body"],
    ]
    return hashlib.sha256(canonical_json(material).encode("utf-8")).hexdigest()


class Journal:
    """One station's journal: appends chained to the station's last row, and the reads of the till and its API.
    Methods named `a…` hop to a worker thread: call those from the event loop."""

    def __init__(self, engine: sa.Engine, station_id: str, zone: ZoneInfo, cutoff_hour: int):
        self.engine = engine
        self.station_id = station_id
        self.zone = zone
        self.cutoff_hour = cutoff_hour

    def append(
        self, entry: JournalEntry, also: Callable[[sa.Connection, JournalRecord], None] | None = None
    ) -> JournalRecord:
        """Journal one transaction and queue it for central, atomically. Appending the same id again returns
        the row already written, so a retry after a crash cannot journal a sale twice. `also` runs in the same
        transaction with the row written (the checkout drops its saved open sale and queues the receipt there:
        one commit, and never some without the others)."""
        _check(entry)
        at = entry.created_at or utcnow()
        transaction_id = entry.id or new_transaction_id()
        row = {
            "id": transaction_id,
            "station_id": self.station_id,
            "kind": entry.kind,
            "business_day": business_day(at, self.zone, self.cutoff_hour).isoformat(),
            "created_at": to_storage(at),
            "member_id": entry.member_id,
            "total_fen": entry.total_fen,
            "points_earned": entry.points_earned,
            "points_redeemed": entry.points_redeemed,
            "body": canonical_json(body_json(entry.body)),
        }
        with self.engine.begin() as connection:
            existing = _read_record(connection, transaction_id)
            if existing is not None:
                return existing
            prev_hash = (
                connection.execute(_LAST_HASH, {"station": self.station_id}).scalar()
                or self._checkpoint_hash(connection)
                or GENESIS
            )
            row["prev_hash"] = prev_hash
            row["hash"] = row_hash(prev_hash, row)
            values = {name: value for name, value in row.items() if name != "created_at"}
            connection.execute(_INSERT_ROW, {**values, "created_at_text": row["created_at"]})
            connection.execute(
                _INSERT_OUTBOX,
                {
                    "journal_id": transaction_id,
                    "status": "pending",
                    "attempts": 0,
                    "created_at": at,
                    "next_attempt_at": at,
                },
            )
            record = _read_record(connection, transaction_id)
            assert record is not None, "the row was written in this transaction"
            if also is not None:
                also(connection, record)
        return record

    def _checkpoint_hash(self, connection: sa.Connection) -> str | None:
        # Retention purged every row of the station: the chain goes on from the last purged link.
        return connection.execute(_CHECKPOINT_HASH, {"station": self.station_id}).scalar()

    def get(self, transaction_id: str) -> JournalRecord | None:
        with reader(self.engine) as connection:
            return _read_record(connection, transaction_id)

    def by_receipt_no(self, receipt_no: str) -> JournalRecord | None:
        """The transaction whose receipt carries this number (the barcode on the receipt), of any station."""
        query = sa.select(*_COLUMNS).where(_journal.c.receipt_no == receipt_no).order_by(_journal.c.seq).limit(1)
        with reader(self.engine) as connection:
            row = connection.execute(query).first()
        return None if row is None else _record(row)

    def refunds_of(self, sale_id: str) -> list[JournalRecord]:
        """The refunds journaled against a sale, oldest first, read together."""
        query = (
            sa.select(*_COLUMNS)
            .where(_journal.c.kind == "refund", _journal.c.original_id == sale_id)
            .order_by(_journal.c.seq)
        )
        with reader(self.engine) as connection:
            return [_record(row) for row in connection.execute(query)]

    def recent(self, limit: int, before_seq: int | None = None) -> list[JournalRecord]:
        """This station's rows, newest first, those before `before_seq` when given (paging back)."""
        query = (
            sa.select(*_COLUMNS)
            .where(_journal.c.station_id == self.station_id, _journal.c.seq < (before_seq or 2**62))
            .order_by(_journal.c.seq.desc())
            .limit(limit)
        )
        with reader(self.engine) as connection:
            return [_record(row) for row in connection.execute(query)]

    def member_sales(self, member_id: str, limit: int) -> list[JournalRecord]:
        """The member's sales at this station, newest first (the wallet's last receipts)."""
        query = (
            sa.select(*_COLUMNS)
            .where(
                _journal.c.station_id == self.station_id,
                _journal.c.member_id == member_id,
                _journal.c.kind == "sale",
            )
            .order_by(_journal.c.seq.desc())
            .limit(limit)
        )
        with reader(self.engine) as connection:
            return [_record(row) for row in connection.execute(query)]

    def unconfirmed_points(self, member_id: str) -> int:
        """The member's points moved by rows central has not accepted yet: provisional in the cached balance. A
        sale adds what it earned less what it spent; a refund or void the reverse."""
        sign = sa.case((_journal.c.kind == "sale", 1), else_=-1)
        query = (
            sa.select(sa.func.coalesce(sa.func.sum(sign * (_journal.c.points_earned - _journal.c.points_redeemed)), 0))
            .select_from(_journal.join(_outbox, _outbox.c.journal_id == _journal.c.id))
            .where(_journal.c.member_id == member_id, _outbox.c.status == "pending")
        )
        with reader(self.engine) as connection:
            return int(connection.execute(query).scalar_one())

    def next_receipt_no(self, now: datetime) -> str:
        """Short and scannable: station, business day (yymmdd) and the day's count, e.g. T012611230042."""
        day = business_day(now, self.zone, self.cutoff_hour)
        with reader(self.engine) as connection:
            count = connection.execute(_DAY_COUNT, {"station": self.station_id, "day": day.isoformat()}).scalar_one()
        return f"{self.station_id}{day:%y%m%d}{count + 1:04d}"

    def offline_points_spent(self, member_id: str, now: datetime) -> int:
        """Points the member redeemed in this business day's sales taken offline (the offline cap counts them)."""
        day = business_day(now, self.zone, self.cutoff_hour).isoformat()
        with reader(self.engine) as connection:
            return connection.execute(_OFFLINE_POINTS_SPENT, {"member": member_id, "day": day}).scalar_one()

    # --- the same, from the event loop ------------------------------------------------------------------------

    async def arecent(self, limit: int, before_seq: int | None = None) -> list[JournalRecord]:
        return await asyncio.to_thread(self.recent, limit, before_seq)

    async def amember_sales(self, member_id: str, limit: int) -> list[JournalRecord]:
        return await asyncio.to_thread(self.member_sales, member_id, limit)

    async def aunconfirmed_points(self, member_id: str) -> int:
        return await asyncio.to_thread(self.unconfirmed_points, member_id)

    async def anext_receipt_no(self, now: datetime) -> str:
        return await asyncio.to_thread(self.next_receipt_no, now)

    async def aoffline_points_spent(self, member_id: str, now: datetime) -> int:
        return await asyncio.to_thread(self.offline_points_spent, member_id, now)


def _read_record(connection: sa.Connection, transaction_id: str) -> JournalRecord | None:
    row = connection.execute(_ROW_BY_ID, {"transaction_id": transaction_id}).first()
    return None if row is None else _record(row)


# --- the whole journal: verify, and what retention, backups, health and the station's figures read ---------------


def verify(engine: sa.Engine) -> VerifyReport:
    """Walk every station's chain, from its retention checkpoint if it has one, and report the first broken link."""
    rows = 0
    with reader(engine) as connection:
        checkpoints = {c.station_id: c for c in read_checkpoints(connection)}
        last_hash = {station: c.hash for station, c in checkpoints.items()}
        purged = sum(c.purged_rows for c in checkpoints.values())
        # The last seq accounted for: the last row, or the last purged one when retention took every row.
        last_seq = max((c.seq for c in checkpoints.values()), default=0)

        def broken(row: Mapping[str, Any], reason: str) -> VerifyReport:
            return VerifyReport(rows, len(last_hash), _broken(row, reason), purged)

        for row in _rows(connection):
            rows += 1
            station = row["station_id"]
            checkpoint = checkpoints.get(station)
            if checkpoint is not None and row["seq"] <= checkpoint.seq:
                return broken(
                    row, f"it lies before its station's retention checkpoint (seq {checkpoint.seq}) yet was not purged"
                )
            prev = last_hash.get(station, GENESIS)
            if row["prev_hash"] != prev:
                return broken(
                    row, "does not follow the previous row of its station (a row before it was removed or reordered)"
                )
            if row_hash(prev, row) != row["hash"]:
                return broken(row, "its content does not match its hash (the row was changed)")
            last_hash[station] = row["hash"]
            last_seq = max(last_seq, row["seq"])
        highest = highest_seq(connection)
    if highest is not None and highest > last_seq:
        return VerifyReport(
            rows,
            len(last_hash),
            BrokenLink(
                highest,
                "",
                "",
                f"rows up to seq {highest} were written but the journal ends at seq {last_seq} (rows were removed from the end)",
            ),
            purged,
        )
    return VerifyReport(rows, len(last_hash), None, purged)


def highest_seq(connection: sa.Connection) -> int | None:
    """The highest seq ever issued (AUTOINCREMENT remembers it): rows cut off the end of the chain show up here."""
    return connection.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'journal'").scalar()


def stations(connection: sa.Connection) -> list[str]:
    """The stations with rows in the journal, in order."""
    return list(
        connection.execute(sa.select(_journal.c.station_id).distinct().order_by(_journal.c.station_id)).scalars()
    )


def count_rows(connection: sa.Connection, after_seq: int = 0) -> int:
    """Rows in the journal (after `after_seq`: those a backup that ends there does not hold)."""
    query = sa.select(sa.func.count()).select_from(_journal)
    if after_seq:
        query = query.where(_journal.c.seq > after_seq)
    return connection.execute(query).scalar_one()


def last_id(connection: sa.Connection) -> str | None:
    """The newest row's id, of any station: a read of the table every sale is written to."""
    return connection.execute(sa.select(_journal.c.id).order_by(_journal.c.seq.desc()).limit(1)).scalar()


def read_checkpoints(connection: sa.Connection) -> list[Checkpoint]:
    exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'journal_checkpoint'"
    if connection.exec_driver_sql(exists).first() is None:
        return []  # a database (a backup, say) from before retention: nothing was ever purged
    c = _checkpoint.c
    found = connection.execute(sa.select(c.station_id, c.seq, c.hash, c.purged_rows).order_by(c.station_id))
    return [Checkpoint(*row) for row in found]


def oldest_rows(connection: sa.Connection, station_id: str, limit: int) -> Sequence[sa.RowMapping]:
    """A station's oldest rows with what retention weighs for each: seq, id, kind, created_at, hash, original_id
    and its outbox row's status (None: central confirmed it)."""
    query = (
        sa.select(
            _journal.c.seq,
            _journal.c.id,
            _journal.c.kind,
            _journal.c.created_at,
            _journal.c.hash,
            _journal.c.original_id,
            _outbox.c.status.label("outbox_status"),
        )
        .select_from(_journal.outerjoin(_outbox, _outbox.c.journal_id == _journal.c.id))
        .where(_journal.c.station_id == station_id)
        .order_by(_journal.c.seq)
        .limit(limit)
    )
    return connection.execute(query).mappings().all()


def is_journaled(connection: sa.Connection, transaction_id: str) -> bool:
    return connection.execute(sa.select(1).where(_journal.c.id == transaction_id)).first() is not None


def purge_through(connection: sa.Connection, station_id: str, seq: int, hash: str, rows: int, at: datetime) -> int:
    """Delete a station's rows up to `seq` (whose hash is `hash`) in the caller's transaction, recording the
    checkpoint first: the database refuses to delete a row no checkpoint covers, or one central has not confirmed.
    Returns the rows deleted; the caller chose them (agent/retention.py) and says how many it expects."""
    new = sqlite_insert(_checkpoint).values(station_id=station_id, seq=seq, hash=hash, purged_rows=rows, updated_at=at)
    connection.execute(
        new.on_conflict_do_update(
            index_elements=[_checkpoint.c.station_id],
            set_={
                "seq": new.excluded.seq,
                "hash": new.excluded.hash,
                "purged_rows": _checkpoint.c.purged_rows + new.excluded.purged_rows,
                "updated_at": new.excluded.updated_at,
            },
        )
    )
    deleted = connection.execute(
        sa.delete(_journal).where(_journal.c.station_id == station_id, _journal.c.seq <= seq)
    ).rowcount
    if deleted != rows:
        raise JournalError(
            f"purge of station {station_id} up to seq {seq} would delete {deleted} rows, {rows} were chosen"
        )
    return deleted


# --- the outbox: rows central has not confirmed ----------------------------------------------------------------


def read_outbox(connection: sa.Connection) -> OutboxFigures:
    """Rows waiting for central, rows it refused, and since when the oldest has waited: in the caller's read. The
    one reading of the outbox's state (the sync status, the station's figures, the doctor)."""
    by_status = sa.select(_outbox.c.status, sa.func.count()).group_by(_outbox.c.status)
    counts: dict[str, int] = dict(connection.execute(by_status).tuples().all())
    oldest = connection.execute(
        sa.select(sa.func.min(_outbox.c.created_at)).where(_outbox.c.status == "pending")
    ).scalar()
    return OutboxFigures(counts.get("pending", 0), counts.get("rejected", 0), oldest)


def count_unconfirmed(connection: sa.Connection) -> int:
    """Journal rows central has not confirmed: pending or rejected."""
    return connection.execute(sa.select(sa.func.count()).select_from(_outbox)).scalar_one()


def pending_batch(connection: sa.Connection, limit: int) -> Sequence[sa.RowMapping]:
    """The oldest rows waiting for central, as journaled (every hashed column but seq, the body as stored text)."""
    query = (
        sa.select(*_HASHED_COLUMNS[1:])
        .select_from(_outbox.join(_journal, _journal.c.id == _outbox.c.journal_id))
        .where(_outbox.c.status == "pending")
        .order_by(_journal.c.seq)
        .limit(limit)
    )
    return connection.execute(query).mappings().all()


def confirm(connection: sa.Connection, transaction_ids: Sequence[str]) -> None:
    """Central holds these rows (accepted, or a duplicate of what it had): they leave the outbox."""
    if transaction_ids:
        connection.execute(
            sa.delete(_outbox).where(_outbox.c.journal_id == sa.bindparam("id")), [{"id": i} for i in transaction_ids]
        )


def reject(connection: sa.Connection, reasons: Mapping[str, str], at: datetime | None = None) -> None:
    """Rows refused (by central, or found unsendable here): kept and shown, never retried blindly. `at` stamps the
    attempt when central answered."""
    if not reasons:
        return
    values: dict[str, Any] = {
        "status": "rejected",
        "last_error": sa.bindparam("reason"),
        "attempts": _outbox.c.attempts + 1,
    }
    if at is not None:
        values["next_attempt_at"] = at
    connection.execute(
        sa.update(_outbox).where(_outbox.c.journal_id == sa.bindparam("id")).values(values),
        [{"id": transaction_id, "reason": reason} for transaction_id, reason in reasons.items()],
    )


def requeue(connection: sa.Connection, transaction_ids: Iterable[str], at: datetime) -> None:
    """Queue journaled rows for central again (it lost rows it had accepted); a row still queued stays as it is."""
    rows = [
        {"journal_id": i, "status": "pending", "attempts": 0, "created_at": at, "next_attempt_at": at}
        for i in transaction_ids
    ]
    if rows:
        connection.execute(sqlite_insert(_outbox).on_conflict_do_nothing(index_elements=[_outbox.c.journal_id]), rows)


def day_rows(connection: sa.Connection, station_id: str, day: date) -> Sequence[sa.Row]:
    """A station's rows of a business day for reconciliation: id, total_fen, points_earned, points_redeemed and
    the outbox row's status (None: central confirmed it)."""
    query = (
        sa.select(
            _journal.c.id,
            _journal.c.total_fen,
            _journal.c.points_earned,
            _journal.c.points_redeemed,
            _outbox.c.status,
        )
        .select_from(_journal.outerjoin(_outbox, _outbox.c.journal_id == _journal.c.id))
        .where(_journal.c.station_id == station_id, _journal.c.business_day == day.isoformat())
    )
    return connection.execute(query).all()


def _rows(connection: sa.Connection) -> Iterator[dict[str, Any]]:
    result = connection.execute(sa.select(*_HASHED_COLUMNS).order_by(_journal.c.seq))
    for row in result.mappings():
        yield dict(row)


def _broken(row: Mapping[str, Any], reason: str) -> BrokenLink:
    return BrokenLink(row["seq"], row["id"], row["station_id"], reason)


def _record(row: sa.Row) -> JournalRecord:
    values = row._mapping
    return JournalRecord(
        seq=values["seq"],
        id=values["id"],
        station_id=values["station_id"],
        kind=values["kind"],
        business_day=date.fromisoformat(values["business_day"]),
        created_at=from_storage(values["created_at"]),
        member_id=values["member_id"],
        total_fen=values["total_fen"],
        points_earned=values["points_earned"],
        points_redeemed=values["points_redeemed"],
        body=json.loads(values["body"]),
        prev_hash=values["prev_hash"],
        hash=values["hash"],
        receipt_no=values["receipt_no"],
        original_id=values["original_id"],
    )


def _check(entry: JournalEntry) -> None:
    if entry.kind not in KINDS:
        raise JournalError(f"unknown transaction kind {entry.kind!r}; one of {', '.join(sorted(KINDS))}")
    if isinstance(entry.body, BaseModel) and not isinstance(entry.body, BODY_TYPES[entry.kind]):
        raise JournalError(
            f"a {entry.kind} is journaled with a {BODY_TYPES[entry.kind].__name__}, not a {type(entry.body).__name__}"
        )
    for name in ("total_fen", "points_earned", "points_redeemed"):
        value = getattr(entry, name)
        if type(value) is not int:
            raise JournalError(f"{name} must be an integer (fen or points), got {type(value).__name__}")


def _refuse_floats(value: Any) -> None:
    if isinstance(value, float):
        raise JournalError("a float in a journal row: money is integer fen and points are integers")
    if isinstance(value, Mapping):
        for item in value.values():
            _refuse_floats(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _refuse_floats(item)
