"""``stocksync console``: the operator web console on CONSOLE_HOST:CONSOLE_PORT."""
from __future__ import annotations

import click


@click.command("console")
@click.option("--host", default=None, help="Address to bind (default CONSOLE_HOST, 127.0.0.1).")
@click.option("--port", default=None, type=click.IntRange(1, 65535), help="Port (default CONSOLE_PORT, 8800).")
def console_command(host: str | None, port: int | None) -> None:
    """Serve the operator console (log in with a user from `stocksync users add`; put a TLS proxy in front)."""
    import logging

    from runtime import metrics
    from runtime.settings import get_settings
    from workers.cli.common import in_process_worker
    from workers.console.app import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    host, port = host or settings.console_host, port or settings.console_port
    click.echo(f"stocksync console on http://{host}:{port}")
    metrics.start_exposition_server(settings)
    # Without REDIS_URL what the console enqueues runs on worker threads of this process (demo mode).
    with in_process_worker():
        run(host, port)
