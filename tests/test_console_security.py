"""The console under attack (issue 16): concurrent guesses, forged and shared addresses, audit floods, a
stream outliving its session, bad durations, operator actions while Redis is gone, and a hostile pass
over every form.  Real PostgreSQL and Redis, the console on aiohttp's test server.
"""
from __future__ import annotations

import asyncio
import threading
from collections import Counter
from urllib.parse import unquote

import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import text

from core.console_rules import client_address, parse_networks
from db import users
from runtime.local_servers import free_port
from tests.console_support import (PASSWORD, actions, add_dead_letter, audit_rows, client_of, csrf_of, ledger_rows,
                                   login, run, session_csrf, world)  # noqa: F401
from workers.console.app import build_console_app
from workers.console.security import FLASH_COOKIE

WRONG = "wrong password!"


async def _login_token(client) -> str:
    return csrf_of(await (await client.get("/login")).text())


async def _post_login(client, username: str, password: str, token: str, forwarded_for: str | None = None):
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    response = await client.post("/login", data={"username": username, "password": password, "csrf_token": token},
                                 headers=headers, allow_redirects=False)
    await response.read()
    return response.status


@pytest.fixture
def password_checks(monkeypatch) -> list[str]:
    """Every password the console checks (the username it was for), counted around ``users.authenticate``."""
    checked: list[str] = []
    lock = threading.Lock()
    original = users.authenticate

    def counting(session, username, password):
        with lock:
            checked.append(username)
        return original(session, username, password)

    monkeypatch.setattr(users, "authenticate", counting)
    return checked


# -- login throttling --------------------------------------------------------------------------------------


def test_thirty_concurrent_guesses_check_at_most_the_limit_of_passwords(world, password_checks):
    async def scenario(server):
        client = await client_of(server)
        token = await _login_token(client)
        guesses = [WRONG] * 29 + [PASSWORD]
        statuses = await asyncio.gather(*(_post_login(client, "operator", guess, token) for guess in guesses))
        await client.close()
        return Counter(statuses)

    statuses = run(world, scenario, console_login_max_failures=5, console_login_max_failures_per_address=100)
    assert len(password_checks) == 5, password_checks
    assert statuses[429] == 25 and statuses[401] + statuses[303] == 5, statuses
    # The counters carry their expiry from the first count on.
    keys = world.redis.keys(f"{world.settings.redis_namespace}:console:login:*")
    assert keys and all(0 < world.redis.pttl(key) <= 15 * 60 * 1000 for key in keys)


def test_a_forged_x_forwarded_for_from_an_untrusted_peer_is_ignored(world, password_checks):
    async def scenario(server):
        client = await client_of(server)
        token = await _login_token(client)
        statuses = [await _post_login(client, "operator", WRONG, token, forwarded_for=f"198.51.100.{n}")
                    for n in range(10)]
        await client.close()
        return statuses

    statuses = run(world, scenario)  # the world's limit: 3 per (account, address)
    assert statuses == [401] * 3 + [429] * 7
    assert len(password_checks) == 3
    addresses = {row.address for row in _audit_with_address(world, "login")}
    assert addresses == {"127.0.0.1"}


def _audit_with_address(world, action: str) -> list:
    with world.sessions() as session:
        return session.execute(text("SELECT outcome, address, detail FROM console_audit WHERE action = :a ORDER BY id"),
                               {"a": action}).all()


def test_the_client_is_the_right_most_address_not_a_trusted_proxy():
    trusted = parse_networks("127.0.0.0/8, 10.0.0.0/8, 2001:db8::/32")
    assert client_address("127.0.0.1", ["6.6.6.6, 203.0.113.9, 10.1.2.3"], trusted) == "203.0.113.9"
    assert client_address("127.0.0.1", ["6.6.6.6", "203.0.113.9"], trusted) == "203.0.113.9"  # two headers
    assert client_address("127.0.0.1", [], trusted) == "127.0.0.1"
    assert client_address("127.0.0.1", ["10.0.0.1, 10.0.0.2"], trusted) == "10.0.0.1"  # every hop trusted
    assert client_address("::ffff:127.0.0.1", ["2001:db8::1, 192.0.2.1"], trusted) == "192.0.2.1"
    assert client_address("127.0.0.1", ["1.2.3.4, unknown"], trusted) == "unknown"
    # An untrusted peer is the client, whatever it says; loopback is not trusted unless listed.
    assert client_address("192.0.2.50", ["10.0.0.1"], trusted) == "192.0.2.50"
    assert client_address("127.0.0.1", ["192.0.2.1"], ()) == "127.0.0.1"
    with pytest.raises(ValueError, match="'10.0.0.300/8' is not an IP address or a CIDR"):
        parse_networks("10.0.0.0/8, 10.0.0.300/8")


