"""A hostile-input pass over every route of the intake: each vendor's webhook, ``POST /events``, the
read API and ``/readyz``.

Missing and garbage bodies, wrong types, huge values, bad signatures, wrong content types, wrong
methods and headers, sent as an attacker would (the signed routes also with garbage that is
correctly signed, so the parsing behind the signature is tried too).  Every answer is counted: all
are a 4xx with a JSON ``error`` saying what was wrong, never a 500, and nothing is enqueued.
"""
from __future__ import annotations

import http.client
import json
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.test_intake_http import PRODUCER_KEY, REFURBED_SECRET, SHOPIFY_SECRET, enqueued, intake  # noqa: F401
from tests.test_read_api import READ_TOKEN
from workers.intake import auth

NOW = datetime.now(timezone.utc).isoformat()
OLD = (datetime.now(timezone.utc) - timedelta(days=30)).isoformat()
DEEP = b"[" * 5000 + b"]" * 5000
GARBAGE_BODIES: list[bytes] = [
    b"", b"null", b"[]", b"{}", b"0", b'"text"', b"not json", b"\xff\xfe\x00", b"{\"a\": ", DEEP, b"9" * 5000,
    b'{"\xed\xa0\x80": 1}', json.dumps({"x": "\ud800"}).encode(), b"1e999999",
]
#: The content type is not what decides (Refurbed's own test is `curl -d`, a form type): the body must be
#: JSON whatever it says; a form or multipart body is refused as not JSON.
WRONG_CONTENT_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""]
FORM_BODIES = [b"order_id=1&type=stock_topup", b"--x\r\nContent-Disposition: form-data; name=\"order_id\"\r\n\r\n1\r\n--x--\r\n"]


def with_content_types(path: str, sign) -> list["Case"]:
    """Form and multipart bodies (signed by ``sign``) under every wrong content type."""
    return [("POST", path, body, {**sign(body), "Content-Type": kind}) for body in FORM_BODIES
            for kind in WRONG_CONTENT_TYPES]

Case = tuple[str, str, bytes, dict[str, str]]


def refurbed_cases() -> list[Case]:
    path = f"/webhooks/refurbed/{REFURBED_SECRET}"
    cases: list[Case] = [("POST", "/webhooks/refurbed/wrong-secret", b'{"order_id": 1}', {}),
                         ("POST", "/webhooks/refurbed/" + "s" * 5000, b'{"order_id": 1}', {}),
                         ("POST", "/webhooks/refurbed/", b'{"order_id": 1}', {}),
                         ("GET", path, b"", {}), ("PUT", path, b'{"order_id": 1}', {})]
    cases += [("POST", path, body, {}) for body in GARBAGE_BODIES]
    for order_id in ({}, [], None, True, -1, 0, 1.5, "1.5", "", " 1", "٣", 2**63, 10**400, "9" * 30, "\x00"):
        raw = json.dumps({"order_id": order_id}) if not isinstance(order_id, int) or order_id < 10**30 else \
            '{"order_id": ' + str(order_id) + "}"
        cases.append(("POST", path, raw.encode(), {}))
    cases += with_content_types(path, lambda body: {})
    return cases


def shopify_headers(body: bytes, topic: str = "orders/create", webhook_id: str = "hostile-1") -> dict[str, str]:
    return {"X-Shopify-Hmac-Sha256": auth.shopify_hmac(SHOPIFY_SECRET, body), "X-Shopify-Topic": topic,
            "X-Shopify-Webhook-Id": webhook_id}


def shopify_order(**changes: Any) -> dict:
    order = {"id": 7001, "created_at": NOW, "cancelled_at": None,
             "line_items": [{"id": 71, "sku": "HOSTILE-1", "quantity": 1}]}
    return {**order, **changes}


