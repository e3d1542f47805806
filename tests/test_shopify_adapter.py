"""The Shopify adapter against the GraphQL sandbox on loopback: pages by cursor, locations summed or one
chosen, read one, the compare-and-set write, THROTTLED answers waited out in the fleet's cost bucket,
and Shopify's own Python client (``ShopifyAPI``) running the adapter's documents and getting what the
adapter parses.
"""
from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import aiohttp
import fakeredis
import pytest
import shopify

from clients import shopify_bulk
from clients.adapters import ShopifyAdapter
from clients.costbucket import FleetCostBucket
from clients.shopify import (LOCATIONS_QUERY, ORDERS_PAGE_LIMIT, ORDERS_QUERY, SET_MUTATION, ShopifyClient,
                             bulk_variants_query, gid, gid_number, level_query, variants_query)
from core.platforms import SHOPIFY_API_VERSION, platform
from runtime.local_servers import wait_until
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


def test_a_process_reads_the_shops_locations_once_a_ttl_and_counts_one_opened_mid_walk_past_it(shop, monkeypatch):
    # Each page's message builds its own adapter: the locations come from the process's copy, not a read each.
    from runtime import clients as runtime_clients
    from runtime.accounts import AccountView
    from runtime.clients import shop_locations_reader
    from runtime.settings import get_settings

    sandbox, url = shop
    for name, value in (("ACCOUNTS_ALLOW_LOOPBACK", "true"), ("SHOPIFY_LOCATIONS_TTL_S", "60"), ("DATABASE_URL", "")):
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    now = [1000.0]
    monkeypatch.setattr(runtime_clients, "_clock", lambda: now[0])
    view = AccountView("shop-ttl", "shop-ttl", platform("shopify"), "STOCKSYNC_ACCOUNT_SHOP_TTL", url)
    before = sandbox.truth()

    async def page(cursor):
        async with aiohttp.ClientSession() as http:
            client = ShopifyClient(http, base_url=url, token=TOKEN, backoff_s=0.01)
            adapter = ShopifyAdapter(client, limit=10, shop_locations=shop_locations_reader(view, client))
            return await adapter.list_page(1, cursor)

    def location_reads() -> int:
        return sandbox.stats()["query_costs"].get("StocksyncLocations", {}).get("answers", 0)

    try:
        pages = [asyncio.run(page(None))]
        pages.append(asyncio.run(page(pages[-1].next_cursor)))
        opened = sandbox.add_location(available=5)  # the shop opens a location mid-walk
        pages.append(asyncio.run(page(pages[-1].next_cursor)))
        assert location_reads() == 1  # three pages, one read: the third counts the two it knows
        assert listed(pages) == {sku: before[sku] for sku in listed(pages)}
        now[0] += 61  # past the TTL: the next page reads the locations again and counts the new one
        pages.append(asyncio.run(page(pages[-1].next_cursor)))
        assert location_reads() == 2
        assert listed(pages[-1:]) == {sku: before[sku] + 5 for sku in listed(pages[-1:])}
        assert sandbox.available(next(iter(listed(pages[-1:]))), opened) == 5
    finally:
        get_settings.cache_clear()


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


def costs(sandbox: ShopifySandbox) -> dict[str, tuple[int, float]]:
    """``{operation: (answers, actual points)}`` the sandbox charged so far."""
    return {name: (cost["answers"], cost["actual"]) for name, cost in sandbox.stats()["query_costs"].items()}