def test_behind_a_trusted_proxy_one_address_guessing_locks_out_nobody_else(world, password_checks):
    async def scenario(server):
        attacker = await client_of(server)
        token = await _login_token(attacker)
        guesses = [await _post_login(attacker, name, WRONG, token, forwarded_for=f"6.6.6.6, 203.0.113.5")
                   for name in ("operator", "admin", "viewer") * 10]
        others = []
        for name, address in (("admin", "198.51.100.7"), ("operator", "198.51.100.8")):
            client = await client_of(server)
            others.append(await _post_login(client, name, PASSWORD, await _login_token(client),
                                            forwarded_for=address))
            await client.close()
        # The same address on another account still waits.
        last = await _post_login(attacker, "admin", PASSWORD, token, forwarded_for="203.0.113.5")
        await attacker.close()
        return guesses, others, last

    guesses, others, last = run(world, scenario, console_trusted_proxies="127.0.0.0/8")
    assert guesses.count(401) == 6 and guesses.count(429) == 24  # the address's 6, then it waits
    assert others == [303, 303] and last == 429
    rows = _audit_with_address(world, "login")
    assert {row.address for row in rows if row.outcome == "refused"} == {"203.0.113.5"}
    assert {row.address for row in rows if row.outcome == "ok"} == {"198.51.100.7", "198.51.100.8"}


def test_a_good_password_forgets_its_count_and_waits_grow(world):
    from workers.console.limits import LoginThrottle

    throttle = LoginThrottle(world.redis, "t", window_s=60, free_per_account=2, free_per_address=50,
                             base_delay_s=10, max_delay_s=25)
    assert [throttle.reserve("anna", "192.0.2.1").allowed for _ in range(3)] == [True, True, False]
    refused = throttle.reserve("anna", "192.0.2.1")
    assert not refused.allowed and 9 < refused.wait_s <= 10 and "this account" in refused.message()
    assert throttle.reserve("anna", "192.0.2.2").allowed  # another address: its own count
    throttle.succeeded("anna", "192.0.2.1")
    assert throttle.reserve("anna", "192.0.2.1").allowed
    # Past the free ones each wait doubles, up to the cap (each time, pretend the wait has passed).
    pair = "t:console:login:pair:bo:192.0.2.9"
    assert [throttle.reserve("bo", "192.0.2.9").allowed for _ in range(2)] == [True, True]
    waits = []
    for _ in range(4):
        waits.append(round(throttle.reserve("bo", "192.0.2.9").wait_s))
        world.redis.hset(pair, "last", 0)
        assert throttle.reserve("bo", "192.0.2.9").allowed
    assert waits == [10, 20, 25, 25]
    assert 0 < world.redis.pttl(pair) <= 60_000


# -- the audit under a flood -------------------------------------------------------------------------------


def test_a_flood_of_refused_logins_writes_one_audit_row_per_kind_and_window(world, password_checks):
    async def scenario(server):
        client = await client_of(server)
        token = await _login_token(client)
        bad_token = await asyncio.gather(*(_post_login(client, "admin", WRONG, "not-the-token") for _ in range(300)))
        malformed = [await _post_login(client, "", "", token) for _ in range(20)]
        throttled = [await _post_login(client, "admin", WRONG, token) for _ in range(50)]
        # The window passes (its marker expires): the next one is audited, saying how many were not.
        for key in world.redis.keys(f"{world.settings.redis_namespace}:console:audit-burst:login:csrf:*"):
            if not key.endswith(b":suppressed"):
                world.redis.delete(key)
        after = await _post_login(client, "admin", WRONG, "not-the-token")
        await client.close()
        return bad_token, malformed, throttled, after

    bad_token, malformed, throttled, after = run(world, scenario)
    assert set(bad_token) == {403} and set(malformed) == {400} and after == 403
    assert throttled == [401] * 3 + [429] * 47 and len(password_checks) == 3
    rows = _audit_with_address(world, "login")
    assert Counter(row.outcome for row in rows) == {"csrf": 2, "malformed": 1, "refused": 3, "throttled": 1}
    assert "299 more from this address" in [row.detail for row in rows if row.outcome == "csrf"][-1]


