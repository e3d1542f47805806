"""Alembic environment: online migrations against the configured URL."""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from db.models import Base

# Every module that declares tables (one per pipeline) must be imported here for autogenerate.
import db.alert_models  # noqa: F401
import db.event_models  # noqa: F401
import db.supplier  # noqa: F401

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    """Run the migrations in one transaction on a fresh connection."""
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
