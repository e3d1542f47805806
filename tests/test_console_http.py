"""The console's rules over HTTP (aiohttp's test client): roles against every action, CSRF, sessions,
login throttling, escaping, secrets.  Real PostgreSQL and Redis; actions enqueue on the stub broker.
(The attacks of issue 16 are in test_console_security.py.)
"""
from __future__ import annotations

import asyncio
import dataclasses
import re

from sqlalchemy import text

from core.platforms import PLATFORMS
from runtime import accounts

from tests.console_support import (PASSWORD, SECRETS, actions, add_dead_letter, add_variation, audit_rows,  # noqa: F401
                                   client_of, csrf_of, enqueued, ledger_rows, login, run, session_csrf, world)
from workers.console.security import LOGIN_CSRF_COOKIE, SESSION_COOKIE

# -- roles against every action ------------------------------------------------------------------------------


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
    assert {"drain_pushes", "recheck_stock", "fetch_listings_page", "each_account"} <= set(actors), actors
    # Retried dead letters are back on their own queue (Redis), purged ones gone; the viewer's untouched.
    # (each action above added one: the retries moved those there by then, the purge the next ones)
    retried = [world.redis.llen(f"dramatiq:dlq-{n}") for n in range(3)]
    assert retried[0] == 0 and retried[1] == retried[2] == 6, retried
    assert world.dead_letters.sizes()["dlq-0"] == len(actions(world))
    # Top-ups and adjustments were booked by the console itself, the user as the actor, in its own namespace.
    assert sorted(ledger_rows(world, "topup")) == [("admin", "console:PO-2"), ("operator", "console:PO-1")]
    assert sorted(ledger_rows(world, "manual")) == [("admin", "console:ADJ-2"), ("operator", "console:ADJ-1")]
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
    assert ledger_rows(world, "topup") == [("admin", "console:X")]  # the good one only
    assert [m.actor_name for m in enqueued(world.broker)] == ["drain_pushes"]
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


def test_the_session_cookie_is_httponly_lax_new_at_each_login_and_not_secure_by_default(world):
    async def scenario(server):
        client = await client_of(server)
        first = await login(client, "admin")
        # A client saying "https" changes nothing: only CONSOLE_SECURE_COOKIES does.
        page = await client.get("/login", headers={"X-Forwarded-Proto": "https"})
        second = await client.post("/login", data={"username": "admin", "password": PASSWORD,
                                                   "csrf_token": csrf_of(await page.text())},
                                   headers={"X-Forwarded-Proto": "https"}, allow_redirects=False)
        await client.close()
        return first, second, page.cookies.get(LOGIN_CSRF_COOKIE)

    first, second, login_token = run(world, scenario)
    assert "Strict-Transport-Security" not in first.headers
    first, second = first.cookies[SESSION_COOKIE], second.cookies[SESSION_COOKIE]
    assert first.value != second.value
    for morsel in (first, second):
        assert morsel["httponly"] and morsel["samesite"] == "Lax" and morsel["path"] == "/"
        assert int(morsel["max-age"]) == int(world.settings.console_session_lifetime_s)
        assert not morsel["secure"]
    assert login_token is None or not login_token["secure"]
    with world.sessions() as session:
        stored = session.execute(text("SELECT token_hash FROM console_sessions")).scalars().all()
    # Each login replaced the session it came with: only the last one lives, stored as a hash only.
    from db.users import token_hash

    assert stored == [token_hash(second.value)]


def test_behind_a_tls_proxy_cookies_are_secure_host_prefixed_and_answers_carry_hsts(world):
    host_session, host_login = "__Host-" + SESSION_COOKIE, "__Host-" + LOGIN_CSRF_COOKIE

    async def scenario(server):
        # The jar keeps Secure cookies for https only: this client hands them back itself, as a browser
        # behind the proxy would.
        client = await client_of(server)
        page = await client.get("/login")
        token = page.cookies[host_login]
        response = await client.post("/login", data={"username": "admin", "password": PASSWORD,
                                                     "csrf_token": csrf_of(await page.text())},
                                     headers={"Cookie": f"{host_login}={token.value}"}, allow_redirects=False)
        session_cookie = response.cookies[host_session]
        overview = await client.get("/", headers={"Cookie": f"{host_session}={session_cookie.value}"},
                                    allow_redirects=False)
        # The plain name means nothing with the setting on.
        plain = await client.get("/", headers={"Cookie": f"{SESSION_COOKIE}={session_cookie.value}"},
                                 allow_redirects=False)
        logout = await client.post("/logout", headers={"Cookie": f"{host_session}={session_cookie.value}",
                                                       "X-CSRF-Token": csrf_of(await overview.text())},
                                   allow_redirects=False)
        await client.close()
        return page, token, response, session_cookie, overview.status, plain.status, logout

    page, token, response, cookie, overview, plain, logout = run(world, scenario, console_secure_cookies=True)
    for morsel in (token, cookie):
        assert morsel["secure"] and morsel["httponly"] and morsel["path"] == "/" and not morsel["domain"]
    assert response.status == 303 and overview == 200 and plain == 303
    for answer in (page, response, logout):
        assert answer.headers["Strict-Transport-Security"].startswith("max-age=")
    removed = logout.cookies[host_session]
    assert removed.value == "" and removed["secure"] and int(removed["max-age"]) == 0


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
        ready = await (await client.get("/readyz")).json()
        posted = (await client.post("/stock/topup", data={}, allow_redirects=False)).status
        await client.close()
        return statuses, public, posted, ready

    statuses, public, posted, ready = run(world, scenario)
    assert set(statuses.values()) == {303}, statuses
    assert public == [200, 200, 200, 200] and posted == 401
    assert ready == {"status": "ok"}  # public: no checks, hosts or errors (those go to the log)


