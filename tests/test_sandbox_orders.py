"""Sandbox orders: Back Market ``/ws/orders`` and Refurbed's OrderService + webhook, over HTTP."""
from __future__ import annotations

import http.client
import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
from aiohttp import web
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from runtime.local_servers import wait_until
from sandbox.backmarket import BackMarketSandbox
from sandbox.backmarket_orders import OutOfStock
from sandbox.refurbed import RefurbedSandbox
from sandbox.server import serve_in_thread

SPECS = Path(__file__).resolve().parents[1] / "sandbox" / "specs"
SHARED_SPECS = Path(__file__).resolve().parents[2] / "shared" / "specs"
TOKEN = "orders-token"
BM_HEADERS = {"Authorization": f"Basic {TOKEN}", "User-Agent": "BM-Stocksync-Tests;ops@example.com",
              "Accept-Language": "fr-fr"}


def request(url: str, method: str, path: str, *, body: Any = None, headers: dict | None = None
            ) -> tuple[int, Any, bytes]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    try:
        connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def backmarket():
    sandbox = BackMarketSandbox(listings=40, seed=3, token=TOKEN, quota_requests=0)
    clock = Clock()
    sandbox.orders.now = clock
    server = serve_in_thread(sandbox.build_app())
    yield sandbox, server, clock
    server.stop()


def bm_get(server, path: str, **headers) -> tuple[int, Any]:
    status, _, raw = request(server.url, "GET", path, headers={**BM_HEADERS, **headers})
    return status, json.loads(raw)


# -- Back Market -------------------------------------------------------------------------------------


def test_placing_an_order_lowers_the_sandbox_stock_like_back_market(backmarket):
    sandbox, server, _ = backmarket
    first, second = sandbox.listing(0), sandbox.listing(1)
    sandbox.set_quantity(first["id"], 5)
    sandbox.set_quantity(second["id"], 1)
    order = sandbox.orders.place_order([(first["id"], 2), (second["id"], 1)])
    assert sandbox.quantity(first["id"]) == 3 and sandbox.quantity(second["id"]) == 0
    # The listing page shows the lowered stock too.
    status, shown = bm_get(server, f"/ws/listings/{first['id']}")
    assert status == 200 and shown["quantity"] == 3
    lines = {line["listing"]: line for line in order["orderlines"]}
    assert lines[first["sku"]]["quantity"] == 2 and lines[first["sku"]]["listing_id"] == first["listing_id"]
    assert order["state"] == 1 and {line["state"] for line in order["orderlines"]} == {1}
    with pytest.raises(OutOfStock):
        sandbox.orders.place_order([(second["id"], 1)])
    assert sandbox.quantity(second["id"]) == 0  # a refused order takes nothing


def test_a_cancelled_line_gives_its_stock_back_once(backmarket):
    sandbox, _, clock = backmarket
    listing = sandbox.listing(3)
    sandbox.set_quantity(listing["id"], 4)
    order = sandbox.orders.place_order([(listing["id"], 3)])
    line = order["orderlines"][0]["id"]
    clock.advance(60)
    cancelled = sandbox.orders.set_line_state(order["order_id"], line, 4)
    assert sandbox.quantity(listing["id"]) == 4
    assert cancelled["date_modification"] > order["date_modification"] and cancelled["state"] == 9
    sandbox.orders.set_line_state(order["order_id"], line, 5)  # already restocked: nothing more
    assert sandbox.quantity(listing["id"]) == 4


def test_the_restock_dial_decides_whether_a_cancellation_gives_stock_back(backmarket):
    sandbox, _, _ = backmarket
    listing = sandbox.listing(4)
    sandbox.set_quantity(listing["id"], 4)
    sandbox.configure(restock_on_cancel=False)
    order = sandbox.orders.place_order([(listing["id"], 3)])
    sandbox.orders.set_line_state(order["order_id"], order["orderlines"][0]["id"], 4)
    assert sandbox.quantity(listing["id"]) == 1  # the units stay off until the seller pushes them
    sandbox.configure(restock_on_cancel=True)
    again = sandbox.orders.place_order([(listing["id"], 1)])
    sandbox.orders.set_line_state(again["order_id"], again["orderlines"][0]["id"], 4)
    assert sandbox.quantity(listing["id"]) == 1
    with pytest.raises(ValueError, match="restock_on_cancel"):
        sandbox.configure(restock_on_cancel="no")


