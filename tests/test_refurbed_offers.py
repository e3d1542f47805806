"""Refurbed offers' stock: the client against the sandbox (GetOffer, UpdateOffer, BatchUpdateOffers,
X-RateLimit-*, 429s), and the sandbox's own rules (orders lower stock, cancellations restock or not)."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from clients.errors import ApiError, NotFound
from clients.refurbed import MAX_STOCK, OfferStockUpdate, RateLimitStatus, RefurbedClient
from runtime.local_servers import free_port, wait_until
from sandbox.refurbed import OutOfStock, RefurbedSandbox
from sandbox.server import serve_in_thread
from tests.fleet import ROOT
from tests.test_sandbox_orders import request

TOKEN = "rb-offers-token"


@pytest.fixture
def refurbed():
    sandbox = RefurbedSandbox(token=TOKEN)
    for number in range(6):
        sandbox.add_offer(f"RB-{number}", 5)
    server = serve_in_thread(sandbox.build_app())
    yield sandbox, server
    sandbox.close()
    server.stop()


def with_client(url: str, work, **options) -> Any:
    """Run ``await work(client)`` with a client of ``url`` on a fresh session."""
    async def main():
        async with aiohttp.ClientSession() as session:
            client = RefurbedClient(session, base_url=url, token=TOKEN, **{"backoff_s": 0.01, **options})
            return await work(client)

    return asyncio.run(main())


def rpc(url: str, method: str, body: Any) -> tuple[int, Any, Any]:
    status, headers, raw = request(url, "POST", f"/refb.merchant.v1.{method}", body=body,
                                   headers={"Authorization": f"Plain {TOKEN}"})
    return status, headers, json.loads(raw)


# -- the client against the sandbox -------------------------------------------------------------------


def test_get_offer_by_id_or_sku(refurbed):
    sandbox, server = refurbed
    sandbox.set_offer_stock("RB-2", 0)
    first = sandbox.offers()[0]

    async def work(client):
        return (await client.get_offer(first["id"]), await client.get_offer(sku="RB-2"),
                await asyncio.gather(client.get_offer(sku="RB-NONE"), return_exceptions=True))

    by_id, by_sku, [missing] = with_client(server.url, work)
    assert (by_id.id, by_id.sku, by_id.stock) == (first["id"], "RB-0", 5)
    assert (by_sku.sku, by_sku.stock) == ("RB-2", 0)  # proto3 JSON leaves a zero stock out
    assert isinstance(missing, NotFound) and missing.code == "NOT_FOUND" and "offer not found" in str(missing)
    for bad in ({}, {"offer_id": "1", "sku": "RB-1"}, {"sku": " RB-1"}, {"offer_id": "x"}):
        with pytest.raises(ValueError):
            with_client(server.url, lambda client, bad=bad: client.get_offer(**bad))
    assert sandbox.stats()["requests"] == {"GetOffer": 3}  # nothing invalid was sent


def test_update_offer_sets_the_stock_absolutely(refurbed):
    sandbox, server = refurbed
    version = sandbox.offers()[1]["version"]
    updated = with_client(server.url, lambda client: client.update_offer(sku="RB-1", stock=12))
    assert (updated.sku, updated.stock) == ("RB-1", 12) and sandbox.stock("RB-1") == 12
    assert int(updated.version) == int(version) + 1
    by_id = with_client(server.url, lambda client: client.update_offer(updated.id, stock=0))
    assert by_id.stock == 0 and sandbox.stock("RB-1") == 0
    for stock in (-1, MAX_STOCK + 1, 2.0, True):
        with pytest.raises(ValueError, match="uint32"):
            with_client(server.url, lambda client, stock=stock: client.update_offer(sku="RB-1", stock=stock))
    with pytest.raises(NotFound):
        with_client(server.url, lambda client: client.update_offer(sku="RB-NONE", stock=1))
    assert sandbox.stats()["requests"]["UpdateOffer"] == 3


def test_batch_update_reports_each_item_and_refuses_more_than_50_before_sending(refurbed):
    sandbox, server = refurbed
    updates = [OfferStockUpdate(7, sku="RB-0"), OfferStockUpdate(0, sku="RB-NONE"),
               OfferStockUpdate(9, offer_id=sandbox.offers()[3]["id"])]
    results = with_client(server.url, lambda client: client.batch_update_offers(updates))
    assert [result.ok for result in results] == [True, False, True]
    assert [result.update for result in results] == updates
    assert results[0].offer.stock == 7 and results[2].offer.sku == "RB-3" and results[1].offer is None
    assert isinstance(results[1].error, NotFound) and "SKU 'RB-NONE'" in str(results[1].error)
    assert (sandbox.stock("RB-0"), sandbox.stock("RB-3")) == (7, 9)

    too_many = [OfferStockUpdate(1, sku=f"RB-{n % 6}") for n in range(51)]
    for bad in (too_many, [], [{"sku": "RB-0", "stock": 1}]):
        with pytest.raises(ValueError):
            with_client(server.url, lambda client, bad=bad: client.batch_update_offers(bad))
    assert sandbox.stats()["requests"]["BatchUpdateOffers"] == 1
    fifty = with_client(server.url, lambda client: client.batch_update_offers(too_many[:50]))
    assert len(fifty) == 50 and all(result.ok for result in fifty)


def test_rate_limit_headers_are_learned_and_remaining_zero_holds_the_limiter(refurbed):
    sandbox, server = refurbed
    sandbox.configure(quota_requests=3, quota_window_s=30.0)
    seen: list[RateLimitStatus] = []
    limiter = RecordingLimiter()

    async def work(client):
        await client.get_offer(sku="RB-0")
        first = client.rate_limit
        await client.get_offer(sku="RB-0")
        await client.get_offer(sku="RB-0")
        return first, client.rate_limit

    first, last = with_client(server.url, work, on_rate_limit=seen.append, limiter=limiter)
    assert (first.limit, first.remaining, first.status) == (3, 2, 200)
    assert time.time() < first.reset_at <= time.time() + 31
    assert [status.remaining for status in seen] == [2, 1, 0] and last == seen[-1]
    # Remaining 0: the fleet waits for the reset before its next call, instead of meeting a 429.
    assert len(limiter.penalties) == 1 and 25 < limiter.penalties[0] <= 31
    assert sandbox.stats()["rate_limited"] == 0


def test_a_429_is_waited_out_and_retried(refurbed):
    sandbox, server = refurbed
    sandbox.rate_limit_next(1, retry_after_s=1.0)
    started = time.monotonic()
    offer = with_client(server.url, lambda client: client.get_offer(sku="RB-4"))
    assert offer.sku == "RB-4" and time.monotonic() - started >= 0.9  # Retry-After: 1
    assert sandbox.stats()["requests"] == {"GetOffer": 2} and sandbox.stats()["rate_limited"] == 1
    # Over the quota itself: the 429 says when the window frees up, and the retry lands after it.
    sandbox.configure(quota_requests=2, quota_window_s=1.0)

    async def three(client):
        return [await client.update_offer(sku="RB-5", stock=n) for n in (1, 2, 3)]

    assert [offer.stock for offer in with_client(server.url, three)] == [1, 2, 3]
    assert sandbox.stock("RB-5") == 3


class RecordingLimiter:
    """The limiter's interface, recording penalties (the fleet-wide one is tested in test_ratelimit.py)."""

    def __init__(self) -> None:
        self.penalties: list[float] = []

    async def acquire(self) -> float:
        return 0.0

    async def penalize(self, seconds: float) -> None:
        self.penalties.append(seconds)


