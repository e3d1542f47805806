"""Broker and middleware set-up, shared by the workers, the CLI, the scheduler and the intake.

:class:`FleetRedisBroker` is dramatiq's Redis broker with a consumer that dead-letters undecodable
payloads and knows what this process holds (so that lost messages go back on their queue);
:class:`ThreadBudget` keeps re-checks to a few threads.
"""
from __future__ import annotations

import json
import logging
import random
import sys
import threading
import time
from pathlib import Path

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import current_millis, q_name
from dramatiq.errors import ConnectionClosed, DecodeError
from dramatiq.middleware import AsyncIO, CurrentMessage, Middleware, Retries, SkipMessage

from runtime import metrics, queues, resources
from runtime.dlq import error_key
from runtime.failures import ERROR_TTL_S, FailureRecorder, OutageRetries
from runtime.logs import LogContext
from runtime.metrics import FleetPrometheus, QueueWait
from runtime.queues import BROKER_NAMESPACE
from runtime.recovery import DeadWorkerRecovery
from runtime.settings import Settings, get_settings

logger = logging.getLogger(__name__)


_installed: dramatiq.Broker | None = None
_install_lock = threading.Lock()


class LoopResources(Middleware):
    """Close the per-process HTTP session and Redis client when a worker shuts down."""

    def after_worker_shutdown(self, broker, worker):
        """Run the close on the AsyncIO event loop, after the last message and before the loop stops.

        Not before the shutdown: the worker threads are still finishing their messages then, and
        a fetch in flight would lose its session.  ``after`` hooks run in reverse order, so this
        one runs before AsyncIO's, which stops the loop.
        """
        from dramatiq.asyncio import get_event_loop_thread

        loop_thread = get_event_loop_thread()
        if loop_thread is not None:
            try:
                loop_thread.run_coroutine(resources.close_loop_resources())
            except Exception:
                logger.exception("could not close the HTTP session cleanly")


_UNDECODABLE_SCRIPT = Path(__file__).with_name("undecodable.lua").read_text()


class _TolerantConsumer(_RedisConsumer):
    """dramatiq's Redis consumer, except that a payload it cannot decode goes to the dead letters.

    dramatiq's consumer raises on such a payload: its thread restarts with an empty cache, and
    the messages fetched with the bad one stay unacked by a live worker for good.  This one moves
    the payload, raw, to the queue's dead letters with the error beside it, and goes on with the rest.
    """

    def __next__(self):
        while True:
            try:
                message = super().__next__()
            except DecodeError as error:
                try:
                    self._dead_letter(error)
                except redis.ConnectionError as lost:
                    raise ConnectionClosed(lost) from None
                continue
            if message is not None:
                self.broker.hold(self.queue_name, [message])
            return message

    def ack(self, message):
        super().ack(message)
        self.broker.release(self.queue_name, [message])

    def nack(self, message):
        super().nack(message)
        self.broker.release(self.queue_name, [message])

    def requeue(self, messages):
        messages = list(messages)
        super().requeue(messages)
        self.broker.release(self.queue_name, messages)

    def _dead_letter(self, error: DecodeError) -> None:
        broker, queue = self.broker, self.queue_name
        namespace, canonical = broker.namespace, q_name(self.queue_name)
        payload = error.data if isinstance(error.data, bytes) else str(error.data).encode()
        moved = broker.client.register_script(_UNDECODABLE_SCRIPT)(
            keys=[f"{namespace}:__acks__.{broker.broker_id}.{queue}", f"{namespace}:{queue}.msgs",
                  f"{namespace}:{canonical}.XQ", f"{namespace}:{canonical}.XQ.msgs"],
            args=[payload, current_millis()])
        if not moved:
            return
        redis_id = moved.decode() if isinstance(moved, bytes) else moved
        text = f"DecodeError: undecodable message payload ({type(error.error).__name__}: {error.error})"[:1000]
        logger.error("message %s on %s cannot be decoded; dead-lettered raw: %s", redis_id, queue, text)
        metrics.dead_lettered(queue, "?")
        # dlq show names an undecodable letter by its Redis id: the note is kept under that.
        broker.client.set(error_key(broker.notes_namespace, redis_id), json.dumps(
            {"error": text, "traceback": "", "actor": None, "queue": canonical, "failed_at": time.time(),
             "failed_attempts": 1}), ex=ERROR_TTL_S)


