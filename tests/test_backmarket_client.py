"""The Back Market client against small aiohttp servers answering crafted responses."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pickle

import aiohttp
import fakeredis
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from clients.backmarket import BackMarketClient, Listing, ListingsPage, RequestRecord
from clients.errors import (BadRequest, Forbidden, MalformedResponse, NotFound, RateLimited, ServerError,
                            TransportError, Unauthorized)
from clients.ratelimit import FleetRateLimiter

TOKEN = "tok-S3CRET-abc123"
UA = "BM-Stocksync-Tests;ops@example.com"


def listing(n: int, **overrides) -> dict:
    item = {"id": f"00000000-0000-4000-8000-{n:012d}", "listing_id": 1000 + n, "product_id": "p", "backmarket_id": 1,
            "sku": f"SKU-{n}", "title": f"Phone {n}", "quantity": n, "price": "160.99", "currency": "EUR",
            "min_price": None, "max_price": "200.00", "publication_state": 2, "state": 1, "grade": "GOOD",
            "warranty_delay": 12, "comment": None, "shippings": []}
    item.update(overrides)
    return item


def page_body(items, count=None, next_url=None, previous=None) -> dict:
    return {"count": len(items) if count is None else count, "next": next_url, "previous": previous, "results": items}


class Script:
    """A server that answers each request with the next scripted response and records the requests."""

    def __init__(self, *responses):
        self.responses = list(responses)
        self.requests = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append({"method": request.method, "path": request.path, "query": dict(request.query),
                              "headers": dict(request.headers), "body": await request.read()})
        response = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if callable(response):
            return await response(request)
        # The last response repeats: a Response object can be sent only once, so send a copy.
        return web.Response(status=response.status, body=response.body, headers=response.headers)


def json_response(status: int, body, **headers) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)


@contextlib.asynccontextmanager
async def serve(script: Script):
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", script.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def client_for(script: Script, **options):
    records = []
    async with serve(script) as base_url, aiohttp.ClientSession() as session:
        settings = {"token": TOKEN, "user_agent": UA, "language": "de-de", "timeout_s": 2, "attempts": 3,
                    "backoff_s": 0.001, "penalty_s": 0.01, "on_request": records.append, **options}
        client = BackMarketClient(session, base_url=base_url + "/", **settings)
        client.records = records
        yield client


def run(coro):
    return asyncio.run(coro)


def assert_no_token(error):
    assert TOKEN not in str(error) and TOKEN not in repr(error)


class RecordingLimiter:
    """Stands in for the fleet limiter: counts acquires and penalties."""

    def __init__(self):
        self.acquired = 0
        self.penalties = []

    async def acquire(self) -> float:
        self.acquired += 1
        return 0.25

    async def penalize(self, seconds: float) -> None:
        self.penalties.append(seconds)


# ---------------------------------------------------------------------------------------------
# Requests and parsing


def test_sends_exactly_the_headers_back_market_requires():
    body = page_body([listing(1)], count=120, next_url="https://bm.test/ws/listings?page=3")
    script = Script(json_response(200, body))

    async def main():
        async with client_for(script) as client:
            await client.get_listings_page(2)

    run(main())
    [request] = script.requests
    assert request["method"] == "GET" and request["path"] == "/ws/listings"
    assert request["query"] == {"page": "2", "page-size": "50"}
    headers = request["headers"]
    # The literal word Basic and the token verbatim: not base64, not Bearer
    assert headers["Authorization"] == f"Basic {TOKEN}"
    assert headers["User-Agent"] == UA
    assert headers["Accept-Language"] == "de-de"
    assert headers["Accept"] == "application/json"
    assert headers["Content-Type"] == "application/json"


def test_parses_a_page_of_listings():
    items = [listing(1), listing(2, quantity="7", price=None, title=None), listing(3, quantity=0)]
    script = Script(json_response(200, page_body(items, count=103, next_url="https://bm.test/ws/listings?page=2")))

    async def main():
        async with client_for(script) as client:
            return await client.get_listings_page(1, page_size=3)

    page = run(main())
    assert isinstance(page, ListingsPage)
    assert (page.page, page.count, page.next, page.previous) == (1, 103, "https://bm.test/ws/listings?page=2", None)
    assert [item.quantity for item in page.results] == [1, 7, 0]
    first = page.results[0]
    assert first == Listing(id="00000000-0000-4000-8000-000000000001", listing_id=1001, sku="SKU-1", quantity=1,
                            title="Phone 1", publication_state=2, price="160.99", currency="EUR")
    assert page.results[1].price is None and page.results[1].title is None
    # The message form survives JSON (a Dramatiq message) and comes back equal
    assert Listing.from_message(json.loads(json.dumps(first.to_message()))) == first
    assert script.requests[0]["query"]["page-size"] == "3"


def test_update_listing_posts_the_absolute_quantity_once():
    echoed = {**listing(4, quantity=12), "statuscode": 200}
    script = Script(json_response(200, echoed))

    async def main():
        async with client_for(script) as client:
            return await client.update_listing("00000000-0000-4000-8000-000000000004", quantity=12)

    assert run(main()) == echoed
    [request] = script.requests
    assert request["method"] == "POST" and request["path"] == "/ws/listings/00000000-0000-4000-8000-000000000004"
    assert json.loads(request["body"]) == {"quantity": 12}
    assert request["headers"]["Authorization"] == f"Basic {TOKEN}"


def test_bad_arguments_are_refused_before_any_request():
    script = Script(json_response(200, {}))

    async def main():
        async with client_for(script) as client:
            with pytest.raises(ValueError, match="quantity"):
                await client.update_listing(1, quantity=-1)
            with pytest.raises(ValueError, match="page_size"):
                await client.get_listings_page(1, page_size=51)
        with pytest.raises(ValueError, match="locale"):
            BackMarketClient(None, base_url="x", token=TOKEN, user_agent=UA, language="FR")

    run(main())
    assert script.requests == []


def test_repr_hides_the_token():
    client = BackMarketClient(None, base_url="https://www.backmarket.fr", token=TOKEN, user_agent=UA)
    assert TOKEN not in repr(client) and "<hidden>" in repr(client)
    assert TOKEN not in repr(vars(client))


# ---------------------------------------------------------------------------------------------
# Permanent errors: raised at once, typed, clear, no token


def call_expecting(script: Script, call, error_type, **options):
    async def main():
        async with client_for(script, **options) as client:
            with pytest.raises(error_type) as raised:
                await call(client)
            return raised.value, client.records

    error, records = run(main())
    assert_no_token(error)
    return error, records


def test_401_is_unauthorized_permanent_and_not_retried():
    script = Script(json_response(401, {"error": {"code": "unauthenticated", "message": "Invalid token"},
                                        "requestId": "req-42"}))
    error, records = call_expecting(script, lambda c: c.get_listings_page(1), Unauthorized)
    assert error.permanent and error.status == 401 and error.code == "unauthenticated"
    assert error.request_id == "req-42" and error.api == "backmarket" and error.endpoint == "GET /ws/listings"
    assert "Invalid token" in str(error) and "check the API token" in str(error) and "req-42" in str(error)
    assert [r.status for r in records] == [401]


def test_403_cloudflare_html_keeps_the_cf_ray():
    page = "<!DOCTYPE html><html><head><title>Attention Required! | Cloudflare</title></head><body>...</body></html>"
    script = Script(web.Response(status=403, text=page, content_type="text/html",
                                 headers={"cf-ray": "8a1b2c3d4e5f-CDG", "Server": "cloudflare"}))
    error, records = call_expecting(script, lambda c: c.get_listings_page(1), Forbidden)
    assert error.permanent and error.cf_ray == "8a1b2c3d4e5f-CDG"
    assert "Cloudflare HTML page" in str(error) and "Attention Required" in str(error)
    assert "cf-ray=8a1b2c3d4e5f-CDG" in str(error) and "<html" not in str(error)
    assert len(records) == 1


def test_403_json_bot_challenge():
    body = {"errors": [{"code": "bot-need-challenge", "message": "Forbidden", "challengePath": "/testchallengepage"}]}
    error, _ = call_expecting(Script(json_response(403, body)), lambda c: c.get_listings_page(1), Forbidden)
    assert error.code == "bot-need-challenge" and "Forbidden" in str(error)


def test_404_is_not_found():
    body = {"error": {"code": "not_found", "message": "Listing not found"}, "requestId": "r1"}
    error, records = call_expecting(Script(json_response(404, body)), lambda c: c.get_listing(123), NotFound)
    assert error.permanent and error.endpoint == "GET /ws/listings/{listingId}" and "Listing not found" in str(error)
    assert [r.endpoint for r in records] == ["GET /ws/listings/{listingId}"]


def test_400_bare_string_on_update_is_bad_request():
    script = Script(json_response(400, "parameter catalog not found"))
    error, _ = call_expecting(script, lambda c: c.update_listing(9, quantity=1), BadRequest)
    assert error.permanent and error.message.startswith("parameter catalog not found")
    assert "POST /ws/listings/{listingId}" in str(error)


def test_a_token_echoed_by_the_server_is_redacted(caplog):
    body = {"error": {"code": "unauthenticated", "message": f"bad header 'Basic {TOKEN}'"}}
    error, _ = call_expecting(Script(json_response(401, body)), lambda c: c.get_listings_page(1), Unauthorized)
    assert "<token>" in str(error)
    # Errors survive pickling (result backends, process pools) with their fields
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is Unauthorized and str(copy) == str(error) and copy.permanent


# ---------------------------------------------------------------------------------------------
# Transient errors: retried, counted, and raised typed after the last attempt


def test_429_penalizes_the_fleet_then_retries():
    script = Script(json_response(429, {"error": {"code": "too_many_requests", "message": "Too many requests"}}),
                    json_response(200, page_body([listing(1)])))
    limiter = RecordingLimiter()

    async def main():
        async with client_for(script, limiter=limiter, penalty_s=10.0) as client:
            return await client.get_listings_page(1), client.records

    page, records = run(main())
    assert len(page.results) == 1
    assert limiter.penalties == [10.0]
    assert limiter.acquired == 2, "every attempt takes a slot"
    assert [(r.status, r.attempt, r.waited_s) for r in records] == [(429, 1, 0.25), (200, 2, 0.25)]


def test_429_with_the_real_limiter_makes_the_next_attempt_wait():
    script = Script(json_response(429, {"error": {"code": "rate", "message": "slow down"}}),
                    json_response(200, page_body([])))

    async def main():
        limiter = FleetRateLimiter(fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer()), "bm", 100, 1)
        async with client_for(script, limiter=limiter, penalty_s=0.2) as client:
            await client.get_listings_page(1)
            return client.records

    records = run(main())
    assert [r.status for r in records] == [429, 200]
    # The first attempt had a free slot; the second waited out the 0.2 s fleet penalty.
    assert records[0].waited_s < records[1].waited_s and 0.15 < records[1].waited_s < 1.0


def test_429_every_time_raises_rate_limited_after_the_attempts():
    script = Script(json_response(429, {"error": {"code": "rate", "message": "slow down"}}, **{"Retry-After": "0"}))
    limiter = RecordingLimiter()
    error, records = call_expecting(script, lambda c: c.get_listings_page(1), RateLimited, limiter=limiter)
    assert not error.permanent and error.reset_at is not None
    assert len(records) == 3 and len(limiter.penalties) == 3


def test_5xx_burst_then_success(caplog):
    script = Script(web.Response(status=500, text="oops"), web.Response(status=502, text="<html>bad gateway</html>"),
                    json_response(200, page_body([listing(5)])))

    async def main():
        async with client_for(script) as client:
            return await client.get_listings_page(1), client.records

    with caplog.at_level(logging.WARNING):
        page, records = run(main())
    assert page.results[0].sku == "SKU-5"
    assert [(r.api, r.endpoint, r.status, r.attempt) for r in records] == [
        ("backmarket", "GET /ws/listings", 500, 1), ("backmarket", "GET /ws/listings", 502, 2),
        ("backmarket", "GET /ws/listings", 200, 3)]
    assert all(isinstance(r, RequestRecord) and r.elapsed_s >= 0 for r in records)
    assert "retrying" in caplog.text and TOKEN not in caplog.text


def test_5xx_every_time_raises_server_error_after_the_attempts():
    script = Script(json_response(503, {"error": {"code": "unavailable", "message": "maintenance"}}))
    error, records = call_expecting(script, lambda c: c.get_listings_page(1), ServerError, attempts=4)
    assert not error.permanent and error.status == 503 and "maintenance" in str(error)
    assert [r.attempt for r in records] == [1, 2, 3, 4]


def test_timeout_raises_transport_error_after_the_attempts():
    release = asyncio.Event()

    async def hang(request):
        # Answer only when the test is over: the client must give up on its own.
        await asyncio.wait_for(release.wait(), 10)
        return json_response(200, page_body([]))

    async def main():
        async with client_for(Script(hang), timeout_s=0.1, attempts=2) as client:
            try:
                with pytest.raises(TransportError) as raised:
                    await client.get_listings_page(1)
            finally:
                release.set()
            return raised.value, client.records

    error, records = run(main())
    assert not error.permanent and error.status is None and "within 0.1s" in str(error)
    assert [(r.status, r.attempt) for r in records] == [(None, 1), (None, 2)]
    assert_no_token(error)


def test_connection_refused_is_a_transport_error():
    async def main():
        async with aiohttp.ClientSession() as session:
            async with serve(Script(json_response(200, {}))) as base_url:
                pass  # the port is closed again: nothing listens there any more
            records = []
            client = BackMarketClient(session, base_url=base_url, token=TOKEN, user_agent=UA, attempts=2,
                                      backoff_s=0.001, on_request=records.append)
            with pytest.raises(TransportError) as raised:
                await client.get_listing(1)
            return raised.value, records

    error, records = run(main())
    assert "no response" in str(error) and len(records) == 2
    assert_no_token(error)


# ---------------------------------------------------------------------------------------------
# Malformed pages: permanent, and the message says exactly what was wrong


@pytest.mark.parametrize("body, expected", [
    (page_body([listing(1), listing(2, quantity=-2)]), "page 3: item 1 (listing 00000000-0000-4000-8000-000000000002): "
                                                     "field 'quantity' must be a non-negative integer, got -2"),
    (page_body([listing(1, quantity="seven")]), "item 0 (listing 00000000-0000-4000-8000-000000000001): field "
                                                "'quantity'"),
    (page_body([listing(1, listing_id="1001")]), "field 'listing_id' must be an integer"),
    (page_body([{k: v for k, v in listing(1).items() if k != "sku"}]), "field 'sku' is missing"),
    (page_body([listing(1, publication_state=None)]), "field 'publication_state' must be an integer"),
    (page_body([listing(1, id=17)]), "field 'id' must be a non-empty string"),
    (page_body(["not an object"]), "item 0: field 'item' must be a JSON object"),
    ({"count": 1, "next": None, "results": []}, "page 3: envelope lacks previous"),
    ({"count": 1, "next": None, "previous": None, "results": {"a": 1}}, "results must be a list, got dict"),
    ({"count": -1, "next": None, "previous": None, "results": []}, "count must be a non-negative integer"),
    ([listing(1)], "expected a JSON object envelope, got list"),
])
def test_malformed_page_names_what_was_wrong(body, expected):
    error, records = call_expecting(Script(json_response(200, body)), lambda c: c.get_listings_page(3),
                                    MalformedResponse)
    assert expected in str(error)
    assert error.permanent and len(records) == 1


def test_a_2xx_that_is_not_json_is_malformed():
    script = Script(web.Response(status=200, text="<html>maintenance</html>", content_type="text/html"))
    error, _ = call_expecting(script, lambda c: c.get_listing("x"), MalformedResponse)
    assert "not JSON" in str(error)