# -- the client's safety: redirects, base URL ---------------------------------------------------------


def test_a_redirect_is_not_followed_so_the_token_stays_on_the_base_host():
    elsewhere_saw: list[str] = []

    async def record(request: web.Request) -> web.Response:
        elsewhere_saw.append(request.headers.get("Authorization", ""))
        return web.json_response({"offer": {"id": "1"}})

    other = web.Application()
    other.router.add_post("/{tail:.*}", record)
    with serve_in_thread(other) as elsewhere:
        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(f"{elsewhere.url}{request.path}")

        app = web.Application()
        app.router.add_post("/{tail:.*}", redirect)
        with serve_in_thread(app) as server:
            with pytest.raises(ApiError) as error:
                with_client(server.url, lambda client: client.get_offer(sku="RB-0"))
    assert error.value.status == 307 and error.value.permanent and "redirect" in str(error.value)
    assert elsewhere_saw == [] and TOKEN not in str(error.value)


@pytest.mark.parametrize("url", ["ftp://api.refurbed.com", "https://user:pw@api.refurbed.com", "api.refurbed.com",
                                 "https://api.refurbed.com?x=1"])
def test_a_base_url_with_credentials_or_no_host_is_refused(url):
    with pytest.raises(ValueError, match="base_url"):
        RefurbedClient(None, base_url=url, token=TOKEN)


# -- the sandbox's rules -------------------------------------------------------------------------------


