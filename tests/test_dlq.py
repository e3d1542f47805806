"""``stocksync dlq``: list, show, retry and purge messages that a real dramatiq worker dead-lettered.

The messages die for real: a ``dramatiq.Worker`` on a real Redis runs actors that fail on
purpose, dramatiq's Retries middleware gives up on them and the Redis broker moves them to its
dead-letter sets, with :class:`~runtime.failures.FailureRecorder` keeping their errors.
"""
from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import dramatiq
import pytest
import redis
from click.testing import CliRunner
from dramatiq.brokers.redis import RedisBroker

from runtime.queues import BROKER_NAMESPACE
from runtime.dlq import DeadLetterQueues, parse_since
from runtime.dlq import error_key
from runtime.failures import FailureRecorder
from runtime.local_servers import wait_until
from runtime.settings import get_settings

FAILING = "dlq-test:failing"


@pytest.fixture
def fleet(redis_url, monkeypatch):
    """A Redis broker with the failure recorder, two actors that fail while told to, and a worker."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    get_settings.cache_clear()
    client = redis.Redis.from_url(redis_url)
    broker = RedisBroker(url=redis_url, namespace=BROKER_NAMESPACE)
    broker.add_middleware(FailureRecorder(lambda: client, get_settings().redis_namespace))
    calls: Counter = Counter()
    lock = threading.Lock()

    def attempt(name: str, key) -> None:
        with lock:
            calls[name, key] += 1
        if client.sismember(FAILING, str(key)):
            raise RuntimeError(f"{name} {key} refused by the test")

    @dramatiq.actor(broker=broker, queue_name="dlq-orders", max_retries=0)
    def book_order(order_id: int, note: str = "") -> None:
        attempt("book_order", order_id)

    @dramatiq.actor(broker=broker, queue_name="dlq-stock", max_retries=2, min_backoff=10, max_backoff=50)
    def push_stock(sku: str) -> None:
        attempt("push_stock", sku)

    state = SimpleNamespace(url=redis_url, broker=broker, redis=client, calls=calls, book_order=book_order,
                            push_stock=push_stock, worker=None)

    def start_worker():
        state.worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
        state.worker.start()

    def stop_worker():
        if state.worker is not None:
            state.worker.stop()
            state.worker = None

    state.start_worker, state.stop_worker = start_worker, stop_worker
    start_worker()
    yield state
    stop_worker()
    broker.close()
    get_settings.cache_clear()


def fail(fleet, *keys) -> None:
    fleet.redis.sadd(FAILING, *map(str, keys))


def heal(fleet, *keys) -> None:
    fleet.redis.srem(FAILING, *map(str, keys))


def dead_letters(fleet, queue: str) -> int:
    return fleet.redis.zcard(f"{BROKER_NAMESPACE}:{queue}.XQ")


def wait_dead(fleet, queue: str, count: int) -> None:
    wait_until(lambda: dead_letters(fleet, queue) == count, 30, what=f"{count} dead letters on {queue}")


def stocksync(*args: str, input: str | None = None):
    from workers.cli import main

    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def listed(*args: str) -> list[dict]:
    result = stocksync("dlq", "list", "--json", *args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture
def three_orders_and_a_push(fleet):
    """Orders 1, 2 ("vip") and 3 dead after one attempt each; push of SKU-9 dead after three."""
    fail(fleet, 1, 2, 3, "SKU-9")
    fleet.book_order.send(1)
    fleet.book_order.send(2, note="vip customer")
    fleet.book_order.send(3)
    fleet.push_stock.send("SKU-9")
    wait_dead(fleet, "dlq-orders", 3)
    wait_dead(fleet, "dlq-stock", 1)
    return fleet


def test_list_shows_every_dead_letter_with_its_error_and_filters_them(three_orders_and_a_push):
    fleet = three_orders_and_a_push
    everything = listed()
    assert sorted((m["queue"], m["actor"], tuple(m["args"])) for m in everything) == [
        ("dlq-orders", "book_order", (1,)), ("dlq-orders", "book_order", (2,)), ("dlq-orders", "book_order", (3,)),
        ("dlq-stock", "push_stock", ("SKU-9",))]
    assert {m["error"] for m in everything if m["actor"] == "book_order"} == {
        f"RuntimeError: book_order {n} refused by the test" for n in (1, 2, 3)}
    push = next(m for m in everything if m["actor"] == "push_stock")
    assert push["attempts"] == 3 and fleet.calls["push_stock", "SKU-9"] == 3

    assert [m["actor"] for m in listed("--queue", "dlq-stock")] == ["push_stock"]
    assert len(listed("--actor", "book_order")) == 3
    assert [m["kwargs"] for m in listed("--grep", "VIP")] == [{"note": "vip customer"}]
    assert [m["args"] for m in listed("--grep", "book_order 3 refused")] == [[3]]
    assert len(listed("--since", "10m")) == 4
    assert listed("--since", (datetime.now(timezone.utc) + timedelta(minutes=1)).isoformat()) == []

    table = stocksync("dlq", "list")
    assert table.exit_code == 0
    assert "4 dead letter(s) (dlq-orders: 3, dlq-stock: 1)" in table.stdout
    assert push["message_id"] in table.stdout and "push_stock" in table.stdout


def test_show_gives_actor_arguments_error_traceback_attempts_and_times(three_orders_and_a_push):
    push = listed("--actor", "push_stock")[0]
    shown = stocksync("dlq", "show", push["message_id"])
    assert shown.exit_code == 0, shown.output
    out = shown.stdout
    assert "actor      push_stock" in out and "queue      dlq-stock" in out
    assert 'arg 0      "SKU-9"' in out
    assert "attempts   3 failed" in out
    assert "error      RuntimeError: push_stock SKU-9 refused by the test" in out
    assert "Traceback (most recent call last)" in out and "raise RuntimeError" in out
    for label in ("enqueued   20", "failed     20", "dead since 20"):
        assert label in out
    assert json.loads(stocksync("dlq", "show", push["message_id"], "--json").stdout)["redis_id"] == push["redis_id"]
    missing = stocksync("dlq", "show", "no-such-message")
    assert missing.exit_code == 1 and "no dead letter no-such-message" in missing.output


def test_retry_puts_a_message_back_on_its_queue_with_its_full_retry_budget(three_orders_and_a_push):
    fleet = three_orders_and_a_push
    push = listed("--actor", "push_stock")[0]
    # Still failing: the message gets three attempts again (max_retries=2), then dies again.
    retried = stocksync("dlq", "retry", push["message_id"])
    assert retried.exit_code == 0 and "put back 1 dead letter(s) (dlq-stock: 1)" in retried.stdout
    wait_until(lambda: fleet.calls["push_stock", "SKU-9"] == 6 and dead_letters(fleet, "dlq-stock") == 1, 30,
               what="three more attempts and a second death")
    again = listed("--actor", "push_stock")[0]
    assert again["message_id"] == push["message_id"] and again["redis_id"] != push["redis_id"]
    assert again["attempts"] == 3 and again["dead_letter_retries"] == 1

    # Fixed: the next retry succeeds, and the dead letter is gone.
    heal(fleet, "SKU-9")
    assert stocksync("dlq", "retry", push["message_id"]).exit_code == 0
    wait_until(lambda: fleet.calls["push_stock", "SKU-9"] == 7, 30, what="the successful attempt")
    assert dead_letters(fleet, "dlq-stock") == 0
    history = DeadLetterQueues(fleet.redis).history()
    assert [(e["action"], e["message_id"]) for e in history] == [("retry", push["message_id"])] * 2
    assert history[0]["error"].startswith("RuntimeError: push_stock SKU-9")


def test_retry_all_with_filters_moves_only_what_matches(three_orders_and_a_push):
    fleet = three_orders_and_a_push
    heal(fleet, 1, 2, 3)
    result = stocksync("dlq", "retry", "--all", "--actor", "book_order", "--grep", "vip")
    assert result.exit_code == 0 and "put back 1 dead letter(s) (dlq-orders: 1)" in result.stdout
    wait_until(lambda: fleet.calls["book_order", 2] == 2, 30, what="order 2 to run again")
    assert stocksync("dlq", "retry", "--all", "--queue", "dlq-orders").exit_code == 0
    wait_until(lambda: fleet.calls["book_order", 1] == 2 and fleet.calls["book_order", 3] == 2, 30,
               what="orders 1 and 3 to run again")
    assert dead_letters(fleet, "dlq-orders") == 0 and dead_letters(fleet, "dlq-stock") == 1
    assert stocksync("dlq", "retry", "--all", "--queue", "dlq-orders").stdout.strip() == "no dead letters match"


def test_retry_arguments_are_checked(three_orders_and_a_push):
    assert stocksync("dlq", "retry").exit_code == 2
    assert stocksync("dlq", "retry", "some-id", "--all").exit_code == 2
    assert stocksync("dlq", "retry", "some-id", "--queue", "dlq-orders").exit_code == 2
    assert stocksync("dlq", "list", "--since", "yesterday").exit_code == 2
    unknown = stocksync("dlq", "retry", "some-id")
    assert unknown.exit_code == 1 and "no dead letter some-id" in unknown.output


def test_two_operators_retrying_at_once_move_each_message_exactly_once(fleet):
    orders = range(200)
    fail(fleet, *orders)
    for order in orders:
        fleet.book_order.send(order)
    wait_dead(fleet, "dlq-orders", 200)
    fleet.stop_worker()  # so that the queue shows exactly what the retries put on it
    queues = DeadLetterQueues(fleet.redis)
    letters = queues.select()
    original_ids = sorted(letter.message_id for letter in letters)

    results = []
    barrier = threading.Barrier(2)

    def operator(name: str) -> None:
        mine = DeadLetterQueues(redis.Redis.from_url(fleet.url))  # an operator of its own, on its own connection
        barrier.wait()
        results.append(mine.retry(letters, operator=name))

    threads = [threading.Thread(target=operator, args=(name,)) for name in ("ann@ops", "bob@ops")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sum(len(result.moved) for result in results) == 200
    assert sum(len(result.skipped) for result in results) == 200  # each saw the other's moves
    assert dead_letters(fleet, "dlq-orders") == 0
    queued_ids = [raw.decode() for raw in fleet.redis.lrange(f"{BROKER_NAMESPACE}:dlq-orders", 0, -1)]
    payloads = fleet.redis.hgetall(f"{BROKER_NAMESPACE}:dlq-orders.msgs")
    assert len(queued_ids) == len(set(queued_ids)) == len(payloads) == 200
    messages = [dramatiq.Message.decode(payloads[redis_id.encode()]) for redis_id in queued_ids]
    assert sorted(message.message_id for message in messages) == original_ids
    for message, redis_id in zip(messages, queued_ids):
        assert message.queue_name == "dlq-orders" and message.options["redis_message_id"] == redis_id
        assert "retries" not in message.options and message.options["dead_letter_retries"] == 1
    assert len(queues.history(limit=1000)) == 200

    # A worker runs every one of them once more, and they all succeed this time.
    heal(fleet, *orders)
    fleet.start_worker()
    wait_until(lambda: all(fleet.calls["book_order", order] == 2 for order in orders), 30,
               what="every retried order to run")
    fleet.broker.join("dlq-orders", timeout=10_000)
    assert dead_letters(fleet, "dlq-orders") == 0


def test_purge_asks_first_then_deletes_the_dead_letters_and_their_errors(three_orders_and_a_push):
    fleet = three_orders_and_a_push
    orders = listed("--queue", "dlq-orders")
    refused = stocksync("dlq", "purge", "--queue", "dlq-orders", input="n\n")
    assert refused.exit_code == 1 and "Delete 3 dead letter(s) (dlq-orders: 3) for good?" in refused.output
    assert dead_letters(fleet, "dlq-orders") == 3

    confirmed = stocksync("dlq", "purge", "--queue", "dlq-orders", input="y\n")
    assert confirmed.exit_code == 0 and "purged 3 dead letter(s) (dlq-orders: 3)" in confirmed.output
    assert dead_letters(fleet, "dlq-orders") == 0 and dead_letters(fleet, "dlq-stock") == 1
    assert fleet.redis.hlen(f"{BROKER_NAMESPACE}:dlq-orders.XQ.msgs") == 0
    assert not any(fleet.redis.exists(error_key("stocksync", m["message_id"])) for m in orders)
    assert {e["action"] for e in DeadLetterQueues(fleet.redis).history()} == {"purge"}

    assert stocksync("dlq", "purge", "--yes").exit_code == 0
    assert dead_letters(fleet, "dlq-stock") == 0
    assert stocksync("dlq", "list").stdout.strip() == "no dead letters"


def test_without_redis_the_commands_say_where_dead_letters_live(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "")
    get_settings.cache_clear()
    try:
        result = stocksync("dlq", "list")
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1 and "dead letters live in Redis: set REDIS_URL" in result.output


def test_an_unreachable_redis_is_one_line_without_its_password(monkeypatch):
    from runtime.local_servers import free_port

    monkeypatch.setenv("REDIS_URL", f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    try:
        result = stocksync("dlq", "list")
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1 and "cannot reach Redis" in result.output
    assert "hunter2" not in result.output


def test_since_accepts_durations_and_iso_times():
    now = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("1.5d", now) == now - timedelta(hours=36)
    assert parse_since("2026-11-22T08:00:00", now) == datetime(2026, 11, 22, 8, tzinfo=timezone.utc)
    assert parse_since("2026-11-22T08:00:00+01:00", now) == datetime(2026, 11, 22, 7, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="expected a duration"):
        parse_since("last tuesday", now)


def test_a_message_for_an_unknown_actor_is_dead_lettered_with_an_error_naming_it(fleet):
    # Sent by name, as a producer in another language would: no actor of this fleet has the name.
    message = dramatiq.Message(queue_name="dlq-orders", actor_name="book_ordr", args=(7,), kwargs={}, options={})
    fleet.broker.enqueue(message)
    wait_dead(fleet, "dlq-orders", 1)
    wait_until(lambda: fleet.redis.exists(error_key(get_settings().redis_namespace, message.message_id)), 10,
               what="the dead letter's error")
    stored = fleet.redis.get(error_key(get_settings().redis_namespace, message.message_id)).decode()
    assert "no actor named 'book_ordr'" in stored and "no exception recorded" not in stored
