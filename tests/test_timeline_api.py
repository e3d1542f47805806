"""A SKU's timeline from the read API (``GET /skus/{sku}/timeline``) and on the console's SKU page, over HTTP,
on a real PostgreSQL: a history the test books, "as of" states, the chart, and bad input as clear 4xx."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import text

from db.engine import session_factory
from db.snapshot import PageItem, apply_page, apply_recheck, ensure_marketplace
from db.syncs import SyncPolicy, begin_run
from runtime.settings import Settings
from sandbox.server import serve_in_thread
from tests.console_support import client_of, run, world  # noqa: F401
from tests.test_read_api import READ_API_TOKENS, get
from workers.intake.app import build_intake_app

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)
SKU = "SKU <b>&\"/ü"  # a SKU a page must escape, with a '/' a path must carry


def book(session, stock: dict[str, int], *, booked: datetime, change_type: str, change: int, key: str,
         order_id: str | None = None, line: str | None = None) -> None:
    """One ledger row of SKU's row on ``stock``'s account, booked at ``booked`` (the row follows it)."""
    session.execute(text(
        "WITH s AS (UPDATE marketplace_stock SET listed = listed + :c WHERE id = :sid "
        "RETURNING id, variation_id, marketplace_id, listed) "
        "INSERT INTO stock_ledger (stock_id, variation_id, marketplace_id, quantity_before, quantity_after, change, "
        "change_type, order_id, order_line_id, idempotency_key, event_time, created_at) "
        "SELECT id, variation_id, marketplace_id, listed - :c, listed, :c, :type, :o, :l, :k, :t, :t FROM s"),
        {"c": change, "sid": stock["id"], "type": change_type, "o": order_id, "l": line, "k": key, "t": booked})


@pytest.fixture
def history(database_url):
    """SKU on Back Market (a page, two orders, a top-up, a read of a hand edit) and on Refurbed (a top-up)."""
    sessions = session_factory(database_url)
    with sessions() as session:
        backmarket = ensure_marketplace(session, "backmarket", "Back Market")
        refurbed = ensure_marketplace(session, "refurbed", "Refurbed")
        session.commit()
        run_ = begin_run(session, kind="stock", target="backmarket", trigger="manual", policy=SyncPolicy(0, 0, 900))
        apply_page(session, marketplace_id=backmarket, sync_id=run_.id, page=1, fetched_at=T0, total_pages=1,
                   items=[PageItem("uuid-1", 1, SKU, "Phone", 5, 2, None, None)])
        session.execute(text("UPDATE stock_ledger SET created_at = :t"), {"t": T0})
        session.execute(text("INSERT INTO marketplace_stock (variation_id, marketplace_id, listed) "
                             "SELECT id, :mp, 0 FROM variations"), {"mp": refurbed})
        rows = {code: {"id": sid} for code, sid in session.execute(text(
            "SELECT m.code, s.id FROM marketplace_stock s JOIN marketplaces m ON m.id = s.marketplace_id")).all()}
        book(session, rows["backmarket"], booked=T0 + timedelta(hours=1), change_type="order_created", change=-1,
             key="o1", order_id="O-1", line="L-1")
        book(session, rows["backmarket"], booked=T0 + timedelta(hours=2), change_type="order_created", change=-1,
             key="o2", order_id="O-2", line="L-2")
        book(session, rows["refurbed"], booked=T0 + timedelta(hours=3), change_type="topup", change=4, key="t1")
        session.commit()
        # The marketplace counts 6 with no order: a hand edit, read by a single read.
        apply_recheck(session, marketplace_id=backmarket, fetched_at=T0 + timedelta(hours=4), quantities={SKU: 6},
                      now=T0 + timedelta(hours=4))
        session.execute(text("UPDATE stock_ledger SET created_at = event_time WHERE change_type = 'recheck'"))
        session.commit()
        variation_id = session.execute(text("SELECT id FROM variations")).scalar_one()
    app = build_intake_app(Settings(intake_read_pool_size=2, read_api_tokens=READ_API_TOKENS), broker=StubBroker(),
                           database_url=database_url)
    server = serve_in_thread(app)
    yield server, variation_id
    server.stop()


def timeline_path(sku: str = SKU, **query) -> str:
    return f"/skus/{quote(sku, safe='')}/timeline" + ("?" + "&".join(f"{k}={quote(v)}" for k, v in query.items())
                                                      if query else "")


def test_the_json_timeline_merges_every_source_in_time_order(history):
    server, _ = history
    status, body = get(server, timeline_path(as_of=(T0 + timedelta(days=1)).isoformat()))
    assert status == 200, body
    assert body["sku"] == SKU and body["truncated"] is False
    seen = [(e["kind"], e["account"], e.get("change_type") or e.get("source") or e.get("order_id"),
             e.get("after", e.get("quantity", e.get("booked")))) for e in body["entries"]]
    assert seen == [("read", "backmarket", "page", 5), ("ledger", "backmarket", "sync", 5),
                    ("order", "backmarket", "O-1", -1), ("ledger", "backmarket", "order_created", 4),
                    ("order", "backmarket", "O-2", -1), ("ledger", "backmarket", "order_created", 3),
                    ("ledger", "refurbed", "topup", 4),
                    ("read", "backmarket", "single", 6), ("ledger", "backmarket", "recheck", 6)]
    assert [e["at"] for e in body["entries"]] == sorted(e["at"] for e in body["entries"])
    assert body["accounts"]["backmarket"] == {"listed": 6, "booked_at": (T0 + timedelta(hours=4)).isoformat(),
                                              "read": 6, "read_at": (T0 + timedelta(hours=4)).isoformat()}


@pytest.mark.parametrize("hours, backmarket, refurbed", [(-1, 0, 0), (0, 5, 0), (1.5, 4, 0), (3, 3, 4), (5, 6, 4)])
def test_as_of_gives_every_accounts_state_then(history, hours, backmarket, refurbed):
    server, _ = history
    moment = (T0 + timedelta(hours=hours)).isoformat()
    status, body = get(server, timeline_path(as_of=moment))
    assert status == 200, body
    assert {code: state["listed"] for code, state in body["accounts"].items()} == {"backmarket": backmarket,
                                                                                   "refurbed": refurbed}
    assert all(e["at"] <= moment for e in body["entries"])


def test_since_and_limit_cut_the_window_and_say_so(history):
    server, _ = history
    status, body = get(server, timeline_path(as_of=(T0 + timedelta(days=1)).isoformat(), limit="2"))
    assert status == 200 and body["truncated"] is True
    assert [(e["kind"], e.get("source") or e.get("change_type")) for e in body["entries"]] == [
        ("read", "single"), ("ledger", "recheck")]
    status, body = get(server, timeline_path(since=(T0 + timedelta(hours=2, minutes=30)).isoformat(),
                                             as_of=(T0 + timedelta(days=1)).isoformat()))
    assert [e["kind"] for e in body["entries"]] == ["ledger", "read", "ledger"] and body["truncated"] is False


@pytest.mark.parametrize("path, status, says", [
    (timeline_path(as_of="yesterday"), 400, "as_of must be an ISO 8601 time"),
    (timeline_path(as_of="2026-02-30T10:00Z"), 400, "as_of is not a real time"),
    (timeline_path(as_of="2026-12-01T10:00Z", since="2026-12-02T10:00Z"), 400, "since must be before as_of"),
    (timeline_path(limit="0"), 400, "limit must be a whole number from 1 to 5000"),
    (timeline_path(limit="9" * 30), 400, "limit must be a whole number"),
    (timeline_path(colour="red"), 400, "unknown query parameter 'colour'"),
    (timeline_path("NOPE"), 404, "no variation with SKU 'NOPE'"),
    (timeline_path(" "), 400, "sku"),
])
def test_bad_timeline_requests_are_clear_4xx(history, path, status, says):
    server, _ = history
    answered, body = get(server, path)
    assert (answered, says in body["error"]) == (status, True), body


def test_the_timeline_needs_a_read_token(history):
    server, _ = history
    assert get(server, timeline_path(), token=None)[0] == 401
    assert get(server, timeline_path(), token="wrong-token")[0] == 401


def test_the_sku_page_shows_states_chart_and_entries_as_of_a_moment(history, world):  # noqa: F811
    _, variation_id = history

    async def scenario(server):
        client = await client_of(server, "viewer")
        pages = {}
        for name, query in (("now", ""), ("then", "?as_of=2026-12-01T09:30:00"), ("bad", "?as_of=tomorrow"),
                            ("early", "?as_of=1999-01-01T00:00")):
            response = await client.get(f"/variations/{variation_id}{query}")
            pages[name] = (response.status, await response.text(), response.headers.get("Content-Security-Policy"))
        await client.close()
        return pages

    pages = run(world, scenario)
    status, page, policy = pages["now"]
    assert status == 200 and "script-src 'self'" in policy
    assert "<b>&" not in page and "SKU &lt;b&gt;&amp;" in page  # the SKU escaped everywhere, the SVG's title too
    svg = re.search(r"<svg id=\"chart\".*?</svg>", page, re.S).group(0)
    assert 'role="img"' in svg and 'aria-labelledby="chart-title chart-desc"' in svg
    assert re.search(r"<title id=\"chart-title\">Listed stock of SKU &lt;b&gt;", svg)
    assert 'class="series" data-account="backmarket"' in svg and 'class="series" data-account="refurbed"' in svg
    # The two orders, an hour apart in a window of days, share one mark that says so.
    assert svg.count('class="mark mark-order"') == 1 and "backmarket: 2 orders (-2)" in svg
    assert svg.count('class="mark mark-topup"') == 1 and "Marked: 2 orders, 1 top-up." in svg
    assert svg.count('class="read"') == 2 and "<script" not in svg and "style=" not in svg
    assert "backmarket 5 to 6" in page and "refurbed 0 to 4" in page  # the chart told in words
    assert re.search(r'data-account="backmarket"><td>Back Market <small>\(backmarket\)</small></td>'
                     r'<td class="num listed">6</td>', page)
    status, page, _ = pages["then"]
    assert status == 200 and 'value="2026-12-01T09:30:00"' in page
    assert re.search(r'data-account="backmarket"><td>[^<]*<small>\(backmarket\)</small></td><td class="num listed">4<',
                     page)
    assert re.search(r'data-account="refurbed"><td>[^<]*<small>\(refurbed\)</small></td><td class="num listed">0<',
                     page)
    assert "order O-1" in page and "order O-2" not in page  # nothing after the moment
    assert pages["bad"][0] == 400 and "as_of must be an ISO 8601 time" in pages["bad"][1]
    assert pages["early"][0] == 400 and "on or after 2000-01-01" in pages["early"][1]


def test_a_fixed_windows_chart_is_a_lookup_until_a_booking_or_a_read_changes_it(history, database_url):
    from pipelines import timeline

    _, variation_id = history
    as_of = T0 + timedelta(days=1)
    sessions = session_factory(database_url)
    with sessions() as session:
        first = timeline.timeline(session, variation_id, SKU, as_of=as_of)
        assert timeline.timeline(session, variation_id, SKU, as_of=as_of).chart is first.chart
        # The clock's own window ends at the next whole minute: a repeat within it is a lookup too.
        now = timeline.timeline(session, variation_id, SKU)
        again = timeline.timeline(session, variation_id, SKU)
        assert again.chart is now.chart or again.as_of.minute != now.as_of.minute
        stock = {"id": session.execute(text(
            "SELECT s.id FROM marketplace_stock s JOIN marketplaces m ON m.id = s.marketplace_id "
            "WHERE m.code = 'refurbed'")).scalar_one()}
        book(session, stock, booked=T0 + timedelta(hours=5), change_type="topup", change=2, key="t2")
        session.commit()
        booked = timeline.timeline(session, variation_id, SKU, as_of=as_of)
        assert booked.chart is not first.chart and booked.chart != first.chart
        assert timeline.timeline(session, variation_id, SKU).chart != now.chart  # the clock's window too
        assert "refurbed 0 to 6" in booked.chart.summary
        # A read written late with an older time still changes the window's key.
        session.execute(text(
            "INSERT INTO listing_reads (stock_id, variation_id, marketplace_id, quantity, read_at, source) "
            "SELECT id, variation_id, marketplace_id, 9, :t, 'single' FROM marketplace_stock WHERE id = :s"),
            {"t": T0 + timedelta(hours=6), "s": stock["id"]})
        session.commit()
        read = timeline.timeline(session, variation_id, SKU, as_of=as_of)
        assert read.chart is not booked.chart
        assert [q for *_, q in next(s for s in read.chart.series if s.account == "refurbed").reads] == [9]
