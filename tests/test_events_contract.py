"""The stock-event contract (core/events.py): one definition, its published JSON Schema, its limits."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import jsonschema
import pytest

from core.events import (EVENT_KINDS, FIELDS, ID_CHARS, KEY_CHARS, MAX_QUANTITY, SKU_CHARS, TEXT_CHARS,
                         InvalidStockEvent, StockEvent, json_schema)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "core" / "stock_event.schema.json"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)

ORDER = {"type": "order_created", "marketplace": "backmarket", "order_id": "5978", "order_line_id": "37195",
         "sku": "SKU-1", "quantity": 1, "event_time": "2026-11-23T09:35:24Z"}
TOPUP = {"type": "stock_topup", "marketplace": "backmarket", "sku": "SKU-1", "quantity": 5, "reference": "PO-1",
         "event_time": "2026-11-23T09:35:24Z"}
ADJUSTMENT = {"type": "manual_adjustment", "marketplace": "refurbed", "sku": "SKU-1", "change": -2,
              "reference": "count-7", "event_time": "2026-11-23T09:35:24Z"}


def test_the_committed_schema_is_what_the_models_generate():
    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed == json_schema(), "regenerate it: python -m core.events > core/stock_event.schema.json"
    printed = subprocess.run([sys.executable, "-m", "core.events"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
    assert json.loads(printed) == committed
    jsonschema.Draft202012Validator.check_schema(committed)


@pytest.mark.parametrize("body", [
    ORDER, {**ORDER, "type": "order_cancelled"}, TOPUP, ADJUSTMENT, {**ORDER, "order_id": 5978},
    {**TOPUP, "actor": "anna", "note": "x" * 2000},
    {**ORDER, "quantity": 0}, {**ORDER, "quantity": MAX_QUANTITY + 1}, {**ORDER, "quantity": "1"},
    {**ORDER, "order_id": -1}, {**ORDER, "sku": ""}, {**ORDER, "sku": "x" * (SKU_CHARS + 1)},
    {**ORDER, "marketplace": "Back Market"}, {**ORDER, "colour": "red"}, {**ORDER, "type": "order_shipped"},
    {**TOPUP, "note": "x" * 2001}, {**TOPUP, "reference": None}, {**ADJUSTMENT, "change": 0},
    {**ADJUSTMENT, "quantity": 2}, {k: v for k, v in ORDER.items() if k != "order_line_id"},
])
def test_the_schema_and_the_models_agree(body):
    # A producer in another language that validates with the schema gets what the fleet accepts.
    by_schema = jsonschema.Draft202012Validator(json_schema()).is_valid(body)
    try:
        StockEvent.from_json(body, now=NOW)
        by_models = True
    except InvalidStockEvent:
        by_models = False
    assert by_schema == by_models


def test_an_event_is_its_actor_message_and_back():
    for body in (ORDER, TOPUP, ADJUSTMENT):
        event = StockEvent.from_json(body, now=NOW)
        assert StockEvent.from_message(event.kind, (), event.fields, now=NOW) == event
        positional = tuple(event.fields[name] for name in FIELDS[event.kind])
        assert StockEvent.from_message(event.kind, positional, now=NOW) == event


def test_the_ledger_view():
    order = StockEvent.from_json({**ORDER, "source": "poll"}, now=NOW)
    assert (order.change_type, order.change, order.key, order.actor) == (
        "order_created", -1, "backmarket:37195:order_created", "poll")
    cancel = StockEvent.from_json({**ORDER, "type": "order_cancelled"}, now=NOW)
    assert (cancel.change, cancel.key) == (1, "backmarket:37195:order_cancelled")
    topup = StockEvent.from_json({**TOPUP, "actor": "anna"}, now=NOW)
    assert (topup.change_type, topup.change, topup.key, topup.actor, topup.order_id) == (
        "topup", 5, "backmarket:topup:PO-1", "anna", None)
    adjustment = StockEvent.from_json(ADJUSTMENT, now=NOW)
    assert (adjustment.change_type, adjustment.change, adjustment.quantity) == ("manual", -2, -2)
    assert order.event_time == datetime(2026, 11, 23, 9, 35, 24, tzinfo=timezone.utc)


def test_the_longest_fields_still_make_a_key_the_ledger_holds():
    longest = [StockEvent.of("order_cancelled", marketplace="m" * 64, order_id="o" * ID_CHARS,
                             order_line_id="l" * ID_CHARS, sku="s" * SKU_CHARS, quantity=1, now=NOW),
               StockEvent.of("manual_adjustment", marketplace="m" * 64, sku="s", change=1,
                             reference="r" * TEXT_CHARS, now=NOW)]
    assert max(len(event.key) for event in longest) <= KEY_CHARS


@pytest.mark.parametrize("changes, field, words", [
    ({"sku": "A\x00B"}, "sku", "NUL"),
    ({"order_line_id": "\ud800"}, "order_line_id", "Unicode"),
    ({"sku": [[["deep"]]]}, "sku", "must be a string, got list"),
    ({"event_time": 1764000000}, "event_time", "ISO 8601 string or a datetime"),
    ({"type": None}, "type", "is required"),
])
def test_text_postgresql_cannot_store_is_refused(changes, field, words):
    with pytest.raises(InvalidStockEvent) as refused:
        StockEvent.from_json({**ORDER, **changes}, now=NOW)
    assert refused.value.field == field and words in refused.value.problem


def test_positional_arguments_beyond_the_kinds_fields_are_refused():
    with pytest.raises(InvalidStockEvent, match="at most 7 positional"):
        StockEvent.from_message("order_created", tuple(range(8)))
    with pytest.raises(InvalidStockEvent, match="given twice"):
        StockEvent.from_message("order_created", ("backmarket",), {"marketplace": "backmarket"})
    with pytest.raises(InvalidStockEvent, match="actor's name is the kind"):
        StockEvent.from_message("order_created", (), {**ORDER})


def test_an_event_is_immutable():
    event = StockEvent.from_json(ORDER, now=NOW)
    with pytest.raises(Exception):
        event.root.quantity = 5
    assert set(EVENT_KINDS) == set(FIELDS)


def test_there_is_one_stock_event_class_in_the_code_base():
    sources = [path for folder in ("actors", "clients", "core", "db", "pipelines", "runtime", "workers")
               for path in (ROOT / folder).rglob("*.py")]
    defined = [path.relative_to(ROOT).as_posix() for path in sources if "class StockEvent(" in path.read_text()]
    assert defined == ["core/events.py"]
