"""Sales in progress, kept on disk so a crash mid-checkout loses no payment: one row per open sale.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "open_sale",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("station_id", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Text, nullable=False),
    )
    op.create_index("ix_open_sale_station", "open_sale", ["station_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_open_sale_station", "open_sale")
    op.drop_table("open_sale")
