"""The Shopify adapter against the GraphQL sandbox on loopback: pages by cursor, locations summed or one
chosen, read one, the compare-and-set write, THROTTLED answers waited out in the fleet's cost bucket,
and Shopify's own Python client (``ShopifyAPI``) running the adapter's documents and getting what the
adapter parses.
"""
from __future__ import annotations

import asyncio
import json

import aiohttp
import fakeredis
import pytest
import shopify

from clients.adapters import ShopifyAdapter
from clients.costbucket import FleetCostBucket
from clients.shopify import (LOCATIONS_QUERY, ORDERS_PAGE_LIMIT, ORDERS_QUERY, SET_MUTATION, ShopifyClient, gid,
                             level_query, variants_query)
from core.platforms import SHOPIFY_API_VERSION
from sandbox.server import serve_in_thread
from sandbox.shopify import ShopifySandbox

TOKEN = "shpat_adapter_tests_secret"


@pytest.fixture
def shop():
    sandbox = ShopifySandbox(products=30, variants_per_product=2, locations=2, token=TOKEN, no_sku_every=7)
    server = serve_in_thread(sandbox.build_app())
    yield sandbox, server.url
    server.stop()


def run(url: str, job, *, bucket: FleetCostBucket | None = None, location_ids: list[str] | None = None,
        limit: int = 10):
    """``job(adapter)`` on a fresh session, client and adapter (as each message of the fleet makes them)."""
    async def main():
        async with aiohttp.ClientSession() as http:
            client = ShopifyClient(http, base_url=url, token=TOKEN, cost_bucket=bucket, backoff_s=0.01)
            return await job(ShopifyAdapter(client, location_ids=location_ids, limit=limit))

    return asyncio.run(main())


async def walk(adapter: ShopifyAdapter) -> list:
    pages, cursor = [], None
    for page in range(1, 100):
        pages.append(await adapter.list_page(page, cursor))
        cursor = pages[-1].next_cursor
        if cursor is None:
            return pages
    raise AssertionError("the cursor chain never ended")


def listed(pages) -> dict[str, int]:
    return {item["sku"]: item["quantity"] for page in pages for item in page.items}


def test_pages_by_cursor_sum_every_active_location_and_skip_variants_without_a_sku(shop):
    sandbox, url = shop
    pages = run(url, walk)
    assert listed(pages) == sandbox.truth()
    assert sum(page.skipped for page in pages) == len([v for v in sandbox.variants() if not v["sku"]]) > 0
    assert len(pages) == 6 and pages[-1].total_pages == 6 and all(p.total_pages is None for p in pages[:-1])
    # Listings are the inventory items' numbers, as the REST adapter kept them.
    by_sku = {v["sku"]: str(v["inventory_item_id"]) for v in sandbox.variants()}
    assert all(item["id"] == by_sku[item["sku"]] for page in pages for item in page.items)


def test_one_chosen_location_is_all_that_is_read_and_an_untracked_item_is_left_out(shop):
    sandbox, url = shop
    second = str(sandbox.location_ids()[1])
    untracked = sorted(sandbox.truth())[0]
    sandbox.set_available(untracked, None, int(second))
    pages = run(url, walk, location_ids=[second])
    at_second = sandbox.quantities(int(second))
    del at_second[untracked]
    assert listed(pages) == at_second
    item = next(str(v["inventory_item_id"]) for v in sandbox.variants() if v["sku"] == sorted(at_second)[0])
    assert run(url, lambda adapter: adapter.read_quantity([item]), location_ids=[second]) == \
        sandbox.available(sorted(at_second)[0], int(second))


