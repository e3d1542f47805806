"""``stocksync ledger export [--from T] [--to T] [--account CODE] [--sku SKU] [--format csv|jsonl] [--output FILE]``:
a range of the ledger (event time ``from`` included, ``to`` not), in booking order, a page at a time."""
from __future__ import annotations

import click

from workers.cli.common import export_options, write_export


@click.group("ledger")
def ledger_group() -> None:
    """The stock ledger as a file."""


@ledger_group.command("export")
@click.option("--from", "since", default=None, metavar="TIME",
              help="Rows whose event time is at or after this date (2026-11-24, midnight UTC) or ISO time.")
@click.option("--to", "until", default=None, metavar="TIME", help="Rows whose event time is before this one.")
@click.option("--account", default=None, metavar="CODE", help="Only this account's rows.")
@click.option("--sku", default=None, help="Only this SKU's rows (exactly).")
@export_options
def export_command(since: str | None, until: str | None, account: str | None, sku: str | None, fmt: str,
                   output: str) -> None:
    """Ledger rows: id, account, sku, change type, before, after, change, order, reference, actor, times."""
    from core.stock_files import parse_bound

    bounds = {}
    for name, value, option in (("since", since, "--from"), ("until", until, "--to")):
        try:
            bounds[name] = parse_bound(value, option)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint=option) from None
    if bounds["since"] and bounds["until"] and bounds["since"] >= bounds["until"]:
        raise click.BadParameter("--from must be before --to", param_hint="--from")
    write_export("ledger", fmt, output, account=account, sku=sku, **bounds)
