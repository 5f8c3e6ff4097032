"""Alembic's environment for the fleet server: the connection comes from `migrate()`
(config.attributes["connection"]), never from an alembic.ini."""

from __future__ import annotations

from alembic import context

from patchguard.server.db import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying
)
with context.begin_transaction():
    context.run_migrations()
