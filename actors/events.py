"""Stock events (DESIGN.md §3): book each event once, push local changes, re-check, reconcile.

- ``order_created`` / ``order_cancelled`` (per order line), ``stock_topup``, ``manual_adjustment``
  (queue ``stock-events``): decode, book with :func:`db.events.record_stock_event` in one
  transaction, then enqueue what follows (a push, a re-check).  A re-delivered message finds its
  idempotency key and changes nothing ("duplicate stock event <key> skipped").
- ``push_stock(marketplace, sku)`` (queue ``stock-push``): one ``POST /ws/listings/{id}`` with the
  absolute quantity; retried, then dead-lettered with the row's ``push_state`` set to ``failed``.
- ``recheck_stock`` / ``sweep_stock`` (queue ``stock-recheck``): read again the rows whose history
  made a page ambiguous, and re-send pushes a crash left pending.
- ``reconcile_stock`` (queue ``reconcile``): the reconciliation walk (also ``stocksync reconcile``).

Actors are thin: the rules live in ``db.events``, ``db.snapshot`` and ``db.reconcile``.
"""
from __future__ import annotations

import asyncio
import logging
import math
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage
from sqlalchemy import text

from actors.retry import MalformedMessage, transient_only
from clients.backmarket import parse_listing
from db import events as stock_events
from db import reconcile, syncs
from core.events import EVENT_KINDS, MAX_BATCH, InvalidStockEvent, StockEvent
from db.events import EventResult
from db.snapshot import PageItem, apply_recheck
from runtime import metrics, queues, resources, sync_stats
from runtime.alert_hooks import raise_alert
from runtime.clients import backmarket_client
from runtime.failures import on_dead_letter
from runtime.settings import get_settings

logger = logging.getLogger(__name__)

EVENTS_QUEUE = queues.EVENTS
PUSH_QUEUE = queues.PUSH
RECHECK_QUEUE = queues.RECHECK
RECONCILE_QUEUE = queues.RECONCILE

#: Marketplaces whose stock can be pushed and read back one listing at a time.
READABLE_MARKETPLACES = ("backmarket",)

_settings = get_settings()
stock_events.set_clock_skew(_settings.stock_event_skew_s)


# -- decoding and booking ----------------------------------------------------------------------------


def decode(kind: str, args: tuple = (), kwargs: dict | None = None) -> StockEvent:
    """A ``kind`` actor's arguments as an event; :class:`MalformedMessage` naming the field otherwise."""
    try:
        return StockEvent.from_message(kind, args, kwargs)
    except InvalidStockEvent as invalid:
        raise MalformedMessage(f"{kind} event: {invalid}") from None


def decode_batch_item(item: Any, index: int) -> StockEvent:
    """One ``{"kind": ..., "fields": {...}}`` of a batch as an event; :class:`MalformedMessage` names what is wrong."""
    if not isinstance(item, dict) or not isinstance(item.get("fields"), dict) or set(item) != {"kind", "fields"}:
        raise MalformedMessage(f"event {index} must be an object with 'kind' and 'fields' only, got "
                               f"{_short(item)}")
    kind = item["kind"]
    if kind not in EVENT_KINDS:
        raise MalformedMessage(f"event {index}: kind must be one of {', '.join(EVENT_KINDS)}, got {_short(kind)}")
    try:
        return StockEvent.from_message(kind, (), item["fields"])
    except InvalidStockEvent as invalid:
        raise MalformedMessage(f"event {index} ({kind}): {invalid}") from None


def _short(value: Any) -> str:
    # A malformed message may be megabytes: its error names the problem, not the whole value.
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def book(event: StockEvent) -> EventResult:
    """Book one event in its own transaction, then count it and enqueue what follows."""
    return book_all([event])[0]


def book_all(events: list[StockEvent]) -> list[EventResult]:
    """Book events (valid by construction) in one transaction, then count them and enqueue what follows.

    All or nothing: a failure rolls every booking back, so a retry of the message books them all once.
    """
    with resources.sessions()() as session:
        results = stock_events.record_stock_events(session, events)
        session.commit()
    for event, result in zip(events, results):
        _after_booking(event, event.source or "api", result)
    return results


