"""Retention: journal checkpoints (the last purged link of each station's chain), purges allowed only up to them,
and when a cached member was last seen at this till.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_APPEND_ONLY = "CREATE TRIGGER journal_no_delete BEFORE DELETE ON journal BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END"


def upgrade() -> None:
    op.create_table(
        "journal_checkpoint",
        sa.Column("station_id", sa.Text, primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("hash", sa.Text, nullable=False),
        sa.Column("purged_rows", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Text, nullable=False),
    )
    # A checkpoint only moves forward: moving it back would let verify accept a chain that lost rows.
    op.execute(
        "CREATE TRIGGER journal_checkpoint_forward BEFORE UPDATE ON journal_checkpoint WHEN NEW.seq < OLD.seq "
        "BEGIN SELECT RAISE(ABORT, 'a journal checkpoint only moves forward'); END"
    )
    # Still append-only, except the purge: a row may go only once a checkpoint covers it (recorded first, in the
    # same transaction) and central has confirmed it (its outbox row is gone).
    op.execute("DROP TRIGGER journal_no_delete")
    op.execute(
        "CREATE TRIGGER journal_no_delete BEFORE DELETE ON journal WHEN"
        " NOT EXISTS (SELECT 1 FROM journal_checkpoint AS c WHERE c.station_id = OLD.station_id AND OLD.seq <= c.seq)"
        " OR EXISTS (SELECT 1 FROM outbox AS o WHERE o.journal_id = OLD.id)"
        " BEGIN SELECT RAISE(ABORT, 'the journal is append-only: only rows central confirmed, up to a retention checkpoint,"
        " may be purged'); END"
    )
    op.add_column("member", sa.Column("last_seen_at", sa.Text, nullable=True))
    # Members cached before this release count as seen when the feed last wrote them.
    op.execute("UPDATE member SET last_seen_at = updated_at")


def downgrade() -> None:
    with op.batch_alter_table("member") as batch:
        batch.drop_column("last_seen_at")
    op.execute("DROP TRIGGER journal_no_delete")
    op.execute(_APPEND_ONLY)
    op.execute("DROP TRIGGER journal_checkpoint_forward")
    op.drop_table("journal_checkpoint")