def test_login_attempts_slow_down_per_account_and_address_and_per_address(world):
    async def scenario(server):
        client = await client_of(server)
        wrong = [(await login(client, "operator", "wrong password!")).status for _ in range(3)]
        right_but_throttled = await login(client, "operator")
        throttled_text = await right_but_throttled.text()
        # Other accounts from the same address: 3 more failures reach the address's 6.
        more = [(await login(client, name, "wrong password!")).status for name in ("viewer", "admin", "viewer")]
        admin_throttled = (await login(client, "admin")).status
        await client.close()
        return wrong, right_but_throttled, throttled_text, more, admin_throttled

    wrong, throttled, text_, more, admin_throttled = run(world, scenario)
    assert wrong == [401, 401, 401]
    assert throttled.status == 429 and int(throttled.headers["Retry-After"]) >= 1
    assert "too many login attempts on this account from your address" in text_.lower()
    assert more == [401, 401, 401] and admin_throttled == 429
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
                           ("/stock/topup", {"variation_id": world.variation_id, "marketplace": "nosuch",
                                             "quantity": "1", "reference": "R5"}),
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
    expected = ["quantity must be a whole number", "marketplace", "change", "no enabled account", "no variation 999999",
                "threshold", "platform", "must be confirmed"]
    for (status, body), words in zip(answers, expected):
        assert 400 <= status < 500 and words in body, (status, words, re.sub(r"\s+", " ", body)[-400:])
    assert pages == [404, 400, 400, 400]
    assert enqueued(world.broker) == []


def test_the_overview_shows_each_marketplace_push_backlog_against_its_data_limit(world):
    import redis.asyncio

    from clients.ratelimit import FleetRateLimiter

    with world.sessions() as session:
        session.execute(text("UPDATE marketplace_stock SET push_state = 'pending', push_requested_at = now()"))
        session.commit()

    async def three_lines():  # three lines of the hour already pushed, fleet-wide
        where = world.redis.connection_pool.connection_kwargs
        client = redis.asyncio.Redis(host=where["host"], port=where["port"], db=where.get("db", 0))
        limiter = FleetRateLimiter(client, "backmarket-push-lines", 2000, 3600.25)
        for _ in range(3):
            await limiter.acquire()
        await client.aclose()

    asyncio.run(three_lines())

    async def scenario(server):
        client = await client_of(server, "viewer")
        body = await (await client.get("/")).text()
        await client.close()
        return body

    body = run(world, scenario)
    table = body[body.index('id="push-backlog"'):]
    table = table[:table.index("</table>")]
    assert "<td>backmarket</td>" in table and '<td class="num">1</td>' in table
    assert "1997 of 2000 per 1h" in table


def stock_on_shop(world, listing: str) -> None:
    """The world's variation stocked (4) on the Shopify account ``shop-eu`` as listing ``listing``."""
    with world.sessions() as session:
        session.execute(text("INSERT INTO marketplace_stock (variation_id, marketplace_id, listed) "
                             "SELECT :v, id, 4 FROM marketplaces WHERE code = 'shop-eu'"), {"v": world.variation_id})
        session.execute(text("INSERT INTO listings (marketplace_id, external_id, variation_id, sku) "
                             "SELECT id, :l, :v, 'IPHONE13-128-BLK' FROM marketplaces WHERE code = 'shop-eu'"),
                        {"v": world.variation_id, "l": listing})
        session.commit()


