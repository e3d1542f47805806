"""What waits on each queue of the broker: ready, delayed, in progress, dead, the oldest waiting message's age.

Read-only, for the metrics and the console alike.  On the Redis broker these are dramatiq's own
keys (``<ns>:<queue>`` the ready ids, oldest first; ``.msgs`` their payloads; ``.DQ.msgs``
delayed ones; ``.XQ`` dead letters); on the in-process stub broker, its queues.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import DecodeError

from runtime.queues import BROKER_NAMESPACE


@dataclass(frozen=True)
class QueueStats:
    """One queue: messages ready, delayed (retries, ETAs), held by workers (None: not known), dead,
    and the oldest ready message's age (since it was enqueued or became due; None: none waits)."""

    queue: str
    ready: int
    delayed: int
    in_progress: int | None
    oldest_age_s: float | None
    dead: int = 0


#: Per queue, in one atomic step: ready messages, all of the queue's messages, delayed ones, dead
#: ones, and the head message's enqueue time and eta (decoded here: a payload may be megabytes).
_QUEUE_STATE = """
local out = {}
for i, queue in ipairs(KEYS) do
  local ready = redis.call('LLEN', queue)
  local head = redis.call('LINDEX', queue, 0)
  local timestamp, eta = 0, 0
  if head then
    local payload = redis.call('HGET', queue .. '.msgs', head)
    if payload then
      local ok, message = pcall(cjson.decode, payload)
      if ok and type(message) == 'table' then
        timestamp = tonumber(message['message_timestamp']) or 0
        if type(message['options']) == 'table' then eta = tonumber(message['options']['eta']) or 0 end
      end
    end
  end
  local delayed = redis.call('HLEN', queue .. '.DQ.msgs')
  table.insert(out, {ready, redis.call('HLEN', queue .. '.msgs'), delayed, redis.call('ZCARD', queue .. '.XQ'),
                     tostring(timestamp), tostring(eta)})
end
return out
"""


def redis_queue_stats(redis, queues: list[str], namespace: str = BROKER_NAMESPACE) -> list[QueueStats]:
    """Stats of ``queues`` read from a dramatiq Redis broker's keys: one script call, on Redis' clock.

    ``<queue>.msgs`` holds every message of the queue not yet acked, fetched ones included, so
    in progress = its size − ready (running, prefetched, or held by a dead worker until requeued).
    """
    if not queues:
        return []
    rows = redis.register_script(_QUEUE_STATE)(keys=[f"{namespace}:{queue}" for queue in queues])
    seconds, micros = redis.time()
    now_ms = seconds * 1000 + micros / 1000  # Redis' clock, the one the enqueuers' timestamps agree on
    stats = []
    for queue, (ready, pending, delayed, dead, timestamp, eta) in zip(queues, rows):
        ready = int(ready)
        since_ms = max(float(timestamp), float(eta))
        stats.append(QueueStats(queue=queue, ready=ready, delayed=int(delayed), in_progress=max(0, int(pending) - ready),
                                oldest_age_s=max(0.0, (now_ms - since_ms) / 1000) if ready and since_ms else None,
                                dead=int(dead)))
    return stats


def _age(payload, now: float) -> float | None:
    if payload is None:
        return None
    try:
        message = dramatiq.Message.decode(payload)
    except DecodeError:
        return None
    return max(0.0, now - message.message_timestamp / 1000)


def stub_queue_stats(broker: StubBroker, queues: list[str], now: float | None = None) -> list[QueueStats]:
    """Stats of ``queues`` on the in-process stub broker (what its workers hold is not known)."""
    now = time.time() if now is None else now
    stats = []
    for queue in queues:
        ready = broker.queues.get(queue)
        delayed = broker.queues.get(f"{queue}.DQ")
        oldest = None
        if ready is not None and ready.qsize():
            with ready.mutex:
                head = ready.queue[0] if ready.queue else None
            oldest = _age(head, now)
        stats.append(QueueStats(queue=queue, ready=ready.qsize() if ready else 0,
                                delayed=delayed.qsize() if delayed else 0, in_progress=None, oldest_age_s=oldest))
    return stats


def queue_stats(broker: dramatiq.Broker, redis, queues: list[str]) -> list[QueueStats]:
    """Stats of ``queues`` on whichever broker the fleet runs."""
    if isinstance(broker, RedisBroker):
        return redis_queue_stats(redis, queues, broker.namespace)
    if isinstance(broker, StubBroker):
        return stub_queue_stats(broker, queues)
    return [QueueStats(queue, 0, 0, None, None) for queue in queues]


__all__ = ["QueueStats", "queue_stats", "redis_queue_stats", "stub_queue_stats"]