def _after_booking(event: StockEvent, source: str, result: EventResult) -> None:
    if result.status == "duplicate":
        metrics.duplicate_event(source)
    else:
        metrics.event_applied(event.change_type, source, event.event_time)
        metrics.ledger_change(event.change_type)
        if result.oversold:
            metrics.oversold(event.marketplace)
    # After the commit: a crash before these sends leaves the row pending or flagged, and the
    # re-delivered message (a duplicate now) sends them again.
    if result.push_requested:
        push_stock.send(event.marketplace, event.sku)
    if result.needs_recheck and event.marketplace in READABLE_MARKETPLACES:
        recheck_stock.send_with_options(args=(event.marketplace, event.sku), delay=_recheck_delay_ms())


# Each event actor takes its kind's fields (core.events.FIELDS), by keyword or in that order, and
# checks them with the contract before anything touches the database: a missing, unknown or bad
# field is a MalformedMessage, dead-lettered at once.
_EVENT_OPTIONS = dict(queue_name=EVENTS_QUEUE, retry_when=transient_only(10), min_backoff=200, max_backoff=30_000,
                      max_age=7 * 24 * 3600 * 1000)


@dramatiq.actor(**_EVENT_OPTIONS)
def order_created(*args: Any, **fields: Any) -> None:
    """An order line took ``quantity`` units of ``sku`` on ``marketplace`` at ``event_time``."""
    book(decode("order_created", args, fields))


@dramatiq.actor(**_EVENT_OPTIONS)
def order_cancelled(*args: Any, **fields: Any) -> None:
    """An order line was cancelled at ``event_time``: its ``quantity`` units come back (and are pushed)."""
    book(decode("order_cancelled", args, fields))


@dramatiq.actor(**_EVENT_OPTIONS)
def stock_topup(*args: Any, **fields: Any) -> None:
    """``quantity`` units of ``sku`` arrived (``reference``: once per delivery); then pushed."""
    book(decode("stock_topup", args, fields))


@dramatiq.actor(**_EVENT_OPTIONS)
def manual_adjustment(*args: Any, **fields: Any) -> None:
    """A person moved ``sku``'s stock by ``change`` (signed; ``reference``: once); then pushed."""
    book(decode("manual_adjustment", args, fields))


@dramatiq.actor(**_EVENT_OPTIONS)
def stock_events_batch(*args: Any, **kwargs: Any) -> None:
    """Book a batch of events (each ``{"kind": actor name, "fields": its arguments}``) in one transaction.

    What a producer sends when it has many events at once: one message, one commit, each event
    still its own ledger row under its own idempotency key.  A re-delivered batch books nothing.
    """
    if len(args) + len(kwargs) != 1 or set(kwargs) - {"events"}:
        raise MalformedMessage("stock_events_batch takes one argument: events, a list")
    events = args[0] if args else kwargs["events"]
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_BATCH:
        raise MalformedMessage(f"events must be a non-empty list of at most {MAX_BATCH} events, got "
                               f"{_short(events) if not isinstance(events, list) else f'{len(events)} items'}")
    book_all([decode_batch_item(item, index) for index, item in enumerate(events)])


# -- pushing ---------------------------------------------------------------------------------------


def _push_lease() -> timedelta:
    # Longer than the longest push (every HTTP attempt timing out, with the client's backoffs):
    # a lease that ends while its POST may still land would let an older quantity land last.
    settings = get_settings()
    attempts = settings.backmarket_http_attempts
    return timedelta(seconds=settings.backmarket_timeout_s * attempts + 30 * (attempts - 1) + 30)


def _message_id() -> str:
    message = CurrentMessage.get_current_message()
    return message.message_id if message is not None else f"direct-{uuid.uuid4()}"


@dramatiq.actor(queue_name=PUSH_QUEUE, retry_when=transient_only(_settings.stock_push_max_retries),
                min_backoff=_settings.stock_push_min_backoff_ms, max_backoff=_settings.stock_push_max_backoff_ms,
                max_age=24 * 3600 * 1000, time_limit=15 * 60 * 1000)
