"""The Shopify GraphQL client and the fleet-wide cost bucket, without a sandbox.

The bucket: on fakeredis (the same Lua script) and across processes' worth of clients on a real
Redis.  The client: against a scripted GraphQL endpoint on loopback that answers what a test says
(cost extensions, THROTTLED, user errors), so each rule is seen to hold on its own.
"""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import fakeredis
import pytest
import redis.asyncio
from aiohttp import web

from clients.costbucket import FleetCostBucket
from clients.errors import BadRequest, MalformedResponse, RateLimited
from clients.shopify import (SET_MUTATION, ShopifyClient, gid, gid_number, level_query, variants_query)
from core.platforms import SHOPIFY_API_VERSION
from pipelines.orders import shopify_polled_events
from sandbox.server import serve_in_thread

TOKEN = "shpat_unit_secret"


def fake_redis() -> redis.asyncio.Redis:
    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())


def cost(requested: float, actual: float | None, available: float, maximum: float = 1000.0, rate: float = 100.0):
    return {"cost": {"requestedQueryCost": requested, "actualQueryCost": actual,
                     "throttleStatus": {"maximumAvailable": maximum, "currentlyAvailable": available,
                                        "restoreRate": rate}}}


# -- the bucket ------------------------------------------------------------------------------------


def test_the_bucket_debits_waits_for_the_restore_and_takes_shopifys_figures():
    async def main():
        bucket = FleetCostBucket(fake_redis(), "shop", maximum=100, restore_rate=50)
        assert await bucket.debit(80) < 0.05                       # a full bucket: at once
        assert 19 <= await bucket.available() <= 21
        started = time.monotonic()
        await bucket.debit(60)                                      # 40 points short at 50 a second
        assert 0.7 <= time.monotonic() - started < 1.5
        await bucket.credit(500)                                    # never above the bucket's size
        assert await bucket.available() == pytest.approx(100, abs=1)
        await bucket.observe(10, 200, 100)                          # Shopify says 10 are left, of 200
        assert 9 <= await bucket.available() <= 12
        assert (bucket.maximum, bucket.restore_rate) == (200, 100)

    asyncio.run(main())


def test_the_bucket_is_shared_by_every_client_of_the_shop_on_real_redis(redis_url):
    async def main():
        clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(4)]
        buckets = [FleetCostBucket(client, "shared-shop", maximum=200, restore_rate=100) for client in clients]
        started = time.monotonic()
        # 8 calls of 100 points from four "processes": 200 at once, then 100 a second for the other 600.
        await asyncio.gather(*(buckets[i % 4].debit(100) for i in range(8)))
        elapsed = time.monotonic() - started
        for client in clients:
            await client.aclose()
        return elapsed

    assert 5.5 <= asyncio.run(main()) < 8.0


# -- the client against scripted answers ---------------------------------------------------------------


