"""Refunds sent through central and not journaled yet, so a lost answer or a crash finishes the same refund.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pending_refund",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("sale_id", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Text, nullable=False),
    )
    op.create_index("ix_pending_refund_sale", "pending_refund", ["sale_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_pending_refund_sale", "pending_refund")
    op.drop_table("pending_refund")
