"""``stocksync console``: the operator web console on CONSOLE_HOST:CONSOLE_PORT."""
from __future__ import annotations

import click


@click.command("console")
@click.option("--host", default=None, help="Address to bind (default CONSOLE_HOST, 127.0.0.1).")
@click.option("--port", default=None, type=click.IntRange(1, 65535), help="Port (default CONSOLE_PORT, 8800).")
def console_command(host: str | None, port: int | None) -> None:
    """Serve the operator console (log in with a user from `stocksync users add`; put a TLS proxy in front)."""
    from runtime.settings import get_settings
    from workers.cli.common import serve_http
    from workers.console.app import run

    settings = get_settings()
    serve_http(run, host or settings.console_host, port or settings.console_port, "stocksync console")
