"""The Python producer API: how other services (and the intake) put stock events on the fleet.

    from runtime.producer import StockEvents

    events = StockEvents()            # the fleet's broker (REDIS_URL), or pass one
    events.order_created("backmarket", order_id="5978", order_line_id="37195", sku="IPHONE416GONLIB0",
                         quantity=1, event_time="2026-11-23T09:35:24Z")
    events.stock_topup("backmarket", sku="IPHONE416GONLIB0", quantity=10, reference="PO-1182", actor="anna")

Every event is checked by the one contract (``core.events``) before anything is enqueued; a bad
one raises :class:`InvalidEvent` naming the field.  While Redis is unreachable or loading, sends
are retried with backoff for ``PRODUCER_RETRY_S`` (30 s), then :class:`EventsNotSent` names the
events not enqueued: nothing is dropped silently.  Sending an event twice changes the stock once
(its idempotency key), so a caller may always send again what was not confirmed.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import Iterable, Sequence

import dramatiq
import redis.exceptions
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from core.events import MAX_BATCH, EVENT_KINDS, InvalidEvent, StockEvent, event_from_json, make_event
from runtime import queues
from runtime.broker import install_broker
from runtime.settings import get_settings

__all__ = ["BufferedStockEvents", "EVENT_KINDS", "EventsNotSent", "InvalidEvent", "MAX_BATCH", "StockEvent",
           "StockEvents", "event_from_json", "event_message", "make_event"]

logger = logging.getLogger(__name__)

#: The actor that books a batch of events in one transaction.
BATCH_ACTOR = "stock_events_batch"

#: What "Redis is down" looks like to a client: refused or reset connections, timeouts, and a
#: server still loading its data after a restart (``BusyLoadingError``, a ``ConnectionError``).
REDIS_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError,
                     redis.exceptions.TimeoutError, ConnectionError, TimeoutError)


class EventsNotSent(RuntimeError):
    """Redis stayed unavailable for the whole retry time: ``events`` were not enqueued.

    ``events`` are exactly the ones not sent (those before them were); sending them again later is
    safe.  ``messages`` names other messages not sent (the intake's re-fetch of a Refurbed order).
    """

    permanent = False

    def __init__(self, events: Sequence[StockEvent], cause: BaseException, waited_s: float, *,
                 messages: Sequence[dramatiq.Message] = ()) -> None:
        self.events = list(events)
        self.messages = list(messages)
        self.cause = cause
        self.waited_s = waited_s
        names = [event.key for event in self.events] + [f"{m.actor_name} message {m.message_id}" for m in messages]
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        what = f"{len(self.events)} stock event(s)" if self.events else f"{len(self.messages)} message(s)"
        super().__init__(f"{what} not enqueued after {waited_s:.1f} s of retries "
                         f"({type(cause).__name__}: {str(cause)[:200]}); not sent: {shown}")


def event_message(event: StockEvent) -> dramatiq.Message:
    """The Dramatiq message for ``event``'s actor (addressed by name: no actor import)."""
    return dramatiq.Message(queue_name=queues.EVENTS, actor_name=event.kind, args=(), kwargs=event.fields,
                            options={})


# -- enqueueing ------------------------------------------------------------------------------------


class StockEvents:
    """Validate stock events and enqueue them for the fleet.

    Parameters:
      broker(dramatiq.Broker): Where to enqueue; default the fleet's broker (``runtime.broker.install_broker``).
      retry_s(float): How long to retry while Redis is unavailable; default ``PRODUCER_RETRY_S``.

    Each method validates its arguments (raising :class:`InvalidEvent`, nothing enqueued) and
    returns the enqueued :class:`dramatiq.Message` (its ``message_id`` identifies it in the logs),
    or raises :class:`EventsNotSent` once Redis has been unavailable for ``retry_s``.
    """

    def __init__(self, broker: dramatiq.Broker | None = None, *, retry_s: float | None = None) -> None:
        if broker is None:
            broker = install_broker()
        self.broker = broker
        self.retry_s = get_settings().producer_retry_s if retry_s is None else retry_s

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
        return self._enqueue(event_message(event), [event])

    def send_all(self, events: Iterable[StockEvent]) -> list[dramatiq.Message]:
        """Enqueue validated events, each on its own (they may run in any order, in parallel)."""
        events = list(events)
        sent = []
        for index, event in enumerate(events):
            sent.append(self._enqueue(event_message(event), events[index:]))
        return sent

    def send_batch(self, events: Iterable[StockEvent], batch_size: int = 20) -> list[dramatiq.Message]:
        """Enqueue validated events in messages of up to ``batch_size``, each booked in one transaction.

        For a producer with many events at hand (an import, a backlog, a burst from a marketplace):
        one message and one commit per batch instead of per event, every event still its own ledger
        row under its own idempotency key.  A batch is all or nothing: it is booked whole or retried
        whole (a re-delivery books nothing twice).  Events of one SKU are booked in the order given.
        """
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}, got {batch_size}")
        events = list(events)
        sent = []
        for start in range(0, len(events), batch_size):
            items = [{"kind": event.kind, "fields": event.fields} for event in events[start:start + batch_size]]
            message = dramatiq.Message(queue_name=queues.EVENTS, actor_name=BATCH_ACTOR, args=(items,), kwargs={},
                                       options={})
            sent.append(self._enqueue(message, events[start:]))
        return sent

    def send_in_order(self, events: Iterable[StockEvent]) -> dramatiq.Message:
        """Enqueue events as a chain: each is enqueued by the worker only once the previous one succeeded.

        For events of one order line that must not overtake each other, e.g. an order seen for the
        first time already cancelled: its ``order_created`` must be booked before its
        ``order_cancelled``.  Returns the first message.
        """
        events = list(events)
        messages = [event_message(event) for event in events]
        if not messages:
            raise ValueError("send_in_order needs at least one event")
        for message in messages[1:]:
            # The next actor gets its own arguments, not the previous one's return value.
            message.options["pipe_ignore"] = True
        # Only the first message goes to Redis: the others ride in its options.
        return self._enqueue(dramatiq.pipeline(messages, broker=self.broker).messages[0], events)

    def enqueue(self, message: dramatiq.Message) -> dramatiq.Message:
        """Enqueue another message (not an event) with the same retries while Redis is unavailable."""
        return self._enqueue(message, [])

    def _enqueue(self, message: dramatiq.Message, events: list[StockEvent]) -> dramatiq.Message:
        # ``events``: what is not sent if this fails (this message's events and the ones after it).
        started = time.monotonic()
        retrying = Retrying(retry=retry_if_exception_type(REDIS_UNAVAILABLE), stop=stop_after_delay(self.retry_s),
                            wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.05), reraise=True,
                            before_sleep=_log_first_retry)
        try:
            return retrying(self.broker.enqueue, message)
        except REDIS_UNAVAILABLE as error:
            raise EventsNotSent(events, error, time.monotonic() - started,
                                messages=() if events else [message]) from error