class FleetRedisBroker(RedisBroker):
    """dramatiq's Redis broker with a consumer that dead-letters undecodable payloads, and that knows
    which fetched messages this process holds, so that it can put back the ones it lost.

    A live worker can lose messages it fetched: a fetch whose answer was lost with the connection
    (a Redis restart) leaves them in this worker's unacked set, and no dead-worker recovery looks
    there.  :meth:`requeue_lost` (run by the recovery timer) puts back what that set holds and
    this process does not, once seen so on two passes in a row.

    ``notes_namespace`` is where the failure notes live (``REDIS_NAMESPACE``), beside the ones
    :class:`~runtime.failures.FailureRecorder` keeps.
    """

    def __init__(self, *, notes_namespace: str, **options) -> None:
        super().__init__(**options)
        self.notes_namespace = notes_namespace
        self._consumed: set[str] = set()
        self._holding: dict[str, set[str]] = {}
        self._suspects: dict[str, set[str]] = {}
        self._holding_lock = threading.Lock()

    def hold(self, queue_name: str, messages) -> None:
        """Note messages of ``queue_name`` this process fetched (until :meth:`release`)."""
        with self._holding_lock:
            self._holding.setdefault(queue_name, set()).update(m.options["redis_message_id"] for m in messages)

    def release(self, queue_name: str, messages) -> None:
        """Forget messages acked, dead-lettered or put back."""
        with self._holding_lock:
            self._holding.setdefault(queue_name, set()).difference_update(
                m.options["redis_message_id"] for m in messages)

    def holding(self, queue_name: str) -> frozenset[str]:
        """The Redis ids of ``queue_name``'s messages this process fetched and has not acked yet."""
        with self._holding_lock:
            return frozenset(self._holding.get(queue_name, ()))

    def requeue_lost(self) -> dict[str, int]:
        """Put back the messages this worker's unacked sets hold but this process does not; count per queue.

        An id counts as lost once two passes in a row find it so: a fetch's ids are in the set a
        moment before the consumer has them.
        """
        queues = sorted(self._consumed)
        if not queues:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            pipe.smembers(f"{self.namespace}:__acks__.{self.broker_id}.{queue}")
        requeued = {}
        for queue, members in zip(queues, pipe.execute()):
            candidates = {member.decode() for member in members} - self.holding(queue)
            lost = candidates & self._suspects.get(queue, set())
            self._suspects[queue] = candidates - lost
            if lost:
                self.do_requeue(queue, *lost)
                requeued[queue] = len(lost)
                logger.warning("put %d message(s) of queue %s back: fetched by this worker, then lost with its "
                               "connection", len(lost), queue)
        return requeued

    @property
    def consumer_class(self):
        return _TolerantConsumer

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000):
        """A consumer of ``queue_name``; a delay queue's restarted consumer first takes back what it held.

        dramatiq's consumer thread drops the delayed messages it holds in memory when its Redis
        connection fails, and starts a new consumer: those messages stay fetched by this live
        worker, never to run (a re-check after a Redis restart).  Nothing else of this process
        holds a delay queue's messages then, so the new consumer puts them all back on the queue.
        """
        if queue_name.endswith(".DQ") and queue_name in self._consumed:
            acks = f"{self.namespace}:__acks__.{self.broker_id}.{queue_name}"
            try:
                held = [member.decode() for member in self.client.smembers(acks)]
                if held:
                    self.do_requeue(queue_name, *held)
            except redis.ConnectionError as lost:  # still down: the consumer thread tries again in a second
                raise ConnectionClosed(lost) from None
            with self._holding_lock:
                self._holding.pop(queue_name, None)
            if held:
                logger.warning("consumer of %s restarted: put %d delayed message(s) it held back on the queue",
                               queue_name, len(held))
                metrics.messages_recovered(queue_name, len(held))
        self._consumed.add(queue_name)
        return super().consume(queue_name, prefetch, timeout)


