"""Central's tables. The schema itself belongs to the migrations in `central/migrations`; these classes describe
the head revision and a test keeps the two in agreement.

Table models never go over the wire: routers answer with the models of `central.contract`.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from central.db import UTCDateTime

# JSONB on PostgreSQL; JSON text on SQLite.
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# SQLite only auto-numbers an INTEGER PRIMARY KEY.
AutoId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class CentralModel(SQLModel, registry=registry()):
    """Base of central's models: a metadata of their own, apart from the agent's tables (both have a `member`)."""


def utc(nullable: bool = False) -> Any:
    return Field(sa_column=sa.Column(UTCDateTime(), nullable=nullable))


class Store(CentralModel, table=True):
    id: str = Field(primary_key=True, max_length=16)
    name: str = Field(default="", max_length=64)
    token_hash: str = Field(max_length=64, unique=True, description="sha256 hex of the bearer token; never the token")
    created_at: datetime = utc()


class FeedCounter(CentralModel, table=True):
    """One row: the last version handed out. Writers hold its row lock until commit, so versions become visible
    in order and a feed reader never skips past a version still being written."""

    __tablename__ = "feed_counter"

    id: int = Field(sa_column=sa.Column(sa.Integer, primary_key=True, autoincrement=False))
    value: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))


class MemberBase(CentralModel):
    tier: str = Field(default="normal", max_length=16)
    display_name: str = Field(default="", max_length=32, description="masked, e.g. 王*明")
    phone_masked: str | None = Field(default=None, max_length=16)


class Member(MemberBase, table=True):
    id: str = Field(primary_key=True, max_length=16)
    version: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, unique=True))
    deleted: bool = False
    merged_into: str | None = Field(default=None, foreign_key="member.id", max_length=16)
    created_at: datetime = utc()
    updated_at: datetime = utc()


class MemberIdentifier(CentralModel, table=True):
    """One way to find a member: unionid, openid:<appid>, card_no or phone_hash. One owner per identifier."""

    __tablename__ = "member_identifier"

    kind: str = Field(primary_key=True, max_length=80)
    value: str = Field(primary_key=True, max_length=128)
    member_id: str = Field(foreign_key="member.id", index=True, max_length=16)
    created_at: datetime = utc()


class LedgerEntry(CentralModel, table=True):
    """A points movement. A balance is the sum of a member's entries; nothing else holds points.

    `transaction_id` names what caused the entry: a store transaction's id, or `merge:<member>`,
    `seed:<member>`, `adjust:<key>`. The unique key (transaction_id, member_id, kind) makes a replayed
    transaction unable to book its points twice, whatever the code above it does.
    """

    __tablename__ = "ledger_entry"
    __table_args__ = (sa.UniqueConstraint("transaction_id", "member_id", "kind", name="uq_ledger_entry_source"),)

    id: int | None = Field(default=None, sa_column=sa.Column(AutoId, primary_key=True, autoincrement=True))
    member_id: str = Field(foreign_key="member.id", index=True, max_length=16)
    kind: str = Field(max_length=16, description="earn, redeem, merge_in, merge_out, opening, adjust")
    points: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    transaction_id: str = Field(max_length=64)
    store_id: str | None = Field(default=None, max_length=16)
    created_at: datetime = utc()


class CouponBase(CentralModel):
    title: str = Field(max_length=64)
    kind: str = Field(max_length=16, description="amount_off or percent_off")
    amount_off_fen: int = 0
    percent_off: int = 0
    threshold_fen: int = 0
    cap_fen: int | None = None
    usable_offline: bool = False


class Coupon(CouponBase, table=True):
    code: str = Field(primary_key=True, max_length=32)
    member_id: str = Field(foreign_key="member.id", index=True, max_length=16)
    valid_from: datetime = utc()
    valid_until: datetime = utc()
    used_at: datetime | None = utc(nullable=True)
    used_in_transaction: str | None = Field(default=None, max_length=36)


class Transaction(CentralModel, table=True):
    """A store's journal row, stored once (by id) as it was sent."""

    __tablename__ = "store_transaction"
    __table_args__ = (sa.Index("ix_store_transaction_store_day", "store_id", "business_day"),)

    id: str = Field(primary_key=True, max_length=36)
    store_id: str = Field(foreign_key="store.id", max_length=16)
    station_id: str = Field(max_length=16)
    kind: str = Field(max_length=8)
    business_day: date
    created_at: datetime = utc()
    member_id: str | None = Field(default=None, foreign_key="member.id", max_length=16)
    total_fen: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    points_earned: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    points_redeemed: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    body: dict[str, Any] = Field(sa_column=sa.Column(JSONType, nullable=False))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)
    received_at: datetime = utc()


class SigningKey(CentralModel, table=True):
    """An Ed25519 member-code key. The newest key without `retired_at` signs; a retired key still verifies until
    `not_after`. The private key sits in this table: protect the database (and its backups) accordingly."""

    __tablename__ = "signing_key"

    kid: int = Field(sa_column=sa.Column(sa.Integer, primary_key=True, autoincrement=False))
    private_key: str = Field(max_length=64, description="raw 32-byte seed, base64url")
    public_key: str = Field(max_length=64, description="raw 32-byte public key, base64url")
    created_at: datetime = utc()
    retired_at: datetime | None = utc(nullable=True)
    not_after: datetime | None = utc(nullable=True)


class IdempotencyRecord(CentralModel, table=True):
    """The answer given to a write with an `Idempotency-Key`, replayed when the same request comes again."""

    __tablename__ = "idempotency_record"

    store_id: str = Field(primary_key=True, max_length=16)
    key: str = Field(primary_key=True, max_length=128)
    request_hash: str = Field(max_length=64)
    status_code: int
    response: dict[str, Any] = Field(sa_column=sa.Column(JSONType, nullable=False))
    created_at: datetime = utc()
