"""``stocksync stock``: stock as files.

- ``stock export [--account CODE] [--sku SKU] [--format csv|jsonl] [--output FILE]``: every account's stock
  of every SKU (account, SKU, quantity, live listing ids, last synced), a page at a time.
- ``stock import FILE [--dry-run | --confirm] [--json]``: a goods-received CSV (``sku,account,quantity,reference``)
  as top-ups.  ``--dry-run`` (the default) books nothing and names every bad line; ``--confirm`` books every
  good line through the console's own booking (``actors.events.book_and_push``), keyed by its reference,
  so importing the same file again books nothing twice.  Exits 1 when any line is bad.
"""
from __future__ import annotations

import getpass

import click

from workers.cli.common import export_options, in_process_worker, write_export


@click.group("stock")
def stock_group() -> None:
    """Stock as files: export every account's stock, import goods received as top-ups."""


@stock_group.command("export")
@click.option("--account", default=None, metavar="CODE", help="Only this account's stock.")
@click.option("--sku", default=None, help="Only this SKU (exactly).")
@export_options
def export_command(account: str | None, sku: str | None, fmt: str, output: str) -> None:
    """Every account's stock of every SKU: account, sku, quantity, listing, last_synced_at."""
    write_export("stock", fmt, output, account=account, sku=sku)


@stock_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True))
@click.option("--dry-run/--confirm", "dry_run", default=True, show_default=True,
              help="Preview what would be booked (books nothing), or book every good line.")
@click.option("--actor", default=None, help="Who books it (the ledger's actor; default cli:<your login>).")
@click.option("--note", default=None, help="A note on every top-up (default: the file's name).")
@click.option("--json", "as_json", is_flag=True, help="Print the preview (and what was booked) as JSON.")
def import_command(file: str, dry_run: bool, actor: str | None, note: str | None, as_json: bool) -> None:
    """Import FILE, a goods-received CSV with columns sku, account, quantity, reference, as top-ups."""
    from pathlib import Path

    from core.stock_files import StockFileError
    from pipelines.stock_files import preview_import
    from runtime.settings import get_settings
    from workers.cli.common import echo_json, fleet, print_table

    limit = get_settings().stock_import_max_bytes
    with open(file, "rb") as handle:
        data = handle.read(limit + 1)  # one byte past the limit is enough to refuse it
    try:
        preview = preview_import(data, actor=actor or f"cli:{getpass.getuser()}", max_bytes=limit,
                                 note=note or f"goods received: {Path(file).name}"[:2000])
    except StockFileError as error:
        raise click.ClickException(f"{file}: {error}") from None
    report = preview.as_dict()
    booked = duplicates = 0
    if not dry_run and preview.good:
        fleet()
        from actors.events import book_and_push

        with in_process_worker():
            results, queued = book_and_push(preview.events)
        booked = sum(result.status == "applied" for result in results)
        duplicates = len(results) - booked  # booked meanwhile by someone else: still once
        report.update(booked=booked, duplicates=duplicates, pushes_enqueued=queued)
    if as_json:
        echo_json(report)
    else:
        if preview.bad:
            print_table(f"{len(preview.bad)} bad lines (not booked)", ("line", "reason"),
                        [(str(bad.line), bad.reason) for bad in preview.bad])
        if dry_run:
            print_table(f"would book {len(preview.good)} top-ups ({preview.units} units); --confirm books them",
                        ("line", "account", "sku", "quantity", "reference"),
                        [(str(line.line), line.account, line.sku, str(line.quantity), line.reference)
                         for line, _ in preview.good])
        elif preview.good:
            click.echo(f"booked {booked} top-ups ({preview.units} units)"
                       + (f"; {duplicates} were booked meanwhile (not again)" if duplicates else "")
                       + ("; their pushes enqueued" if report["pushes_enqueued"] else
                          "; their pushes will be sent by the next sweep (the queue is unavailable)"))
        else:
            click.echo("nothing to book")
    if preview.bad:
        raise click.ClickException(f"{len(preview.bad)} of {report['lines']} lines are bad and were not booked")
