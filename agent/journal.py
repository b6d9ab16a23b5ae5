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
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from pydantic import BaseModel, ValidationError

from agent.clock import business_day, from_storage, to_storage, utcnow
from agent.db import reader
from agent.ids import new_transaction_id
from central.contract import RefundBody, SaleBody, VoidBody

GENESIS = "0" * 64
KINDS = frozenset({"sale", "refund", "void"})

JournalBody = SaleBody | RefundBody | VoidBody
BODY_TYPES: dict[str, type[JournalBody]] = {"sale": SaleBody, "refund": RefundBody, "void": VoidBody}

# What a row's hash covers, and its seq: the columns a journal of every release has (a backup may be older).
_HASHED_COLUMNS = (
    "seq, id, station_id, kind, business_day, created_at, member_id, total_fen, points_earned, points_redeemed,"
    " body, prev_hash, hash"
)
_COLUMNS = _HASHED_COLUMNS + ", receipt_no, original_id"
_Body = TypeVar("_Body", bound=BaseModel)


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
        row = {
            "id": entry.id or new_transaction_id(),
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
            existing = connection.exec_driver_sql(f"SELECT {_COLUMNS} FROM journal WHERE id = ?", (row["id"],)).first()
            if existing is not None:
                return _record(existing)
            prev_hash = (
                connection.exec_driver_sql(
                    "SELECT hash FROM journal WHERE station_id = ? ORDER BY seq DESC LIMIT 1", (self.station_id,)
                ).scalar()
                or self._checkpoint_hash(connection)
                or GENESIS
            )
            row["prev_hash"] = prev_hash
            row["hash"] = row_hash(prev_hash, row)
            names = list(row)
            connection.exec_driver_sql(
                f"INSERT INTO journal ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                tuple(row[name] for name in names),
            )
            connection.exec_driver_sql(
                "INSERT INTO outbox (journal_id, status, attempts, created_at, next_attempt_at) VALUES (?, 'pending', 0, ?, ?)",
                (row["id"], row["created_at"], row["created_at"]),
            )
            record = _record(
                connection.exec_driver_sql(f"SELECT {_COLUMNS} FROM journal WHERE id = ?", (row["id"],)).one()
            )
            if also is not None:
                also(connection, record)
        return record

    def _checkpoint_hash(self, connection: sa.Connection) -> str | None:
        # Retention purged every row of the station: the chain goes on from the last purged link.
        return connection.exec_driver_sql(
            "SELECT hash FROM journal_checkpoint WHERE station_id = ?", (self.station_id,)
        ).scalar()

    def get(self, transaction_id: str) -> JournalRecord | None:
        with reader(self.engine) as connection:
            row = connection.exec_driver_sql(f"SELECT {_COLUMNS} FROM journal WHERE id = ?", (transaction_id,)).first()
        return None if row is None else _record(row)


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
        # AUTOINCREMENT remembers the highest seq ever used: rows cut off the end of the chain show up here.
        highest = connection.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'journal'").scalar()
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


def read_checkpoints(connection: sa.Connection) -> list[Checkpoint]:
    exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'journal_checkpoint'"
    if connection.exec_driver_sql(exists).first() is None:
        return []  # a database (a backup, say) from before retention: nothing was ever purged
    found = connection.exec_driver_sql(
        "SELECT station_id, seq, hash, purged_rows FROM journal_checkpoint ORDER BY station_id"
    )
    return [Checkpoint(*row) for row in found]


def purge_through(connection: sa.Connection, station_id: str, seq: int, hash: str, rows: int, at: datetime) -> int:
    """Delete a station's rows up to `seq` (whose hash is `hash`) in the caller's transaction, recording the
    checkpoint first: the database refuses to delete a row no checkpoint covers, or one central has not confirmed.
    Returns the rows deleted; the caller chose them (agent/retention.py) and says how many it expects."""
    connection.exec_driver_sql(
        "INSERT INTO journal_checkpoint (station_id, seq, hash, purged_rows, updated_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (station_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,"
        " purged_rows = journal_checkpoint.purged_rows + excluded.purged_rows, updated_at = excluded.updated_at",
        (station_id, seq, hash, rows, to_storage(at)),
    )
    deleted = connection.exec_driver_sql(
        "DELETE FROM journal WHERE station_id = ? AND seq <= ?", (station_id, seq)
    ).rowcount
    if deleted != rows:
        raise JournalError(
            f"purge of station {station_id} up to seq {seq} would delete {deleted} rows, {rows} were chosen"
        )
    return deleted


def _rows(connection: sa.Connection) -> Iterator[dict[str, Any]]:
    result = connection.exec_driver_sql(f"SELECT {_HASHED_COLUMNS} FROM journal ORDER BY seq")
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
