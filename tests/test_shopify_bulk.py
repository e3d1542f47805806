"""Shopify bulk query operations: the sandbox's (GraphQL over HTTP, the JSONL file, one limit of running
operations, cost, faults) and the adapter's bulk walk (pages of the file, its snapshot moment, no
credential to the file's host, a resumed walk, a FAILED or EXPIRED operation, an expired link).
"""
from __future__ import annotations

import asyncio
import http.client
import json
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from clients import shopify_bulk
from clients.adapters import ShopifyAdapter
from clients.errors import ApiError, BadRequest
from clients.shopify import ShopifyClient, bulk_variants_query
from core.platforms import SHOPIFY_API_VERSION
from pipelines.stock_sync import wants_bulk
from sandbox.server import serve_in_thread
from sandbox.shopify import ShopifySandbox
from tests.test_shopify_sandbox_graphql import post

TOKEN = "shpat_bulk_tests_secret"
ENDPOINT = f"/admin/api/{SHOPIFY_API_VERSION}/graphql.json"

NESTED = """{ productVariants { edges { node { id sku inventoryItem { id tracked
  inventoryLevels { edges { node { location { id } quantities(names: ["available"]) { name quantity } } } } } } } } }"""


@pytest.fixture
def shop():
    sandbox = ShopifySandbox(products=12, variants_per_product=2, locations=2, token=TOKEN, no_sku_every=5,
                             bulk_startup_s=0.2, bulk_objects_per_s=1000)
    server = serve_in_thread(sandbox.build_app())
    yield sandbox, server.url
    server.stop()
    sandbox.close()


def graphql(url: str, query: str, variables: dict | None = None, token: str = TOKEN) -> dict:
    status, body = post(url, ENDPOINT, {"query": query, "variables": variables or {}}, token)
    assert status == 200
    return body


