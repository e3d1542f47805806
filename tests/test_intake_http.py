"""The HTTP intake's webhooks and signed endpoint, over HTTP, with the stub broker and fakeredis.

What is checked is what got enqueued (or not): the events pipeline's actors are tested on their
own, and ``test_intake_e2e.py`` runs the whole path on real worker processes.
"""
from __future__ import annotations

import http.client
import json
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import dramatiq
import pytest
from dramatiq import Message

from core.events import StockEvent
from db import accounts as account_rows
from runtime import resources
from runtime.producer import StockEvents
from runtime.settings import Settings, get_settings
from sandbox.server import serve_in_thread
from tests.test_read_api import READ_API_TOKENS, get
from workers.intake import auth
from workers.intake.app import RedactingAccessLogger, build_intake_app, redact_path

REFURBED_SECRET = "rb-url-secret-5f1c"
SHOPIFY_SECRET = "shpss_test_secret"
PRODUCER_KEY = "producer-key-9a7"


@pytest.fixture
def intake(monkeypatch, database_url):
    """The intake on a free port, the fleet's stub broker (flushed) and fakeredis."""
    monkeypatch.setenv("REDIS_URL", "")
    # The process's settings too: the intake reads its accounts and their webhook secrets
    # (runtime/accounts.py) from the process's DATABASE_URL and settings, not the app's.
    for name, value in (("DATABASE_URL", database_url), ("REFURBED_WEBHOOK_SECRET", REFURBED_SECRET),
                        ("SHOPIFY_WEBHOOK_SECRET", SHOPIFY_SECRET)):
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    resources.sync_redis().flushall()
    from workers import fleet

    broker = fleet.broker
    broker.flush_all()
    settings = Settings(refurbed_webhook_secret=REFURBED_SECRET, shopify_webhook_secret=SHOPIFY_SECRET,
                        producer_hmac_key=PRODUCER_KEY, intake_read_pool_size=1, read_api_tokens=READ_API_TOKENS)
    server = serve_in_thread(build_intake_app(settings, broker=broker, database_url=database_url))
    yield server, broker
    server.stop()
    broker.flush_all()
    get_settings.cache_clear()