def push_stock(marketplace: str, sku: str) -> None:
    """Set ``sku``'s stock on ``marketplace`` to our absolute quantity (one call), if a change waits.

    One push of a row at a time (a lease on the row, taken with the read of the quantity); a
    change booked while the POST was in flight leaves the row pending, and this actor pushes again.
    """
    if marketplace not in stock_events.PUSHED_MARKETPLACES:
        logger.info("%s stock is not pushed; nothing to do for %s", marketplace, sku)
        return
    owner = _message_id()
    with resources.sessions()() as session:
        stock_id = stock_events.find_stock_id(session, marketplace, sku)
        if stock_id is None:
            raise MalformedMessage(f"no stock row for sku {sku!r} on {marketplace}")
        claim = stock_events.claim_push(session, stock_id, owner, lease=_push_lease())
        session.commit()
    if claim is None:
        # Another push holds the row; if it read before our change, it leaves the row pending
        # and pushes again when it finishes.
        logger.info("push of %s on %s already in flight; it will carry this change", sku, marketplace)
        return
    if not claim.needed:
        return
    try:
        resources.run_on_worker_loop(lambda: _send_quantity(claim.listing, claim.quantity))
    except BaseException as error:
        # The lease stays: a retry of this message takes it back; the dead letter gives it up.
        with resources.sessions()() as session:
            stock_events.note_push_error(session, stock_id, owner, f"{type(error).__name__}: {error}")
            session.commit()
        raise
    with resources.sessions()() as session:
        up_to_date = stock_events.finish_push(session, claim)
        session.commit()
    logger.info("pushed %s on %s: quantity %d", sku, marketplace, claim.quantity)
    if not up_to_date:
        push_stock.send(marketplace, sku)


async def _send_quantity(listing: str, quantity: int) -> None:
    # Built here, on the loop: the HTTP session belongs to the loop that runs the request.
    await backmarket_client().update_listing(listing, quantity=quantity)


@on_dead_letter("push_stock")
def _push_failed(message: dramatiq.Message, error: str) -> None:
    marketplace, sku = _args(message, "marketplace", "sku")
    with resources.sessions()() as session:
        stock_id = stock_events.find_stock_id(session, marketplace, sku)
        if stock_id is not None:
            stock_events.release_push(session, stock_id, message.message_id, error, failed=True)
            session.commit()
    logger.error("push of %s on %s failed for good: %s", sku, marketplace, error)


def _args(message: dramatiq.Message, *names: str) -> list:
    return [message.args[i] if len(message.args) > i else message.kwargs.get(name) for i, name in enumerate(names)]


# -- re-checks -------------------------------------------------------------------------------------

_FLAGGED_ROW = text(
    "SELECT s.id, s.marketplace_id, s.needs_recheck, "
    "ARRAY(SELECT l.external_id FROM listings l WHERE l.marketplace_id = s.marketplace_id "
    "      AND l.variation_id = s.variation_id AND l.missing_since IS NULL ORDER BY l.id) AS listings "
    "FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
    "JOIN marketplaces m ON m.id = s.marketplace_id WHERE m.code = :mp AND v.sku = :sku")

# Pending for a while with no live lease: the push message was lost (a crash between the commit
# and the send, with the event's message already acked).
_PENDING_PUSHES = text(
    "SELECT v.sku FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
    "JOIN marketplaces m ON m.id = s.marketplace_id WHERE m.code = :mp AND s.push_state = 'pending' "
    "AND s.push_requested_at < :before AND (s.push_lease_until IS NULL OR s.push_lease_until < now())")


def _recheck_delay_ms() -> int:
    # Read again once the ambiguous moment is further away than the clock skew.
    return int(2 * stock_events.clock_skew().total_seconds() * 1000) + 1000


@dramatiq.actor(queue_name=RECHECK_QUEUE, retry_when=transient_only(5), min_backoff=2_000, max_backoff=60_000,
                max_age=24 * 3600 * 1000, time_limit=5 * 60 * 1000)
