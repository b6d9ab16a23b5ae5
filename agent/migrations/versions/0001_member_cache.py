"""Member cache: members, their identifiers, sync state.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "member",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("tier", sa.Text, nullable=False),
        sa.Column("points", sa.Integer, nullable=False),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("phone_masked", sa.Text, nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Text, nullable=False),
    )
    op.create_table(
        "member_identifier",
        sa.Column("kind", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, primary_key=True),
        sa.Column("member_id", sa.Text, sa.ForeignKey("member.id", ondelete="CASCADE"), nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_member_identifier_member_id", "member_identifier", ["member_id"])
    op.create_table(
        "sync_state",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sync_state")
    op.drop_index("ix_member_identifier_member_id", "member_identifier")
    op.drop_table("member_identifier")
    op.drop_table("member")
