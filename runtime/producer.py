"""The Python producer API: how other services (and the intake) put stock events on the fleet.

    from runtime.producer import StockEvents

    events = StockEvents()            # the fleet's broker (REDIS_URL), or pass one
    events.order_created("backmarket", order_id="5978", order_line_id="37195", sku="IPHONE416GONLIB0",
                         quantity=1, event_time="2026-11-23T09:35:24Z")
    events.stock_topup("backmarket", sku="IPHONE416GONLIB0", quantity=10, reference="PO-1182", actor="anna")

Every argument is checked here, before anything is enqueued, and a bad one raises
:class:`InvalidEvent` naming the field: a malformed event is refused at the door rather than
dead-lettered later.  What is enqueued is a message for the events pipeline's actors
(``actors.events``), which write the ledger; each event carries what its idempotency key is made of
(marketplace + order line for orders, the ``reference`` for top-ups and adjustments), so sending
the same event twice changes the stock once.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping

import dramatiq

from db.events import InvalidStockEvent
from runtime import queues
from runtime.broker import install_broker

__all__ = ["BufferedStockEvents", "EVENT_KINDS", "InvalidEvent", "StockEvent", "StockEvents", "event_from_json",
           "make_event"]

logger = logging.getLogger(__name__)

#: The events this API produces, by the name of the actor that books them.
EVENT_KINDS = ("order_created", "order_cancelled", "stock_topup", "manual_adjustment")

#: The actor that books a batch of events in one transaction.
BATCH_ACTOR = "stock_events_batch"

#: The largest quantity (or adjustment) one event may carry: a typo guard, far above any real order.
MAX_QUANTITY = 100_000

#: The most events one batch message carries (``StockEvents.send_batch``): one transaction holds
#: a row lock per SKU until it commits, and a message stays well under Redis' comfortable sizes.
MAX_BATCH = 500

#: How far in the future an event time may be: a little clock skew, not a date typed wrong.  An
#: event "from the future" would be kept on top of every stock snapshot until that time comes.
MAX_FUTURE = timedelta(minutes=5)

#: Column sizes of the ledger (db/models.py): longer values are refused here, not truncated there.
_ID_CHARS, _SKU_CHARS, _TEXT_CHARS, _NOTE_CHARS, _SOURCE_CHARS = 64, 200, 200, 2000, 32

_MARKETPLACE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

#: Fields each event takes (required ones first) — also what the signed HTTP endpoint accepts.
_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "order_created": (("marketplace", "order_id", "order_line_id", "sku", "quantity"), ("event_time", "source")),
    "order_cancelled": (("marketplace", "order_id", "order_line_id", "sku", "quantity"), ("event_time", "source")),
    "stock_topup": (("marketplace", "sku", "quantity", "reference"), ("actor", "note", "event_time")),
    "manual_adjustment": (("marketplace", "sku", "change", "reference"), ("actor", "note", "event_time")),
}


class InvalidEvent(InvalidStockEvent):
    """An event argument is missing or wrong; ``field`` names it, the message says what is expected.

    The producer's name for the ledger's :class:`db.events.InvalidStockEvent` (same fields, same
    message shape, permanent): one refusal type from the caller's arguments down to the ledger.
    """


@dataclass(frozen=True)
class StockEvent:
    """A validated stock event: the actor that books it and its keyword arguments (JSON-able)."""

    kind: str
    fields: dict[str, Any] = field(default_factory=dict)

    def message(self) -> dramatiq.Message:
        """The Dramatiq message for the events pipeline's actor (addressed by name: no actor import)."""
        return dramatiq.Message(queue_name=queues.EVENTS, actor_name=self.kind, args=(), kwargs=dict(self.fields),
                                options={})


# -- validation ------------------------------------------------------------------------------------


