"""Alembic environment: central runs migrations itself, on the connection it already holds (central.db.migrate)."""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run migrations through central.db.migrate (or `pos-central db upgrade`), which passes its connection"
    )

# render_as_batch: SQLite can only alter a table by copying it; Alembic's batch mode does that.
context.configure(
    connection=connection,
    render_as_batch=True,
    target_metadata=context.config.attributes.get("target_metadata"),
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
