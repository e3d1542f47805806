"""Bulk stock sync of any account: start → fetch pages (fan-out or chain) → apply each page → finish; resume.

The work is in :mod:`pipelines.stock_sync`; these actors decode, call it and enqueue what follows.
"""
from __future__ import annotations

import asyncio
from datetime import datetime

import dramatiq
from dramatiq.middleware import CurrentMessage

from actors.events import sweep_stock
from actors.retry import MalformedMessage, transient_only
from db import syncs
from pipelines import events as events_pipeline
from pipelines import stock_sync as pipeline
from pipelines import timeline
from pipelines.stock_sync import SYNC_KIND, check_account, page_items
from runtime import queues
from runtime.failures import message_argument, on_dead_letter

__all__ = ["SYNC_KIND", "apply_listings_batch", "begin_stock_sync", "check_account", "fetch_listings_page",
           "page_items", "prune_listing_reads", "resume_stalled_syncs", "start_stock_sync"]


def begin_stock_sync(marketplace: str, *, trigger: str = "manual", force: bool = False) -> int:
    """Open a sync run (lock + cooldown) and enqueue its first page; return the run id.

    Raises :class:`db.syncs.SyncRefused` when a run is going on or the cooldown has not passed.
    """
    opened = pipeline.open_sync(marketplace, trigger=trigger, force=force)
    if opened.first_cursor is None:
        fetch_listings_page.send(opened.id, 1, marketplace)
    else:  # a bulk walk: page 1 starts the export
        fetch_listings_page.send(opened.id, 1, marketplace, True, opened.first_cursor)
    return opened.id


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
async def fetch_listings_page(sync_id: int, page: int, marketplace: str = "backmarket", fan_out: bool = True,
                              cursor: str | None = None) -> None:
    """Fetch one listings page and hand its items to apply.

    Numbered pages: page 1 fans out every other page (unless ``fan_out`` is false: a resume fetches
    the missing pages itself).  Cursor pages: each page sends the next one (``fan_out`` false: this
    page alone), after skipping the pages a resumed walk has applied already.  A page that is not
    ready (a bulk export still running) sends itself again, delayed as the adapter says.  A page
    another message fetches (this one delivered twice, or sent twice) is left to it.
    """
    current = CurrentMessage.get_current_message()
    message_id = current.message_id if current is not None else None
    cursor_walk = pipeline.is_cursor_walk(marketplace)
    if cursor_walk and fan_out:
        following = await asyncio.to_thread(pipeline.next_page_to_fetch, sync_id, page, cursor)
        if following is None:
            return
        page, cursor = following
    fetched = await pipeline.fetch_page(sync_id, page, marketplace, cursor, message_id)
    if fetched is None:
        dramatiq.get_logger(__name__).info("page %d of sync %d is fetched by another message: %s stops",
                                           page, sync_id, message_id)
        return
    if fetched.retry_after_s is not None:
        # Not ready (a bulk export running): this page again later, no worker waiting for it.
        again = fetch_listings_page.message(sync_id, page, marketplace, fan_out, cursor)
        if await pipeline.page_not_ready(sync_id, page, message_id, again.message_id):
            await asyncio.to_thread(fetch_listings_page.broker.enqueue, again,
                                    delay=int(fetched.retry_after_s * 1000))
        return
    if cursor_walk:
        if fetched.next_cursor is not None and fan_out:
            await asyncio.to_thread(_enqueue_pages, sync_id, [page + 1], marketplace, True, fetched.next_cursor)
    elif page == 1 and fetched.total_pages > 1 and fan_out:
        # Fan out now, each page due when the quota frees its slot (the limiter still guards the quota).
        await asyncio.to_thread(_enqueue_pages, sync_id, range(2, fetched.total_pages + 1), marketplace)
    first_or_last = page == 1 or cursor_walk
    await asyncio.to_thread(
        apply_listings_batch.send, sync_id, page, fetched.fetched_at.isoformat(), fetched.items, marketplace,
        fetched.total_pages if first_or_last else None, fetched.count if page == 1 else None, fetched.next_cursor)


