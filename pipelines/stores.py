"""Sync one store integration: lock it, read the store through its adapter, apply, log (plain functions).

``actors/stores.py`` only calls these; tests call them without a broker.

1. :func:`begin_store_sync` refuses an unknown or disabled integration, opens a ``sync_runs`` row
   (kind ``store``, target = the integration's name: the partial unique index of running runs is
   the per-integration lock, a dead run is abandoned after ``STORE_SYNC_STALE_AFTER_S``) and a
   ``running`` ``store_sync_logs`` row.
2. :func:`run_store_sync` walks the store with its platform's adapter (each page keeps its fetch
   time; the run's heartbeat moves with every page), then applies every page in ONE transaction
   (:func:`db.stores.apply_store_batch`) and closes the log and the run with their counts in it: a
   sync that fails part-way leaves the stock as it was, and its log says why.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

import aiohttp

from clients.http import RequestRecord
from clients.stores import StoreBatch
from db import stores, syncs
from db.store_models import StoreIntegration
from runtime.clients import store_adapter
from runtime.settings import Settings, get_settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreSyncStart:
    """A store sync that was let in: its log, its run and what it syncs."""

    log_id: int
    sync_run_id: int
    integration_id: int
    name: str
    platform: str
    marketplace_id: int
    trigger: str


@dataclass(frozen=True)
class StoreSyncResult:
    """How a store sync ended (``status`` succeeded or failed) and what it did."""

    log_id: int
    status: str
    counts: stores.StoreCounts
    api_calls: int
    error: str | None = None


def store_policy(settings: Settings | None = None) -> syncs.SyncPolicy:
    """Cooldowns and staleness of store syncs, from the settings."""
    settings = settings or get_settings()
    return syncs.SyncPolicy(settings.store_sync_cooldown_scheduled_s, settings.store_sync_cooldown_manual_s,
                            settings.store_sync_stale_after_s)


def begin_store_sync(sessions, integration_id: int, trigger: str = "manual", *, force: bool = False
                     ) -> StoreSyncStart:
    """Lock the integration for one sync and open its log (commits).

    Raises:
      StoreError: No such integration, or it is disabled.
      SyncRefused: A sync of it is running, or (scheduled) the last one finished inside the cooldown.
    """
    with sessions() as session:
        integration = stores.get_integration(session, integration_id)
        if integration is None:
            raise stores.StoreError(f"no store integration with id {integration_id}")
        if not integration.active:
            raise stores.StoreError(f"store {integration.name} is disabled")
        run = syncs.begin_run(session, kind=stores.SYNC_KIND, target=integration.name,
                              trigger="scheduled" if trigger == "scheduled" else "manual", policy=store_policy(),
                              force=force, details={"platform": integration.platform, "trigger": trigger})
        log_id = stores.start_log(session, integration_id=integration.id, sync_run_id=run.id, trigger=trigger)
        session.commit()
        return StoreSyncStart(log_id, run.id, integration.id, integration.name, integration.platform,
                              integration.marketplace_id, trigger)


async def run_store_sync(sessions, start: StoreSyncStart, http: aiohttp.ClientSession, *,
                         settings: Settings | None = None, environ: Mapping[str, str] | None = None,
                         limiter_for: Callable[[StoreIntegration], object] | None = None,
                         on_request: Callable[[RequestRecord], None] | None = None) -> StoreSyncResult:
    """Read the store and apply it (see the module docstring); on an error, fail the log and re-raise.

    The error text kept in the log is the client's (which never holds a credential), with the
    credential's value redacted once more in case anything echoed it.
    """
    environ = os.environ if environ is None else environ
    records: list[RequestRecord] = []

    def count(record: RequestRecord) -> None:
        records.append(record)
        if on_request is not None:
            on_request(record)

    credential = ""
    try:
        integration = await asyncio.to_thread(_load, sessions, start.integration_id)
        credential = environ.get(integration.credentials_env, "")
        adapter = store_adapter(integration, http, settings=settings, environ=environ, limiter_for=limiter_for,
                                on_request=count)
        batches: list[StoreBatch] = []
        async for batch in adapter.batches():
            batches.append(batch)
            await asyncio.to_thread(_heartbeat, sessions, start.sync_run_id, len(batches))
        counts = await asyncio.to_thread(_apply, sessions, start, batches, len(records))
    except BaseException as error:
        text = f"{type(error).__name__}: {error}" if not isinstance(error, stores.StoreError) else str(error)
        if credential:
            text = text.replace(credential, "<credential>")
        await asyncio.shield(asyncio.to_thread(_fail, sessions, start.log_id, text, len(records)))
        logger.warning("store sync %s of %s failed: %s", start.log_id, start.name, text)
        raise
    logger.info("store sync %s of %s: %d items, %d created, %d updated, %d skipped, %d API calls", start.log_id,
                start.name, counts.items, counts.created, counts.updated, counts.skipped, len(records))
    return StoreSyncResult(start.log_id, "succeeded", counts, len(records))


def sync_store_now(sessions, integration_id: int, trigger: str = "manual", *, force: bool = False,
                   settings: Settings | None = None, environ: Mapping[str, str] | None = None,
                   limiter_for: Callable[[StoreIntegration], object] | None = None) -> StoreSyncResult:
    """Begin and run one store sync on a fresh event loop and HTTP session (the CLI, tests)."""
    start = begin_store_sync(sessions, integration_id, trigger, force=force)

    async def go() -> StoreSyncResult:
        async with aiohttp.ClientSession() as http:
            return await run_store_sync(sessions, start, http, settings=settings, environ=environ,
                                        limiter_for=limiter_for)

    return asyncio.run(go())


def _load(sessions, integration_id: int) -> StoreIntegration:
    with sessions() as session:
        integration = stores.get_integration(session, integration_id)
        if integration is None:
            raise stores.StoreError(f"store integration {integration_id} was deleted during its sync")
        session.expunge(integration)
        return integration


def _heartbeat(sessions, sync_run_id: int, pages: int) -> None:
    with sessions() as session:
        stores.heartbeat(session, sync_run_id, pages)


def _apply(sessions, start: StoreSyncStart, batches: list[StoreBatch], api_calls: int) -> stores.StoreCounts:
    total = stores.StoreCounts()
    with sessions() as session:
        for number, batch in enumerate(batches, start=1):
            total += stores.apply_store_batch(session, marketplace_id=start.marketplace_id,
                                              sync_id=start.sync_run_id, batch=number, fetched_at=batch.fetched_at,
                                              items=batch.items, actor=f"store:{start.name}",
                                              skew=timedelta(seconds=get_settings().stock_event_skew_s))
        stores.finish_log(session, start.log_id, total, api_calls=api_calls, pages=len(batches))
        session.commit()
    return total


def _fail(sessions, log_id: int, text: str, api_calls: int) -> None:
    with sessions() as session:
        stores.fail_log(session, log_id, text, api_calls=api_calls)


__all__ = ["StoreSyncResult", "StoreSyncStart", "begin_store_sync", "build_adapter", "run_store_sync",
           "store_policy", "sync_store_now"]
