"""Bulk stock sync: start → fetch pages (fan-out) → apply each page → finish; resume a stalled one.

Actors are thin: they decode the message, call the code that does the work (``db.snapshot``,
``db.syncs``, ``clients.backmarket``) and enqueue what follows.
"""
from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta, timezone

import dramatiq

from actors.events import sweep_stock
from actors.retry import MalformedMessage, transient_only
from core.events import ID_CHARS, check_sku
from db import syncs
from db.snapshot import PageItem, apply_page, ensure_marketplace
from pipelines import events as events_pipeline
from runtime import metrics, queues, resources, sync_stats
from runtime.clients import backmarket_client
from runtime.failures import message_argument, on_dead_letter
from runtime.settings import get_settings

#: The marketplaces this pipeline can sync.
MARKETPLACES = {"backmarket": "Back Market"}
SYNC_KIND = "stock"


def sync_policy() -> syncs.SyncPolicy:
    """Cooldowns and staleness of stock syncs, from the settings."""
    settings = get_settings()
    return syncs.SyncPolicy(settings.sync_cooldown_scheduled_s, settings.sync_cooldown_manual_s,
                            settings.sync_stale_after_s)


def check_marketplace(marketplace: str) -> str:
    """Return ``marketplace`` if this pipeline knows it; raise a clear error otherwise."""
    if marketplace not in MARKETPLACES:
        raise MalformedMessage(f"unknown marketplace {marketplace!r}: expected one of {', '.join(MARKETPLACES)}")
    return marketplace


def begin_stock_sync(marketplace: str, *, trigger: str = "manual", force: bool = False) -> int:
    """Open a sync run (lock + cooldown) and enqueue its first page; return the run id.

    Raises :class:`db.syncs.SyncRefused` when a run is going on or the cooldown has not passed.
    """
    check_marketplace(marketplace)
    with resources.sessions()() as session:
        ensure_marketplace(session, marketplace, MARKETPLACES[marketplace])
        session.commit()
        run = syncs.begin_run(session, kind=SYNC_KIND, target=marketplace, trigger=trigger, policy=sync_policy(),
                              force=force)
    fetch_listings_page.send(run.id, 1, marketplace)
    return run.id


@dramatiq.actor(queue_name=queues.STOCK_SYNC, max_retries=3, min_backoff=1000, max_backoff=30000)
def start_stock_sync(marketplace: str, force: bool = False, trigger: str = "scheduled") -> int | None:
    """Start a stock sync of ``marketplace`` unless one runs or the cooldown has not passed."""
    try:
        return begin_stock_sync(marketplace, trigger=trigger, force=force)
    except syncs.SyncRefused as refused:
        dramatiq.get_logger(__name__).info("stock sync of %s not started: %s", marketplace, refused.reason)
        return None


@dramatiq.actor(queue_name=queues.STOCK_FETCH, retry_when=transient_only(5), min_backoff=2000, max_backoff=60000,
                max_age=6 * 3600 * 1000, time_limit=10 * 60 * 1000)
async def fetch_listings_page(sync_id: int, page: int, marketplace: str = "backmarket", fan_out: bool = True
                              ) -> None:
    """Fetch one listings page; page 1 fans out every other page (unless ``fan_out`` is false: a resume
    fetches the missing pages itself); hand the items to apply."""
    check_marketplace(marketplace)
    settings = get_settings()
    redis = resources.async_redis()
    first_fetch = await redis.set(sync_stats.page_key(settings.redis_namespace, sync_id, page), 1,
                                  nx=True, ex=sync_stats.STATS_TTL_S)
    records = []
    try:
        result = await backmarket_client(on_request=records.append).get_listings_page(
            page, settings.backmarket_page_size)
    finally:
        await sync_stats.add(redis, settings.redis_namespace, sync_id,
                             sync_stats.count_attempts(records, first_is_retry=not first_fetch))
    # The snapshot is as of the moment the successful request left, not when its answer arrived.
    fetched_at = datetime.now(timezone.utc) - timedelta(seconds=records[-1].elapsed_s if records else 0)
    total_pages = max(1, math.ceil(result.count / settings.backmarket_page_size))
    if page == 1 and total_pages > 1 and fan_out:
        # Fan out at once: the fleet-wide limiter, not a chain, paces the fetches.
        await asyncio.to_thread(_enqueue_pages, sync_id, range(2, total_pages + 1), marketplace)
    items = [item.to_message() for item in result.results]
    await asyncio.to_thread(
        apply_listings_batch.send, sync_id, page, fetched_at.isoformat(), items, marketplace,
        total_pages if page == 1 else None, result.count if page == 1 else None)


def _enqueue_pages(sync_id: int, pages, marketplace: str, fan_out: bool = True) -> None:
    broker = fetch_listings_page.broker
    for page in pages:
        broker.enqueue(fetch_listings_page.message(sync_id, page, marketplace, fan_out))


@dramatiq.actor(queue_name=queues.STOCK_SYNC, max_retries=3, min_backoff=1000, max_backoff=30000,
                time_limit=5 * 60 * 1000)
