"""The Shopify sandbox's GraphQL Admin API, over HTTP on loopback: pages, cost and throttling,
the compare-and-set write, orders and their webhooks."""
from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

import pytest

from core.platforms import SHOPIFY_API_VERSION
from sandbox.shopify import ShopifySandbox
from sandbox.server import serve_in_thread

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


def gql(url: str, query: str, **variables: Any) -> dict[str, Any]:
    status, answer = post(url, ENDPOINT, {"query": query, "variables": variables})
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
