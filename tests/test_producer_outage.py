"""The producer API, the buffer and the intake while a real redis-server is stopped and started again.

Each test has a redis-server of its own (the session's is shared by the other tests).  The
retry time is the production default (30 s) unless a test says why not.
"""
from __future__ import annotations

import http.client
import json
import logging
import threading
from datetime import datetime, timezone
from urllib.parse import urlsplit

import pytest
import redis as redis_lib

from core.events import StockEvent
from runtime.broker import build_broker
from runtime.local_servers import RedisServer, wait_until
from runtime.producer import BufferedStockEvents, EventsNotSent, StockEvents
from runtime.settings import Settings, get_settings
from sandbox.server import serve_in_thread
from workers.intake import auth
from workers.intake.app import build_intake_app

PRODUCER_KEY = "outage-producer-key"
SHOPIFY_SECRET = "outage-shopify-secret"
REFURBED_SECRET = "outage-refurbed-secret"


@pytest.fixture
def server(tmp_path):
    redis_server = RedisServer(tmp_path / "redis").start()
    yield redis_server
    redis_server.stop()


@pytest.fixture
def broker(server):
    broker = build_broker(Settings(redis_url=server.url))
    yield broker
    broker.close()


def topup(number: int) -> StockEvent:
    return StockEvent.of("stock_topup", marketplace="backmarket", sku=f"SKU-{number % 3}", quantity=1,
                         reference=f"PO-{number}")


def queued_events(server: RedisServer) -> list[dict]:
    """Every event waiting on the stock-events queue, single or batched."""
    client = redis_lib.Redis.from_url(server.url)
    try:
        found = []
        for raw in client.hvals("dramatiq:stock-events.msgs"):
            message = json.loads(raw)
            items = message["args"][0] if message["actor_name"] == "stock_events_batch" else [
                {"kind": message["actor_name"], "fields": message["kwargs"]}]
            found.extend(items)
        return found
    finally:
        client.close()


def retrying(caplog) -> bool:
    return "Redis is unavailable" in caplog.text


def test_a_send_during_a_redis_restart_waits_and_is_enqueued_once(server, broker, caplog):
    events = StockEvents(broker)
    assert events.retry_s == 30.0  # the production default
    server.stop()
    outcome: dict = {}

    def produce():
        try:
            outcome["message"] = events.send(topup(1))
        except BaseException as error:  # the test reads it below
            outcome["error"] = error

    with caplog.at_level(logging.WARNING, logger="runtime.producer"):
        sender = threading.Thread(target=produce)
        sender.start()
        wait_until(lambda: retrying(caplog), 10, what="the producer retrying")
        assert sender.is_alive()  # still waiting for Redis: nothing raised, nothing dropped
        server.start()
        sender.join(30)
    assert "error" not in outcome and outcome["message"].actor_name == "stock_topup"
    assert [item["fields"]["reference"] for item in queued_events(server)] == ["PO-1"]


def test_after_the_retry_time_one_error_names_every_event_not_sent(server, broker):
    # A 1 s retry time rather than 30 s: the outage outlasts it either way, and the test stays short.
    events = StockEvents(broker, retry_s=1.0)
    server.stop()
    batch = [topup(n) for n in range(45)]
    with pytest.raises(EventsNotSent) as refused:
        events.send_batch(batch)
    assert refused.value.events == batch and not refused.value.permanent
    assert "45 stock event(s) not enqueued" in str(refused.value)
    assert "backmarket:topup:PO-0" in str(refused.value) and "and 35 more" in str(refused.value)
    with pytest.raises(EventsNotSent) as refused:
        events.send_in_order([topup(100), topup(101)])
    assert [event.reference for event in refused.value.events] == ["PO-100", "PO-101"]
    server.start()
    assert events.send_batch(batch[:3]) and len(queued_events(server)) == 3


