"""Queue metrics read from a real Redis broker at scrape time, and the enqueue -> start histogram."""
from __future__ import annotations

import time
import urllib.request
from types import SimpleNamespace

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from prometheus_client import REGISTRY, CollectorRegistry

from runtime import metrics
from runtime.local_servers import free_port, wait_until


@pytest.fixture
def broker(redis_url):
    broker = RedisBroker(url=redis_url, namespace="dramatiq")
    broker.add_middleware(metrics.QueueWait())
    yield broker
    broker.close()


def scrape(client) -> dict[tuple, float]:
    registry = CollectorRegistry()
    registry.register(metrics.QueueMetrics(client, queues={"test-idle"}))
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in registry.collect() for sample in family.samples}


def state(samples, queue: str, name: str) -> float:
    return samples[(metrics.QUEUE_MESSAGES, (("queue", queue), ("state", name)))]


def test_messages_by_state_oldest_age_and_dead_letters(broker, redis_url):
    client = redis.Redis.from_url(redis_url)

    @dramatiq.actor(broker=broker, queue_name="test-q", actor_name="queued_test_job", max_retries=0)
    def queued_test_job(n: int) -> None:
        raise RuntimeError("fails for good")

    old = queued_test_job.message(0)
    broker.enqueue(old.copy(message_timestamp=old.message_timestamp - 120_000))  # enqueued 2 minutes ago
    for n in range(1, 4):
        queued_test_job.send(n)
    queued_test_job.send_with_options(args=(9,), delay=3_600_000)  # due in an hour
    samples = scrape(client)
    assert [state(samples, "test-q", name) for name in ("waiting", "in_progress", "delayed", "dead")] == [4, 0, 1, 0]
    assert 119 < samples[(metrics.QUEUE_OLDEST_AGE, (("queue", "test-q"),))] < 180
    # A queue of the fleet that has never held a message still reports zeros (alerts see 0, not nothing).
    assert [state(samples, "test-idle", name) for name in ("waiting", "in_progress", "delayed", "dead")] == [0] * 4

    consumer = broker.consume("test-q", prefetch=2, timeout=1000)
    fetched = [next(consumer), next(consumer)]  # a worker holds two, unacked
    samples = scrape(client)
    assert (state(samples, "test-q", "waiting"), state(samples, "test-q", "in_progress")) == (2, 2)
    assert samples[(metrics.QUEUE_OLDEST_AGE, (("queue", "test-q"),))] < 60  # the old one is out of the list
    consumer.nack(fetched[0])  # dead-lettered
    consumer.ack(fetched[1])
    consumer.close()
    samples = scrape(client)
    assert [state(samples, "test-q", name) for name in ("waiting", "in_progress", "delayed", "dead")] == [2, 0, 1, 1]
    assert samples[(metrics.DEAD_LETTERS_WAITING, (("queue", "test-q"),))] == 1


def test_a_scrape_answers_while_redis_is_down(caplog):
    samples = scrape(redis.Redis(port=free_port(), socket_connect_timeout=0.5))
    assert not any(name == metrics.QUEUE_MESSAGES for name, _ in samples)
    assert "could not read the queues from Redis: ConnectionError" in caplog.text


def test_the_wait_from_enqueue_to_start_is_observed_per_queue(broker):
    def count(name: str) -> float:
        return REGISTRY.get_sample_value(f"stocksync_queue_wait_seconds_{name}", {"queue": "test-wait"}) or 0.0

    before_count, before_sum = count("count"), count("sum")
    done = []

    @dramatiq.actor(broker=broker, queue_name="test-wait", actor_name="waited_test_job")
    def waited_test_job() -> None:
        done.append(1)

    late = waited_test_job.message()
    broker.enqueue(late.copy(message_timestamp=late.message_timestamp - 30_000))  # waited 30 s
    waited_test_job.send()
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        wait_until(lambda: len(done) == 2, 30, what="both messages processed")
    finally:
        worker.stop()
    assert count("count") - before_count == 2
    assert 30 <= count("sum") - before_sum < 40


def test_the_metrics_server_serves_queue_metrics_and_health(redis_url, database_url):
    port = free_port()
    settings = SimpleNamespace(metrics_host="127.0.0.1", metrics_port=port, redis_url=redis_url,
                               database_url=database_url)
    server = metrics.start_exposition_server(settings)
    try:
        def get(path: str):
            try:
                answer = urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)
                return answer.status, answer.read().decode()
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode()

        assert get("/healthz") == (200, '{"ok": true}')
        status, body = get("/readyz")
        assert (status, body) == (200, '{"status": "ok"}')  # the checks' details only in the log
        assert get("/metrics")[0] == 200
    finally:
        server.shutdown()
