"""The one catalogue pipeline, for every account: open a run, fetch a page, apply it, resume a stalled run.

A page is applied as a snapshot as of the moment its request left (not when its answer came), in
one transaction; the page that completes the run closes it in that same transaction.  Numbered
pages fan out from page 1; cursor pages form a chain, each page's cursor kept with it in
PostgreSQL so a resume restarts after the last page applied.

A platform with a bulk export (Shopify's bulk query) walks its file instead of pages when the
account's last catalogue was large (:func:`wants_bulk`): page 1 starts the operation, page 2 waits
for it (a delayed message per poll, the run's heartbeat kept), then each page reads the next lines
of its file, stamped with the operation's snapshot moment; the chain, the apply and the resume are
the same as a paged walk's (the cursor names the operation and a byte offset in its file).

Each page is fetched by one message (:mod:`core.page_claims`): a fetch delivered twice may fetch
its own page again, but the pages it sends are claimed by the first copies, so a duplicate never
becomes a second chain (or a second fan-out) fetching the whole walk again.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from core.errors import MalformedMessage
from core.events import ID_CHARS, check_sku
from clients.shopify_bulk import BULK_START
from core.platforms import CURSOR
from db import syncs
from db.events import marketplace_id_of
from db.snapshot import PageItem, PageResult, apply_page
from pipelines import events
from runtime import accounts, metrics, page_claims, resources, sync_stats
from runtime.accounts import AccountView
from runtime.clients import account_quota, catalogue_adapter
from runtime.settings import get_settings

SYNC_KIND = "stock"


@dataclass(frozen=True)
class FetchedPage:
    """One listings page as fetched: its items (message form), its time, and the catalogue's size."""

    fetched_at: datetime
    items: list[dict]
    total_pages: int | None
    count: int | None
    next_cursor: str | None = None
    #: The page is not ready (a bulk export still running): fetch it again after this long.
    retry_after_s: float | None = None


def sync_policy() -> syncs.SyncPolicy:
    """Cooldowns and staleness of stock syncs, from the settings."""
    settings = get_settings()
    return syncs.SyncPolicy(settings.sync_cooldown_scheduled_s, settings.sync_cooldown_manual_s,
                            settings.sync_stale_after_s)


def check_account(marketplace: str) -> AccountView:
    """The account ``marketplace`` if its catalogue can be walked; a clear permanent error otherwise."""
    try:
        view = accounts.account(marketplace)
    except ValueError as error:
        raise MalformedMessage(str(error)) from None
    if view.platform.paging is None:
        raise MalformedMessage(f"account {marketplace!r} is {view.platform.title}: it has no catalogue to sync")
    if not view.enabled:
        raise MalformedMessage(f"account {marketplace!r} is disabled")
    return view


def is_cursor_walk(marketplace: str) -> bool:
    """Whether ``marketplace``'s pages form a chain (each page names the next)."""
    return check_account(marketplace).platform.paging == CURSOR


def wants_bulk(platform_has_bulk: bool, last_size: int | None, min_size: int) -> bool:
    """Whether a sync walks a bulk export: the platform has one and the last catalogue listed at least ``min_size``.

    ``min_size`` 0: always (a first sync too); otherwise a first sync (size unknown) walks pages.
    """
    return platform_has_bulk and (min_size == 0 or (last_size is not None and last_size >= min_size))


@dataclass(frozen=True)
class OpenedSync:
    """A run just opened and the cursor its page 1 is fetched with (``BULK_START`` for a bulk walk)."""

    id: int
    first_cursor: str | None = None


def open_sync(marketplace: str, *, trigger: str = "manual", force: bool = False) -> OpenedSync:
    """Open a sync run (lock + cooldown) and choose its walk (pages or a bulk export: ``details.catalogue``).

    Raises :class:`db.syncs.SyncRefused` when a run is going on or the cooldown has not passed.
    """
    view = check_account(marketplace)
    with resources.sessions()() as session:
        bulk = wants_bulk(view.platform.bulk_catalogue, syncs.last_size(session, SYNC_KIND, marketplace),
                          get_settings().shopify_bulk_min_variants)
        run = syncs.begin_run(session, kind=SYNC_KIND, target=marketplace, trigger=trigger, policy=sync_policy(),
                              force=force, details={"platform": view.platform.name,
                                                    "catalogue": "bulk" if bulk else "pages"})
    return OpenedSync(run.id, BULK_START if bulk else None)