def test_a_push_is_one_read_and_one_compared_write_costing_what_the_eta_counts(shop):
    sandbox, url = shop
    first, second = (str(location) for location in sandbox.location_ids())
    sku = sorted(sandbox.truth())[5]
    item = next(str(v["inventory_item_id"]) for v in sandbox.variants() if v["sku"] == sku)
    sandbox.set_available(sku, 3, int(first))
    sandbox.set_available(sku, 4, int(second))

    # At one location (the account names it): the read, then the write in a fresh adapter (as a push's
    # two steps run), comparing on what the read found.
    before = costs(sandbox)
    read = run(url, lambda adapter: adapter.read_listing(item), location_ids=[first])
    assert (read.quantity, read.basis.locations, read.basis.levels) == (3, (first,), (3,))
    assert run(url, lambda adapter: adapter.set_quantity(item, 5, read.quantity, basis=read.basis),
               location_ids=[first]) is True
    after = costs(sandbox)
    spent = {name: (after[name][0] - before.get(name, (0, 0))[0], after[name][1] - before.get(name, (0, 0))[1])
             for name in after if after[name] != before.get(name)}
    assert spent == {"StocksyncLevel": (1, 3), "StocksyncSetAvailable": (1, 10)}  # no second read
    assert sum(points for _, points in spent.values()) == ShopifyAdapter.push_points
    assert sandbox.available(sku, int(first)) == 5

    # Every active location (none named): the write reuses the read's locations, asking the shop nothing more.
    read = run(url, lambda adapter: adapter.read_listing(item))
    assert (read.quantity, read.basis.locations) == (9, (first, second))
    before = costs(sandbox)
    assert run(url, lambda adapter: adapter.set_quantity(item, 12, read.quantity, basis=read.basis)) is True
    assert {name for name in costs(sandbox) if costs(sandbox)[name] != before.get(name)} == {"StocksyncSetAvailable"}
    assert (sandbox.available(sku, int(first)), sandbox.available(sku, int(second))) == (8, 4)

    # An order after the read: Shopify refuses the write that compares on it, and nothing is written;
    # an order at another location than the first is kept (only the first is written, by difference).
    read = run(url, lambda adapter: adapter.read_listing(item))
    sandbox.place_order({sku: 1}, location_id=int(first), notify=False)
    assert run(url, lambda adapter: adapter.set_quantity(item, 20, read.quantity, basis=read.basis)) is False
    assert (sandbox.available(sku, int(first)), sandbox.available(sku, int(second))) == (7, 4)
    read = run(url, lambda adapter: adapter.read_listing(item))
    sandbox.place_order({sku: 1}, location_id=int(second), notify=False)
    assert run(url, lambda adapter: adapter.set_quantity(item, 20, read.quantity, basis=read.basis)) is True
    assert (sandbox.available(sku, int(first)), sandbox.available(sku, int(second))) == (16, 3)
    # A read of another item is no basis for this one.
    with pytest.raises(ValueError, match="levels read of that item"):
        run(url, lambda adapter: adapter.set_quantity(str(int(item) + 1), 1, read.quantity, basis=read.basis))


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


def test_shopifys_own_client_runs_the_bulk_mutation_and_poll_the_adapter_parses(shop, official_client):
    sandbox, graphql = official_client
    sandbox.configure(bulk_startup_s=0.1)
    first = str(sandbox.location_ids()[0])
    started = json.loads(graphql.execute(shopify_bulk.RUN_MUTATION, {"query": bulk_variants_query([first])}))
    payload = started["data"]["bulkOperationRunQuery"]
    assert payload["userErrors"] == [] and started["extensions"]["cost"]["actualQueryCost"] == 10
    number = gid_number(payload["bulkOperation"]["id"], "BulkOperation")

    def poll() -> dict:
        return json.loads(graphql.execute(shopify_bulk.OPERATION_QUERY, {"id": gid("BulkOperation", number)}))

    wait_until(lambda: poll()["data"]["bulkOperation"]["status"] == "COMPLETED", 10, interval=0.05,
               what="the bulk operation")
    official = poll()
    assert official["extensions"]["cost"]["actualQueryCost"] == 1
    ours = run(shop[1], lambda adapter: shopify_bulk.operation(adapter.client, number))
    node = official["data"]["bulkOperation"]
    assert (node["id"], node["status"], node["createdAt"], int(node["objectCount"])) == \
        (ours.id, ours.status, ours.created_at, ours.object_count) and ours.object_count == len(sandbox.variants())
    assert urlsplit(node["url"]).path == urlsplit(ours.url).path  # the link is signed afresh on each poll
