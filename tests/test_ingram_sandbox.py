"""The sandbox Ingram Micro: the documented shapes, quotas with X-RateLimit-* headers, dials and counters."""
from __future__ import annotations

import asyncio
import contextlib
import re
import time
from decimal import Decimal

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from db.supplier import check_part_number
from sandbox.ingram import MAX_CATALOGUE, PA, IngramSandbox, WindowQuota, part_number, product_entry
from sandbox.server import serve_in_thread

PA_URL = "/resellers/v6/catalog/priceandavailability?includeAvailability=true&includePricing=true"


def run(coro):
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def api(sandbox: IngramSandbox):
    server = TestServer(sandbox.build_app(), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession(base_url=str(server.make_url(""))) as session:
            form = {"grant_type": "client_credentials", "client_id": "sandbox-client",
                    "client_secret": "sandbox-secret"}
            async with session.post("/oauth/oauth20/token", data=form) as response:
                token = (await response.json())["access_token"]
            session.headers_for = lambda **extra: {  # type: ignore[attr-defined]
                "Authorization": f"Bearer {token}", "IM-CustomerNumber": "20-222222", "IM-CountryCode": "US",
                "IM-CorrelationID": "c" * 32, **extra}
            yield session
    finally:
        await server.close()


async def pa(session, parts, **headers):
    body = {"products": [{"ingramPartNumber": part} for part in parts]}
    async with session.post(PA_URL, json=body, headers=session.headers_for(**headers)) as response:
        return response.status, await response.json(), response.headers


def test_catalogue_is_deterministic_per_seed():
    assert product_entry(3, 7) == product_entry(3, 7)
    assert product_entry(3, 7) != product_entry(4, 7)
    sandbox = IngramSandbox(products=5, seed=3)
    assert sandbox.part_numbers() == ["030000", "030001", "030002", "030003", "030004"]


def test_token_endpoint_answers_the_documented_shape_and_refuses_bad_credentials():
    sandbox = IngramSandbox(products=1, token_ttl_s=3600)

    async def main():
        server = TestServer(sandbox.build_app(), host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as session:
                url = server.make_url("/oauth/oauth20/token")
                good = {"grant_type": "client_credentials", "client_id": "sandbox-client",
                        "client_secret": "sandbox-secret"}
                async with session.post(url, data=good) as response:
                    ok = response.status, await response.json()
                async with session.post(url, data={**good, "client_secret": "wrong"}) as response:
                    bad = response.status, await response.json()
                async with session.get(server.make_url("/resellers/v6/catalog/details/010000")) as response:
                    anonymous = response.status, await response.json()
            return ok, bad, anonymous
        finally:
            await server.close()

    (status, body), bad, anonymous = run(main())
    assert status == 200 and body["token_type"] == "Bearer" and body["expires_in"] == "3600"
    assert bad == (400, {"message": "Invalid client credentials or grant_type"})
    assert anonymous[0] == 401 and anonymous[1]["fault"]["faultstring"] == "Invalid Access Token"


def test_price_and_availability_answers_an_array_and_207_when_some_products_are_in_error():
    sandbox = IngramSandbox(products=3, seed=1)
    parts = sandbox.part_numbers()

    async def main():
        async with api(sandbox) as session:
            return await pa(session, parts[:2]), await pa(session, [parts[2], "NOPE"], **{"IM-SenderID": "me"})

    (status, body, headers), (partial_status, partial, partial_headers) = run(main())
    assert status == 200 and isinstance(body, list) and [i["ingramPartNumber"] for i in body] == parts[:2]
    first = body[0]
    truth = sandbox.truth()[parts[0]]
    assert Decimal(str(first["pricing"]["customerPrice"])) == truth["price"]
    assert first["availability"]["totalAvailability"] == truth["total"] == sum(
        w["quantityAvailable"] for w in first["availability"]["availabilityByWarehouse"])
    assert headers["IM-CorrelationID"] == "c" * 32 and headers["X-RateLimit-Limit"] == "60"
    assert partial_status == 207 and partial_headers["IM-SenderID"] == "me"
    assert partial[1] == {"index": 1, "ingramPartNumber": "NOPE", "productStatusCode": "E",
                          "productStatusMessage": "Invalid SKU: product not found"}


@pytest.mark.parametrize("headers, field", [
    ({"IM-CorrelationID": "x" * 33}, "IM-CorrelationID"),
    ({"IM-CountryCode": "USA"}, "IM-CountryCode"),
    ({"IM-SenderID": "s" * 33}, "IM-SenderID"),
])
def test_bad_headers_are_refused_naming_the_field(headers, field):
    sandbox = IngramSandbox(products=1)

    async def main():
        async with api(sandbox) as session:
            return await pa(session, sandbox.part_numbers(), **headers)

    status, body, _ = run(main())
    assert status == 400 and body["errors"][0]["fields"][0]["field"] == field


def test_more_than_50_products_and_a_wrong_customer_number_are_refused():
    sandbox = IngramSandbox(products=1)

    async def main():
        async with api(sandbox) as session:
            return (await pa(session, [f"P{i}" for i in range(51)]),
                    await pa(session, sandbox.part_numbers(), **{"IM-CustomerNumber": "20-999999"}))

    (too_many, body, _), (wrong, fault, _) = run(main())
    assert too_many == 400 and "At most 50 products" in body["errors"][0]["message"]
    assert wrong == 400 and fault["faultstring"].startswith("Invalid customer number")


def test_quota_answers_429_with_rate_limit_headers_and_refused_requests_do_not_use_the_window():
    sandbox = IngramSandbox(products=2, pa_quota_requests=2, pa_quota_window_s=60, time_scale=0.005)  # 0.3 s

    async def main():
        async with api(sandbox) as session:
            answers = [await pa(session, sandbox.part_numbers()[:1]) for _ in range(3)]
            refused_at = time.time()
            await asyncio.sleep(0.35)  # the window passes
            answers.append(await pa(session, sandbox.part_numbers()[:1]))
            return answers, refused_at

    answers, refused_at = run(main())
    assert [status for status, _, _ in answers] == [200, 200, 429, 200]
    _, body, headers = answers[2]
    assert body == {"errors": [{"field": None, "message": "too many requests"}]}
    assert headers["X-RateLimit-Remaining"] == "0"
    assert 0 < float(headers["X-RateLimit-Reset"]) - refused_at <= 0.3
    assert sandbox.stats()["rate_limited"] == 1
    assert sandbox.max_in_any_window(PA, 0.3) == 3  # refused ones count: the fleet exceeded the quota
    assert sandbox.max_in_any_window(PA, 0.3, admitted_only=True) == 2
    assert sum(sandbox.requests_per_window(PA, 0.3)) == 4


def test_partials_are_transient_a_product_in_error_is_answered_normally_next_time():
    sandbox = IngramSandbox(products=50, partial_rate=0.5)

    async def main():
        async with api(sandbox) as session:
            _, first, _ = await pa(session, sandbox.part_numbers())
            failed = [i["ingramPartNumber"] for i in first if i.get("productStatusCode") == "E"]
            status, again, _ = await pa(session, failed)
            return failed, status, again

    failed, status, again = run(main())
    assert 10 < len(failed) < 40
    assert status == 200 and all("productStatusCode" not in item for item in again)


def test_details_answer_the_product_or_404_without_details():
    sandbox = IngramSandbox(products=20, details_quota_requests=0)
    with_details, without = sandbox.part_numbers()[0], sandbox.part_numbers()[16]

    async def main():
        async with api(sandbox) as session:
            answers = []
            for part in (with_details, without):
                async with session.get(f"/resellers/v6/catalog/details/{part}", headers=session.headers_for()) as r:
                    answers.append((r.status, await r.json()))
            return answers

    (status, details), (missing, body) = run(main())
    assert status == 200 and details == sandbox.details_json(with_details)
    assert details["indicators"]["isRefurbishedProduct"] is True
    assert missing == 404 and body["errors"][0]["message"] == "No Content"
    assert sandbox.details_json(without) is None


def test_one_shot_faults_hit_the_next_requests_in_order():
    sandbox = IngramSandbox(products=2)
    sandbox.fail_next(1, status=503)
    sandbox.throttle_next(1, reset_in_s=2)
    sandbox.malformed_next(1)

    async def main():
        async with api(sandbox) as session:
            answers = [await pa(session, sandbox.part_numbers()) for _ in range(4)]
            sandbox.expire_tokens()
            answers.append(await pa(session, sandbox.part_numbers()))
            return answers

    answers = run(main())
    assert [status for status, _, _ in answers] == [503, 429, 200, 200, 401]
    assert 1.5 < float(answers[1][2]["X-RateLimit-Reset"]) - time.time() <= 2
    assert isinstance(answers[2][1], dict) and isinstance(answers[3][1], list)  # malformed, then normal
    assert sandbox.stats()["faults_injected"] == {"fail": 1, "throttle": 1, "malformed": 1}


def test_change_products_changes_the_truth_and_drift_follows_scaled_time():
    sandbox = IngramSandbox(products=30, seed=4)
    before = sandbox.truth()
    changed = sandbox.change_products(5, rng_seed=1)
    after = sandbox.truth()
    assert len(changed) == 5
    assert {part for part in before if before[part] != after[part]} == set(changed)
    assert sandbox.change_products(5, rng_seed=1).keys() == changed.keys()  # same seed, same products

    now = [0.0]
    drifting = IngramSandbox(products=30, seed=4, drift_per_minute=10, time_scale=0.01, clock=lambda: now[0])
    now[0] = 1.2  # two scaled minutes

    async def main():
        async with api(drifting) as session:
            await pa(session, drifting.part_numbers()[:1])

    run(main())
    assert drifting.stats()["drifted"] == 20


def test_window_quota_is_a_sliding_log():
    quota = WindowQuota(2, 1.0)
    assert [quota.admit(t)[0] for t in (0.0, 0.5, 0.9, 1.0, 1.4, 1.5)] == [True, True, False, True, False, True]
    assert WindowQuota(0, 1.0).admit(0) == (True, 0, 0.0)


def test_dials_are_checked():
    sandbox = IngramSandbox(products=0)
    with pytest.raises(TypeError, match="unknown sandbox dials: colour"):
        sandbox.configure(colour=1)
    with pytest.raises(ValueError, match="partial_rate must be between 0 and 1"):
        sandbox.configure(partial_rate=2)
    with pytest.raises(ValueError, match="5xx"):
        sandbox.fail_next(1, status=404)


# -- the reseller SDK's shapes, against the sandbox served on loopback ---------------------------


TOKEN_FORM = {"grant_type": "client_credentials", "client_id": "sandbox-client", "client_secret": "sandbox-secret"}


def token_answers(url: str, method: str, fields: dict) -> tuple[int, dict]:
    async def main():
        async with aiohttp.ClientSession() as session:
            # POST sends the fields as a form; GET, as the SDK does, in the query string.
            options = {"data": fields} if method == "POST" else {"params": fields}
            async with session.request(method, f"{url}/oauth/oauth20/token", **options) as response:
                return response.status, await response.json()

    return run(main())


def test_the_sdks_get_token_form_is_answered_as_the_post_form_is():
    sandbox = IngramSandbox(products=2, token_ttl_s=86399)
    refusals = [{**TOKEN_FORM, "client_secret": "wrong"}, {**TOKEN_FORM, "client_id": "someone"},
                {**TOKEN_FORM, "grant_type": "password"}, {"grant_type": "client_credentials"}, {}]
    with serve_in_thread(sandbox.build_app()) as server:
        answers = {method: [token_answers(server.url, method, fields) for fields in [TOKEN_FORM, *refusals]]
                   for method in ("POST", "GET")}

        async def priced_with(token):
            async with aiohttp.ClientSession() as session:
                headers = {"Authorization": f"Bearer {token}", "IM-CustomerNumber": "20-222222",
                           "IM-CountryCode": "US", "IM-CorrelationID": "c" * 32}
                body = {"products": [{"ingramPartNumber": sandbox.part_numbers()[0]}]}
                async with session.post(server.url + PA_URL, json=body, headers=headers) as response:
                    return response.status

        got_token = answers["GET"][0][1]["access_token"]
        assert run(priced_with(got_token)) == 200  # a token from the GET form opens the API
    (post_status, post_body), *post_refused = answers["POST"]
    (get_status, get_body), *get_refused = answers["GET"]
    assert post_status == get_status == 200
    assert {k: v for k, v in get_body.items() if k != "access_token"} == {"token_type": "Bearer",
                                                                          "expires_in": "86399"}
    assert get_body.keys() == post_body.keys() and get_body["access_token"] != post_body["access_token"]
    assert get_refused == post_refused == [(400, {"message": "Invalid client credentials or grant_type"})] * 5
    assert sandbox.stats()["tokens_issued"] == 2  # one per good answer, refusals issue none


def test_expires_in_is_a_string_of_whole_seconds():
    sandbox = IngramSandbox(products=0, token_ttl_s=1799.5)
    with serve_in_thread(sandbox.build_app()) as server:
        status, body = token_answers(server.url, "POST", TOKEN_FORM)
    assert status == 200 and body["expires_in"] == "1800"


def test_part_numbers_are_at_most_6_characters_everywhere_the_api_shows_them():
    sandbox = IngramSandbox(products=60, seed=7, details_quota_requests=0)
    with serve_in_thread(sandbox.build_app()) as server:
        async def main():
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{server.url}/_sandbox/products") as response:
                    listed = await response.json()
                async with session.post(f"{server.url}/oauth/oauth20/token", data=TOKEN_FORM) as response:
                    token = (await response.json())["access_token"]
                headers = {"Authorization": f"Bearer {token}", "IM-CustomerNumber": "20-222222",
                           "IM-CountryCode": "US", "IM-CorrelationID": "c" * 32}
                body = {"products": [{"ingramPartNumber": part} for part in listed[:50]]}
                async with session.post(server.url + PA_URL, json=body, headers=headers) as response:
                    priced = [item["ingramPartNumber"] for item in await response.json()]
                async with session.get(f"{server.url}/resellers/v6/catalog/details/{listed[0]}",
                                       headers=headers) as response:
                    detailed = (await response.json())["ingramPartNumber"]
                return listed, priced, detailed

        listed, priced, detailed = run(main())
    assert len(listed) == 60 and len(set(listed)) == 60
    assert all(len(part) == 6 for part in [*listed, *priced, detailed])
    assert priced == listed[:50] and detailed == listed[0]
    assert [check_part_number(part) for part in listed] == listed  # what the seller may follow


def test_part_numbers_stay_6_characters_and_distinct_up_to_the_catalogues_capacity():
    edges = [0, 9, 10, 35, 36, 99_999, 100_000, 1_000_000, MAX_CATALOGUE - 1]
    parts = [part_number(seed, index) for seed in (1, 42, 199) for index in edges]
    assert all(re.fullmatch(r"[0-9A-Z]{6}", part) for part in parts)
    assert len(set(part_number(1, index) for index in edges)) == len(edges)
    assert sorted(part_number(1, index) for index in edges) == [part_number(1, index) for index in edges]
    with pytest.raises(ValueError, match="at most 1679616 products"):
        part_number(1, MAX_CATALOGUE)
    with pytest.raises(ValueError, match="at most 1679616 products"):
        IngramSandbox(products=0).add_products(MAX_CATALOGUE + 1)  # refused before generating any


def test_details_dimensions_and_net_weight_are_strings_with_units():
    sandbox = IngramSandbox(products=3, details_quota_requests=0)
    with serve_in_thread(sandbox.build_app()) as server:
        async def main():
            async with aiohttp.ClientSession() as session:
                async with session.post(f"{server.url}/oauth/oauth20/token", data=TOKEN_FORM) as response:
                    token = (await response.json())["access_token"]
                headers = {"Authorization": f"Bearer {token}", "IM-CustomerNumber": "20-222222",
                           "IM-CountryCode": "US", "IM-CorrelationID": "c" * 32}
                answers = []
                for part in sandbox.part_numbers():
                    async with session.get(f"{server.url}/resellers/v6/catalog/details/{part}",
                                           headers=headers) as response:
                        answers.append((await response.json())["additionalInformation"])
                return answers

        answers = run(main())
    for info in answers:
        for key in ("height", "width", "length"):
            assert re.fullmatch(r"[0-9]+\.[0-9] Inches", info[key]), (key, info[key])
        assert re.fullmatch(r"[0-9]+\.[0-9] lbs", info["netWeight"])
    assert [info["height"] for info in answers] == ["0.8 Inches", "0.9 Inches", "1.0 Inches"]
