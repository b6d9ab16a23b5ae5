"""Initial schema: stores, members and identifiers, points ledger, coupons, transactions, signing keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Written out here rather than imported from central.models: a migration must not change when the models do.
UTC_TIME = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "store",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "feed_counter",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(sa.table("feed_counter", sa.column("id"), sa.column("value")), [{"id": 1, "value": 0}])
    op.create_table(
        "member",
        sa.Column("tier", sa.String(16), nullable=False),
        sa.Column("display_name", sa.String(32), nullable=False),
        sa.Column("phone_masked", sa.String(16), nullable=True),
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("merged_into", sa.String(16), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(["merged_into"], ["member.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("version"),
    )
    op.create_table(
        "member_identifier",
        sa.Column("kind", sa.String(80), nullable=False),
        sa.Column("value", sa.String(128), nullable=False),
        sa.Column("member_id", sa.String(16), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(["member_id"], ["member.id"]),
        sa.PrimaryKeyConstraint("kind", "value"),
    )
    op.create_index("ix_member_identifier_member_id", "member_identifier", ["member_id"])
    op.create_table(
        "ledger_entry",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("member_id", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("transaction_id", sa.String(64), nullable=False),
        sa.Column("store_id", sa.String(16), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(["member_id"], ["member.id"]),
        sa.PrimaryKeyConstraint("id"),
        # A replayed transaction can never book its points twice.
        sa.UniqueConstraint("transaction_id", "member_id", "kind", name="uq_ledger_entry_source"),
    )
    op.create_index("ix_ledger_entry_member_id", "ledger_entry", ["member_id"])
    op.create_table(
        "coupon",
        sa.Column("title", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount_off_fen", sa.Integer(), nullable=False),
        sa.Column("percent_off", sa.Integer(), nullable=False),
        sa.Column("threshold_fen", sa.Integer(), nullable=False),
        sa.Column("cap_fen", sa.Integer(), nullable=True),
        sa.Column("usable_offline", sa.Boolean(), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("member_id", sa.String(16), nullable=False),
        sa.Column("valid_from", UTC_TIME, nullable=False),
        sa.Column("valid_until", UTC_TIME, nullable=False),
        sa.Column("used_at", UTC_TIME, nullable=True),
        sa.Column("used_in_transaction", sa.String(36), nullable=True),
        sa.ForeignKeyConstraint(["member_id"], ["member.id"]),
        sa.PrimaryKeyConstraint("code"),
    )
    op.create_index("ix_coupon_member_id", "coupon", ["member_id"])
    op.create_table(
        "store_transaction",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("store_id", sa.String(16), nullable=False),
        sa.Column("station_id", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("business_day", sa.Date(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("member_id", sa.String(16), nullable=True),
        sa.Column("total_fen", sa.BigInteger(), nullable=False),
        sa.Column("points_earned", sa.BigInteger(), nullable=False),
        sa.Column("points_redeemed", sa.BigInteger(), nullable=False),
        sa.Column("body", JSON, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("received_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(["member_id"], ["member.id"]),
        sa.ForeignKeyConstraint(["store_id"], ["store.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_store_transaction_store_day", "store_transaction", ["store_id", "business_day"])
    op.create_table(
        "signing_key",
        sa.Column("kid", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("private_key", sa.String(64), nullable=False),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("retired_at", UTC_TIME, nullable=True),
        sa.Column("not_after", UTC_TIME, nullable=True),
        sa.PrimaryKeyConstraint("kid"),
    )
    op.create_table(
        "idempotency_record",
        sa.Column("store_id", sa.String(16), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", JSON, nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("store_id", "key"),
    )


def downgrade() -> None:
    for table in (
        "idempotency_record",
        "signing_key",
        "store_transaction",
        "coupon",
        "ledger_entry",
        "member_identifier",
        "member",
        "feed_counter",
        "store",
    ):
        op.drop_table(table)