def shopify_cases() -> list[Case]:
    path = "/webhooks/shopify"
    good = json.dumps(shopify_order()).encode()
    cases: list[Case] = [
        ("POST", path, good, {}),                                                       # no signature at all
        ("POST", path, good, {**shopify_headers(good), "X-Shopify-Hmac-Sha256": "bm90IGl0"}),
        ("POST", path, good, {**shopify_headers(good), "X-Shopify-Hmac-Sha256": "%" * 5000}),
        ("POST", path, good + b" ", shopify_headers(good)),                              # body changed after signing
        ("POST", path, good, {**shopify_headers(good), "X-Shopify-Webhook-Id": ""}),
        ("POST", path, good, {**shopify_headers(good), "X-Shopify-Webhook-Id": "w" * 201}),
        ("GET", path, b"", {}),
    ]
    cases += [("POST", path, body, shopify_headers(body)) for body in GARBAGE_BODIES]
    cases += [("POST", path, body, shopify_headers(body, "orders/cancelled")) for body in GARBAGE_BODIES[:4]]
    bad_orders = [
        shopify_order(line_items="lines"), shopify_order(line_items=[1, 2]), shopify_order(line_items=[{}]),
        shopify_order(line_items=[{"id": 71, "sku": "S", "quantity": "1"}]),
        shopify_order(line_items=[{"id": 71, "sku": "S", "quantity": 10**12}]),
        shopify_order(line_items=[{"id": 71, "sku": "S", "quantity": -1}]),
        shopify_order(line_items=[{"id": 71, "sku": 5, "quantity": 1}]),
        shopify_order(line_items=[{"id": 71, "sku": "S" * 10_000, "quantity": 1}]),
        shopify_order(line_items=[{"id": None, "sku": "S", "quantity": 1}]),
        shopify_order(line_items=[{"id": {"a": 1}, "sku": "S", "quantity": 1}]),
        shopify_order(id=None), shopify_order(id=[1]), shopify_order(created_at=None), shopify_order(created_at=5),
        shopify_order(created_at="yesterday"), shopify_order(created_at="2026-12-01T10:00:00"),  # no zone
        shopify_order(cancelled_at=5), shopify_order(cancelled_at="never"), shopify_order(updated_at=[]),
        shopify_order(created_at=OLD, updated_at=OLD),                                  # over age
    ]
    cases += [("POST", path, raw, shopify_headers(raw)) for raw in (json.dumps(o).encode() for o in bad_orders)]
    swapped = json.dumps(shopify_order()).encode()
    cases.append(("POST", path, swapped, shopify_headers(swapped, "orders/cancelled")))  # the topic swap
    cases += with_content_types(path, shopify_headers)
    return cases


def producer_headers(body: bytes, timestamp: int | None = None) -> dict[str, str]:
    return {auth.SIGNATURE_HEADER: auth.producer_signature(PRODUCER_KEY, body, timestamp=timestamp)}


def producer_cases() -> list[Case]:
    path = "/events"
    topup = {"type": "stock_topup", "marketplace": "backmarket", "sku": "S", "quantity": 1, "reference": "R"}
    good = json.dumps(topup).encode()
    cases: list[Case] = [
        ("POST", path, good, {}),
        ("POST", path, good, {auth.SIGNATURE_HEADER: "garbage"}),
        ("POST", path, good, {auth.SIGNATURE_HEADER: "t=abc,v1=00"}),
        ("POST", path, good, {auth.SIGNATURE_HEADER: "t=1,v1="}),
        ("POST", path, good, {auth.SIGNATURE_HEADER: f"t={int(time.time())},v1=" + "z" * 5000}),
        ("POST", path, good, {auth.SIGNATURE_HEADER: "t=" + "9" * 13 + ",v1=00"}),
        ("POST", path, good, producer_headers(good, timestamp=int(time.time()) - 3600)),
        ("POST", path, good, producer_headers(good, timestamp=int(time.time()) + 3600)),
        ("POST", path, good + b" ", producer_headers(good)),
        ("GET", path, b"", {}),
    ]
    cases += [("POST", path, body, producer_headers(body)) for body in GARBAGE_BODIES]
    bad_events: list[Any] = [
        {"events": "x"}, {"events": []}, {"events": [topup] * 1001}, {"events": [topup], "more": 1},
        {"events": [None]}, {"events": [[topup]]}, {**topup, "type": "teleport"}, {**topup, "type": None},
        {**topup, "quantity": 10**30}, {**topup, "quantity": "5"}, {**topup, "quantity": 1.5}, {**topup, "quantity": True},
        {**topup, "sku": "S" * 10_000}, {**topup, "sku": "A\x00B"}, {**topup, "sku": 7}, {**topup, "marketplace": "BM!"},
        {**topup, "event_time": "x"}, {**topup, "event_time": "2026-12-01T10:00:00"}, {**topup, "event_time": 5},
        {**topup, "event_time": "2999-01-01T00:00:00Z"}, {**topup, "reference": ""}, {**topup, "note": "n" * 5000},
        {**topup, "unknown": 1}, {**topup, "actor": "a" * 500}, {**topup, "actor": {"name": "admin"}},
        {"type": "manual_adjustment", "marketplace": "backmarket", "sku": "S", "change": 0, "reference": "R"},
        {"type": "order_created", "marketplace": "backmarket", "order_id": -5, "order_line_id": "1", "sku": "S",
         "quantity": 1},
        {"type": "order_created", "marketplace": "backmarket", "order_id": "1", "order_line_id": "1" * 100,
         "sku": "S", "quantity": 1},
    ]
    cases += [("POST", path, raw, producer_headers(raw)) for raw in (json.dumps(e).encode() for e in bad_events)]
    cases += with_content_types(path, producer_headers)
    return cases


