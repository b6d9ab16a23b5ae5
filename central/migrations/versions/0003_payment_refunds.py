"""Refunds of paid code payments: the payment_refund table, and which refund a payment event is about.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Written out here rather than imported from central.models: a migration must not change when the models do.
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "payment_refund",
        sa.Column("out_refund_no", sa.String(32), nullable=False),
        sa.Column("out_trade_no", sa.String(32), nullable=False),
        sa.Column("provider", sa.String(8), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(80), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("code", sa.String(64), nullable=True),
        sa.Column("reason_zh", sa.String(128), nullable=True),
        sa.Column("reason_en", sa.String(256), nullable=True),
        sa.Column("provider_refund_no", sa.String(64), nullable=True),
        sa.Column("refunded_at", UTC_TIME, nullable=True),
        sa.Column("finished_at", UTC_TIME, nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(["out_trade_no"], ["payment.out_trade_no"]),
        sa.PrimaryKeyConstraint("out_refund_no"),
    )
    # Start-up resumes the unfinished refunds; a new refund sums its payment's refunds.
    op.create_index("ix_payment_refund_state", "payment_refund", ["state"])
    op.create_index("ix_payment_refund_out_trade_no", "payment_refund", ["out_trade_no"])
    # A plain nullable column: SQLite adds it in place, no table rebuild.
    op.add_column("payment_event", sa.Column("out_refund_no", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payment_event") as batch:
        batch.drop_column("out_refund_no")
    op.drop_table("payment_refund")
