"""Reprints of a receipt, with the supervisor who approved each: the first is free, the next need approval.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reprint",
        sa.Column("job_id", sa.Text, primary_key=True),
        sa.Column("journal_id", sa.Text, nullable=False),
        sa.Column("approved_by", sa.Text, nullable=True),
        sa.Column("created_at", sa.Text, nullable=False),
    )
    op.create_index("ix_reprint_journal_id", "reprint", ["journal_id"])


def downgrade() -> None:
    op.drop_index("ix_reprint_journal_id", "reprint")
    op.drop_table("reprint")