def recheck_stock(marketplace: str, sku: str, attempt: int = 1, refresh: bool = False) -> None:
    """Read one flagged row's listing(s) again and apply the read with the snapshot rules.

    ``refresh``: an operator asked for this row (the console), flagged or not; same read, same rules.
    """
    if marketplace not in READABLE_MARKETPLACES:
        return
    with resources.sessions()() as session:
        row = session.execute(_FLAGGED_ROW, {"mp": marketplace, "sku": sku}).first()
    if row is None or not (row.needs_recheck or refresh) or not row.listings:
        return
    fetched_at, quantity = resources.run_on_worker_loop(lambda: _read_listings(row.listings))
    with resources.sessions()() as session:
        rows = apply_recheck(session, marketplace_id=row.marketplace_id, fetched_at=fetched_at,
                             quantities={sku: quantity})
        session.commit()
    if any(r.state == "ambiguous" for r in rows):
        if attempt < get_settings().stock_recheck_attempts:
            recheck_stock.send_with_options(args=(marketplace, sku, attempt + 1), delay=_recheck_delay_ms())
        else:
            logger.warning("%s on %s is still ambiguous after %d re-checks; the next walk reads it", sku,
                           marketplace, attempt)


async def _read_listings(listings: list[str]) -> tuple[datetime, int]:
    # The read is as of when the first request left: anything booked after that stays on top.
    fetched_at = datetime.now(timezone.utc)
    client = backmarket_client()
    quantity = 0
    for listing in listings:
        quantity += parse_listing(await client.get_listing(listing)).quantity
    return fetched_at, quantity


@dramatiq.actor(queue_name=RECHECK_QUEUE, max_retries=3, time_limit=5 * 60 * 1000)
def sweep_stock(marketplace: str = "backmarket") -> int:
    """Enqueue re-checks of flagged rows and pushes of rows left pending; return how many (the scheduler's hook)."""
    now = datetime.now(timezone.utc)
    skew = stock_events.clock_skew()
    with resources.sessions()() as session:
        flagged = stock_events.rows_to_recheck(session, marketplace, older_than=now - 2 * skew)
        pending = session.execute(_PENDING_PUSHES,
                                  {"mp": marketplace, "before": now - timedelta(minutes=1)}).scalars().all()
    if marketplace in READABLE_MARKETPLACES:
        for _, sku in flagged:
            recheck_stock.send(marketplace, sku)
    if marketplace in stock_events.PUSHED_MARKETPLACES:
        for sku in pending:
            push_stock.send(marketplace, sku)
    return len(flagged) + len(pending)


# -- reconciliation --------------------------------------------------------------------------------


def run_reconciliation(marketplace: str, *, dry_run: bool, threshold: int | None = None,
                       trigger: str = "manual") -> reconcile.ReconciliationSummary:
    """Reconcile ``marketplace``: invariant check, bulk page walk, report, corrections unless ``dry_run``.

    Runs in the calling thread (the CLI, or the ``reconcile_stock`` actor).  Raises
    :class:`db.syncs.SyncRefused` when a reconciliation of ``marketplace`` is already running.
    """
    if marketplace not in READABLE_MARKETPLACES:
        raise MalformedMessage(f"cannot reconcile {marketplace!r}: expected one of {', '.join(READABLE_MARKETPLACES)}")
    settings = get_settings()
    threshold = settings.reconcile_alert_threshold if threshold is None else threshold
    sessions = resources.sessions()
    with sessions() as session:
        run = reconcile.begin_reconciliation(session, marketplace, dry_run=dry_run, trigger=trigger,
                                             stale_after_s=settings.sync_stale_after_s)
        if run.status != "running":
            summary = reconcile.summarize(session, run.id)
            if run.details.get("invariant_violations"):
                raise_alert("ledger_invariant", f"{marketplace}: {run.error}",
                            {"run_id": run.id, "violations": run.details.get("violations", [])})
            return summary
        marketplace_id = run.details["marketplace_id"]
    try:
        api_calls = resources.run_on_worker_loop(lambda: _walk(run.id, marketplace_id, dry_run))
    except BaseException as error:
        with sessions() as session:
            syncs.fail_run(session, run.id, f"reconciliation walk failed: {type(error).__name__}: {error}")
        raise
    with sessions() as session:
        syncs.add_counts(session, run.id, **api_calls)
        session.commit()
        summary = reconcile.finish_reconciliation(session, run.id, threshold=threshold)
    metrics.discrepancies(marketplace, summary.discrepancies)
    if summary.alert:
        what = "would correct" if summary.dry_run else "corrected"
        raise_alert("reconciliation_discrepancies",
                    f"{marketplace}: {summary.discrepancies} stock rows differ from the marketplace (threshold "
                    f"{summary.threshold}); {what} them in run {summary.run_id}",
                    {"run_id": summary.run_id, "discrepancies": summary.discrepancies,
                     "corrected": summary.corrected, "threshold": summary.threshold, "alert": True})
    return summary