def fetch(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    connection.request("GET", f"{parts.path}?{parts.query}", headers=headers or {})
    response = connection.getresponse()
    return response.status, response.read()


def run_bulk(url: str, query: str = NESTED) -> dict:
    answer = graphql(url, shopify_bulk.RUN_MUTATION, {"query": query})
    return answer


def finished(url: str, op_id: str, timeout_s: float = 10) -> dict:
    """The operation once it is no longer RUNNING (polled, as a client does)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = graphql(url, shopify_bulk.OPERATION_QUERY, {"id": op_id})["data"]["bulkOperation"]
        if found["status"] != "RUNNING":
            return found
        time.sleep(0.05)
    raise AssertionError(f"bulk operation {op_id} still running after {timeout_s}s")


# -- the sandbox -----------------------------------------------------------------------------------------


def test_a_bulk_query_runs_in_the_background_and_writes_jsonl_with_parent_ids(shop):
    sandbox, url = shop
    answer = run_bulk(url)
    payload = answer["data"]["bulkOperationRunQuery"]
    assert payload["userErrors"] == [] and payload["bulkOperation"]["status"] == "RUNNING"
    op_id = payload["bulkOperation"]["id"]
    assert graphql(url, "{ currentBulkOperation { id status } }")["data"]["currentBulkOperation"]["id"] == op_id
    done = finished(url, op_id)
    assert done["status"] == "COMPLETED" and done["errorCode"] is None and done["completedAt"] >= done["createdAt"]
    status, body = fetch(done["url"])
    assert status == 200
    lines = [json.loads(line) for line in body.decode().splitlines()]
    variants = [line for line in lines if "__parentId" not in line]
    levels = [line for line in lines if "__parentId" in line]
    assert int(done["objectCount"]) == len(lines) == 24 + 24 * 2
    # One line per variant (plain nested objects inline), each level after its variant, named by __parentId.
    assert [v["sku"] for v in variants] == [v["sku"] for v in sandbox.variants()]
    assert "edges" not in body.decode() and all("inventoryLevels" not in v["inventoryItem"] for v in variants)
    seen: set[str] = set()
    for line in lines:
        if "__parentId" in line:
            assert line["__parentId"] in seen  # its parent came before it
        else:
            seen.add(line["id"])
    first = sandbox.variants()[0]
    at_first = [line["quantities"][0]["quantity"] for line in levels if line["__parentId"].endswith(str(first["id"]))]
    assert at_first == [sandbox.available(first["sku"], location) for location in sandbox.location_ids()]


def test_the_file_is_a_snapshot_of_the_moment_the_operation_was_created(shop):
    sandbox, url = shop
    sandbox.configure(bulk_startup_s=1.0)
    sku = sorted(sandbox.truth())[0]
    before = sandbox.available(sku)
    op_id = run_bulk(url, bulk_variants_query([str(sandbox.location_ids()[0])]))["data"][
        "bulkOperationRunQuery"]["bulkOperation"]["id"]
    sandbox.set_available(sku, before + 7)  # while the operation runs: not in its file
    done = finished(url, op_id)
    lines = [json.loads(line) for line in fetch(done["url"])[1].decode().splitlines()]
    line = next(line for line in lines if line["sku"] == sku)
    assert line["inventoryItem"]["at0"]["quantities"] == [{"name": "available", "quantity": before}]


def test_running_operations_are_limited_per_shop_with_shopifys_user_errors(shop):
    sandbox, url = shop
    sandbox.configure(bulk_startup_s=30, bulk_max_running=1)  # before 2026-01: one at a time
    assert run_bulk(url)["data"]["bulkOperationRunQuery"]["userErrors"] == []
    second = run_bulk(url)["data"]["bulkOperationRunQuery"]
    assert second["bulkOperation"] is None
    assert [e["code"] for e in second["userErrors"]] == ["OPERATION_IN_PROGRESS"]
    sandbox.configure(bulk_max_running=5)  # 2026-01: five at a time
    codes = [run_bulk(url)["data"]["bulkOperationRunQuery"]["userErrors"] for _ in range(5)]
    assert codes[:4] == [[]] * 4 and [e["code"] for e in codes[4]] == ["LIMIT_REACHED"]


def test_a_query_that_is_no_bulk_query_is_refused_invalid(shop):
    _, url = shop
    for query in ("{ productVariants(first: 5) { edges { node { id nope } } } }",   # not in the schema
                  "{ locations { edges { node { id } } } productVariants { edges { node { id } } } }",
                  "{ inventoryItem(id: \"gid://shopify/InventoryItem/1\") { id } }"):    # not a connection
        errors = run_bulk(url, query)["data"]["bulkOperationRunQuery"]["userErrors"]
        assert [e["code"] for e in errors] == ["INVALID"], query


def test_the_mutation_costs_ten_points_a_poll_one_and_the_bulk_query_nothing(shop):
    sandbox, url = shop
    answer = run_bulk(url)
    assert answer["extensions"]["cost"]["actualQueryCost"] == 10
    available = answer["extensions"]["cost"]["throttleStatus"]["currentlyAvailable"]
    assert available >= 2000 - 10 - 1  # the query over every variant and level drew nothing
    poll = graphql(url, shopify_bulk.OPERATION_QUERY,
                   {"id": answer["data"]["bulkOperationRunQuery"]["bulkOperation"]["id"]})
    assert poll["extensions"]["cost"]["requestedQueryCost"] == poll["extensions"]["cost"]["actualQueryCost"] == 1


def test_a_failed_operation_has_its_error_code_and_partial_data_and_an_expired_one_no_file(shop):
    sandbox, url = shop
    sandbox.fail_next_bulk("TIMEOUT")
    failed = finished(url, run_bulk(url)["data"]["bulkOperationRunQuery"]["bulkOperation"]["id"])
    assert (failed["status"], failed["errorCode"], failed["url"]) == ("FAILED", "TIMEOUT", None)
    status, partial = fetch(failed["partialDataUrl"])
    assert status == 200 and 0 < len(partial.decode().splitlines()) < 72

    done = finished(url, run_bulk(url)["data"]["bulkOperationRunQuery"]["bulkOperation"]["id"])
    assert sandbox.expire_bulk_operations() == 2
    expired = finished(url, done["id"])
    assert (expired["status"], expired["url"]) == ("EXPIRED", None)
    assert fetch(done["url"])[0] == 404  # its file is gone


def test_the_files_link_is_signed_and_expires(shop):
    sandbox, url = shop
    sandbox.configure(bulk_url_ttl_s=1)
    done = finished(url, run_bulk(url)["data"]["bulkOperationRunQuery"]["bulkOperation"]["id"])
    assert fetch(done["url"].replace("Signature=", "Signature=0"))[0] == 403
    time.sleep(2.1)  # the link's own life (whole seconds), not a synchronisation
    status, body = fetch(done["url"])
    assert status == 403 and b"ExpiredToken" in body
    assert fetch(finished(url, done["id"])["url"])[0] == 200  # a poll signs a fresh one


# -- the adapter -------------------------------------------------------------------------------------------


def adapter_run(url: str, job, *, limit: int = 10, location_ids: list[str] | None = None):
    records: list = []

    async def main():
        async with aiohttp.ClientSession() as http:
            client = ShopifyClient(http, base_url=url, token=TOKEN, backoff_s=0.01, on_request=records.append)
            return await job(ShopifyAdapter(client, location_ids=location_ids, limit=limit, bulk_poll_s=0.05))

    return asyncio.run(main()), records


async def bulk_walk(adapter: ShopifyAdapter, cursor: str = shopify_bulk.BULK_START, page: int = 1) -> list:
    """A bulk walk as the chain runs it: a page not ready is asked again after its delay."""
    pages = []
    for _ in range(500):
        fetched = await adapter.list_page(page, cursor)
        if fetched.retry_after_s is not None:
            await asyncio.sleep(fetched.retry_after_s)  # the delayed message's stand-in
            continue
        pages.append(fetched)
        if fetched.next_cursor is None:
            return pages
        page, cursor = page + 1, fetched.next_cursor
    raise AssertionError("the bulk walk never ended")


def listed(pages) -> dict[str, int]:
    return {item["sku"]: item["quantity"] for page in pages for item in page.items}


def test_a_bulk_walk_reads_the_file_in_pages_as_of_its_snapshot_and_equals_the_paged_walk(shop):
    sandbox, url = shop
    pages, records = adapter_run(url, bulk_walk)
    assert listed(pages) == sandbox.truth()
    assert pages[0].items == [] and pages[0].next_cursor.startswith("bulk:")  # page 1 started the operation
    assert [len(page.items) + page.skipped for page in pages[1:]] == [10, 10, 4]
    assert pages[-1].total_pages == len(pages) and all(page.total_pages is None for page in pages[:-1])
    created = {page.read_at for page in pages[1:]}
    assert len(created) == 1 and isinstance(created.pop(), datetime)
    # The credential went to the shop's host only: the file's host got none.
    stats = sandbox.stats()["storage"]
    assert stats["requests"] == 3 and stats["with_token"] == 0
    assert sum(record.endpoint == shopify_bulk.FILE_ROUTE for record in records) == 3
    # Each read starts (Range) where the page before it left off, as the sandbox saw it.
    assert sandbox.file_reads() == [shopify_bulk.parse_cursor(page.next_cursor) for page in pages[:-1]]


def test_the_files_host_gets_no_credential_even_on_another_host_name(shop):
    sandbox, url = shop
    sandbox.configure(storage_url=url.replace("127.0.0.1", "localhost"))
    pages, _ = adapter_run(url, bulk_walk, location_ids=[str(sandbox.location_ids()[1])])
    assert listed(pages) == sandbox.quantities(sandbox.location_ids()[1])
    assert sandbox.stats()["storage"]["with_token"] == 0 and sandbox.stats()["storage"]["requests"] >= 3


def test_a_resumed_bulk_walk_reads_on_from_its_cursors_byte_offset(shop):
    sandbox, url = shop

    async def interrupted(adapter):
        first = await bulk_walk(adapter)
        resumed = await bulk_walk(adapter, first[1].next_cursor, page=3)  # page 2 applied, then a crash
        return first, resumed

    (first, resumed), _ = adapter_run(url, interrupted)
    assert [page.items for page in resumed] == [page.items for page in first[2:]]


def test_a_failed_or_expired_operation_fails_the_walk_with_its_error(shop):
    sandbox, url = shop
    sandbox.fail_next_bulk("INTERNAL_SERVER_ERROR")
    with pytest.raises(ApiError) as failed:
        adapter_run(url, bulk_walk)
    assert failed.value.permanent and failed.value.code == "INTERNAL_SERVER_ERROR"
    assert "FAILED (INTERNAL_SERVER_ERROR)" in str(failed.value)

    async def expire_midway(adapter):
        pages = await bulk_walk(adapter)
        sandbox.expire_bulk_operations()
        return await adapter.list_page(3, pages[1].next_cursor)

    with pytest.raises(ApiError) as expired:
        adapter_run(url, expire_midway)
    assert expired.value.permanent and expired.value.code == "EXPIRED"


def test_an_expired_link_is_a_transient_error_and_a_running_operation_refuses_a_second_one(shop):
    sandbox, url = shop

    async def stale_link(adapter):
        started = await shopify_bulk.start(adapter.client, bulk_variants_query([str(sandbox.location_ids()[0])]))
        while (done := await shopify_bulk.operation(adapter.client, started.number)).status == "RUNNING":
            await asyncio.sleep(0.05)
        tampered = done.url.replace("Expires=", "Expires=1")
        return await shopify_bulk.read_lines(adapter.client, tampered, 0, 10)

    with pytest.raises(ApiError) as refused:
        adapter_run(url, stale_link)
    assert refused.value.status == 403 and not refused.value.permanent
    assert str(refused.value).endswith("answered 403: SignatureDoesNotMatch"), str(refused.value)  # tampered

    sandbox.configure(bulk_max_running=1, bulk_startup_s=30)

    async def twice(adapter):
        query = bulk_variants_query([str(sandbox.location_ids()[0])])
        await shopify_bulk.start(adapter.client, query)
        return await shopify_bulk.start(adapter.client, query)

    with pytest.raises(BadRequest) as second:
        adapter_run(url, twice)
    assert second.value.code == "OPERATION_IN_PROGRESS"


@pytest.mark.parametrize("has_bulk, last, minimum, chosen", [
    (True, 20_000, 2_000, True), (True, 2_000, 2_000, True), (True, 1_999, 2_000, False),
    (True, None, 2_000, False), (True, None, 0, True), (False, 20_000, 0, False)])
def test_bulk_is_chosen_from_the_last_known_catalogue_size(has_bulk: bool, last: Any, minimum: int, chosen: bool):
    assert wants_bulk(has_bulk, last, minimum) is chosen


def test_a_file_host_that_is_gone_is_a_transient_error_that_shows_no_signature(shop):
    sandbox, url = shop
    for link in ("http://127.0.0.1:9/_storage/bulk/1.jsonl?Expires=1&Signature=s3cr3t",  # nobody listens
                 "http://127.0.0.1:99999/_storage/bulk/1.jsonl?Expires=1&Signature=s3cr3t"):  # an impossible port

        async def unreachable(adapter, link=link):
            return await shopify_bulk.read_lines(adapter.client, link, 0, 10, timeout_s=5)

        with pytest.raises(ApiError) as gone:
            adapter_run(url, unreachable)
        assert not gone.value.permanent and "s3cr3t" not in str(gone.value), str(gone.value)


@pytest.mark.parametrize("body, shown", [
    ("<Error><Code>SignatureDoesNotMatch</Code><StringToSign>GET /f?Signature=s3cr3t</StringToSign></Error>",
     "SignatureDoesNotMatch"),
    ("ExpiredToken: the signed link has expired", "ExpiredToken"),
    ("denied for /f?Signature=s3cr3t", "(body not shown)")])
def test_a_file_hosts_error_is_named_by_its_code_never_by_a_body_that_may_echo_the_link(body: str, shown: str):
    assert shopify_bulk._error_code(body) == shown
