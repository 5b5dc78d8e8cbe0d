"""Alembic environment: runs on the connection ragloop hands it (see daemon.store.upgrade)."""

from alembic import context

from daemon.store.db import SQLModel

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    # SQLite cannot ALTER most things in place; batch mode copies the table, keeping its rows.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
