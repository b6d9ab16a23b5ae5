"""Member-code public keys, member codes already accepted (replay guard), and members' coupons.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "member_code_key",
        sa.Column("kid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("not_after", sa.Text, nullable=True),
        sa.Column("updated_at", sa.Text, nullable=False),
    )
    op.create_table(
        "seen_member_code",
        sa.Column("fingerprint", sa.Text, primary_key=True),
        sa.Column("member_id", sa.Text, nullable=False),
        sa.Column("accepted_at", sa.Text, nullable=False),
        sa.Column("expires_at", sa.Text, nullable=False),
    )
    op.create_index("ix_seen_member_code_expires_at", "seen_member_code", ["expires_at"])
    op.create_table(
        "coupon",
        sa.Column("code", sa.Text, primary_key=True),
        sa.Column("member_id", sa.Text, sa.ForeignKey("member.id", ondelete="CASCADE"), nullable=True),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("amount_off_fen", sa.Integer, nullable=False),
        sa.Column("percent_off", sa.Integer, nullable=False),
        sa.Column("threshold_fen", sa.Integer, nullable=False),
        sa.Column("cap_fen", sa.Integer, nullable=True),
        sa.Column("valid_from", sa.Text, nullable=False),
        sa.Column("valid_until", sa.Text, nullable=False),
        sa.Column("usable_offline", sa.Boolean, nullable=False),
        sa.Column("used_at", sa.Text, nullable=True),
    )
    op.create_index("ix_coupon_member_id", "coupon", ["member_id"])


def downgrade() -> None:
    op.drop_index("ix_coupon_member_id", "coupon")
    op.drop_table("coupon")
    op.drop_index("ix_seen_member_code_expires_at", "seen_member_code")
    op.drop_table("seen_member_code")
    op.drop_table("member_code_key")
