"""The Shopify sandbox's GraphQL Admin API, over HTTP on loopback: pages, cost and throttling,
the compare-and-set write, orders and their webhooks."""
from __future__ import annotations

import http.client
import json
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from graphql import GraphQLError

from core.platforms import SHOPIFY_API_VERSION
from sandbox.common import OutOfStock
from sandbox.server import serve_in_thread
from sandbox.shopify import ShopifySandbox
from sandbox.shopify_graphql import connection
from workers.intake.auth import SignatureError, verify_shopify

TOKEN = "shpat_graphql_tests"
ENDPOINT = f"/admin/api/{SHOPIFY_API_VERSION}/graphql.json"

CATALOGUE = """
query Catalogue($first: Int!, $after: String, $location: ID!) {
  productVariants(first: $first, after: $after) {
    edges { cursor node { id sku inventoryItem { id tracked
      inventoryLevel(locationId: $location) { location { id } quantities(names: ["available"]) { name quantity } }
    } } }
    pageInfo { hasNextPage endCursor }
  }
}"""

SET = """
mutation Set($input: InventorySetQuantitiesInput!) {
  inventorySetQuantities(input: $input) {
    inventoryAdjustmentGroup { id reason changes { name delta } }
    userErrors { field message code }
  }
}"""

READ_ONE = """
query One($item: ID!, $location: ID!) {
  inventoryItem(id: $item) { inventoryLevel(locationId: $location) { quantities(names: ["available"]) { name quantity } } }
}"""


