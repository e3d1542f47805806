"""Build the API clients of this process from the settings (one HTTP session per process)."""
from __future__ import annotations

from clients.backmarket import BackMarketClient
from clients.ratelimit import FleetRateLimiter
from workers import metrics, runtime
from workers.settings import get_settings


def backmarket_limiter() -> FleetRateLimiter:
    """The fleet-wide limiter of Back Market's catalog endpoints."""
    settings = get_settings()
    metrics.quota("backmarket-catalog", settings.backmarket_quota_requests, settings.backmarket_quota_window_s)
    return FleetRateLimiter(runtime.async_redis(), "backmarket-catalog", settings.backmarket_quota_requests,
                            settings.backmarket_quota_window_s + settings.rate_limit_margin_s,
                            namespace=settings.redis_namespace, on_wait=metrics.rate_limit_wait)


def backmarket_client(on_request=None) -> BackMarketClient:
    """A Back Market client on this process's session, limiter and settings."""
    settings = get_settings()
    return BackMarketClient(
        runtime.http_session(), base_url=settings.backmarket_base_url,
        token=settings.backmarket_token.get_secret_value(), user_agent=settings.backmarket_user_agent,
        language=settings.backmarket_language, limiter=backmarket_limiter(),
        timeout_s=settings.backmarket_timeout_s, attempts=settings.backmarket_http_attempts,
        penalty_s=settings.backmarket_penalty_s, on_request=metrics.request_hook(on_request))