def _log_first_retry(state) -> None:
    if state.attempt_number == 1:
        error = state.outcome.exception()
        logger.warning("Redis is unavailable (%s: %s); retrying the enqueue with backoff", type(error).__name__,
                       str(error)[:200])


class BufferedStockEvents:
    """Collect single events and enqueue them as batches: a high-rate producer's front door.

    Parameters:
      events(StockEvents): Where the batches go (and how long they are retried while Redis is unavailable).
      max_events(int): Send as soon as this many events wait.
      max_delay_s(float): Send what waits after at most this long (the latency an event may
        gain here; the batch then costs one message and one commit instead of one each).

    ``send`` validates nothing more (pass events made by :func:`make_event`) and never blocks on
    Redis: a background thread enqueues.  Events the thread could not enqueue within the retry
    time are handed back, never dropped: the next ``send`` or ``close`` raises :class:`EventsNotSent`
    with them.  ``close`` (or leaving the ``with`` block) sends what waits and stops the thread.
    """

    def __init__(self, events: StockEvents, max_events: int = 20, max_delay_s: float = 0.005) -> None:
        if not 1 <= max_events <= MAX_BATCH:
            raise ValueError(f"max_events must be between 1 and {MAX_BATCH}, got {max_events}")
        if max_delay_s <= 0:
            raise ValueError(f"max_delay_s must be positive, got {max_delay_s}")
        self.events, self.max_events, self.max_delay_s = events, max_events, max_delay_s
        self._waiting: list[StockEvent] = []
        self._failures: list[EventsNotSent] = []
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
        """Queue one event; it is enqueued within ``max_delay_s`` (sooner when a batch fills).

        Raises :class:`EventsNotSent` (``event`` not queued) with the events earlier sends could not enqueue.
        """
        with self._condition:
            if self._closed:
                raise RuntimeError("this BufferedStockEvents is closed")
            if self._failures:
                raise self._take_failures()
            if not self._waiting:
                self._oldest = time.monotonic()
            self._waiting.append(event)
            if len(self._waiting) == 1 or len(self._waiting) >= self.max_events:
                # The first starts the sender's clock; a full batch goes at once.
                self._condition.notify()

    def close(self, timeout_s: float | None = None) -> None:
        """Send what waits and stop the thread; raise :class:`EventsNotSent` with whatever was not enqueued.

        ``timeout_s`` defaults to the retry time and a margin: long enough for the last batch's retries.
        """
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._thread.join(self.events.retry_s + 10 if timeout_s is None else timeout_s)
        with self._condition:
            if self._waiting:
                # The thread is still retrying (or stuck): those are not confirmed either.
                self._failures.append(EventsNotSent(self._waiting, TimeoutError("close() timed out"), 0.0))
                self._waiting = []
            if self._failures:
                raise self._take_failures()

    def _take_failures(self) -> EventsNotSent:
        failures, self._failures = self._failures, []
        last = failures[-1]
        return EventsNotSent([event for failure in failures for event in failure.events], last.cause, last.waited_s)

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
            except EventsNotSent as failure:
                logger.error("%s", failure)
                with self._condition:
                    self._failures.append(failure)
            except Exception as error:
                # Not a Redis outage (a message Redis refuses, a bug): hand them back all the same.
                logger.exception("could not enqueue %d stock events", len(batch))
                with self._condition:
                    self._failures.append(EventsNotSent(batch, error, 0.0))