class Scripted:
    """A GraphQL endpoint answering from a list of (status, body) it is given, recording what was asked."""

    def __init__(self, answers) -> None:
        self.answers = list(answers)
        self.asked: list[dict] = []
        self.headers: list[dict] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(f"/admin/api/{SHOPIFY_API_VERSION}/graphql.json", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.asked.append(await request.json())
        self.headers.append(dict(request.headers))
        status, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return web.json_response(body, status=status)


def with_client(scripted: Scripted, job, bucket: FleetCostBucket | None = None):
    server = serve_in_thread(scripted.app())

    async def main():
        async with aiohttp.ClientSession() as session:
            client = ShopifyClient(session, base_url=server.url, token=TOKEN, cost_bucket=bucket, backoff_s=0.01)
            return await job(client)

    try:
        return asyncio.run(main())
    finally:
        server.stop()


def variants_answer(levels, *, next_cursor=None, extensions=None):
    edges = [{"cursor": f"c{i}", "node": {"id": gid("ProductVariant", 100 + i), "sku": f" SKU-{i} ",
                                          "inventoryItem": {"id": gid("InventoryItem", 200 + i), "tracked": True,
                                                            **{f"at{j}": None if q is None else {
                                                                "quantities": [{"name": "available", "quantity": q}]}
                                                               for j, q in enumerate(row)}}}}
             for i, row in enumerate(levels)]
    return {"data": {"productVariants": {"edges": edges, "pageInfo": {"hasNextPage": next_cursor is not None,
                                                                      "endCursor": next_cursor}}},
            "extensions": extensions or cost(8, 6, 990)}


def test_a_catalogue_page_names_each_location_and_reads_its_levels():
    scripted = Scripted([(200, variants_answer([(3, None), (-2, 5)], next_cursor="c1"))])
    page = with_client(scripted, lambda c: c.variants_page(["11", "12"], None, limit=2))
    assert [(v.sku, v.inventory_item_id, v.levels) for v in page.variants] == [
        ("SKU-0", "200", (3, None)), ("SKU-1", "201", (-2, 5))]
    assert page.next_cursor == "c1"
    sent = scripted.asked[0]
    assert sent["query"] == variants_query(2)
    assert sent["variables"] == {"first": 2, "after": None, "l0": "gid://shopify/Location/11",
                                 "l1": "gid://shopify/Location/12"}
    assert scripted.headers[0]["X-Shopify-Access-Token"] == TOKEN


def test_a_set_sends_the_belief_and_a_stale_one_is_a_refusal_not_an_error():
    refused = {"data": {"inventorySetQuantities": {"inventoryAdjustmentGroup": None, "userErrors": [
        {"field": ["input", "quantities", "0", "changeFromQuantity"], "message": "stale",
         "code": "CHANGE_FROM_QUANTITY_STALE"}]}}, "extensions": cost(10, 10, 980)}
    done = {"data": {"inventorySetQuantities": {"inventoryAdjustmentGroup": {"id": "gid://shopify/X/1",
                                                                             "reason": "correction", "changes": []},
                                                "userErrors": []}}, "extensions": cost(10, 10, 970)}
    scripted = Scripted([(200, refused), (200, done)])

    async def job(client):
        first = await client.set_available("200", "11", 7, change_from=4, reference="gid://stocksync/StockPush/1")
        second = await client.set_available("200", "11", 7, change_from=3, reference="gid://stocksync/StockPush/1")
        return first, second

    assert with_client(scripted, job) == (False, True)
    sent = scripted.asked[0]
    assert sent["query"] == SET_MUTATION
    assert sent["variables"]["input"] == {
        "name": "available", "reason": "correction", "referenceDocumentUri": "gid://stocksync/StockPush/1",
        "quantities": [{"inventoryItemId": "gid://shopify/InventoryItem/200", "locationId": "gid://shopify/Location/11",
                        "quantity": 7, "changeFromQuantity": 4}]}


def test_other_user_errors_are_permanent_and_name_shopifys_code():
    answer = {"data": {"inventorySetQuantities": {"inventoryAdjustmentGroup": None, "userErrors": [
        {"field": ["input"], "message": "The item is not stocked at the location.",
         "code": "ITEM_NOT_STOCKED_AT_LOCATION"}]}}, "extensions": cost(10, 10, 990)}
    with pytest.raises(BadRequest, match="ITEM_NOT_STOCKED_AT_LOCATION") as raised:
        with_client(Scripted([(200, answer)]),
                    lambda c: c.set_available("200", "11", 1, change_from=0, reference="r"))
    assert raised.value.permanent and TOKEN not in str(raised.value)


def test_throttled_answers_give_their_points_back_and_wait_in_the_bucket():
    throttled = {"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                 "extensions": cost(50, None, 5, maximum=100, rate=100)}
    ok = {"data": {"inventoryItem": {"id": gid("InventoryItem", 1), "tracked": True,
                                     "at0": {"quantities": [{"name": "available", "quantity": 4}]}}},
          "extensions": cost(50, 3, 52, maximum=100, rate=100)}
    scripted = Scripted([(200, throttled), (200, throttled), (200, ok)])
    bucket = FleetCostBucket(fake_redis(), "shop", maximum=100, restore_rate=100)

    async def job(client):
        started = time.monotonic()
        levels = await client.levels("1", ["11"])
        return levels, time.monotonic() - started, client.throttled

    levels, elapsed, throttled_count = with_client(scripted, job, bucket)
    assert levels == (True, (4,))
    assert throttled_count == 2 and len(scripted.asked) == 3
    # Each THROTTLED left 5 points of the 50 asked: the next call waited ~0.45 s for the rest.
    assert 0.8 <= elapsed < 3.0
    assert scripted.asked[0]["query"] == level_query(1)


def test_without_a_bucket_throttled_is_a_transient_error_and_other_errors_are_typed():
    throttled = {"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}]}
    with pytest.raises(RateLimited) as raised:
        with_client(Scripted([(200, throttled)]), lambda c: c.location_ids())
    assert not raised.value.permanent
    bad = {"errors": [{"message": "Field 'nope' doesn't exist on type 'QueryRoot'"}]}
    with pytest.raises(BadRequest, match="nope"):
        with_client(Scripted([(200, bad)]), lambda c: c.location_ids())
    with pytest.raises(MalformedResponse, match="gid://shopify/Location"):
        with_client(Scripted([(200, {"data": {"locations": {"edges": [{"node": {"id": "12"}}]}}})]),
                    lambda c: c.location_ids())


def test_orders_come_with_their_numbers_and_lines():
    node = {"id": gid("Order", 820982911946154508), "name": "#1001", "createdAt": "2026-12-07T10:00:00Z",
            "updatedAt": "2026-12-07T10:05:00Z", "cancelledAt": None,
            "lineItems": {"nodes": [{"id": gid("LineItem", 466157049), "sku": "IPOD2008GREEN", "quantity": 1}],
                          "pageInfo": {"hasNextPage": False}}}
    answer = {"data": {"orders": {"edges": [{"cursor": "o1", "node": node}],
                                  "pageInfo": {"hasNextPage": False, "endCursor": "o1"}}}}
    scripted = Scripted([(200, answer)])
    page = with_client(scripted, lambda c: c.orders_page("2026-12-07T09:00:00Z"))
    order = page.orders[0]
    assert (order.id, order.name, page.next_cursor) == ("820982911946154508", "#1001", None)
    assert [(line.id, line.sku, line.quantity) for line in order.lines] == [("466157049", "IPOD2008GREEN", 1)]
    assert scripted.asked[0]["variables"]["query"] == "updated_at:>='2026-12-07T09:00:00Z'"


def test_a_polled_cancellation_books_what_its_refund_lines_restocked():
    refund = {"refundLineItems": {"nodes": [
        {"lineItem": {"id": gid("LineItem", 466157049)}, "quantity": 1, "restockType": "CANCEL"},
        {"lineItem": {"id": gid("LineItem", 466157049)}, "quantity": 1, "restockType": "NO_RESTOCK"}]}}
    node = {"id": gid("Order", 820982911946154508), "name": "#1001", "createdAt": "2026-12-07T10:00:00Z",
            "updatedAt": "2026-12-07T10:05:00Z", "cancelledAt": "2026-12-07T10:05:00Z",
            "lineItems": {"nodes": [{"id": gid("LineItem", 466157049), "sku": "IPOD2008GREEN", "quantity": 2}],
                          "pageInfo": {"hasNextPage": False}}, "refunds": [refund]}
    answer = {"data": {"orders": {"edges": [{"cursor": "o1", "node": node}],
                                  "pageInfo": {"hasNextPage": False, "endCursor": "o1"}}}}
    order = with_client(Scripted([(200, answer)]), lambda c: c.orders_page("2026-12-07T09:00:00Z")).orders[0]
    assert [(r.line_id, r.quantity, r.restock_type) for r in order.refund_lines] == [
        ("466157049", 1, "CANCEL"), ("466157049", 1, "NO_RESTOCK")]
    created, cancelled = shopify_polled_events(order, "shop")[0]
    assert (cancelled.kind, cancelled.quantity, cancelled.restocked, cancelled.key) == (
        "order_cancelled", 2, 1, "shop:466157049:order_cancelled")
    bad = {**node, "refunds": [{"refundLineItems": {"nodes": [{"lineItem": {"id": gid("LineItem", 1)},
                                                                "quantity": "one", "restockType": "CANCEL"}]}}]}
    with pytest.raises(MalformedResponse, match="refund line's quantity"):
        with_client(Scripted([(200, {"data": {"orders": {**answer["data"]["orders"],
                                                         "edges": [{"cursor": "o1", "node": bad}]}}})]),
                    lambda c: c.orders_page("2026-12-07T09:00:00Z"))


def test_gid_numbers_are_checked():
    assert gid_number("gid://shopify/InventoryItem/42", "InventoryItem") == "42"
    for bad in ("gid://shopify/Order/42", "42", None, "gid://shopify/InventoryItem/x"):
        with pytest.raises(MalformedResponse):
            gid_number(bad, "InventoryItem")
    assert json.loads(json.dumps(gid("Location", 7))) == "gid://shopify/Location/7"
