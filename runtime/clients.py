"""Build the API clients of this process from the settings (one HTTP session per process).

Every client counts its HTTP attempts in the metrics (``on_request``), and every fleet-wide limiter
publishes its quota and its waits, so the dashboards draw calls against quota for each API.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from threading import Lock
from urllib.parse import urlsplit

from clients.adapters import BackMarketAdapter, CatalogueAdapter, RefurbedAdapter, ShopifyAdapter
from clients.backmarket import BackMarketClient
from clients.ingram import FleetSemaphore, IngramClient, SharedToken
from clients.costbucket import FleetCostBucket
from clients.ratelimit import FleetRateLimiter
from clients.refurbed import RefurbedClient
from clients.shopify import ShopifyClient
from core.accounts import AccountError, shop_locations
from runtime import accounts, metrics, resources
from runtime.accounts import AccountView
from runtime.settings import get_settings


def fleet_limiter(name: str, requests: int, window_s: float, margin_s: float = 0.0) -> FleetRateLimiter:
    """The fleet-wide limiter ``name``: ``requests`` per ``window_s`` (widened by ``margin_s``)."""
    settings = get_settings()
    metrics.quota(name, requests, window_s)
    return FleetRateLimiter(resources.async_redis(), name, requests, window_s + margin_s,
                            namespace=settings.redis_namespace, on_wait=metrics.rate_limit_wait)


def backmarket_limiter() -> FleetRateLimiter:
    """The fleet-wide limiter of Back Market's catalog endpoints."""
    settings = get_settings()
    return fleet_limiter("backmarket-catalog", settings.backmarket_quota_requests,
                         settings.backmarket_quota_window_s, settings.rate_limit_margin_s)


def push_line_quota(marketplace: str) -> tuple[str, int, float] | None:
    """``(limiter name, lines, window_s)`` of ``marketplace``'s data limit on pushed lines, or None when it has none.

    A Back Market account: ``BACKMARKET_PUSH_LINES_PER_HOUR`` per ``BACKMARKET_PUSH_LINES_WINDOW_S``
    (each account its own: the limit is per API token).
    """
    settings = get_settings()
    view = accounts.find(marketplace)
    if view is not None and view.platform.name == "backmarket":
        name = "backmarket-push-lines" if marketplace == "backmarket" else f"backmarket-push-lines:{marketplace}"
        return (name, settings.backmarket_push_lines_per_hour,
                settings.backmarket_push_lines_window_s + settings.rate_limit_margin_s)
    return None


def push_lines_limiter(marketplace: str) -> FleetRateLimiter | None:
    """The fleet-wide limiter of ``marketplace``'s pushed lines (one per listing a push sets), or None."""
    quota = push_line_quota(marketplace)
    return None if quota is None else fleet_limiter(*quota)


_ADAPTERS: dict[str, type[CatalogueAdapter]] = {
    "backmarket": BackMarketAdapter, "refurbed": RefurbedAdapter, "shopify": ShopifyAdapter}


def push_batch(marketplace: str) -> int:
    """How many of ``marketplace``'s rows one push reads and writes together (its adapter's ``push_batch``)."""
    view = accounts.find(marketplace)
    adapter = _ADAPTERS.get(view.platform.name) if view is not None else None
    return adapter.push_batch if adapter is not None else 1


def push_pace_s(marketplace: str) -> float:
    """Seconds of ``marketplace``'s request quota one row's push takes (a read and a write, shared by a batch)."""
    settings = get_settings()
    view = accounts.find(marketplace)
    if view is not None and view.platform.name == "refurbed":
        return 2 * settings.refurbed_quota_window_s / settings.refurbed_quota_requests / push_batch(marketplace)
    if view is not None and view.platform.name == "shopify":
        # One read of the level and the compare-and-set on it, out of the shop's restore rate.
        return ShopifyAdapter.push_points / settings.shopify_cost_restore_per_s
    return 2 * settings.backmarket_quota_window_s / settings.backmarket_quota_requests


def backmarket_client(on_request=None, limiter: FleetRateLimiter | None = None) -> BackMarketClient:
    """A Back Market client on this process's session and settings (default: the catalog's limiter)."""
    settings = get_settings()
    return BackMarketClient(
        resources.http_session(), base_url=settings.backmarket_base_url,
        token=settings.backmarket_token.get_secret_value(), user_agent=settings.backmarket_user_agent,
        language=settings.backmarket_language, limiter=limiter or backmarket_limiter(),
        timeout_s=settings.backmarket_timeout_s, attempts=settings.backmarket_http_attempts,
        penalty_s=settings.backmarket_penalty_s, on_request=metrics.request_hook(on_request))


