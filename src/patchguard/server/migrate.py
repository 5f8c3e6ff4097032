"""Apply the server's Alembic migrations (on start, and `patchguard server migrate`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

MIGRATIONS = Path(__file__).parent / "migrations"


def _config(bound: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def migrate(bound: Engine) -> None:
    """Bring the database to the newest schema; a no-op when it is there already. On
    PostgreSQL an advisory lock lets several servers start at once."""
    config = _config(bound)
    with bound.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7262012)")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def revision(bound: Engine, message: str) -> None:
    """Write a new migration from the models (development only)."""
    config = _config(bound)
    with bound.begin() as connection:
        config.attributes["connection"] = connection
        command.revision(config, message=message, autogenerate=True)
