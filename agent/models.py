"""The agent's tables (docs/storage.md). The schema itself is owned by the migrations in `agent/migrations`;
these classes describe the head revision and a test keeps the two in agreement.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from agent.clock import from_storage, to_storage


class UTCDateTime(sa.types.TypeDecorator):
    """Aware UTC datetimes stored as ISO 8601 text (see agent.clock.to_storage)."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> str | None:
        return None if value is None else to_storage(value)

    def process_result_value(self, value: str | None, dialect) -> datetime | None:
        return None if value is None else from_storage(value)


def utc_column(nullable: bool = False, index: bool = False) -> sa.Column:
    return sa.Column(UTCDateTime(), nullable=nullable, index=index)


class Member(SQLModel, table=True):
    id: str = Field(primary_key=True)
    tier: str
    points: int = Field(description="points balance, as last confirmed by the central service")
    display_name: str = ""
    phone_masked: str | None = None
    version: int = Field(description="the central change-feed position of this member's last change")
    updated_at: datetime = Field(sa_column=utc_column())
    last_seen_at: datetime | None = Field(
        sa_column=utc_column(nullable=True),
        description="last identified at this till (or first cached); personal data goes after storage.member_retention_days",
    )


class MemberIdentifier(SQLModel, table=True):
    """One way to find a member: unionid, openid:<appid>, card_no or phone_hash."""

    __tablename__ = "member_identifier"
    __table_args__ = (sa.Index("ix_member_identifier_member_id", "member_id"), {"sqlite_with_rowid": False})

    kind: str = Field(primary_key=True)
    value: str = Field(primary_key=True)
    member_id: str = Field(sa_column=sa.Column(sa.Text, sa.ForeignKey("member.id", ondelete="CASCADE"), nullable=False))


class SyncState(SQLModel, table=True):
    __tablename__ = "sync_state"

    key: str = Field(primary_key=True)
    value: str
    updated_at: datetime = Field(sa_column=utc_column())


class Journal(SQLModel, table=True):
    """One transaction of the store (sale, refund, void), append-only and hash-chained per station."""

    __table_args__ = (
        sa.Index("ix_journal_station_seq", "station_id", "seq"),
        sa.Index("ix_journal_business_day", "business_day"),
        {"sqlite_autoincrement": True},
    )

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(sa_column=sa.Column(sa.Text, nullable=False, unique=True))
    station_id: str
    kind: str
    business_day: str = Field(description="the store's business day, YYYY-MM-DD")
    created_at: datetime = Field(sa_column=utc_column())
    member_id: str | None = None
    total_fen: int
    points_earned: int
    points_redeemed: int
    body: str = Field(description="canonical JSON of the transaction's lines, tenders, coupons")
    prev_hash: str
    hash: str


class JournalCheckpoint(SQLModel, table=True):
    """The last link of a station's chain purged by retention: verify starts the remaining rows from its hash."""

    __tablename__ = "journal_checkpoint"

    station_id: str = Field(primary_key=True)
    seq: int = Field(description="seq of the last purged row; rows up to it may be deleted, none after")
    hash: str = Field(description="hash of the last purged row: the prev_hash of the station's first remaining row")
    purged_rows: int = Field(description="rows of this station purged so far")
    updated_at: datetime = Field(sa_column=utc_column())


class Outbox(SQLModel, table=True):
    """A journal row still to be accepted by the central service."""

    __table_args__ = (sa.Index("ix_outbox_status_next", "status", "next_attempt_at"),)

    journal_id: str = Field(sa_column=sa.Column(sa.Text, sa.ForeignKey("journal.id"), primary_key=True))
    status: str = Field(description="pending, or rejected (kept, shown, not retried blindly)")
    attempts: int = 0
    created_at: datetime = Field(sa_column=utc_column())
    next_attempt_at: datetime = Field(sa_column=utc_column())
    last_error: str | None = None


class MemberCodeKey(SQLModel, table=True):
    """A public key of central's member-code signing keys, as last fetched; old keys stay until `not_after`."""

    __tablename__ = "member_code_key"

    kid: int = Field(sa_column=sa.Column(sa.Integer, primary_key=True, autoincrement=False))
    public_key: str = Field(description="raw Ed25519 public key, base64url")
    not_after: datetime | None = Field(sa_column=utc_column(nullable=True))
    updated_at: datetime = Field(sa_column=utc_column())


class SeenMemberCode(SQLModel, table=True):
    """A member code already accepted, by fingerprint (never the code), kept until it would expire anyway."""

    __tablename__ = "seen_member_code"

    fingerprint: str = Field(primary_key=True)
    member_id: str
    accepted_at: datetime = Field(sa_column=utc_column())
    expires_at: datetime = Field(sa_column=utc_column(index=True))


class Coupon(SQLModel, table=True):
    __table_args__ = (sa.Index("ix_coupon_member_id", "member_id"),)

    code: str = Field(primary_key=True)
    member_id: str | None = Field(sa_column=sa.Column(sa.Text, sa.ForeignKey("member.id", ondelete="CASCADE")))
    title: str
    kind: str = Field(description="amount_off (threshold/amount) or percent_off (with an optional cap)")
    amount_off_fen: int = 0
    percent_off: int = 0
    threshold_fen: int = 0
    cap_fen: int | None = None
    valid_from: datetime = Field(sa_column=utc_column())
    valid_until: datetime = Field(sa_column=utc_column())
    usable_offline: bool = False
    used_at: datetime | None = Field(sa_column=utc_column(nullable=True))


class PrintJob(SQLModel, table=True):
    """One receipt to print, as the bytes rendered once. Its id is chosen by the caller (e.g. the transaction id
    and the purpose), so enqueueing the same receipt twice is one job."""

    __tablename__ = "print_job"
    __table_args__ = (sa.Index("ix_print_job_printer_status", "printer_id", "status", "seq"),)

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(sa_column=sa.Column(sa.Text, nullable=False, unique=True))
    printer_id: str
    journal_id: str | None = None
    purpose: str = Field(description="receipt, refund, reprint or test")
    data: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    status: str = Field(description="queued, sending, printed, uncertain or cancelled")
    attempts: int = 0
    last_error: str | None = None
    created_at: datetime = Field(sa_column=utc_column())
    updated_at: datetime = Field(sa_column=utc_column())
    printed_at: datetime | None = Field(sa_column=utc_column(nullable=True))


class OpenSale(SQLModel, table=True):
    """A sale not yet journaled or cancelled, as JSON (agent.sale.Sale), written before every step that moves
    money so that after a crash the till finds it and asks central how its payments ended."""

    __tablename__ = "open_sale"
    __table_args__ = (sa.Index("ix_open_sale_station", "station_id", "created_at"),)

    id: str = Field(primary_key=True)
    station_id: str
    state: str
    body: str
    created_at: datetime = Field(sa_column=utc_column())
    updated_at: datetime = Field(sa_column=utc_column())


class PendingRefund(SQLModel, table=True):
    """A refund with a code part, written before that part is sent and dropped in the transaction that journals
    it: a lost answer or a crash finishes the same refund under the same refund numbers. One per sale at most."""

    __tablename__ = "pending_refund"
    __table_args__ = (sa.Index("ix_pending_refund_sale", "sale_id", unique=True),)

    id: str = Field(primary_key=True)
    sale_id: str
    body: str
    created_at: datetime = Field(sa_column=utc_column())
    updated_at: datetime = Field(sa_column=utc_column())
