"""``stocksync poll-orders``: walk a marketplace's recent orders now and emit the events not sent yet."""
from __future__ import annotations

import click


@click.command("poll-orders")
@click.argument("marketplace", metavar="ACCOUNT")
def poll_orders_command(marketplace: str) -> None:
    """Walk ACCOUNT's recent orders now (e.g. backmarket, refurbed) and emit the stock events not sent yet."""
    from runtime import accounts, resources
    from workers.cli.common import fleet as _fleet
    from workers.cli.common import in_process_worker

    _fleet()
    try:
        accounts.account(marketplace, "poll_orders")
    except ValueError as refused:
        raise click.BadParameter(str(refused), param_hint="ACCOUNT") from None
    from actors.orders import poll_orders

    with in_process_worker():
        message = poll_orders.send(marketplace)
        if resources.in_process():
            poll_orders.broker.join(poll_orders.queue_name)
            click.echo(f"orders of {marketplace} polled")
        else:
            click.echo(f"order poll of {marketplace} enqueued (message {message.message_id})")
