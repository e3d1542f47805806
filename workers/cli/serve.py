"""``stocksync serve``: the HTTP intake (order webhooks, the signed producer endpoint, the read API)."""
from __future__ import annotations

import click


@click.command("serve")
@click.option("--host", default=None, help="Address to bind (default INTAKE_HOST, 127.0.0.1).")
@click.option("--port", default=None, type=click.IntRange(1, 65535), help="Port (default INTAKE_PORT, 8790).")
def serve_command(host: str | None, port: int | None) -> None:
    """Serve the HTTP intake: order webhooks, the signed producer endpoint and the read API."""
    from runtime.settings import get_settings
    from workers.cli.common import serve_http
    from workers.intake.app import run

    settings = get_settings()
    serve_http(run, host or settings.intake_host, port or settings.intake_port,
               "stocksync intake (webhooks, /events, /stock)")
