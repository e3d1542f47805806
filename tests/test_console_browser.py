"""The console in a real browser (Playwright driving Debian's chromium) on a real fleet: dramatiq worker
processes, Redis, PostgreSQL, the Back Market sandbox, and ``stocksync console`` as a process.

Log in, start a sync and watch its progress reach the end, search a SKU and read its ledger, top up
and see the push state move to pushed, retry a dead letter and see it leave the list, log out.
Screenshots of the main pages go to ``tests/artifacts/console/`` (printed at the end).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from contextlib import contextmanager

import pytest
from sqlalchemy import text

from db.engine import session_factory
from runtime.local_servers import free_port, wait_until
from sandbox.backmarket import BackMarketSandbox
from sandbox.server import serve_in_thread
from tests.console_support import PASSWORD, add_dead_letter, add_user
from tests.fleet import ROOT, WorkerFleet, fleet_env

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "tests" / "artifacts" / "console"
TOKEN = "browser-token"
LISTINGS = 1500


class Screenshots:
    """Full-page screenshots into ``ARTIFACTS``, printed (and checked not empty) at the end."""

    def __init__(self) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.paths = []

    def __call__(self, page, name: str) -> None:
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.paths.append(path)

    def report(self, title: str) -> None:
        print(f"\n{title}:\n" + "\n".join(f"  {path}" for path in self.paths))
        assert all(path.stat().st_size > 1000 for path in self.paths)


@contextmanager
def chromium_page(**options):
    """A page of Debian's chromium (headless, 1400x900); on a failure, the page's URL and HTML are printed."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 900}, **options)
        page.set_default_timeout(30_000)
        try:
            yield page
        except Exception:
            print("failed on", page.url, page.content()[:3000])
            raise
        finally:
            browser.close()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def fleet(tmp_path, redis_url, database_url):
    """Sandbox, two worker processes and the console process, all on loopback."""
    if not shutil.which(CHROMIUM):
        pytest.skip("chromium is not installed (make test installs it: apt-get install chromium)")
    sandbox = BackMarketSandbox(listings=LISTINGS, seed=5, token=TOKEN, quota_requests=0)
    server = serve_in_thread(sandbox.build_app())
    # Paced so that a sync lasts a few seconds and its progress can be watched.
    env = fleet_env(redis_url=redis_url, database_url=database_url, backmarket_url=server.url, token=TOKEN,
                    quota_requests=8, quota_window_s=1.0)
    workers = WorkerFleet(env, processes=1, threads=8, log_path=tmp_path / "workers.log").start()
    port = free_port()
    log = open(tmp_path / "console.log", "wb")
    console = subprocess.Popen([sys.executable, "-m", "workers.cli", "console", "--port", str(port)], cwd=ROOT,
                               env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    sessions = session_factory(database_url)
    add_user(sessions, "anna", "admin")
    try:
        wait_until(lambda: _healthy(url), 60, interval=0.2, what="the console to answer /healthz")
        yield {"url": url, "sandbox": sandbox, "sessions": sessions, "redis_url": redis_url, "tmp": tmp_path}
    finally:
        console.terminate()
        console.wait(20)
        workers.stop()
        server.stop()
        log.close()


def test_an_operator_does_the_day_in_a_browser(fleet):
    import redis

    url, sessions = fleet["url"], fleet["sessions"]
    shot = Screenshots()
    with chromium_page() as page:
        # Log in (every page sends an anonymous visitor to the login page first).
        page.goto(url + "/syncs")
        assert "/login" in page.url
        shot(page, "login")
        page.fill("#username", "anna")
        page.fill("#password", PASSWORD)
        page.click("#login")
        page.wait_for_url(url + "/syncs", wait_until="domcontentloaded")
        assert "anna (admin)" in page.inner_text("nav")

        # Start a sync and watch its live progress reach the end.
        page.click("#start-sync")
        page.wait_for_url("**/syncs/*")
        shot(page, "sync-running")
        table = page.locator("#run-progress")
        page.wait_for_selector("#run-progress[data-ended=true]", timeout=120_000)
        pages = -(-LISTINGS // 50)
        assert f"pages {pages}/{pages}" in table.inner_text()
        assert "succeeded" in table.locator("[data-field=status]").inner_text()
        shot(page, "sync-done")
        page.goto(url + "/syncs")
        shot(page, "syncs")

        # Search a SKU (a prefix of one), open it, see its ledger (the sync booked its quantity).
        with sessions() as session:
            sku, listed = session.execute(text(
                "SELECT v.sku, s.listed FROM variations v JOIN marketplace_stock s ON s.variation_id = v.id "
                "ORDER BY v.sku LIMIT 1")).one()
        page.goto(url + "/stock")
        page.fill("#sku-search", sku)
        page.click("#search")
        page.wait_for_selector("#sku")
        assert page.inner_text("#sku") == sku
        ledger = page.locator("#ledger tbody tr")
        assert "sync" in ledger.first.inner_text()
        shot(page, "variation")

        # Top up: a stock event with anna as its actor, then pushed to the sandbox.
        page.fill("#topup-quantity", "3")
        page.click("#topup")
        page.wait_for_selector("#flash")
        assert "top-up of 3" in page.inner_text("#flash")

        def pushed() -> bool:
            page.reload()
            state = page.locator("#stock-rows tr[data-marketplace=backmarket] .push-state").inner_text()
            return state.startswith("pushed")

        wait_until(pushed, 60, interval=0.5, what="the push state to reach pushed")
        first_row = page.locator("#ledger tbody tr").first.inner_text()
        assert "topup" in first_row and "anna" in first_row and f"{listed} → {listed + 3}" in first_row
        assert page.inner_text("#total-stock") == str(listed + 3)
        shot(page, "variation-pushed")

        # A dead letter (a top-up that failed once) is retried, booked, and leaves the list.
        client = redis.Redis.from_url(fleet["redis_url"])
        dead = add_dead_letter(client, "stock-events", "stock_topup")
        client.hset(f"dramatiq:stock-events.XQ.msgs", dead.options["redis_message_id"], dead.copy(
            kwargs={"marketplace": "backmarket", "sku": sku, "quantity": 2, "reference": "DLQ-1",
                    "actor": "importer", "event_time": None}).encode())
        page.goto(url + "/deadletters")
        row = page.locator(f"#dead-letters tr[data-message='{dead.message_id}']")
        assert row.count() == 1
        shot(page, "dead-letters")
        row.locator("button.retry").click()
        page.wait_for_selector("#flash")
        assert "put back 1" in page.inner_text("#flash")
        assert page.locator(f"#dead-letters tr[data-message='{dead.message_id}']").count() == 0
        assert "retry" in page.inner_text("#dlq-history") and "anna" in page.inner_text("#dlq-history")
        wait_until(lambda: _ledger_has(sessions, "DLQ-1"), 30, interval=0.2, what="the retried top-up booked")

        for name in ("overview", "accounts", "alerts", "scheduler", "audit"):
            page.goto(url + ("/" if name == "overview" else f"/{name}"))
            shot(page, name)
            if name == "accounts":  # every account with what its platform can do, Sync now where it can sync
                backmarket = page.inner_text("#account-backmarket")
                assert "sync (numbered pages), read one, push, poll orders" in backmarket
                assert page.locator("#account-backmarket button", has_text="Sync now").count() == 1
        assert "stock.topup" in page.inner_text("#audit") and "dlq.retry" in page.inner_text("#audit")

        # Log out: the session is gone, the pages are closed again.
        page.click("#logout")
        page.wait_for_url("**/login")
        page.goto(url + "/")
        assert "/login" in page.url
    shot.report("console screenshots")


def _ledger_has(sessions, reference: str) -> bool:
    with sessions() as session:
        return session.execute(text("SELECT count(*) FROM stock_ledger WHERE reference = :r"),
                               {"r": reference}).scalar() == 1