def test_orders_list_filters_pages_and_hides_states_0_and_8(backmarket):
    sandbox, server, clock = backmarket
    ids = []
    for index in range(12):
        ids.append(sandbox.orders.place_order([(sandbox.listing(index)["id"], 1)], oversell=True)["order_id"])
        clock.advance(10)
    sandbox.orders.set_order_state(ids[0], 8)  # not paid: never listed
    sandbox.orders.place_order([(sandbox.listing(20)["id"], 1)], state=0, oversell=True)
    status, page = bm_get(server, "/ws/orders?page-size=5")
    assert status == 200 and page["count"] == 11 and page["previous"] is None
    assert [order["order_id"] for order in page["results"]] == ids[1:6]  # ascending order id
    assert page["next"].endswith("/ws/orders?page=2&page-size=5")
    status, last = bm_get(server, "/ws/orders?page-size=5&page=3")
    assert [order["order_id"] for order in last["results"]] == ids[11:] and last["next"] is None
    status, beyond = bm_get(server, "/ws/orders?page-size=5&page=9")
    assert status == 200 and beyond["results"] == [] and beyond["count"] == 11
    # date_modification: at or after the given time (RFC 3339); a line change moves an order up.
    since = sandbox.orders.order(ids[9])["date_modification"]
    status, recent = bm_get(server, f"/ws/orders?date_modification={since}")
    assert [order["order_id"] for order in recent["results"]] == ids[9:]
    clock.advance(10)
    sandbox.orders.set_line_state(ids[2], sandbox.orders.order(ids[2])["orderlines"][0]["id"], 2)
    status, recent = bm_get(server, f"/ws/orders?date_modification={since}")
    assert [order["order_id"] for order in recent["results"]] == [ids[2], *ids[9:]]
    status, accepted = bm_get(server, "/ws/orders?state=3")
    assert [order["order_id"] for order in accepted["results"]] == [ids[2]]
    assert bm_get(server, "/ws/orders?date_modification=yesterday")[0] == 400
    assert bm_get(server, "/ws/orders?page-size=51")[0] == 400


def test_one_order_and_the_gate(backmarket):
    sandbox, server, _ = backmarket
    order = sandbox.orders.place_order([(sandbox.listing(5)["id"], 1)])
    status, shown = bm_get(server, f"/ws/orders/{order['order_id']}")
    assert status == 200 and shown == order
    assert bm_get(server, "/ws/orders/1")[0] == 404
    assert bm_get(server, "/ws/orders/abc")[0] == 400
    status, _, _ = request(server.url, "GET", "/ws/orders", headers={**BM_HEADERS, "Authorization": "Basic nope"})
    assert status == 401
    status, _, _ = request(server.url, "GET", "/ws/orders", headers={"Authorization": f"Basic {TOKEN}"})
    assert status == 403  # no User-Agent: the WAF
    assert sandbox.stats()["by_endpoint"]["GET /ws/orders/{order_id}"] == 3


def test_admin_routes_place_and_cancel_over_http(backmarket):
    sandbox, server, _ = backmarket
    listing = sandbox.listing(7)
    sandbox.set_quantity(listing["id"], 2)
    status, _, raw = request(server.url, "POST", "/_sandbox/orders", body={"lines": [{"listing": listing["id"],
                                                                                      "quantity": 2}]})
    order = json.loads(raw)
    assert status == 201 and sandbox.quantity(listing["id"]) == 0
    assert request(server.url, "POST", "/_sandbox/orders",
                   body={"lines": [{"listing": listing["id"], "quantity": 1}]})[0] == 409
    line = order["orderlines"][0]["id"]
    status, _, _ = request(server.url, "POST", f"/_sandbox/orders/{order['order_id']}/lines/{line}", body={"state": 4})
    assert status == 200 and sandbox.quantity(listing["id"]) == 2


@pytest.fixture(scope="module")
def openapi() -> OpenAPI:
    return OpenAPI.from_file_path(str(SPECS / "backmarket-openapi.yml"))


def test_order_answers_match_back_markets_spec(backmarket, openapi):
    sandbox, server, _ = backmarket
    for index in range(3):
        order = sandbox.orders.place_order([(sandbox.listing(index)["id"], 1), (sandbox.listing(9)["id"], 1)],
                                           oversell=True)
    sandbox.orders.set_line_state(order["order_id"], order["orderlines"][0]["id"], 3)
    for path, pattern, args in (("/ws/orders?page-size=2", None, None),
                                (f"/ws/orders/{order['order_id']}", "/ws/orders/{order_id}",
                                 {"order_id": order["order_id"]})):
        status, headers, raw = request(server.url, "GET", path, headers=BM_HEADERS)
        assert status == 200
        mock = MockRequest("https://www.backmarket.fr", "get", path.split("?")[0], path_pattern=pattern,
                           view_args=args, headers=BM_HEADERS)
        openapi.validate_response(mock, MockResponse(raw, status_code=status, content_type="application/json"))


# -- Refurbed ----------------------------------------------------------------------------------------


def refurbed_schema(name: str) -> dict:
    path = SPECS / "refurbed-merchant-openapi.json"
    definitions = json.loads(path.read_text())["definitions"]
    return {"$ref": f"#/definitions/{name}", "definitions": definitions}


def test_the_vendored_refurbed_spec_is_the_shared_one():
    shared = SHARED_SPECS / "refurbed-merchant-openapi.json"
    if not shared.exists():
        pytest.skip("no shared spec outside this clone")
    assert (SPECS / "refurbed-merchant-openapi.json").read_bytes() == shared.read_bytes()


