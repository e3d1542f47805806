"""An outage of PostgreSQL or Redis is waited out without spending a message's retries (runtime/failures.py)."""
from __future__ import annotations

import dramatiq
import psycopg
import pytest
import redis
import sqlalchemy
import sqlalchemy.exc
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker

from actors.retry import transient_only
from runtime.failures import OutageRetries, is_outage
from runtime.local_servers import free_port


def pg_error_on(url: str, statement: str = "SELECT 1") -> Exception:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(statement))
    except Exception as error:
        return error
    finally:
        engine.dispose()
    raise AssertionError("no error")


def test_connection_level_errors_are_outages_and_statement_errors_are_not(database_url):
    refused = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x"
    assert is_outage(pg_error_on(refused))
    assert is_outage(psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"))
    assert not is_outage(pg_error_on(database_url, "SELECT * FROM no_such_table"))
    assert not is_outage(pg_error_on(database_url, "SELECT 1/0"))
    with pytest.raises(redis.ConnectionError) as down:
        redis.Redis(port=free_port()).ping()
    assert is_outage(down.value)
    assert is_outage(redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"))
    assert not is_outage(redis.ResponseError("WRONGTYPE"))
    assert not is_outage(ValueError("bad"))
    wrapped = RuntimeError("walk failed")
    wrapped.__cause__ = down.value
    assert is_outage(wrapped)


class Enqueued:
    """A broker stand-in that records retries (and can refuse the first few like a Redis that is down)."""

    def __init__(self, refuse: int = 0) -> None:
        self.broker = StubBroker()
        dramatiq.actor(lambda: None, actor_name="job", broker=self.broker, retry_when=transient_only(2))
        self.refuse = refuse
        self.delays: list[int | None] = []

    def enqueue(self, message, *, delay=None):
        if self.refuse:
            self.refuse -= 1
            raise redis.ConnectionError("Connection refused")
        self.delays.append(delay)
        return message

    def __getattr__(self, name):
        return getattr(self.broker, name)


def message() -> MessageProxy:
    return MessageProxy(Message(queue_name="default", actor_name="job", args=(), kwargs={}, options={}))


def test_an_outage_spends_no_retry_for_the_outage_window_then_retries_count():
    retries, broker, msg = OutageRetries(outage_s=1800), Enqueued(), message()
    outage = psycopg.OperationalError("connection refused")
    for _ in range(20):  # far more than the actor's 2 retries
        retries.after_process_message(broker, msg, exception=outage)
    assert not msg.failed and msg.options.get("retries", 0) == 0 and len(broker.delays) == 20
    assert 1000 <= broker.delays[0] <= 2000 and max(broker.delays) <= 30_000  # 1 s doubling, at most 30 s
    # A real failure counts as before, and ends the outage streak.
    for _ in range(2):
        retries.after_process_message(broker, msg, exception=ValueError("boom"))
    assert msg.options["retries"] == 2 and "outage_since" not in msg.options and not msg.failed
    retries.after_process_message(broker, msg, exception=ValueError("boom"))
    assert msg.failed


def test_an_outage_longer_than_the_window_spends_retries_again():
    retries, broker, msg = OutageRetries(outage_s=1800), Enqueued(), message()
    msg.options["outage_since"] = msg.options["message_timestamp"] = 0  # met outages since 1970
    outage = redis.ConnectionError("Connection refused")
    for _ in range(3):
        retries.after_process_message(broker, msg, exception=outage)
    assert msg.failed and msg.options["retries"] == 3


def test_the_retry_of_a_message_waits_for_redis_instead_of_being_dropped():
    waits: list[float] = []
    retries, broker, msg = OutageRetries(outage_s=1800, sleep=waits.append), Enqueued(refuse=4), message()
    retries.after_process_message(broker, msg, exception=ValueError("boom"))  # an ordinary retry
    assert len(broker.delays) == 1 and len(waits) == 4 and not msg.failed and msg.options["retries"] == 1
