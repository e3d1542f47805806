"""Stock event actors: book each event once, push local changes, re-check flagged rows, reconcile.

- ``order_created`` / ``order_cancelled`` (per order line), ``stock_topup``, ``manual_adjustment``,
  ``stock_events_batch`` (queue ``stock-events``): decode, book (:func:`pipelines.events.book_events`,
  one transaction), then enqueue what follows (a push, a re-check).
- ``push_stock`` (queue ``stock-push``), ``recheck_stock`` / ``sweep_stock`` (queue ``stock-recheck``):
  thin wrappers of :mod:`pipelines.events`.  ``reconcile_stock`` (queue ``reconcile``): :mod:`pipelines.reconcile`.
"""
from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from actors.retry import MalformedMessage, transient_only
from db import events as stock_events
from db import syncs
from core.events import EVENT_KINDS, MAX_BATCH, InvalidStockEvent, StockEvent
from db.events import EventResult
from pipelines import events as pipeline
from pipelines import reconcile as reconciliation
from runtime import metrics, queues
from runtime.failures import on_dead_letter
from runtime.settings import get_settings

logger = logging.getLogger(__name__)

EVENTS_QUEUE = queues.EVENTS
PUSH_QUEUE = queues.PUSH
RECHECK_QUEUE = queues.RECHECK
RECONCILE_QUEUE = queues.RECONCILE

_settings = get_settings()


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
    results = book_and_count(events)
    for event, result in zip(events, results):
        # After the commit: a crash before these sends leaves the row pending or flagged, and the
        # re-delivered message (a duplicate now) sends them again.
        for message, delay in follow_ups(event, result):
            push_stock.broker.enqueue(message, delay=delay)
    return results


def book_and_count(events: list[StockEvent], sessions=None) -> list[EventResult]:
    """Book events in one transaction (``sessions``: default the process's) and count them; enqueue nothing."""
    results = pipeline.book_events(events, sessions=sessions)
    for event, result in zip(events, results):
        _count(event, event.source or "api", result)
    return results


def _count(event: StockEvent, source: str, result: EventResult) -> None:
    if result.status == "duplicate":
        metrics.duplicate_event(source)
    else:
        metrics.event_applied(event.change_type, source, event.event_time)
        metrics.ledger_change(event.change_type)
        if result.oversold:
            metrics.oversold(event.marketplace)


def follow_ups(event: StockEvent, result: EventResult) -> list[tuple[dramatiq.Message, int | None]]:
    """What a booking asks to be enqueued, as (message, delay in ms): a push of the row, a re-check.

    A row left pending or flagged without them is found by ``sweep_stock``: losing them delays, never loses.
    """
    messages: list[tuple[dramatiq.Message, int | None]] = []
    if result.push_requested:
        messages.append((push_stock.message(event.marketplace, event.sku), None))
    if result.needs_recheck and pipeline.readable(event.marketplace):
        messages.append((recheck_stock.message(event.marketplace, event.sku), pipeline.recheck_delay_ms()))
    return messages


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
    """Set ``sku``'s stock on ``marketplace`` from a fresh read plus our unpushed changes (one GET, one POST)."""
    if not pipeline.pushed(marketplace):
        logger.info("%s stock is not pushed; nothing to do for %s", marketplace, sku)
        return
    try:
        outcome = pipeline.push_row(marketplace, sku, _message_id(), lease=_push_lease())
    except stock_events.PushImpossible as impossible:
        raise MalformedMessage(str(impossible)) from None
    if outcome.status == "busy":
        # Another push holds the row: it reads after our change, or leaves the row pending and pushes again.
        logger.info("push of %s on %s already in flight; it will carry this change", sku, marketplace)
    elif outcome.status == "deferred":
        push_stock.send_with_options(args=(marketplace, sku), delay=pipeline.recheck_delay_ms())
    elif outcome.status == "pending":
        push_stock.send(marketplace, sku)


@on_dead_letter("push_stock")
def _push_failed(message: dramatiq.Message, error: str) -> None:
    marketplace, sku = _args(message, "marketplace", "sku")
    pipeline.push_failed(marketplace, sku, message.message_id, error)
    logger.error("push of %s on %s failed for good: %s", sku, marketplace, error)


def _args(message: dramatiq.Message, *names: str) -> list:
    return [message.args[i] if len(message.args) > i else message.kwargs.get(name) for i, name in enumerate(names)]


# -- re-checks -------------------------------------------------------------------------------------


@dramatiq.actor(queue_name=RECHECK_QUEUE, retry_when=transient_only(5), min_backoff=2_000, max_backoff=60_000,
                max_age=24 * 3600 * 1000, time_limit=5 * 60 * 1000)
def recheck_stock(marketplace: str, sku: str, attempt: int = 1, refresh: bool = False) -> None:
    """Read one flagged row's listing(s) again and apply the read with the snapshot rules; again later if unsure.

    ``refresh``: an operator asked for this row (the console), flagged or not; same read, same rules.
    """
    if pipeline.recheck_row(marketplace, sku, refresh=refresh) != "again":
        return
    if attempt < get_settings().stock_recheck_attempts:
        recheck_stock.send_with_options(args=(marketplace, sku, attempt + 1),
                                        delay=pipeline.recheck_delay_ms(attempt=attempt + 1))
    else:
        logger.warning("%s on %s is still ambiguous after %d re-checks; the sweep reads it again", sku,
                       marketplace, attempt)


@dramatiq.actor(queue_name=RECHECK_QUEUE, max_retries=3, time_limit=5 * 60 * 1000)
def sweep_stock(marketplace: str = "backmarket") -> int:
    """Enqueue re-checks of flagged rows and pushes of rows left waiting; return how many (the scheduler's hook)."""
    rechecks, pushes = pipeline.sweep(marketplace)
    for sku in rechecks:
        recheck_stock.send(marketplace, sku)
    for sku in pushes:
        push_stock.send(marketplace, sku)
    return len(rechecks) + len(pushes)


# -- reconciliation --------------------------------------------------------------------------------


@dramatiq.actor(queue_name=RECONCILE_QUEUE, retry_when=transient_only(2), min_backoff=60_000, max_backoff=600_000,
                max_age=6 * 3600 * 1000, time_limit=2 * 3600 * 1000)
def reconcile_stock(marketplace: str = "backmarket", dry_run: bool = False, threshold: int | None = None,
                    trigger: str = "scheduled") -> None:
    """Reconcile ``marketplace`` (the scheduler's daily job); a running one makes this a no-op."""
    try:
        summary = reconciliation.run_reconciliation(marketplace, dry_run=dry_run, threshold=threshold,
                                                    trigger=trigger)
    except syncs.SyncRefused as refused:
        logger.info("reconciliation of %s not started: %s", marketplace, refused.reason)
        return
    logger.info("reconciliation %d of %s: %s, %d listings, %d discrepancies, %d corrected, %d deferred",
                summary.run_id, marketplace, summary.status, summary.listings, summary.discrepancies,
                summary.corrected, summary.deferred)