@pytest.fixture
def refurbed():
    sandbox = RefurbedSandbox(token="rb-token")
    server = serve_in_thread(sandbox.build_app())
    yield sandbox, server
    sandbox.close()
    server.stop()


def rpc(server, method: str, body: Any, token: str = "rb-token") -> tuple[int, Any]:
    status, _, raw = request(server.url, "POST", f"/refb.merchant.v1.{method}", body=body,
                             headers={"Authorization": f"Plain {token}"})
    return status, json.loads(raw)


def test_refurbed_get_order_speaks_the_swagger_shapes(refurbed):
    sandbox, server = refurbed
    placed = sandbox.place_order(["SKU-A", "SKU-B"], notify=False)
    status, body = rpc(server, "OrderService/GetOrder", {"id": placed["id"]})
    assert status == 200 and body["order"] == placed
    jsonschema.validate(body, refurbed_schema("GetOrderResponse"))
    order = body["order"]
    assert isinstance(order["id"], str) and order["state"] == "NEW"
    assert [(item["sku"], item["state"], item["order_id"]) for item in order["items"]] == [
        ("SKU-A", "NEW", order["id"]), ("SKU-B", "NEW", order["id"])]
    status, missing = rpc(server, "OrderService/GetOrder", {"id": "1"})
    assert status == 404 and missing["code"] == 5 and missing["message"]
    jsonschema.validate(missing, refurbed_schema("Status"))
    assert rpc(server, "OrderService/GetOrder", {"id": "x"})[0] == 400
    status, refused = rpc(server, "OrderService/GetOrder", {"id": placed["id"]}, token="wrong")
    assert status == 401 and refused["code"] == 16


def test_refurbed_list_orders_paginates_by_cursor(refurbed):
    sandbox, server = refurbed
    ids = [sandbox.place_order([f"SKU-{n}"], notify=False)["id"] for n in range(7)]
    status, first = rpc(server, "OrderService/ListOrders", {"pagination": {"limit": 3}})
    jsonschema.validate(first, refurbed_schema("ListOrdersResponse"))
    assert [order["id"] for order in first["orders"]] == ids[:3] and first["has_more"] is True
    status, rest = rpc(server, "OrderService/ListOrders", {"pagination": {"limit": 100, "starting_after": ids[2]}})
    assert [order["id"] for order in rest["orders"]] == ids[3:] and rest["has_more"] is False
    status, newest = rpc(server, "OrderService/ListOrders", {"pagination": {"limit": 2},
                                                             "sort": {"by": "ID", "order": "DESC"}})
    assert [order["id"] for order in newest["orders"]] == [ids[6], ids[5]]
    status, too_big = rpc(server, "OrderService/ListOrders", {"pagination": {"limit": 101}})
    assert status == 400 and "too large" in too_big["message"]
    # State filter and item state changes (the order's state is derived from its items').
    item = sandbox.order(ids[1])["items"][0]["id"]
    status, changed = rpc(server, "OrderItemService/UpdateOrderItemState", {"id": item, "state": "CANCELLED"})
    assert status == 200 and changed["order_item"]["state"] == "CANCELLED"
    status, cancelled = rpc(server, "OrderService/ListOrders", {"filter": {"state": {"any_of": ["CANCELLED"]}}})
    assert [order["id"] for order in cancelled["orders"]] == [ids[1]]
    assert rpc(server, "OrderItemService/UpdateOrderItemState", {"id": item, "state": "ACCEPTED"})[0] == 400


class WebhookReceiver:
    """A webhook endpoint that answers with the statuses it is given, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.server = serve_in_thread(app)
        self.url = f"{self.server.url}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self.lock:
            self.bodies.append(body)
            status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status)


def test_refurbed_webhook_is_sent_at_least_twice_and_retried_until_accepted():
    receiver = WebhookReceiver(statuses=[500, 503])
    sandbox = RefurbedSandbox(webhook_url=receiver.url, webhook_resends=1, webhook_retry_s=0.01)
    try:
        order = sandbox.place_order(["SKU-A"])
        sandbox.wait_for_deliveries(10)
        # Two failed attempts, then the first copy, then the re-send of the same notification.
        assert [json.loads(body) for body in receiver.bodies] == [{"order_id": int(order["id"])}] * 4
        assert [(d.copy, d.attempt, d.status) for d in sandbox.deliveries()] == [
            (0, 1, 500), (0, 2, 503), (0, 3, 200), (1, 1, 200)]
    finally:
        sandbox.close()
        receiver.server.stop()


def test_refurbed_webhook_survives_a_receiver_that_is_down():
    receiver = WebhookReceiver()
    url = receiver.url
    receiver.server.stop()
    sandbox = RefurbedSandbox(webhook_url=url, webhook_resends=0, webhook_max_attempts=3, webhook_retry_s=0.01)
    try:
        sandbox.place_order(["SKU-A"])
        wait_until(lambda: len(sandbox.deliveries()) == 3, 10, what="three attempts")
        assert all(d.status is None and "Connection" in d.error for d in sandbox.deliveries())
    finally:
        sandbox.close()
