"""The events actors refuse a bad message for good, naming the field (no database needed)."""
from __future__ import annotations

import pytest

from actors import events
from actors.retry import MalformedMessage

GOOD_ORDER = {"marketplace": "backmarket", "order_id": "5978", "order_line_id": "37195", "sku": "SKU-1",
              "quantity": 1, "event_time": "2026-11-23T09:35:24Z", "source": "webhook"}


@pytest.mark.parametrize("actor, changes, field", [
    (events.order_created, {"event_time": "yesterday"}, "event_time"),
    (events.order_created, {"event_time": "2026-11-23T09:35:24"}, "event_time"),  # no zone: ambiguous
    (events.order_created, {"quantity": "3"}, "quantity"),
    (events.order_cancelled, {"quantity": 0}, "quantity"),
    (events.order_created, {"order_line_id": None}, "order_line_id"),
    (events.order_created, {"sku": ""}, "sku"),
    (events.order_created, {"marketplace": "Back Market"}, "marketplace"),
])
def test_malformed_order_messages_name_the_field(actor, changes, field):
    with pytest.raises(MalformedMessage, match=field) as refused:
        actor(**{**GOOD_ORDER, **changes})
    assert refused.value.permanent
    # transient_only never retries it: it goes straight to the dead letters.
    assert actor.options["retry_when"](0, refused.value) is False


def test_malformed_topup_and_adjustment_messages_name_the_field():
    with pytest.raises(MalformedMessage, match="reference"):
        events.stock_topup(marketplace="backmarket", sku="SKU-1", quantity=2, reference="")
    with pytest.raises(MalformedMessage, match="change"):
        events.manual_adjustment(marketplace="backmarket", sku="SKU-1", change=0, reference="count-1")
    with pytest.raises(MalformedMessage, match="quantity"):
        events.stock_topup(marketplace="backmarket", sku="SKU-1", quantity=-4, reference="PO-1")


def test_event_time_is_parsed_to_utc():
    from core.events import parse_event_time

    moment = parse_event_time("2026-11-23T10:35:24+01:00")
    assert moment.isoformat() == "2026-11-23T09:35:24+00:00"


@pytest.mark.parametrize("batch, words", [
    ([], "non-empty list"),
    ("not a list", "non-empty list"),
    ([{"kind": "order_created", "fields": GOOD_ORDER}, {"kind": "refund", "fields": {}}], "event 1: kind must be"),
    ([{"kind": "order_created", "fields": {**GOOD_ORDER, "colour": "red"}}], "event 0 .order_created.*colour"),
    ([{"kind": "order_created", "fields": GOOD_ORDER}, {"kind": "order_created", "fields": {**GOOD_ORDER,
                                                                                          "quantity": 0}}],
     "event 1 .order_created.*quantity"),
    ([["order_created"]], "event 0 must be an object"),
])
def test_a_malformed_batch_is_refused_for_good_naming_the_event(batch, words):
    with pytest.raises(MalformedMessage, match=words) as refused:
        events.stock_events_batch(batch)
    assert events.stock_events_batch.options["retry_when"](0, refused.value) is False


def test_the_producer_splits_a_batch_into_messages_of_the_size_asked():
    from dramatiq.brokers.stub import StubBroker

    from runtime.producer import MAX_BATCH, StockEvents, make_event

    broker = StubBroker()
    broker.declare_actor(events.stock_events_batch)
    sent = [make_event("order_created", marketplace="backmarket", order_id=f"o{n}", order_line_id=f"l{n}",
                       sku="SKU-1", quantity=1, event_time="2026-11-23T09:35:24Z") for n in range(7)]
    messages = StockEvents(broker).send_batch(sent, batch_size=3)
    assert [len(message.args[0]) for message in messages] == [3, 3, 1]
    assert {message.actor_name for message in messages} == {"stock_events_batch"}
    assert messages[0].args[0][0] == {"kind": "order_created", "fields": sent[0].fields}
    with pytest.raises(ValueError, match="batch_size"):
        StockEvents(broker).send_batch(sent, batch_size=MAX_BATCH + 1)


def _order(number: int):
    from runtime.producer import make_event

    return make_event("order_created", marketplace="backmarket", order_id=f"o{number}", order_line_id=f"l{number}",
                      sku="SKU-1", quantity=1, event_time="2026-11-23T09:35:24Z")


def _batches(broker) -> list[list]:
    from dramatiq import Message

    return [Message.decode(raw).args[0] for queue in broker.queues.values() for raw in list(queue.queue)]


def test_the_buffer_sends_full_batches_at_once_and_the_rest_on_close():
    from dramatiq.brokers.stub import StubBroker

    from runtime.producer import BufferedStockEvents, StockEvents

    broker = StubBroker()
    broker.declare_actor(events.stock_events_batch)
    with BufferedStockEvents(StockEvents(broker), max_events=20, max_delay_s=60) as buffer:
        for number in range(45):
            buffer.send(_order(number))
        # Two batches are full: they go without waiting for the (long) delay.
        from runtime.local_servers import wait_until

        wait_until(lambda: len(_batches(broker)) == 2, 10, what="the two full batches")
    batches = _batches(broker)
    assert [len(batch) for batch in batches] == [20, 20, 5]
    assert [item["fields"]["order_id"] for batch in batches for item in batch] == [f"o{n}" for n in range(45)]


def test_the_buffer_sends_a_lone_event_after_its_delay_and_keeps_a_batch_redis_refused():
    from dramatiq.brokers.stub import StubBroker

    from runtime.local_servers import wait_until
    from runtime.producer import BufferedStockEvents, StockEvents

    broker = StubBroker()
    broker.declare_actor(events.stock_events_batch)
    refusals = []
    enqueue = broker.enqueue

    def flaky_enqueue(message, **options):
        if not refusals:
            refusals.append(message)
            raise ConnectionError("redis went away")
        return enqueue(message, **options)

    broker.enqueue = flaky_enqueue
    buffer = BufferedStockEvents(StockEvents(broker), max_events=20, max_delay_s=0.01)
    buffer.send(_order(1))
    # Not full and not closed: the delay alone sends it, after one refused attempt.
    wait_until(lambda: len(_batches(broker)) == 1, 10, what="the lone event's batch")
    buffer.close()
    assert len(refusals) == 1 and [len(batch) for batch in _batches(broker)] == [1]
    with pytest.raises(RuntimeError, match="closed"):
        buffer.send(_order(2))
