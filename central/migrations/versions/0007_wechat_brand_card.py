"""The merchant member card of WeChat Pay's Brand API (商家名片会员): the cards members hold, the points feeds to push
to them, and the code payments that enrol their payer (下单同步入会).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Written out here rather than imported from central.models: a migration must not change when the models do.
UTC_TIME = sa.DateTime(timezone=True)
AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "wechat_brand_card",
        sa.Column("card_id", sa.String(32), primary_key=True),
        sa.Column("code", sa.String(32), primary_key=True),
        sa.Column("member_id", sa.String(16), sa.ForeignKey("member.id"), nullable=False),
        sa.Column("openid", sa.String(128), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("out_trade_no", sa.String(32), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
    )
    op.create_index("ix_wechat_brand_card_member_id", "wechat_brand_card", ["member_id"])
    op.create_table(
        "brand_card_push",
        sa.Column("id", AUTO_ID, primary_key=True, autoincrement=True),
        sa.Column("ledger_entry_id", AUTO_ID, sa.ForeignKey("ledger_entry.id"), nullable=False),
        sa.Column("card_id", sa.String(32), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("member_id", sa.String(16), nullable=False),
        sa.Column("out_request_no", sa.String(64), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTC_TIME, nullable=False),
        sa.Column("last_error", sa.String(256), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("done_at", UTC_TIME, nullable=True),
        sa.UniqueConstraint("ledger_entry_id", "card_id", "code", name="uq_brand_card_push_entry"),
        sa.UniqueConstraint("out_request_no"),
    )
    op.create_index("ix_brand_card_push_due", "brand_card_push", ["state", "next_attempt_at"])
    op.create_table(
        "wechat_card_join",
        sa.Column("out_trade_no", sa.String(32), primary_key=True),
        sa.Column("store_id", sa.String(16), nullable=False),
        sa.Column("card_id", sa.String(32), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTC_TIME, nullable=False),
        sa.Column("member_id", sa.String(16), nullable=True),
        sa.Column("linked_code", sa.String(32), nullable=True),
        sa.Column("last_error", sa.String(256), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("done_at", UTC_TIME, nullable=True),
    )
    op.create_index("ix_wechat_card_join_due", "wechat_card_join", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_wechat_card_join_due", "wechat_card_join")
    op.drop_table("wechat_card_join")
    op.drop_index("ix_brand_card_push_due", "brand_card_push")
    op.drop_table("brand_card_push")
    op.drop_index("ix_wechat_brand_card_member_id", "wechat_brand_card")
    op.drop_table("wechat_brand_card")
