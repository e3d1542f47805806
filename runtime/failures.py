"""What happens when a message fails: an outage is waited out, a failure for good is recorded and told.

- :class:`OutageRetries` (dramatiq's retries, in its place): PostgreSQL or Redis being unreachable
  is not the message's fault.  A message that failed on a connection-level error is retried with
  backoff without spending its retries, for up to ``OUTAGE_RETRY_FOR_S``; only then do its
  ordinary retries count.  Its own retry is enqueued patiently too, so a Redis outage never drops it.
- :class:`FailureRecorder`: dramatiq's dead-letter copy of a message is the one enqueued before its
  last attempt, so it does not carry the final error.  It keeps that error in Redis next to the
  dead letter (``dlq show`` reads it) and calls the handler registered for the actor, e.g. "mark
  the sync run failed".
"""
from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from typing import Any, Callable

import dramatiq
import psycopg
import redis
import sqlalchemy.exc
from dramatiq.common import compute_backoff, current_millis
from dramatiq.errors import BrokerConnectionError
from dramatiq.middleware import Middleware, Retries

from runtime import metrics
from runtime.dlq import error_key

logger = logging.getLogger(__name__)

#: actor name -> handler(message, error) run when one of its messages is dead-lettered.
_handlers: dict[str, Callable[[dramatiq.Message, str], None]] = {}

#: How long a dead letter's recorded error is kept (dramatiq keeps dead letters 7 days).
ERROR_TTL_S = 7 * 24 * 3600


def on_dead_letter(actor_name: str):
    """Register ``handler(message, error)`` for messages of ``actor_name`` that fail for good."""
    def register(handler):
        _handlers[actor_name] = handler
        return handler
    return register


def message_argument(message: dramatiq.Message, position: int, name: str) -> Any:
    """The actor argument at ``position`` (or passed as keyword ``name``) of ``message``; None if absent."""
    if len(message.args) > position:
        return message.args[position]
    return message.kwargs.get(name)


#: PostgreSQL error classes that mean "the server cannot be reached or is going away", not "this
#: statement is wrong": connection exceptions, shutting down, starting up, out of connection slots.
_PG_OUTAGE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")


def is_outage(error: BaseException | None) -> bool:
    """True when ``error`` (or what it was raised from) says PostgreSQL or Redis is unreachable.

    Connection-level only: a psycopg error without a SQLSTATE (refused, closed, lost) or with a
    connection one, a connection SQLAlchemy invalidated, a Redis connection error or timeout
    (``BusyLoadingError`` included: Redis is loading its data), the broker's connection errors.
    A deadlock, a constraint or a bad statement is the message's own failure.
    """
    depth = 0
    while error is not None and depth < 5:
        if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, sqlalchemy.exc.DisconnectionError):
            return True
        if isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError)):
            sqlstate = getattr(error, "sqlstate", None)
            if sqlstate is None or sqlstate.startswith(_PG_OUTAGE_SQLSTATES):
                return True
        if isinstance(error, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                              BrokerConnectionError)):
            return True
        # SQLAlchemy keeps the driver's error as .orig and raises from it; other wrappers use "from".
        error = getattr(error, "orig", None) or error.__cause__
        depth += 1
    return False


class _PatientBroker:
    """The broker as dramatiq's retries see it, with an enqueue that waits out a Redis outage."""

    def __init__(self, broker, enqueue) -> None:
        self._broker = broker
        self.enqueue = enqueue

    def __getattr__(self, name):
        return getattr(self._broker, name)


