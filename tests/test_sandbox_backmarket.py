"""The sandbox Back Market: real servers on loopback, spoken to over HTTP, checked against the spec."""
from __future__ import annotations

import asyncio
import base64
import http.client
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_core.validation.response.exceptions import InvalidData

from sandbox.backmarket import (MALFORMED_KINDS, BackMarketSandbox, build_app, catalogue_entry, listing_fields,
                                listing_fragment, malformed_kind)
from sandbox.server import serve_in_thread

# The spec is vendored next to the sandbox so that a fresh clone has it; the shared copy (outside
# the repository) is the one the team reads, and the two must not drift apart.
SPEC = Path(__file__).resolve().parents[1] / "sandbox" / "specs" / "backmarket-openapi.yml"
SHARED_SPEC = Path(__file__).resolve().parents[2] / "shared" / "specs" / "backmarket-openapi.yml"

TOKEN = "sandbox-token"
UA = "BM-Stocksync-Tests;ops@example.com"
HEADERS = {"Authorization": f"Basic {TOKEN}", "User-Agent": UA, "Accept-Language": "fr-fr",
           "Accept": "application/json"}
LISTING_PUBLIC_FIELDS = {"id", "listing_id", "product_id", "backmarket_id", "title", "shippings", "state", "grade",
                         "quantity", "currency", "sku", "publication_state", "warranty_delay", "price", "comment",
                         "min_price", "max_price"}


class Answer(NamedTuple):
    """One HTTP answer: status, headers (case-insensitive), raw body."""

    status: int
    headers: Any
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


