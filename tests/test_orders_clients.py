"""Order clients: Back Market order pages and the Refurbed client, against small scripted servers."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from clients.backmarket_orders import parse_orders_page
from clients.errors import MalformedResponse, RateLimited, ServerError, Unauthorized
from clients.refurbed import RefurbedClient
from sandbox.server import serve_in_thread

LINE = {"id": 1, "state": 1, "quantity": 1, "listing": "SKU-1", "listing_id": 10,
        "date_creation": "2026-11-23T09:00:00Z"}
ORDER = {"order_id": 5, "state": 1, "date_creation": "2026-11-23T09:00:00Z",
         "date_modification": "2026-11-23T09:05:00Z", "orderlines": [LINE]}


def page(*orders) -> dict:
    return {"count": len(orders), "next": None, "previous": None, "results": list(orders)}


def test_orders_page_is_parsed():
    parsed = parse_orders_page(1, page(ORDER))
    [order] = parsed.results
    assert (order.order_id, order.orderlines[0].sku, order.orderlines[0].quantity) == (5, "SKU-1", 1)


@pytest.mark.parametrize("body, words", [
    ([], "envelope"),
    ({"count": 1, "next": None, "results": {}}, "results must be a list"),
    (page({**ORDER, "date_modification": "soon"}), "order 0 (5): date_modification"),
    (page({**ORDER, "orderlines": [{**LINE, "listing": ""}]}), "orderlines[0].listing"),
    (page({**ORDER, "orderlines": [{**LINE, "quantity": "2"}]}), "orderlines[0].quantity"),
])
def test_malformed_orders_pages_name_the_order_and_field(body, words):
    with pytest.raises(MalformedResponse) as error:
        parse_orders_page(3, body)
    assert "orders page 3" in str(error.value) and words in str(error.value)
    assert error.value.permanent


class Scripted:
    """A Refurbed look-alike answering GetOrder with the next scripted (status, body, headers)."""

    def __init__(self, answers: list[tuple[int, object, dict]]) -> None:
        self.answers = answers
        self.authorizations: list[str] = []
        app = web.Application()
        app.router.add_post("/refb.merchant.v1.OrderService/GetOrder", self.handle)
        self.server = serve_in_thread(app)

    async def handle(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("Authorization", ""))
        status, body, headers = self.answers.pop(0)
        return web.json_response(body, status=status, headers=headers)


def get_order(server_url: str, order_id: str, token: str = "tok-123"):
    async def main():
        async with aiohttp.ClientSession() as session:
            client = RefurbedClient(session, base_url=server_url, token=token, attempts=3, backoff_s=0.01)
            return await client.get_order(order_id)

    return asyncio.run(main())


ORDER_BODY = {"order": {"id": "42", "state": "NEW", "released_at": "2026-11-23T09:00:00Z",
                        "items": [{"id": "420", "order_id": "42", "sku": "S", "state": "NEW"}]}}


def test_refurbed_transient_errors_are_retried_with_plain_auth():
    scripted = Scripted([(503, {"code": 14, "message": "unavailable"}, {}), (200, ORDER_BODY, {})])
    try:
        order = get_order(scripted.server.url, "42")
    finally:
        scripted.server.stop()
    assert order.id == "42" and order.items[0].sku == "S"
    assert scripted.authorizations == ["Plain tok-123"] * 2


def test_refurbed_rate_limit_is_transient_and_carries_the_reset():
    reset = int(time.time()) + 1
    scripted = Scripted([(429, {"code": 8, "message": "rate limit exceeded"}, {"X-RateLimit-Reset": str(reset)})] * 3)
    try:
        with pytest.raises(RateLimited) as error:
            get_order(scripted.server.url, "42")
    finally:
        scripted.server.stop()
    assert not error.value.permanent and error.value.reset_at == reset and error.value.code == "RESOURCE_EXHAUSTED"


def test_refurbed_errors_never_show_the_token():
    scripted = Scripted([(401, {"code": 16, "message": "token tok-123 is invalid"}, {})])
    try:
        with pytest.raises(Unauthorized) as error:
            get_order(scripted.server.url, "42")
    finally:
        scripted.server.stop()
    assert "tok-123" not in str(error.value) and "<token>" in str(error.value)
    assert "tok-123" not in repr(RefurbedClient(None, base_url="http://x", token="tok-123"))


def test_refurbed_server_errors_give_up_after_the_attempts():
    scripted = Scripted([(500, {"code": 13, "message": "boom"}, {})] * 3)
    try:
        with pytest.raises(ServerError):
            get_order(scripted.server.url, "42")
    finally:
        scripted.server.stop()
    assert len(scripted.authorizations) == 3


def test_refurbed_malformed_order_is_permanent():
    scripted = Scripted([(200, {"order": {"id": "x"}}, {})])
    try:
        with pytest.raises(MalformedResponse, match="order 42"):
            get_order(scripted.server.url, "42")
    finally:
        scripted.server.stop()
    with pytest.raises(ValueError):
        get_order("http://127.0.0.1:9", "not-a-number")
