"""``stocksync accounts``: the places the seller sells, and their syncs (``stocksync stores`` is an alias).

- ``accounts add PLATFORM CODE --credentials-env VAR [--name N] [--base-url U] [--option key=value ...]
  [--disabled] [--no-auto-sync]``
- ``accounts list [--json]``
- ``accounts enable CODE`` / ``accounts disable CODE``
- ``accounts sync CODE | --all [--force] [--wait]``

An account's credential is never given on the command line nor stored: ``--credentials-env`` names
the environment variable that holds it (under ``STOCKSYNC_ACCOUNT_``), and nothing here prints it.
"""
from __future__ import annotations

import json

import click

from workers.cli.common import in_process_worker


@click.group("accounts")
def accounts_group() -> None:
    """Accounts (a Back Market account, a Refurbed store, a Shopify shop): add, list, enable, disable, sync."""


def _sessions():
    from runtime import resources

    return resources.sessions()


def _options(pairs: tuple[str, ...]) -> dict:
    """``key=value`` pairs as options; a value is read as JSON when it parses (true, [1, 2]), else as text."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected key=value, got {pair[:60]!r}", param_hint="--option")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options


@accounts_group.command("add")
@click.argument("platform")
@click.argument("code")
@click.option("--credentials-env", "credentials_env", default=None, metavar="VAR",
              help="NAME of the environment variable holding the credential (STOCKSYNC_ACCOUNT_..., e.g. "
                   "STOCKSYNC_ACCOUNT_SHOP_EU_TOKEN), never the credential itself.")
@click.option("--name", default=None, help="Display name (default: the code).")
@click.option("--base-url", default=None, help="Its API, https on the platform's own hosts (default: the "
              "platform's; Shopify: https://SHOP.myshopify.com).")
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="An option (restock_on_cancel, webhook_secret_env, shop_domain, location_id, location_ids, language). "
                   "Repeatable.")
@click.option("--disabled", is_flag=True, help="Add it disabled (never synced, polled or pushed until enabled).")
@click.option("--no-auto-sync", is_flag=True, help="Leave it out of the scheduled stock sync.")
def add_command(platform: str, code: str, credentials_env: str | None, name: str | None, base_url: str | None,
                option_pairs: tuple[str, ...], disabled: bool, no_auto_sync: bool) -> None:
    """Add an account on PLATFORM (backmarket, refurbed, shopify, manual) called CODE; sync it once if it can."""
    from db import accounts as account_rows
    from runtime import accounts
    from runtime.settings import get_settings

    options = _options(option_pairs)
    with _sessions()() as session:
        try:
            account_rows.add_account(session, platform=platform, code=code, name=name,
                                     credentials_env=credentials_env, base_url=base_url, options=options,
                                     enabled=not disabled, auto_sync=not no_auto_sync,
                                     allow_loopback=get_settings().accounts_allow_loopback)
        except ValueError as error:  # AccountError, UnknownPlatform: never the credential's value
            raise click.UsageError(str(error)) from None
        session.commit()
    accounts.forget()
    view = accounts.account(code)
    click.echo(f"account {code} added ({view.platform.title}, credential from "
               f"${view.credentials_env or view.platform.default_credential})")
    if not (view.enabled and view.auto_sync and view.platform.paging):
        return
    if not accounts.configured(view):
        click.echo(f"{view.credentials_env} is not set here: its first sync runs where it is set (the workers), "
                   f"at the next scheduled sync or with `stocksync accounts sync {code}` there")
        return
    _sync([code], force=False, wait=None)


@accounts_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print every account and its last sync run as JSON.")
def list_command(as_json: bool) -> None:
    """Every account: platform, state, what it can do, whether its credential is set here, its last sync."""
    from db.accounts import last_runs
    from pipelines.stock_sync import SYNC_KIND
    from runtime import accounts
    from workers.cli.common import echo_json, print_table

    views = accounts.every(enabled_only=False)
    with _sessions()() as session:
        runs = last_runs(session, SYNC_KIND)
    rows = []
    for view in views:
        run = runs.get(view.code)
        rows.append({"code": view.code, "name": view.name, "platform": view.platform.name, "enabled": view.enabled,
                     "auto_sync": view.auto_sync,
                     # the variable's name only, never its value
                     "credentials_env": view.credentials_env or view.platform.default_credential or None,
                     "configured": accounts.configured(view) if view.platform.paging else None,
                     "capabilities": view.platform.abilities(),
                     "last_sync": None if run is None else {
                         "id": run.id, "trigger": run.trigger, "status": run.status, "started_at": run.started_at,
                         "finished_at": run.finished_at, "items": run.items, "changed": run.changed,
                         "error": run.error}})
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no accounts yet: add one with `stocksync accounts add PLATFORM CODE --credentials-env VAR`")
        return
    print_table("accounts", ("code", "platform", "enabled", "auto sync", "credential", "can", "last sync", "error"),
                [_table_row(row) for row in rows])


def _table_row(row: dict) -> tuple[str, ...]:
    yes = {True: "yes", False: "no"}
    credential = "-" if row["credentials_env"] is None else \
        f"${row['credentials_env']} ({'set' if row['configured'] else 'NOT SET here'})"
    run = row["last_sync"]
    last = "never" if run is None else \
        f"{run['id']} {run['status']} {(run['finished_at'] or run['started_at']):%Y-%m-%d %H:%M} ({run['items']} items)"
    error = (run or {}).get("error") or ""
    return (row["code"], row["platform"], yes[row["enabled"]], yes[row["auto_sync"]], credential,
            ", ".join(row["capabilities"]) or "-", last, error.splitlines()[0] if error else "")


def _set_enabled(code: str, enabled: bool) -> None:
    from db import accounts as account_rows
    from runtime import accounts

    with _sessions()() as session:
        try:
            account_rows.set_enabled(session, code, enabled)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="CODE") from None
        session.commit()
    accounts.forget()
    click.echo(f"account {code} {'enabled' if enabled else 'disabled'}")


@accounts_group.command("enable")
@click.argument("code")
def enable_command(code: str) -> None:
    """Enable account CODE again."""
    _set_enabled(code, True)


@accounts_group.command("disable")
@click.argument("code")
def disable_command(code: str) -> None:
    """Disable account CODE: it is not synced, polled or pushed (scheduled or by hand) until enabled."""
    _set_enabled(code, False)


@accounts_group.command("sync")
@click.argument("code", required=False)
@click.option("--all", "all_", is_flag=True, help="Every enabled account with a catalogue whose credential is set "
              "here (auto-sync or not).")
@click.option("--force", is_flag=True, help="Start even inside the cooldown (never while one is running).")
@click.option("--wait/--no-wait", default=None,
              help="Follow each run to its end and print the runs (always on without REDIS_URL).")
def sync_command(code: str | None, all_: bool, force: bool, wait: bool | None) -> None:
    """Sync account CODE's stock (or --all accounts') now, through the one catalogue pipeline."""
    from runtime import accounts

    if bool(code) == all_:
        raise click.UsageError("give an account CODE or --all (not both)")
    codes = [view.code for view in accounts.ready(("paging",))] if all_ else [code]
    if not codes:
        raise click.ClickException("no enabled account with a catalogue has its credential set here")
    _sync(codes, force=force, wait=wait)


def _sync(codes: list[str], *, force: bool, wait: bool | None) -> None:
    """Start each account's sync (``begin_stock_sync``); with ``wait``, follow them and print their runs."""
    from core.errors import MalformedMessage
    from db.syncs import SyncRefused
    from runtime import resources
    from workers.cli.common import console, summary_table
    from workers.cli.sync import run_stock_sync

    wait = True if resources.in_process() else bool(wait)
    refused, finished = [], []
    with in_process_worker():
        for code in codes:
            try:
                outcome = run_stock_sync(code, force=force, wait=wait)
            except MalformedMessage as error:  # no such account, disabled, nothing to sync
                raise click.BadParameter(str(error), param_hint="CODE") from None
            except SyncRefused as error:
                refused.append(f"{code}: {error.reason}")
                continue
            if wait:
                finished.append(outcome)
            else:
                click.echo(f"sync {outcome} of {code} started; follow it with `stocksync monitor {outcome}`")
    if finished:
        console.print(summary_table(finished, title="stock syncs"))
    failed = [f"sync {run.id} of {run.target} {run.status}: {run.error}" for run in finished
              if run.status != "succeeded"]
    if refused or failed:
        raise click.ClickException("; ".join([*(f"not started: {line}" for line in refused), *failed]))


#: ``stocksync stores ...``: the accounts' commands under the name they had before accounts.
stores_group = click.Group("stores", commands=dict(accounts_group.commands),
                           help="Alias of `stocksync accounts` (the name of before accounts).")

__all__ = ["accounts_group", "stores_group"]