def test_accounts_offer_and_accept_only_what_their_platform_can_do(world, monkeypatch, request):
    # Every API platform reads one, pushes and polls now: a Shopify that could not is the platform that cannot.
    monkeypatch.setitem(PLATFORMS, "shopify", dataclasses.replace(PLATFORMS["shopify"], read_one=False, push=False,
                                                                  poll_orders=False))
    accounts.forget()
    request.addfinalizer(accounts.forget)  # no view of the changed table outlives the test
    stock_on_shop(world, "sh-1")  # the variation is stocked on that shop too (no push, no read-one)
    with world.sessions() as session:
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
        for name, path, extra in (("topup shop", "/stock/topup", {"marketplace": "shop-eu", "quantity": "2"}),
                                  ("adjust shop", "/stock/adjust", {"marketplace": "shop-eu", "change": "1"}),
                                  ("refresh shop", "/stock/refresh", {"marketplace": "shop-eu"}),
                                  ("topup counter", "/stock/topup", {"marketplace": "counter", "quantity": "2"}),
                                  ("sync counter", "/syncs/start", {"marketplace": "counter"}),
                                  ("sync shop", "/syncs/start", {"marketplace": "shop-eu", "force": "1"})):
            response = await client.post(path, data={**form, **extra, "reference": f"R-{name}", "csrf_token": csrf},
                                         allow_redirects=False)
            answers[name] = (response.status, await response.text())
        await client.close()
        return page, accounts_page, syncs_page, answers

    page, accounts_page, syncs_page, answers = run(world, scenario)
    assert answers["topup shop"][0] == 409
    assert "account &#39;shop-eu&#39; is on Shopify, which stocksync cannot push a stock change to" in \
        answers["topup shop"][1]
    assert answers["adjust shop"][0] == 409 and "cannot push" in answers["adjust shop"][1]
    assert answers["refresh shop"][0] == 409 and "cannot read one listing of" in answers["refresh shop"][1]
    assert answers["topup counter"][0] == 303  # a manual account: nothing syncs a local change away
    assert answers["sync counter"][0] == 400 and "no enabled account with a catalogue" in answers["sync counter"][1]
    assert answers["sync shop"][0] == 303  # Sync now on every account with a catalogue
    sent = [(m.actor_name, m.args[:1] or (m.kwargs.get("marketplace"),)) for m in enqueued(world.broker)]
    # The counter's top-up is booked here (nothing to push): only the shop's sync went through the queue.
    assert sorted(sent) == [("fetch_listings_page", (1,))], sent
    assert ledger_rows(world, "topup") == [("operator", "console:R-topup counter")]
    # Offered only where accepted: Refresh on the Back Market row only, top-ups where a push (or nothing) follows.
    rows = dict(re.findall(r'<tr data-marketplace="([^"]+)">(.*?)</tr>', page, re.S))
    assert "Refresh from the marketplace" in rows["backmarket"] and "Refresh" not in rows["shop-eu"]
    selects = re.findall(r'<select name="marketplace">(.*?)</select>', page, re.S)
    assert selects and all(re.findall(r"<option[^>]*>([^<]+)<", s) == ["backmarket", "counter", "refurbed"]
                           for s in selects)
    assert re.findall(r"<option>([^<]+)<", syncs_page) == ["backmarket", "refurbed", "shop-eu", "shopify"]
    row = re.search(r'<tr id="account-refurbed".*?</tr>', accounts_page, re.S).group(0)
    assert "sync (cursor pages)" in row and "poll orders" in row and "Sync now" in row and "Disable" not in row


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


def test_a_shopify_row_is_refreshed_topped_up_and_synced_like_the_others(world):
    stock_on_shop(world, "39072857")  # the variation is stocked on a Shopify shop too
    accounts.forget()
    form = {"variation_id": str(world.variation_id), "marketplace": "shop-eu"}

    async def scenario(server):
        client = await client_of(server, "operator")
        csrf = await session_csrf(client)
        page = await (await client.get(f"/variations/{world.variation_id}")).text()
        answers = {}
        for name, path, extra in (("topup", "/stock/topup", {"quantity": "2"}), ("refresh", "/stock/refresh", {}),
                                  ("sync", "/syncs/start", {"force": "1"})):
            response = await client.post(path, data={**form, **extra, "reference": f"R-shop-{name}",
                                                     "csrf_token": csrf}, allow_redirects=False)
            answers[name] = response.status
        await client.close()
        return page, answers

    page, answers = run(world, scenario)
    assert answers == {"topup": 303, "refresh": 303, "sync": 303}
    rows = dict(re.findall(r'<tr data-marketplace="([^"]+)">(.*?)</tr>', page, re.S))
    assert "Refresh from the marketplace" in rows["shop-eu"]
    assert ledger_rows(world, "topup") == [("operator", "console:R-shop-topup")]
    sent = {m.actor_name for m in enqueued(world.broker)}
    assert {"recheck_stock", "fetch_listings_page"} <= sent, sent
