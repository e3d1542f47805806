"""What waits on each queue of the broker: depth, delayed, in progress, the oldest waiting message's age.

Read-only.  On the Redis broker these are dramatiq's own keys (``<ns>:<queue>`` a list of message
ids, oldest first; ``<ns>:<queue>.msgs`` their payloads; ``<ns>:__acks__.<worker>.<queue>`` what
each worker holds; ``<queue>.DQ`` the delayed twin); on the in-process stub broker, its queues.
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
    """One queue: messages ready, delayed (retries, ETAs), held by workers (None: not known), oldest age."""

    queue: str
    ready: int
    delayed: int
    in_progress: int | None
    oldest_age_s: float | None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def redis_queue_stats(redis, queues: list[str], namespace: str = BROKER_NAMESPACE,
                      now: float | None = None) -> list[QueueStats]:
    """Stats of ``queues`` read from a dramatiq Redis broker's keys (a few round trips in all)."""
    now = time.time() if now is None else now
    held: dict[str, int] = {}
    prefix = f"{namespace}:__acks__."
    ack_keys = [_text(key) for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
    with redis.pipeline(transaction=False) as pipe:
        for key in ack_keys:
            pipe.scard(key)
        for key, count in zip(ack_keys, pipe.execute()):
            queue = key[len(prefix):].split(".", 1)[-1]
            queue = queue[:-3] if queue.endswith(".DQ") else queue
            held[queue] = held.get(queue, 0) + int(count)
    with redis.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.llen(f"{namespace}:{queue}")
            pipe.llen(f"{namespace}:{queue}.DQ")
            pipe.lindex(f"{namespace}:{queue}", 0)
        answers = pipe.execute()
    heads = [(queue, answers[3 * i + 2]) for i, queue in enumerate(queues) if answers[3 * i + 2] is not None]
    payloads = {}
    if heads:
        with redis.pipeline(transaction=False) as pipe:
            for queue, head in heads:
                pipe.hget(f"{namespace}:{queue}.msgs", head)
            payloads = {queue: payload for (queue, _), payload in zip(heads, pipe.execute())}
    stats = []
    for i, queue in enumerate(queues):
        stats.append(QueueStats(queue=queue, ready=int(answers[3 * i]), delayed=int(answers[3 * i + 1]),
                                in_progress=held.get(queue, 0), oldest_age_s=_age(payloads.get(queue), now)))
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
