"""WeChat mini program sessions and the official account's follower walk.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Written out here rather than imported from central.models: a migration must not change when the models do.
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "wechat_session",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("appid", sa.String(32), nullable=False),
        sa.Column("openid", sa.String(128), nullable=False),
        sa.Column("unionid", sa.String(128), nullable=True),
        sa.Column("session_key", sa.String(64), nullable=False),
        sa.Column("member_id", sa.String(16), sa.ForeignKey("member.id"), nullable=True),
        sa.Column("phone_code_hash", sa.String(64), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("expires_at", UTC_TIME, nullable=False),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_wechat_session_openid", "wechat_session", ["appid", "openid"])
    op.create_table(
        "wechat_follower_sync",
        sa.Column("appid", sa.String(32), primary_key=True),
        sa.Column("next_openid", sa.String(128), nullable=False),
        sa.Column("passes", sa.Integer(), nullable=False),
        sa.Column("pass_followers", sa.Integer(), nullable=False),
        sa.Column("linked", sa.Integer(), nullable=False),
        sa.Column("last_run_at", UTC_TIME, nullable=True),
        sa.Column("last_pass_at", UTC_TIME, nullable=True),
        sa.Column("last_error", sa.String(256), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("wechat_follower_sync")
    op.drop_index("ix_wechat_session_openid", "wechat_session")
    op.drop_table("wechat_session")
