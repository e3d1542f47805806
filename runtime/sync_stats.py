"""Per-run API counters in Redis: every HTTP attempt of every worker, counted once.

Fetches run on many processes; counting in Redis (one HINCRBY pipeline per page) keeps the hot
``sync_runs`` row out of the fetch path.  The run's closing step copies the totals into
PostgreSQL, and the monitor reads them live.
"""
from __future__ import annotations

from typing import Iterable

#: Counters are kept this long after the last update (seconds).
STATS_TTL_S = 7 * 24 * 3600


def stats_key(namespace: str, sync_id: int) -> str:
    """The Redis hash holding a run's counters."""
    return f"{namespace}:sync:{sync_id}:stats"


def page_key(namespace: str, sync_id: int, page: int) -> str:
    """Set when a page's fetch first starts: a later fetch of the same page is a retry."""
    return f"{namespace}:sync:{sync_id}:fetched:{page}"


def count_attempts(records: Iterable, first_is_retry: bool) -> dict[str, int]:
    """Counters for one page fetch's HTTP attempts (``RequestRecord`` objects).

    Every attempt is an API call; every attempt but the first of a page's first fetch is a retry;
    every attempt that did not get a 2xx is an error.
    """
    counts = {"api_calls": 0, "retries": 0, "errors": 0}
    for index, record in enumerate(records):
        counts["api_calls"] += 1
        if index > 0 or first_is_retry:
            counts["retries"] += 1
        if record.status is None or record.status >= 400:
            counts["errors"] += 1
    return counts


async def add(redis, namespace: str, sync_id: int, counts: dict[str, int]) -> None:
    """Add ``counts`` to the run's hash (asyncio Redis client)."""
    key = stats_key(namespace, sync_id)
    async with redis.pipeline(transaction=False) as pipe:
        for field, value in counts.items():
            if value:
                pipe.hincrby(key, field, value)
        pipe.expire(key, STATS_TTL_S)
        await pipe.execute()


def read(redis, namespace: str, sync_id: int) -> dict[str, int]:
    """The run's counters so far (blocking Redis client)."""
    raw = redis.hgetall(stats_key(namespace, sync_id))
    return {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in raw.items()}
