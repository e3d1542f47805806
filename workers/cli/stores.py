"""`stocksync stores` commands: the connected stores and their syncs (registered by :func:`register`).

- ``stocksync stores add PLATFORM NAME --credentials-env VAR [--base-url U] [--inactive] [--no-auto-sync]``
- ``stocksync stores list``
- ``stocksync stores sync NAME | --all [--wait]``
- ``stocksync stores disable NAME`` / ``stocksync stores enable NAME``

A store's credential is never given on the command line nor stored: ``--credentials-env`` names
the environment variable that holds it (in the workers' environment), and nothing here prints it.
"""
from __future__ import annotations

import asyncio

import click


@click.group("stores")
def stores_group() -> None:
    """Store integrations (Back Market, Refurbed, Shopify): add, list, sync, disable."""


def _console():
    """A console wide enough for the stores table when stdout is not a terminal (logs, pipes)."""
    from rich.console import Console

    return Console(width=None if Console().is_terminal else 200)


def _sessions():
    from runtime import resources

    return resources.sessions()


def _enqueue(integration_ids: list[int], trigger: str) -> None:
    """Send ``sync_store`` for each id; without Redis, run them on in-process worker threads until done."""
    from runtime import resources
    from workers.cli.common import fleet as _fleet
    from workers.cli.common import in_process_worker

    fleet = _fleet()
    from actors.stores import QUEUE, sync_store

    with in_process_worker():
        for integration_id in integration_ids:
            sync_store.send(integration_id, trigger)
        if resources.in_process():
            fleet.broker.join(QUEUE, fail_fast=False)


def _run_here(integration_id: int, trigger: str):
    """Run one store sync in this process (``--wait``), as a worker would; the result or a ClickException."""
    import aiohttp

    from db.stores import StoreError
    from db.syncs import SyncRefused
    from pipelines.stores import begin_store_sync, run_store_sync
    from runtime import resources
    from runtime.clients import store_limiter

    sessions = _sessions()
    try:
        start = begin_store_sync(sessions, integration_id, trigger)
    except (SyncRefused, StoreError) as refused:
        raise click.ClickException(str(refused)) from None

    async def go():
        try:
            async with aiohttp.ClientSession() as http:
                return await run_store_sync(sessions, start, http, limiter_for=store_limiter)
        finally:
            await resources.close_loop_resources()

    try:
        return asyncio.run(go())
    except Exception:
        return None  # the log says why; the table shows it


@stores_group.command("add")
@click.argument("platform")
@click.argument("name")
@click.option("--credentials-env", "credentials_env", required=True, metavar="VAR",
              help="NAME of the environment variable holding the API token (e.g. SHOPIFY_EU_TOKEN), never the token.")
@click.option("--base-url", default=None, help="The store's API host (default: the platform's; Shopify: "
              "https://NAME.myshopify.com).")
@click.option("--inactive", is_flag=True, help="Add it disabled (it never syncs until enabled).")
@click.option("--no-auto-sync", is_flag=True, help="Leave it out of the scheduled sync of all stores.")
def add_command(platform: str, name: str, credentials_env: str, base_url: str | None, inactive: bool,
                no_auto_sync: bool) -> None:
    """Connect a store on PLATFORM (backmarket, refurbed, shopify) as NAME; sync it once if active and auto-sync."""
    from db import stores

    with _sessions()() as session:
        try:
            integration = stores.add_integration(session, platform=platform, name=name,
                                                 credentials_env=credentials_env, base_url=base_url,
                                                 active=not inactive, auto_sync=not no_auto_sync)
        except stores.StoreError as error:
            raise click.UsageError(str(error)) from None
        session.commit()
        integration_id, active, auto = integration.id, integration.active, integration.auto_sync
    click.echo(f"store {name} added ({platform}, credentials from ${credentials_env}, marketplace {name})")
    if active and auto:
        _enqueue([integration_id], "created")
        click.echo(f"initial sync of {name} enqueued (queue stores); see `stocksync stores list`")


