"""Broker and middleware set-up, shared by the workers, the CLI, the scheduler and the intake."""
from __future__ import annotations

import logging
import sys

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AsyncIO, CurrentMessage, Middleware

from workers import runtime
from workers.failures import FailureRecorder
from workers.settings import Settings

logger = logging.getLogger(__name__)


class LoopResources(Middleware):
    """Close the per-process HTTP session and Redis client when a worker shuts down."""

    def before_worker_shutdown(self, broker, worker):
        """Run the close on the AsyncIO event loop before it stops."""
        from dramatiq.asyncio import get_event_loop_thread

        loop_thread = get_event_loop_thread()
        if loop_thread is not None:
            try:
                loop_thread.run_coroutine(runtime.close_loop_resources())
            except Exception:
                logger.exception("could not close the HTTP session cleanly")


def build_broker(settings: Settings) -> dramatiq.Broker:
    """A Redis broker (production) or an in-process stub broker (demo), with our middleware."""
    if settings.redis_url:
        broker: dramatiq.Broker = RedisBroker(
            url=settings.redis_url,
            heartbeat_timeout=settings.dramatiq_heartbeat_timeout_ms,
            maintenance_chance=settings.dramatiq_maintenance_chance,
        )
    else:
        print("stocksync: REDIS_URL is not set: using an in-process broker and worker threads "
              "(demo mode, not for production)", file=sys.stderr)
        broker = StubBroker()
    for middleware in (AsyncIO(), CurrentMessage(), LoopResources(),
                       FailureRecorder(runtime.sync_redis, settings.redis_namespace)):
        broker.add_middleware(middleware)
    if isinstance(broker, StubBroker):
        broker.emit_after("process_boot")
    return broker