def refurbed_limiter() -> FleetRateLimiter:
    """The fleet-wide Refurbed quota (orders and offers alike)."""
    settings = get_settings()
    return fleet_limiter("refurbed", settings.refurbed_quota_requests, settings.refurbed_quota_window_s)


def account_quota(view: AccountView) -> tuple[str, int, float, float]:
    """``(limiter name, requests, window_s, margin_s)`` of the quota an account's calls count against.

    Each account has its own: the main accounts keep their limiters' names (``backmarket-catalog``,
    ``refurbed``); another account's is named after its code.  Shopify has none: see :func:`shop_cost_bucket`.
    """
    settings = get_settings()
    if view.platform.name == "backmarket":
        name = "backmarket-catalog" if view.code == "backmarket" else f"backmarket-catalog:{view.code}"
        return (name, settings.backmarket_quota_requests, settings.backmarket_quota_window_s,
                settings.rate_limit_margin_s)
    if view.platform.name == "refurbed":
        return ("refurbed" if view.code == "refurbed" else f"refurbed:{view.code}",
                settings.refurbed_quota_requests, settings.refurbed_quota_window_s, 0.0)
    raise AccountError(f"account {view.code} is on {view.platform.title}: its calls are paced by query cost "
                       "(shop_cost_bucket), not by a request quota")


def account_limiter(view: AccountView) -> FleetRateLimiter:
    """The fleet-wide limiter an account's calls count against (:func:`account_quota`)."""
    return fleet_limiter(*account_quota(view))


def shop_cost_bucket(view: AccountView) -> FleetCostBucket:
    """The fleet-wide query-cost budget of a Shopify account's shop (one per shop host: Shopify's bucket is per shop)."""
    settings = get_settings()
    return FleetCostBucket(resources.async_redis(), f"shopify-cost:{urlsplit(accounts.base_url(view)).netloc}",
                           maximum=settings.shopify_cost_bucket_points, restore_rate=settings.shopify_cost_restore_per_s,
                           namespace=settings.redis_namespace, on_wait=metrics.rate_limit_wait)


#: The shops' active locations as this process last read them: (database, account, base URL) -> (read at, ids).
_shop_locations: dict[tuple[str, str, str], tuple[float, list[str]]] = {}
_shop_locations_lock = Lock()
#: The clock of that copy (a test moves it on instead of sleeping).
_clock = time.monotonic


def shop_locations_reader(view: AccountView, client: ShopifyClient) -> Callable[[], Awaitable[list[str]]]:
    """How an adapter of ``view`` gets its shop's active locations: this process's copy until it is
    ``SHOPIFY_LOCATIONS_TTL_S`` old, then ``client`` reads them again.

    Not kept with a sync run: a run lasts minutes to hours, and a location the shop opens (or closes)
    during it would stay uncounted until the next run, while pushes, which read the levels now, counted
    it.  With a short copy per process every page and push counts it within the TTL.
    """
    key = (get_settings().database_url, view.code, accounts.base_url(view))

    async def read() -> list[str]:
        now = _clock()
        with _shop_locations_lock:
            cached = _shop_locations.get(key)
        if cached is not None and now - cached[0] < get_settings().shopify_locations_ttl_s:
            return cached[1]
        found = await client.location_ids()
        with _shop_locations_lock:
            _shop_locations[key] = (now, found)
        return found

    return read


def account_client(view: AccountView, on_request=None, limiter: FleetRateLimiter | None = None):
    """The vendor client of ``view``'s platform: its base URL, its credential, its own limiter (Shopify: its shop's cost bucket)."""
    settings = get_settings()
    http, token, base = resources.http_session(), accounts.credential(view), accounts.base_url(view)
    hook = metrics.request_hook(on_request)
    if view.platform.name == "shopify":
        return ShopifyClient(http, base_url=base, token=token, cost_bucket=shop_cost_bucket(view),
                             timeout_s=settings.shopify_timeout_s, attempts=settings.shopify_http_attempts,
                             on_request=hook)
    limiter = limiter or account_limiter(view)
    if view.platform.name == "backmarket":
        return BackMarketClient(http, base_url=base, token=token, user_agent=settings.backmarket_user_agent,
                                language=view.options.get("language", settings.backmarket_language), limiter=limiter,
                                timeout_s=settings.backmarket_timeout_s, attempts=settings.backmarket_http_attempts,
                                penalty_s=settings.backmarket_penalty_s, on_request=hook)
    if view.platform.name == "refurbed":
        return RefurbedClient(http, base_url=base, token=token, limiter=limiter, timeout_s=settings.refurbed_timeout_s,
                              attempts=settings.refurbed_http_attempts, on_request=hook)
    raise AccountError(f"account {view.code} is on {view.platform.title}: it has no API client")


