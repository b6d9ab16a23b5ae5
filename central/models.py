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


class MemberConsent(CentralModel, table=True):
    """A customer's consent to membership, as given: the privacy notice they read, when, and at which store. A
    member who joins again (same phone) consents again: every consent is kept."""

    __tablename__ = "member_consent"

    id: int | None = Field(default=None, sa_column=sa.Column(AutoId, primary_key=True, autoincrement=True))
    member_id: str = Field(foreign_key="member.id", index=True, max_length=16)
    purpose: str = Field(max_length=32, description="membership")
    notice_version: str | None = Field(default=None, max_length=32)
    store_id: str | None = Field(default=None, max_length=16)
    given_at: datetime = utc()


class IdempotencyRecord(CentralModel, table=True):
    """The answer given to a write with an `Idempotency-Key`, replayed when the same request comes again."""

    __tablename__ = "idempotency_record"

    store_id: str = Field(primary_key=True, max_length=16)
    key: str = Field(primary_key=True, max_length=128)
    request_hash: str = Field(max_length=64)
    status_code: int
    response: dict[str, Any] = Field(sa_column=sa.Column(JSONType, nullable=False))
    created_at: datetime = utc()


# --- payments (central/payments, migration 0002) --------------------------------------------------------------


class Payment(CentralModel, table=True):
    """A code payment, one row per `out_trade_no`, owned by the gateway's state machine
    (central/payments/gateway.py): PENDING → USERPAYING | UNKNOWN | SUCCESS | FAILED, → REVERSING → REVERSED.

    The auth code itself is never stored (it is single-use and short-lived); `request_hash` (HMAC of the request)
    tells a retry of the same payment from a different payment reusing the order number.
    """

    __tablename__ = "payment"
    __table_args__ = (
        sa.Index("ix_payment_state", "state"),
        sa.Index("ix_payment_store_created", "store_id", "created_at"),
    )

    out_trade_no: str = Field(primary_key=True, max_length=32)
    store_id: str = Field(foreign_key="store.id", max_length=16)
    station_id: str = Field(max_length=16)
    provider: str = Field(max_length=8, description="wechat or alipay")
    amount_fen: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    description: str = Field(default="", max_length=128)
    member_id: str | None = Field(default=None, foreign_key="member.id", max_length=16)
    request_hash: str = Field(max_length=64)
    state: str = Field(max_length=16)
    code: str | None = Field(
        default=None, max_length=64, description="the provider's last code, or the gateway's cause"
    )
    reason_zh: str | None = Field(default=None, max_length=128)
    reason_en: str | None = Field(default=None, max_length=256)
    provider_trade_no: str | None = Field(default=None, max_length=64)
    payer_id: str | None = Field(default=None, max_length=128)
    paid_amount_fen: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    cancel_requested: bool = False
    charge_sent_at: datetime = utc()
    # When the provider's answer to the charge came (or its error, or the timeout); no reverse within 15 s of it.
    # None: no answer recorded (central stopped while the charge was out). Migration 0004.
    charge_answered_at: datetime | None = utc(nullable=True)
    paid_at: datetime | None = utc(nullable=True)
    finished_at: datetime | None = utc(nullable=True)
    created_at: datetime = utc()
    updated_at: datetime = utc()
    # The central process driving it while unfinished, and until when (central/leases.py). Migration 0008.
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_until: datetime | None = utc(nullable=True)


class PaymentEvent(CentralModel, table=True):
    """Every exchange with the provider about a payment and every change of its state: the audit trail."""

    __tablename__ = "payment_event"

    id: int | None = Field(default=None, sa_column=sa.Column(AutoId, primary_key=True, autoincrement=True))
    out_trade_no: str = Field(foreign_key="payment.out_trade_no", index=True, max_length=32)
    at: datetime = utc()
    action: str = Field(
        max_length=16, description="charge, query, reverse, cancel, state, refund, refund_query, refund_state"
    )
    outcome: str = Field(max_length=24)
    code: str | None = Field(default=None, max_length=64)
    detail: str | None = Field(default=None, max_length=256)
    out_refund_no: str | None = Field(
        default=None, max_length=32, description="the refund the event is about (migration 0003)"
    )