async def _walk(run_id: int, marketplace_id: int, dry_run: bool) -> dict[str, int]:
    """Fetch every listing page (page 1 first, for the count; then the rest at once, paced by the
    fleet-wide limiter) and compare each in its own transaction.  Returns the API counters."""
    settings = get_settings()
    page_size = settings.backmarket_page_size
    counts = {"api_calls": 0, "retries": 0, "errors": 0}

    async def compare(page: int, total_pages: int | None = None) -> int:
        records = []
        try:
            result = await backmarket_client(on_request=records.append).get_listings_page(
                page, page_size)
        finally:
            sync_stats.add_counts(counts, sync_stats.count_attempts(records))
        fetched_at = datetime.now(timezone.utc) - timedelta(seconds=records[-1].elapsed_s if records else 0)
        items = [PageItem(external_id=i.id, legacy_id=i.listing_id, sku=i.sku, title=i.title, quantity=i.quantity,
                          publication_state=i.publication_state, price=i.price, currency=i.currency)
                 for i in result.results]
        await asyncio.to_thread(_compare_page, run_id, marketplace_id, page, fetched_at, items, dry_run, total_pages,
                                result.count if page == 1 else None)
        return result.count

    count = await compare(1)
    total_pages = max(1, math.ceil(count / page_size))
    await asyncio.to_thread(_set_total_pages, run_id, total_pages)
    gate = asyncio.Semaphore(settings.reconcile_concurrency)

    async def bounded(page: int) -> None:
        async with gate:
            await compare(page)

    await asyncio.gather(*(bounded(page) for page in range(2, total_pages + 1)))
    return counts


def _compare_page(run_id, marketplace_id, page, fetched_at, items, dry_run, total_pages, total_items) -> None:
    with resources.sessions()() as session:
        reconcile.compare_page(session, run_id=run_id, marketplace_id=marketplace_id, page=page,
                               fetched_at=fetched_at, items=items, dry_run=dry_run, total_pages=total_pages,
                               total_items=total_items, language=get_settings().backmarket_language)
        session.commit()


def _set_total_pages(run_id: int, total_pages: int) -> None:
    with resources.sessions()() as session:
        syncs.set_totals(session, run_id, total_pages=total_pages)
        session.commit()


@dramatiq.actor(queue_name=RECONCILE_QUEUE, retry_when=transient_only(2), min_backoff=60_000, max_backoff=600_000,
                max_age=6 * 3600 * 1000, time_limit=2 * 3600 * 1000)
def reconcile_stock(marketplace: str = "backmarket", dry_run: bool = False, threshold: int | None = None,
                    trigger: str = "scheduled") -> None:
    """Reconcile ``marketplace`` (the scheduler's daily job); a running one makes this a no-op."""
    try:
        summary = run_reconciliation(marketplace, dry_run=dry_run, threshold=threshold, trigger=trigger)
    except syncs.SyncRefused as refused:
        logger.info("reconciliation of %s not started: %s", marketplace, refused.reason)
        return
    logger.info("reconciliation %d of %s: %s, %d listings, %d discrepancies, %d corrected, %d deferred",
                summary.run_id, marketplace, summary.status, summary.listings, summary.discrepancies,
                summary.corrected, summary.deferred)