def test_a_stale_belief_is_refused_and_nothing_is_written(shop):
    sandbox, url = shop
    first = sandbox.location_ids()[0]
    sku = sorted(sandbox.truth())[2]
    item = next(str(v["inventory_item_id"]) for v in sandbox.variants() if v["sku"] == sku)
    before = sandbox.available(sku, first)

    async def stale_then_fresh(adapter):
        # A belief the levels do not show: refused before any write.
        by_adapter = await adapter.set_quantity(item, before + 3, before + 1, reference="gid://stocksync/StockPush/7")
        # A stale changeFromQuantity reaching Shopify: refused by Shopify, nothing written.
        by_shopify = await adapter.client.set_available(item, str(first), before + 3, change_from=before + 1,
                                                        reference="gid://stocksync/StockPush/7")
        after_refusals = sandbox.available(sku, first)
        belief = await adapter.read_quantity([item])
        done = await adapter.set_quantity(item, belief + 3, belief, reference="gid://stocksync/StockPush/7")
        return by_adapter, by_shopify, after_refusals, belief, done

    assert run(url, stale_then_fresh, location_ids=[str(first)]) == (False, False, before, before, True)
    assert sandbox.available(sku, first) == before + 3
    assert sandbox.stats()["inventory_writes"] == {"applied": 1, "refused_stale": 1, "refused_other": 0}


def test_an_oversold_level_is_compared_as_shopify_holds_it(shop):
    sandbox, url = shop
    first = sandbox.location_ids()[0]
    sku = sorted(sandbox.truth())[3]
    item = next(str(v["inventory_item_id"]) for v in sandbox.variants() if v["sku"] == sku)
    sandbox.set_available(sku, -2, first)  # oversold: a read shows 0, Shopify holds -2
    assert run(url, lambda adapter: adapter.read_quantity([item]), location_ids=[str(first)]) == 0
    assert run(url, lambda adapter: adapter.set_quantity(item, 4, 0), location_ids=[str(first)]) is True
    assert sandbox.available(sku, first) == 4


def test_with_several_locations_a_push_lands_the_difference_on_the_first(shop):
    sandbox, url = shop
    first, second = sandbox.location_ids()
    sku = sorted(sandbox.truth())[4]
    item = next(str(v["inventory_item_id"]) for v in sandbox.variants() if v["sku"] == sku)
    sandbox.set_available(sku, 2, first)
    sandbox.set_available(sku, 5, second)
    # The belief is the sum; the first location takes target - what the others hold, the others stay.
    assert run(url, lambda adapter: adapter.set_quantity(item, 9, 7)) is True
    assert (sandbox.available(sku, first), sandbox.available(sku, second)) == (4, 5)
    assert run(url, lambda adapter: adapter.set_quantity(item, 1, 7)) is False  # the sum is 9 now: stale
    assert sandbox.truth()[sku] == 9


def test_throttled_answers_are_waited_out_in_the_shops_bucket_and_lose_nothing(shop):
    sandbox, url = shop
    unthrottled = listed(run(url, walk))
    sandbox.throttle_next(3)
    bucket = FleetCostBucket(fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer()), "shop", maximum=1000,
                             restore_rate=100)
    seen = {}

    async def job(adapter):
        pages = await walk(adapter)
        seen["throttled"] = adapter.client.throttled
        seen["cost"] = adapter.client.last_cost
        return pages

    pages = run(url, job, bucket=bucket)
    assert listed(pages) == unthrottled == sandbox.truth()
    assert seen["throttled"] == 3
    # The bucket learned the shop's figures from extensions.cost (the standard plan's restore rate).
    assert (bucket.maximum, bucket.restore_rate) == (seen["cost"].maximum, seen["cost"].restore_rate)


def test_the_fleet_bucket_paces_a_walk_that_costs_more_than_the_shops_bucket(shop):
    sandbox, url = shop
    sandbox.configure(cost_maximum=150, cost_restore_rate=300)
    bucket = FleetCostBucket(fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer()), "shop", maximum=150,
                             restore_rate=300)
    seen = {}

    async def job(adapter):
        pages = []
        for _ in range(3):  # three walks: well over the 150 points the shop holds
            pages = await walk(adapter)
        seen["throttled"] = adapter.client.throttled
        return pages

    assert listed(run(url, job, bucket=bucket)) == sandbox.truth()
    assert seen["throttled"] == 0  # paced ahead of Shopify, never refused


# -- Shopify's own client runs the adapter's documents --------------------------------------------------