class PaymentRefund(CentralModel, table=True):
    """A refund of a paid payment, one row per `out_refund_no` (the merchant's refund number at the provider, and
    the store's idempotency key): PENDING (stored, being sent) → PROCESSING | SUCCESS | FAILED, PROCESSING →
    SUCCESS | FAILED. The gateway follows every unfinished refund, and resumes them at start-up. PENDING is
    PROCESSING on the wire. Refunds of one payment that are not FAILED never add up to more than was paid."""

    __tablename__ = "payment_refund"
    __table_args__ = (sa.Index("ix_payment_refund_state", "state"),)

    out_refund_no: str = Field(primary_key=True, max_length=32)
    out_trade_no: str = Field(foreign_key="payment.out_trade_no", index=True, max_length=32)
    provider: str = Field(max_length=8)
    amount_fen: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    reason: str | None = Field(default=None, max_length=80, description="the store's reason, shown to the payer")
    state: str = Field(max_length=16)
    code: str | None = Field(
        default=None, max_length=64, description="the provider's last code or status, or the gateway's cause"
    )
    reason_zh: str | None = Field(default=None, max_length=128)
    reason_en: str | None = Field(default=None, max_length=256)
    provider_refund_no: str | None = Field(default=None, max_length=64)
    refunded_at: datetime | None = utc(nullable=True)
    finished_at: datetime | None = utc(nullable=True)
    created_at: datetime = utc()
    updated_at: datetime = utc()
    lease_owner: str | None = Field(default=None, max_length=64)  # as on `payment` (migration 0008)
    lease_until: datetime | None = utc(nullable=True)


class WechatMemberCard(CentralModel, table=True):
    """A WeChat member card a member holds: points changes are pushed to it (card/membercard/updateuser)."""

    __tablename__ = "wechat_member_card"

    card_id: str = Field(primary_key=True, max_length=32)
    code: str = Field(primary_key=True, max_length=32)
    member_id: str = Field(foreign_key="member.id", index=True, max_length=16)
    created_at: datetime = utc()


class CardSyncJob(CentralModel, table=True):
    """One ledger entry to push to one member card; the unique key makes the queue idempotent per entry."""

    __tablename__ = "card_sync_job"
    __table_args__ = (sa.UniqueConstraint("ledger_entry_id", "card_id", "code", name="uq_card_sync_job_entry"),)

    id: int | None = Field(default=None, sa_column=sa.Column(AutoId, primary_key=True, autoincrement=True))
    ledger_entry_id: int = Field(sa_column=sa.Column(AutoId, sa.ForeignKey("ledger_entry.id"), nullable=False))
    card_id: str = Field(max_length=32)
    code: str = Field(max_length=32)
    member_id: str = Field(max_length=16)
    state: str = Field(default="pending", max_length=8, description="pending, done, failed")
    attempts: int = 0
    next_attempt_at: datetime = utc()
    last_error: str | None = Field(default=None, max_length=256)
    bonus_sent: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    created_at: datetime = utc()
    done_at: datetime | None = utc(nullable=True)


class BillCheck(CentralModel, table=True):
    """A provider's settlement bill for one day, checked against the payments central holds."""

    __tablename__ = "payment_bill_check"

    provider: str = Field(primary_key=True, max_length=8)
    day: date = Field(primary_key=True)
    checked_at: datetime = utc()
    bill_rows: int
    matched: int
    issues: int


class BillIssue(CentralModel, table=True):
    """One difference between a bill and central's payments, for people to settle."""

    __tablename__ = "payment_bill_issue"
    __table_args__ = (sa.Index("ix_payment_bill_issue_day", "provider", "day"),)

    id: int | None = Field(default=None, sa_column=sa.Column(AutoId, primary_key=True, autoincrement=True))
    provider: str = Field(max_length=8)
    day: date
    out_trade_no: str = Field(max_length=32)
    store_id: str | None = Field(default=None, max_length=16)
    kind: str = Field(max_length=32, description="charged_not_paid_at_store, missing_from_bill, amount_mismatch")
    store_state: str | None = Field(default=None, max_length=16)
    store_amount_fen: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    bill_amount_fen: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    provider_trade_no: str | None = Field(default=None, max_length=64)
    detail: str = Field(default="", max_length=256)


# --- WeChat mini program and official account (central/wechat, migration 0006) ---------------------------------


class WechatSession(CentralModel, table=True):
    """A mini program login: the session token the mini program sends (kept as SHA-256 only) and WeChat's
    session key for that user, which never leaves central (it decrypts the user's data)."""

    __tablename__ = "wechat_session"
    __table_args__ = (sa.Index("ix_wechat_session_openid", "appid", "openid"),)

    id: int | None = Field(default=None, sa_column=sa.Column(AutoId, primary_key=True, autoincrement=True))
    token_hash: str = Field(max_length=64, unique=True, description="sha256 hex of the session token; never the token")
    appid: str = Field(max_length=32)
    openid: str = Field(max_length=128)
    unionid: str | None = Field(default=None, max_length=128)
    session_key: str = Field(max_length=64, description="WeChat's session_key (base64): never answered, never logged")
    member_id: str | None = Field(default=None, foreign_key="member.id", max_length=16)
    phone_code_hash: str | None = Field(
        default=None, max_length=64, description="sha256 hex of the phone code already exchanged in this session"
    )
    created_at: datetime = utc()
    expires_at: datetime = utc()


