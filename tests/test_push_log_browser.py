"""The Push log page and a SKU's last pushes in a real browser (Playwright driving Debian's chromium) against
``stocksync console`` as a process on real PostgreSQL and Redis.  Entries are recorded with the push path's
own writer (``pipelines.push_log.note``); ``test_push_log.py`` covers how the drain records them.

Screenshots go to ``tests/artifacts/console/`` (``push-log*.png``, printed at the end).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from db.engine import session_factory
from runtime.local_servers import free_port, wait_until
from tests.console_support import PASSWORD, add_user
from tests.fleet import ROOT
from tests.test_console_browser import CHROMIUM, Screenshots, _healthy, chromium_page
from tests.test_push_log_http import HOSTILE_SKU, seed_pushes

pytestmark = pytest.mark.e2e


@pytest.fixture
def console(tmp_path, redis_url, database_url):
    if not shutil.which(CHROMIUM):
        pytest.skip("chromium is not installed (make test installs it: apt-get install chromium)")
    from tests.console_support import add_variation

    sessions = session_factory(database_url)
    variation_id = add_variation(sessions, "IPHONE13-128-BLK", title="iPhone 13 128 GB black")
    seed_pushes(sessions)
    add_user(sessions, "vera", "viewer")
    port = free_port()
    log = open(tmp_path / "console.log", "wb")
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "METRICS_PORT": "0"}
    process = subprocess.Popen([sys.executable, "-m", "workers.cli", "console", "--port", str(port)], cwd=ROOT,
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(url), 60, interval=0.2, what="the console to answer /healthz")
        yield {"url": url, "variation_id": variation_id}
    finally:
        process.terminate()
        process.wait(20)
        log.close()


def test_a_viewer_reads_the_push_log_and_a_skus_last_pushes_in_a_browser(console):
    url = console["url"]
    shot = Screenshots()
    with chromium_page() as page:
        page.goto(url + "/pushes")
        page.fill("#username", "vera")
        page.fill("#password", PASSWORD)
        page.click("#login")
        page.wait_for_url(url + "/pushes", wait_until="domcontentloaded")
        assert page.locator("nav a.active").inner_text() == "Push log"
        counts = {item.get_attribute("data-state"): item.locator("b").inner_text()
                  for item in page.locator("#push-counts li").all()}
        assert counts == {"waiting": "1", "sent": "0", "confirmed": "1", "superseded": "0", "refused": "0",
                          "failed": "1", "retried": "0"}
        assert page.locator("#pushes tbody tr").count() == 3
        # The hostile SKU is shown as text, and no script ran (a dialog would have stopped the page).
        failed_row = page.locator("#pushes tr[data-state=failed]")
        assert HOSTILE_SKU in failed_row.inner_text() and "<b>HTTP 500</b>" in failed_row.inner_text()
        shot(page, "push-log")

        # Filter with the form: failed pushes of Back Market only.
        page.select_option("#push-filters select[name=state]", "failed")
        page.select_option("#push-filters select[name=account]", "backmarket")
        page.click("#push-filter")
        page.wait_for_url("**/pushes?*state=failed*")
        assert page.locator("#pushes tbody tr").count() == 1
        assert page.locator("#pushes tbody tr").get_attribute("data-state") == "failed"
        assert page.locator("#push-filters select[name=state]").input_value() == "failed"
        shot(page, "push-log-failed")

        # A bad time in the filter: a clear 400 naming it.
        answer = page.goto(url + "/pushes?since=yesterday")
        assert answer.status == 400 and "since must be an ISO 8601 time" in page.inner_text("body")

        # The SKU page shows its last pushes, and links to all of them in the log.
        page.goto(url + f"/variations/{console['variation_id']}")
        last = page.locator("#last-pushes tbody tr")
        assert last.count() == 1 and "confirmed" in last.inner_text() and "7" in last.inner_text()
        shot(page, "push-log-variation")
        page.click("#all-pushes")
        page.wait_for_url("**/pushes?sku=*")
        assert page.locator("#pushes tbody tr").count() == 1
    shot.report("push log screenshots")
