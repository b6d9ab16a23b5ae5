"""When the provider answered a payment's charge: the 15 s before a reverse count from there.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Written out here rather than imported from central.models: a migration must not change when the models do.
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Nullable, no default: payments charged before this release have no recorded answer, and a reverse of one of
    # them counts its 15 s from when it is decided. SQLite adds such a column in place, no table rebuild.
    op.add_column("payment", sa.Column("charge_answered_at", UTC_TIME, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payment") as batch:
        batch.drop_column("charge_answered_at")
