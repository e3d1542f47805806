"""A SKU's timeline end to end: a scenario the test itself plays on real ``dramatiq`` worker processes, Redis,
PostgreSQL and the Back Market sandbox (a sync, two orders, top-ups pushed, a hand edit on the sandbox then
a sync), read back from the read API in order with the right "as of" states, and the console's SKU page
with its chart in a real browser (screenshots in ``tests/artifacts/console/``)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import text

from db.engine import session_factory
from db.snapshot import ensure_marketplace
from runtime.broker import build_broker
from runtime.local_servers import free_port, wait_until
from runtime.settings import Settings
from sandbox.backmarket import BackMarketSandbox
from sandbox.server import serve_in_thread
from tests.console_support import PASSWORD, add_user
from tests.fleet import ROOT, WorkerFleet, fleet_env
from tests.test_console_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, _healthy
from tests.test_read_api import READ_API_TOKENS, get
from workers.intake.app import build_intake_app

pytestmark = pytest.mark.e2e
TOKEN = "e2e-timeline-token"


@pytest.fixture
def world(tmp_path, redis_url, database_url):
    """The sandbox, one worker process, the intake (read API) in this process; ``console()`` starts the console."""
    sandbox = BackMarketSandbox(listings=10, seed=41, token=TOKEN, quota_requests=0)
    server = serve_in_thread(sandbox.build_app())
    sessions = session_factory(database_url)
    with sessions() as session:
        ensure_marketplace(session, "shop", "Shop counter")  # an account with no API: a top-up stays as booked
        session.commit()
    # STOCK_EVENT_SKEW_S=0: the scenario's steps are a second or two apart, and with the 5 s default the
    # second sync would meet the orders within the skew and wait for a re-check (test_race_e2e's rule).
    env = fleet_env(redis_url=redis_url, database_url=database_url, backmarket_url=server.url, token=TOKEN,
                    stock_event_skew_s=0)
    fleet = WorkerFleet(env, processes=1, threads=8, log_path=tmp_path / "workers.log").start()
    broker = build_broker(Settings(redis_url=redis_url))
    intake = serve_in_thread(build_intake_app(Settings(intake_read_pool_size=2, read_api_tokens=READ_API_TOKENS),
                                              broker=StubBroker(), database_url=database_url))
    consoles = []

    def console() -> str:
        port = free_port()
        log = open(tmp_path / "console.log", "wb")
        process = subprocess.Popen([sys.executable, "-m", "workers.cli", "console", "--port", str(port)], cwd=ROOT,
                                   env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
        consoles.append((process, log))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _healthy(url), 60, interval=0.2, what="the console to answer /healthz")
        return url

    try:
        yield {"sandbox": sandbox, "sessions": sessions, "broker": broker, "intake": intake, "console": console}
    finally:
        for process, log in consoles:
            process.terminate()
            process.wait(20)
            log.close()
        fleet.stop()
        broker.close()
        intake.stop()
        server.stop()


def send(world, module, actor_name: str, **kwargs) -> None:
    world["broker"].enqueue(getattr(module, actor_name).message_with_options(kwargs=kwargs))


def scalar(world, sql: str, **params):
    with world["sessions"]() as session:
        return session.execute(text(sql), params).scalar()


def now() -> datetime:
    return datetime.now(timezone.utc)


def play(world) -> dict:
    """Sync, two orders, a top-up pushed to Back Market and one on the shop, a hand edit then a sync.

    Returns the SKU, its first quantity, and a moment after each step (and one before them all).
    """
    from actors import events, stock_sync  # message factories only: the fleet does the work

    sandbox = world["sandbox"]
    listing = next(sandbox.listing(i) for i in range(10) if sandbox.listing(i)["quantity"] >= 3)
    sku, uuid, first = listing["sku"], listing["id"], listing["quantity"]
    moments = {"before": now()}

    def synced(runs: int) -> bool:
        return scalar(world, "SELECT count(*) FROM sync_runs WHERE kind = 'stock' AND status = 'succeeded'") == runs

    send(world, stock_sync, "start_stock_sync", marketplace="backmarket", force=True, trigger="manual")
    wait_until(lambda: synced(1), 60, interval=0.1, what="the first sync to succeed")
    moments["synced"] = now()

    for n in (1, 2):  # the marketplace sells one, then tells us
        sandbox.set_quantity(uuid, first - n)
        send(world, events, "order_created", marketplace="backmarket", order_id=f"O-{n}", order_line_id=f"L-{n}",
             sku=sku, quantity=1, event_time=now().isoformat(), source="webhook")
        wait_until(lambda: scalar(world, "SELECT count(*) FROM stock_ledger WHERE order_id = :o", o=f"O-{n}") == 1,
                   30, interval=0.1, what=f"order O-{n} booked")
    # The console's as-of form is to the second: the next whole second after the orders separates them from
    # the top-ups that follow.
    moments["ordered"] = (now() + timedelta(seconds=1)).replace(microsecond=0)
    wait_until(lambda: now() > moments["ordered"], 5, interval=0.05, what="the next whole second")

    send(world, events, "stock_topup", marketplace="backmarket", sku=sku, quantity=3, reference="PO-77")
    wait_until(lambda: sandbox.quantity(uuid) == first + 1 and scalar(
        world, "SELECT push_state FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
               "JOIN marketplaces m ON m.id = s.marketplace_id WHERE v.sku = :sku AND m.code = 'backmarket'",
        sku=sku) == "pushed", 60, interval=0.1, what="the top-up pushed to the sandbox")
    send(world, events, "stock_topup", marketplace="shop", sku=sku, quantity=4, reference="PO-78")
    wait_until(lambda: scalar(world, "SELECT count(*) FROM stock_ledger WHERE reference = 'PO-78'") == 1, 30,
               interval=0.1, what="the shop's top-up booked")
    moments["topped"] = now()

    sandbox.set_quantity(uuid, first + 3)  # a hand edit on Back Market: two more, no order
    send(world, stock_sync, "start_stock_sync", marketplace="backmarket", force=True, trigger="manual")
    wait_until(lambda: synced(2), 60, interval=0.1, what="the second sync to succeed")
    moments["edited"] = now()
    return {"sku": sku, "first": first, "moments": moments}


def timeline(world, sku: str, **query) -> dict:
    path = f"/skus/{quote(sku, safe='')}/timeline" + "".join(
        f"{'?' if n == 0 else '&'}{k}={quote(v)}" for n, (k, v) in enumerate(query.items()))
    status, body = get(world["intake"], path)
    assert status == 200, body
    return body


def test_a_played_scenario_shows_up_in_the_json_in_order_with_the_right_states(world):
    played = play(world)
    sku, q, moments = played["sku"], played["first"], played["moments"]
    body = timeline(world, sku)
    seen = []
    for e in body["entries"]:
        what = {"ledger": lambda: (e["change_type"], e["before"], e["after"]), "read": lambda: (e["source"], e["quantity"]),
                "order": lambda: (e["order_id"], e["lines"]), "push": lambda: (e["quantity"],)}[e["kind"]]()
        seen.append((e["kind"], e["account"], *what))
    assert seen == [
        ("read", "backmarket", "page", q), ("ledger", "backmarket", "sync", 0, q),
        ("order", "backmarket", "O-1", ["L-1"]), ("ledger", "backmarket", "order_created", q, q - 1),
        ("order", "backmarket", "O-2", ["L-2"]), ("ledger", "backmarket", "order_created", q - 1, q - 2),
        ("ledger", "backmarket", "topup", q - 2, q + 1),
        ("read", "backmarket", "single", q - 2),  # the push's own read, then the push
        ("push", "backmarket", q + 1),
        ("ledger", "shop", "topup", 0, 4),
        ("read", "backmarket", "page", q + 3), ("ledger", "backmarket", "sync", q + 1, q + 3),  # the hand edit
    ], seen
    assert [e["at"] for e in body["entries"]] == sorted(e["at"] for e in body["entries"])
    expected = {"before": {"backmarket": 0, "shop": 0}, "synced": {"backmarket": q, "shop": 0},
                "ordered": {"backmarket": q - 2, "shop": 0}, "topped": {"backmarket": q + 1, "shop": 4},
                "edited": {"backmarket": q + 3, "shop": 4}}
    for step, states in expected.items():
        at = timeline(world, sku, as_of=moments[step].isoformat())
        assert {code: s["listed"] for code, s in at["accounts"].items()} == states, step
        assert all(e["at"] <= at["as_of"] for e in at["entries"]), step
    reads = timeline(world, sku, as_of=moments["ordered"].isoformat())["accounts"]["backmarket"]
    assert (reads["listed"], reads["read"]) == (q - 2, q)  # the marketplace's last read then had said q


def test_the_sku_page_with_its_chart_in_a_browser(world):
    if not shutil.which(CHROMIUM):
        pytest.skip("chromium is not installed (make test installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    played = play(world)
    sku, q, moments = played["sku"], played["first"], played["moments"]
    add_user(world["sessions"], "anna", "viewer")
    url = world["console"]()
    variation_id = scalar(world, "SELECT id FROM variations WHERE sku = :sku", sku=sku)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shots = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        # No JavaScript at all: the chart and the as-of form work without it.
        page = browser.new_page(viewport={"width": 1400, "height": 900}, java_script_enabled=False)
        page.set_default_timeout(30_000)
        refused = []
        page.on("console", lambda message: refused.append(message.text)
                if "Content Security Policy" in message.text else None)
        try:
            page.goto(url + "/login")
            page.fill("#username", "anna")
            page.fill("#password", PASSWORD)
            page.click("#login")
            page.wait_for_url(url + "/", wait_until="domcontentloaded")
            page.goto(f"{url}/variations/{variation_id}")
            chart = page.locator("svg#chart")
            assert chart.get_attribute("role") == "img"
            assert page.locator("#chart-title").text_content().startswith(f"Listed stock of {sku} per account")
            assert page.locator("#stock-chart path.series").count() == 2
            box = chart.bounding_box()
            assert box["width"] > 600 and box["height"] > 200
            # The two orders, within a second, may share one mark (one per few pixel columns): it counts them.
            assert page.locator("#stock-chart .mark-order").count() in (1, 2)
            assert page.locator("#stock-chart .mark-topup").count() == 2  # one per account
            assert page.locator("#stock-chart .mark-push").count() == 1
            told = page.inner_text("#chart-summary")
            assert all(words in told for words in ("2 orders", "2 top-ups", "1 push"))
            assert page.locator("#stock-chart circle.read").count() == 3
            legend = page.inner_text("#chart-legend")
            assert "backmarket listed" in legend and "shop listed" in legend and "order" in legend
            assert f"backmarket 0 to {q + 3}" in page.inner_text("#chart-summary")
            assert page.locator("#as-of-states tr[data-account=backmarket] .listed").inner_text() == str(q + 3)
            assert page.locator("#timeline-entries tr.entry").first.get_attribute("data-kind") == "ledger"
            page.locator("#timeline").scroll_into_view_if_needed()
            path = ARTIFACTS / "sku-timeline.png"
            page.screenshot(path=str(path), full_page=True)
            shots.append(path)

            # As of the moment after the orders: the form is a plain GET.
            page.fill("#as-of", moments["ordered"].strftime("%Y-%m-%dT%H:%M:%S"))
            page.click("#show-as-of")
            page.wait_for_url("**as_of=*")
            assert page.locator("#as-of-states tr[data-account=backmarket] .listed").inner_text() == str(q - 2)
            assert page.locator("#as-of-states tr[data-account=shop] .listed").inner_text() == "0"
            assert page.locator("#stock-chart .mark-topup").count() == 0
            path = ARTIFACTS / "sku-timeline-as-of.png"
            page.screenshot(path=str(path), full_page=True)
            shots.append(path)
        except Exception:
            print("failed on", page.url, page.content()[:3000])
            raise
        finally:
            browser.close()
    assert refused == []
    print("\ntimeline screenshots:\n" + "\n".join(f"  {path}" for path in shots))
    assert all(path.stat().st_size > 1000 for path in shots)
