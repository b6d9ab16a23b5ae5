"""Consents to membership: which privacy notice a customer agreed to, when, and where.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Written out here rather than imported from central.models: a migration must not change when the models do.
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "member_consent",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("member_id", sa.String(16), sa.ForeignKey("member.id"), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("notice_version", sa.String(32), nullable=True),
        sa.Column("store_id", sa.String(16), nullable=True),
        sa.Column("given_at", UTC_TIME, nullable=False),
    )
    op.create_index("ix_member_consent_member_id", "member_consent", ["member_id"])


def downgrade() -> None:
    op.drop_index("ix_member_consent_member_id", "member_consent")
    op.drop_table("member_consent")