def test_an_order_lowers_the_offer_stock_and_an_order_beyond_it_is_refused(refurbed):
    sandbox, server = refurbed
    order = sandbox.place_order(["RB-0", "RB-0", "RB-1", "NO-OFFER"], notify=False)
    assert (sandbox.stock("RB-0"), sandbox.stock("RB-1")) == (3, 4)
    offer_ids = {offer["sku"]: offer["id"] for offer in sandbox.offers()}
    assert [item["offer_data"]["offer_id"] for item in order["items"][:3]] == [offer_ids["RB-0"]] * 2 + [
        offer_ids["RB-1"]]
    with pytest.raises(OutOfStock, match="RB-0"):
        sandbox.place_order(["RB-0"] * 4, notify=False)
    assert sandbox.stock("RB-0") == 3  # nothing taken by the refused order
    status, _, refused = request(server.url, "POST", "/_sandbox/orders", body={"skus": ["RB-0"] * 4})
    assert status == 409 and "RB-0" in json.loads(refused)["error"]


@pytest.mark.parametrize("restock", [True, False])
def test_cancellations_restock_by_the_dial_once_and_list_orders_shows_them(refurbed, restock):
    sandbox, server = refurbed
    sandbox.configure(restock_on_cancel=restock)
    order = sandbox.place_order(["RB-0", "RB-0", "RB-1"], notify=False)
    cancelled, rejected, shipped = (item["id"] for item in order["items"])
    sandbox.set_item_state(cancelled, "CANCELLED")  # by the customer
    status, _, answer = rpc(server.url, "OrderItemService/UpdateOrderItemState", {"id": rejected, "state": "REJECTED"})
    assert status == 200 and answer["order_item"]["state"] == "REJECTED"  # by the merchant, over the API
    assert sandbox.stock("RB-0") == (5 if restock else 3)
    with pytest.raises(ValueError):
        sandbox.set_item_state(cancelled, "CANCELLED")  # no second restock: the item is already cancelled
    sandbox.set_item_state(shipped, "ACCEPTED")
    status, _, _ = rpc(server.url, "OrderItemService/UpdateOrderItemState",
                       {"id": shipped, "state": "SHIPPED", "parcel_tracking_url": "https://track.example/1"})
    sandbox.set_item_state(shipped, "RETURNED")
    assert status == 200 and sandbox.stock("RB-1") == 4  # a return comes back to the merchant, not the offer
    _, _, listed = rpc(server.url, "OrderService/ListOrders", {"filter": {"state": {"any_of": ["PARTIALLY_FULFILLED"]}}})
    [shown] = listed["orders"]
    assert [item["state"] for item in shown["items"]] == ["CANCELLED", "REJECTED", "RETURNED"]
    # The per-call override, through the admin route: the other way from the dial.
    again = sandbox.place_order(["RB-2"], notify=False)["items"][0]["id"]
    status, _, _ = request(server.url, "POST", f"/_sandbox/items/{again}/state",
                           body={"state": "CANCELLED", "restock": not restock})
    assert status == 200 and sandbox.stock("RB-2") == (4 if restock else 5)


def test_the_sandbox_refuses_bad_offer_requests_with_a_status(refurbed):
    sandbox, server = refurbed
    fifty_one = {"offers": [{"identifier": {"sku": "RB-0"}, "stock": 1}] * 51}
    status, _, answer = rpc(server.url, "OfferService/BatchUpdateOffers", fifty_one)
    assert status == 400 and answer["code"] == 3 and "between 1 and 50" in answer["message"]
    for body, words in (({"identifier": {"sku": "RB-0"}, "stok": 1}, "unknown field 'stok'"),
                        ({"identifier": {"sku": "RB-0", "id": "1"}, "stock": 1}, "exactly one"),
                        ({"identifier": {"sku": "RB-0"}, "stock": -1}, "uint32"),
                        ({"identifier": {"sku": "RB-0"}, "grading": "Z"}, "grading")):
        status, _, answer = rpc(server.url, "OfferService/UpdateOffer", body)
        assert status == 400 and words in answer["message"], (body, answer)
    assert sandbox.stock("RB-0") == 5 and sandbox.stats()["offer_updates"] == 0


def test_offers_page_by_cursor_both_ways(refurbed):
    sandbox, server = refurbed
    ids = [offer["id"] for offer in sandbox.offers()]
    _, _, first = rpc(server.url, "OfferService/ListOffers", {"pagination": {"limit": 4}})
    assert [offer["id"] for offer in first["offers"]] == ids[:4] and first["has_more"] is True
    _, _, rest = rpc(server.url, "OfferService/ListOffers", {"pagination": {"limit": 4, "starting_after": ids[3]}})
    assert [offer["id"] for offer in rest["offers"]] == ids[4:] and rest["has_more"] is False
    _, _, before = rpc(server.url, "OfferService/ListOffers", {"pagination": {"limit": 2, "ending_before": ids[4]}})
    assert [offer["id"] for offer in before["offers"]] == ids[2:4] and before["has_more"] is True
    status, _, both = rpc(server.url, "OfferService/ListOffers",
                          {"pagination": {"starting_after": ids[0], "ending_before": ids[4]}})
    assert status == 400 and "both" in both["message"]


