"""``stocksync db``: the schema (Alembic migrations)."""
from __future__ import annotations

import click


@click.group("db")
def db_group() -> None:
    """Database schema commands."""


@db_group.command("upgrade")
@click.option("--revision", default="heads", show_default=True, help="Alembic revision to upgrade to.")
def db_upgrade(revision: str) -> None:
    """Apply the schema migrations (Alembic) to DATABASE_URL or the embedded database."""
    from db.migrate import upgrade
    from runtime import resources

    upgrade(resources.database_url(), revision)
    click.echo(f"database at revision {revision}")
