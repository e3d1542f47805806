"""Stock event actors: book each event once, push local changes, re-check flagged rows, reconcile.

- ``order_created`` / ``order_cancelled`` (per order line), ``stock_topup``, ``manual_adjustment``,
  ``stock_events_batch`` (queue ``stock-events``): decode, book (:func:`pipelines.events.book_events`,
  one transaction), then enqueue what follows (a push, a re-check).
- ``drain_pushes`` (queue ``stock-push``), ``drain_rechecks`` (queue ``stock-recheck``): one drain of a
  marketplace's pushes / re-checks (:mod:`pipelines.drain`); a booking asks for one, never a message per row.
- ``push_stock`` / ``recheck_stock`` (one row: an operator's retry or refresh), ``sweep_stock``: thin
  wrappers of :mod:`pipelines.events`.  ``reconcile_stock`` (queue ``reconcile``): :mod:`pipelines.reconcile`.
"""
from __future__ import annotations

import logging
import uuid
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from actors.retry import MalformedMessage, transient_only
from db import events as stock_events
from db import syncs
from core.events import EVENT_KINDS, MAX_BATCH, InvalidStockEvent, StockEvent
from db.events import EventResult
from pipelines import drain as drains
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
    wanted: set[tuple[str, str]] = set()
    for event, result in zip(events, results):
        wanted |= drains_wanted(event, result)
    # After the commit: a crash before these requests leaves the rows pending or flagged, and the
    # re-delivered message (duplicates now) asks again; the sweep catches the rest.
    request_drains(wanted)
    return results


def book_and_count(events: list[StockEvent], sessions=None) -> list[EventResult]:
    """Book events in one transaction (``sessions``: default the process's) and count them; enqueue nothing."""
    results = pipeline.book_events(events, sessions=sessions)
    for event, result in zip(events, results):
        _count(event, event.source or "api", result)
    return results


def book_and_push(events: list[StockEvent], *, sessions=None, broker: dramatiq.Broker | None = None,
                  redis=None) -> tuple[list[EventResult], bool]:
    """An operator's local changes (the console's Top-up and Adjust, a goods-received file): booked in
    transactions of at most :data:`MAX_BATCH` events, counted, then their drains asked for.

    Returns the results and whether the drains were asked for: a queue that is down leaves the rows
    pending, which the sweep pushes (the booking stands: the operator's action survives Redis).
    """
    results: list[EventResult] = []
    for start in range(0, len(events), MAX_BATCH):
        results += book_and_count(events[start:start + MAX_BATCH], sessions)
    wanted: set[tuple[str, str]] = set()
    for event, result in zip(events, results):
        wanted |= drains_wanted(event, result)
    try:
        request_drains(wanted, broker, redis)
    except Exception as error:  # Redis down or lost: the rows stay pending, the sweep pushes them
        logger.warning("%d events booked, but their pushes were not enqueued (%s: %s); the sweep will push them",
                       len(events), type(error).__name__, str(error)[:200])
        return results, False
    return results, True


def _count(event: StockEvent, source: str, result: EventResult) -> None:
    if result.status == "duplicate":
        metrics.duplicate_event(source)
    else:
        metrics.event_applied(event.change_type, source, event.event_time)
        metrics.ledger_change(event.change_type)
        if result.oversold:
            metrics.oversold(event.marketplace)


def drains_wanted(event: StockEvent, result: EventResult) -> set[tuple[str, str]]:
    """The drains a booking asks for, as ``(kind, marketplace)``: its row's push, its re-check.

    A row left pending or flagged without them is found by ``sweep_stock``: losing them delays, never loses.
    """
    wanted = set()
    if result.push_requested:
        wanted.add(("push", event.marketplace))
    if result.needs_recheck and pipeline.readable(event.marketplace):
        wanted.add(("recheck", event.marketplace))
    return wanted


def request_drains(wanted: set[tuple[str, str]], broker: dramatiq.Broker | None = None, redis=None) -> None:
    """Ask for each drain in ``wanted`` (re-checks once past the skew), on ``broker`` and ``redis``
    (default the fleet's)."""
    for kind, marketplace in sorted(wanted):
        drains.request(kind, marketplace, _drain_sender(broker), redis=redis,
                       delay_ms=pipeline.recheck_delay_ms() if kind == "recheck" else 0)


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


# -- drains, pushes and re-checks ----------------------------------------------------------------------


def _message_id() -> str:
    message = CurrentMessage.get_current_message()
    return message.message_id if message is not None else f"direct-{uuid.uuid4()}"


