"""Bring a dead worker's messages back within a bound, on every queue, whatever the traffic.

Dramatiq's Redis broker puts a dead worker's unacked messages back only when a live consumer of
the same queue happens to run maintenance (``DRAMATIQ_MAINTENANCE_CHANCE`` per million
commands), so on a quiet queue they may wait for hours.  :class:`DeadWorkerRecovery` runs that
maintenance for every declared queue (delay queues included) on a timer, in one Redis script
call per worker process.  A worker is dead once its heartbeat is older than
``DRAMATIQ_HEARTBEAT_TIMEOUT_MS``, so its messages are back on their queues at most
``heartbeat timeout + DRAMATIQ_RECOVERY_INTERVAL_S`` after it died (66 s with the defaults, plus
the second an idle consumer takes to poll).  The timer also refreshes this process's own heartbeat,
so a live process whose consumers all wait on a full prefetch is never taken for dead, and puts
back the messages this live process fetched and lost (``FleetRedisBroker.requeue_lost``).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from dramatiq.common import current_millis
from dramatiq.middleware import Middleware

from runtime import metrics

logger = logging.getLogger(__name__)

_SCRIPT = (Path(__file__).with_name("recovery.lua")).read_text()


def recover_dead_workers(broker) -> dict[str, int]:
    """Run one recovery pass over ``broker``'s declared queues; return messages put back per queue.

    Raises the Redis client's error when Redis cannot be reached.
    """
    queues = sorted(broker.get_declared_queues() | set(broker.delay_queues))
    if not queues:
        return {}
    script = broker.client.register_script(_SCRIPT)  # only hashes the text; Redis caches it by that hash
    flat = script(keys=[broker.namespace], args=[current_millis(), broker.heartbeat_timeout, broker.broker_id,
                                                 broker.dead_message_ttl, *queues])
    recovered = {}
    for name, count in zip(flat[::2], flat[1::2]):
        recovered[name.decode() if isinstance(name, bytes) else name] = int(count)
    return recovered


class DeadWorkerRecovery(Middleware):
    """A daemon thread per worker process that runs :func:`recover_dead_workers` every ``interval_s``.

    Started when the worker boots, stopped before it shuts down; a Redis outage is logged once
    (not every pass) and the thread carries on.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker, worker):
        """Start the timer (each worker process runs its own: any live one is enough)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(broker,), name="dead-worker-recovery", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker, worker):
        """Stop the timer; a pass in progress finishes (one script call)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self, broker) -> None:
        failing = False
        while not self._stop.wait(self.interval_s):
            try:
                recovered = recover_dead_workers(broker)
            except Exception as error:
                if not failing:
                    logger.warning("dead-worker recovery cannot reach Redis (%s); retrying every %.0f s",
                                   type(error).__name__, self.interval_s)
                failing = True
                continue
            if failing:
                logger.info("dead-worker recovery reaches Redis again")
                failing = False
            for queue, count in recovered.items():
                logger.warning("put %d message(s) of dead workers back on queue %s", count, queue)
                metrics.messages_recovered(queue, count)
            requeue_lost = getattr(broker, "requeue_lost", None)
            try:
                for queue, count in (requeue_lost() if requeue_lost else {}).items():
                    metrics.messages_recovered(queue, count)
            except Exception as error:
                logger.warning("could not check this worker's unacked messages: %s", type(error).__name__)
