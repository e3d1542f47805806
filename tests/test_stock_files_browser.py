"""The goods-received import and the downloads in a real browser (Playwright driving Debian's chromium) on
``stocksync console`` as a process, with Redis and PostgreSQL: an operator uploads a CSV, reads the
preview (the bad lines named, nothing booked), confirms, and sees the top-ups in the SKU's ledger; the
stock download link gives the file.  Screenshots go to ``tests/artifacts/console/`` (printed at the end).
"""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys

import pytest
from sqlalchemy import text

from db import accounts
from db.engine import session_factory
from runtime.local_servers import free_port, wait_until
from tests.console_support import PASSWORD, add_user, add_variation
from tests.fleet import ROOT
from tests.test_console_browser import CHROMIUM, Screenshots, _healthy, chromium_page

pytestmark = pytest.mark.e2e

GOODS = ("sku,account,quantity,reference\n"
         "IPHONE13-128-BLK,backmarket,4,GR-118\n"
         "PIXEL7-128-WHT,counter,2,GR-119\n"
         "NOKIA-3310,backmarket,1,GR-120\n"
         "PIXEL7-128-WHT,shopify,1,GR-121\n"
         "IPHONE13-128-BLK,backmarket,lots,GR-122\n"
         "PIXEL7-128-WHT,backmarket,3,GR-118\n")


@pytest.fixture
def console(tmp_path, redis_url, database_url):
    """``stocksync console`` on loopback, a catalogue of two SKUs, a manual account and an operator."""
    import shutil

    if not shutil.which(CHROMIUM):
        pytest.skip("chromium is not installed (make test installs it: apt-get install chromium)")
    sessions = session_factory(database_url)
    add_user(sessions, "bo", "operator")
    iphone = add_variation(sessions, "IPHONE13-128-BLK", title="iPhone 13 128 GB black", listed=5)
    add_variation(sessions, "PIXEL7-128-WHT", title="Pixel 7 128 GB white", listed=1)
    with sessions() as session:
        accounts.add_account(session, platform="manual", code="counter", name="Shop counter")
        accounts.set_enabled(session, "shopify", False)  # line 5's account
        session.commit()
    port = free_port()
    log = open(tmp_path / "console.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "workers.cli", "console", "--port", str(port)], cwd=ROOT,
                               env={**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url,
                                    "METRICS_PORT": "0", "PYTHONUNBUFFERED": "1"},
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(url), 60, interval=0.2, what="the console to answer /healthz")
        yield {"url": url, "sessions": sessions, "tmp": tmp_path, "iphone": iphone}
    finally:
        process.terminate()
        process.wait(20)
        log.close()


def _topups(sessions) -> list[tuple]:
    with sessions() as session:
        return [tuple(row) for row in session.execute(text(
            "SELECT m.code, l.change, l.reference, l.actor FROM stock_ledger l "
            "JOIN marketplaces m ON m.id = l.marketplace_id WHERE l.change_type = 'topup' ORDER BY l.id"))]


def test_an_operator_imports_goods_received_in_a_browser(console):
    url, sessions = console["url"], console["sessions"]
    goods = console["tmp"] / "goods-received.csv"
    goods.write_text(GOODS)
    shot = Screenshots()
    with chromium_page(accept_downloads=True) as page:
        page.goto(url + "/stock")
        page.fill("#username", "bo")
        page.fill("#password", PASSWORD)
        page.click("#login")
        page.wait_for_selector("#files")

        # The stock download: a file, every account's rows.
        with page.expect_download() as download:
            page.click("#export-stock-csv")
        rows = list(csv.DictReader(io.StringIO(open(download.value.path(), encoding="utf-8").read())))
        assert download.value.suggested_filename.startswith("stock-")
        assert {(row["sku"], row["quantity"]) for row in rows} == {("IPHONE13-128-BLK", "5"), ("PIXEL7-128-WHT", "1")}

        # Upload: the preview names every bad line and books nothing.
        page.click("#import-link")
        page.set_input_files("#import-file", str(goods))
        shot(page, "stock-import-form")
        page.click("#upload")
        page.wait_for_selector("#import-summary")
        assert "2 lines to book (6 units), 4 bad lines" in page.inner_text("#import-summary")
        bad = {int(row.get_attribute("data-line")): row.inner_text()
               for row in page.locator("#import-bad tbody tr").all()}
        assert sorted(bad) == [4, 5, 6, 7]
        assert "unknown SKU 'NOKIA-3310'" in bad[4] and "'shopify' is disabled" in bad[5]
        assert "whole number" in bad[6] and "duplicate reference 'GR-118'" in bad[7]
        assert page.locator("#import-good tbody tr").count() == 2
        shot(page, "stock-import-preview")
        assert _topups(sessions) == []

        # Confirm: booked once, the operator as the actor, in the ledger of the SKU.
        page.click("#confirm-import")
        page.wait_for_selector("#flash")
        assert "booked 2 top-ups (6 units)" in page.inner_text("#flash")
        shot(page, "stock-import-booked")
        assert _topups(sessions) == [("backmarket", 4, "console:GR-118", "bo"), ("counter", 2, "console:GR-119", "bo")]
        page.goto(f"{url}/variations/{console['iphone']}")
        assert page.inner_text("#total-stock") == "9"
        assert "console:GR-118" in page.locator("#ledger tbody tr").first.inner_text()
        shot(page, "stock-import-variation")

        # The same file again: every line refused, nothing to confirm, nothing booked twice.
        page.goto(url + "/stock/import")
        page.set_input_files("#import-file", str(goods))
        page.click("#upload")
        page.wait_for_selector("#import-summary")
        assert page.inner_text("#import-summary").startswith("0 lines to book (0 units), 6 bad lines")
        assert "already booked" in page.inner_text("#import-bad")
        assert page.locator("#confirm-import").count() == 0
        assert len(_topups(sessions)) == 2
    shot.report("stock import screenshots")