class Clock:
    """A monotonic clock the test moves by hand (the cost bucket's)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def post(url: str, path: str, body: Any, token: str | None = TOKEN) -> tuple[int, Any]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Shopify-Access-Token"] = token
    try:
        connection.request("POST", path, body=body if isinstance(body, bytes) else json.dumps(body).encode(),
                           headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def gql(url: str, document: str, **variables: Any) -> dict[str, Any]:
    status, answer = post(url, ENDPOINT, {"query": document, "variables": variables})
    assert status == 200, answer
    return answer


@pytest.fixture
def shop():
    clock = Clock()
    sandbox = ShopifySandbox(products=23, variants_per_product=2, locations=3, token=TOKEN, no_sku_every=9, clock=clock)
    server = serve_in_thread(sandbox.build_app())
    yield sandbox, server.url, clock
    server.stop()
    sandbox.close()


def location_gid(sandbox: ShopifySandbox, index: int = 0) -> str:
    return f"gid://shopify/Location/{sandbox.location_ids()[index]}"


def item_gid(sandbox: ShopifySandbox, sku: str) -> str:
    item = next(v["inventory_item_id"] for v in sandbox.variants() if v["sku"] == sku)
    return f"gid://shopify/InventoryItem/{item}"


def test_pages_walk_every_variant_once_with_its_level_at_the_chosen_location(shop):
    sandbox, url, _ = shop
    location = sandbox.location_ids()[1]
    seen, after, pages = [], None, 0
    while True:
        answer = gid_page = gql(url, CATALOGUE, first=10, after=after, location=location_gid(sandbox, 1))
        connection = gid_page["data"]["productVariants"]
        seen += [edge["node"] for edge in connection["edges"]]
        pages += 1
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
        assert after == connection["edges"][-1]["cursor"]
    assert pages == 5 and len(seen) == 46 == len({node["id"] for node in seen})
    assert {node["id"] for node in seen} == {f"gid://shopify/ProductVariant/{v['id']}" for v in sandbox.variants()}
    by_sku = {node["sku"]: node["inventoryItem"]["inventoryLevel"] for node in seen if node["sku"]}
    assert {sku: level["quantities"] for sku, level in by_sku.items()} == {
        sku: [{"name": "available", "quantity": units}] for sku, units in sandbox.quantities(location).items()}
    assert {level["location"]["id"] for level in by_sku.values()} == {location_gid(sandbox, 1)}
    assert sum(1 for node in seen if not node["sku"]) == 5
    assert "errors" not in answer


def test_levels_of_every_location_sum_to_the_shops_quantities(shop):
    sandbox, url, _ = shop
    answer = gql(url, """{ locations(first: 10) { nodes { id name } }
      productVariants(first: 50) { nodes { sku inventoryItem { inventoryLevels(first: 5) {
        nodes { location { id } quantities(names: ["available", "on_hand"]) { name quantity } } } } } } }""")
    assert [node["id"] for node in answer["data"]["locations"]["nodes"]] == [
        location_gid(sandbox, i) for i in range(3)]
    totals = {node["sku"]: sum(level["quantities"][0]["quantity"]
                               for level in node["inventoryItem"]["inventoryLevels"]["nodes"])
              for node in answer["data"]["productVariants"]["nodes"] if node["sku"]}
    assert totals == sandbox.quantities()


def test_cost_is_requested_by_first_and_actual_by_what_came_back(shop):
    sandbox, url, clock = shop
    # Requested: 2 + 10 x (node 1 + inventoryItem 1 + inventoryLevel 1 + location 1 + quantities 1) = 52.
    answer = gql(url, CATALOGUE, first=10, location=location_gid(sandbox))
    cost = answer["extensions"]["cost"]
    assert cost["requestedQueryCost"] == 52 and cost["actualQueryCost"] == 52
    assert cost["throttleStatus"] == {"maximumAvailable": 2000.0, "currentlyAvailable": 1948, "restoreRate": 100.0}
    # The last page holds 6 variants: 2 + 6 x 5 = 32 actually, the difference given back.
    last = gql(url, CATALOGUE, first=10, after=_cursor_after(url, sandbox, 40), location=location_gid(sandbox))
    assert len(last["data"]["productVariants"]["edges"]) == 6
    assert (last["extensions"]["cost"]["requestedQueryCost"], last["extensions"]["cost"]["actualQueryCost"]) == (52, 32)
    clock.now += 0.25  # 25 points restored
    mutation = gql(url, SET, input={"name": "available", "reason": "correction", "quantities": [
        {"inventoryItemId": item_gid(sandbox, "SHOP-0001-1"), "locationId": location_gid(sandbox), "quantity": 3,
         "changeFromQuantity": sandbox.available("SHOP-0001-1")}]})
    assert mutation["extensions"]["cost"]["requestedQueryCost"] == 10
    # The first page, the cursor lookup, the last page, a quarter second restored, the mutation.
    assert mutation["extensions"]["cost"]["throttleStatus"]["currentlyAvailable"] == 2000 - 52 - 2 - 32 + 25 - 10


def _cursor_after(url: str, sandbox: ShopifySandbox, count: int) -> str:
    answer = gql(url, "query($n: Int!) { productVariants(first: $n) { pageInfo { endCursor } } }", n=count)
    assert answer["extensions"]["cost"]["actualQueryCost"] == 2
    return answer["data"]["productVariants"]["pageInfo"]["endCursor"]


def set_input(sandbox: ShopifySandbox, *changes: tuple[str, int, int | None], location: int = 0) -> dict[str, Any]:
    return {"name": "available", "reason": "correction", "referenceDocumentUri": "stocksync://ledger/push/1",
            "quantities": [{"inventoryItemId": item_gid(sandbox, sku), "locationId": location_gid(sandbox, location),
                            "quantity": quantity, "changeFromQuantity": believed} for sku, quantity, believed in changes]}


def test_a_set_with_the_right_belief_writes_and_a_stale_one_writes_nothing(shop):
    sandbox, url, _ = shop
    first, second = sandbox.available("SHOP-0001-1"), sandbox.available("SHOP-0002-1")
    done = gql(url, SET, input=set_input(sandbox, ("SHOP-0001-1", first + 5, first)))["data"]["inventorySetQuantities"]
    assert done["userErrors"] == []
    assert done["inventoryAdjustmentGroup"]["reason"] == "correction"
    assert done["inventoryAdjustmentGroup"]["changes"] == [{"name": "available", "delta": 5}]
    assert sandbox.available("SHOP-0001-1") == first + 5
    before = sandbox.quantities(sandbox.location_ids()[0])
    # One stale belief among two refuses both: nothing is written.
    refused = gql(url, SET, input=set_input(sandbox, ("SHOP-0002-1", 40, second), ("SHOP-0001-1", 0, first)))
    payload = refused["data"]["inventorySetQuantities"]
    assert payload["inventoryAdjustmentGroup"] is None
    assert payload["userErrors"] == [{"field": ["input", "quantities", "1", "changeFromQuantity"],
                                      "message": "The changeFromQuantity value does not match persisted value.",
                                      "code": "CHANGE_FROM_QUANTITY_STALE"}]
    assert sandbox.quantities(sandbox.location_ids()[0]) == before
    assert sandbox.stats()["inventory_writes"] == {"applied": 1, "refused_stale": 1, "refused_other": 0}
    # Read again, decide, push again: the compare holds.
    level = gql(url, READ_ONE, item=item_gid(sandbox, "SHOP-0001-1"), location=location_gid(sandbox))
    now = level["data"]["inventoryItem"]["inventoryLevel"]["quantities"][0]["quantity"]
    assert now == first + 5
    again = gql(url, SET, input=set_input(sandbox, ("SHOP-0002-1", 40, second), ("SHOP-0001-1", 0, now)))
    assert again["data"]["inventorySetQuantities"]["userErrors"] == []
    assert (sandbox.available("SHOP-0002-1"), sandbox.available("SHOP-0001-1")) == (40, 0)


def test_a_null_belief_skips_the_check_and_a_missing_one_is_refused(shop):
    sandbox, url, _ = shop
    skipped = gql(url, SET, input=set_input(sandbox, ("SHOP-0003-1", 17, None)))
    assert skipped["data"]["inventorySetQuantities"]["userErrors"] == []
    assert sandbox.available("SHOP-0003-1") == 17
    missing = set_input(sandbox, ("SHOP-0003-1", 2, None))
    del missing["quantities"][0]["changeFromQuantity"]
    payload = gql(url, SET, input=missing)["data"]["inventorySetQuantities"]
    assert [error["code"] for error in payload["userErrors"]] == ["COMPARE_QUANTITY_REQUIRED"]
    bad = set_input(sandbox, ("SHOP-0003-1", -1, 17))
    bad["reason"] = "because"
    bad["quantities"][0]["locationId"] = "gid://shopify/Location/1"
    payload = gql(url, SET, input=bad)["data"]["inventorySetQuantities"]
    assert [error["code"] for error in payload["userErrors"]] == ["INVALID_REASON", "INVALID_LOCATION"]
    assert sandbox.available("SHOP-0003-1") == 17


def test_over_the_budget_is_throttled_with_no_data_and_nothing_taken(shop):
    sandbox, url, clock = shop
    sandbox.configure(cost_maximum=100.0, cost_restore_rate=10.0)
    big = gql(url, CATALOGUE, first=18, location=location_gid(sandbox))  # 2 + 18 x 5 = 92
    assert big["extensions"]["cost"]["throttleStatus"]["currentlyAvailable"] == 8
    throttled = gql(url, CATALOGUE, first=2, location=location_gid(sandbox))  # 12 > 8
    assert "data" not in throttled
    assert throttled["errors"] == [{"message": "Throttled", "extensions": {
        "code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"}}]
    assert throttled["extensions"]["cost"] == {"requestedQueryCost": 12, "actualQueryCost": None, "throttleStatus": {
        "maximumAvailable": 100.0, "currentlyAvailable": 8, "restoreRate": 10.0}}
    clock.now += 0.5  # 5 points restored: 13 available
    assert gql(url, CATALOGUE, first=2, location=location_gid(sandbox))["extensions"]["cost"]["actualQueryCost"] == 12
    # The dial: the next 2 are throttled whatever the bucket holds.
    clock.now += 100
    sandbox.throttle_next(2)
    answers = [gql(url, READ_ONE, item=item_gid(sandbox, "SHOP-0001-1"), location=location_gid(sandbox))
               for _ in range(3)]
    assert [answer.get("errors", [{}])[0].get("message") for answer in answers] == ["Throttled", "Throttled", None]
    assert answers[2]["data"]["inventoryItem"]["inventoryLevel"]["quantities"][0]["quantity"] == \
        sandbox.available("SHOP-0001-1")
    assert sandbox.stats()["throttled"] == 3  # by the bucket once, by the dial twice


def test_a_query_over_the_single_query_limit_is_refused(shop):
    sandbox, url, _ = shop
    answer = gql(url, CATALOGUE, first=250, location=location_gid(sandbox))  # 2 + 250 x 5
    assert answer["errors"][0]["extensions"]["code"] == "MAX_COST_EXCEEDED" and "data" not in answer
    assert answer["extensions"]["cost"]["throttleStatus"]["currentlyAvailable"] == 2000


def test_bad_requests_are_told_what_was_wrong(shop):
    sandbox, url, _ = shop
    assert post(url, ENDPOINT, {"query": "{ locations(first: 1) { nodes { id } } }"}, token="wrong")[0] == 401
    status, answer = post(url, ENDPOINT, b"{not json")
    assert status == 400 and "not JSON" in answer["errors"]
    status, answer = post(url, ENDPOINT, {"variables": {}})
    assert status == 400 and "query" in answer["errors"]
    status, answer = post(url, ENDPOINT, {"query": "{ productVariants(first: 1) { nodes { colour } } }"})
    assert status == 200 and "colour" in answer["errors"][0]["message"] and "data" not in answer
    answer = gql(url, "{ productVariants(first: 251) { nodes { id } } }")
    assert "250" in answer["errors"][0]["message"]
    answer = gql(url, "{ productVariants { nodes { id } } }")
    assert "first or last" in answer["errors"][0]["message"]


def test_fault_dials_answer_5xx_then_recover(shop):
    sandbox, url, _ = shop
    sandbox.fail_next(2, status=502)
    statuses = [post(url, ENDPOINT, {"query": "{ locations(first: 1) { nodes { id } } }"})[0] for _ in range(3)]
    assert statuses == [502, 502, 200]
    # The REST reads the current adapter makes still work, behind the same dials.
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    connection.request("GET", f"/admin/api/{SHOPIFY_API_VERSION}/locations.json", headers={"X-Shopify-Access-Token": TOKEN})
    response = connection.getresponse()
    assert response.status == 200 and len(json.loads(response.read())["locations"]) == 3
    connection.close()


ORDERS = """
query Orders($after: String, $search: String) {
  orders(first: 2, after: $after, query: $search, sortKey: UPDATED_AT) {
    nodes { id name createdAt updatedAt cancelledAt cancelReason
      lineItems(first: 10) { nodes { sku quantity variant { id } } }
      refunds { refundLineItems(first: 10) { nodes { quantity restockType restocked location { id }
                                                     lineItem { sku } } } } }
    pageInfo { hasNextPage endCursor }
  }
}"""


def all_orders(url: str, query: str | None = None) -> list[dict[str, Any]]:
    found, after = [], None
    while True:
        connection = gql(url, ORDERS, after=after, search=query)["data"]["orders"]
        found += connection["nodes"]
        if not connection["pageInfo"]["hasNextPage"]:
            return found
        after = connection["pageInfo"]["endCursor"]


class WallClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 9, 19, 35, 56, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def receiver():
    """A webhook receiver on loopback that keeps every request's headers and raw body."""
    received: list[tuple[dict[str, str], bytes]] = []

    async def take(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/webhooks/shopify", take)
    server = serve_in_thread(app)
    yield f"{server.url}/webhooks/shopify", received
    server.stop()


def test_orders_lower_their_location_and_cancel_restocks_or_not(shop, receiver):
    sandbox, url, _ = shop
    hook_url, received = receiver
    wall = WallClock()
    sandbox.now = wall
    sandbox.configure(webhook_url=hook_url, webhook_secret="whsec_test")
    second = sandbox.location_ids()[1]
    sandbox.set_available("SHOP-0004-1", 5, second)
    sandbox.set_available("SHOP-0005-2", 2, second)
    elsewhere = sandbox.quantities(sandbox.location_ids()[0])
    kept = sandbox.place_order({"SHOP-0004-1": 2, "SHOP-0005-2": 1}, location_id=second)
    wall.now += timedelta(seconds=30)
    restocked = sandbox.place_order({"SHOP-0004-1": 1}, location_id=second)
    wall.now += timedelta(seconds=30)
    not_restocked = sandbox.place_order({"SHOP-0005-2": 1}, location_id=second)
    assert (sandbox.available("SHOP-0004-1", second), sandbox.available("SHOP-0005-2", second)) == (2, 0)
    with pytest.raises(OutOfStock):
        sandbox.place_order({"SHOP-0005-2": 1}, location_id=second)
    wall.now += timedelta(seconds=30)
    watermark = "2026-01-09T19:37:26Z"
    sandbox.cancel_order(restocked["id"], restock=True)
    sandbox.cancel_order(not_restocked["id"], restock=False)
    assert (sandbox.available("SHOP-0004-1", second), sandbox.available("SHOP-0005-2", second)) == (3, 0)
    assert sandbox.quantities(sandbox.location_ids()[0]) == elsewhere  # other locations untouched

    every = all_orders(url)
    assert [order["name"] for order in every] == ["#1001", "#1002", "#1003"]
    assert every[0]["lineItems"]["nodes"] == [
        {"sku": "SHOP-0004-1", "quantity": 2, "variant": {"id": f"gid://shopify/ProductVariant/{kept['line_items'][0]['variant_id']}"}},
        {"sku": "SHOP-0005-2", "quantity": 1, "variant": {"id": f"gid://shopify/ProductVariant/{kept['line_items'][1]['variant_id']}"}}]
    # The watermark finds the cancellations (updated since), not the order left alone.
    since = all_orders(url, f"updated_at:>='{watermark}'")
    assert [(order["name"], order["cancelledAt"], order["cancelReason"]) for order in since] == [
        ("#1002", watermark, "CUSTOMER"), ("#1003", watermark, "CUSTOMER")]
    assert [order["refunds"][0]["refundLineItems"]["nodes"][0] for order in since] == [
        {"quantity": 1, "restockType": "CANCEL", "restocked": True, "location": {"id": location_gid(sandbox, 1)},
         "lineItem": {"sku": "SHOP-0004-1"}},
        {"quantity": 1, "restockType": "NO_RESTOCK", "restocked": False, "location": None,
         "lineItem": {"sku": "SHOP-0005-2"}}]
    assert all_orders(url, "updated_at:>'2026-01-09T19:37:26Z'") == []
    assert "colour" in gql(url, ORDERS, search="colour:red")["errors"][0]["message"]

    sandbox.wait_for_deliveries()
    assert [headers["X-Shopify-Topic"] for headers, _ in received] == ["orders/create"] * 3 + ["orders/cancelled"] * 2
    for headers, body in received:
        verify_shopify(["whsec_test"], body, headers["X-Shopify-Hmac-Sha256"])  # raises when it does not match
        assert headers["X-Shopify-Shop-Domain"] == "sandbox-shop.myshopify.com"
        assert headers["X-Shopify-API-Version"] == SHOPIFY_API_VERSION
    with pytest.raises(SignatureError):
        verify_shopify(["another secret"], received[0][1], received[0][0]["X-Shopify-Hmac-Sha256"])
    # The bodies are what the intake books: a cancelled one has cancelled_at.
    cancelled = json.loads(received[3][1])
    assert cancelled["id"] == restocked["id"] and cancelled["cancelled_at"] == "2026-01-09T19:37:26+00:00"
    assert len({headers["X-Shopify-Webhook-Id"] for headers, _ in received}) == 5


def test_a_line_restocked_in_part_has_a_cancel_and_a_no_restock_refund_line(shop, receiver):
    sandbox, url, _ = shop
    hook_url, received = receiver
    sandbox.configure(webhook_url=hook_url, webhook_secret="whsec_test")
    before = sandbox.available("SHOP-0004-1")
    order = sandbox.place_order({"SHOP-0004-1": 2, "SHOP-0005-2": 1}, notify=False)
    sandbox.cancel_order(order["id"], restock={"SHOP-0004-1": 1})
    assert sandbox.available("SHOP-0004-1") == before - 1
    polled = all_orders(url)[0]["refunds"][0]["refundLineItems"]["nodes"]
    assert [(line["lineItem"]["sku"], line["quantity"], line["restockType"], line["restocked"]) for line in polled] == [
        ("SHOP-0004-1", 1, "CANCEL", True), ("SHOP-0004-1", 1, "NO_RESTOCK", False),
        ("SHOP-0005-2", 1, "NO_RESTOCK", False)]
    sandbox.wait_for_deliveries()
    body = json.loads(received[-1][1])
    lines = {line["sku"]: line["id"] for line in order["line_items"]}
    assert [(item["line_item_id"], item["quantity"], item["restock_type"])
            for item in body["refunds"][0]["refund_line_items"]] == [
        (lines["SHOP-0004-1"], 1, "cancel"), (lines["SHOP-0004-1"], 1, "no_restock"), (lines["SHOP-0005-2"], 1, "no_restock")]


def test_the_control_routes_place_and_cancel_orders_and_set_faults(shop):
    sandbox, url, _ = shop
    sandbox.set_available("SHOP-0006-1", 4)
    status, order = post(url, "/_sandbox/orders", {"lines": {"SHOP-0006-1": 3}, "notify": False}, token=None)
    assert status == 201 and sandbox.available("SHOP-0006-1") == 1
    assert post(url, "/_sandbox/orders", {"lines": {"SHOP-0006-1": 3}}, token=None)[0] == 409
    assert post(url, "/_sandbox/orders", {"lines": {"NOPE": 1}}, token=None)[0] == 404
    assert post(url, "/_sandbox/orders", {"lines": {"SHOP-0006-1": 0}}, token=None)[0] == 400
    status, cancelled = post(url, f"/_sandbox/orders/{order['id']}/cancel", {"restock": True}, token=None)
    assert status == 200 and cancelled["cancelled_at"] and sandbox.available("SHOP-0006-1") == 4
    assert post(url, f"/_sandbox/orders/{order['id']}/cancel", {}, token=None)[0] == 400  # already cancelled
    assert post(url, "/_sandbox/orders/1/cancel", {}, token=None)[0] == 404
    assert post(url, "/_sandbox/faults", {"throttle": 1, "fail": 1, "status": 500}, token=None) == (
        200, {"pending_failures": 1, "pending_throttles": 1, "pending_429s": 0})
    assert post(url, "/_sandbox/faults", {"throttle": "many"}, token=None)[0] == 400
    assert post(url, "/_sandbox/config", {"cost_restore_rate": 0}, token=None)[0] == 400


def test_connection_pages_both_ways_from_any_cursor():
    items = [(key, f"node{key}") for key in range(1, 12)]
    forward, after, pages = [], None, 0
    while True:
        page = connection(items, first=4, after=after)
        forward += page["nodes"]
        pages += 1
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert forward == [f"node{key}" for key in range(1, 12)] and pages == 3
    backward = connection(items, first=4, reverse=True)
    assert backward["nodes"] == ["node11", "node10", "node9", "node8"]
    after_reverse = connection(items, first=4, reverse=True, after=backward["pageInfo"]["endCursor"])
    assert after_reverse["nodes"] == ["node7", "node6", "node5", "node4"]
    last = connection(items, last=3, before=connection(items, first=5)["pageInfo"]["endCursor"])
    assert last["nodes"] == ["node2", "node3", "node4"] and last["pageInfo"]["hasPreviousPage"]
    assert connection(items, first=0)["nodes"] == []
    with pytest.raises(GraphQLError, match="cursor"):
        connection(items, first=1, after="not-a-cursor")


def test_cost_counts_fragments_and_aliases_like_plain_fields(shop):
    sandbox, url, _ = shop
    answer = gql(url, """
      fragment Level on InventoryLevel { quantities(names: ["available"]) { quantity } }
      query { a: productVariants(first: 3) { nodes { id inventoryItem { ... on InventoryItem {
                inventoryLevel(locationId: "%s") { ...Level } } } } }
              b: locations(first: 2) { edges { node { id } } } }""" % location_gid(sandbox))
    # a: 2 + 3 x (node 1 + item 1 + level 1 + quantities 1) = 14; b: 2 + 2 x 1 = 4.
    assert answer["extensions"]["cost"]["requestedQueryCost"] == 18
    assert answer["extensions"]["cost"]["actualQueryCost"] == 18