class ThreadBudget(Middleware):
    """At most ``budgets[queue]`` messages of a queue run at once in one worker process.

    For queues whose messages mostly wait (a re-check waits on the catalog quota): over budget,
    a message goes back to its queue with a delay of ``delay_ms`` (a random value in that range)
    instead of holding a worker thread, so the threads stay free for the rest (order booking).
    """

    def __init__(self, budgets: dict[str, int], delay_ms: tuple[int, int] = (1_000, 5_000)) -> None:
        self.delay_ms = delay_ms
        self._slots = {queue: threading.BoundedSemaphore(limit) for queue, limit in budgets.items()}
        self._holding: set[str] = set()
        self._lock = threading.Lock()

    def before_process_message(self, broker, message):
        """Take a slot of the message's queue, or put the message back for later and skip it."""
        slots = self._slots.get(q_name(message.queue_name))
        if slots is None:
            return
        if slots.acquire(blocking=False):
            with self._lock:
                self._holding.add(_delivery(message))
            return
        # Enqueued before the skip acks this copy: a crash in between runs it twice, never zero times.
        broker.enqueue(message.copy(), delay=random.randint(*self.delay_ms))
        raise SkipMessage(f"queue {message.queue_name} is at its thread budget")

    def after_process_message(self, broker, message, *, result=None, exception=None):
        """Give the slot back."""
        with self._lock:
            held = _delivery(message) in self._holding
            self._holding.discard(_delivery(message))
        if held:
            self._slots[q_name(message.queue_name)].release()

    after_skip_message = after_process_message


def _delivery(message) -> str:
    # One delivery of a message (the Redis broker gives each enqueue its own id; the stub broker does not).
    return message.options.get("redis_message_id") or message.message_id


def install_broker() -> dramatiq.Broker:
    """The fleet's broker, built from the settings on first use and made dramatiq's global broker.

    Actors bind to the global broker when they are declared, so ``actors`` calls this before
    declaring any; every later call returns the same broker.
    """
    global _installed
    with _install_lock:
        if _installed is None:
            _installed = build_broker(get_settings())
            dramatiq.set_broker(_installed)
        return _installed


def build_broker(settings: Settings) -> dramatiq.Broker:
    """A Redis broker (production) or an in-process stub broker (demo), with our middleware."""
    if settings.redis_url:
        broker: dramatiq.Broker = FleetRedisBroker(
            url=settings.redis_url, notes_namespace=settings.redis_namespace,
            namespace=BROKER_NAMESPACE,
            heartbeat_timeout=settings.dramatiq_heartbeat_timeout_ms,
            maintenance_chance=settings.dramatiq_maintenance_chance,
        )
        # Worker processes only (it starts at process boot); the in-process demo keeps its metrics
        # in memory, in prometheus_client's default registry.
        broker.add_middleware(FleetPrometheus(settings.metrics_dir))
        broker.add_middleware(DeadWorkerRecovery(settings.dramatiq_recovery_interval_s))
    else:
        print("stocksync: REDIS_URL is not set: using an in-process broker and worker threads "
              "(demo mode, not for production)", file=sys.stderr)
        broker = StubBroker()
    # First of all: its before-hook binds a message's log context before any other runs, its after-hook
    # unbinds it after every other (dramatiq's retry warnings included).
    broker.add_middleware(LogContext(), before=type(broker.middleware[0]))
    # In dramatiq's own place among the default middleware (after Pipelines, like Retries).
    at = next(i for i, middleware in enumerate(broker.middleware) if type(middleware) is Retries)
    broker.middleware[at] = OutageRetries(outage_s=settings.outage_retry_for_s,
                                          max_backoff_ms=settings.outage_max_backoff_ms)
    for middleware in (ThreadBudget({queues.RECHECK: settings.stock_recheck_threads}), AsyncIO(),
                       CurrentMessage(), LoopResources(), QueueWait(),
                       FailureRecorder(resources.sync_redis, settings.redis_namespace)):
        broker.add_middleware(middleware)
    if isinstance(broker, StubBroker):
        broker.emit_after("process_boot")
    return broker
