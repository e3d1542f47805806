"""Stock as files in the console over HTTP (real PostgreSQL and Redis): downloads for any role; the
goods-received import's upload, preview and confirm for the Top-up's role, and the hostile posts (bad
CSRF, a viewer, a binary file, a file too big, another user's upload) each a 4xx that books nothing."""
from __future__ import annotations

import csv
import dataclasses
import io
import json

import aiohttp
import pytest
from sqlalchemy import text

from core.platforms import PLATFORMS
from runtime import accounts

from tests.console_support import (add_variation, audit_rows, client_of, enqueued, ledger_rows, run,  # noqa: F401
                                   session_csrf, world)

GOODS = ("sku,account,quantity,reference\n"
         "IPHONE13-128-BLK,backmarket,4,GR-1\n"
         "NOPE,backmarket,1,GR-2\n"
         "IPHONE13-128-BLK,shop-eu,1,GR-3\n"
         "IPHONE13-128-BLK,backmarket,-1,GR-4\n").encode()


def upload_form(csrf: str | None, data: bytes, filename: str = "goods.csv") -> aiohttp.FormData:
    form = aiohttp.FormData()
    if csrf is not None:
        form.add_field("csrf_token", csrf)
    form.add_field("file", data, filename=filename, content_type="text/csv")
    return form


def listed(world) -> int:
    with world.sessions() as session:
        return session.execute(text("SELECT listed FROM marketplace_stock WHERE variation_id = :v"),
                               {"v": world.variation_id}).scalar_one()


def test_any_role_downloads_the_stock_and_the_ledger_streamed(world):
    add_variation(world.sessions, "PIXEL7-128-WHT", listed=2, listing="px-1")

    async def scenario(server):
        client = await client_of(server, "viewer")
        stock = await client.get("/stock/export?format=csv")
        stock_body = await stock.text()
        one = await (await client.get("/stock/export?format=jsonl&sku=PIXEL7-128-WHT")).text()
        ledger = await client.get("/ledger/export?format=jsonl&from=2020-01-01&account=backmarket")
        ledger_body = await ledger.text()
        bad = [(await client.get(path)).status for path in (
            "/stock/export?format=xlsx", "/ledger/export?from=yesterday", "/ledger/export?sku=" + "x" * 201)]
        page = await (await client.get("/stock")).text()
        await client.close()
        return stock, stock_body, one, ledger, ledger_body, bad, page

    stock, stock_body, one, ledger, ledger_body, bad, page = run(world, scenario)
    assert stock.status == 200 and stock.content_type == "text/csv"
    assert stock.headers["Content-Disposition"].startswith('attachment; filename="stock-')
    assert "default-src 'self'" in stock.headers["Content-Security-Policy"]  # a streamed answer has them too
    assert stock.headers["Cache-Control"] == "no-store"
    rows = list(csv.DictReader(io.StringIO(stock_body)))
    assert {(row["account"], row["sku"], row["quantity"]) for row in rows} == {
        ("backmarket", "IPHONE13-128-BLK", "5"), ("backmarket", "PIXEL7-128-WHT", "2")}
    assert [json.loads(line)["listing"] for line in one.splitlines()] == ["px-1"]
    assert ledger.status == 200 and ledger.content_type == "application/x-ndjson" and ledger_body == ""
    assert bad == [400, 400, 400]
    assert 'href="/stock/export?format=csv"' in page and 'href="/stock/import"' not in page  # a viewer: no import


@pytest.fixture
def shop_without_push(monkeypatch):
    """Shopify pushes now: a Shopify that could not stands for a platform that cannot take a local change (GR-3)."""
    monkeypatch.setitem(PLATFORMS, "shopify", dataclasses.replace(PLATFORMS["shopify"], push=False))
    accounts.forget()
    yield
    accounts.forget()


def test_upload_preview_confirm_books_once_and_a_re_import_books_nothing(world, shop_without_push):
    before = listed(world)

    async def scenario(server):
        client = await client_of(server, "operator")
        form = (await (await client.get("/stock/import")).text())
        assert 'enctype="multipart/form-data"' in form
        uploaded = await client.post("/stock/import", data=upload_form(await session_csrf(client), GOODS),
                                     allow_redirects=False)
        location = uploaded.headers["Location"]
        preview = await (await client.get(location)).text()
        booked_before_confirm = ledger_rows(world, "topup")
        confirmed = await client.post(location + "/confirm", data={"csrf_token": await session_csrf(client)},
                                      allow_redirects=False)
        again = await client.post(location + "/confirm", data={"csrf_token": await session_csrf(client)},
                                  allow_redirects=False)
        # The same file again: every line is bad now, the good one "already booked"; confirming is refused.
        second = await client.post("/stock/import", data=upload_form(await session_csrf(client), GOODS),
                                   allow_redirects=False)
        second_preview = await (await client.get(second.headers["Location"])).text()
        second_confirm = await client.post(second.headers["Location"] + "/confirm",
                                           data={"csrf_token": await session_csrf(client)}, allow_redirects=False)
        await client.close()
        return (uploaded.status, location, preview, booked_before_confirm, confirmed, again.status,
                second_preview, second_confirm.status)

    (uploaded, location, preview, booked_before_confirm, confirmed, again, second_preview,
     second_confirm) = run(world, scenario)
    assert uploaded == 303 and location.startswith("/stock/import/")
    assert booked_before_confirm == []  # the preview books nothing
    assert 'data-line="3"' in preview and "unknown SKU" in preview and "Shopify" in preview
    assert "at least 1, got -1" in preview and "1</b> lines to book (4 units)" in preview
    assert confirmed.status == 303
    assert ledger_rows(world, "topup") == [("operator", "console:GR-1")]
    assert listed(world) == before + 4
    assert [message.actor_name for message in enqueued(world.broker)] == ["drain_pushes"]  # then the push
    assert again == 404  # the upload is forgotten once imported
    assert "is already booked on account &#39;backmarket&#39;" in second_preview
    assert second_confirm == 409
    assert ledger_rows(world, "topup") == [("operator", "console:GR-1")] and listed(world) == before + 4
    ok = audit_rows(world, action="stock.import", outcome="ok")
    assert len(ok) == 1 and "booked 1 top-ups (4 units)" in ok[0].detail and "3 bad lines" in ok[0].detail
    [upload] = audit_rows(world, action="stock.import_upload", outcome="ok")[:1]
    assert upload.arguments["file"] == "file 'goods.csv'" and "csrf_token" not in upload.arguments


