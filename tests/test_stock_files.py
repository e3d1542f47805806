"""The goods-received file read and checked with no database: every bad-line reason, the whole-file errors,
and the export formats."""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone

import dataclasses

import pytest

from core.platforms import platform
from core.stock_files import (LEDGER_COLUMNS, STOCK_COLUMNS, AccountFacts, StockFileError, check_goods_received,
                              encode_rows, header, parse_bound, parse_goods_received)

MAX = 64 * 1024
ACCOUNTS = {"backmarket": AccountFacts(platform("backmarket"), True),
            "counter": AccountFacts(platform("manual"), True),
            # Shopify pushes now: one that could not stands for a platform without a push.
            "shop-eu": AccountFacts(dataclasses.replace(platform("shopify"), push=False), True),
            "refurbed": AccountFacts(platform("refurbed"), False)}
SKUS = {"SKU-A", "SKU-B"}


def parse(text: str):
    return parse_goods_received(text.encode(), max_bytes=MAX)


def check(text: str, booked: set[str] = frozenset()):
    return check_goods_received(parse(text), skus=SKUS, accounts=ACCOUNTS, actor="anna",
                                booked=lambda keys: {key for key in keys if key in booked})


def reasons(preview) -> dict[int, str]:
    return {bad.line: bad.reason for bad in preview.bad}


def test_good_lines_become_top_ups_under_the_console_prefix():
    preview = check("SKU,Account,Quantity,Reference\nSKU-A,backmarket,3,GR-1\nSKU-B,counter,2,GR-2\n")
    assert preview.bad == ()
    assert [(line.line, event.kind, event.marketplace, event.sku, event.quantity, event.reference, event.actor)
            for line, event in preview.good] == [
        (2, "stock_topup", "backmarket", "SKU-A", 3, "console:GR-1", "anna"),
        (3, "stock_topup", "counter", "SKU-B", 2, "console:GR-2", "anna")]
    assert preview.units == 5
    assert preview.events[0].key == "backmarket:topup:console:GR-1"  # the console's Top-up form books this key


def test_every_bad_line_is_named_with_its_line_number_and_reason():
    text = ("sku,account,quantity,reference\n"
            "SKU-X,backmarket,1,R1\n"        # 2 unknown SKU
            "SKU-A,nowhere,1,R2\n"           # 3 unknown account
            "SKU-A,shop-eu,1,R3\n"           # 4 cannot take local changes (Shopify: no push)
            "SKU-A,refurbed,1,R4\n"          # 5 disabled
            "SKU-A,backmarket,abc,R5\n"      # 6 not a number
            "SKU-A,backmarket,0,R6\n"        # 7 zero
            "SKU-A,backmarket,-2,R7\n"       # 8 negative
            "SKU-A,backmarket,100001,R8\n"   # 9 huge
            "SKU-A,backmarket,1,R9\n"        # 10 good
            "SKU-B,backmarket,1,R9\n"        # 11 duplicate reference in the file
            "SKU-A,backmarket,1,DONE\n"      # 12 already booked
            "SKU-A,backmarket,1,\n"          # 13 empty reference
            "SKU-A,backmarket\n"             # 14 too few cells
            "SKU-A,backmarket,1.5,R10\n"     # 15 not whole
            f"SKU-A,backmarket,1,{'r' * 300}\n"  # 16 the event refuses a reference that long
            "\n"                              # 17 blank: skipped
            "SKU-B,counter,1,R9\n")           # 18 same reference, another account: another event
    preview = check(text, booked={"backmarket:topup:console:DONE"})
    found = reasons(preview)
    assert [line.line for line, _ in preview.good] == [10, 18]
    assert sorted(found) == [2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16]
    assert "unknown SKU 'SKU-X'" in found[2]
    assert "unknown account 'nowhere'" in found[3]
    assert "shop-eu" in found[4] and "Shopify" in found[4] and "local change" in found[4]
    assert "disabled" in found[5]
    assert "whole number" in found[6] and "'abc'" in found[6]
    assert found[7] == "quantity must be at least 1, got 0"
    assert "at least 1, got -2" in found[8]
    assert "at most 100000, got 100001" in found[9]
    assert "duplicate reference 'R9'" in found[11] and "line 10" in found[11]
    assert "'DONE' is already booked" in found[12]
    assert found[13] == "reference is empty"
    assert "has 2 cells, the header has 4" in found[14]
    assert "whole number" in found[15]
    assert found[16].startswith("reference:")


