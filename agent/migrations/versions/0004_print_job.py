"""Durable print queue: one row per receipt job, holding the bytes rendered once.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "print_job",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("printer_id", sa.Text, nullable=False),
        sa.Column("journal_id", sa.Text, nullable=True),
        sa.Column("purpose", sa.Text, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Text, nullable=False),
        sa.Column("printed_at", sa.Text, nullable=True),
    )
    op.create_index("ix_print_job_printer_status", "print_job", ["printer_id", "status", "seq"])


def downgrade() -> None:
    op.drop_index("ix_print_job_printer_status", "print_job")
    op.drop_table("print_job")
