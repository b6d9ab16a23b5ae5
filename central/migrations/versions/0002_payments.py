"""Payments: code payments and their audit trail, WeChat member cards and their points-sync queue, bill checks.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Written out here rather than imported from central.models: a migration must not change when the models do.
UTC_TIME = sa.DateTime(timezone=True)
AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "payment",
        sa.Column("out_trade_no", sa.String(32), nullable=False),
        sa.Column("store_id", sa.String(16), nullable=False),
        sa.Column("station_id", sa.String(16), nullable=False),
        sa.Column("provider", sa.String(8), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.String(128), nullable=False),
        sa.Column("member_id", sa.String(16), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("code", sa.String(64), nullable=True),
        sa.Column("reason_zh", sa.String(128), nullable=True),
        sa.Column("reason_en", sa.String(256), nullable=True),
        sa.Column("provider_trade_no", sa.String(64), nullable=True),
        sa.Column("payer_id", sa.String(128), nullable=True),
        sa.Column("paid_amount_fen", sa.BigInteger(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("charge_sent_at", UTC_TIME, nullable=False),
        sa.Column("paid_at", UTC_TIME, nullable=True),
        sa.Column("finished_at", UTC_TIME, nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(["member_id"], ["member.id"]),
        sa.ForeignKeyConstraint(["store_id"], ["store.id"]),
        sa.PrimaryKeyConstraint("out_trade_no"),
    )
    # Start-up resumes the unfinished payments; stores list theirs by time.
    op.create_index("ix_payment_state", "payment", ["state"])
    op.create_index("ix_payment_store_created", "payment", ["store_id", "created_at"])
    op.create_table(
        "payment_event",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("out_trade_no", sa.String(32), nullable=False),
        sa.Column("at", UTC_TIME, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(24), nullable=False),
        sa.Column("code", sa.String(64), nullable=True),
        sa.Column("detail", sa.String(256), nullable=True),
        sa.ForeignKeyConstraint(["out_trade_no"], ["payment.out_trade_no"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_payment_event_out_trade_no", "payment_event", ["out_trade_no"])
    op.create_table(
        "wechat_member_card",
        sa.Column("card_id", sa.String(32), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("member_id", sa.String(16), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(["member_id"], ["member.id"]),
        sa.PrimaryKeyConstraint("card_id", "code"),
    )
    op.create_index("ix_wechat_member_card_member_id", "wechat_member_card", ["member_id"])
    op.create_table(
        "card_sync_job",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("ledger_entry_id", AUTO_ID, nullable=False),
        sa.Column("card_id", sa.String(32), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("member_id", sa.String(16), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTC_TIME, nullable=False),
        sa.Column("last_error", sa.String(256), nullable=True),
        sa.Column("bonus_sent", sa.BigInteger(), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("done_at", UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(["ledger_entry_id"], ["ledger_entry.id"]),
        sa.PrimaryKeyConstraint("id"),
        # One push per ledger entry and card, however often the entry is enqueued.
        sa.UniqueConstraint("ledger_entry_id", "card_id", "code", name="uq_card_sync_job_entry"),
    )
    op.create_table(
        "payment_bill_check",
        sa.Column("provider", sa.String(8), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("checked_at", UTC_TIME, nullable=False),
        sa.Column("bill_rows", sa.Integer(), nullable=False),
        sa.Column("matched", sa.Integer(), nullable=False),
        sa.Column("issues", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("provider", "day"),
    )
    op.create_table(
        "payment_bill_issue",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("provider", sa.String(8), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("out_trade_no", sa.String(32), nullable=False),
        sa.Column("store_id", sa.String(16), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("store_state", sa.String(16), nullable=True),
        sa.Column("store_amount_fen", sa.BigInteger(), nullable=True),
        sa.Column("bill_amount_fen", sa.BigInteger(), nullable=True),
        sa.Column("provider_trade_no", sa.String(64), nullable=True),
        sa.Column("detail", sa.String(256), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_payment_bill_issue_day", "payment_bill_issue", ["provider", "day"])


def downgrade() -> None:
    for table in (
        "payment_bill_issue",
        "payment_bill_check",
        "card_sync_job",
        "wechat_member_card",
        "payment_event",
        "payment",
    ):
        op.drop_table(table)
