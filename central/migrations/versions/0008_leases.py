"""Leases: which central process drives an unfinished payment or refund, and which runs each periodic job, when
several processes share one database (central/leases.py).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# Written out here rather than imported from central.models: a migration must not change when the models do.
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Nullable, no default: an unfinished payment of an earlier release has no owner, so the first process to look
    # takes it. SQLite adds such columns in place, no table rebuild.
    for table in ("payment", "payment_refund"):
        op.add_column(table, sa.Column("lease_owner", sa.String(64), nullable=True))
        op.add_column(table, sa.Column("lease_until", UTC_TIME, nullable=True))
    op.create_table(
        "job_lease",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("until", UTC_TIME, nullable=True),
        sa.Column("last_run_at", UTC_TIME, nullable=True),
        sa.Column("runs", sa.BigInteger(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("job_lease")
    for table in ("payment_refund", "payment"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("lease_until")
            batch.drop_column("lease_owner")
