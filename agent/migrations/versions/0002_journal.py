"""Transaction journal (append-only, hash-chained per station) and its outbox.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journal",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("station_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("business_day", sa.Text, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("member_id", sa.Text, nullable=True),
        sa.Column("total_fen", sa.Integer, nullable=False),
        sa.Column("points_earned", sa.Integer, nullable=False),
        sa.Column("points_redeemed", sa.Integer, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.Text, nullable=False),
        sa.Column("hash", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_journal_station_seq", "journal", ["station_id", "seq"])
    op.create_index("ix_journal_business_day", "journal", ["business_day"])
    # Append-only, enforced by the database itself: no code path, however buggy, rewrites history.
    op.execute(
        "CREATE TRIGGER journal_no_update BEFORE UPDATE ON journal "
        "BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END"
    )
    op.execute(
        "CREATE TRIGGER journal_no_delete BEFORE DELETE ON journal "
        "BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END"
    )
    op.create_table(
        "outbox",
        sa.Column("journal_id", sa.Text, sa.ForeignKey("journal.id"), primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("next_attempt_at", sa.Text, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_outbox_status_next", "outbox", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_status_next", "outbox")
    op.drop_table("outbox")
    op.execute("DROP TRIGGER journal_no_delete")
    op.execute("DROP TRIGGER journal_no_update")
    op.drop_index("ix_journal_business_day", "journal")
    op.drop_index("ix_journal_station_seq", "journal")
    op.drop_table("journal")