class OutageRetries(Retries):
    """Dramatiq's retries, except that an outage of PostgreSQL or Redis spends no retry.

    A message that failed on an outage (:func:`is_outage`) is enqueued again after a backoff
    (1 s doubling up to ``max_backoff_ms``), its ``retries`` untouched, until it has met outages for
    ``outage_s`` in a row; then its ordinary retries count.  Any other failure starts the count over.
    Every retry's enqueue is itself retried while Redis is unreachable, for up to ``outage_s``: a
    retry lost there would be a message lost, since the worker acks the attempt afterwards.
    """

    def __init__(self, *, outage_s: float, max_backoff_ms: int = 30_000, sleep=time.sleep) -> None:
        super().__init__()
        self.outage_ms = int(outage_s * 1000)
        self.outage_max_backoff_ms = max_backoff_ms
        self._sleep = sleep

    def after_process_message(self, broker, message, *, result=None, exception=None):
        """Wait out an outage without spending a retry; hand anything else to dramatiq's retries."""
        if exception is None:
            return
        patient = _PatientBroker(broker, lambda msg, *, delay=None: self._enqueue(broker, msg, delay))
        if is_outage(exception):
            now = current_millis()
            since = message.options.setdefault("outage_since", now)
            if now - since < self.outage_ms:
                attempt = message.options.get("outage_retries", 0)
                message.options["outage_retries"] = attempt + 1
                _, delay = compute_backoff(attempt, factor=1000, max_backoff=self.outage_max_backoff_ms)
                logger.warning("message %s (%s) met an outage (%s); retrying in %.1f s without spending a retry",
                               message.message_id, message.actor_name, _summary(exception), delay / 1000)
                self._enqueue(broker, message, delay)
                return
            logger.error("message %s (%s) has met outages for %.0f s: its retries count from now on",
                         message.message_id, message.actor_name, (now - since) / 1000)
        else:
            message.options.pop("outage_since", None)
            message.options.pop("outage_retries", None)
        super().after_process_message(patient, message, result=result, exception=exception)

    def _enqueue(self, broker, message, delay):
        """``broker.enqueue``, retried while Redis is unreachable; after ``outage_s`` the message fails."""
        deadline = time.monotonic() + self.outage_ms / 1000
        attempt = 0
        while True:
            try:
                return broker.enqueue(message, delay=delay)
            except Exception as error:
                if not is_outage(error):
                    raise
                if time.monotonic() >= deadline:
                    logger.error("could not enqueue the retry of message %s for %.0f s: it fails",
                                 message.message_id, self.outage_ms / 1000)
                    message.fail()
                    return None
                if attempt == 0:
                    logger.warning("Redis unreachable (%s): the retry of message %s waits for it",
                                   type(error).__name__, message.message_id)
                _, wait_ms = compute_backoff(attempt, factor=500, max_backoff=self.outage_max_backoff_ms)
                attempt += 1
                self._sleep(wait_ms / 1000)


