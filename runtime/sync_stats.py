"""Per-run API counters in Redis: every HTTP attempt of every worker, counted once.

Fetches run on many processes; counting in Redis (one HINCRBY pipeline per page) keeps the hot
``sync_runs`` row out of the fetch path.  The run's closing step copies the totals into
PostgreSQL, and the monitor reads them live.
"""
from __future__ import annotations

from typing import Any, Callable, Container, Iterable, Mapping

#: Counters are kept this long after the last update (seconds).
STATS_TTL_S = 7 * 24 * 3600


def stats_key(namespace: str, sync_id: int) -> str:
    """The Redis hash holding a run's counters."""
    return f"{namespace}:sync:{sync_id}:stats"


def count_attempts(records: Iterable, first_is_retry: bool = False, *, never_retries: Container[str] = (),
                   is_error: Callable[[Any], bool] | None = None) -> dict[str, int]:
    """Counters for one message's HTTP attempts (``RequestRecord`` objects): the one counting rule.

    Every attempt is an API call.  An attempt is a retry when an earlier attempt of the message
    went to the same endpoint, or when the message itself is a retry (``first_is_retry``); calls
    to ``never_retries`` endpoints (a token) never are.  An attempt without a 2xx is an error,
    unless ``is_error`` says otherwise (a 404 that is an answer).
    """
    counts = {"api_calls": 0, "retries": 0, "errors": 0}
    seen: set[str] = set()
    for record in records:
        endpoint = getattr(record, "endpoint", None)
        counts["api_calls"] += 1
        if endpoint not in never_retries and (first_is_retry or endpoint in seen):
            counts["retries"] += 1
        seen.add(endpoint)
        failed = record.status is None or record.status >= 400
        if is_error(record) if is_error is not None else failed:
            counts["errors"] += 1
    return counts


def add_counts(total: dict[str, int], counts: Mapping[str, int]) -> dict[str, int]:
    """Add ``counts`` into ``total`` (in place) and return it."""
    for name, value in counts.items():
        total[name] = total.get(name, 0) + value
    return total


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
