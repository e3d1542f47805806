"""A dead-letter handler that fails (PostgreSQL down) is tried again later, not given up (runtime/failures.py)."""
from __future__ import annotations

import psycopg
import redis
from dramatiq import Message
from dramatiq.broker import MessageProxy

from runtime import failures
from runtime.failures import FailureRecorder, deferred_key
from runtime.local_servers import wait_until


def test_a_failed_handler_call_is_kept_in_redis_and_run_again_until_it_succeeds(redis_url):
    calls = []

    def mark_failed(message, error):
        calls.append((message.message_id, message.args, error))
        if len(calls) < 3:
            raise psycopg.OperationalError("connection refused")

    failures.on_dead_letter("flaky_handler_actor")(mark_failed)
    client = redis.Redis.from_url(redis_url)
    recorder = FailureRecorder(lambda: client, "test", retry_every_s=0.01)
    message = MessageProxy(Message(queue_name="stock-fetch", actor_name="flaky_handler_actor", args=(7, 3),
                                   kwargs={}, options={}))
    try:
        recorder.after_nack(None, message)
        assert len(calls) == 1 and client.zcard(deferred_key("test")) == 1
        wait_until(lambda: recorder.run_deferred() == 1, 10, interval=0.02, what="the handler to succeed")
        assert [call[:2] for call in calls] == [(message.message_id, (7, 3))] * 3
        assert calls[-1][2] == "failed (no exception recorded)"  # the dead letter's error, passed on each try
        assert client.zcard(deferred_key("test")) == 0
    finally:
        failures._handlers.pop("flaky_handler_actor", None)


def test_the_timer_runs_deferred_calls_in_the_worker_process(redis_url):
    calls = []
    failures.on_dead_letter("late_handler_actor")(lambda message, error: calls.append(message.message_id))
    client = redis.Redis.from_url(redis_url)
    recorder = FailureRecorder(lambda: client, "test", retry_every_s=0.05)
    message = Message(queue_name="q", actor_name="late_handler_actor", args=(), kwargs={}, options={})
    client.zadd(deferred_key("test"), {failures.json.dumps(
        {"message": message.encode().decode(), "error": "E", "attempt": 1, "first_failed_at": 0}): 0})
    recorder.after_worker_boot(None, None)
    try:
        wait_until(lambda: calls == [message.message_id], 10, what="the deferred call")
    finally:
        recorder.before_worker_shutdown(None, None)
        failures._handlers.pop("late_handler_actor", None)
    assert client.zcard(deferred_key("test")) == 0