async def fetch_page(sync_id: int, page: int, marketplace: str = "backmarket", cursor: str | None = None,
                     message_id: str | None = None) -> FetchedPage | None:
    """Fetch one listings page under the account's fleet-wide limiter, its HTTP attempts counted on the run.

    The page is claimed for ``message_id`` first: None (nothing fetched) when another message
    fetches it.  Without a message (called outside a worker) nothing is claimed.
    """
    view = check_account(marketplace)
    settings = get_settings()
    redis = resources.async_redis()
    claimed = page_claims.NEW if message_id is None else await page_claims.claim(
        redis, settings.redis_namespace, sync_id, page, message_id)
    if claimed == page_claims.TAKEN:
        return None
    records = []
    try:
        result = await catalogue_adapter(view, on_request=records.append).list_page(page, cursor)
    finally:
        await sync_stats.add(redis, settings.redis_namespace, sync_id,
                             sync_stats.count_attempts(records, first_is_retry=claimed == page_claims.MINE))
    # The snapshot is as of the moment the last request left (the one that read the quantities),
    # not when its answer arrived; a bulk file's lines are as of its operation's snapshot.
    fetched_at = result.read_at or datetime.now(timezone.utc) - timedelta(
        seconds=records[-1].elapsed_s if records else 0)
    return FetchedPage(fetched_at, result.items, result.total_pages, result.count, result.next_cursor,
                       result.retry_after_s)


async def page_not_ready(sync_id: int, page: int, message_id: str | None, successor: str) -> bool:
    """A page fetched again later by message ``successor`` (a bulk export running): the run is alive.

    The page is handed to ``successor`` (its fetch is no retry); False: ``message_id`` no longer
    holds it (a late copy of a poll already sent again), so nothing is to be sent.
    """
    await asyncio.to_thread(_heartbeat, sync_id)
    if message_id is None:
        return True
    return await page_claims.hand_over(resources.async_redis(), get_settings().redis_namespace, sync_id, page,
                                       message_id, successor)


def resume_claims(sync_id: int, messages: dict[int, str]) -> None:
    """Hand the pages a resume fetches again to its messages (``page -> message id``), whoever held them."""
    page_claims.resume(resources.sync_redis(), get_settings().redis_namespace, sync_id, messages)


def _heartbeat(sync_id: int) -> None:
    with resources.sessions()() as session:
        syncs.heartbeat(session, sync_id)
        session.commit()


def fetch_delays_ms(marketplace: str, count: int) -> list[int]:
    """When each of ``count`` page fetches enqueued together is due (ms from now): a quota window's worth at a time.

    All due at once, a walk's fetches sat in the worker threads waiting for the limiter (a Back
    Market walk of 400 pages held every thread for its 200 s: the other accounts' pages, the
    applies, the events and the pushes waited behind them; ``bench/accounts_sync.py``).  Here the
    fetch that sends them has taken one slot; the rest of this window's slots go now, and each
    following window's as the sliding window frees them together, so a fetch finds its slot free,
    and a push (two slots at once) takes its pair when a window opens.  A single page is due now.
    """
    if count <= 1:
        return [0] * count
    _, requests, window_s, margin_s = account_quota(check_account(marketplace))
    return [int((index + 1) // requests * (window_s + margin_s) * 1000) for index in range(count)]


def next_page_to_fetch(sync_id: int, page: int, cursor: str | None) -> tuple[int, str | None] | None:
    """A cursor chain's next page to fetch, past the pages a resumed walk has applied already (None: done)."""
    with resources.sessions()() as session:
        return syncs.next_page_to_fetch(session, sync_id, page, cursor)


def stalled_runs(marketplace: str) -> list[syncs.Resume]:
    """Running syncs of ``marketplace`` that stopped moving, with the pages they still miss."""
    cursor = is_cursor_walk(marketplace)
    with resources.sessions()() as session:
        return syncs.stalled_runs(session, kind=SYNC_KIND, target=marketplace,
                                  stalled_after_s=get_settings().sync_resume_after_s, cursor=cursor)


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
          total_pages: int | None = None, total_items: int | None = None, next_cursor: str | None = None
          ) -> PageResult:
    """Apply one decoded page in one transaction (the last page closes the run); metrics after commit."""
    check_account(marketplace)
    with resources.sessions()() as session:
        marketplace_id = marketplace_id_of(session, marketplace)
        result = apply_page(session, marketplace_id=marketplace_id, sync_id=sync_id, page=page, fetched_at=fetched_at,
                            items=items, total_pages=total_pages, total_items=total_items,
                            skew=events.skew(), restocks_on_cancel=events.restocks(marketplace),
                            next_cursor=next_cursor)
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
