"""``stocksync poll-orders``: walk a marketplace's recent orders now and emit the events not sent yet."""
from __future__ import annotations

import click


@click.command("poll-orders")
@click.argument("marketplace", type=click.Choice(["backmarket", "refurbed"]))
def poll_orders_command(marketplace: str) -> None:
    """Walk MARKETPLACE's recent orders now and emit the stock events not sent yet."""
    from runtime import resources
    from workers.cli.common import fleet as _fleet
    from workers.cli.common import in_process_worker

    _fleet()
    from actors.orders import poll_orders

    with in_process_worker():
        message = poll_orders.send(marketplace)
        if resources.in_process():
            poll_orders.broker.join(poll_orders.queue_name)
            click.echo(f"orders of {marketplace} polled")
        else:
            click.echo(f"order poll of {marketplace} enqueued (message {message.message_id})")
