"""The push log over HTTP: the console's page and the SKU page's last pushes (roles, filters, escaping), and the
read API's ``GET /pushes`` (bearer token, filters, 400 on a bad one).  Real PostgreSQL; entries recorded with
the push path's own writer."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import text

from core.push_log import PushState
from db.engine import session_factory
from pipelines import push_log
from runtime.settings import Settings
from sandbox.server import serve_in_thread
from tests.console_support import add_variation, client_of, pages_as, run, world  # noqa: F401
from tests.test_read_api import READ_API_TOKENS, get
from workers.intake.app import build_intake_app

HOSTILE_SKU = "<script>alert(1)</script>"


def seed_pushes(sessions) -> dict[str, int]:
    """A confirmed, a failed (with an error that looks like markup) and a waiting push; stock ids by SKU."""
    add_variation(sessions, HOSTILE_SKU)
    add_variation(sessions, "PIXEL-7", listed=2, marketplace="refurbed")
    with sessions() as session:
        ids = dict(session.execute(text(
            "SELECT v.sku, s.id FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id")).all())
        yesterday = datetime.now(timezone.utc) - timedelta(days=1)
        push_log.note(session, PushState.SENT, stock_ids=[ids["IPHONE13-128-BLK"]], quantity_read=5, quantity_sent=7,
                      now=yesterday)
        push_log.note(session, PushState.CONFIRMED, stock_ids=[ids["IPHONE13-128-BLK"]], now=yesterday)
        push_log.note(session, PushState.FAILED, stock_ids=[ids[HOSTILE_SKU]], error="<b>HTTP 500</b>")
        push_log.note(session, PushState.WAITING, stock_ids=[ids["PIXEL-7"]], note="waiting for the data limit")
        session.commit()
    return ids


def test_a_viewer_reads_the_push_log_filtered_paged_and_escaped(world):
    seed_pushes(world.sessions)

    answers = pages_as(world, "viewer", "/pushes", "/pushes?state=failed", "/pushes?account=refurbed&state=waiting",
                       "/pushes?limit=1", "/pushes?since=2099-01-01T00:00:00Z", f"/variations/{world.variation_id}")
    assert {status for status, _ in answers.values()} == {200}
    status, page = answers["/pushes"]
    # The counts per state on top, every state listed.
    assert '<li data-state="confirmed"><span class="status status-confirmed">confirmed</span> <b>1</b>' in page
    assert '<li data-state="refused"><span class="status status-refused">refused</span> <b>0</b>' in page
    assert page.count('<tr data-state=') == 3
    # The SKU and the error are text, never markup.
    assert HOSTILE_SKU not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>HTTP 500</b>" not in page and "&lt;b&gt;HTTP 500&lt;/b&gt;" in page
    assert answers["/pushes?state=failed"][1].count('<tr data-state="failed"') == 1
    assert answers["/pushes?state=failed"][1].count('<tr data-state=') == 1
    filtered = answers["/pushes?account=refurbed&state=waiting"][1]
    assert filtered.count('<tr data-state="waiting"') == 1 and "PIXEL-7" in filtered
    paged = answers["/pushes?limit=1"][1]
    assert paged.count('<tr data-state=') == 1 and 'id="older"' in paged
    assert "&amp;limit=1" in paged.split('id="older"')[1].split(">")[0]  # the next page keeps the filters
    assert "no pushes" in answers["/pushes?since=2099-01-01T00:00:00Z"][1]
    sku_page = answers[f"/variations/{world.variation_id}"][1]
    assert 'id="last-pushes"' in sku_page and sku_page.count('<tr data-state="confirmed"') == 1


@pytest.mark.parametrize("query", ["state=lost", "since=yesterday", "until=2026-13-01", "before=abc", "limit=0",
                                   "since=2026-12-02&until=2026-12-01", "account=" + "x" * 65])
def test_a_bad_filter_on_the_console_is_a_400_naming_it(world, query):
    status, body = pages_as(world, "viewer", f"/pushes?{query}")[f"/pushes?{query}"]
    assert status == 400 and query.split("=")[0] in body


def test_an_anonymous_visitor_is_sent_to_the_login(world):
    async def scenario(server):
        client = await client_of(server)
        response = await client.get("/pushes", allow_redirects=False)
        await client.close()
        return response.status, response.headers.get("Location", "")

    status, location = run(world, scenario)
    assert status in (302, 303) and "/login" in location


@pytest.fixture
def intake(database_url):
    sessions = session_factory(database_url)
    from tests.console_support import add_variation as add

    add(sessions, "IPHONE13-128-BLK")
    ids = seed_pushes(sessions)
    app = build_intake_app(Settings(read_api_tokens=READ_API_TOKENS), broker=StubBroker(), database_url=database_url)
    server = serve_in_thread(app)
    yield server, ids
    server.stop()


def test_the_read_api_lists_pushes_with_counts_behind_its_token(intake):
    server, _ = intake
    status, body = get(server, "/pushes")
    assert status == 200
    assert [entry["state"] for entry in body["pushes"]] == ["waiting", "failed", "confirmed"]
    assert body["counts"] == {"waiting": 1, "sent": 0, "confirmed": 1, "superseded": 0, "refused": 0, "failed": 1,
                              "retried": 0}
    confirmed = body["pushes"][2]
    assert (confirmed["sku"], confirmed["account"], confirmed["quantity_read"], confirmed["quantity_sent"],
            confirmed["attempts"]) == ("IPHONE13-128-BLK", "backmarket", 5, 7, 1)
    assert datetime.fromisoformat(confirmed["finished_at"]) < datetime.now(timezone.utc) - timedelta(hours=23)
    status, page = get(server, "/pushes?limit=2")
    assert len(page["pushes"]) == 2 and page["next_before"] == page["pushes"][-1]["id"]
    status, older = get(server, f"/pushes?limit=2&before={page['next_before']}")
    assert [entry["state"] for entry in older["pushes"]] == ["confirmed"] and older["next_before"] is None
    status, only = get(server, "/pushes?account=backmarket&state=failed,confirmed")
    assert [entry["state"] for entry in only["pushes"]] == ["failed", "confirmed"]
    status, recent = get(server, f"/pushes?since={(datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()}"
                         .replace("+", "%2B"))
    assert status == 200 and [entry["state"] for entry in recent["pushes"]] == ["waiting", "failed"]
    assert get(server, "/pushes", token=None)[0] == 401
    assert get(server, "/pushes", token="wrong-token-0000000000")[0] == 401


@pytest.mark.parametrize("query, field", [("state=lost", "state"), ("since=yesterday", "since"),
                                          ("limit=1000", "limit"), ("before=-3", "before"),
                                          ("colour=red", "unknown query parameter"),
                                          ("state=sent&state=failed", "more than once")])
def test_the_read_api_answers_a_bad_filter_400_naming_it(intake, query, field):
    server, _ = intake
    status, body = get(server, f"/pushes?{query}")
    assert status == 400 and field in body["error"]