def read_cases() -> list[Case]:
    bearer = {"Authorization": f"Bearer {READ_TOKEN}"}
    cases: list[Case] = [
        ("GET", "/stock?sku=S", b"", {}),
        ("GET", "/stock?sku=S", b"", {"Authorization": "Bearer"}),
        ("GET", "/stock?sku=S", b"", {"Authorization": "Bearer " + "x" * 5000}),
        ("GET", "/stock?sku=S", b"", {"Authorization": f"Basic {READ_TOKEN}"}),
        ("GET", "/stock?sku=S", b"", {"Authorization": f"Bearer {READ_TOKEN}x"}),
        ("GET", "/variations/1/stock", b"", {"Authorization": "Bearer \u00e9t\u00e9"}),
        ("GET", "/readyz", b"", {"Authorization": "Bearer wrong"}),
        ("POST", "/stock?sku=S", b"{}", bearer),
        ("DELETE", "/variations/1/stock", b"", bearer),
    ]
    for path in ("/stock", "/stock?sku=", "/stock?sku=%20", "/stock?sku=%00", "/stock?sku=%FF%FE",
                 "/stock?sku=%ED%A0%80", "/stock?sku=" + "x" * 5000, "/stock?sku=S&sku=T", "/stock?sku=S&since=99999999999d",
                 "/stock?since=-1", "/stock?sku=S&" + "&".join(f"p{n}=1" for n in range(200)),
                 "/variations/abc/stock", "/variations/-1/stock", "/variations/1.5/stock", "/variations/%C2%B2/stock",
                 f"/variations/{2**63}/stock", "/variations/" + "9" * 500 + "/stock", "/variations/1/stock?since=0",
                 "/variations//stock", "/nope", "/stock/../readyz/x"):
        cases.append(("GET", path, b"", bearer))
    return cases


def send(server, case: Case) -> tuple[int, Any]:
    method, path, body, headers = case
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    sent = {"Content-Type": "application/json", **headers}
    if not sent["Content-Type"]:
        del sent["Content-Type"]
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in sent.items():
            connection.putheader(name, value.encode("utf-8"))  # non-Latin-1 bytes as an attacker sends them
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw[:200]
    finally:
        connection.close()


def run_pass(server, cases: list[Case]) -> Counter:
    answers: Counter = Counter()
    not_4xx = []
    for case in cases:
        status, body = send(server, case)
        answers[status] += 1
        if not 400 <= status < 500 or not (isinstance(body, dict) and isinstance(body.get("error"), str)):
            not_4xx.append((case[0], case[1][:80], case[2][:80], status, body))
    assert not not_4xx, f"answered other than a 4xx with a JSON error: {not_4xx}"
    print(f"hostile pass: {len(cases)} requests, answers {dict(sorted(answers.items()))}")
    return answers


@pytest.mark.parametrize("cases, refused, bad", [
    (lambda: refurbed_cases() + shopify_cases(), 4, 40),   # the webhooks of each vendor
    (producer_cases, 9, 40),                                # POST /events
    (read_cases, 7, 15),                                    # the read API and /readyz
], ids=["webhooks", "events", "read-api"])
def test_every_route_answers_hostile_input_with_a_4xx(intake, cases, refused, bad):
    server, broker = intake
    sent = cases()
    answers = run_pass(server, sent)
    assert sum(answers.values()) == len(sent) and 500 not in answers
    assert answers[401] >= refused and answers[400] >= bad, answers  # the checks were reached, not skipped
    assert enqueued(broker) == []


def test_a_body_over_the_limit_is_413_on_every_post_route(intake):
    server, broker = intake
    huge = b'{"order_id": "' + b"9" * 1_100_000 + b'"}'
    paths = [f"/webhooks/refurbed/{REFURBED_SECRET}", "/webhooks/shopify", "/events"]
    statuses = [send(server, ("POST", path, huge, shopify_headers(huge) if "shopify" in path else
                              producer_headers(huge) if path == "/events" else {}))[0] for path in paths]
    assert statuses == [413, 413, 413]
    assert enqueued(broker) == []