# -- the live stream ---------------------------------------------------------------------------------------


async def _read_until_end(response, timeout_s: float = 10.0) -> list[bytes]:
    events = []

    async def read():
        while True:
            event = await response.content.readuntil(b"\n\n")
            events.append(event)
            if event.startswith(b"event: end"):
                return

    await asyncio.wait_for(read(), timeout_s)
    return events


@pytest.mark.parametrize("ending", ["logout", "disable"])
def test_the_live_stream_ends_with_its_session(world, ending):
    async def scenario(server):
        client = await client_of(server, "operator")
        csrf = await session_csrf(client)
        stream = await client.get("/syncs/stream")
        first = await stream.content.readuntil(b"\n\n")
        if ending == "logout":
            assert (await client.post("/logout", data={"csrf_token": csrf}, allow_redirects=False)).status == 303
        else:
            with world.sessions() as session:
                users.set_active(session, "operator", False)
                session.commit()
        rest = await _read_until_end(stream)
        stream.close()
        await client.close()
        return first, rest

    first, rest = run(world, scenario)
    assert first.startswith(b"event: progress")
    assert rest[-1] == b'event: end\ndata: {"session": "ended"}\n\n'
    assert len(rest) <= 3  # at most a tick or two after the session ended, not hours


# -- bad durations -----------------------------------------------------------------------------------------


def test_since_out_of_bounds_is_a_400_naming_it(world):
    async def scenario(server):
        client = await client_of(server, "operator")
        csrf = await session_csrf(client)
        answers = []
        for path in ("/deadletters?since=99999999999d", "/deadletters?since=" + "9" * 400 + "w",
                     "/deadletters/purge?since=3651d", "/deadletters?since=9999-12-31T23:59:59-23:59"):
            response = await client.get(path)
            answers.append((response.status, await response.text()))
        response = await client.post("/deadletters/retry-all", data={"since": "99999999999d", "csrf_token": csrf},
                                     allow_redirects=False)
        answers.append((response.status, await response.text()))
        good = (await client.get("/deadletters?since=3650d")).status
        await client.close()
        return answers, good

    answers, good = run(world, scenario)
    for status, body in answers:
        assert status == 400 and "since" in body, (status, body[-300:])
    assert "at most 3650d" in answers[0][1] and good == 200


# -- operator actions without Redis ------------------------------------------------------------------------