def resume_stalled_syncs(marketplace: str = "backmarket") -> int:
    """Fetch again the pages of running syncs of ``marketplace`` that stopped moving; return how many.

    PostgreSQL knows which pages were applied (``sync_pages``), so pages whose messages vanished
    (a Redis restart without persistence, a flushed queue) are fetched again long before the run
    would be abandoned; a re-fetched page that was in flight after all is applied once.  The
    scheduler's ``stock_sync_resume`` job sends this every minute.
    """
    check_marketplace(marketplace)
    settings = get_settings()
    with resources.sessions()() as session:
        resumes = syncs.stalled_runs(session, kind=SYNC_KIND, target=marketplace,
                                     stalled_after_s=settings.sync_resume_after_s)
    for resume in resumes:
        dramatiq.get_logger(__name__).warning(
            "stock sync %d of %s made no progress for %.0f s: fetching %d missing page(s) again", resume.sync_id,
            marketplace, settings.sync_resume_after_s, len(resume.pages))
        _enqueue_pages(resume.sync_id, resume.pages, marketplace, resume.fan_out)
    return sum(len(resume.pages) for resume in resumes)


#: The largest listing quantity a page may carry: the stock columns are 32-bit.
MAX_PAGE_QUANTITY = 2**31 - 1


def page_items(items: list) -> list[PageItem]:
    """Decode a message's items; raise :class:`MalformedMessage` naming the bad item and field.

    Everything is checked before the page touches the database: a malformed page must not create
    a variation (a phantom SKU) nor apply a quantity the marketplace cannot have.
    """
    if not isinstance(items, list):
        raise MalformedMessage(f"items must be a list, got {type(items).__name__}")
    decoded = []
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise ValueError(f"must be an object, got {type(item).__name__}")
            quantity = item["quantity"]
            if not isinstance(quantity, int) or isinstance(quantity, bool):
                raise ValueError(f"quantity must be an integer, got {type(quantity).__name__}")
            if not 0 <= quantity <= MAX_PAGE_QUANTITY:
                raise ValueError(f"quantity must be in 0..{MAX_PAGE_QUANTITY}, got {quantity}")
            if not isinstance(item["id"], str) or not item["id"] or len(item["id"]) > ID_CHARS:
                raise ValueError(f"id must be a string of 1 to {ID_CHARS} characters, got {item['id']!r:.80}")
            check_sku(item["sku"])
            decoded.append(PageItem(external_id=item["id"], legacy_id=item.get("listing_id"), sku=item["sku"],
                                    title=item.get("title"), quantity=quantity,
                                    publication_state=item.get("publication_state"), price=item.get("price"),
                                    currency=item.get("currency")))
        except (KeyError, TypeError, ValueError) as error:
            what = f"missing field {error}" if isinstance(error, KeyError) else str(error)
            raise MalformedMessage(f"item {index} of the page is malformed: {what}") from None
    return decoded


@dramatiq.actor(queue_name=queues.STOCK_APPLY, retry_when=transient_only(8), min_backoff=500, max_backoff=30000,
                max_age=6 * 3600 * 1000)
def apply_listings_batch(sync_id: int, page: int, fetched_at: str, items: list, marketplace: str = "backmarket",
                         total_pages: int | None = None, total_items: int | None = None) -> None:
    """Apply one page in one transaction; the last page closes the run."""
    check_marketplace(marketplace)
    try:
        fetched = datetime.fromisoformat(fetched_at)
    except (TypeError, ValueError):
        raise MalformedMessage(f"fetched_at must be an ISO 8601 time, got {fetched_at!r}") from None
    decoded = page_items(items)
    with resources.sessions()() as session:
        marketplace_id = ensure_marketplace(session, marketplace, MARKETPLACES[marketplace])
        result = apply_page(session, marketplace_id=marketplace_id, sync_id=sync_id, page=page, fetched_at=fetched,
                            items=decoded, total_pages=total_pages, total_items=total_items,
                            skew=events_pipeline.skew(), restocks_on_cancel=events_pipeline.restocks(marketplace))
        if result.finished:
            # Same transaction as the close: whoever sees the run finished sees its counters too.
            settings = get_settings()
            syncs.add_counts(session, sync_id, **sync_stats.read(resources.sync_redis(), settings.redis_namespace,
                                                                 sync_id))
        session.commit()
        if result.applied:
            metrics.sync_progress(sync_id, result.pages_done, result.total_pages)
        metrics.sync_page_applied(SYNC_KIND, marketplace, result)
        if result.finished:
            metrics.sync_finished(syncs.get_run(session, sync_id))
    if result.rechecks:
        # Rows the page could not settle are read again once past the skew, not at the next sweep.
        sweep_stock.send_with_options(args=(marketplace,), delay=events_pipeline.recheck_delay_ms())


@on_dead_letter("fetch_listings_page")
@on_dead_letter("apply_listings_batch")
def _fail_sync_run(message: dramatiq.Message, error: str) -> None:
    sync_id = message_argument(message, 0, "sync_id")
    page = message_argument(message, 1, "page")
    with resources.sessions()() as session:
        if syncs.fail_run(session, int(sync_id), f"page {page} failed for good ({message.actor_name}): {error}"):
            metrics.sync_finished(syncs.get_run(session, int(sync_id)))