def test_list_offers_by_id_reads_a_batch_in_one_call_and_refuses_more_than_a_page_before_sending(refurbed):
    sandbox, server = refurbed
    ids = [offer["id"] for offer in sandbox.offers()]
    before = sandbox.stats()["requests"].get("ListOffers", 0)
    page = with_client(server.url, lambda client: client.list_offers(ids=[ids[4], int(ids[1])], limit=2))
    assert [offer.id for offer in page.offers] == [ids[1], ids[4]] and page.has_more is False
    for bad in ([], ids[:3], ["x"]):
        with pytest.raises(ValueError):
            with_client(server.url, lambda client: client.list_offers(ids=bad, limit=2))
    assert sandbox.stats()["requests"]["ListOffers"] - before == 1


def test_quota_answers_carry_the_rate_limit_headers_and_a_429_says_when(refurbed):
    sandbox, server = refurbed
    sandbox.configure(quota_requests=2, quota_window_s=30.0)
    remaining = [rpc(server.url, "OfferService/GetOffer", {"identifier": {"sku": "RB-0"}})[1]["X-RateLimit-Remaining"]
                 for _ in range(2)]
    status, headers, answer = rpc(server.url, "OfferService/GetOffer", {"identifier": {"sku": "RB-0"}})
    assert remaining == ["1", "0"] and status == 429 and answer["code"] == 8
    assert headers["X-RateLimit-Limit"] == "2" and headers["X-RateLimit-Remaining"] == "0"
    assert 28 <= int(headers["Retry-After"]) <= 30
    assert abs(int(headers["X-RateLimit-Reset"]) - (time.time() + int(headers["Retry-After"]))) <= 2
    status, headers, _ = request(server.url, "POST", "/refb.merchant.v1.OfferService/GetOffer",
                                 body={"identifier": {"sku": "RB-0"}}, headers={"Authorization": "Plain wrong"})
    assert status == 401 and "X-RateLimit-Limit" not in headers  # refused before the quota


# -- `stocksync sandbox refurbed` ---------------------------------------------------------------------


def test_the_command_serves_both_sandboxes_and_sends_webhooks_without_showing_the_secret(tmp_path):
    received: list[tuple[str, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((request.path, await request.read()))
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/webhooks/refurbed/{secret}", hook)
    secret = "hook-secret-81f2"
    with serve_in_thread(app) as receiver:
        refurbed_port, backmarket_port = free_port(), free_port()
        environment = {**os.environ, "REFURBED_WEBHOOK_SECRET": secret}
        commands = {
            refurbed_port: ["sandbox", "refurbed", "--port", str(refurbed_port), "--offers", "3", "--token", TOKEN,
                            "--webhook-url", f"{receiver.url}/webhooks/refurbed"],
            backmarket_port: ["sandbox", "--port", str(backmarket_port), "--listings", "2"],  # as before
        }
        processes = {port: subprocess.Popen([sys.executable, "-m", "workers.cli", *args], cwd=ROOT, env=environment,
                                            stdout=open(tmp_path / f"{port}.log", "wb"), stderr=subprocess.STDOUT)
                     for port, args in commands.items()}
        try:
            for port, process in processes.items():
                wait_until(lambda: process.poll() is not None or _answers(port), 60, what=f"a sandbox on {port}")
            status, _, offers = rpc(f"http://127.0.0.1:{refurbed_port}", "OfferService/ListOffers", {})
            assert status == 200 and [offer["sku"] for offer in offers["offers"]] == [f"BM-1-{n:06d}" for n in range(3)]
            status, _, placed = request(f"http://127.0.0.1:{refurbed_port}", "POST", "/_sandbox/orders",
                                        body={"skus": ["BM-1-000000"]})
            assert status == 201
            wait_until(lambda: len(received) >= 2, 30, what="the order's webhook and its re-send")
            order_id = json.loads(placed)["id"]
            assert received[0] == (f"/webhooks/refurbed/{secret}", json.dumps({"order_id": int(order_id)}).encode())
            status, _, listings = request(f"http://127.0.0.1:{backmarket_port}", "GET", "/_sandbox/stats")
            assert status == 200 and json.loads(listings)["listings"] == 2
        finally:
            for process in processes.values():
                process.terminate()
                process.wait(10)
    shown = (tmp_path / f"{refurbed_port}.log").read_text()
    assert "sandbox Refurbed: 3 offers" in shown and "/webhooks/refurbed/<secret>" in shown and secret not in shown


def _answers(port: int) -> bool:
    try:
        return request(f"http://127.0.0.1:{port}", "GET", "/_sandbox/stats")[0] == 200
    except OSError:
        return False