@stores_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print every store and its last sync as JSON.")
def list_command(as_json: bool) -> None:
    """Every store, whether its credential variable is set here, and its last sync."""
    import os

    from db import stores

    with _sessions()() as session:
        rows = stores.list_integrations(session)
    if as_json:
        from workers.cli.common import echo_json

        echo_json([{"id": integration.id, "name": integration.name, "platform": integration.platform,
                    "active": integration.active, "auto_sync": integration.auto_sync,
                    "credentials_env": integration.credentials_env,  # the name only, never the value
                    "credentials_set": bool(os.environ.get(integration.credentials_env)),
                    "last_sync": None if log is None else {
                        "trigger": log.trigger, "status": log.status, "started_at": log.started_at,
                        "finished_at": log.finished_at, "items": log.items, "created": log.created,
                        "updated": log.updated, "skipped": log.skipped, "errors": log.errors}}
                   for integration, log in rows])
        return
    if not rows:
        click.echo("no stores yet: add one with `stocksync stores add PLATFORM NAME --credentials-env VAR`")
        return
    _console().print(stores_table(rows, os.environ))


def stores_table(rows, environ):
    """A rich table: one row per store with its last sync log (credential variables by name only)."""
    from rich.table import Table

    table = Table(title="Store integrations")
    for column in ("id", "name", "platform", "active", "auto sync", "credentials", "last sync", "status", "items",
                   "created", "updated", "skipped", "errors"):
        table.add_column(column, justify="right" if column in ("id", "items", "created", "updated", "skipped")
                         else "left")
    for integration, log in rows:
        is_set = "set" if environ.get(integration.credentials_env) else "NOT SET"
        credential = f"${integration.credentials_env} ({is_set})"
        if log is None:
            last = status = items = created = updated = skipped = "-"
            errors = ""
        else:
            when = log.finished_at or log.started_at
            last = f"{when:%Y-%m-%d %H:%M:%S} ({log.trigger})"
            status, items, created, updated, skipped = (log.status, str(log.items), str(log.created),
                                                        str(log.updated), str(log.skipped))
            errors = (log.errors or "").splitlines()[0][:80] if log.errors else ""
        table.add_row(str(integration.id), integration.name, integration.platform,
                      "yes" if integration.active else "no", "yes" if integration.auto_sync else "no", credential,
                      last, status, items, created, updated, skipped, errors)
    return table


@stores_group.command("sync")
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="Every active store (auto-sync or not).")
@click.option("--wait/--no-wait", default=None,
              help="Run the sync here and print its counts (always on without REDIS_URL); otherwise enqueue it.")
def sync_command(name: str | None, all_: bool, wait: bool | None) -> None:
    """Sync store NAME (or --all active stores) now."""
    from sqlalchemy import select

    from db import stores
    from db.store_models import StoreIntegration
    from runtime import resources

    if bool(name) == all_:
        raise click.UsageError("give a store NAME or --all (not both)")
    with _sessions()() as session:
        if all_:
            ids = list(session.scalars(select(StoreIntegration.id).where(StoreIntegration.active.is_(True))
                                       .order_by(StoreIntegration.name)))
            if not ids:
                raise click.ClickException("no active stores")
        else:
            try:
                integration = stores.find_integration(session, name)
            except stores.StoreError as error:
                raise click.ClickException(str(error)) from None
            if not integration.active:
                raise click.ClickException(f"store {name} is disabled (`stocksync stores enable {name}` first)")
            ids = [integration.id]
    wait = True if resources.in_process() else bool(wait)
    if not wait:
        _enqueue(ids, "manual")
        click.echo(f"enqueued {len(ids)} store sync(s) on queue stores; see `stocksync stores list`")
        return
    failed = []
    for integration_id in ids:
        result = _run_here(integration_id, "manual")
        if result is None or result.status != "succeeded":
            failed.append(integration_id)
    with _sessions()() as session:
        rows = [row for row in stores.list_integrations(session) if row[0].id in ids]
    import os

    _console().print(stores_table(rows, os.environ))
    if failed:
        raise click.ClickException(f"{len(failed)} store sync(s) failed: see the errors column")


def _set_active(name: str, active: bool) -> None:
    from db import stores

    with _sessions()() as session:
        try:
            stores.set_active(session, name, active)
        except stores.StoreError as error:
            raise click.ClickException(str(error)) from None
        session.commit()
    click.echo(f"store {name} {'enabled' if active else 'disabled'}")


@stores_group.command("disable")
@click.argument("name")
def disable_command(name: str) -> None:
    """Disable store NAME: it is not synced (scheduled or manual) until enabled again."""
    _set_active(name, False)


@stores_group.command("enable")
@click.argument("name")
def enable_command(name: str) -> None:
    """Enable store NAME again."""
    _set_active(name, True)


__all__ = ["register", "stores_table"]