def test_the_buffer_rides_out_a_restart_and_loses_nothing(server, broker, caplog):
    with caplog.at_level(logging.WARNING, logger="runtime.producer"):
        buffer = BufferedStockEvents(StockEvents(broker), max_events=20, max_delay_s=0.005)
        server.stop()
        for number in range(30):
            buffer.send(topup(number))
        wait_until(lambda: retrying(caplog), 10, what="the buffer retrying")
        server.start()
        buffer.close()
    assert sorted(item["fields"]["reference"] for item in queued_events(server)) == sorted(
        f"PO-{n}" for n in range(30))


def test_the_buffer_hands_back_what_it_could_not_send(server, broker, caplog):
    # A 0.5 s retry time: what is tested is what happens after it, not its length.
    buffer = BufferedStockEvents(StockEvents(broker, retry_s=0.5), max_events=20, max_delay_s=0.005)
    server.stop()
    with caplog.at_level(logging.ERROR, logger="runtime.producer"):
        for number in range(3):
            buffer.send(topup(number))
        wait_until(lambda: "not enqueued" in caplog.text, 10, what="the buffer giving up")
    with pytest.raises(EventsNotSent) as refused:
        buffer.send(topup(3))
    assert sorted(event.reference for event in refused.value.events) == ["PO-0", "PO-1", "PO-2"]
    buffer.send(topup(4))
    with pytest.raises(EventsNotSent) as refused:
        buffer.close()
    assert [event.reference for event in refused.value.events] == ["PO-4"]


# -- the intake ------------------------------------------------------------------------------------


@pytest.fixture
def intake(server, broker, monkeypatch, database_url):
    monkeypatch.setenv("REDIS_URL", server.url)
    get_settings.cache_clear()
    settings = Settings(redis_url=server.url, producer_hmac_key=PRODUCER_KEY, shopify_webhook_secret=SHOPIFY_SECRET,
                        refurbed_webhook_secret=REFURBED_SECRET, intake_read_pool_size=1)
    app = serve_in_thread(build_intake_app(settings, broker=broker, database_url=database_url))
    yield app
    app.stop()
    get_settings.cache_clear()


def post(app, path: str, raw: bytes, headers: dict) -> tuple[int, dict, dict]:
    parts = urlsplit(app.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("POST", path, body=raw, headers={"Content-Type": "application/json", **headers})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        connection.close()


def the_three_posts(app) -> list[tuple[int, dict, dict]]:
    event = json.dumps({"type": "stock_topup", "marketplace": "backmarket", "sku": "SKU-1", "quantity": 2,
                        "reference": "PO-7"}).encode()
    # Made now: a delivery older than WEBHOOK_MAX_AGE_S is refused.
    order = json.dumps({"id": 5, "created_at": datetime.now(timezone.utc).isoformat(),
                        "line_items": [{"id": 50, "sku": "SKU-2", "quantity": 1}]}).encode()
    return [
        post(app, "/events", event, {auth.SIGNATURE_HEADER: auth.producer_signature(PRODUCER_KEY, event)}),
        post(app, "/webhooks/shopify", order, {"X-Shopify-Hmac-Sha256": auth.shopify_hmac(SHOPIFY_SECRET, order),
                                               "X-Shopify-Topic": "orders/create", "X-Shopify-Webhook-Id": "w-1"}),
        post(app, f"/webhooks/refurbed/{REFURBED_SECRET}", b'{"order_id": 77}', {}),
    ]


def test_the_intake_answers_503_with_retry_after_while_redis_is_down(server, intake):
    server.stop()
    answers = the_three_posts(intake)
    assert [status for status, _, _ in answers] == [503, 503, 503]
    assert all(headers["Retry-After"] == "10" and "retry later" in body["error"] for _, headers, body in answers)
    server.start()
    # The senders retry: now taken, and the Shopify delivery was not remembered as seen while refused.
    assert [status for status, _, _ in the_three_posts(intake)] == [202, 202, 202]
    assert sorted(item["kind"] for item in queued_events(server)) == ["order_created", "stock_topup"]