def test_semicolons_a_bom_and_more_columns_are_read():
    data = "\ufeffReference;SKU;note;quantity;account\nGR-7;SKU-A;first pallet;4;BackMarket\n".encode()
    parsed = parse_goods_received(data, max_bytes=MAX)
    [line] = parsed.lines
    assert (line.sku, line.account, line.quantity, line.reference) == ("SKU-A", "backmarket", 4, "GR-7")


def test_a_quoted_separator_is_one_cell_and_an_unquoted_one_is_refused():
    parsed = parse('sku,account,quantity,reference\n"SKU-A",backmarket,1,"GR,1"\nSKU-A,backmarket,1,GR,2\n')
    assert [line.reference for line in parsed.lines] == ["GR,1"]
    assert parsed.bad[0].line == 3 and "must be quoted" in parsed.bad[0].reason


@pytest.mark.parametrize("data, problem", [
    (b"sku,account,quantity\nSKU-A,backmarket,1\n", "no column reference"),
    (b"sku,account,quantity,reference,sku\nA,b,1,r,A\n", "names column sku twice"),
    (b"", "empty"),
    (b"sku,account,quantity,reference\n", "no lines"),
    ("sku,account,quantity,reference\nSKÜ,backmarket,1,r\n".encode("latin-1"), "not UTF-8"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a text file"),
    (b"sku,account,quantity,reference\n" + b"SKU-A,backmarket,1,r\n" * 5000, "more than the"),
])
def test_a_file_that_cannot_be_read_is_refused_whole(data, problem):
    with pytest.raises(StockFileError, match=problem):
        parse_goods_received(data, max_bytes=MAX)


def test_export_formats_stream_rows_as_csv_and_json_lines():
    moment = datetime(2026, 11, 24, 9, 30, tzinfo=timezone.utc)
    rows = [{"id": 1, "account": "backmarket", "sku": 'SKU,"A"', "quantity": 3, "listing": None,
             "last_synced_at": moment}]
    text = header(STOCK_COLUMNS, "csv") + encode_rows(rows, STOCK_COLUMNS, "csv")
    assert list(csv.DictReader(io.StringIO(text))) == [
        {"account": "backmarket", "sku": 'SKU,"A"', "quantity": "3", "listing": "",
         "last_synced_at": "2026-11-24T09:30:00+00:00"}]
    assert header(LEDGER_COLUMNS, "jsonl") == ""
    [line] = encode_rows(rows, STOCK_COLUMNS, "jsonl").splitlines()
    assert json.loads(line) == {"account": "backmarket", "sku": 'SKU,"A"', "quantity": 3, "listing": None,
                                "last_synced_at": "2026-11-24T09:30:00+00:00"}


def test_a_csv_cell_a_spreadsheet_would_run_as_a_formula_is_kept_text():
    rows = [{"sku": "=HYPERLINK(\"http://x\")", "note": "@SUM(A1)", "change": -3, "reference": "+1"}]
    columns = ("sku", "note", "change", "reference")
    [row] = csv.DictReader(io.StringIO(header(columns, "csv") + encode_rows(rows, columns, "csv")))
    assert row == {"sku": "'=HYPERLINK(\"http://x\")", "note": "'@SUM(A1)", "change": "-3", "reference": "'+1"}
    # JSON lines carry the values as they are: no spreadsheet reads them
    assert json.loads(encode_rows(rows, columns, "jsonl"))["sku"] == "=HYPERLINK(\"http://x\")"


def test_range_bounds_are_dates_or_times_in_utc():
    assert parse_bound("2026-11-24", "from") == datetime(2026, 11, 24, tzinfo=timezone.utc)
    assert parse_bound("2026-11-24T10:00:00+01:00", "to") == datetime(2026, 11, 24, 9, tzinfo=timezone.utc)
    assert parse_bound("2026-11-24T10:00", "to") == datetime(2026, 11, 24, 10, tzinfo=timezone.utc)
    assert parse_bound(None, "from") is None
    with pytest.raises(ValueError, match="from must be a date"):
        parse_bound("yesterday", "from")