def _text(name: str, value: Any, limit: int, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidEvent(name, f"must be a string, got {_kind(value)}")
    text = str(value)
    if not text.strip():
        raise InvalidEvent(name, "must not be empty")
    if len(text) > limit:
        raise InvalidEvent(name, f"must be at most {limit} characters, got {len(text)}")
    return text


def _identifier(name: str, value: Any) -> str:
    # Marketplace ids are integers (Back Market) or int64-as-string (Refurbed): keep them as text.
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        raise InvalidEvent(name, f"must not be negative, got {value}")
    return _text(name, value, _ID_CHARS)


def _count(name: str, value: Any, *, signed: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEvent(name, f"must be an integer, got {_kind(value)}")
    if signed:
        if value == 0 or abs(value) > MAX_QUANTITY:
            raise InvalidEvent(name, f"must be a non-zero integer within ±{MAX_QUANTITY}, got {value}")
    elif not 1 <= value <= MAX_QUANTITY:
        raise InvalidEvent(name, f"must be an integer in 1..{MAX_QUANTITY}, got {value}")
    return value


def _event_time(value: Any, now: datetime) -> str:
    if value is None:
        return now.isoformat()
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEvent("event_time", f"must be an ISO 8601 time like 2026-11-23T09:35:24Z, got "
                                             f"{value[:40]!r}") from None
    if not isinstance(value, datetime):
        raise InvalidEvent("event_time", f"must be an ISO 8601 string or a datetime, got {_kind(value)}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidEvent("event_time", "must carry a time zone (e.g. Z or +01:00): a local time is ambiguous")
    if value - now > MAX_FUTURE:
        raise InvalidEvent("event_time", f"is in the future ({value.isoformat()}, now {now.isoformat()})")
    return value.astimezone(timezone.utc).isoformat()


def _marketplace(value: Any) -> str:
    if not isinstance(value, str) or not _MARKETPLACE.fullmatch(value):
        raise InvalidEvent("marketplace", f"must be a marketplace code like 'backmarket' (a-z, 0-9, _ or -), "
                                          f"got {_short(value)}")
    return value


def make_event(kind: str, *, now: datetime | None = None, **arguments: Any) -> StockEvent:
    """Validate the arguments of a ``kind`` event and return it, normalised.

    ``event_time`` (an aware datetime or an ISO 8601 string) defaults to now; it is sent as an ISO
    8601 string in UTC.  Order and line ids may be given as integers; they are sent as strings.

    Raises:
      InvalidEvent: An unknown kind, a missing, unknown or invalid argument.
    """
    if kind not in _FIELDS:
        raise InvalidEvent("type", f"must be one of {', '.join(EVENT_KINDS)}, got {_short(kind)}")
    required, optional = _FIELDS[kind]
    missing = [name for name in required if arguments.get(name) is None]
    if missing:
        raise InvalidEvent(missing[0], f"is required for {kind}")
    unknown = sorted(set(arguments) - set(required) - set(optional))
    if unknown:
        raise InvalidEvent(unknown[0], f"is not a field of {kind} (fields: {', '.join(required + optional)})")
    now = now or datetime.now(timezone.utc)
    fields: dict[str, Any] = {"marketplace": _marketplace(arguments["marketplace"])}
    if kind in ("order_created", "order_cancelled"):
        fields["order_id"] = _identifier("order_id", arguments["order_id"])
        fields["order_line_id"] = _identifier("order_line_id", arguments["order_line_id"])
    fields["sku"] = _text("sku", arguments["sku"], _SKU_CHARS)
    if kind == "manual_adjustment":
        fields["change"] = _count("change", arguments["change"], signed=True)
    else:
        fields["quantity"] = _count("quantity", arguments["quantity"], signed=False)
    if kind in ("stock_topup", "manual_adjustment"):
        fields["reference"] = _text("reference", arguments["reference"], _TEXT_CHARS)
        fields["actor"] = _text("actor", arguments.get("actor"), _TEXT_CHARS, optional=True)
        fields["note"] = _text("note", arguments.get("note"), _NOTE_CHARS, optional=True)
    fields["event_time"] = _event_time(arguments.get("event_time"), now)
    if kind in ("order_created", "order_cancelled"):
        fields["source"] = _text("source", arguments.get("source") or "api", _SOURCE_CHARS)
    return StockEvent(kind, fields)


def event_from_json(data: Any, *, now: datetime | None = None) -> StockEvent:
    """An event from a decoded JSON object ``{"type": "<kind>", <fields>...}`` (the signed endpoint).

    Raises:
      InvalidEvent: Not an object, or as :func:`make_event`.
    """
    if not isinstance(data, Mapping):
        raise InvalidEvent("event", f"must be a JSON object, got {_kind(data)}")
    arguments = dict(data)
    kind = arguments.pop("type", None)
    if kind is None:
        raise InvalidEvent("type", f"is required: one of {', '.join(EVENT_KINDS)}")
    return make_event(kind, now=now, **arguments)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- enqueueing ------------------------------------------------------------------------------------


class StockEvents:
    """Validate stock events and enqueue them for the fleet.

    Parameters:
      broker(dramatiq.Broker): Where to enqueue; default the fleet's broker (``runtime.broker.install_broker``).

    Each method validates its arguments (raising :class:`InvalidEvent`, nothing enqueued) and
    returns the enqueued :class:`dramatiq.Message` (its ``message_id`` identifies it in the logs).
    """

    def __init__(self, broker: dramatiq.Broker | None = None) -> None:
        if broker is None:
            broker = install_broker()
        self.broker = broker

    def __repr__(self) -> str:
        return f"{type(self).__name__}(broker={type(self.broker).__name__})"

    def order_created(self, marketplace: str, order_id: str | int, order_line_id: str | int, sku: str,
                      quantity: int, event_time: datetime | str | None = None, source: str = "api"
                      ) -> dramatiq.Message:
        """An order line took ``quantity`` of ``sku`` on ``marketplace`` (the stock goes down)."""
        return self.send(make_event("order_created", marketplace=marketplace, order_id=order_id,
                                    order_line_id=order_line_id, sku=sku, quantity=quantity, event_time=event_time,
                                    source=source))

    def order_cancelled(self, marketplace: str, order_id: str | int, order_line_id: str | int, sku: str,
                        quantity: int, event_time: datetime | str | None = None, source: str = "api"
                        ) -> dramatiq.Message:
        """An order line was cancelled before shipping: its ``quantity`` comes back."""
        return self.send(make_event("order_cancelled", marketplace=marketplace, order_id=order_id,
                                    order_line_id=order_line_id, sku=sku, quantity=quantity, event_time=event_time,
                                    source=source))

    def stock_topup(self, marketplace: str, sku: str, quantity: int, reference: str, actor: str | None = None,
                    note: str | None = None, event_time: datetime | str | None = None) -> dramatiq.Message:
        """``quantity`` units of ``sku`` arrived (``reference``: the delivery, once per top-up)."""
        return self.send(make_event("stock_topup", marketplace=marketplace, sku=sku, quantity=quantity,
                                    reference=reference, actor=actor, note=note, event_time=event_time))

    def manual_adjustment(self, marketplace: str, sku: str, change: int, reference: str, actor: str | None = None,
                          note: str | None = None, event_time: datetime | str | None = None) -> dramatiq.Message:
        """A person moved ``sku``'s stock by ``change`` (either sign); ``reference`` makes it happen once."""
        return self.send(make_event("manual_adjustment", marketplace=marketplace, sku=sku, change=change,
                                    reference=reference, actor=actor, note=note, event_time=event_time))

    def send(self, event: StockEvent) -> dramatiq.Message:
        """Enqueue one validated event."""
        return self.broker.enqueue(event.message())

    def send_all(self, events: Iterable[StockEvent]) -> list[dramatiq.Message]:
        """Enqueue validated events, each on its own (they may run in any order, in parallel)."""
        return [self.broker.enqueue(event.message()) for event in events]

    def send_batch(self, events: Iterable[StockEvent], batch_size: int = 20) -> list[dramatiq.Message]:
        """Enqueue validated events in messages of up to ``batch_size``, each booked in one transaction.

        For a producer with many events at hand (an import, a backlog, a burst from a marketplace):
        one message and one commit per batch instead of per event, every event still its own ledger
        row under its own idempotency key.  A batch is all or nothing: it is booked whole or retried
        whole (a re-delivery books nothing twice).  Events of one SKU are booked in the order given.
        """
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}, got {batch_size}")
        items = [{"kind": event.kind, "fields": dict(event.fields)} for event in events]
        return [self.broker.enqueue(dramatiq.Message(queue_name=queues.EVENTS, actor_name=BATCH_ACTOR,
                                                     args=(items[start:start + batch_size],), kwargs={}, options={}))
                for start in range(0, len(items), batch_size)]

    def send_in_order(self, events: Iterable[StockEvent]) -> dramatiq.Message:
        """Enqueue events as a chain: each is enqueued by the worker only once the previous one succeeded.

        For events of one order line that must not overtake each other, e.g. an order seen for the
        first time already cancelled: its ``order_created`` must be booked before its
        ``order_cancelled``.  Returns the first message.
        """
        messages = [event.message() for event in events]
        if not messages:
            raise ValueError("send_in_order needs at least one event")
        if len(messages) == 1:
            return self.broker.enqueue(messages[0])
        for message in messages[1:]:
            # The next actor gets its own arguments, not the previous one's return value.
            message.options["pipe_ignore"] = True
        return dramatiq.pipeline(messages, broker=self.broker).run().messages[0]


class BufferedStockEvents:
    """Collect single events and enqueue them as batches: a high-rate producer's front door.

    Parameters:
      events(StockEvents): Where the batches go.
      max_events(int): Send as soon as this many events wait.
      max_delay_s(float): Send what waits after at most this long (the latency an event may
        gain here; the batch then costs one message and one commit instead of one each).

    ``send`` validates nothing more (pass events made by :func:`make_event`) and never blocks on
    Redis: a background thread enqueues.  ``close`` (or leaving the ``with`` block) sends what
    waits and stops the thread.  A batch that cannot be enqueued is logged and kept for the next
    attempt, never dropped; ``close`` raises if some remain unsent.
    """

    def __init__(self, events: StockEvents, max_events: int = 20, max_delay_s: float = 0.005) -> None:
        if not 1 <= max_events <= MAX_BATCH:
            raise ValueError(f"max_events must be between 1 and {MAX_BATCH}, got {max_events}")
        if max_delay_s <= 0:
            raise ValueError(f"max_delay_s must be positive, got {max_delay_s}")
        self.events, self.max_events, self.max_delay_s = events, max_events, max_delay_s
        self._waiting: list[StockEvent] = []
        self._oldest: float | None = None
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="stock-events-buffer", daemon=True)
        self._thread.start()

    def __enter__(self) -> "BufferedStockEvents":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def send(self, event: StockEvent) -> None:
        """Queue one event; it is enqueued within ``max_delay_s`` (sooner when a batch fills)."""
        with self._condition:
            if self._closed:
                raise RuntimeError("this BufferedStockEvents is closed")
            if not self._waiting:
                self._oldest = time.monotonic()
            self._waiting.append(event)
            if len(self._waiting) == 1 or len(self._waiting) >= self.max_events:
                # The first starts the sender's clock; a full batch goes at once.
                self._condition.notify()

    def close(self, timeout_s: float = 30.0) -> None:
        """Send what waits, stop the thread; raise if events remain unsent after ``timeout_s``."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._thread.join(timeout_s)
        if self._waiting:
            raise RuntimeError(f"{len(self._waiting)} stock events could not be enqueued")

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._closed and (not self._waiting or (
                        len(self._waiting) < self.max_events
                        and time.monotonic() - self._oldest < self.max_delay_s)):
                    timeout = None if not self._waiting else self.max_delay_s - (time.monotonic() - self._oldest)
                    self._condition.wait(timeout)
                if not self._waiting:
                    return  # closed, nothing left
                batch, self._waiting = self._waiting[:self.max_events], self._waiting[self.max_events:]
                self._oldest = time.monotonic() if self._waiting else None
            try:
                self.events.send_batch(batch, self.max_events)
            except Exception:
                logger.exception("could not enqueue %d stock events; keeping them for the next attempt", len(batch))
                with self._condition:
                    self._waiting[:0] = batch
                    self._oldest = time.monotonic()
                    if self._closed:
                        return
                time.sleep(self.max_delay_s)
