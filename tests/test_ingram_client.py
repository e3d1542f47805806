"""The Ingram Micro client, its shared token and the fleet semaphore, against crafted answers and fakeredis."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from decimal import Decimal
from urllib.parse import parse_qs

import aiohttp
import fakeredis
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from clients.errors import MalformedResponse, RateLimited, ServerError, TransportError, Unauthorized
from clients.ingram import (DETAILS, TOKEN, FleetSemaphore, IngramClient, Measure, ProductDimensions, SharedToken,
                            cache_lifetime, parse_dimensions, parse_price_availability)
from clients.ingram_parsing import parse_token
from clients.ratelimit import FleetRateLimiter
from sandbox.ingram import IngramSandbox
from sandbox.server import serve_in_thread

SECRET = "s3cret-CLIENT-value"
TOKEN_VALUE = "tok-ABC-123-xyz"


def run(coro):
    return asyncio.run(coro)


def fake_redis():
    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())


def item(part: str, **overrides) -> dict:
    body = {"index": 0, "ingramPartNumber": part, "vendorPartNumber": f"V-{part}", "productStatus": "Active",
            "productClass": "A", "description": f"Product {part}",
            "availability": {"available": True, "totalAvailability": 7,
                             "availabilityByWarehouse": [{"warehouseId": "10", "location": "Mira Loma, CA",
                                                          "quantityAvailable": 5, "quantityBackordered": 0},
                                                         {"warehouseId": 20, "quantityAvailable": 2}]},
            "pricing": {"currencyCode": "USD", "customerPrice": 12.5, "retailPrice": "15.00"}}
    body.update(overrides)
    return body


class Api:
    """A server answering the token endpoint and scripted API answers, recording every request."""

    def __init__(self, *answers, expires_in=86400, token_status=200):
        self.answers = list(answers)
        self.requests: list[dict] = []
        self.token_requests: list[dict] = []
        self.expires_in = expires_in
        self.token_status = token_status
        self.tokens_issued = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if request.path == "/oauth/oauth20/token":
            self.token_requests.append({"headers": dict(request.headers), "form": parse_qs(raw.decode())})
            if self.token_status != 200:
                return web.json_response({"message": f"invalid client {SECRET}"}, status=self.token_status)
            self.tokens_issued += 1
            return web.json_response({"access_token": f"{TOKEN_VALUE}-{self.tokens_issued}", "token_type": "Bearer",
                                      "expires_in": self.expires_in})
        self.requests.append({"method": request.method, "path": request.raw_path.split("?")[0],
                              "query": dict(request.query),
                              "headers": dict(request.headers), "body": raw, "at": time.time()})
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if callable(answer):
            return await answer(request)
        status, body, headers = answer
        return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)


def answer(status: int, body, **headers):
    return (status, body, headers)


@contextlib.asynccontextmanager
async def client_for(api: Api, redis=None, **options):
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", api.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    records = []
    try:
        async with aiohttp.ClientSession() as session:
            redis = redis or fake_redis()
            settings = {"client_id": "app-1", "client_secret": SECRET, "customer_number": "20-222222",
                        "country_code": "US", "sender_id": "stocksync", "timeout_s": 2, "attempts": 3,
                        "backoff_s": 0.001, "min_penalty_s": 0.01, "on_request": records.append,
                        "tokens": SharedToken(redis, "app-1"), **options}
            client = IngramClient(session, base_url=str(server.make_url("")).rstrip("/"), **settings)
            client.records = records
            yield client
    finally:
        await server.close()


# -- requests ------------------------------------------------------------------------------------


def test_price_and_availability_sends_the_documented_request_with_a_fresh_correlation_id_each_time():
    api = Api(answer(200, [item("A1"), item("B2", index=1)]), answer(200, [item("A1")]))

    async def main():
        async with client_for(api) as client:
            await client.price_and_availability(["A1", "B2"])
            return await client.price_and_availability(["A1"])

    result = run(main())
    token_call = api.token_requests[0]
    assert token_call["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert token_call["form"] == {"grant_type": ["client_credentials"], "client_id": ["app-1"],
                                  "client_secret": [SECRET]}
    first, second = api.requests
    assert (first["method"], first["path"]) == ("POST", "/resellers/v6/catalog/priceandavailability")
    assert first["query"] == {"includeAvailability": "true", "includePricing": "true"}
    assert json.loads(first["body"])["products"] == [{"ingramPartNumber": "A1"}, {"ingramPartNumber": "B2"}]
    headers = first["headers"]
    assert headers["Authorization"] == f"Bearer {TOKEN_VALUE}-1"
    assert (headers["IM-CustomerNumber"], headers["IM-CountryCode"], headers["IM-SenderID"]) == (
        "20-222222", "US", "stocksync")
    assert 0 < len(headers["IM-CorrelationID"]) <= 32
    assert headers["IM-CorrelationID"] != second["headers"]["IM-CorrelationID"]
    assert api.tokens_issued == 1  # the token is reused
    product = result.products[0]
    assert (product.part_number, product.price, product.retail_price, product.currency) == (
        "A1", Decimal("12.5"), Decimal("15.00"), "USD")
    assert (product.available, product.total_availability, product.status, product.product_class) == (
        True, 7, "Active", "A")
    assert product.warehouses_json == {"10": {"location": "Mira Loma, CA", "available": 5, "backordered": 0},
                                       "20": {"location": None, "available": 2, "backordered": 0}}


def test_a_207_keeps_the_priced_products_and_reports_the_others_as_product_errors():
    body = [item("A1"), {"index": 1, "ingramPartNumber": "B2", "productStatusCode": "E",
                         "productStatusMessage": "Invalid SKU"},
            item("C3", index=2, productStatusCode="W", productStatusMessage="CUSTOMER PART NUMBER NOT MAPPED")]

    async def main():
        async with client_for(Api(answer(207, body))) as client:
            return await client.price_and_availability(["A1", "B2", "C3", "D4"])

    result = run(main())
    assert result.status == 207
    assert [p.part_number for p in result.products] == ["A1", "C3"]
    assert result.products[1].status_message == "CUSTOMER PART NUMBER NOT MAPPED"  # a warning is applied
    assert [(e.part_number, e.code, e.message) for e in result.errors] == [
        ("B2", "E", "Invalid SKU"), ("D4", None, "not in the answer")]


def test_an_item_is_matched_by_index_when_it_does_not_echo_its_part_number():
    result = parse_price_availability([{**item("X"), "ingramPartNumber": None, "index": 1}], ["A1", "B2"])
    assert [p.part_number for p in result.products] == ["B2"]


@pytest.mark.parametrize("body, expected", [
    ({"products": []}, "expected a top-level JSON array of products, got an object with keys products"),
    ([42], "item 0 must be a JSON object, got int"),
    ([item("A1", availability={"totalAvailability": -1})],
     "item 0 (product A1): field 'availability.totalAvailability' must be a non-negative integer, got -1"),
    ([item("A1", pricing={"customerPrice": "cheap"})],
     "item 0 (product A1): field 'pricing.customerPrice' must be a number, got 'cheap'"),
    ([item("Z9")], "item 0 is for 'Z9', which was not asked for"),
])
def test_a_malformed_answer_is_refused_naming_what_is_wrong(body, expected):
    with pytest.raises(MalformedResponse) as refused:
        parse_price_availability(body, ["A1"])
    assert refused.value.permanent
    assert expected in str(refused.value)


def test_more_than_50_products_are_refused_before_any_request():
    async def main():
        async with client_for(Api(answer(200, []))) as client:
            await client.price_and_availability([f"P{i}" for i in range(51)])

    with pytest.raises(ValueError, match="1 to 50 products a request, got 51"):
        run(main())


def test_details_answer_an_object_and_404_means_no_details():
    api = Api(answer(200, {"ingramPartNumber": "A1", "description": "x"}),
              answer(404, {"errors": [{"message": "No Content"}]}))

    async def main():
        async with client_for(api) as client:
            return await client.product_details("A1"), await client.product_details("B/2")

    details, missing = run(main())
    assert details == {"ingramPartNumber": "A1", "description": "x"}
    assert missing is None
    assert api.requests[1]["path"] == "/resellers/v6/catalog/details/B%2F2"


# -- the token -----------------------------------------------------------------------------------


def test_a_refused_token_is_replaced_once_then_the_call_succeeds():
    api = Api(answer(401, {"fault": {"faultstring": "Invalid Access Token"}}), answer(200, {"ingramPartNumber": "A"}))

    async def main():
        async with client_for(api) as client:
            details = await client.product_details("A")
            return details, [(r.endpoint, r.status) for r in client.records]

    details, records = run(main())
    assert details == {"ingramPartNumber": "A"}
    assert records == [(TOKEN, 200), (DETAILS, 401), (TOKEN, 200), (DETAILS, 200)]
    assert [r["headers"]["Authorization"] for r in api.requests] == [f"Bearer {TOKEN_VALUE}-1",
                                                                      f"Bearer {TOKEN_VALUE}-2"]


def test_a_token_refused_again_after_a_refresh_is_a_permanent_error():
    api = Api(answer(401, {"fault": {"faultstring": "Invalid Access Token"}}))

    async def main():
        async with client_for(api) as client:
            await client.product_details("A")

    with pytest.raises(Unauthorized, match="refused again right after a refresh") as refused:
        run(main())
    assert refused.value.permanent and api.tokens_issued == 2


def test_the_fleet_shares_one_token_fetched_once_under_a_lock():
    api = Api(answer(200, {"ingramPartNumber": "A"}))
    redis = fake_redis()

    async def main():
        async with client_for(api, redis=redis) as one, client_for(api, redis=redis) as other:
            await asyncio.gather(*[client.product_details("A") for client in (one, other) for _ in range(10)])
            return await redis.pttl("stocksync:oauth:app-1:token")

    ttl_ms = run(main())
    assert api.tokens_issued == 1
    assert len({r["headers"]["Authorization"] for r in api.requests}) == 1
    # Kept until 5 minutes before its expiry, and never past 24 h.
    assert 86100 * 1000 - 5000 < ttl_ms <= 86100 * 1000


def test_token_lifetime_is_capped_at_24_hours_and_ends_before_the_token_does():
    assert cache_lifetime(2_592_000, 300) == 24 * 3600 - 300  # the docs' example: 30 days
    assert cache_lifetime(3600, 300) == 3300
    assert cache_lifetime(2, 300) == 1  # short-lived: half its life


def test_expires_in_as_a_string_is_accepted_and_bad_credentials_are_a_clear_permanent_error(caplog):
    async def main(api):
        async with client_for(api) as client:
            return await client.product_details("A")

    assert run(main(Api(answer(200, {"ingramPartNumber": "A"}), expires_in="86399"))) == {"ingramPartNumber": "A"}
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Unauthorized) as refused:
        run(main(Api(answer(200, {}), token_status=400)))
    text = str(refused.value)
    assert "check INGRAM_CLIENT_ID ('app-1') and INGRAM_CLIENT_SECRET" in text
    assert SECRET not in text and SECRET not in caplog.text and "<client_secret>" in text


@pytest.mark.parametrize("expires_in, seconds", [("86399", 86399.0), (" 3600 ", 3600.0), ("3599.5", 3599.5),
                                                  (86400, 86400.0), (1.5, 1.5)])
def test_expires_in_is_read_as_a_string_or_a_number(expires_in, seconds):
    assert parse_token({"access_token": "t", "token_type": "Bearer", "expires_in": expires_in}) == ("t", seconds)


@pytest.mark.parametrize("expires_in", ["soon", "", "0", "-5", "1e3", "inf", "NaN", "86 399", True, None, [1]])
def test_a_non_numeric_expires_in_is_a_malformed_token_answer(expires_in):
    with pytest.raises(MalformedResponse, match="expires_in must be a positive number of seconds") as refused:
        parse_token({"access_token": "t", "token_type": "Bearer", "expires_in": expires_in})
    assert refused.value.permanent and refused.value.endpoint == TOKEN


# -- against the sandbox -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def sandbox_client(url: str, redis=None, **options):
    async with aiohttp.ClientSession() as session:
        settings = {"client_id": "sandbox-client", "client_secret": "sandbox-secret", "customer_number": "20-222222",
                    "timeout_s": 5, "attempts": 2, "backoff_s": 0.001,
                    "tokens": SharedToken(redis or fake_redis(), "sandbox"), **options}
        yield IngramClient(session, base_url=url, **settings)


def test_the_sandboxs_string_expires_in_sets_how_long_the_fleet_keeps_the_token():
    sandbox = IngramSandbox(products=1, token_ttl_s=3600, details_quota_requests=0)
    redis = fake_redis()
    with serve_in_thread(sandbox.build_app()) as server:
        async def main():
            async with aiohttp.ClientSession() as session:
                form = {"grant_type": "client_credentials", "client_id": "sandbox-client",
                        "client_secret": "sandbox-secret"}
                async with session.post(f"{server.url}/oauth/oauth20/token", data=form) as response:
                    raw = (await response.json())["expires_in"]
            async with sandbox_client(server.url, redis) as client:
                details = await client.product_details(sandbox.part_numbers()[0])
            return raw, details, await redis.pttl("stocksync:oauth:sandbox:token")

        raw, details, ttl_ms = run(main())
    assert raw == "3600"  # the SDK's type
    assert details == sandbox.details_json(sandbox.part_numbers()[0])
    assert 3300 * 1000 - 5000 < ttl_ms <= 3300 * 1000  # its 3600 s, less the 300 s replaced early


def test_the_sandboxs_unit_strings_are_read_as_numbers_with_their_units():
    sandbox = IngramSandbox(products=2, details_quota_requests=0)
    part = sandbox.part_numbers()[1]
    with serve_in_thread(sandbox.build_app()) as server:
        async def main():
            async with sandbox_client(server.url) as client:
                return await client.product_details(part)

        details = run(main())
    assert details == sandbox.details_json(part)  # stored as given
    assert parse_dimensions(details, part) == ProductDimensions(
        height=Measure(Decimal("0.9"), "Inches"), width=Measure(Decimal("11.8"), "Inches"),
        length=Measure(Decimal("8.3"), "Inches"), net_weight=Measure(Decimal("2.5"), "lbs"))


def test_numeric_dimensions_are_still_read_with_the_dimension_unit():
    body = {"ingramPartNumber": "A1", "additionalInformation": {
        "height": 2.0, "width": 30, "length": "21", "netWeight": 1.1, "dimensionUnit": "CM"}}

    async def main():
        async with client_for(Api(answer(200, body))) as client:
            return await client.product_details("A1")

    assert parse_dimensions(run(main())) == ProductDimensions(
        height=Measure(Decimal("2.0"), "CM"), width=Measure(Decimal("30"), "CM"),
        length=Measure(Decimal("21"), "CM"), net_weight=Measure(Decimal("1.1"), None))  # no unit said for weight


@pytest.mark.parametrize("info, expected", [
    ({"height": "5.2 Inches", "width": "13 inches", "length": '20.4"', "netWeight": "10 lb"},
     ProductDimensions(Measure(Decimal("5.2"), "Inches"), Measure(Decimal("13"), "inches"),
                       Measure(Decimal("20.4"), '"'), Measure(Decimal("10"), "lb"))),
    ({"height": "5.2in", "width": " .5 Inches ", "length": "", "dimensionUnit": "CM"},
     ProductDimensions(Measure(Decimal("5.2"), "in"), Measure(Decimal("0.5"), "Inches"), None, None)),
    ({}, ProductDimensions(None, None, None, None)),
])
def test_dimensions_keep_the_unit_each_value_carries(info, expected):
    assert parse_dimensions({"additionalInformation": info}) == expected
    assert parse_dimensions({"ingramPartNumber": "A1"}) == ProductDimensions(None, None, None, None)


@pytest.mark.parametrize("info, expected", [
    ({"height": "tall"}, "field 'additionalInformation.height' must be a number with an optional unit like "
                         "'5.2 Inches', got 'tall'"),
    ({"width": "5.2 5.3 Inches"}, "field 'additionalInformation.width' must be a number with an optional unit"),
    ({"length": "-3 Inches"}, "field 'additionalInformation.length' must be a number with an optional unit"),
    ({"netWeight": -1}, "field 'additionalInformation.netWeight' must not be negative, got -1"),
    ({"netWeight": True}, "field 'additionalInformation.netWeight' must be a number or a string like '5.2 Inches', "
                          "got bool"),
    ({"height": {"value": 5}}, "field 'additionalInformation.height' must be a number or a string"),
    ({"height": "NaN"}, "field 'additionalInformation.height' must be a number with an optional unit"),
    ({"height": 1, "dimensionUnit": 7}, "field 'additionalInformation.dimensionUnit' must be a string, got int"),
])
def test_a_malformed_dimension_is_refused_naming_the_field(info, expected):
    with pytest.raises(MalformedResponse) as refused:
        parse_dimensions({"additionalInformation": info}, "6YE881")
    assert f"details of 6YE881: {expected}" in str(refused.value)
    assert refused.value.endpoint == DETAILS


def test_details_with_a_malformed_dimension_are_returned_as_given_and_the_field_is_logged(caplog):
    body = {"ingramPartNumber": "A1", "additionalInformation": {"height": "tall", "width": "13 inches"}}
    caplog.set_level(logging.WARNING)

    async def main():
        async with client_for(Api(answer(200, body))) as client:
            return await client.product_details("A1")

    assert run(main()) == body  # one odd field does not fail the product (nor, with it, the run)
    assert "details of A1: field 'additionalInformation.height' must be a number" in caplog.text
    with pytest.raises(MalformedResponse, match="'additionalInformation' must be an object, got list"):
        parse_dimensions({"additionalInformation": []})


# -- errors and quotas ---------------------------------------------------------------------------


def test_5xx_are_retried_then_raised_as_transient():
    api = Api(answer(503, {"errors": [{"message": "busy"}]}), answer(200, {"ingramPartNumber": "A"}))

    async def main(api):
        async with client_for(api) as client:
            return await client.product_details("A"), [r.status for r in client.records if r.endpoint == DETAILS]

    assert run(main(api)) == ({"ingramPartNumber": "A"}, [503, 200])
    with pytest.raises(ServerError) as failed:
        run(main(Api(answer(500, {"errors": [{"id": "1", "type": "internal", "message": "boom"}]}))))
    assert not failed.value.permanent and "boom" in str(failed.value)


def test_a_timeout_is_a_transient_transport_error():
    async def slow(request):
        await asyncio.sleep(1)
        return web.json_response({})

    async def main():
        async with client_for(Api(slow), timeout_s=0.1, attempts=2) as client:
            await client.product_details("A")

    with pytest.raises(TransportError, match="timeout") as failed:
        run(main())
    assert not failed.value.permanent


def test_429_makes_the_whole_fleet_wait_until_the_reset_time():
    redis = fake_redis()
    limiter = FleetRateLimiter(redis, "ingram-pa", 60, 60)
    reset_at = time.time() + 0.4
    api = Api(answer(429, {"errors": [{"field": None, "message": "too many requests"}]},
                     **{"X-RateLimit-Reset": f"{reset_at:.3f}", "X-RateLimit-Limit": "60",
                        "X-RateLimit-Remaining": "0"}),
              answer(200, [item("A1")]))

    async def main():
        async with client_for(api, redis=redis, pa_limiter=limiter) as client:
            return await client.price_and_availability(["A1"])

    result = run(main())
    assert [p.part_number for p in result.products] == ["A1"]
    first, second = api.requests
    assert second["at"] >= reset_at - 0.01


def test_a_refused_request_gives_its_slot_back_so_the_retry_goes_at_the_reset_not_a_window_later():
    redis = fake_redis()
    limiter = FleetRateLimiter(redis, "ingram-details", 1, 60)  # one call a minute
    api = Api(lambda request: _throttled(time.time() + 0.2), answer(200, {"ingramPartNumber": "A"}))

    async def main():
        async with client_for(api, redis=redis, details_limiter=limiter) as client:
            started = time.monotonic()
            details = await client.product_details("A")
            return details, time.monotonic() - started, await redis.zcard(limiter.key)

    details, elapsed, slots = run(main())
    assert details == {"ingramPartNumber": "A"}
    assert 0.15 < elapsed < 2  # the reset, not the 60 s window
    assert slots == 1  # only the call that went through is in the window


async def _throttled(reset_at: float) -> web.Response:
    return web.json_response({"errors": [{"field": None, "message": "too many requests"}]}, status=429,
                             headers={"X-RateLimit-Reset": f"{reset_at:.3f}"})


def test_a_429_on_the_last_attempt_pauses_the_fleet_and_is_a_transient_error_with_its_reset_time():
    reset_at = time.time() + 5
    api = Api(answer(429, {"errors": [{"field": None, "message": "too many requests"}]},
                     **{"X-RateLimit-Reset": f"{reset_at:.3f}"}))
    redis = fake_redis()
    other = FleetRateLimiter(redis, "ingram-pa", 60, 60)  # another worker's limiter on the same quota

    async def main():
        async with client_for(api, redis=redis, attempts=1, pa_limiter=FleetRateLimiter(redis, "ingram-pa", 60, 60)
                              ) as client:
            try:
                await client.price_and_availability(["A1"])
            finally:
                # The penalty is fleet-wide: every other worker now waits until the reset.
                granted, wait_s = await other.try_acquire()
                assert not granted and 4.5 < wait_s <= 5.0

    with pytest.raises(RateLimited) as limited:
        run(main())
    assert not limited.value.permanent
    assert limited.value.reset_at == pytest.approx(reset_at, abs=0.001)
    assert "too many requests" in str(limited.value)


def test_secrets_never_show_in_errors_reprs_or_logs(caplog):
    caplog.set_level(logging.DEBUG)

    async def echo(request):
        # A server that echoes the credentials it was sent in its error.
        return web.json_response({"errors": [{"message": f"bad {request.headers['Authorization']} {SECRET}"}]},
                                 status=400)

    async def main():
        async with client_for(Api(echo)) as client:
            try:
                await client.product_details("A")
            except Exception as error:  # noqa: BLE001 - the error's text is what is checked
                return client, error

    client, error = run(main())
    text = f"{error} {error!r} {client!r} {client.tokens!r} {caplog.text}"
    assert TOKEN_VALUE not in text and SECRET not in text
    assert "<token>" in str(error) and "<client_secret>" in str(error)


def test_bad_client_settings_are_refused_clearly():
    async def main(**options):
        async with aiohttp.ClientSession() as session:
            IngramClient(session, **{"base_url": "http://x", "client_id": "a", "client_secret": "b",
                                     "customer_number": "20-222222", **options})

    with pytest.raises(ValueError, match="two upper-case letters"):
        run(main(country_code="usa"))
    with pytest.raises(ValueError, match="sender_id must be at most 32"):
        run(main(sender_id="x" * 33))
    with pytest.raises(ValueError, match="INGRAM_CLIENT_SECRET"):
        run(main(client_secret=""))


# -- the fleet semaphore -------------------------------------------------------------------------


def test_semaphore_never_lets_more_than_the_limit_run_and_wakes_waiters_on_release():
    redis = fake_redis()
    running = []
    most = []

    async def job(n):
        async with FleetSemaphore(redis, "batches", ttl_s=5, max_block_s=5).hold(2):
            running.append(n)
            most.append(len(running))
            await asyncio.sleep(0.02)
            running.remove(n)

    async def main():
        started = time.monotonic()
        await asyncio.gather(*[job(n) for n in range(8)])
        return time.monotonic() - started

    elapsed = run(main())
    assert max(most) == 2
    assert elapsed < 2.5  # 4 rounds of 20 ms: waiters are woken by releases, not by their 5 s timeout


def test_a_dead_holders_lease_expires_and_its_slot_is_reclaimed():
    redis = fake_redis()

    async def main():
        semaphore = FleetSemaphore(redis, "batches", ttl_s=0.2)
        await semaphore.acquire(1, "killed-worker")  # never released, never renewed
        assert await semaphore.holders() == 1
        started = time.monotonic()
        async with semaphore.hold(1):
            return time.monotonic() - started

    waited = run(main())
    assert 0.1 < waited < 1.5
