"""Dead workers' messages come back on every queue, quiet ones included (runtime/recovery.py), on real Redis."""
from __future__ import annotations

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message
from prometheus_client import REGISTRY

from runtime.local_servers import wait_until
from runtime.recovery import DeadWorkerRecovery, recover_dead_workers

HEARTBEAT_MS = 60_000  # the production default: the test ages heartbeats by hand instead of waiting


def make_broker(url: str) -> RedisBroker:
    broker = RedisBroker(url=url, namespace="dramatiq", heartbeat_timeout=HEARTBEAT_MS, maintenance_chance=0)
    for queue in ("busy", "quiet"):
        broker.declare_queue(queue)
    return broker


def message(queue: str, n: int) -> Message:
    return Message(queue_name=queue, actor_name="noop", args=(n,), kwargs={}, options={})


def fetch_all(broker: RedisBroker, queue: str) -> list:
    return broker.do_fetch(queue, 100)


def age_heartbeat(client: redis.Redis, broker: RedisBroker, by_ms: int) -> None:
    score = client.zscore("dramatiq:__heartbeats__", broker.broker_id)
    client.zadd("dramatiq:__heartbeats__", {broker.broker_id: score - by_ms})


def recovered_total(queue: str) -> float:
    return REGISTRY.get_sample_value("stocksync_messages_recovered_total", {"queue": queue}) or 0.0


def test_a_dead_workers_messages_go_back_on_every_queue_and_a_live_ones_stay(redis_url):
    client = redis.Redis.from_url(redis_url)
    producer, dead, alive = make_broker(redis_url), make_broker(redis_url), make_broker(redis_url)
    for n in range(3):
        producer.enqueue(message("busy", n))
    producer.enqueue(message("quiet", 9))
    producer.enqueue(message("quiet", 10), delay=3_600_000)  # a delayed message sits on quiet.DQ
    assert len(fetch_all(dead, "busy")) == 3 and len(fetch_all(dead, "quiet")) == 1
    assert len(fetch_all(dead, "quiet.DQ")) == 1
    producer.enqueue(message("busy", 4))
    assert len(fetch_all(alive, "busy")) == 1
    age_heartbeat(client, dead, HEARTBEAT_MS + 1)

    assert recover_dead_workers(producer) == {"busy": 3, "quiet": 1, "quiet.DQ": 1}
    assert client.llen("dramatiq:busy") == 3 and client.llen("dramatiq:quiet") == 1
    assert client.llen("dramatiq:quiet.DQ") == 1
    # The live worker keeps its message; the dead one is forgotten; a second pass finds nothing.
    assert client.scard(f"dramatiq:__acks__.{alive.broker_id}.busy") == 1
    assert client.zscore("dramatiq:__heartbeats__", dead.broker_id) is None
    assert recover_dead_workers(producer) == {}


def test_a_worker_is_dead_only_after_the_heartbeat_timeout(redis_url):
    client = redis.Redis.from_url(redis_url)
    producer, slow = make_broker(redis_url), make_broker(redis_url)
    producer.enqueue(message("quiet", 1))
    assert len(fetch_all(slow, "quiet")) == 1
    age_heartbeat(client, slow, HEARTBEAT_MS - 5_000)
    assert recover_dead_workers(producer) == {}
    assert client.scard(f"dramatiq:__acks__.{slow.broker_id}.quiet") == 1


def test_the_middleware_recovers_on_a_timer_and_counts_per_queue(redis_url):
    client = redis.Redis.from_url(redis_url)
    live, dead = make_broker(redis_url), make_broker(redis_url)
    for n in range(2):
        live.enqueue(message("quiet", n))
    assert len(fetch_all(dead, "quiet")) == 2
    age_heartbeat(client, dead, HEARTBEAT_MS + 1)
    before = recovered_total("quiet")
    recovery = DeadWorkerRecovery(interval_s=0.05)
    recovery.after_worker_boot(live, worker=None)
    try:
        wait_until(lambda: client.llen("dramatiq:quiet") == 2, 10, what="the messages back on the queue")
        wait_until(lambda: recovered_total("quiet") == before + 2, 10, what="the recovered counter")
        # The timer keeps this process's own heartbeat fresh, with no consumer at all.
        assert client.zscore("dramatiq:__heartbeats__", live.broker_id) is not None
    finally:
        recovery.before_worker_shutdown(live, worker=None)
    assert not recovery._thread.is_alive()


def test_a_live_worker_puts_back_the_messages_it_fetched_and_lost(redis_url):
    from runtime.broker import FleetRedisBroker

    client = redis.Redis.from_url(redis_url)
    broker = FleetRedisBroker(url=redis_url, namespace="dramatiq", notes_namespace="stocksync",
                              heartbeat_timeout=HEARTBEAT_MS, maintenance_chance=0)
    broker.declare_queue("q")
    for n in range(3):
        broker.enqueue(message("q", n))
    consumer = broker.consume("q", prefetch=10)
    held = next(consumer)  # one handed out; two more fetched into the consumer's cache ...
    consumer.message_cache.clear()  # ... and lost, as when the connection drops with a fetch's answer
    acks = f"dramatiq:__acks__.{broker.broker_id}.q"
    assert client.scard(acks) == 3
    assert broker.requeue_lost() == {}  # a first sighting may be a fetch not handed out yet
    assert broker.requeue_lost() == {"q": 2}
    assert client.llen("dramatiq:q") == 2 and client.smembers(acks) == {held.options["redis_message_id"].encode()}
    consumer.ack(held)
    assert client.scard(acks) == 0 and broker.requeue_lost() == {}
