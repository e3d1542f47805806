"""`stocksync` commands of the order intake (registered on the main group by :func:`register`)."""
from __future__ import annotations

import click


def register(main: click.Group) -> None:
    """Add ``serve`` and ``poll-orders`` to the ``stocksync`` group."""
    main.add_command(serve_command)
    main.add_command(poll_orders_command)


@click.command("serve")
@click.option("--host", default=None, help="Address to bind (default INTAKE_HOST, 127.0.0.1).")
@click.option("--port", default=None, type=click.IntRange(1, 65535), help="Port (default INTAKE_PORT, 8790).")
def serve_command(host: str | None, port: int | None) -> None:
    """Serve the HTTP intake: order webhooks, the signed producer endpoint and the read API."""
    import logging

    from workers.cli import in_process_worker
    from workers.intake import run
    from workers.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    host, port = host or settings.intake_host, port or settings.intake_port
    click.echo(f"stocksync intake on http://{host}:{port} (webhooks, /events, /stock)")
    from workers import metrics

    metrics.start_exposition_server(settings)
    # Without REDIS_URL the events are processed by worker threads of this process (demo mode).
    with in_process_worker():
        run(host, port)


@click.command("poll-orders")
@click.argument("marketplace", type=click.Choice(["backmarket", "refurbed"]))
def poll_orders_command(marketplace: str) -> None:
    """Walk MARKETPLACE's recent orders now and emit the stock events not sent yet."""
    from workers import runtime
    from workers.cli import _fleet, in_process_worker

    _fleet()
    from actors.orders import poll_orders

    with in_process_worker():
        message = poll_orders.send(marketplace)
        if runtime.in_process():
            poll_orders.broker.join(poll_orders.queue_name)
            click.echo(f"orders of {marketplace} polled")
        else:
            click.echo(f"order poll of {marketplace} enqueued (message {message.message_id})")
