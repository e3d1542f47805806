"""Prism (``@stoplight/prism-cli``, proxy mode) checks the Refurbed sandbox against the vendored Swagger.

Prism sits between the caller and the sandbox, validates every request and answer against
``sandbox/specs/refurbed-merchant-openapi.json`` and reports what breaks it in the
``sl-violations`` header (and a ``Violation`` log line).  Each endpoint the sandbox serves is called
for its answers, errors included (400, 404, 429), and must have none; a request that breaks the
spec on purpose shows that violations are reported.  The client runs through Prism as well.

Prism is installed by ``make test`` (``npm ci`` in ``tests/node``); without it the test is skipped.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import aiohttp
import pytest

from clients.refurbed import OfferStockUpdate, RefurbedClient
from runtime.local_servers import free_port, wait_until
from sandbox.refurbed import RefurbedSandbox
from sandbox.server import serve_in_thread
from tests.fleet import ROOT
from tests.test_sandbox_orders import request

PRISM = ROOT / "tests/node/node_modules/.bin/prism"
SPEC = ROOT / "sandbox/specs/refurbed-merchant-openapi.json"
TOKEN = "rb-prism-token"
#: Every route the sandbox serves.
SERVED = ("OrderService/GetOrder", "OrderService/ListOrders", "OrderItemService/UpdateOrderItemState",
          "OfferService/ListOffers", "OfferService/GetOffer", "OfferService/UpdateOffer",
          "OfferService/BatchUpdateOffers")

pytestmark = pytest.mark.skipif(not PRISM.exists(), reason="Prism is not installed: `make test` runs `npm ci` in "
                                                           "tests/node (Debian: apt-get install npm)")


def served_spec() -> dict[str, Any]:
    """The vendored spec cut down to the served paths and the definitions they reach (Prism starts in
    seconds on it instead of half a minute on all 100+ paths); nothing in it is changed."""
    spec = json.loads(SPEC.read_text())
    paths = {f"/refb.merchant.v1.{route}": spec["paths"][f"/refb.merchant.v1.{route}"] for route in SERVED}
    reached: set[str] = set()
    pending: list[Any] = [paths]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/definitions/"):
                name = ref.removeprefix("#/definitions/")
                if name not in reached:
                    reached.add(name)
                    pending.append(spec["definitions"][name])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return {**spec, "paths": paths, "definitions": {name: spec["definitions"][name] for name in sorted(reached)}}


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory):
    """(sandbox, the URL of Prism in front of it, Prism's log file): one Prism for the module; each
    test works on offers of its own."""
    tmp_path = tmp_path_factory.mktemp("prism")
    sandbox = RefurbedSandbox(token=TOKEN)
    server = serve_in_thread(sandbox.build_app())
    (tmp_path / "spec.json").write_text(json.dumps(served_spec()))
    port, log = free_port(), tmp_path / "prism.log"
    process = subprocess.Popen([str(PRISM), "proxy", str(tmp_path / "spec.json"), server.url, "--host", "127.0.0.1",
                                "--port", str(port)], stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                               cwd=PRISM.parents[2])

    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"prism exited: {log.read_text()[-2000:]}")
        return "Prism is listening" in log.read_text()

    try:
        wait_until(listening, 60, what="prism to listen")
        yield sandbox, f"http://127.0.0.1:{port}", log
    finally:
        process.terminate()
        process.wait(10)
        sandbox.close()
        server.stop()


def call(url: str, route: str, body: Any) -> tuple[int, Any, str | None]:
    """POST ``body`` to ``route`` through Prism: (status, answer, the sl-violations header or None)."""
    status, headers, raw = request(url, "POST", f"/refb.merchant.v1.{route}", body=body,
                                   headers={"Authorization": f"Plain {TOKEN}"})
    return status, json.loads(raw), headers.get("sl-violations")


def test_the_sandbox_answers_as_the_spec_says_for_every_endpoint_it_serves(proxied):
    sandbox, url, log = proxied
    for number in range(4):
        sandbox.add_offer(f"RB-{number}", 3)
    order = sandbox.place_order(["RB-0", "RB-1", "RB-2"], notify=False)
    items = [item["id"] for item in order["items"]]
    offer = sandbox.offers()[0]
    calls = [
        ("OfferService/ListOffers", {"pagination": {"limit": 2}, "sort": {"by": "ID", "order": "ASC"}}, 200),
        ("OfferService/ListOffers", {"pagination": {"limit": 2, "starting_after": offer["id"]}}, 200),
        ("OfferService/ListOffers", {"pagination": {"limit": 101}}, 400),
        # A push's read of a batch: the offers by id, one page.
        ("OfferService/ListOffers", {"pagination": {"limit": 2}, "filter": {"id": {"any_of": [offer["id"]]}}}, 200),
        ("OfferService/GetOffer", {"identifier": {"id": offer["id"]}}, 200),
        ("OfferService/GetOffer", {"identifier": {"sku": "RB-NONE"}}, 404),
        ("OfferService/UpdateOffer", {"identifier": {"sku": "RB-3"}, "stock": 0}, 200),
        ("OfferService/UpdateOffer", {"identifier": {"sku": "RB-3"}, "stock": 4294967296}, 400),
        ("OfferService/BatchUpdateOffers", {"offers": [{"identifier": {"sku": "RB-0"}, "stock": 9},
                                                       {"identifier": {"sku": "RB-NONE"}, "stock": 1}]}, 200),
        ("OfferService/BatchUpdateOffers", {"offers": [{"identifier": {"sku": "RB-0"}, "stock": 1}] * 51}, 400),
        ("OrderService/GetOrder", {"id": order["id"]}, 200),
        ("OrderService/GetOrder", {"id": "1"}, 404),
        ("OrderItemService/UpdateOrderItemState", {"id": items[0], "state": "CANCELLED"}, 200),
        ("OrderItemService/UpdateOrderItemState", {"id": items[1], "state": "ACCEPTED"}, 200),
        ("OrderItemService/UpdateOrderItemState", {"id": items[1], "state": "SHIPPED",
                                                   "parcel_tracking_url": "https://track.example/1"}, 200),
        ("OrderItemService/UpdateOrderItemState", {"id": items[0], "state": "ACCEPTED"}, 400),
        ("OrderService/ListOrders", {"pagination": {"limit": 100}, "sort": {"by": "ID", "order": "ASC"},
                                     "filter": {"state": {"any_of": ["NEW", "PARTIALLY_FULFILLED"]},
                                                "released_at": {"ge": "2020-01-01T00:00:00Z"}}}, 200),
    ]
    for route, body, expected in calls:
        status, answer, violations = call(url, route, body)
        assert status == expected, (route, body, answer)
        assert violations is None, (route, status, violations)
    assert sandbox.stock("RB-0") == 10 and sandbox.stock("RB-3") == 0  # 9, then the cancelled unit back

    # A 429 with its headers, and a sandbox fault.
    sandbox.rate_limit_next(1)
    sandbox.fail_next(1)
    for expected in (429, 503):
        status, answer, violations = call(url, "OfferService/GetOffer", {"identifier": {"sku": "RB-1"}})
        assert (status, violations) == (expected, None), answer

    # The control: a request that breaks the spec is reported.
    status, _, violations = call(url, "OfferService/ListOffers", {"pagination": {"limit": "many"}})
    assert status == 400 and violations and "limit" in violations


def test_the_client_speaks_the_spec(proxied):
    sandbox, url, log = proxied
    for number in range(4):
        sandbox.add_offer(f"CL-{number}", 3)
    skus = {offer["sku"] for offer in sandbox.offers()}
    logged = len(log.read_text())  # the other test's control violation is before this

    async def main():
        async with aiohttp.ClientSession() as session:
            client = RefurbedClient(session, base_url=url, token=TOKEN, backoff_s=0.01)
            listed, cursor = [], None
            while True:  # every page, by cursor
                page = await client.list_offers(starting_after=cursor, limit=3)
                listed.extend(page.offers)
                if not page.has_more:
                    break
                cursor = page.offers[-1].id
            await client.get_offer(sku="CL-1")
            await client.update_offer(sku="CL-1", stock=7)
            results = await client.batch_update_offers([OfferStockUpdate(2, sku="CL-2"),
                                                        OfferStockUpdate(1, sku="CL-0")])
            placed = sandbox.place_order(["CL-0"], notify=False)
            orders = await client.list_orders(starting_after=str(int(placed["id"]) - 1), states=["NEW"],
                                              released_at_ge="2020-01-01T00:00:00Z")
            order = await client.get_order(orders.orders[0].id)
            by_id = await client.list_orders(ids=[placed["id"]])  # the order walk's open orders
            return listed, results, order, by_id

    listed, results, order, by_id = asyncio.run(main())
    assert {offer.sku for offer in listed} == skus and len(listed) == len(skus)
    assert all(result.ok for result in results) and order.items[0].sku == "CL-0"
    assert [found.id for found in by_id.orders] == [order.id]
    assert (sandbox.stock("CL-1"), sandbox.stock("CL-2"), sandbox.stock("CL-0")) == (7, 2, 0)
    lines = log.read_text()[logged:].splitlines()
    assert sum("Request received" in line for line in lines) >= 8  # every call went through Prism
    assert [line for line in lines if "Violation" in line] == []
