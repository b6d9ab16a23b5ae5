"""Alembic environment: the agent runs migrations itself, on the connection it already holds."""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through agent.db.open_database, which passes its connection")

# render_as_batch: SQLite can only alter a table by copying it; Alembic's batch mode does that.
context.configure(connection=connection, render_as_batch=True, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
