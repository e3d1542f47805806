"""What happens when a message fails for good: its error is kept and the owning run is told.

Dramatiq's dead-letter copy of a message is the one enqueued before its last attempt, so it does
not carry the final error.  :class:`FailureRecorder` keeps that error in Redis next to the dead
letter (``dlq show`` reads it) and calls the handler registered for the actor, e.g. "mark the
sync run failed".
"""
from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from typing import Any, Callable

import dramatiq
from dramatiq.middleware import Middleware

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


class FailureRecorder(Middleware):
    """Keep the last error of every message and act on it when the message is dead-lettered."""

    def __init__(self, redis_client_factory, namespace: str):
        self.redis_client_factory = redis_client_factory
        self.namespace = namespace
        self._last_errors: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

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
        """Store the error beside the dead letter and run the actor's handler."""
        with self._lock:
            error, tb = self._last_errors.pop(message.message_id, ("failed (no exception recorded)", ""))
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
            except Exception:
                logger.exception("dead-letter handler of %s failed", message.actor_name)
