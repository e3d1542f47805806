"""Store integrations: ``sync_store`` and ``sync_all_stores`` (queue ``stores``).

Thin: the work is in :mod:`pipelines.stores` and :mod:`db.stores`.  The per-integration lock
is the ``sync_runs`` row of the running sync (one running row per store, enforced by PostgreSQL),
so a second ``sync_store`` of a store that is syncing is refused and dropped, not queued behind it.
A transient failure (a 5xx, a timeout, a 429 the client could not wait out) retries with backoff,
each attempt a new sync with its own log; a permanent one (a 401, a missing credential variable)
goes straight to the dead letters; the log of every failed attempt keeps its error.
"""
from __future__ import annotations

import asyncio

import dramatiq

from actors.retry import MalformedMessage, transient_only
from db import stores, syncs
from pipelines.stores import begin_store_sync, run_store_sync
from runtime import queues, resources
from runtime.clients import store_limiter
from runtime.settings import get_settings

QUEUE = queues.STORES

_settings = get_settings()


def enqueue_all(sessions, trigger: str = "scheduled") -> list[int]:
    """Enqueue ``sync_store`` for every active ``auto_sync`` integration; return their ids."""
    with sessions() as session:
        ids = stores.auto_sync_ids(session)
    for integration_id in ids:
        sync_store.send(integration_id, trigger)
    return ids


@dramatiq.actor(queue_name=QUEUE, retry_when=transient_only(_settings.store_sync_max_retries),
                min_backoff=_settings.store_sync_min_backoff_ms, max_backoff=_settings.store_sync_max_backoff_ms,
                max_age=6 * 3600 * 1000, time_limit=60 * 60 * 1000)
async def sync_store(integration_id: int, trigger: str = "manual") -> None:
    """Sync one store integration's stock (dropped with a log line when refused: running, cooldown, disabled)."""
    if not isinstance(integration_id, int) or isinstance(integration_id, bool):
        raise MalformedMessage(f"integration_id must be an integer, got {integration_id!r}")
    sessions = resources.sessions()
    try:
        start = await asyncio.to_thread(begin_store_sync, sessions, integration_id, str(trigger))
    except syncs.SyncRefused as refused:
        dramatiq.get_logger(__name__).info("store sync of integration %s not started: %s", integration_id,
                                           refused.reason)
        return
    except stores.StoreError as refused:
        dramatiq.get_logger(__name__).warning("store sync of integration %s not started: %s", integration_id, refused)
        return
    await run_store_sync(sessions, start, resources.http_session(), limiter_for=store_limiter)


@dramatiq.actor(queue_name=QUEUE, max_retries=3, min_backoff=1000, max_backoff=30000)
def sync_all_stores(trigger: str = "scheduled") -> None:
    """Enqueue ``sync_store(id, trigger)`` for every active ``auto_sync`` integration (the 4-hourly schedule)."""
    ids = enqueue_all(resources.sessions(), str(trigger))
    dramatiq.get_logger(__name__).info("enqueued the sync of %d store(s): %s", len(ids), ids)


__all__ = ["QUEUE", "enqueue_all", "sync_all_stores", "sync_store"]
