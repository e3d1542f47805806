"""Order polling re-sends the order lines whose events did not book (pipelines/orders.py), on real Redis and
PostgreSQL."""
from __future__ import annotations

import asyncio
import time

import redis
import redis.asyncio
from dramatiq import Message

from actors import events
from pipelines import orders
from db.engine import session_factory
from runtime import resources
from runtime.broker import build_broker
from core.events import StockEvent
from runtime.settings import Settings, get_settings
from sandbox.backmarket import BackMarketSandbox
from tests.fleet import seed_catalogue


def chain(line: str, sku: str):
    return [StockEvent.of("order_created", marketplace="backmarket", order_id=f"order-{line}", order_line_id=line,
                       sku=sku, quantity=1, source="poll")]


def test_a_polled_line_whose_event_died_is_sent_again_until_booked_or_given_up(redis_url, database_url,
                                                                                monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url)
    get_settings.cache_clear()
    resources.database_url.cache_clear()
    sandbox = BackMarketSandbox(listings=5, seed=3, token="t", quota_requests=0)
    seed_catalogue(session_factory(database_url), [sandbox.listing(i) for i in range(sandbox.listing_count())])
    broker = build_broker(Settings(redis_url=redis_url))
    client = redis.Redis.from_url(redis_url)
    booked, lost = chain("L-booked", sandbox.listing(0)["sku"]), chain("L-lost", sandbox.listing(1)["sku"])

    def queued_lines() -> list[str]:
        return sorted(Message.decode(raw).kwargs["order_line_id"] for raw in client.hvals("dramatiq:stock-events.msgs"))

    async def scenario():
        state = orders.IntakeState(redis.asyncio.Redis.from_url(redis_url), "stocksync", "backmarket")
        sent_at = time.time()
        assert await state.send_new([booked, lost], broker) == 2
        await asyncio.to_thread(events.order_created.fn, **booked[0].fields)  # one books ...
        client.delete("dramatiq:stock-events", "dramatiq:stock-events.msgs")  # ... the other's message died
        grace = get_settings().intake_orders_resend_after_s
        assert await state.resend_unbooked(broker, now=sent_at + grace / 2) == 0  # not due yet
        assert await state.resend_unbooked(broker, now=sent_at + grace + 1) == 1
        assert queued_lines() == ["L-lost"]
        assert list(client.hkeys(state.unconfirmed_key)) == [b"order-L-lost:L-lost:order_created"]
        # Still not booked: sent once more (3 sends in all), then left to the dead letters and forgotten.
        assert await state.resend_unbooked(broker, now=sent_at + 2 * grace + 2) == 1
        assert await state.resend_unbooked(broker, now=sent_at + 3 * grace + 3) == 0
        assert client.hlen(state.unconfirmed_key) == 0
        await state.redis.aclose()

    try:
        asyncio.run(scenario())
    finally:
        broker.close()
        get_settings.cache_clear()
        resources.database_url.cache_clear()
