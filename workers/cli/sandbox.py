"""``stocksync sandbox``: serve a sandbox Back Market (its real quota) or, with ``refurbed`` or ``shopify``, a
sandbox Refurbed or Shopify shop."""
from __future__ import annotations

import os

import click

#: The variable the Refurbed sandbox reads its webhook's secret from: the intake's own setting.
WEBHOOK_SECRET_VARIABLE = "REFURBED_WEBHOOK_SECRET"
#: The variable the Shopify sandbox signs its webhooks with: the intake's own setting (the app's secret).
SHOPIFY_WEBHOOK_SECRET_VARIABLE = "SHOPIFY_WEBHOOK_SECRET"


@click.group("sandbox", invoke_without_command=True)
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
@click.pass_context
def sandbox_command(ctx, listings, seed, host, port, token, quota_requests, quota_window, latency,
                    error_rate) -> None:
    """Serve a sandbox Back Market on HOST:PORT (or, with a subcommand, another marketplace's sandbox)."""
    if ctx.invoked_subcommand is not None:
        return
    from sandbox.backmarket import BackMarketSandbox
    from sandbox.server import run_forever

    sandbox = BackMarketSandbox(listings=listings, seed=seed, token=token, quota_requests=quota_requests,
                                quota_window_s=quota_window, latency_s=latency, error_rate=error_rate)
    click.echo(f"sandbox Back Market: {listings} listings on http://{host}:{port} (token {token!r})")
    run_forever(sandbox.build_app(), host, port)


@sandbox_command.command("refurbed")
@click.option("--offers", default=1000, show_default=True, type=click.IntRange(0),
              help="Offers made from the Back Market sandbox's catalogue of the same --seed (same SKUs).")
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 in a container; the admin routes have no authentication).")
@click.option("--port", default=8782, show_default=True, type=click.IntRange(1, 65535))
@click.option("--token", default="refurbed-sandbox-token", show_default=True,
              help="What 'Authorization: Plain <token>' must carry.")
@click.option("--quota-requests", default=20, show_default=True, type=click.IntRange(0),
              help="API calls allowed per window (0: no quota; Refurbed publishes no numbers).")