def _summary(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text[:200]


#: Claim the deferred handler calls that are due: each is pushed ``lease`` ms ahead, so a process
#: that dies while running one leaves it for another after the lease.
_CLAIM_DUE = """
local due = redis.call("zrangebyscore", KEYS[1], 0, ARGV[1], "LIMIT", 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do
    redis.call("zadd", KEYS[1], "XX", tonumber(ARGV[1]) + tonumber(ARGV[2]), member)
end
return due
"""


def deferred_key(namespace: str) -> str:
    """The Redis sorted set of dead-letter handler calls that failed and wait for another try."""
    return f"{namespace}:dead-letter-handlers"


class FailureRecorder(Middleware):
    """Keep the last error of every message and act on it when the message is dead-lettered.

    A handler that fails (say, PostgreSQL is down while it marks a run failed) is not given up:
    the call is kept in Redis and run again by a timer in every worker process, with backoff
    (``retry_every_s`` doubling up to 5 min), until it succeeds or its dead letter expires (7 days).
    """

    #: Longest wait between two tries of a deferred handler call (seconds).
    MAX_BACKOFF_S = 300.0
    #: How long a claimed call is left to its claimer before another process may take it (ms).
    LEASE_MS = 60_000

    def __init__(self, redis_client_factory, namespace: str, *, retry_every_s: float = 5.0):
        self.redis_client_factory = redis_client_factory
        self.namespace = namespace
        self.retry_every_s = retry_every_s
        self._last_errors: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_process_message(self, broker, message, *, result=None, exception=None):
        """Remember the error of a failed attempt until we know whether it is the last one."""
        with self._lock:
            if exception is None:
                self._last_errors.pop(message.message_id, None)
            else:
                text = f"{type(exception).__name__}: {exception}"
                tb = "".join(traceback.format_exception(exception, limit=30))
                self._last_errors[message.message_id] = (text, tb)

    after_skip_message = after_process_message

    def after_ack(self, broker, message):
        """A retried or successful message is not a dead letter: forget its error."""
        with self._lock:
            self._last_errors.pop(message.message_id, None)

    def after_nack(self, broker, message):
        """Store the error beside the dead letter and run the actor's handler (deferred if it fails)."""
        with self._lock:
            error, tb = self._last_errors.pop(message.message_id, (None, ""))
        if error is None:
            # dramatiq dead-letters a message for an actor it does not know before running anything.
            known = broker is None or message.actor_name in broker.actors
            error = "failed (no exception recorded)" if known else (
                f"no actor named {message.actor_name[:100]!r} in this fleet (a message sent by name to an actor "
                f"that is not declared)")
        logger.error("message %s (%s) dead-lettered: %s", message.message_id, message.actor_name, error)
        metrics.dead_lettered(message.queue_name, message.actor_name)
        try:
            self.redis_client_factory().set(
                error_key(self.namespace, message.message_id),
                json.dumps({"error": error, "traceback": tb, "actor": message.actor_name,
                            "queue": message.queue_name, "failed_at": time.time(),
                            "failed_attempts": message.options.get("retries", 0)}),
                ex=ERROR_TTL_S)
        except Exception:  # the dead letter itself is safe in Redis; the note is best effort
            logger.exception("could not record the error of dead letter %s", message.message_id)
        handler = _handlers.get(message.actor_name)
        if handler is not None:
            try:
                handler(message, error)
            except Exception as failure:
                self._defer({"message": message.encode().decode(), "error": error, "attempt": 1,
                             "first_failed_at": time.time()}, failure)

    # -- deferred handler calls ---------------------------------------------------------------------

    def _defer(self, call: dict, failure: BaseException) -> None:
        wait_s = min(self.retry_every_s * 2 ** (call["attempt"] - 1), self.MAX_BACKOFF_S)
        logger.warning("dead-letter handler of message %s failed (%s); trying again in %.0f s (try %d)",
                       json.loads(call["message"]).get("message_id"), _summary(failure), wait_s, call["attempt"])
        try:
            self.redis_client_factory().zadd(deferred_key(self.namespace),
                                             {json.dumps(call, sort_keys=True): current_millis() + wait_s * 1000})
        except Exception:
            logger.exception("could not defer the dead-letter handler call; it is lost: %s", call["message"][:500])

    def run_deferred(self, limit: int = 50) -> int:
        """Run the deferred handler calls that are due; return how many succeeded."""
        client = self.redis_client_factory()
        key = deferred_key(self.namespace)
        due = client.eval(_CLAIM_DUE, 1, key, current_millis(), self.LEASE_MS, limit)
        done = 0
        for member in due:
            call = json.loads(member)
            message = dramatiq.Message.decode(call["message"].encode())
            handler = _handlers.get(message.actor_name)
            try:
                if handler is not None:
                    handler(message, call["error"])
                done += 1
                logger.info("deferred dead-letter handler of message %s ran (try %d)", message.message_id,
                            call["attempt"] + 1)
            except Exception as failure:
                if time.time() - call["first_failed_at"] < ERROR_TTL_S:
                    self._defer({**call, "attempt": call["attempt"] + 1}, failure)
                else:
                    logger.error("dead-letter handler of message %s gave up after %d tries: %s", message.message_id,
                                 call["attempt"] + 1, _summary(failure))
            client.zrem(key, member)
        return done

    def after_worker_boot(self, broker, worker):
        """Start the timer that runs deferred handler calls in this worker process."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dead-letter-handlers", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker, worker):
        """Stop the timer (a call in progress finishes)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.retry_every_s):
            try:
                self.run_deferred()
            except Exception as error:  # Redis down: the calls wait there, try again next tick
                logger.debug("deferred dead-letter handlers not run: %s", _summary(error))
