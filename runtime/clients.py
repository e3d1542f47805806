"""Build the API clients of this process from the settings (one HTTP session per process).

Every client counts its HTTP attempts in the metrics (``on_request``), and every fleet-wide limiter
publishes its quota and its waits, so the dashboards draw calls against quota for each API.
"""
from __future__ import annotations

from clients.backmarket import BackMarketClient
from clients.ratelimit import FleetRateLimiter
from clients.refurbed import RefurbedClient
from runtime import metrics, resources
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


def backmarket_client(on_request=None, limiter: FleetRateLimiter | None = None) -> BackMarketClient:
    """A Back Market client on this process's session and settings (default: the catalog's limiter)."""
    settings = get_settings()
    return BackMarketClient(
        resources.http_session(), base_url=settings.backmarket_base_url,
        token=settings.backmarket_token.get_secret_value(), user_agent=settings.backmarket_user_agent,
        language=settings.backmarket_language, limiter=limiter or backmarket_limiter(),
        timeout_s=settings.backmarket_timeout_s, attempts=settings.backmarket_http_attempts,
        penalty_s=settings.backmarket_penalty_s, on_request=metrics.request_hook(on_request))


def backmarket_orders_client(on_request=None) -> BackMarketClient:
    """A Back Market client for the order endpoints: their own fleet-wide quota, not the catalog's."""
    settings = get_settings()
    limiter = fleet_limiter("backmarket-orders", settings.intake_orders_quota_requests,
                            settings.intake_orders_quota_window_s, settings.rate_limit_margin_s)
    return backmarket_client(on_request, limiter=limiter)


def refurbed_limiter() -> FleetRateLimiter:
    """The fleet-wide Refurbed quota (orders and offers alike)."""
    settings = get_settings()
    return fleet_limiter("refurbed", settings.refurbed_quota_requests, settings.refurbed_quota_window_s)


def refurbed_client(on_request=None) -> RefurbedClient:
    """A Refurbed client on this process's session, with the fleet-wide Refurbed quota."""
    settings = get_settings()
    return RefurbedClient(resources.http_session(), base_url=settings.refurbed_base_url,
                          token=settings.refurbed_token.get_secret_value(), limiter=refurbed_limiter(),
                          timeout_s=settings.refurbed_timeout_s, attempts=settings.refurbed_http_attempts,
                          on_request=metrics.request_hook(on_request))