def test_a_console_top_up_is_booked_in_postgresql_when_the_push_cannot_be_enqueued(world):
    from dramatiq.brokers.redis import RedisBroker

    from pipelines.events import sweep

    gone = RedisBroker(url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    gone.declare_queue("stock-push")
    gone.declare_queue("stock-recheck")

    async def scenario():
        app = build_console_app(world.settings, sessions=world.sessions, redis=world.redis, broker=gone,
                                dead_letters=world.dead_letters, environ=world.environ)
        server = TestServer(app)
        await server.start_server()
        try:
            client = await client_of(server, "operator")
            csrf = await session_csrf(client)
            form = {"variation_id": str(world.variation_id), "marketplace": "backmarket", "quantity": "3",
                    "reference": "PO-77", "csrf_token": csrf}
            response = await client.post("/stock/topup", data=form, allow_redirects=False)
            again = await client.post("/stock/topup", data=form, allow_redirects=False)
            await client.close()
            return [(r.status, unquote(r.cookies[FLASH_COOKIE].value)) for r in (response, again)]
        finally:
            await server.close()

    (status, said), (again, said_again) = asyncio.run(scenario())
    assert status == again == 303
    assert "top-up of 3 on backmarket booked; its push will be sent by the next sweep" in said
    assert "already booked (reference console:PO-77)" in said_again
    assert ledger_rows(world, "topup") == [("operator", "console:PO-77")]  # booked once, before the answer
    with world.sessions() as session:
        row = session.execute(text("SELECT listed, push_state FROM marketplace_stock WHERE variation_id = :v"),
                              {"v": world.variation_id}).one()
        assert (row.listed, row.push_state) == (8, "pending")
    # The sweep finds the row waiting for its push (and forces a push drain).
    assert sweep("backmarket")[1] == 1


# -- a hostile pass over every form ------------------------------------------------------------------------


HUGE = "9" * 100_000


def _hostile_forms(form: dict) -> list[dict]:
    """Every field missing, each field of the wrong type, huge, negative-huge, NUL, and a list."""
    fields = list(form) or ["unexpected"]
    variants = [{}]
    for value in ("not a number", HUGE, "-" + "9" * 30, "\x00", "ü" * 300, "1e9", " "):
        variants.append({**{k: str(v) for k, v in form.items()}, **{name: value for name in fields}})
    return variants


def test_a_hostile_pass_over_every_form_answers_4xx_never_500(world):
    async def scenario(server):
        client = await client_of(server, "admin")
        csrf = await session_csrf(client)
        answers: list[tuple[str, str, int]] = []

        async def post(path, what, **kwargs):
            response = await client.post(path, allow_redirects=False, **kwargs)
            await response.read()
            answers.append((path, what, response.status))

        for name, path, _, form in actions(world):
            path = path.format(rule=1)
            for n, variant in enumerate(_hostile_forms(form)):
                await post(path, f"variant {n}", data={**variant, "csrf_token": csrf})
            await post(path, "bad csrf", data={**{k: str(v) for k, v in form.items()}, "csrf_token": "nope"})
            await post(path, "broken multipart", data=b"--x\r\nnonsense",
                       headers={"Content-Type": "multipart/form-data; boundary=x", "X-CSRF-Token": csrf})
            await post(path, "no boundary", data=b"a=b",
                       headers={"Content-Type": "multipart/form-data", "X-CSRF-Token": csrf})
            await post(path, "bad utf-8", data=f"csrf_token={csrf}&{'&'.join(f'{k}=%ED%A0%80%FF' for k in form)}",
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
            await post(path, "too large", data={"csrf_token": csrf, "x": "y" * 300_000})
            await post(path, "json", json={"csrf_token": csrf}, headers={"X-CSRF-Token": csrf})
        for what, data in (("missing", {}), ("huge", {"username": HUGE, "password": HUGE, "csrf_token": HUGE}),
                           ("nul", {"username": "\x00", "password": "\x00", "csrf_token": "\x00"})):
            anonymous = await client_of(server)
            response = await anonymous.post("/login", data=data, allow_redirects=False)
            answers.append(("/login", what, response.status))
            await anonymous.close()
        for path in ("/variations/1/ledger?before=" + HUGE[:30], "/audit?before=" + HUGE[:30], "/stock?q=" + HUGE[:300],
                     f"/variations/{world.variation_id}?before=99999999999999999999", "/alerts?state=%00",
                     "/deadletters?since=%00", "/deadletters/" + "x" * 200, "/syncs/99999999999999999"):
            response = await client.get(path, allow_redirects=False)
            answers.append((path, "query", response.status))
        await client.close()
        return answers

    answers = run(world, scenario)
    statuses = Counter(status // 100 * 100 for _, _, status in answers)
    assert len(answers) == len(actions(world)) * 14 + 3 + 8
    assert statuses[500] == 0, [answer for answer in answers if answer[2] >= 500]
    # Every hostile post is refused (4xx), but those of actions without fields: a form with none, or with
    # unknown ones, is all they take.
    no_fields = {path.format(rule=1) for _, path, _, form in actions(world) if not form}
    fieldless = [answer for answer in answers if answer[0] in no_fields
                 and (answer[1].startswith("variant") or answer[1] in ("json", "bad utf-8"))]
    assert [answer for answer in answers if not 400 <= answer[2] < 500 and answer not in fieldless] == []