@pytest.fixture
def official_client(shop, monkeypatch):
    """``shopify.GraphQL`` on the sandbox.  The package speaks https to ``<shop>.myshopify.com`` only: here
    (and only here) its session is pointed at the loopback sandbox over http."""
    sandbox, url = shop
    host, port = url.split("//")[1].split(":")
    monkeypatch.setattr(shopify.Session, "protocol", "http")
    monkeypatch.setattr(shopify.Session, "myshopify_domain", host.split(".", 1)[1])  # "127" + ".0.0.1"
    monkeypatch.setattr(shopify.Session, "port", int(port))
    session = shopify.Session(host, SHOPIFY_API_VERSION, TOKEN)
    shopify.ShopifyResource.activate_session(session)
    yield sandbox, shopify.GraphQL()
    shopify.ShopifyResource.clear_session()


def test_shopifys_own_client_gets_the_answers_the_adapter_parses(shop, official_client):
    sandbox, graphql = official_client
    _, url = shop
    assert graphql.endpoint == f"{url}/admin/api/{SHOPIFY_API_VERSION}/graphql.json"
    locations = json.loads(graphql.execute(LOCATIONS_QUERY, {"first": 50}))
    assert [edge["node"]["id"] for edge in locations["data"]["locations"]["edges"]] == \
        [gid("Location", location) for location in sandbox.location_ids()]
    first = str(sandbox.location_ids()[0])

    variables = {"first": 10, "after": None, "l0": gid("Location", first)}
    official = json.loads(graphql.execute(variants_query(1), variables))
    assert "errors" not in official and official["extensions"]["cost"]["throttleStatus"]["restoreRate"] > 0
    ours = run(url, lambda adapter: adapter.client.variants_page([first], None, limit=10))
    edges = official["data"]["productVariants"]["edges"]
    assert [(edge["node"]["sku"] or "", edge["node"]["inventoryItem"]["at0"]["quantities"][0]["quantity"])
            for edge in edges] == [(v.sku, v.levels[0]) for v in ours.variants]
    assert official["data"]["productVariants"]["pageInfo"]["endCursor"] == ours.next_cursor

    item = ours.variants[0].inventory_item_id
    level = json.loads(graphql.execute(level_query(1), {"id": gid("InventoryItem", item),
                                                        "l0": gid("Location", first)}))
    assert level["data"]["inventoryItem"]["at0"]["quantities"] == [{"name": "available",
                                                                    "quantity": ours.variants[0].levels[0]}]

    def set_to(quantity: int, change_from: int) -> dict:
        return json.loads(graphql.execute(SET_MUTATION, {"input": {
            "name": "available", "reason": "correction", "referenceDocumentUri": "gid://stocksync/StockPush/1",
            "quantities": [{"inventoryItemId": gid("InventoryItem", item), "locationId": gid("Location", first),
                            "quantity": quantity, "changeFromQuantity": change_from}]}}))

    belief = ours.variants[0].levels[0]
    stale = set_to(belief + 2, belief + 1)["data"]["inventorySetQuantities"]
    assert stale["inventoryAdjustmentGroup"] is None
    assert [error["code"] for error in stale["userErrors"]] == ["CHANGE_FROM_QUANTITY_STALE"]
    done = set_to(belief + 2, belief)["data"]["inventorySetQuantities"]
    assert done["userErrors"] == [] and done["inventoryAdjustmentGroup"]["changes"][0]["delta"] == 2
    assert run(url, lambda adapter: adapter.read_quantity([item]), location_ids=[first]) == belief + 2

    sku = ours.variants[0].sku
    placed = sandbox.place_order({sku: 1}, notify=False)
    orders = json.loads(graphql.execute(ORDERS_QUERY, {"first": ORDERS_PAGE_LIMIT, "after": None,
                                                       "query": "updated_at:>='2020-01-01T00:00:00Z'"}))
    polled = run(url, lambda adapter: adapter.client.orders_page("2020-01-01T00:00:00Z"))
    assert [edge["node"]["id"] for edge in orders["data"]["orders"]["edges"]] == \
        [gid("Order", order.id) for order in polled.orders] == [gid("Order", placed["id"])]
    assert [(line.id, line.sku, line.quantity) for line in polled.orders[0].lines] == \
        [(str(line["id"]), line["sku"], line["quantity"]) for line in placed["line_items"]]