class WechatFollowerSync(CentralModel, table=True):
    """Where the official account's follower walk (user/get) stands, per official account."""

    __tablename__ = "wechat_follower_sync"

    appid: str = Field(primary_key=True, max_length=32)
    next_openid: str = Field(default="", max_length=128, description="where the walk resumes; empty: from the start")
    passes: int = Field(default=0, description="walks finished")
    pass_followers: int = Field(default=0, description="followers seen so far in the walk under way")
    linked: int = Field(default=0, description="official-account openids linked to members, in all")
    last_run_at: datetime | None = utc(nullable=True)
    last_pass_at: datetime | None = utc(nullable=True)
    last_error: str | None = Field(default=None, max_length=256)


class JobLease(CentralModel, table=True):
    """A periodic job (card pushes, the payments check, the follower sync): the one process that runs it while it
    holds the lease, and when it last ran, so a new holder keeps the period (central/leases.py). Migration 0008."""

    __tablename__ = "job_lease"

    name: str = Field(primary_key=True, max_length=32)
    owner: str | None = Field(default=None, max_length=64)
    until: datetime | None = utc(nullable=True)
    last_run_at: datetime | None = utc(nullable=True)
    runs: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))


# --- The merchant member card of WeChat Pay's Brand API, 商家名片会员 (central/payments/brand_cards.py, 0007) -----


class WechatBrandCard(CentralModel, table=True):
    """A merchant member card (商家名片会员卡) a member holds: its template and code, and the openid (of
    `wechat_appid`) the Brand API knows the holder by. The code is also the member's identifier
    `card_no`, so a till finds the member when the card is shown."""

    __tablename__ = "wechat_brand_card"

    card_id: str = Field(primary_key=True, max_length=32)
    code: str = Field(primary_key=True, max_length=32)
    member_id: str = Field(foreign_key="member.id", index=True, max_length=16)
    openid: str | None = Field(default=None, max_length=128)
    source: str = Field(max_length=16, description="payment (下单同步入会), import, admin")
    out_trade_no: str | None = Field(default=None, max_length=32, description="the payment that enrolled the payer")
    created_at: datetime = utc()


class BrandCardPush(CentralModel, table=True):
    """One ledger entry to tell one merchant member card about (a user feed, 用户动态). `out_request_no` is derived
    from the entry and the card, so a retried push is the same request to WeChat Pay."""

    __tablename__ = "brand_card_push"
    __table_args__ = (
        sa.UniqueConstraint("ledger_entry_id", "card_id", "code", name="uq_brand_card_push_entry"),
        sa.Index("ix_brand_card_push_due", "state", "next_attempt_at"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(AutoId, primary_key=True, autoincrement=True))
    ledger_entry_id: int = Field(sa_column=sa.Column(AutoId, sa.ForeignKey("ledger_entry.id"), nullable=False))
    card_id: str = Field(max_length=32)
    code: str = Field(max_length=32)
    member_id: str = Field(max_length=16)
    out_request_no: str = Field(max_length=64, unique=True)
    state: str = Field(default="pending", max_length=8, description="pending, done, failed, skipped")
    attempts: int = 0
    next_attempt_at: datetime = utc()
    last_error: str | None = Field(default=None, max_length=256)
    created_at: datetime = utc()
    done_at: datetime | None = utc(nullable=True)


class WechatCardJoin(CentralModel, table=True):
    """A code payment that carried the member card join fields (下单同步入会) in its attach: once it is paid, the
    payer's card code is linked to the member."""

    __tablename__ = "wechat_card_join"
    __table_args__ = (sa.Index("ix_wechat_card_join_due", "state", "next_attempt_at"),)

    out_trade_no: str = Field(primary_key=True, max_length=32)
    store_id: str = Field(max_length=16)
    card_id: str = Field(max_length=32)
    code: str = Field(max_length=32, description="the user_card_code the attach offered")
    state: str = Field(
        default="pending", max_length=16, description="pending, linked, not_paid, not_enrolled, conflict"
    )
    attempts: int = 0
    next_attempt_at: datetime = utc()
    member_id: str | None = Field(default=None, max_length=16)
    linked_code: str | None = Field(default=None, max_length=32, description="the code WeChat Pay holds for the payer")
    last_error: str | None = Field(default=None, max_length=256)
    created_at: datetime = utc()
    done_at: datetime | None = utc(nullable=True)
