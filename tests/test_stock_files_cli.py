"""``stocksync stock import|export`` and ``stocksync ledger export`` against the real PostgreSQL (and Redis):
a dry run books nothing, a confirm books the good lines once, a re-import books nothing twice; the exports
read the database a page at a time."""
from __future__ import annotations

import csv
import io
import json

import pytest
from sqlalchemy import text

from db import accounts
from db.engine import session_factory
from pipelines.stock_files import export_chunks
from tests.console_support import add_variation
from tests.test_cli_conventions import cli

GOODS = ("sku,account,quantity,reference\n"
         "SKU-A,backmarket,3,GR-1\n"
         "SKU-B,counter,2,GR-2\n"
         "SKU-X,backmarket,1,GR-3\n"       # unknown SKU
         "SKU-A,shopify,1,GR-4\n"          # a disabled account
         "SKU-B,backmarket,0,GR-5\n"       # zero
         "SKU-B,backmarket,4,GR-1\n")      # duplicate reference


@pytest.fixture
def env(tmp_path, redis_url, database_url):
    sessions = session_factory(database_url)
    add_variation(sessions, "SKU-A", listed=5, listing="listing-a")
    add_variation(sessions, "SKU-B", listed=1, listing="listing-b")
    with sessions() as session:
        accounts.add_account(session, platform="manual", code="counter")
        accounts.set_enabled(session, "shopify", False)
        session.commit()
    return {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "sessions": sessions, "tmp": tmp_path}


def run(env, *args: str):
    return cli(*args, DATABASE_URL=env["DATABASE_URL"], REDIS_URL=env["REDIS_URL"])


def topups(sessions) -> list[tuple]:
    with sessions() as session:
        return [tuple(row) for row in session.execute(text(
            "SELECT m.code, v.sku, l.change, l.reference, l.actor FROM stock_ledger l "
            "JOIN marketplaces m ON m.id = l.marketplace_id JOIN variations v ON v.id = l.variation_id "
            "WHERE l.change_type = 'topup' ORDER BY l.id"))]


def listed(sessions) -> dict[tuple[str, str], int]:
    with sessions() as session:
        return {(row.code, row.sku): row.listed for row in session.execute(text(
            "SELECT m.code, v.sku, s.listed FROM marketplace_stock s JOIN marketplaces m ON m.id = s.marketplace_id "
            "JOIN variations v ON v.id = s.variation_id"))}


def test_a_dry_run_names_every_bad_line_and_books_nothing(env):
    path = env["tmp"] / "goods.csv"
    path.write_text(GOODS)
    before = listed(env["sessions"])
    done = run(env, "stock", "import", str(path))
    assert done.returncode == 1, done.stderr
    for line, words in ((4, "unknown SKU 'SKU-X'"), (5, "'shopify' is disabled"), (6, "at least 1, got 0"),
                        (7, "duplicate reference 'GR-1'")):
        assert any(row.startswith(str(line)) and words in row for row in done.stdout.splitlines()), (line, done.stdout)
    assert "would book 2 top-ups (5 units)" in done.stdout
    assert "4 of 6 lines are bad" in done.stderr
    assert topups(env["sessions"]) == [] and listed(env["sessions"]) == before


def test_confirm_books_the_good_lines_once_and_a_re_import_books_nothing_twice(env):
    path = env["tmp"] / "goods.csv"
    path.write_text(GOODS)
    first = run(env, "stock", "import", str(path), "--confirm", "--json", "--actor", "bo")
    assert first.returncode == 1, first.stderr  # bad lines: said by the exit code, the good ones booked anyway
    report = json.loads(first.stdout)
    assert (report["booked"], report["duplicates"], report["units"], len(report["bad"])) == (2, 0, 5, 4)
    assert [line["line"] for line in report["bad"]] == [4, 5, 6, 7]
    booked = [("backmarket", "SKU-A", 3, "console:GR-1", "bo"), ("counter", "SKU-B", 2, "console:GR-2", "bo")]
    assert topups(env["sessions"]) == booked
    after = listed(env["sessions"])
    assert after[("backmarket", "SKU-A")] == 8 and after[("counter", "SKU-B")] == 2

    again = run(env, "stock", "import", str(path), "--confirm", "--json")
    assert again.returncode == 1
    report = json.loads(again.stdout)
    assert report["good"] == [] and "booked" not in report
    reasons = {line["line"]: line["reason"] for line in report["bad"]}
    assert "'GR-1' is already booked on account 'backmarket'" in reasons[2]
    assert "'GR-2' is already booked on account 'counter'" in reasons[3]
    assert topups(env["sessions"]) == booked and listed(env["sessions"]) == after  # nothing twice


