"""Webhook authentication helpers and the producer API's validation (no servers)."""
from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta, timezone

import pytest

from runtime.producer import InvalidEvent, event_from_json, make_event
from workers.intake import auth
from workers.intake.auth import SignatureError

BODY = b'{"id": 820982911946154508, "line_items": []}'
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)


# -- Shopify -----------------------------------------------------------------------------------------


def test_shopify_hmac_is_base64_of_hmac_sha256_of_the_raw_body():
    expected = base64.b64encode(hmac.new(b"shpss_secret", BODY, hashlib.sha256).digest()).decode()
    assert auth.shopify_hmac("shpss_secret", BODY) == expected
    auth.verify_shopify(["shpss_secret"], BODY, expected)


def test_shopify_rotation_accepts_the_previous_secret_and_nothing_else():
    header = auth.shopify_hmac("old", BODY)
    auth.verify_shopify(["new", "old"], BODY, header)
    with pytest.raises(SignatureError, match="does not match"):
        auth.verify_shopify(["new", ""], BODY, header)


@pytest.mark.parametrize("header", [None, "", "bm90IGEgc2lnbmF0dXJl"])
def test_shopify_missing_or_wrong_header_is_refused(header):
    with pytest.raises(SignatureError):
        auth.verify_shopify(["secret"], BODY, header)


def test_shopify_body_changed_after_signing_is_refused():
    header = auth.shopify_hmac("secret", BODY)
    with pytest.raises(SignatureError):
        auth.verify_shopify(["secret"], BODY + b" ", header)


# -- in-house producers ------------------------------------------------------------------------------


def test_producer_signature_round_trip_and_format():
    header = auth.producer_signature("key", BODY, timestamp=1_700_000_000)
    digest = hmac.new(b"key", b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={digest}"
    assert auth.verify_producer("key", BODY, header, now=1_700_000_100) == 1_700_000_000


@pytest.mark.parametrize("skew", [-301, 301])
def test_producer_signature_outside_the_tolerance_is_refused_both_ways(skew):
    header = auth.producer_signature("key", BODY, timestamp=1_700_000_000)
    with pytest.raises(SignatureError, match="300 s"):
        auth.verify_producer("key", BODY, header, now=1_700_000_000 + skew, tolerance_s=300)


def test_producer_signature_binds_the_timestamp():
    # Moving the timestamp forward (to pass the tolerance) breaks the signature.
    header = auth.producer_signature("key", BODY, timestamp=1_700_000_000)
    moved = header.replace("t=1700000000", "t=1700000500")
    with pytest.raises(SignatureError, match="does not match"):
        auth.verify_producer("key", BODY, moved, now=1_700_000_500)


def test_producer_signature_accepts_any_v1_during_a_key_rotation():
    old = auth.producer_signature("old", BODY, timestamp=1_700_000_000).split(",")[1]
    new = auth.producer_signature("new", BODY, timestamp=1_700_000_000).split(",")[1]
    assert auth.verify_producer("new", BODY, f"t=1700000000,{old},{new}", now=1_700_000_000)


@pytest.mark.parametrize("header", [None, "", "garbage", "t=abc,v1=00", "t=1700000000", "v1=00"])
def test_producer_malformed_header_is_refused_with_a_clear_reason(header):
    with pytest.raises(SignatureError) as refused:
        auth.verify_producer("key", BODY, header, now=1_700_000_000)
    assert "key" not in str(refused.value).replace("no key configured", "")


def test_producer_without_a_key_configured_refuses_everything():
    with pytest.raises(SignatureError, match="no key configured"):
        auth.verify_producer("", BODY, auth.producer_signature("", BODY))


def test_url_secret_comparison():
    assert auth.secrets_match("s3cret", "s3cret")
    assert not auth.secrets_match("s3cre", "s3cret")
    assert not auth.secrets_match("", "")  # an unset secret never matches


# -- producer validation -----------------------------------------------------------------------------


def test_order_event_is_normalised():
    event = make_event("order_created", marketplace="backmarket", order_id=5978, order_line_id=37195,
                       sku="IPHONE416GONLIB0", quantity=2, event_time="2026-11-23T10:35:24+01:00", now=NOW)
    assert event.kind == "order_created"
    assert event.fields == {"marketplace": "backmarket", "order_id": "5978", "order_line_id": "37195",
                            "sku": "IPHONE416GONLIB0", "quantity": 2, "event_time": "2026-11-23T09:35:24+00:00",
                            "source": "api"}


def test_event_time_defaults_to_now_in_utc():
    event = make_event("stock_topup", marketplace="backmarket", sku="A", quantity=3, reference="PO-1", now=NOW)
    assert event.fields["event_time"] == NOW.isoformat()
    assert event.fields["actor"] is None and event.fields["note"] is None


@pytest.mark.parametrize("arguments, field, words", [
    ({"quantity": 0}, "quantity", "1.."),
    ({"quantity": True}, "quantity", "integer"),
    ({"quantity": "2"}, "quantity", "integer"),
    ({"sku": " "}, "sku", "empty"),
    ({"sku": "x" * 201}, "sku", "at most 200"),
    ({"order_id": None}, "order_id", "required"),
    ({"order_id": -1}, "order_id", "negative"),
    ({"order_line_id": 1.5}, "order_line_id", "string"),
    ({"marketplace": "Back Market"}, "marketplace", "code"),
    ({"event_time": "yesterday"}, "event_time", "ISO 8601"),
    ({"event_time": "2026-11-23T09:35:24"}, "event_time", "time zone"),
    ({"event_time": (NOW + timedelta(hours=1)).isoformat()}, "event_time", "future"),
    ({"colour": "red"}, "colour", "not a field"),
])
def test_bad_order_arguments_name_the_field(arguments, field, words):
    good = {"marketplace": "backmarket", "order_id": "1", "order_line_id": "2", "sku": "A", "quantity": 1}
    with pytest.raises(InvalidEvent) as invalid:
        make_event("order_created", now=NOW, **{**good, **arguments})
    assert invalid.value.field == field and words in str(invalid.value)


def test_manual_adjustment_takes_a_signed_non_zero_change():
    make_event("manual_adjustment", marketplace="refurbed", sku="A", change=-3, reference="count-7", now=NOW)
    with pytest.raises(InvalidEvent, match="non-zero"):
        make_event("manual_adjustment", marketplace="refurbed", sku="A", change=0, reference="count-7", now=NOW)
    with pytest.raises(InvalidEvent, match="reference: is required"):
        make_event("manual_adjustment", marketplace="refurbed", sku="A", change=1, now=NOW)


def test_event_from_json_needs_a_known_type():
    with pytest.raises(InvalidEvent, match="type: is required"):
        event_from_json({"marketplace": "backmarket"})
    with pytest.raises(InvalidEvent, match="must be one of"):
        event_from_json({"type": "order_shipped"})
    with pytest.raises(InvalidEvent, match="JSON object"):
        event_from_json([1, 2])
    event = event_from_json({"type": "stock_topup", "marketplace": "backmarket", "sku": "A", "quantity": 5,
                             "reference": "PO-9", "actor": "anna"}, now=NOW)
    assert event.kind == "stock_topup" and event.fields["actor"] == "anna"
