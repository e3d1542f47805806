"""Process-wide resources, made once per process: database, Redis, the HTTP session.

Without ``REDIS_URL`` the process runs in-process mode (the demo): a fakeredis server stands in
for Redis so the limiter, the counters and the locks run the very same code (Lua included).
"""
from __future__ import annotations

import asyncio
import logging
import threading
from functools import lru_cache

import aiohttp
import redis
import redis.asyncio

from runtime.settings import Settings, get_settings

logger = logging.getLogger(__name__)

_lock = threading.RLock()
_fake_server = None
_loop_resources: dict[int, dict[str, object]] = {}


def in_process(settings: Settings | None = None) -> bool:
    """True when no ``REDIS_URL`` is set: in-process broker, fakeredis, demo only."""
    return not (settings or get_settings()).redis_url


def _fakeredis_server():
    global _fake_server
    with _lock:
        if _fake_server is None:
            import fakeredis

            _fake_server = fakeredis.FakeServer()
        return _fake_server


@lru_cache(maxsize=1)
def database_url() -> str:
    """``DATABASE_URL``, or the embedded PostgreSQL in ``data_dir`` (started on first use)."""
    settings = get_settings()
    if settings.database_url:
        return settings.database_url
    from runtime.local_servers import embedded_database_url

    logger.info("DATABASE_URL is not set: using the embedded PostgreSQL in %s", settings.data_dir)
    return embedded_database_url(settings.data_dir.resolve())


def sessions():
    """The session factory of this process's database."""
    from db.engine import session_factory

    return session_factory(database_url())


def sync_redis() -> redis.Redis:
    """A blocking Redis client (fakeredis in in-process mode)."""
    settings = get_settings()
    if in_process(settings):
        import fakeredis

        return fakeredis.FakeRedis(server=_fakeredis_server())
    return _sync_redis(settings.redis_url)


@lru_cache(maxsize=4)
def _sync_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def _per_loop(name: str, factory):
    # aiohttp sessions and asyncio Redis clients belong to the loop that made them.
    loop = asyncio.get_running_loop()
    with _lock:
        resources = _loop_resources.setdefault(id(loop), {})
        if name not in resources:
            resources[name] = factory()
        return resources[name]


def async_redis() -> redis.asyncio.Redis:
    """This event loop's asyncio Redis client (fakeredis in in-process mode)."""
    settings = get_settings()
    if in_process(settings):
        import fakeredis

        return _per_loop("redis", lambda: fakeredis.FakeAsyncRedis(server=_fakeredis_server()))
    return _per_loop("redis", lambda: redis.asyncio.Redis.from_url(settings.redis_url))


def http_session() -> aiohttp.ClientSession:
    """This event loop's aiohttp session: one per worker process (one AsyncIO loop per process)."""
    return _per_loop("http", lambda: aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100), raise_for_status=False))


async def close_loop_resources() -> None:
    """Close this loop's HTTP session and Redis client (worker shutdown)."""
    loop = asyncio.get_running_loop()
    with _lock:
        resources = _loop_resources.pop(id(loop), {})
    for resource in resources.values():
        close = getattr(resource, "aclose", None) or getattr(resource, "close")
        await close()


def run_on_worker_loop(make):
    """Run the coroutine ``make()`` returns on the worker's event loop, or on a fresh one; return its result.

    For synchronous actors that call an async client: under dramatiq's AsyncIO middleware the
    coroutine runs on the worker's loop, where this process's HTTP session and Redis client live;
    elsewhere (a CLI, a test) on a loop of its own, whose resources are closed when it ends.
    ``make`` is called on that loop, so what it builds belongs to it.
    """
    from dramatiq.asyncio import get_event_loop_thread

    async def on_the_loop():
        # make() itself runs here, on the loop: what it builds (a client on this loop's HTTP
        # session) must not be made in the calling thread.
        return await make()

    loop_thread = get_event_loop_thread()
    if loop_thread is not None:
        return loop_thread.run_coroutine(on_the_loop())

    async def once():
        try:
            return await on_the_loop()
        finally:
            await close_loop_resources()

    return asyncio.run(once())