def _enqueue_pages(sync_id: int, pages, marketplace: str, fan_out: bool = True, cursor: str | None = None, *,
                   resumed: bool = False) -> None:
    broker = fetch_listings_page.broker
    messages = {page: fetch_listings_page.message(sync_id, page, marketplace, fan_out, cursor) for page in pages}
    if resumed:  # the messages that held these pages are gone: the pages are the new messages'
        pipeline.resume_claims(sync_id, {page: message.message_id for page, message in messages.items()})
    # Paced, not all due now: fetches waiting on the limiter would hold every worker thread.
    for message, delay_ms in zip(messages.values(), pipeline.fetch_delays_ms(marketplace, len(messages))):
        broker.enqueue(message, delay=delay_ms or None)


@dramatiq.actor(queue_name=queues.STOCK_SYNC, max_retries=3, min_backoff=1000, max_backoff=30000,
                time_limit=5 * 60 * 1000)
def resume_stalled_syncs(marketplace: str = "backmarket") -> int:
    """Fetch again the pages of running syncs of ``marketplace`` that stopped moving; return how many.

    PostgreSQL knows which pages were applied (``sync_pages``), so pages whose messages vanished
    (a Redis restart without persistence, a flushed queue) are fetched again long before the run
    would be abandoned; a re-fetched page that was in flight after all is applied once.  The
    scheduler's ``stock_sync_resume`` job sends this every minute.
    """
    resumes = pipeline.stalled_runs(marketplace)
    for resume in resumes:
        dramatiq.get_logger(__name__).warning(
            "stock sync %d of %s made no progress: fetching %d missing page(s) again", resume.sync_id,
            marketplace, len(resume.pages))
        _enqueue_pages(resume.sync_id, resume.pages, marketplace, resume.fan_out, resume.cursor, resumed=True)
    return sum(len(resume.pages) for resume in resumes)


@dramatiq.actor(queue_name=queues.STOCK_APPLY, retry_when=transient_only(8), min_backoff=500, max_backoff=30000,
                max_age=6 * 3600 * 1000)
def apply_listings_batch(sync_id: int, page: int, fetched_at: str, items: list, marketplace: str = "backmarket",
                         total_pages: int | None = None, total_items: int | None = None,
                         next_cursor: str | None = None) -> None:
    """Apply one page in one transaction; the last page closes the run."""
    if next_cursor is not None and not isinstance(next_cursor, str):
        raise MalformedMessage(f"next_cursor must be a string, got {type(next_cursor).__name__}")
    try:
        fetched = datetime.fromisoformat(fetched_at)
    except (TypeError, ValueError):
        raise MalformedMessage(f"fetched_at must be an ISO 8601 time, got {fetched_at!r}") from None
    result = pipeline.apply(sync_id, page, fetched, page_items(items), marketplace, total_pages, total_items,
                            next_cursor)
    if result.rechecks:
        # Rows the page could not settle are read again once past the skew, not at the next sweep.
        sweep_stock.send_with_options(args=(marketplace,), delay=events_pipeline.recheck_delay_ms())


@on_dead_letter("fetch_listings_page")
@on_dead_letter("apply_listings_batch")
def _fail_sync_run(message: dramatiq.Message, error: str) -> None:
    pipeline.fail(int(message_argument(message, 0, "sync_id")), message_argument(message, 1, "page"),
                  message.actor_name, error)


@dramatiq.actor(queue_name=queues.STOCK_SYNC, max_retries=3, min_backoff=1000, max_backoff=30000,
                time_limit=30 * 60 * 1000)
def prune_listing_reads() -> int:
    """Delete the reads past ``LISTING_READS_RETENTION_DAYS`` (the scheduler's ``listing_reads_prune``)."""
    deleted = timeline.prune_reads()
    dramatiq.get_logger(__name__).info("pruned %d listing reads past their retention", deleted)
    return deleted
