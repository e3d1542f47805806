"""`stocksync` commands of the Ingram Micro pipeline and the sync monitor (registered by :func:`register`).

- ``stocksync ingram add-products PART[,SKU] ... [--file F] [--from-sandbox URL]``: follow products.
- ``stocksync ingram sync [--force] [--batch-size N] [--max-concurrent N] [--queue Q] [--details-queue Q]``.
- ``stocksync ingram sandbox``: serve a sandbox Ingram Micro.
- ``stocksync monitor [SYNC_ID] [--refresh S] [--once]``: a live view of syncs of every kind.
"""
from __future__ import annotations

import json
import urllib.request
from typing import Iterable, TextIO

import click

from workers.cli.monitor import watch_syncs


@click.group("ingram")
def ingram() -> None:
    """Ingram Micro: the products the seller follows, and their price, stock and details."""


def _batch_size(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    from clients.ingram import check_batch_size

    if value is None:
        return None
    try:
        return check_batch_size(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@ingram.command("sync")
@click.option("--force", is_flag=True, help="Start even inside the cooldown (never while one is running).")
@click.option("--batch-size", type=int, default=None, callback=_batch_size,
              help="Products per price & availability request (at most 50; default INGRAM_BATCH_SIZE).")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None,
              help="Batches running at once across the fleet (default INGRAM_MAX_CONCURRENT).")
@click.option("--queue", default=None, help="Queue of the batches (default INGRAM_BATCH_QUEUE).")
@click.option("--details-queue", default=None, help="Queue of the details calls (default INGRAM_DETAILS_QUEUE).")
@click.option("--wait/--no-wait", default=None,
              help="Follow the run live until it ends (always on without REDIS_URL).")
def sync_command(force: bool, batch_size: int | None, max_concurrent: int | None, queue: str | None,
                 details_queue: str | None, wait: bool | None) -> None:
    """Sync every followed product's price and stock; fetch details of the new and changed ones."""
    from actors.ingram import begin_supplier_sync
    from db.syncs import SyncRefused
    from runtime import resources
    from workers.cli.common import in_process_worker

    wait = True if resources.in_process() else bool(wait)
    with in_process_worker():
        try:
            sync_id = begin_supplier_sync(trigger="manual", force=force, batch_size=batch_size,
                                          max_concurrent=max_concurrent, queue=queue, details_queue=details_queue)
        except SyncRefused as refused:
            raise click.ClickException(refused.reason) from None
        except ValueError as error:
            raise click.UsageError(str(error)) from None
        if not wait:
            click.echo(f"supplier sync {sync_id} started; follow it with `stocksync monitor {sync_id}`")
            return
        progresses = watch_syncs(sync_id, refresh_s=0.5, once=False, until_done=True)
    if progresses and progresses[0].status != "succeeded":
        raise click.ClickException(f"supplier sync {sync_id} {progresses[0].status}: {progresses[0].error}")


@ingram.command("add-products")
@click.argument("products", nargs=-1)
@click.option("--file", "file", type=click.File("r"), default=None,
              help="One product a line, PART or PART,SKU ('-' for stdin; '#' starts a comment).")
@click.option("--from-sandbox", "sandbox_url", default=None, metavar="URL",
              help="Follow every product of a sandbox Ingram Micro (its /_sandbox/products).")
def add_products_command(products: tuple[str, ...], file: TextIO | None, sandbox_url: str | None) -> None:
    """Follow Ingram Micro products: PART or PART,SKU (the seller's SKU it supplies, to link them)."""
    from pipelines.ingram import SUPPLIER
    from db import supplier
    from runtime import resources

    rows = list(_parse_products(products, "argument"))
    if file is not None:
        rows += _parse_products((line for line in file), getattr(file, "name", "file"))
    if sandbox_url:
        with urllib.request.urlopen(sandbox_url.rstrip("/") + "/_sandbox/products", timeout=30) as response:
            rows += [(part, None) for part in json.loads(response.read())]
    if not rows:
        raise click.UsageError("no products given: pass PART[,SKU] arguments, --file or --from-sandbox")
    with resources.sessions()() as session:
        try:
            new = supplier.add_products(session, SUPPLIER, rows)
        except ValueError as error:
            raise click.UsageError(str(error)) from None
        session.commit()
    click.echo(f"{len({part for part, _ in rows})} products followed ({new} new)")


def _parse_products(lines: Iterable[str], source: str) -> Iterable[tuple[str, str | None]]:
    from db.supplier import check_part_number

    for number, line in enumerate(lines, start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        part, _, sku = line.partition(",")
        try:
            yield check_part_number(part), sku.strip() or None
        except ValueError as error:
            raise click.UsageError(f"{source} line {number}: {error}") from None


@ingram.command("sandbox")
@click.option("--products", default=1000, show_default=True, type=click.IntRange(0))
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--port", default=8781, show_default=True, type=click.IntRange(1, 65535))
@click.option("--client-id", default="sandbox-client", show_default=True)
@click.option("--client-secret", default="sandbox-secret", show_default=True)
@click.option("--customer-number", default="20-222222", show_default=True)
@click.option("--time-scale", default=1.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Multiplies the quota windows (0.05: the real quotas 20 times faster).")
@click.option("--latency", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Seconds per request.")
@click.option("--partial-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of products answered in error (207).")
def sandbox_command(products, seed, port, client_id, client_secret, customer_number, time_scale, latency,
                    partial_rate) -> None:
    """Serve a sandbox Ingram Micro on 127.0.0.1:PORT (quotas: 60 P&A a minute, details 0.5 s apart)."""
    from sandbox.ingram import IngramSandbox
    from sandbox.server import run_forever

    sandbox = IngramSandbox(products=products, seed=seed, client_id=client_id, client_secret=client_secret,
                            customer_number=customer_number, time_scale=time_scale, latency_s=latency,
                            partial_rate=partial_rate)
    click.echo(f"sandbox Ingram Micro: {products} products on http://127.0.0.1:{port} "
               f"(client id {client_id!r}, customer number {customer_number!r})")
    run_forever(sandbox.build_app(), "127.0.0.1", port)