def test_hostile_posts_get_a_4xx_and_book_nothing(world, shop_without_push):
    async def scenario(server):
        operator = await client_of(server, "operator")
        viewer = await client_of(server, "viewer")
        admin = await client_of(server, "admin")
        csrf = await session_csrf(operator)
        answers = {
            "no csrf": await operator.post("/stock/import", data=upload_form(None, GOODS), allow_redirects=False),
            "bad csrf": await operator.post("/stock/import", data=upload_form("forged", GOODS), allow_redirects=False),
            "viewer": await viewer.post("/stock/import", data=upload_form(await session_csrf(viewer), GOODS),
                                        allow_redirects=False),
            "viewer form": await viewer.get("/stock/import", allow_redirects=False),
            "binary": await operator.post("/stock/import", data=upload_form(
                csrf, b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)), "goods.csv"), allow_redirects=False),
            "latin-1": await operator.post("/stock/import", data=upload_form(
                csrf, "sku,account,quantity,reference\nSKÜ,backmarket,1,r\n".encode("latin-1")), allow_redirects=False),
            "too big": await operator.post("/stock/import", data=upload_form(
                csrf, b"sku,account,quantity,reference\n" + b"X,backmarket,1,r\n" * 4000), allow_redirects=False),
            "far too big": await operator.post("/stock/import", data=upload_form(csrf, b"x" * (400 * 1024)),
                                               allow_redirects=False),
            "no file": await operator.post("/stock/import", data={"csrf_token": csrf, "file": "goods.csv"},
                                           allow_redirects=False),
            "forged token": await operator.post("/stock/import/AAAAAAAAAAAAAAAAAAAAAAAA/confirm",
                                                data={"csrf_token": csrf}, allow_redirects=False),
            "bad token": await operator.get("/stock/import/..%2F..%2Fetc", allow_redirects=False),
        }
        # An upload of the operator's is not the admin's to see or confirm, nor the viewer's.
        mine = await operator.post("/stock/import", data=upload_form(csrf, GOODS), allow_redirects=False)
        location = mine.headers["Location"]
        answers["another user's preview"] = await admin.get(location, allow_redirects=False)
        answers["another user's confirm"] = await admin.post(location + "/confirm",
                                                             data={"csrf_token": await session_csrf(admin)},
                                                             allow_redirects=False)
        answers["viewer confirm"] = await viewer.post(location + "/confirm",
                                                      data={"csrf_token": await session_csrf(viewer)},
                                                      allow_redirects=False)
        # Lines sent back by the client are not read: the kept file is.
        answers["lines sent back"] = await operator.post(location + "/confirm", data={
            "csrf_token": csrf, "sku": "IPHONE13-128-BLK", "account": "backmarket", "quantity": "999",
            "reference": "EVIL"}, allow_redirects=False)
        statuses = {name: (response.status, await response.text()) for name, response in answers.items()}
        for client in (operator, viewer, admin):
            await client.close()
        return statuses

    statuses = run(world, scenario, stock_import_max_bytes=64 * 1024)
    expected = {"no csrf": 403, "bad csrf": 403, "viewer": 403, "viewer form": 403, "binary": 400, "latin-1": 400,
                "too big": 413, "far too big": 413, "no file": 400, "forged token": 404, "bad token": 404,
                "another user's preview": 404, "another user's confirm": 404, "viewer confirm": 403,
                "lines sent back": 303}
    assert {name: status for name, (status, _) in statuses.items()} == expected, statuses
    assert "not a text file" in statuses["binary"][1] and "not UTF-8" in statuses["latin-1"][1]
    assert "more than the 65536 allowed" in statuses["too big"][1]
    # Only the operator's own confirm of the kept file booked, and only its good line, as the file says.
    assert ledger_rows(world, "topup") == [("operator", "console:GR-1")]
    assert {row.outcome for row in audit_rows(world, action="stock.import_upload")} >= {"forbidden", "refused", "ok"}
    assert len(audit_rows(world, outcome="csrf")) == 2