@click.option("--quota-window", default=1.0, show_default=True, type=click.FloatRange(min=0.001))
@click.option("--latency", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Seconds per request.")
@click.option("--error-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1), help="Share of 500s.")
@click.option("--restock-on-cancel/--no-restock-on-cancel", default=True, show_default=True,
              help="Whether a rejected or cancelled item gives its unit back to the offer.")
@click.option("--webhook-url", default=None, metavar="URL",
              help="The intake's Refurbed route without its secret (e.g. http://127.0.0.1:8790/webhooks/refurbed); "
                   f"the secret, from ${WEBHOOK_SECRET_VARIABLE}, is appended.  Unset (or no secret): no notifications.")
def refurbed_command(offers, seed, host, port, token, quota_requests, quota_window, latency, error_rate,
                     restock_on_cancel, webhook_url) -> None:
    """Serve a sandbox Refurbed Merchant API on HOST:PORT, and send its order webhooks to --webhook-url."""
    from sandbox.refurbed import RefurbedSandbox
    from sandbox.server import run_forever

    secret = os.environ.get(WEBHOOK_SECRET_VARIABLE, "")
    if webhook_url is not None and not secret:
        # Not an error: compose names the intake's route whether or not the deployment enabled it.
        click.echo(f"${WEBHOOK_SECRET_VARIABLE} is empty: no webhooks (the intake refuses them without it)", err=True)
        webhook_url = None
    target = f"{webhook_url.rstrip('/')}/{secret}" if webhook_url else None
    sandbox = RefurbedSandbox(token=token, webhook_url=target, latency_s=latency, error_rate=error_rate,
                              quota_requests=quota_requests, quota_window_s=quota_window,
                              restock_on_cancel=restock_on_cancel, seed=seed)
    sandbox.add_offers(offers, seed=seed)
    # The webhook URL is shown without its secret.
    sends = f", webhooks to {webhook_url.rstrip('/')}/<secret>" if webhook_url else ""
    click.echo(f"sandbox Refurbed: {offers} offers on http://{host}:{port} (token {token!r}){sends}")
    try:
        run_forever(sandbox.build_app(), host, port)
    finally:
        sandbox.close()


@sandbox_command.command("shopify")
@click.option("--products", default=500, show_default=True, type=click.IntRange(0))
@click.option("--variants-per-product", default=2, show_default=True, type=click.IntRange(1))
@click.option("--locations", default=2, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 in a container; the admin routes have no authentication).")
@click.option("--port", default=8783, show_default=True, type=click.IntRange(1, 65535))
@click.option("--token", default="shpat_sandbox_token", show_default=True,
              help="What 'X-Shopify-Access-Token' must carry.")
@click.option("--shop-domain", default="sandbox-shop.myshopify.com", show_default=True,
              help="The X-Shopify-Shop-Domain its webhooks name.")
@click.option("--cost-maximum", default=2000.0, show_default=True, type=click.FloatRange(min=1),
              help="GraphQL cost bucket size, in points (Shopify's standard plan).")
@click.option("--cost-restore-rate", default=100.0, show_default=True, type=click.FloatRange(min=0.001),
              help="GraphQL points restored per second (Shopify's standard plan).")
@click.option("--latency", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Seconds per request.")
@click.option("--error-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1), help="Share of 500s.")
@click.option("--restock-on-cancel/--no-restock-on-cancel", default=True, show_default=True,
              help="Whether a cancelled order gives its units back to its location.")
@click.option("--webhook-url", default=None, metavar="URL",
              help="Where orders/create and orders/cancelled go (e.g. http://127.0.0.1:8790/webhooks/shopify), "
                   f"signed with ${SHOPIFY_WEBHOOK_SECRET_VARIABLE}.  Unset (or no secret): no webhooks.")
@click.option("--bulk-startup", default=2.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds a bulk operation runs before its first object (an assumption, not a Shopify figure).")
@click.option("--bulk-objects-per-s", default=1000.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Objects a bulk operation exports a second (an assumption, not a Shopify figure).")
def shopify_command(products, variants_per_product, locations, seed, host, port, token, shop_domain, cost_maximum,
                    cost_restore_rate, latency, error_rate, restock_on_cancel, webhook_url, bulk_startup,
                    bulk_objects_per_s) -> None:
    """Serve a sandbox Shopify shop (GraphQL Admin API, legacy REST reads) on HOST:PORT."""
    from core.platforms import SHOPIFY_API_VERSION
    from sandbox.server import run_forever
    from sandbox.shopify import ShopifySandbox

    secret = os.environ.get(SHOPIFY_WEBHOOK_SECRET_VARIABLE, "")
    if webhook_url is not None and not secret:
        # Not an error: compose names the intake's route whether or not the deployment enabled it.
        click.echo(f"${SHOPIFY_WEBHOOK_SECRET_VARIABLE} is empty: no webhooks (the intake refuses them without it)",
                   err=True)
        webhook_url = None
    sandbox = ShopifySandbox(products=products, variants_per_product=variants_per_product, locations=locations,
                             token=token, cost_maximum=cost_maximum, cost_restore_rate=cost_restore_rate,
                             latency_s=latency, error_rate=error_rate, restock_on_cancel=restock_on_cancel,
                             webhook_url=webhook_url, webhook_secret=secret, shop_domain=shop_domain, seed=seed,
                             bulk_startup_s=bulk_startup, bulk_objects_per_s=bulk_objects_per_s)
    sends = f", webhooks to {webhook_url}" if webhook_url else ""
    click.echo(f"sandbox Shopify: {products * variants_per_product} variants at {locations} locations on "
               f"http://{host}:{port}/admin/api/{SHOPIFY_API_VERSION}/graphql.json (token {token!r}){sends}")
    try:
        run_forever(sandbox.build_app(), host, port)
    finally:
        sandbox.close()
