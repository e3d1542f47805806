"""The in-process fleet (stub broker, fakeredis) on a test's settings, fresh for each test."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

from runtime import accounts, resources
from runtime.settings import get_settings


@contextmanager
def in_process_fleet(monkeypatch, environ: Mapping[str, str]) -> Iterator:
    """Set ``environ``, then start from fresh settings, accounts, queues and Redis; yields the stub broker."""
    from actors import stock_sync  # the fleet's actors declared on the in-process broker

    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    resources.database_url.cache_clear()
    accounts.forget()
    broker = stock_sync.fetch_listings_page.broker
    broker.flush_all()
    resources.sync_redis().flushall()
    try:
        yield broker
    finally:
        broker.flush_all()
        accounts.forget()
        get_settings.cache_clear()
        resources.database_url.cache_clear()
