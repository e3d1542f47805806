"""The bulk stock sync as plain functions: open a run, fetch a page, apply it, resume a stalled run.

A page is applied as a snapshot as of the moment its request left (not when its answer came), in
one transaction; the page that completes the run closes it in that same transaction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from core.errors import MalformedMessage
from core.events import ID_CHARS, check_sku
from db import syncs
from db.snapshot import PageItem, PageResult, apply_page, ensure_marketplace
from pipelines import events
from runtime import metrics, resources, sync_stats
from runtime.clients import backmarket_client
from runtime.settings import get_settings

#: The marketplaces this pipeline can sync.
MARKETPLACES = {"backmarket": "Back Market"}
SYNC_KIND = "stock"


@dataclass(frozen=True)
class FetchedPage:
    """One listings page as fetched: its items (message form), its time, and the catalogue's size."""

    fetched_at: datetime
    items: list[dict]
    total_pages: int
    count: int


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


def open_sync(marketplace: str, *, trigger: str = "manual", force: bool = False) -> int:
    """Open a sync run (lock + cooldown); return its id.

    Raises :class:`db.syncs.SyncRefused` when a run is going on or the cooldown has not passed.
    """
    check_marketplace(marketplace)
    with resources.sessions()() as session:
        ensure_marketplace(session, marketplace, MARKETPLACES[marketplace])
        session.commit()
        run = syncs.begin_run(session, kind=SYNC_KIND, target=marketplace, trigger=trigger, policy=sync_policy(),
                              force=force)
    return run.id


async def fetch_page(sync_id: int, page: int) -> FetchedPage:
    """Fetch one listings page under the fleet-wide limiter, its HTTP attempts counted on the run."""
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
    return FetchedPage(fetched_at, [item.to_message() for item in result.results], total_pages, result.count)


def stalled_runs(marketplace: str) -> list[syncs.Resume]:
    """Running syncs of ``marketplace`` that stopped moving, with the pages they still miss."""
    check_marketplace(marketplace)
    with resources.sessions()() as session:
        return syncs.stalled_runs(session, kind=SYNC_KIND, target=marketplace,
                                  stalled_after_s=get_settings().sync_resume_after_s)


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


def apply(sync_id: int, page: int, fetched_at: datetime, items: list[PageItem], marketplace: str,
          total_pages: int | None = None, total_items: int | None = None) -> PageResult:
    """Apply one decoded page in one transaction (the last page closes the run); metrics after commit."""
    with resources.sessions()() as session:
        marketplace_id = ensure_marketplace(session, marketplace, MARKETPLACES[marketplace])
        result = apply_page(session, marketplace_id=marketplace_id, sync_id=sync_id, page=page, fetched_at=fetched_at,
                            items=items, total_pages=total_pages, total_items=total_items,
                            skew=events.skew(), restocks_on_cancel=events.restocks(marketplace))
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
    return result


def fail(sync_id: int, page: object, actor_name: str, error: str) -> None:
    """A page failed for good: its run fails."""
    with resources.sessions()() as session:
        if syncs.fail_run(session, sync_id, f"page {page} failed for good ({actor_name}): {error}"):
            metrics.sync_finished(syncs.get_run(session, sync_id))