def orders_client(view: AccountView, on_request=None):
    """The client an account's orders are read with: Back Market's order endpoints have their own quota."""
    if view.platform.name != "backmarket":
        return account_client(view, on_request)
    settings = get_settings()
    name = "backmarket-orders" if view.code == "backmarket" else f"backmarket-orders:{view.code}"
    limiter = fleet_limiter(name, settings.intake_orders_quota_requests, settings.intake_orders_quota_window_s,
                            settings.rate_limit_margin_s)
    return account_client(view, on_request, limiter=limiter)


def catalogue_adapter(view: AccountView, on_request=None, limiter: FleetRateLimiter | None = None
                      ) -> CatalogueAdapter:
    """The adapter of ``view`` (its client built by :func:`account_client`, on ``limiter`` if given)."""
    client = account_client(view, on_request, limiter=limiter)
    if view.platform.name == "backmarket":
        return BackMarketAdapter(client, page_size=get_settings().backmarket_page_size)
    if view.platform.name == "refurbed":
        return RefurbedAdapter(client, limit=get_settings().refurbed_page_size)
    settings = get_settings()
    return ShopifyAdapter(client, location_ids=shop_locations(view.options), limit=settings.shopify_page_size,
                          shop_locations=shop_locations_reader(view, client), bulk_poll_s=settings.shopify_bulk_poll_s)


def ingram_pa_limiter() -> FleetRateLimiter:
    """The fleet-wide Ingram price & availability quota: ``INGRAM_PA_PER_MINUTE`` per (scaled) minute."""
    settings = get_settings()
    return fleet_limiter("ingram-pa", settings.ingram_pa_per_minute, 60.0 * settings.ingram_time_scale,
                         settings.ingram_rate_margin_s)


def ingram_details_limiter() -> FleetRateLimiter:
    """The fleet-wide Ingram details quota: one call per ``INGRAM_DETAILS_MIN_INTERVAL_S`` (scaled)."""
    settings = get_settings()
    return fleet_limiter("ingram-details", 1, settings.ingram_details_min_interval_s * settings.ingram_time_scale,
                         settings.ingram_rate_margin_s)


def ingram_batch_slots() -> FleetSemaphore:
    """The fleet-wide limit on Ingram price & availability batches running at once."""
    settings = get_settings()
    return FleetSemaphore(resources.async_redis(), "ingram-batches", namespace=settings.redis_namespace,
                          ttl_s=settings.ingram_lease_ttl_s)


def ingram_shared_token() -> SharedToken:
    """The fleet's Ingram OAuth token for this API app (one per base URL and client id)."""
    settings = get_settings()
    app = hashlib.sha1(f"{settings.ingram_base_url}|{settings.ingram_client_id}".encode()).hexdigest()[:12]
    return SharedToken(resources.async_redis(), f"ingram:{app}", namespace=settings.redis_namespace,
                       refresh_before_s=settings.ingram_token_refresh_before_s,
                       lock_ttl_s=settings.ingram_timeout_s * 2)


def ingram_client(on_request=None) -> IngramClient:
    """An Ingram Micro client on this process's session, shared token, limiters and settings."""
    settings = get_settings()
    return IngramClient(
        resources.http_session(), base_url=settings.ingram_base_url, client_id=settings.ingram_client_id,
        client_secret=settings.ingram_client_secret.get_secret_value(),
        customer_number=settings.ingram_customer_number, country_code=settings.ingram_country_code,
        sender_id=settings.ingram_sender_id or None, tokens=ingram_shared_token(), pa_limiter=ingram_pa_limiter(),
        details_limiter=ingram_details_limiter(), timeout_s=settings.ingram_timeout_s,
        attempts=settings.ingram_http_attempts, backoff_s=0.5 * settings.ingram_time_scale,
        min_penalty_s=0.05 * settings.ingram_time_scale, on_request=metrics.request_hook(on_request))
