"""Order intake actors on the sandboxes: the Back Market poll and the Refurbed webhook follow-up.

The actors run in this process (their functions, on a fresh event loop), with the stub broker and
fakeredis; what they emit is read off the broker's queues.  The events pipeline's own actors, and
the whole path on real processes, are tested elsewhere (``test_intake_e2e.py``).
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from dramatiq import Message

from actors import orders
from actors.retry import MalformedMessage
from pipelines import orders as order_pipeline
from clients.backmarket_orders import Order, OrderLine
from clients.errors import NotFound
from clients.refurbed import RefurbedOrder, RefurbedOrderItem
from runtime import resources
from runtime.settings import get_settings
from sandbox.backmarket import BackMarketSandbox
from sandbox.refurbed import RefurbedSandbox
from sandbox.server import serve_in_thread

TOKEN = "orders-intake-token"


def run(coroutine_function, *args):
    """Run ``coroutine_function(*args)`` on a fresh loop, closing its HTTP session and Redis client after."""
    async def main():
        try:
            return await coroutine_function(*args)
        finally:
            await resources.close_loop_resources()

    return asyncio.run(main())


def poll(marketplace: str):
    """What the ``poll_orders`` actor does, with its counts."""
    return run(orders.walk_orders_of, marketplace, orders.poll_orders.broker)


def notified(order_id: str) -> int:
    """What the ``refurbed_order_notified`` actor does, with the number of events sent."""
    return run(orders.book_refurbed_order, order_id, orders.refurbed_order_notified.broker)


def enqueued(broker) -> list[Message]:
    return [Message.decode(raw) for queue in broker.queues.values() for raw in list(queue.queue)]


def summary(messages: list[Message]) -> list[tuple]:
    """(actor, order, line, quantity, chained actor or None), sorted."""
    return sorted((m.actor_name, m.kwargs["order_id"], m.kwargs["order_line_id"], m.kwargs["quantity"],
                   m.options.get("pipe_target", {}).get("actor_name")) for m in messages)


@pytest.fixture
def env(monkeypatch, database_url):
    backmarket = BackMarketSandbox(listings=30, seed=8, token=TOKEN, quota_requests=0)
    refurbed = RefurbedSandbox(token=TOKEN)
    servers = [serve_in_thread(backmarket.build_app()), serve_in_thread(refurbed.build_app())]
    # The accounts (backmarket, refurbed) are rows of this database.
    for name, value in {"DATABASE_URL": database_url, "REDIS_URL": "", "BACKMARKET_BASE_URL": servers[0].url, "BACKMARKET_TOKEN": TOKEN,
                        "REFURBED_BASE_URL": servers[1].url, "REFURBED_TOKEN": TOKEN,
                        "INTAKE_ORDERS_OVERLAP_S": "60", "REFURBED_QUOTA_REQUESTS": "1000"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    resources.database_url.cache_clear()
    resources.sync_redis().flushall()
    broker = orders.poll_orders.broker
    broker.flush_all()
    yield backmarket, refurbed, broker
    broker.flush_all()
    for server in servers:
        server.stop()
    get_settings.cache_clear()
    resources.database_url.cache_clear()


# -- Back Market poll --------------------------------------------------------------------------------


def test_poll_emits_each_line_once_and_cancellations_chained(env):
    backmarket, _, broker = env
    first = backmarket.orders.place_order([(backmarket.listing(0)["id"], 2), (backmarket.listing(1)["id"], 1)],
                                          oversell=True)
    second = backmarket.orders.place_order([(backmarket.listing(2)["id"], 1)], oversell=True)
    counts = poll("backmarket")
    assert (counts["pages"], counts["orders"], counts["events"]) == (1, 2, 3)
    lines = [line["id"] for line in first["orderlines"]]
    assert summary(enqueued(broker)) == [
        ("order_created", str(first["order_id"]), str(lines[0]), 2, None),
        ("order_created", str(first["order_id"]), str(lines[1]), 1, None),
        ("order_created", str(second["order_id"]), str(second["orderlines"][0]["id"]), 1, None)]
    created = enqueued(broker)[0]
    assert created.kwargs["marketplace"] == "backmarket" and created.kwargs["source"] == "poll"
    assert created.kwargs["event_time"] == datetime.fromisoformat(first["date_creation"]).isoformat()

    # Nothing new: the overlap is read again, nothing is sent again.
    broker.flush_all()
    assert poll("backmarket")["events"] == 0
    assert enqueued(broker) == []

    # A line cancelled and a new order: only those are sent; the cancel is chained behind its create.
    cancelled = backmarket.orders.set_line_state(first["order_id"], lines[1], 4)
    third = backmarket.orders.place_order([(backmarket.listing(3)["id"], 1)], oversell=True)
    counts = poll("backmarket")
    assert counts["events"] == 3
    assert summary(enqueued(broker)) == [
        ("order_created", str(first["order_id"]), str(lines[1]), 1, "order_cancelled"),
        ("order_created", str(third["order_id"]), str(third["orderlines"][0]["id"]), 1, None)]
    chained = [m for m in enqueued(broker) if m.options.get("pipe_target")][0].options["pipe_target"]
    assert chained["kwargs"]["event_time"] == datetime.fromisoformat(cancelled["date_modification"]).isoformat()
    assert counts["watermark"] == datetime.fromisoformat(third["date_modification"]).isoformat()


def test_poll_reads_pages_of_50_from_the_watermark_minus_the_overlap(env):
    backmarket, _, broker = env
    clock = [datetime.now(timezone.utc) - timedelta(hours=2)]
    backmarket.orders.now = lambda: clock[0]
    for index in range(120):
        backmarket.orders.place_order([(backmarket.listing(index % 30)["id"], 1)], oversell=True)
        clock[0] += timedelta(seconds=30)
    counts = poll("backmarket")
    assert (counts["pages"], counts["orders"], counts["events"]) == (3, 120, 120)
    assert backmarket.stats()["by_endpoint"]["GET /ws/orders"] == 3
    # The next walk starts 60 s (the overlap) before the newest modification seen: 3 orders again.
    broker.flush_all()
    counts = poll("backmarket")
    assert (counts["pages"], counts["orders"], counts["events"]) == (1, 3, 0)


def test_a_second_poll_while_one_runs_stops_at_once(env):
    _, _, broker = env
    settings = get_settings()

    async def held_lock():
        state = order_pipeline.IntakeState(resources.async_redis(), settings.redis_namespace, "backmarket")
        assert await state.lock()
        try:
            return await orders.walk_orders_of("backmarket", orders.poll_orders.broker)
        finally:
            await state.unlock()

    assert run(held_lock) is None


def test_poll_refuses_unknown_marketplaces(env):
    with pytest.raises(MalformedMessage, match="no account 'ebay'"):
        poll("ebay")


# -- Refurbed ----------------------------------------------------------------------------------------


def test_refurbed_notification_refetches_the_order_and_books_each_item(env):
    _, refurbed, broker = env
    order = refurbed.place_order(["RB-A", "RB-A", "RB-B"], notify=False)
    assert notified(order["id"]) == 3
    messages = enqueued(broker)
    assert sorted((m.kwargs["sku"], m.kwargs["quantity"], m.kwargs["source"]) for m in messages) == [
        ("RB-A", 1, "webhook"), ("RB-A", 1, "webhook"), ("RB-B", 1, "webhook")]
    assert {m.kwargs["marketplace"] for m in messages} == {"refurbed"}
    assert refurbed.stats()["requests"] == {"GetOrder": 1}
    # The same notification again (Refurbed delivers at least once): fetched again, nothing re-sent.
    broker.flush_all()
    assert notified(order["id"]) == 0
    assert enqueued(broker) == []


def test_refurbed_cancelled_item_is_booked_as_create_then_cancel(env):
    _, refurbed, broker = env
    order = refurbed.place_order(["RB-A", "RB-B"], notify=False)
    notified(order["id"])
    broker.flush_all()
    refurbed.set_item_state(order["items"][1]["id"], "CANCELLED")
    # Webhooks announce new orders only: the backstop walk is what sees the cancellation.
    counts = poll("refurbed")
    assert counts["events"] == 2
    assert summary(enqueued(broker)) == [("order_created", order["id"], order["items"][1]["id"], 1,
                                          "order_cancelled")]


def test_refurbed_walk_emits_what_no_webhook_brought(env):
    _, refurbed, broker = env
    placed = [refurbed.place_order([f"RB-{n}"], notify=False) for n in range(3)]
    counts = poll("refurbed")
    assert (counts["orders"], counts["events"]) == (3, 3)
    assert sorted(m.kwargs["order_id"] for m in enqueued(broker)) == [order["id"] for order in placed]


def test_refurbed_walk_reads_new_orders_from_its_watermark_and_the_open_ones_by_id(env):
    _, refurbed, broker = env
    clock = [datetime.now(timezone.utc) - timedelta(hours=3)]
    refurbed.now = lambda: clock[0]
    placed = []
    for number in range(150):
        placed.append(refurbed.place_order([f"RB-{number}"], notify=False))
        clock[0] += timedelta(seconds=30)
    items = [order["items"][0]["id"] for order in placed]

    def list_calls() -> int:
        return refurbed.stats()["requests"].get("ListOrders", 0)

    # The first walk reads the whole window; every order is open (its item NEW).
    counts = poll("refurbed")
    assert (counts["pages"], counts["orders"], counts["events"], counts["open"]) == (2, 150, 150, 150)
    assert list_calls() == 2
    # 140 shipped (settled), 8 still NEW, one ACCEPTED, one cancelled.
    for item in items[:140] + items[148:149]:
        refurbed.set_item_state(item, "ACCEPTED")
    for item in items[:140]:
        refurbed.set_item_state(item, "SHIPPED")
    refurbed.set_item_state(items[149], "CANCELLED")
    broker.flush_all()
    counts = poll("refurbed")
    # Released since the newest one seen minus the overlap: the last order (1 page); the 150 left open by id (2).
    assert (counts["pages"], counts["orders"], counts["events"], counts["open"]) == (3, 150, 2, 9)
    assert summary(enqueued(broker)) == [("order_created", placed[149]["id"], items[149], 1, "order_cancelled")]
    # Now only the 9 open ones are read by id, and what was released since: 2 pages, not the window's 2 of 100.
    clock[0] = datetime.now(timezone.utc)
    new = refurbed.place_order(["RB-new"], notify=False)
    refurbed.set_item_state(items[145], "CANCELLED")
    broker.flush_all()
    calls = list_calls()
    counts = poll("refurbed")
    assert (counts["pages"], counts["orders"], counts["events"], counts["open"]) == (2, 11, 3, 9)
    assert list_calls() - calls == 2
    assert summary(enqueued(broker)) == sorted([("order_created", placed[145]["id"], items[145], 1, "order_cancelled"),
                                                ("order_created", new["id"], new["items"][0]["id"], 1, None)])
    # Redis lost the walk's state: the next walk reads the whole window again (and sends nothing twice).
    resources.sync_redis().delete(f"{get_settings().redis_namespace}:orders:refurbed:open-orders")
    counts = poll("refurbed")
    assert (counts["pages"], counts["orders"], counts["events"], counts["open"]) == (2, 151, 0, 9)


def test_refurbed_unknown_order_is_a_permanent_error(env):
    with pytest.raises(NotFound) as error:
        notified("12345")
    assert error.value.permanent
    with pytest.raises(MalformedMessage):
        notified("12a")


def test_refurbed_items_without_sku_are_left_out():
    order = RefurbedOrder(id="1", state="NEW", released_at="2026-11-23T09:00:00Z", raw={}, items=(
        RefurbedOrderItem(id="10", order_id="1", sku="", state="NEW", name=None),
        RefurbedOrderItem(id="11", order_id="1", sku="S", state="REJECTED", name=None),
        RefurbedOrderItem(id="12", order_id="1", sku="T", state="UNSPECIFIED", name=None)))
    chains = order_pipeline.refurbed_order_events(order, observed_at=datetime.now(timezone.utc), source="webhook")
    assert [[event.kind for event in chain] for chain in chains] == [["order_created", "order_cancelled"]]
    assert chains[0][0].fields["event_time"] == "2026-11-23T09:00:00+00:00"


def test_backmarket_lines_that_cannot_be_booked_do_not_stop_the_walk():
    now = datetime.now(timezone.utc)
    ahead = (now + timedelta(hours=1)).isoformat()  # Back Market's clock ahead of ours
    order = Order(order_id=7, state=1, date_creation=ahead, date_modification=ahead, country_code="fr-fr",
                  orderlines=(OrderLine(id=1, sku="X" * 300, listing_id=None, quantity=1, state=1, date_creation=ahead),
                              OrderLine(id=2, sku="OK", listing_id=None, quantity=2, state=4, date_creation=ahead),
                              OrderLine(id=3, sku="NEW", listing_id=None, quantity=1, state=7, date_creation=ahead)))
    [chain] = order_pipeline.backmarket_order_events(order, now=now)
    assert [(event.kind, event.fields["order_line_id"]) for event in chain] == [("order_created", "2"),
                                                                                ("order_cancelled", "2")]
    assert {event.fields["event_time"] for event in chain} == {now.isoformat()}
