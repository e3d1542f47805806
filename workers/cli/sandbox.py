"""``stocksync sandbox``: serve a sandbox Back Market (its real quota, no authentication)."""
from __future__ import annotations

import click


@click.command("sandbox")
@click.option("--listings", default=1000, show_default=True, type=click.IntRange(0))
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 in a container; the sandbox has no authentication).")
@click.option("--port", default=8780, show_default=True, type=click.IntRange(1, 65535))
@click.option("--token", default="sandbox-token", show_default=True)
@click.option("--quota-requests", default=20, show_default=True, type=click.IntRange(0),
              help="Catalog requests allowed per window (0: unthrottled).")
@click.option("--quota-window", default=10.0, show_default=True, type=click.FloatRange(min=0.001))
@click.option("--latency", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Seconds per request.")
@click.option("--error-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1), help="Share of 500s.")
def sandbox_command(listings, seed, host, port, token, quota_requests, quota_window, latency, error_rate) -> None:
    """Serve a sandbox Back Market on HOST:PORT."""
    from sandbox.backmarket import BackMarketSandbox
    from sandbox.server import run_forever

    sandbox = BackMarketSandbox(listings=listings, seed=seed, token=token, quota_requests=quota_requests,
                                quota_window_s=quota_window, latency_s=latency, error_rate=error_rate)
    click.echo(f"sandbox Back Market: {listings} listings on http://{host}:{port} (token {token!r})")
    run_forever(sandbox.build_app(), host, port)