def test_a_clean_file_exits_zero_and_a_broken_one_is_one_clear_line(env):
    good = env["tmp"] / "good.csv"
    good.write_text("SKU;Account;Quantity;Reference\nSKU-B;backmarket;6;GR-9\n")
    done = run(env, "stock", "import", str(good), "--confirm")
    assert done.returncode == 0, done.stderr
    assert "booked 1 top-ups (6 units)" in done.stdout
    binary = env["tmp"] / "photo.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00")
    refused = run(env, "stock", "import", str(binary), "--confirm")
    assert refused.returncode == 1 and "not a text file" in refused.stderr and "Traceback" not in refused.stderr
    missing = env["tmp"] / "missing.csv"
    missing.write_text("sku,account,quantity\nSKU-B,backmarket,1\n")
    refused = run(env, "stock", "import", str(missing))
    assert refused.returncode == 1 and "no column reference" in refused.stderr


def test_the_stock_export_as_csv_and_json_lines(env):
    done = run(env, "stock", "export")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert {(row["account"], row["sku"], row["quantity"], row["listing"]) for row in rows} == {
        ("backmarket", "SKU-A", "5", "listing-a"), ("backmarket", "SKU-B", "1", "listing-b")}
    assert all(row["last_synced_at"] for row in rows)
    done = run(env, "stock", "export", "--format", "jsonl", "--sku", "SKU-A")
    [row] = [json.loads(line) for line in done.stdout.splitlines()]
    assert (row["account"], row["sku"], row["quantity"]) == ("backmarket", "SKU-A", 5)


def test_the_ledger_export_filters_a_range_and_writes_a_file(env):
    path = env["tmp"] / "goods.csv"
    path.write_text("sku,account,quantity,reference\nSKU-A,backmarket,3,GR-1\nSKU-B,counter,2,GR-2\n")
    assert run(env, "stock", "import", str(path), "--confirm").returncode == 0
    out = env["tmp"] / "ledger.jsonl"
    done = run(env, "ledger", "export", "--from", "2020-01-01", "--sku", "SKU-A", "--format", "jsonl", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(row["change_type"], row["change"], row["reference"]) for row in rows] == [("topup", 3, "console:GR-1")]
    done = run(env, "ledger", "export", "--account", "counter")
    assert [row["sku"] for row in csv.DictReader(io.StringIO(done.stdout))] == ["SKU-B"]
    assert run(env, "ledger", "export", "--to", "2020-01-01").stdout.count("\n") == 1  # the header only
    bad = run(env, "ledger", "export", "--from", "yesterday")
    assert bad.returncode == 2 and "--from must be a date" in bad.stderr


def test_an_export_reads_a_page_at_a_time_and_misses_no_row(env):
    sessions = env["sessions"]
    for number in range(7):
        add_variation(sessions, f"SKU-P{number}", listed=number + 1)
    whole = "".join(export_chunks("stock", "csv", sessions=sessions, page=10_000))
    chunks = list(export_chunks("stock", "csv", sessions=sessions, page=3))
    assert len(chunks) == 1 + 3 and "".join(chunks) == whole  # the header, then pages of 3, 3 and 3 rows
    assert len(list(csv.DictReader(io.StringIO(whole)))) == 9