def _drain_sender(broker: dramatiq.Broker | None = None):
    """``send(kind, marketplace, delay_ms)`` of a drain message on ``broker`` (default the fleet's)."""
    def send(kind: str, marketplace: str, delay_ms: int) -> None:
        actor = drain_pushes if kind == "push" else drain_rechecks
        (broker or actor.broker).enqueue(actor.message(marketplace), delay=delay_ms or None)

    return send


_send_drain = _drain_sender()


def request_drain(kind: str, marketplace: str, *, delay_ms: int = 0, force: bool = False) -> bool:
    """Ask for a ``push`` or ``recheck`` drain of ``marketplace`` (one message unless one is on its way)."""
    return drains.request(kind, marketplace, _send_drain, delay_ms=delay_ms, force=force)


@dramatiq.actor(queue_name=PUSH_QUEUE, retry_when=transient_only(_settings.stock_push_max_retries),
                min_backoff=_settings.stock_push_min_backoff_ms, max_backoff=_settings.stock_push_max_backoff_ms,
                max_age=24 * 3600 * 1000, time_limit=15 * 60 * 1000)
def drain_pushes(marketplace: str) -> None:
    """Push ``marketplace``'s rows waiting for a push, oldest first, at its quotas (one drain at a time)."""
    drains.drain("push", marketplace, _message_id(), _send_drain)


@on_dead_letter("drain_pushes")
def _drain_pushes_failed(message: dramatiq.Message, error: str) -> None:
    (marketplace,) = _args(message, "marketplace")
    failed = drains.pushes_failed(message.message_id, error)
    drains.forget_request("push", marketplace)
    logger.error("push drain of %s failed for good (%d row(s) marked failed): %s", marketplace, failed, error)


@dramatiq.actor(queue_name=RECHECK_QUEUE, retry_when=transient_only(5), min_backoff=2_000, max_backoff=60_000,
                max_age=24 * 3600 * 1000, time_limit=15 * 60 * 1000)
def drain_rechecks(marketplace: str) -> None:
    """Read ``marketplace``'s flagged rows that are due again, at its catalog quota (one drain at a time)."""
    drains.drain("recheck", marketplace, _message_id(), _send_drain)


@on_dead_letter("drain_rechecks")
def _drain_rechecks_failed(message: dramatiq.Message, error: str) -> None:
    (marketplace,) = _args(message, "marketplace")
    drains.forget_request("recheck", marketplace)
    logger.error("re-check drain of %s failed for good: %s (the sweep starts another)", marketplace, error)


@dramatiq.actor(queue_name=PUSH_QUEUE, max_retries=3, max_age=24 * 3600 * 1000)
def push_stock(marketplace: str, sku: str) -> None:
    """Push ``sku``'s stock on ``marketplace`` now (an operator's retry of a ``failed`` row): back in line, drained."""
    if not pipeline.pushed(marketplace):
        logger.info("%s stock is not pushed; nothing to do for %s", marketplace, sku)
        return
    pipeline.retry_push(marketplace, sku)
    request_drain("push", marketplace, force=True)


def _args(message: dramatiq.Message, *names: str) -> list:
    return [message.args[i] if len(message.args) > i else message.kwargs.get(name) for i, name in enumerate(names)]


@dramatiq.actor(queue_name=RECHECK_QUEUE, retry_when=transient_only(5), min_backoff=2_000, max_backoff=60_000,
                max_age=24 * 3600 * 1000, time_limit=5 * 60 * 1000)
def recheck_stock(marketplace: str, sku: str, attempt: int = 1, refresh: bool = False) -> None:
    """Read one row's listing(s) again and apply the read with the snapshot rules (``refresh``: the console's
    Refresh, flagged or not).  Without ``refresh`` a flagged row waits for its marketplace's drain."""
    if not refresh:
        if pipeline.readable(marketplace):
            request_drain("recheck", marketplace)
        return
    if pipeline.recheck_row(marketplace, sku, refresh=True) == "again":
        # The read left the row flagged: its marketplace's drain reads it again once the skew has passed.
        request_drain("recheck", marketplace, delay_ms=pipeline.recheck_delay_ms())


@dramatiq.actor(queue_name=RECHECK_QUEUE, max_retries=3, time_limit=5 * 60 * 1000)
def sweep_stock(marketplace: str = "backmarket") -> int:
    """Start the drains of rows a crash or a lost message left waiting; return how many rows wait (the scheduler's hook)."""
    rechecks, pushes = pipeline.sweep(marketplace)
    if rechecks:
        request_drain("recheck", marketplace, force=True)
    if pushes:
        request_drain("push", marketplace, force=True)
    return rechecks + pushes


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