def call(server, method: str, path: str, *, body: Any = None, headers: dict | None = None,
         drop: tuple[str, ...] = ()) -> Answer:
    """One request with ``http.client``, which, unlike urllib and aiohttp, adds no User-Agent."""
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    send = {**HEADERS, **(headers or {})}
    for name in drop:
        send.pop(name, None)
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    if data is not None:
        send["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=data, headers=send)
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        connection.close()


def get(server, path: str, **kwargs) -> Answer:
    return call(server, "GET", path, **kwargs)


def assert_error_v1(answer: Answer, status: int) -> dict:
    """The answer is ``status`` with an ``ErrorResponseV1`` body; returns its ``error``."""
    assert answer.status == status, answer.raw
    body = answer.json
    assert set(body) == {"error", "requestId"}
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
    return body["error"]


class FakeClock:
    """A clock the test moves by hand: quota windows without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def serve():
    """Start a sandbox with these dials (unthrottled unless told) on a free port; stopped after the test."""
    servers = []

    def start(**dials) -> tuple[BackMarketSandbox, Any]:
        dials.setdefault("quota_requests", 0)
        sandbox = BackMarketSandbox(**dials)
        server = serve_in_thread(sandbox.build_app())
        servers.append(server)
        return sandbox, server

    yield start
    for server in servers:
        server.stop()


# -- the server helper ---------------------------------------------------------------------------


def test_serve_in_thread_serves_on_loopback_and_stops_cleanly():
    cleaned = threading.Event()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def cleanup(app: web.Application) -> None:
        cleaned.set()

    app = web.Application()
    app.router.add_get("/", hello)
    app.on_cleanup.append(cleanup)
    with serve_in_thread(app) as server:
        assert server.url == f"http://127.0.0.1:{server.port}" and server.port > 0
        assert get(server, "/").raw == b"hello"
        # The port is taken: a second server on it fails to start, in the caller's thread.
        with pytest.raises(OSError):
            serve_in_thread(web.Application(), port=server.port)
    assert cleaned.is_set() and not server.running
    with pytest.raises(ConnectionRefusedError):
        get(server, "/")
    server.stop()  # a second stop is harmless


# -- pages -----------------------------------------------------------------------------------------


def test_pages_have_the_envelope_absolute_links_and_a_default_size_of_10(serve):
    sandbox, server = serve(listings=23)
    first = get(server, "/ws/listings")
    assert first.status == 200 and first.headers["Content-Type"].startswith("application/json")
    body = first.json
    assert list(body) == ["count", "next", "previous", "results"]
    assert body["count"] == 23 and len(body["results"]) == 10
    assert body["next"] == f"{server.url}/ws/listings?page=2" and body["previous"] is None
    second = get(server, "/ws/listings?page=2").json
    # As Django REST framework: the link to page 1 has no page parameter.
    assert second["previous"] == f"{server.url}/ws/listings"
    assert second["next"] == f"{server.url}/ws/listings?page=3"
    last = get(server, "/ws/listings?page=3").json
    assert len(last["results"]) == 3 and last["next"] is None
    assert [item["id"] for item in body["results"] + second["results"] + last["results"]] == list(sandbox.quantities())
    assert get(server, "/ws/listings?page-size=50").json["next"] is None


def test_following_next_walks_the_catalogue_once(serve):
    sandbox, server = serve(listings=37)
    seen, path, pages = {}, "/ws/listings?page-size=7", 0
    while path:
        body = get(server, path).json
        pages += 1
        for item in body["results"]:
            assert LISTING_PUBLIC_FIELDS <= set(item)
            seen[item["id"]] = item["quantity"]
        # ``next`` keeps the page size and is absolute.
        path = body["next"] and body["next"].removeprefix(server.url)
        assert body["next"] is None or "page-size=7" in body["next"]
    assert pages == 6 and seen == sandbox.quantities()


@pytest.mark.parametrize("query, target", [
    ("page-size=51", "page-size"), ("page-size=0", "page-size"), ("page-size=abc", "page-size"),
    ("page-size=10.5", "page-size"), ("page=0", "page"), ("page=x", "page"), ("publication_state=7", "publication_state"),
    ("min_quantity=lots", "min_quantity"),
])
def test_bad_paging_or_filter_parameters_answer_400(serve, query, target):
    _, server = serve(listings=5)
    error = assert_error_v1(get(server, f"/ws/listings?{query}"), 400)
    assert error["target"] == target


def test_page_size_50_is_the_largest_accepted(serve):
    _, server = serve(listings=120)
    body = get(server, "/ws/listings?page-size=50&page=2").json
    assert len(body["results"]) == 50 and body["next"].endswith("page=3&page-size=50")


def test_a_page_past_the_end_is_empty_not_404(serve):
    _, server = serve(listings=23)
    past = get(server, "/ws/listings?page=9")
    assert past.status == 200
    assert past.json == {"count": 23, "next": None, "previous": f"{server.url}/ws/listings?page=3", "results": []}
    _, empty = serve(listings=0)
    assert get(empty, "/ws/listings").json == {"count": 0, "next": None, "previous": None, "results": []}


def test_filters_select_listings_and_stay_in_the_links(serve):
    sandbox, server = serve(listings=300, base_url_for_next="https://www.backmarket.fr/")
    online = [uuid_ for uuid_ in sandbox.quantities() if sandbox.listing_by_id(uuid_)["publication_state"] == 2]
    body = get(server, "/ws/listings?publication_state=2&page-size=50").json
    assert body["count"] == len(online) and 0.7 * 300 < len(online) < 300
    assert [item["id"] for item in body["results"]] == online[:50]
    assert body["next"] == "https://www.backmarket.fr/ws/listings?page=2&page-size=50&publication_state=2"
    low = get(server, "/ws/listings?min_quantity=5&max_quantity=10&page-size=50").json
    expected = [u for u, quantity in sandbox.quantities().items() if 5 <= quantity <= 10]
    assert low["count"] == len(expected) and all(5 <= item["quantity"] <= 10 for item in low["results"])


# -- headers: auth, WAF, market -----------------------------------------------------------------


@pytest.mark.parametrize("authorization", [
    None, "Basic wrong-token", "sandbox-token", "Bearer sandbox-token",
    "Basic " + base64.b64encode(b"sandbox-token").decode(),  # the token is sent as it is, not in base64
])
def test_a_missing_or_wrong_token_answers_401(serve, authorization):
    _, server = serve(listings=3)
    headers = {"Authorization": authorization} if authorization else {}
    answer = get(server, "/ws/listings", headers=headers, drop=() if authorization else ("Authorization",))
    assert assert_error_v1(answer, 401)["code"] == "unauthenticated"


@pytest.mark.parametrize("user_agent", [None, "", "   "])
def test_no_user_agent_is_stopped_by_the_waf(serve, user_agent):
    _, server = serve(listings=3)
    headers = {} if user_agent is None else {"User-Agent": user_agent}
    answer = get(server, "/ws/listings", headers=headers, drop=("User-Agent",) if user_agent is None else ())
    assert answer.status == 403
    assert answer.json == {"errors": [{"code": "bot-need-challenge", "message": "Forbidden",
                                       "challengePath": "/testchallengepage"}]}
    assert answer.headers["CF-RAY"] and answer.headers["Server"] == "cloudflare"


def test_accept_language_chooses_the_market_and_must_be_a_lowercase_locale(serve):
    sandbox, server = serve(listings=3)
    listing = sandbox.listing(1)
    path = f"/ws/listings/{listing['id']}"
    default = get(server, path, drop=("Accept-Language",)).json
    british = get(server, path, headers={"Accept-Language": "en-gb"}).json
    assert default["currency"] == "EUR" and british["currency"] == "GBP"
    assert default["quantity"] == british["quantity"] == listing["quantity"]  # stock is global
    assert british["shippings"][0]["country_code"] == "en-gb"
    for bad in ("fr-FR", "french", "fr-fr,en;q=0.5"):
        assert assert_error_v1(get(server, path, headers={"Accept-Language": bad}), 400)["target"] == "Accept-Language"
    # On the listing POST the spec's 400 is a bare string.
    refused = call(server, "POST", path, body={"quantity": 1}, headers={"Accept-Language": "FR"})
    assert refused.status == 400 and isinstance(refused.json, str)


# -- one listing -----------------------------------------------------------------------------------


def test_a_listing_by_uuid_by_legacy_id_and_by_sku_is_the_same(serve):
    sandbox, server = serve(listings=10)
    listing = sandbox.listing(4)
    by_uuid = get(server, f"/ws/listings/{listing['id']}").json
    assert by_uuid == {**listing, "statuscode": 200}
    assert get(server, f"/ws/listings/{listing['listing_id']}").json == by_uuid
    assert get(server, f"/ws/listings/detail?sku={listing['sku'].lower()}").json == by_uuid
    assert get(server, f"/ws/listings/detail?listing_id={listing['listing_id']}").json == by_uuid


def test_unknown_and_malformed_listing_ids(serve):
    sandbox, server = serve(listings=10)
    assert assert_error_v1(get(server, f"/ws/listings/{uuid.uuid4()}"), 404)["code"] == "not-found"
    assert_error_v1(get(server, "/ws/listings/999999"), 404)
    assert_error_v1(get(server, "/ws/listings/detail?sku=NOPE"), 404)
    assert assert_error_v1(get(server, "/ws/listings/not-an-id"), 400)["target"] == "listingId"
    gone = sandbox.listing(2)["id"]
    sandbox.remove_listing(gone)
    assert_error_v1(get(server, f"/ws/listings/{gone}"), 404)
    assert_error_v1(call(server, "POST", f"/ws/listings/{gone}", body={"quantity": 1}), 404)


def test_post_sets_the_stock_and_echoes_the_listing(serve):
    sandbox, server = serve(listings=10)
    listing = sandbox.listing(3)
    answer = call(server, "POST", f"/ws/listings/{listing['id']}", body={"quantity": 7})
    assert answer.status == 200
    assert answer.json == {**listing, "quantity": 7, "statuscode": 200}
    assert sandbox.quantity(listing["id"]) == 7
    assert call(server, "POST", f"/ws/listings/{listing['listing_id']}", body={"quantity": "12"}).json["quantity"] == 12
    page = get(server, "/ws/listings").json["results"]
    assert page[3]["quantity"] == 12
    assert [(change.before, change.after, change.cause) for change in sandbox.stock_changes()] == \
        [(listing["quantity"], 7, "api"), (7, 12, "api")]
    assert sandbox.stats()["listing_updates"] == 2


def test_post_changes_per_market_fields_only_in_that_market(serve):
    sandbox, server = serve(listings=5)
    listing = sandbox.listing(0)
    path = f"/ws/listings/{listing['id']}"
    body = {"price": 99.5, "comment": "Boxed", "warranty_delay": "24", "shipper_2": "DHL Express",
            "shipping_price_2": "3.90", "shipping_delay_2": 48}
    echo = call(server, "POST", path, body=body, headers={"Accept-Language": "en-gb"}).json
    assert (echo["price"], echo["currency"], echo["comment"], echo["warranty_delay"]) == ("99.50", "GBP", "Boxed", 24)
    assert echo["shippings"][1] == {"shipping_price": "3.90", "shipping_delay": 48, "shipper": "DHL Express",
                                    "shipper_display": "DHL Express", "country_code": "en-gb"}
    assert echo["shippings_response"] == ["Shipping method 2 (DHL Express) updated"]
    assert get(server, path, headers={"Accept-Language": "en-gb"}).json["price"] == "99.50"
    assert get(server, "/ws/listings", headers={"Accept-Language": "en-gb"}).json["results"][0]["comment"] == "Boxed"
    assert get(server, path).json == {**listing, "statuscode": 200}  # fr-fr untouched
    wrong_currency = call(server, "POST", path, body={"price": "10.00", "currency": "EUR"},
                          headers={"Accept-Language": "en-gb"})
    assert wrong_currency.status == 400 and "currency" in wrong_currency.json


@pytest.mark.parametrize("body", [
    {"quantity": "abc"}, {"quantity": -1}, {"quantity": True}, {"quantity": 1.5}, {"quantity": None},
    {"price": "cheap"}, {"warranty_delay": 3}, [1, 2], b"{not json", "7",
])
def test_a_bad_post_body_answers_400_with_a_bare_string(serve, body):
    sandbox, server = serve(listings=3)
    listing = sandbox.listing(0)
    answer = call(server, "POST", f"/ws/listings/{listing['id']}", body=body)
    assert answer.status == 400 and isinstance(answer.json, str) and answer.json
    assert sandbox.quantity(listing["id"]) == listing["quantity"]


# -- quota ------------------------------------------------------------------------------------------


def test_quota_is_a_sliding_window_that_refusals_do_not_use(serve):
    clock = FakeClock()
    sandbox, server = serve(listings=20, quota_requests=5, quota_window_s=1.0, clock=clock)
    statuses = [get(server, "/ws/listings").status for _ in range(5)]
    clock.advance(0.5)
    refused = get(server, "/ws/listings")
    statuses.append(refused.status)
    assert statuses == [200] * 5 + [429]
    assert assert_error_v1(refused, 429)["code"] == "too-many-requests"
    assert "Retry-After" not in refused.headers
    # Every catalog endpoint and every client shares the window, POSTs included.
    assert call(server, "POST", f"/ws/listings/{sandbox.listing(0)['id']}", body={"quantity": 1}).status == 429
    assert get(server, "/ws/listings", headers={"Authorization": "Basic other"}).status == 429
    # The window slides from the first admitted request: the refusals at +0.5 s did not extend it.
    clock.advance(0.5)
    assert [get(server, "/ws/listings").status for _ in range(6)] == [200] * 5 + [429]
    stats = sandbox.stats()
    assert stats["rate_limited"] == 4 and stats["accepted_requests"] == 10 and stats["by_status"]["429"] == 4
    assert sandbox.max_in_any_window(1.0) == 5 and sandbox.max_in_any_window(1.0001) == 10
    # The admin routes are outside the API: never throttled, never counted.
    assert get(server, "/_sandbox/stats").status == 200 and sandbox.stats()["total_requests"] == 14


def test_unauthenticated_requests_use_the_quota_as_at_cloudflare(serve):
    clock = FakeClock()
    _, server = serve(listings=3, quota_requests=2, quota_window_s=10.0, clock=clock)
    assert [get(server, "/ws/listings", drop=("Authorization",)).status for _ in range(3)] == [401, 401, 429]


def test_quota_block_refuses_everything_for_the_mitigation_timeout(serve):
    clock = FakeClock()
    _, server = serve(listings=3, quota_requests=2, quota_window_s=1.0, quota_block_s=3.0, clock=clock)
    assert [get(server, "/ws/listings").status for _ in range(3)] == [200, 200, 429]
    clock.advance(2.0)  # the window has passed, the block has not
    assert get(server, "/ws/listings").status == 429
    clock.advance(1.0)
    assert get(server, "/ws/listings").status == 200


def test_quota_holds_against_concurrent_clients_in_real_time(serve):
    sandbox, server = serve(listings=50, quota_requests=5, quota_window_s=5.0)

    async def burst() -> list[int]:
        async with aiohttp.ClientSession(headers=HEADERS) as session:
            async def one(page: int) -> int:
                async with session.get(f"{server.url}/ws/listings", params={"page": page}) as response:
                    return response.status
            return await asyncio.gather(*(one(page % 5 + 1) for page in range(12)))

    statuses = asyncio.run(burst())
    assert sorted(statuses) == [200] * 5 + [429] * 7
    assert sandbox.max_in_any_window(5.0) == 5
    assert sandbox.stats()["by_endpoint"] == {"GET /ws/listings": 12}


def test_max_in_any_window_counts_half_open_windows(serve):
    clock = FakeClock()
    sandbox, server = serve(listings=3, clock=clock)
    # Binary fractions, so that the sums are exact: requests at 0, 1/8, 1/4, 9/8, 19/16 s.
    for step in (0.0, 0.125, 0.125, 0.875, 0.0625):
        clock.advance(step)
        assert get(server, "/ws/listings").status == 200
    assert sandbox.max_in_any_window(1.0) == 3  # 1/8 and 9/8 are a full window apart: not in one
    assert sandbox.max_in_any_window(1.07) == 4
    assert sandbox.max_in_any_window(2.0) == 5
    assert sandbox.max_in_any_window(0.0625) == 1
    stats = get(server, "/_sandbox/stats?window=1&timestamps=1").json
    assert stats["max_in_window"] == 3 and len(stats["accepted_timestamps"]) == 5
    sandbox.reset_stats()
    assert sandbox.max_in_any_window(1.0) == 0 and sandbox.stats()["total_requests"] == 0


# -- fault dials ------------------------------------------------------------------------------------


def test_error_rate_answers_500s_deterministically(serve):
    runs = []
    for _ in range(2):
        sandbox, server = serve(listings=20, error_rate=0.3, seed=8)
        runs.append([get(server, f"/ws/listings?page={n % 2 + 1}").status for n in range(40)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 500} and 4 <= runs[0].count(500) <= 20
    assert sandbox.stats()["errors_injected"] == runs[0].count(500)
    sandbox.configure(error_rate=1.0)
    assert assert_error_v1(get(server, "/ws/listings"), 500)["code"] == "internal-error"


def test_malformed_pages_are_broken_in_each_way(serve):
    sandbox, server = serve(listings=30, malformed_pages={1, 2, 3})
    assert {malformed_kind(page) for page in (1, 2, 3)} == set(MALFORMED_KINDS)
    for page in (1, 2, 3):
        answer = get(server, f"/ws/listings?page={page}&page-size=5")
        assert answer.status == 200
        results = answer.json["results"]
        kind = malformed_kind(page)
        if kind == "results-not-a-list":
            assert isinstance(results, dict)
        elif kind == "missing-quantity":
            assert any("quantity" not in item for item in results)
        else:
            assert any(item["quantity"] == "abc" for item in results)
    assert all(isinstance(item["quantity"], int) for item in get(server, "/ws/listings?page=4&page-size=5")
               .json["results"])
    assert sandbox.stats()["malformed_pages_served"] == 3
    sandbox.configure(malformed_pages=())
    assert isinstance(get(server, "/ws/listings?page=1&page-size=5").json["results"], list)


def test_drift_changes_stock_after_each_page_deterministically(serve):
    truths = []
    for _ in range(2):
        sandbox, server = serve(listings=100, drift_per_request=3, seed=2)
        before = sandbox.quantities()
        page = get(server, "/ws/listings?page-size=50").json["results"]
        # The page shows the stock as it was when it was read; the drift comes right after.
        assert {item["id"]: item["quantity"] for item in page} == {u: before[u] for u in list(before)[:50]}
        after = sandbox.quantities()
        assert sum(before[u] != after[u] for u in before) == 3
        get(server, "/ws/listings?page=2&page-size=50")
        truths.append(sandbox.quantities())
        changes = sandbox.stock_changes()
        assert len(changes) == 6 and {change.cause for change in changes} == {"drift"}
        assert sandbox.stats()["drifted_listings"] == 6
        get(server, f"/ws/listings/{page[0]['id']}")  # only listing pages drift
        assert sandbox.quantities() == truths[-1]
    assert truths[0] == truths[1]


def test_latency_dial_delays_answers(serve):
    sandbox, server = serve(listings=3, latency_s=0.2)
    started = time.monotonic()
    assert get(server, "/ws/listings").status == 200
    assert time.monotonic() - started >= 0.2
    sandbox.configure(latency_s=0)
    started = time.monotonic()
    get(server, "/ws/listings")
    assert time.monotonic() - started < 0.2


# -- the catalogue and the Python API -------------------------------------------------------------


def test_the_same_seed_makes_the_same_catalogue():
    first, again, other = (BackMarketSandbox(listings=200, seed=seed) for seed in (4, 4, 5))
    assert [first.listing(i) for i in range(200)] == [again.listing(i) for i in range(200)]
    assert first.quantities() == again.quantities()
    assert not set(first.quantities()) & set(other.quantities())
    listing = first.listing(7)
    assert LISTING_PUBLIC_FIELDS <= set(listing) and listing["sku"] == "BM-4-000007"
    assert str(uuid.UUID(listing["id"])) == listing["id"] and uuid.UUID(listing["product_id"]).version == 5
    assert listing["listing_id"] == first.listing(6)["listing_id"] + 1
    assert all(0 <= quantity <= 40 for quantity in first.quantities().values())
    assert sum(first.listing(i)["publication_state"] == 2 for i in range(200)) > 150
    assert len({first.listing(i)["quantity"] for i in range(200)}) > 20


def test_fast_serialisation_matches_json_dumps():
    # Pages are built from templates for speed: they must say exactly what json.dumps would.
    for index in range(500):
        entry = catalogue_entry(11, index)
        for locale in ("fr-fr", "en-gb", "ja-jp"):
            fields = {**listing_fields(entry, locale), "quantity": 17}
            assert listing_fragment(entry, locale) + "17}" == json.dumps(fields, separators=(",", ":"))


def test_python_stock_api():
    sandbox, twin = BackMarketSandbox(listings=50, seed=3), BackMarketSandbox(listings=50, seed=3)
    before = sandbox.quantities()
    changed = sandbox.change_stock(5, rng_seed=9)
    assert changed == twin.change_stock(5, rng_seed=9)
    assert len(changed) == 5 and all(before[u] != q and 0 <= q <= 40 for u, q in changed.items())
    assert {u: q for u, q in sandbox.quantities().items() if q != before[u]} == changed
    assert len(sandbox.change_stock(500, rng_seed=1)) == 50  # all of them, when asked for more
    listing = sandbox.listing(0)["id"]
    sandbox.set_quantity(listing, 0)
    assert sandbox.quantity(listing) == 0 and sandbox.listing_by_id(listing)["quantity"] == 0
    with pytest.raises(KeyError):
        sandbox.set_quantity(str(uuid.uuid4()), 1)
    with pytest.raises(ValueError):
        sandbox.set_quantity(listing, -1)
    with pytest.raises(TypeError):
        sandbox.configure(quota=3)
    with pytest.raises(ValueError):
        sandbox.configure(error_rate=2)


def test_added_and_removed_listings_show_in_the_pages(serve):
    sandbox, server = serve(listings=20)
    gone = sandbox.listing(5)["id"]
    sandbox.remove_listing(gone)
    added = sandbox.add_listings(2)
    assert sandbox.listing(20)["id"] == added[0] and sandbox.listing_count() == 21
    ids = [item["id"] for page in (1, 2, 3) for item in get(server, f"/ws/listings?page={page}").json["results"]]
    assert len(ids) == 21 and gone not in ids and ids[-2:] == added
    assert gone not in sandbox.quantities()
    with pytest.raises(KeyError):
        sandbox.listing(5)


def test_admin_routes(serve):
    sandbox, server = serve(listings=10)
    listing = sandbox.listing(1)["id"]
    assert call(server, "POST", "/_sandbox/stock", body={listing: 33}).json == {"updated": 1}
    assert sandbox.quantity(listing) == 33 and get(server, "/_sandbox/stock").json[listing] == 33
    changed = call(server, "POST", "/_sandbox/stock", body={"change": 3, "seed": 4}).json["changed"]
    assert len(changed) == 3 and all(sandbox.quantity(u) == q for u, q in changed.items())
    assert call(server, "POST", "/_sandbox/stock", body={str(uuid.uuid4()): 1}).status == 404
    assert call(server, "POST", "/_sandbox/stock", body={listing: -4}).status == 400
    config = call(server, "POST", "/_sandbox/config", body={"quota_requests": 1, "quota_window_s": 60,
                                                            "malformed_pages": [2]}).json
    assert config["quota_requests"] == 1 and config["malformed_pages"] == [2]
    assert [get(server, "/ws/listings").status for _ in range(2)] == [200, 429]
    assert call(server, "POST", "/_sandbox/config", body={"nonsense": 1}).status == 400
    stats = get(server, "/_sandbox/stats").json
    assert stats["total_requests"] == 2 and stats["by_status"] == {"200": 1, "429": 1} and stats["rate_limited"] == 1
    assert call(server, "POST", "/_sandbox/reset-stats").json == {"ok": True}
    assert get(server, "/_sandbox/stats").json["total_requests"] == 0


def test_concurrent_clients_and_python_calls(serve):
    sandbox, server = serve(listings=200)
    ids = list(sandbox.quantities())
    stop = threading.Event()

    def meddle() -> None:
        seed = 0
        while not stop.wait(0.001):  # paced, so that the requests get their share of the GIL
            sandbox.change_stock(5, rng_seed=seed)
            sandbox.stats()
            seed += 1

    async def traffic() -> list[int]:
        async with aiohttp.ClientSession(headers=HEADERS) as session:
            async def page(n: int) -> int:
                async with session.get(f"{server.url}/ws/listings", params={"page": n, "page-size": 50}) as r:
                    assert len((await r.json())["results"]) == 50
                    return r.status

            async def update(n: int) -> int:
                async with session.post(f"{server.url}/ws/listings/{ids[n]}", json={"quantity": n}) as r:
                    return r.status
            return await asyncio.gather(*(page(n % 4 + 1) for n in range(40)), *(update(n) for n in range(20)))

    meddler = threading.Thread(target=meddle)
    meddler.start()
    try:
        statuses = asyncio.run(traffic())
    finally:
        stop.set()
        meddler.join()
    assert statuses == [200] * 60
    stats = sandbox.stats()
    assert stats["total_requests"] == 60 and stats["by_status"] == {"200": 60}
    assert stats["by_endpoint"] == {"GET /ws/listings": 40, "POST /ws/listings/{listingId}": 20}


def test_build_app_function_makes_a_sandbox_from_dials():
    app = build_app(listings=4, quota_requests=0)
    with serve_in_thread(app) as server:
        assert get(server, "/ws/listings").json["count"] == 4


# -- the spec ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi() -> OpenAPI:
    return OpenAPI.from_file_path(str(SPEC))


def assert_matches_spec(openapi: OpenAPI, answer: Answer, method: str, path: str, *,
                        path_pattern: str | None = None, view_args: dict | None = None) -> None:
    """Validate an answer of the sandbox against the response declared by Back Market's spec."""
    # The spec's servers are Back Market's own hosts: present the request as made to one of them
    # (openapi-core finds the operation from host + path; the sandbox's host is not declared).
    request = MockRequest("https://www.backmarket.fr", method, path, path_pattern=path_pattern, view_args=view_args,
                          headers=HEADERS)
    content_type = answer.headers["Content-Type"].split(";")[0]
    response = MockResponse(answer.raw, status_code=answer.status, content_type=content_type)
    openapi.validate_response(request, response)


def test_the_vendored_spec_is_the_shared_one():
    if not SHARED_SPEC.exists():
        pytest.skip("no shared spec outside this clone")
    assert SPEC.read_bytes() == SHARED_SPEC.read_bytes()


def test_answers_match_the_spec(serve, openapi):
    # Only what the spec declares is checked: it declares no 400/404/429 for GET /ws/listings and
    # no 429 for GET /ws/listings/{listingId}, though the sandbox (like Cloudflare) sends them.
    sandbox, server = serve(listings=60)
    listing = sandbox.listing(2)
    one = "/ws/listings/{listingId}"
    by_id = {"listingId": listing["id"]}

    page = get(server, "/ws/listings?page=2&page-size=50")
    assert page.status == 200
    assert_matches_spec(openapi, page, "get", "/ws/listings")
    for locale in ("en-gb", "ja-jp"):
        assert_matches_spec(openapi, get(server, "/ws/listings", headers={"Accept-Language": locale}), "get",
                            "/ws/listings")
    assert_matches_spec(openapi, get(server, "/ws/listings", drop=("Authorization",)), "get", "/ws/listings")

    shown = get(server, f"/ws/listings/{listing['id']}")
    assert shown.status == 200
    assert_matches_spec(openapi, shown, "get", f"/ws/listings/{listing['id']}", path_pattern=one, view_args=by_id)
    for missing in (f"/ws/listings/{uuid.uuid4()}", "/ws/listings/not-an-id"):
        answer = get(server, missing)
        assert answer.status in (400, 404)
        assert_matches_spec(openapi, answer, "get", missing, path_pattern=one, view_args={"listingId": "x"})
    detail = get(server, f"/ws/listings/detail?sku={listing['sku']}")
    assert_matches_spec(openapi, detail, "get", "/ws/listings/detail")

    path = f"/ws/listings/{listing['id']}"
    updated = call(server, "POST", path, body={"quantity": "9", "price": "120.00", "shipper_1": "UPS"})
    assert updated.status == 200
    assert_matches_spec(openapi, updated, "post", path, path_pattern=one, view_args=by_id)
    for bad in ({"quantity": "abc"}, [1]):
        refused = call(server, "POST", path, body=bad)
        assert refused.status == 400
        assert_matches_spec(openapi, refused, "post", path, path_pattern=one, view_args=by_id)
    assert_matches_spec(openapi, call(server, "POST", path, body={"quantity": 1}, drop=("Authorization",)), "post",
                        path, path_pattern=one, view_args=by_id)

    # The spec declares the 429 on the listing POST (components/responses/RateLimited), not on the GETs.
    sandbox.configure(quota_requests=1, quota_window_s=60)
    call(server, "POST", path, body={"quantity": 2})
    limited = call(server, "POST", path, body={"quantity": 3})
    assert limited.status == 429
    assert_matches_spec(openapi, limited, "post", path, path_pattern=one, view_args=by_id)


def test_the_spec_check_catches_a_broken_listing(serve, openapi):
    # The check above is worth something only if a wrong body fails it.
    sandbox, server = serve(listings=5, malformed_pages={2})
    broken = get(server, "/ws/listings?page=2&page-size=2")
    assert malformed_kind(2) == "quantity-not-a-number"
    with pytest.raises(InvalidData, match="'abc' is not of type 'integer'"):
        assert_matches_spec(openapi, broken, "get", "/ws/listings")
