"""The console's rules over HTTP (aiohttp's test client): roles against every action, CSRF, sessions,
login throttling, escaping, secrets.  Real PostgreSQL and Redis; actions enqueue on the stub broker.
"""
from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace

import aiohttp
import pytest
import redis as redis_lib
from aiohttp.test_utils import TestServer
from dramatiq import Message
from pydantic import SecretStr
from sqlalchemy import text

from db.engine import session_factory
from runtime import resources
from runtime.dlq import DeadLetterQueues
from runtime.settings import Settings, get_settings
from tests.console_support import PASSWORD, add_dead_letter, add_user, add_variation, csrf_of, login, session_csrf
from workers.console.app import build_console_app
from workers.console.security import LOGIN_CSRF_COOKIE, SESSION_COOKIE

SECRETS = {
    "token": "bm-token-5ecr3t-value",
    "webhook": "https://hooks.example.com/services/T000/B000/webhook-5ecr3t",
    "credential": "shpat_credential-5ecr3t",
    "url_password": "urlpass-5ecr3t",
    "producer": "producer-key-5ecr3t",
}


@pytest.fixture
def world(monkeypatch, database_url, redis_url):
    """The console on this test's database and Redis, the fleet's stub broker, a catalogue and one user per role."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", "")
    get_settings.cache_clear()
    resources.database_url.cache_clear()
    from workers import fleet

    broker = fleet.broker
    broker.flush_all()
    redis = redis_lib.Redis.from_url(redis_url)
    sessions = session_factory(database_url)
    settings = Settings(backmarket_token=SecretStr(SECRETS["token"]),
                        stock_alert_webhook_url=SecretStr(SECRETS["webhook"]),
                        producer_hmac_key=SecretStr(SECRETS["producer"]),
                        console_login_max_failures=3, console_login_max_failures_per_address=6)
    environ = {"STOCKSYNC_ACCOUNT_SHOP_TOKEN": SECRETS["credential"]}
    for role in ("viewer", "operator", "admin"):
        add_user(sessions, role, role)
    add_user(sessions, "other", "viewer")
    variation_id = add_variation(sessions, "IPHONE13-128-BLK", title="iPhone 13 128 GB black")
    with sessions() as session:
        from db import accounts

        accounts.add_account(session, platform="shopify", code="shop-eu", credentials_env="STOCKSYNC_ACCOUNT_SHOP_TOKEN",
                             base_url="https://shop-eu.myshopify.com")
        # A base URL written before the rules (a store of before accounts) may carry a password: never shown.
        session.execute(text("UPDATE marketplaces SET base_url = :u WHERE code = 'shop-eu'"),
                        {"u": f"https://ops:{SECRETS['url_password']}@shop-eu.myshopify.com/"})
        session.commit()
    state = SimpleNamespace(broker=broker, redis=redis, sessions=sessions, settings=settings, environ=environ,
                            variation_id=variation_id,
                            dead_letters=DeadLetterQueues(redis, notes_namespace=settings.redis_namespace))
    state.app = lambda: build_console_app(settings, sessions=sessions, redis=redis, broker=broker,
                                          dead_letters=state.dead_letters, environ=environ)
    yield state
    broker.flush_all()
    redis.close()
    get_settings.cache_clear()
    resources.database_url.cache_clear()


def run(world, scenario):
    """Run ``scenario(server)`` on a test server of a fresh console app."""
    async def go():
        server = TestServer(world.app())
        await server.start_server()
        try:
            return await scenario(server)
        finally:
            await server.close()

    return asyncio.run(go())


async def client_of(server, username: str | None = None) -> aiohttp.ClientSession:
    """A browser of its own (cookie jar) on ``server``; logged in as ``username`` if given."""
    client = aiohttp.ClientSession(base_url=str(server.make_url("/")), cookie_jar=aiohttp.CookieJar(unsafe=True))
    if username:
        response = await login(client, username)
        assert response.status == 303, (response.status, await response.text())
    return client


def enqueued(broker) -> list[Message]:
    return [Message.decode(raw) for queue in broker.queues.values() for raw in list(queue.queue)]


def audit_rows(world, **where) -> list:
    with world.sessions() as session:
        rows = session.execute(text("SELECT username, action, arguments, outcome, detail FROM console_audit "
                                    "ORDER BY id")).all()
    return [row for row in rows if all(getattr(row, key) == value for key, value in where.items())]


# -- roles against every action ------------------------------------------------------------------------------


def actions(world) -> list[tuple[str, str, str, dict]]:
    """(audit name, path, least role, form) of every action the console has."""
    return [
        ("stock.topup", "/stock/topup", "operator",
         {"variation_id": world.variation_id, "marketplace": "backmarket", "quantity": "2", "reference": "PO-{n}"}),
        ("stock.adjust", "/stock/adjust", "operator",
         {"variation_id": world.variation_id, "marketplace": "backmarket", "change": "-1", "reference": "ADJ-{n}"}),
        ("stock.refresh", "/stock/refresh", "operator", {"variation_id": world.variation_id, "marketplace": "backmarket"}),
        ("sync.start", "/syncs/start", "operator", {"marketplace": "backmarket", "force": "1"}),
        ("dlq.retry", "/deadletters/retry", "operator", {"message_id": "{dead}"}),
        ("dlq.retry_all", "/deadletters/retry-all", "operator", {"queue": "dlq-{n}"}),
        ("dlq.purge", "/deadletters/purge", "operator", {"queue": "dlq-{n}", "confirm": "yes"}),
        ("account.disable", "/accounts/shop-eu/disable", "admin", {}),
        ("account.enable", "/accounts/shop-eu/enable", "admin", {}),
        ("account.add", "/accounts/add", "admin",
         {"platform": "shopify", "code": "shop-{n}", "credentials_env": "STOCKSYNC_ACCOUNT_SHOP_TOKEN",
          "base_url": "https://shop-{n}.myshopify.com", "enabled": "on"}),
        ("alerts.rule_add", "/alerts/rules/add", "admin", {"threshold": "3", "sku": "IPHONE13-128-BLK"}),
        ("alerts.rule_remove", "/alerts/rules/{rule}/remove", "admin", {}),
        ("scheduler.run_now", "/scheduler/stock_sweep/run", "admin", {}),
        ("users.set_role", "/users/other/role", "admin", {"role": "operator"}),
        ("users.disable", "/users/other/disable", "admin", {}),
        ("users.enable", "/users/other/enable", "admin", {}),
    ]


ALLOWED = {"viewer": {"viewer"}, "operator": {"viewer", "operator"}, "admin": {"viewer", "operator", "admin"}}


def test_every_action_is_refused_to_a_role_below_it_and_audited_for_the_others(world):
    from db.alerts import set_rule

    async def scenario(server):
        results = []
        for n, role in enumerate(("viewer", "operator", "admin")):
            client = await client_of(server, role)
            csrf = await session_csrf(client)
            for name, path, needed, form in actions(world):
                dead = add_dead_letter(world.redis, f"dlq-{n}", "push_stock", "backmarket", "SKU")
                with world.sessions() as session:
                    rule_id, _ = set_rule(session, marketplace=None, sku=None, threshold=n + 1)
                    session.commit()
                values = {key: str(value).format(n=n, dead=dead.options["redis_message_id"]) for key, value in form.items()}
                response = await client.post(path.format(rule=rule_id), data={**values, "csrf_token": csrf},
                                             allow_redirects=False)
                results.append((role, name, needed, response.status, await response.text()))
            await client.close()
        return results

    results = run(world, scenario)
    for role, name, needed, status, body in results:
        audited = audit_rows(world, username=role, action=name)
        assert len(audited) == 1, (role, name, audited)
        if needed in ALLOWED[role]:
            assert status in (303, 409), (role, name, status, body)
            assert audited[0].outcome in ("ok", "refused"), (role, name, audited[0])
        else:
            assert status == 403, (role, name, status)
            assert audited[0].outcome == "forbidden" and needed in body
    # What the allowed ones did went through the fleet's operations.
    actors = sorted({message.actor_name for message in enqueued(world.broker)})
    assert {"stock_topup", "manual_adjustment", "recheck_stock", "fetch_listings_page", "each_account"} <= set(actors), \
        actors
    # Retried dead letters are back on their own queue (Redis), purged ones gone; the viewer's untouched.
    # (each action above added one: the retries moved those there by then, the purge the next ones)
    retried = [world.redis.llen(f"dramatiq:dlq-{n}") for n in range(3)]
    assert retried[0] == 0 and retried[1] == retried[2] == 6, retried
    assert world.dead_letters.sizes()["dlq-0"] == len(actions(world))
    topups = [m for m in enqueued(world.broker) if m.actor_name == "stock_topup"]
    assert sorted(m.kwargs["actor"] for m in topups) == ["admin", "operator"]
    assert all(m.kwargs["reference"].startswith("PO-") for m in topups)
    ok = {(row.username, row.action) for row in audit_rows(world, outcome="ok")}
    assert ("operator", "stock.topup") in ok and ("admin", "users.set_role") in ok


def test_a_viewer_reads_every_page_but_the_users_page(world):
    pages = ["/", "/stock?q=IPH&exact=0", f"/variations/{world.variation_id}", f"/variations/{world.variation_id}/ledger",
             "/syncs", "/accounts", "/accounts/shop-eu", "/deadletters", "/alerts", "/scheduler", "/audit"]

    async def scenario(server):
        client = await client_of(server, "viewer")
        statuses = {page: (await client.get(page, allow_redirects=False)).status for page in pages + ["/users"]}
        body = await (await client.get(f"/variations/{world.variation_id}")).text()
        await client.close()
        return statuses, body

    statuses, body = run(world, scenario)
    assert statuses.pop("/users") == 403
    assert set(statuses.values()) == {200}, statuses
    assert 'action="/stock/topup"' not in body and "Refresh from the marketplace" not in body  # nothing to click


# -- CSRF, sessions, login -----------------------------------------------------------------------------------


def test_a_post_without_or_with_a_wrong_csrf_token_is_refused_and_does_nothing(world):
    form = {"variation_id": str(world.variation_id), "marketplace": "backmarket", "quantity": "1", "reference": "X"}

    async def scenario(server):
        client = await client_of(server, "admin")
        missing = await client.post("/stock/topup", data=form, allow_redirects=False)
        wrong = await client.post("/stock/topup", data={**form, "csrf_token": "not-the-token"}, allow_redirects=False)
        header = await client.post("/stock/topup", data=form, headers={"X-CSRF-Token": "nope"}, allow_redirects=False)
        # Another session's token is wrong for this one.
        other = await client_of(server, "operator")
        foreign = await client.post("/stock/topup", data={**form, "csrf_token": await session_csrf(other)},
                                    allow_redirects=False)
        good = await client.post("/stock/topup", data={**form, "csrf_token": await session_csrf(client)},
                                 allow_redirects=False)
        for c in (client, other):
            await c.close()
        return [r.status for r in (missing, wrong, header, foreign)], good.status, await missing.text()

    refused, good, body = run(world, scenario)
    assert refused == [403, 403, 403, 403] and "CSRF" in body
    assert good == 303
    assert [m.actor_name for m in enqueued(world.broker)] == ["stock_topup"]
    assert len(audit_rows(world, outcome="csrf")) == 4


def test_the_login_form_needs_its_own_csrf_token(world):
    async def scenario(server):
        client = await client_of(server)
        await client.get("/login")
        response = await client.post("/login", data={"username": "admin", "password": PASSWORD, "csrf_token": "x"},
                                     allow_redirects=False)
        await client.close()
        return response.status, response.cookies.get(SESSION_COOKIE)

    status, cookie = run(world, scenario)
    assert status == 403 and cookie is None


def test_the_session_cookie_is_httponly_lax_new_at_each_login_and_secure_behind_https(world):
    async def scenario(server):
        client = await client_of(server)
        first = await login(client, "admin")
        second = await login(client, "admin")
        proxied = await client.get("/login", headers={"X-Forwarded-Proto": "https"})
        page = await proxied.text()
        # The jar keeps a Secure cookie for HTTPS; the proxy would pass it on: so does this request.
        login_token = proxied.cookies[LOGIN_CSRF_COOKIE]
        assert login_token["secure"]
        over_https = await client.post("/login", data={"username": "admin", "password": PASSWORD,
                                                       "csrf_token": csrf_of(page)},
                                       headers={"X-Forwarded-Proto": "https",
                                                "Cookie": f"{LOGIN_CSRF_COOKIE}={login_token.value}"},
                                       allow_redirects=False)
        await client.close()
        return first.cookies[SESSION_COOKIE], second.cookies[SESSION_COOKIE], over_https.cookies[SESSION_COOKIE]

    first, second, https = run(world, scenario)
    assert first.value != second.value
    for morsel in (first, second, https):
        assert morsel["httponly"] and morsel["samesite"] == "Lax" and morsel["path"] == "/"
        assert int(morsel["max-age"]) == int(world.settings.console_session_lifetime_s)
    assert not first["secure"] and https["secure"]
    with world.sessions() as session:
        stored = session.execute(text("SELECT token_hash FROM console_sessions")).scalars().all()
    # Each login replaced the session it came with: only the last one lives, stored as a hash only.
    from db.users import token_hash

    assert stored == [token_hash(https.value)]


def test_an_expired_session_is_refused(world):
    async def scenario(server):
        client = await client_of(server, "operator")
        csrf = await session_csrf(client)
        with world.sessions() as session:
            session.execute(text("UPDATE console_sessions SET expires_at = now() - interval '1 second'"))
            session.commit()
        page = await client.get("/", allow_redirects=False)
        action = await client.post("/syncs/start", data={"marketplace": "backmarket", "csrf_token": csrf},
                                   allow_redirects=False)
        await client.close()
        return page.status, page.headers.get("Location"), action.status

    status, location, action = run(world, scenario)
    assert status == 303 and location.startswith("/login?next=")
    assert action == 401
    assert enqueued(world.broker) == []


def test_a_disabled_user_or_a_changed_password_ends_the_sessions(world):
    from db import users

    async def scenario(server):
        client = await client_of(server, "operator")
        with world.sessions() as session:
            users.set_active(session, "operator", False)
            session.commit()
        after_disable = (await client.get("/", allow_redirects=False)).status
        refused_login = (await login(client, "operator")).status
        await client.close()
        return after_disable, refused_login

    assert run(world, scenario) == (303, 401)


def test_every_page_but_login_and_healthz_needs_a_session(world):
    async def scenario(server):
        client = await client_of(server)
        statuses = {}
        for path in ("/", "/stock", "/syncs", "/syncs/stream", "/accounts", "/deadletters", "/alerts", "/scheduler",
                     "/audit", "/users", f"/variations/{world.variation_id}"):
            statuses[path] = (await client.get(path, allow_redirects=False)).status
        public = [(await client.get(path)).status for path in ("/login", "/healthz", "/static/console.css", "/readyz")]
        posted = (await client.post("/stock/topup", data={}, allow_redirects=False)).status
        await client.close()
        return statuses, public, posted

    statuses, public, posted = run(world, scenario)
    assert set(statuses.values()) == {303}, statuses
    assert public == [200, 200, 200, 200] and posted == 401


def test_login_attempts_are_throttled_per_account_and_per_address(world):
    async def scenario(server):
        client = await client_of(server)
        wrong = [(await login(client, "operator", "wrong password!")).status for _ in range(3)]
        right_but_blocked = await login(client, "operator")
        blocked_text = await right_but_blocked.text()
        # Other accounts from the same address: 3 more failures reach the address's limit of 6.
        more = [(await login(client, name, "wrong password!")).status for name in ("viewer", "admin", "viewer")]
        admin_blocked = (await login(client, "admin")).status
        await client.close()
        return wrong, right_but_blocked.status, blocked_text, more, admin_blocked

    wrong, blocked, text_, more, admin_blocked = run(world, scenario)
    assert wrong == [401, 401, 401]
    assert blocked == 429 and "too many failed logins for this account" in text_.lower()
    assert more == [401, 401, 401] and admin_blocked == 429
    assert [row.outcome for row in audit_rows(world, action="login", username="operator")] == \
        ["refused"] * 3 + ["throttled"]


# -- escaping and secrets ------------------------------------------------------------------------------------


HOSTILE_SKU = "<script>alert('sku')</script>"
HOSTILE_TITLE = '<img src=x onerror="alert(1)">'


def test_hostile_skus_titles_and_notes_show_as_text(world):
    variation_id = add_variation(world.sessions, HOSTILE_SKU, title=HOSTILE_TITLE)
    with world.sessions() as session:
        session.execute(text(
            "INSERT INTO stock_ledger (stock_id, variation_id, marketplace_id, quantity_before, quantity_after, change, "
            "change_type, reference, actor, note, idempotency_key, event_time) "
            "SELECT s.id, s.variation_id, s.marketplace_id, 5, 6, 1, 'topup', :r, :a, :n, 'k1', now() "
            "FROM marketplace_stock s WHERE s.variation_id = :v"), {"r": HOSTILE_SKU, "a": HOSTILE_SKU, "n": HOSTILE_SKU, "v": variation_id})
        session.commit()
    add_dead_letter(world.redis, "stock-push", "push_stock", "backmarket", HOSTILE_SKU, error=f"failed: {HOSTILE_SKU}")

    async def scenario(server):
        client = await client_of(server, "admin")
        bodies = [await (await client.get(path)).text() for path in
                  (f"/variations/{variation_id}", "/stock?q=%3Cscript&exact=0", f"/variations/{variation_id}/ledger",
                   "/deadletters", f"/stock?q={HOSTILE_SKU}&exact=0")]
        await client.close()
        return bodies

    for body in run(world, scenario):
        assert "<script>alert" not in body and "<img src=x" not in body
        assert "&lt;script&gt;alert(" in body


def test_no_secret_shows_on_any_page(world):
    add_dead_letter(world.redis, "alerts", "notify_stock_alert", 1, error="HTTP 500 from the receiver")
    pages = ["/", "/stock?q=I", f"/variations/{world.variation_id}", "/syncs", "/accounts", "/accounts/shop-eu",
             "/deadletters", "/alerts", "/scheduler", "/audit", "/users", "/login"]

    async def scenario(server):
        client = await client_of(server, "admin")
        cookie = client.cookie_jar.filter_cookies(server.make_url("/"))[SESSION_COOKIE].value
        bodies = {path: await (await client.get(path)).text() for path in pages}
        await client.close()
        return cookie, bodies

    cookie, bodies = run(world, scenario)
    for path, body in bodies.items():
        for name, secret in SECRETS.items():
            assert secret not in body, (path, name)
        assert cookie not in body and "$argon2" not in body, path
    assert "$STOCKSYNC_ACCOUNT_SHOP_TOKEN</code> (set)" in bodies["/accounts"]
    assert "https://shop-eu.myshopify.com/<" in bodies["/accounts/shop-eu"]


def test_bad_input_gets_a_4xx_naming_what_was_wrong(world):
    async def scenario(server):
        client = await client_of(server, "admin")
        csrf = await session_csrf(client)
        answers = []
        for path, form in (("/stock/topup", {"variation_id": world.variation_id, "marketplace": "backmarket",
                                             "quantity": "lots", "reference": "R1"}),
                           ("/stock/topup", {"variation_id": world.variation_id, "marketplace": "Back Market!",
                                             "quantity": "1", "reference": "R2"}),
                           ("/stock/adjust", {"variation_id": world.variation_id, "marketplace": "backmarket",
                                              "change": "0", "reference": "R3"}),
                           ("/stock/topup", {"variation_id": "999999", "marketplace": "backmarket", "quantity": "1",
                                             "reference": "R4"}),
                           ("/alerts/rules/add", {"threshold": "-1"}),
                           ("/accounts/add", {"platform": "myspace", "code": "x",
                                              "credentials_env": "STOCKSYNC_ACCOUNT_SHOP_TOKEN"}),
                           ("/deadletters/purge", {"queue": "stock-push"})):
            response = await client.post(path, data={**{k: str(v) for k, v in form.items()}, "csrf_token": csrf},
                                         allow_redirects=False)
            answers.append((response.status, await response.text()))
        pages = [(await client.get(path)).status for path in ("/variations/abc", "/variations/1/ledger?before=x",
                                                               "/deadletters?since=yesterday", "/alerts?state=odd")]
        await client.close()
        return answers, pages

    answers, pages = run(world, scenario)
    expected = ["quantity must be a whole number", "marketplace", "change", "no variation 999999", "threshold",
                "platform", "must be confirmed"]
    for (status, body), words in zip(answers, expected):
        assert 400 <= status < 500 and words in body, (status, words, re.sub(r"\s+", " ", body)[-400:])
    assert pages == [404, 400, 400, 400]
    assert enqueued(world.broker) == []


def test_accounts_offer_and_accept_only_what_their_platform_can_do(world):
    with world.sessions() as session:  # the variation is stocked on Refurbed too (no push, no read-one here)
        session.execute(text("INSERT INTO marketplace_stock (variation_id, marketplace_id, listed) "
                             "SELECT :v, id, 4 FROM marketplaces WHERE code = 'refurbed'"), {"v": world.variation_id})
        session.execute(text("INSERT INTO listings (marketplace_id, external_id, variation_id, sku) "
                             "SELECT id, 'rb-1', :v, 'IPHONE13-128-BLK' FROM marketplaces WHERE code = 'refurbed'"),
                        {"v": world.variation_id})
        session.execute(text("INSERT INTO marketplaces (code, name) VALUES ('counter', 'Shop counter')"))
        session.commit()
    form = {"variation_id": str(world.variation_id), "reference": "R-{n}"}

    async def scenario(server):
        client = await client_of(server, "operator")
        csrf = await session_csrf(client)
        page = await (await client.get(f"/variations/{world.variation_id}")).text()
        accounts_page = await (await client.get("/accounts")).text()
        syncs_page = await (await client.get("/syncs")).text()
        answers = {}
        for name, path, extra in (("topup refurbed", "/stock/topup", {"marketplace": "refurbed", "quantity": "2"}),
                                  ("adjust shop", "/stock/adjust", {"marketplace": "shop-eu", "change": "1"}),
                                  ("refresh refurbed", "/stock/refresh", {"marketplace": "refurbed"}),
                                  ("topup counter", "/stock/topup", {"marketplace": "counter", "quantity": "2"}),
                                  ("sync counter", "/syncs/start", {"marketplace": "counter"}),
                                  ("sync shop", "/syncs/start", {"marketplace": "shop-eu", "force": "1"})):
            response = await client.post(path, data={**form, **extra, "reference": f"R-{name}", "csrf_token": csrf},
                                         allow_redirects=False)
            answers[name] = (response.status, await response.text())
        await client.close()
        return page, accounts_page, syncs_page, answers

    page, accounts_page, syncs_page, answers = run(world, scenario)
    assert answers["topup refurbed"][0] == 409
    assert "account &#39;refurbed&#39; is on Refurbed, which stocksync cannot push a stock change to" in \
        answers["topup refurbed"][1]
    assert answers["adjust shop"][0] == 409 and "cannot push" in answers["adjust shop"][1]
    assert answers["refresh refurbed"][0] == 409 and "cannot read one listing of" in answers["refresh refurbed"][1]
    assert answers["topup counter"][0] == 303  # a manual account: nothing syncs a local change away
    assert answers["sync counter"][0] == 400 and "no enabled account with a catalogue" in answers["sync counter"][1]
    assert answers["sync shop"][0] == 303  # Sync now on every account with a catalogue
    sent = [(m.actor_name, m.args[:1] or (m.kwargs.get("marketplace"),)) for m in enqueued(world.broker)]
    assert sorted(sent) == [("fetch_listings_page", (1,)), ("stock_topup", ("counter",))], sent
    # Offered only where accepted: Refresh on the Back Market row only, top-ups on Back Market and the counter.
    rows = dict(re.findall(r'<tr data-marketplace="([^"]+)">(.*?)</tr>', page, re.S))
    assert "Refresh from the marketplace" in rows["backmarket"] and "Refresh" not in rows["refurbed"]
    selects = re.findall(r'<select name="marketplace">(.*?)</select>', page, re.S)
    assert selects and all(re.findall(r"<option[^>]*>([^<]+)<", s) == ["backmarket", "counter"] for s in selects)
    assert re.findall(r"<option>([^<]+)<", syncs_page) == ["backmarket", "refurbed", "shop-eu", "shopify"]
    row = re.search(r'<tr id="account-refurbed".*?</tr>', accounts_page, re.S).group(0)
    assert "sync (cursor pages), poll orders" in row and "Sync now" in row and "Disable" not in row  # an operator


def test_an_admin_adds_and_disables_accounts_under_the_rules(world):
    async def scenario(server):
        client = await client_of(server, "admin")
        csrf = await session_csrf(client)
        answers = []
        for form in ({"platform": "refurbed", "code": "rb-at", "credentials_env": "DATABASE_URL"},
                     {"platform": "refurbed", "code": "rb-at", "credentials_env": SECRETS["credential"]},
                     {"platform": "refurbed", "code": "rb-at", "credentials_env": "STOCKSYNC_ACCOUNT_RB",
                      "base_url": "https://evil.example.com"},
                     {"platform": "refurbed", "code": "rb-at", "credentials_env": "STOCKSYNC_ACCOUNT_RB",
                      "options": "restock"},
                     {"platform": "refurbed", "code": "rb-at", "credentials_env": "STOCKSYNC_ACCOUNT_RB",
                      "options": '{"restock_on_cancel": false}', "enabled": "on"}):
            response = await client.post("/accounts/add", data={**form, "csrf_token": csrf}, allow_redirects=False)
            answers.append((response.status, await response.text()))
        disabled = await client.post("/accounts/rb-at/disable", data={"csrf_token": csrf}, allow_redirects=False)
        missing = await client.post("/accounts/nobody/disable", data={"csrf_token": csrf}, allow_redirects=False)
        page = await (await client.get("/accounts/rb-at")).text()
        await client.close()
        return answers, disabled.status, (missing.status, await missing.text()), page

    answers, disabled, missing, page = run(world, scenario)
    expected = ["must start with STOCKSYNC_ACCOUNT_", "never as the secret itself", "Refurbed&#39;s own hosts",
                "options must be a JSON object"]
    for (status, body), words in zip(answers, expected):
        assert status == 400 and words in body and SECRETS["credential"] not in body, (status, words)
    assert answers[-1][0] == 303 and disabled == 303
    assert missing[0] == 404 and "no account &#39;nobody&#39;" in missing[1]
    assert "disabled (never synced, polled or pushed)" in page and "restock_on_cancel" in page
    audited = " ".join(str(row.arguments) + (row.detail or "") for row in audit_rows(world, action="account.add"))
    assert "must start with" in audited