def post(server, path: str, body: Any, headers: dict | None = None) -> tuple[int, Any]:
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        connection.request("POST", path, body=raw, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def enqueued(broker) -> list[Message]:
    """Every message waiting on the stub broker's queues."""
    return [Message.decode(raw) for queue in broker.queues.values() for raw in list(queue.queue)]


# -- Refurbed --------------------------------------------------------------------------------------


def test_refurbed_webhook_enqueues_a_refetch_of_the_order(intake):
    server, broker = intake
    status, body = post(server, f"/webhooks/refurbed/{REFURBED_SECRET}", {"order_id": 9100001})
    assert status == 202 and body["accepted"] is True and body["order_id"] == 9100001
    [message] = enqueued(broker)
    assert message.actor_name == "refurbed_order_notified" and message.kwargs["order_id"] == "9100001"
    assert message.message_id == body["message_id"]


@pytest.mark.parametrize("body, words", [
    (b"not json", "not valid JSON"),
    ({"id": 1}, "order_id"),
    ({"order_id": -4}, "positive integer"),
    ({"order_id": True}, "positive integer"),
    ({"order_id": "12a"}, "positive integer"),
    ([1], "order_id"),
])
def test_refurbed_bad_payloads_are_400_and_not_enqueued(intake, body, words):
    server, broker = intake
    status, answer = post(server, f"/webhooks/refurbed/{REFURBED_SECRET}", body)
    assert status == 400 and words in answer["error"]
    assert enqueued(broker) == []


def test_refurbed_wrong_secret_is_refused_and_the_secret_never_logged(intake):
    server, broker = intake
    status, answer = post(server, "/webhooks/refurbed/guess", {"order_id": 1})
    assert status == 403 and REFURBED_SECRET not in json.dumps(answer)
    assert post(server, "/webhooks/refurbed", {"order_id": 1})[0] == 404
    assert enqueued(broker) == []
    assert redact_path(f"/webhooks/refurbed/{REFURBED_SECRET}") == "/webhooks/refurbed/<redacted>"


def test_access_log_redacts_the_url_secret(caplog):
    class Request:
        method, path = "POST", f"/webhooks/refurbed/{REFURBED_SECRET}"

    class Response:
        status, body_length = 202, 10

    logger = logging.getLogger("test.access")
    with caplog.at_level(logging.INFO, logger="test.access"):
        RedactingAccessLogger(logger, "").log(Request(), Response(), 0.001)
    assert "/webhooks/refurbed/<redacted>" in caplog.text and REFURBED_SECRET not in caplog.text


# -- Shopify ---------------------------------------------------------------------------------------


EASTERN = timezone(timedelta(hours=-5))
CREATED = (datetime.now(timezone.utc) - timedelta(hours=2)).replace(microsecond=0)
CANCELLED = CREATED + timedelta(minutes=30)


def shopify_order(order_id: int = 820982911946154508, *, cancelled: bool = False) -> dict:
    # Shopify writes times in the shop's zone: the events carry them in UTC.
    return {"id": order_id, "created_at": CREATED.astimezone(EASTERN).isoformat(),
            "cancelled_at": CANCELLED.astimezone(EASTERN).isoformat() if cancelled else None,
            "line_items": [{"id": 466157049, "sku": "IPOD2008GREEN", "quantity": 1},
                           {"id": 518995019, "sku": "IPOD2008RED", "quantity": 2},
                           {"id": 703073504, "sku": "", "quantity": 1}]}


def shopify_post(server, order: dict, *, topic: str = "orders/create", webhook_id: str = "b54557e4-1",
                 secret: str = SHOPIFY_SECRET, raw: bytes | None = None,
                 shop: str = "stocksync-test.myshopify.com") -> tuple[int, Any]:
    body = raw if raw is not None else json.dumps(order).encode()
    headers = {"X-Shopify-Hmac-Sha256": auth.shopify_hmac(secret, body), "X-Shopify-Topic": topic,
               "X-Shopify-Webhook-Id": webhook_id, "X-Shopify-Shop-Domain": shop}
    return post(server, "/webhooks/shopify", body, headers)


def test_shopify_order_created_enqueues_one_event_per_line_with_a_sku(intake):
    server, broker = intake
    status, answer = shopify_post(server, shopify_order())
    assert status == 202 and answer == {"accepted": True, "events": 2, "skipped_lines": ["703073504"]}
    messages = sorted(enqueued(broker), key=lambda m: m.kwargs["order_line_id"])
    assert [(m.actor_name, m.kwargs["sku"], m.kwargs["quantity"], m.kwargs["marketplace"]) for m in messages] == [
        ("order_created", "IPOD2008GREEN", 1, "shopify"), ("order_created", "IPOD2008RED", 2, "shopify")]
    assert messages[0].kwargs["order_id"] == "820982911946154508"
    assert messages[0].kwargs["event_time"] == CREATED.isoformat()


def test_shopify_redelivery_is_answered_and_not_enqueued_again(intake):
    server, broker = intake
    assert shopify_post(server, shopify_order())[0] == 202
    status, answer = shopify_post(server, shopify_order())
    assert status == 200 and answer["duplicate"] is True
    assert len(enqueued(broker)) == 2
    # Another delivery id of the same order is enqueued again: the ledger key makes it a no-op.
    assert shopify_post(server, shopify_order(), webhook_id="b54557e4-2")[0] == 202


def test_shopify_cancellation_books_create_then_cancel_in_order(intake):
    server, broker = intake
    status, answer = shopify_post(server, shopify_order(cancelled=True), topic="orders/cancelled")
    assert status == 202 and answer["events"] == 4
    first = enqueued(broker)
    # Only the creations are on the queues; each cancel is chained behind its creation.
    assert {m.actor_name for m in first} == {"order_created"}
    chained = [m.options["pipe_target"] for m in first]
    assert {target["actor_name"] for target in chained} == {"order_cancelled"}
    assert all(target["options"]["pipe_ignore"] for target in chained)
    assert chained[0]["kwargs"]["event_time"] == CANCELLED.isoformat()


def refund_lines(*items: tuple[int, int, str]) -> list[dict]:
    """One refund of ``(line item id, quantity, restock type)`` lines, in Shopify's webhook (REST) shape."""
    return [{"id": 509562969, "refund_line_items": [
        {"id": 104689539 + n, "line_item_id": line, "quantity": quantity, "restock_type": kind, "location_id": None}
        for n, (line, quantity, kind) in enumerate(items)]}]


def test_a_cancellation_carries_what_shopify_restocked_of_each_line(intake):
    server, broker = intake
    # The green line kept off, the red one restocked one unit of two (two refund lines), as the signed body says.
    order = {**shopify_order(cancelled=True), "refunds": refund_lines(
        (466157049, 1, "no_restock"), (518995019, 1, "cancel"), (518995019, 1, "no_restock"))}
    status, answer = shopify_post(server, order, topic="orders/cancelled")
    assert status == 202 and answer["events"] == 4
    cancels = {m.options["pipe_target"]["kwargs"]["sku"]: m.options["pipe_target"]["kwargs"]
               for m in enqueued(broker)}
    assert {sku: kwargs["restocked"] for sku, kwargs in cancels.items()} == {"IPOD2008GREEN": 0, "IPOD2008RED": 1}
    # No refund line for a line: Shopify said nothing of it, the account's default decides.
    status, answer = shopify_post(server, {**shopify_order(cancelled=True, order_id=5), "refunds": []},
                                  topic="orders/cancelled", webhook_id="no-refunds")
    assert status == 202
    later = [m.options["pipe_target"]["kwargs"] for m in enqueued(broker) if m.kwargs["order_id"] == "5"]
    assert len(later) == 2 and all(kwargs.get("restocked") is None for kwargs in later)


@pytest.mark.parametrize("refunds, words", [
    (refund_lines((466157049, 1, "sideways")), "restock_type must be one of cancel, legacy_restock, no_restock"),
    (refund_lines((466157049, -1, "cancel")), "quantity must be a whole number"),
    ([{"id": 1}], "refunds[0] must be an object with a refund_line_items list"),
    ([{"refund_line_items": [{"quantity": 1, "restock_type": "cancel"}]}], "must be an object with a line_item_id"),
])
def test_a_cancellation_with_malformed_refund_lines_is_400_naming_them(intake, refunds, words):
    server, broker = intake
    status, answer = shopify_post(server, {**shopify_order(cancelled=True), "refunds": refunds},
                                  topic="orders/cancelled", webhook_id=f"bad-{words[:8]}")
    assert status == 400 and words in answer["error"]
    assert enqueued(broker) == []


def test_a_create_body_resent_as_a_cancellation_books_nothing(intake):
    # The topic header is not signed: a captured orders/create delivery under orders/cancelled.
    server, broker = intake
    status, answer = shopify_post(server, shopify_order(), topic="orders/cancelled", webhook_id="swap-1")
    assert status == 400 and "has no cancelled_at: nothing booked" in answer["error"]
    # Not cancelled_at from updated_at either: only the body's own cancelled_at is a cancellation.
    touched = {**shopify_order(), "updated_at": CANCELLED.isoformat()}
    status, answer = shopify_post(server, touched, topic="orders/cancelled", webhook_id="swap-2")
    assert status == 400 and "cancelled_at" in answer["error"]
    assert enqueued(broker) == []


def test_what_is_booked_comes_from_the_body_whatever_the_topic(intake):
    server, broker = intake
    # A signed cancelled body is a cancellation (a fact Shopify signed) even under orders/create.
    status, answer = shopify_post(server, shopify_order(cancelled=True), topic="orders/create")
    assert status == 202 and answer["events"] == 4
    assert {m.options["pipe_target"]["actor_name"] for m in enqueued(broker)} == {"order_cancelled"}


def test_an_over_age_delivery_is_refused_by_the_time_in_its_signed_body(intake):
    server, broker = intake
    old = datetime.now(timezone.utc) - timedelta(hours=48, minutes=5)
    stale = {**shopify_order(), "created_at": old.isoformat(), "updated_at": old.isoformat()}
    status, answer = shopify_post(server, stale, webhook_id="old-1")
    assert status == 400 and "WEBHOOK_MAX_AGE_S (48 h)" in answer["error"] and "nothing booked" in answer["error"]
    assert enqueued(broker) == []
    # An old order cancelled just now is a fresh delivery: its newest time is its cancellation.
    fresh = {**stale, "cancelled_at": datetime.now(timezone.utc).isoformat()}
    status, answer = shopify_post(server, fresh, topic="orders/cancelled", webhook_id="old-2")
    assert status == 202 and answer["events"] == 4
    # Within the bound: taken (Shopify retries a delivery with its first body for 4 hours).
    retried = {**shopify_order(123), "created_at": (old + timedelta(minutes=10)).isoformat()}
    assert shopify_post(server, retried, webhook_id="old-3")[0] == 202


def test_the_age_bound_is_a_setting(monkeypatch, database_url):
    monkeypatch.setenv("REDIS_URL", "")
    monkeypatch.setenv("DATABASE_URL", database_url)  # the accounts, as in the intake fixture
    monkeypatch.setenv("SHOPIFY_WEBHOOK_SECRET", SHOPIFY_SECRET)
    get_settings.cache_clear()
    from workers import fleet

    fleet.broker.flush_all()
    settings = Settings(shopify_webhook_secret=SHOPIFY_SECRET, webhook_max_age_s=3600, intake_read_pool_size=1)
    server = serve_in_thread(build_intake_app(settings, broker=fleet.broker, database_url=database_url))
    try:
        status, answer = shopify_post(server, shopify_order(), webhook_id="age-1")  # made 2 h ago
        assert status == 400 and "WEBHOOK_MAX_AGE_S (1 h)" in answer["error"]
        assert enqueued(fleet.broker) == []
    finally:
        server.stop()
        get_settings.cache_clear()


def test_shopify_refuses_bad_signatures_and_bad_payloads(intake):
    server, broker = intake
    assert shopify_post(server, shopify_order(), secret="wrong")[0] == 401
    body = json.dumps(shopify_order()).encode()
    status, answer = post(server, "/webhooks/shopify", body, {"X-Shopify-Topic": "orders/create",
                                                              "X-Shopify-Webhook-Id": "x"})
    assert status == 401 and "missing" in answer["error"]
    assert shopify_post(server, shopify_order(), webhook_id="")[0] == 400
    bad = shopify_order()
    bad["line_items"][0]["quantity"] = 0
    status, answer = shopify_post(server, bad, webhook_id="bad-1")
    assert status == 400 and "quantity" in answer["error"]
    assert shopify_post(server, {"line_items": []}, webhook_id="bad-2")[0] == 400
    assert enqueued(broker) == []
    # A refused delivery is not remembered: fixed and sent again with the same id, it is taken.
    assert shopify_post(server, shopify_order(), webhook_id="bad-1")[0] == 202


def test_shopify_topics_that_do_not_move_stock_are_acknowledged(intake):
    server, broker = intake
    status, answer = shopify_post(server, {"id": 1}, topic="customers/create")
    assert status == 200 and "does not move stock" in answer["ignored"]
    assert enqueued(broker) == []


def test_the_main_shop_takes_only_its_own_domains_deliveries(monkeypatch, database_url):
    # One app secret signs every shop that installed the app: SHOPIFY_SHOP_DOMAIN says which is the main one.
    monkeypatch.setenv("REDIS_URL", "")
    monkeypatch.setenv("DATABASE_URL", database_url)  # the other accounts, as in the intake fixture
    monkeypatch.setenv("STOCKSYNC_ACCOUNT_SHOP_EU_WEBHOOK", SHOPIFY_SECRET)  # shop-eu shares the secret
    get_settings.cache_clear()
    resources.sync_redis().flushall()
    from runtime import accounts
    from workers import fleet

    with resources.sessions()() as session:
        options = {"shop_domain": "shop-eu.myshopify.com", "webhook_secret_env": "STOCKSYNC_ACCOUNT_SHOP_EU_WEBHOOK"}
        account_rows.add_account(session, platform="shopify", code="shop-eu",
                                 credentials_env="STOCKSYNC_ACCOUNT_SHOP_EU", options=options)
        session.commit()
    accounts.forget()
    fleet.broker.flush_all()
    settings = Settings(shopify_webhook_secret=SHOPIFY_SECRET, shopify_shop_domain="main-shop.myshopify.com",
                        intake_read_pool_size=1)
    server = serve_in_thread(build_intake_app(settings, broker=fleet.broker, database_url=database_url))

    def booked_on() -> set[str]:
        found = {message.kwargs["marketplace"] for message in enqueued(fleet.broker)}
        fleet.broker.flush_all()
        return found

    try:
        # The header's case is not the shop's: Shopify's domains are lower case, the match is too.
        for number, shop in enumerate(("main-shop.myshopify.com", "Main-Shop.myshopify.com")):
            status, answer = shopify_post(server, shopify_order(), webhook_id=f"main-{number}", shop=shop)
            assert status == 202 and answer["events"] == 2
            assert booked_on() == {"shopify"}
        # The same secret, another known shop: its account, not the main one.
        assert shopify_post(server, shopify_order(), webhook_id="eu-1", shop="shop-eu.myshopify.com")[0] == 202
        assert booked_on() == {"shop-eu"}
        # A shop no account knows (or none named), though the secret signed it: refused, nothing booked.
        for number, shop in enumerate(("stranger.myshopify.com", "")):
            status, answer = shopify_post(server, shopify_order(), webhook_id=f"stranger-{number}", shop=shop)
            assert status == 401 and "X-Shopify-Shop-Domain names no shop" in answer["error"]
            assert SHOPIFY_SECRET not in json.dumps(answer)
        assert booked_on() == set()
    finally:
        server.stop()
        get_settings.cache_clear()
        accounts.forget()


# -- in-house producers ----------------------------------------------------------------------------


def signed_post(server, body: Any, *, key: str = PRODUCER_KEY, timestamp: int | None = None) -> tuple[int, Any]:
    raw = json.dumps(body).encode()
    header = auth.producer_signature(key, raw, timestamp=timestamp)
    return post(server, "/events", raw, {auth.SIGNATURE_HEADER: header})


TOPUP = {"type": "stock_topup", "marketplace": "backmarket", "sku": "SKU-1", "quantity": 5, "reference": "PO-77",
         "actor": "warehouse"}


def test_signed_events_are_validated_and_enqueued(intake):
    server, broker = intake
    status, answer = signed_post(server, TOPUP)
    assert status == 202 and answer["accepted"] == 1
    order = {"type": "order_created", "marketplace": "refurbed", "order_id": "9", "order_line_id": "90",
             "sku": "SKU-2", "quantity": 1}
    status, answer = signed_post(server, {"events": [order, {**TOPUP, "reference": "PO-78"}]})
    assert status == 202 and answer["accepted"] == 2 and len(answer["message_ids"]) == 1
    messages = sorted(enqueued(broker), key=lambda m: m.actor_name)
    assert [m.actor_name for m in messages] == ["stock_events_batch", "stock_topup"]
    assert [item["kind"] for item in messages[0].args[0]] == ["order_created", "stock_topup"]


def test_a_producer_cannot_use_the_console_reference_namespace(intake):
    # An operator's reference is booked as console:<typed>: a producer sending one could pre-empt it.
    server, broker = intake
    status, answer = signed_post(server, {**TOPUP, "reference": "console:PO-77"})
    assert status == 400 and "'console:' prefix is the console's own" in answer["error"]
    assert enqueued(broker) == []


def test_a_producer_cannot_choose_the_ledger_actor(intake):
    # A producer could name any console user as the actor: the ledger shows the key's own name.
    server, broker = intake
    status, answer = signed_post(server, {**TOPUP, "actor": "admin"})
    assert status == 202 and answer["actor"] == "producer:default"
    order = {"type": "order_created", "marketplace": "refurbed", "order_id": "9", "order_line_id": "90",
             "sku": "SKU-2", "quantity": 1, "source": "poll"}
    adjust = {"type": "manual_adjustment", "marketplace": "backmarket", "sku": "SKU-1", "change": -1,
              "reference": "count-1"}
    assert signed_post(server, {"events": [order, adjust, {**TOPUP, "reference": "PO-78", "actor": "anna"}]})[0] == 202
    messages = sorted(enqueued(broker), key=lambda m: m.actor_name)
    assert [m.actor_name for m in messages] == ["stock_events_batch", "stock_topup"]
    assert messages[1].kwargs["actor"] == "producer:default"
    batch = {item["kind"]: item["fields"] for item in messages[0].args[0]}
    assert batch["order_created"]["source"] == "producer:default"  # an order's ledger actor is its source
    assert batch["manual_adjustment"]["actor"] == batch["stock_topup"]["actor"] == "producer:default"
    booked = [StockEvent.from_json({"type": kind, **fields}) for kind, fields in batch.items()]
    assert {event.actor for event in booked} == {"producer:default"}


def test_the_producer_key_id_names_the_channel(monkeypatch, database_url):
    monkeypatch.setenv("REDIS_URL", "")
    get_settings.cache_clear()
    from workers import fleet

    fleet.broker.flush_all()
    settings = Settings(producer_hmac_key=PRODUCER_KEY, producer_key_id="erp-2026", intake_read_pool_size=1)
    server = serve_in_thread(build_intake_app(settings, broker=fleet.broker, database_url=database_url))
    try:
        assert signed_post(server, TOPUP)[1]["actor"] == "producer:erp-2026"
        [message] = enqueued(fleet.broker)
        assert message.kwargs["actor"] == "producer:erp-2026"
    finally:
        server.stop()
        fleet.broker.flush_all()
        get_settings.cache_clear()
    with pytest.raises(ValueError, match="producer_key_id"):
        Settings(producer_key_id="Not A Key Id")


def test_a_bad_event_in_a_batch_refuses_the_whole_batch(intake):
    server, broker = intake
    status, answer = signed_post(server, {"events": [TOPUP, {**TOPUP, "quantity": -2}]})
    assert status == 400 and answer["error"].startswith("events[1].quantity")
    assert signed_post(server, {"events": []})[0] == 400
    assert signed_post(server, {"type": "teleport"})[0] == 400
    assert enqueued(broker) == []


def test_unsigned_stale_or_wrongly_signed_requests_are_401(intake):
    server, broker = intake
    assert post(server, "/events", TOPUP)[0] == 401
    status, answer = signed_post(server, TOPUP, timestamp=int(time.time()) - 301)
    assert status == 401 and "300 s" in answer["error"]
    assert signed_post(server, TOPUP, key="not-the-key")[0] == 401
    assert enqueued(broker) == []


def test_endpoints_without_a_secret_configured_are_off(monkeypatch, database_url):
    monkeypatch.setenv("REDIS_URL", "")
    get_settings.cache_clear()
    from workers import fleet

    server = serve_in_thread(build_intake_app(Settings(intake_read_pool_size=1), broker=fleet.broker,
                                              database_url=database_url))
    try:
        assert post(server, "/webhooks/refurbed/anything", {"order_id": 1})[0] == 404
        assert post(server, "/webhooks/shopify", {})[0] == 404
        assert post(server, "/events", TOPUP)[0] == 404
    finally:
        server.stop()
        get_settings.cache_clear()


# -- the Python producer API -------------------------------------------------------------------------


def test_producer_api_enqueues_validated_messages():
    from workers import fleet

    broker = fleet.broker
    broker.flush_all()
    events = StockEvents(broker)
    message = events.manual_adjustment("backmarket", sku="SKU-9", change=-2, reference="count-2026-11-23",
                                       actor="anna", note="found broken")
    assert message.actor_name == "manual_adjustment" and message.kwargs["change"] == -2
    assert [m.message_id for m in enqueued(broker)] == [message.message_id]
    with pytest.raises(ValueError, match="quantity"):
        events.stock_topup("backmarket", sku="SKU-9", quantity=0, reference="PO-1")
    assert len(enqueued(broker)) == 1
    broker.flush_all()
    assert isinstance(message, dramatiq.Message)


def test_intake_requests_are_counted_by_route_template_never_by_path(intake):
    from prometheus_client import REGISTRY

    server, broker = intake
    route = "/webhooks/refurbed/{secret}"

    def count(status: str) -> float:
        return REGISTRY.get_sample_value("stocksync_intake_requests_total", {"route": route, "status": status}) or 0.0

    accepted, refused = count("202"), count("403")
    assert post(server, f"/webhooks/refurbed/{REFURBED_SECRET}", {"order_id": 9100002})[0] == 202
    assert post(server, "/webhooks/refurbed/guess", {"order_id": 1})[0] == 403
    assert (count("202") - accepted, count("403") - refused) == (1, 1)
    exposed = "\n".join(str(sample) for metric in REGISTRY.collect() for sample in metric.samples)
    assert REFURBED_SECRET not in exposed and "guess" not in exposed


# -- malformed input is a 4xx naming what is wrong, never a 500 --------------------------------------


def nested(depth: int) -> bytes:
    return b'{"type": "stock_topup", "note": ' + b"[" * depth + b"]" * depth + b"}"


def raw_signed_post(server, raw: bytes) -> tuple[int, Any]:
    return post(server, "/events", raw, {auth.SIGNATURE_HEADER: auth.producer_signature(PRODUCER_KEY, raw)})


@pytest.mark.parametrize("depth", [40, 100_000])  # deeper than we take; deeper than Python's parser recurses
def test_deeply_nested_json_is_400_on_every_endpoint(intake, depth):
    server, broker = intake
    raw = nested(depth)
    status, answer = raw_signed_post(server, raw)
    assert status == 400 and "nested more than 32 levels" in answer["error"]
    status, answer = shopify_post(server, {}, raw=raw, webhook_id=f"deep-{depth}")
    assert status == 400 and "nested" in answer["error"]
    status, answer = post(server, f"/webhooks/refurbed/{REFURBED_SECRET}", raw)
    assert status == 400 and "nested" in answer["error"]
    assert enqueued(broker) == []


@pytest.mark.parametrize("raw, words", [
    (b"\xff\xfe{not utf-8", "not valid JSON"),
    (b'{"type": "stock_topup", "quantity": ' + b"9" * 5000 + b"}", "not valid JSON"),  # past int's digit limit
    (json.dumps({**TOPUP, "sku": "A\x00B"}).encode(), "sku: must not contain NUL"),
    (json.dumps({**TOPUP, "reference": "\ud800"}).encode(), "reference: must be valid Unicode"),
    (json.dumps({**TOPUP, "note": "x" * 10_000}).encode(), "note: must be at most 2000 characters"),
    (json.dumps({"events": [TOPUP], "type": "stock_topup"}).encode(), "nothing else"),
    (json.dumps({"events": {"a": TOPUP}}).encode(), "events must be a list"),
    (json.dumps({**TOPUP, "type": {"x": [1]}}).encode(), "type: must be one of"),
    (b'"just a string"', "must be a JSON object"),
])
def test_malformed_signed_bodies_are_400_naming_the_problem(intake, raw, words):
    server, broker = intake
    status, answer = raw_signed_post(server, raw)
    assert status == 400 and words in answer["error"]
    assert enqueued(broker) == []


@pytest.mark.parametrize("header", ["t=\u00b2\u00b3,v1=ab", "t=" + "9" * 5000 + ",v1=ab", "t=1,v1=\u00e9\u00e9",
                                    "garbage"])
def test_malformed_signature_headers_are_401_never_500(intake, header):
    server, broker = intake
    status, answer = post(server, "/events", TOPUP, {auth.SIGNATURE_HEADER: header})
    assert status == 401 and auth.SIGNATURE_HEADER in answer["error"]
    assert enqueued(broker) == []


def test_malformed_shopify_headers_are_4xx_never_500(intake):
    server, broker = intake
    body = json.dumps(shopify_order()).encode()
    status, answer = post(server, "/webhooks/shopify", body, {"X-Shopify-Hmac-Sha256": "\u00e9t\u00e9",
                                                              "X-Shopify-Topic": "orders/create",
                                                              "X-Shopify-Webhook-Id": "x"})
    assert status == 401 and "does not match" in answer["error"]
    status, answer = shopify_post(server, shopify_order(), webhook_id="caf\u00e9-1")
    assert status == 400 and "X-Shopify-Webhook-Id" in answer["error"]
    status, answer = shopify_post(server, shopify_order(), topic="orders/\u00e9")
    assert status == 200 and "does not move stock" in answer["ignored"]
    bad = shopify_order()
    bad["line_items"][0]["sku"] = "IPOD\x00"
    status, answer = shopify_post(server, bad, webhook_id="nul-1")
    assert status == 400 and "sku: must not contain NUL" in answer["error"]
    status, answer = shopify_post(server, {**shopify_order(), "created_at": "soon"}, webhook_id="time-1")
    assert status == 400 and "created_at" in answer["error"]
    assert enqueued(broker) == []


@pytest.mark.parametrize("path, words", [
    ("/stock?sku=A%00B", "sku: must not contain NUL"),
    ("/stock?sku=" + "x" * 201, "sku: must be at most 200 characters"),
    ("/stock?sku=%20%20", "give the variation's SKU"),
    ("/variations/%C2%B2/stock", "variation id must be a positive integer"),
    ("/variations/" + "9" * 30 + "/stock", "variation id must be a positive integer"),
])
def test_malformed_read_parameters_are_400(intake, path, words):
    server, _ = intake
    status, answer = get(server, path)
    assert status == 400 and words in answer["error"]


def test_a_sku_that_is_not_utf8_is_answered_not_500(intake):
    server, _ = intake
    status, answer = get(server, "/stock?sku=%ED%A0%80%FF")
    assert status in (400, 404) and "error" in answer


@pytest.mark.parametrize("body, words", [
    ({"order_id": [[[1]]]}, "got a JSON array"),
    ({"order_id": "\u00b2"}, "positive integer"),
    ({"order_id": "9" * 30}, "positive integer"),
])
def test_malformed_refurbed_ids_are_400(intake, body, words):
    server, broker = intake
    status, answer = post(server, f"/webhooks/refurbed/{REFURBED_SECRET}", body)
    assert status == 400 and words in answer["error"]
    assert enqueued(broker) == []
