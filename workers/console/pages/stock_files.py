"""Stock as files in the console: the stock and ledger downloads (any role), and a goods-received import
(the Top-up's role): upload, preview, confirm.

An upload is checked at once (a file that cannot be read is a 4xx naming why) and kept in Redis for an
hour under a random token, for its uploader only.  The preview and the confirm each read the kept file
again and check it against the database as it is then: the confirm trusts nothing the browser sends
back but the token.  The confirm books the good lines as the Top-up does (``actors.events.book_and_push``,
the user as the ledger's actor, references under ``console:``), so a file imported twice books once.
"""
from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone
from pathlib import PurePath

import aiohttp_jinja2
from aiohttp import web

from actors.events import book_and_push
from core.stock_files import COLUMNS, MEDIA_TYPES, FileTooBig, StockFileError, check_format, parse_bound
from pipelines.stock_files import export_chunks, preview_import
from workers.console.context import CONSOLE
from workers.console.security import Done, Refused, action, current_user, require_role

routes = web.RouteTableDef()

#: How long an upload waits for its confirm.
UPLOAD_TTL_S = 3600

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


# -- downloads -------------------------------------------------------------------------------------------


def _filter(request: web.Request, name: str) -> str | None:
    value = request.query.get(name, "").strip()
    if len(value) > 200:
        raise Refused(f"{name} must be at most 200 characters")
    return value or None


async def _download(request: web.Request, kind: str, **filters) -> web.StreamResponse:
    """The ``kind`` export streamed as it is read, a page of rows per write."""
    console = request.app[CONSOLE]
    try:
        fmt = check_format(request.query.get("format", "csv"))
    except ValueError as error:
        raise Refused(str(error)) from None
    chunks = export_chunks(kind, fmt, sessions=console.sessions, **filters)
    # The header and the first page before answering: a database that is down is an error page, not a cut file.
    first = [await console.call(next, chunks, ""), await console.call(next, chunks, "")]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    response = web.StreamResponse(headers={"Content-Disposition": f'attachment; filename="{kind}-{stamp}.{fmt}"'})
    response.content_type = MEDIA_TYPES[fmt]
    response.charset = "utf-8"
    await response.prepare(request)
    for chunk in first:
        await response.write(chunk.encode())
    while chunk := await console.call(next, chunks, ""):
        await response.write(chunk.encode())
    await response.write_eof()
    return response


@routes.get("/stock/export")
async def stock_export(request: web.Request) -> web.StreamResponse:
    """Every account's stock of every SKU (``account``, ``sku`` filters; ``format`` csv or jsonl)."""
    return await _download(request, "stock", account=_filter(request, "account"), sku=_filter(request, "sku"))


@routes.get("/ledger/export")
async def ledger_export(request: web.Request) -> web.StreamResponse:
    """Ledger rows with event time in [``from``, ``to``) (``account``, ``sku`` filters; ``format``)."""
    try:
        since = parse_bound(request.query.get("from"), "from")
        until = parse_bound(request.query.get("to"), "to")
    except ValueError as error:
        raise Refused(str(error)) from None
    return await _download(request, "ledger", since=since, until=until, account=_filter(request, "account"),
                           sku=_filter(request, "sku"))


# -- goods-received import ---------------------------------------------------------------------------------


def _key(request: web.Request, token: str) -> str:
    return f"{request.app[CONSOLE].settings.redis_namespace}:console:import:{token}"


async def _preview(request: web.Request, data: bytes, filename: str):
    console = request.app[CONSOLE]
    try:
        return await console.call(preview_import, data, actor=current_user(request).username,
                                  max_bytes=console.settings.stock_import_max_bytes,
                                  note=f"goods received: {filename}", sessions=console.sessions)
    except StockFileError as error:
        raise Refused(f"{filename}: {error}", status=413 if isinstance(error, FileTooBig) else 400) from None


async def _kept(request: web.Request) -> tuple[str, bytes, str]:
    """The token, the kept file and its name, if this user uploaded it and it has not expired or been imported."""
    token = request.match_info["token"]
    stored = await request.app[CONSOLE].call(request.app[CONSOLE].redis.hgetall, _key(request, token)) \
        if _TOKEN.match(token) else {}
    if not stored or stored.get(b"user", b"").decode() != current_user(request).username:
        raise Refused("no such upload: it was imported already, has expired (an hour) or is another user's: "
                      "upload the file again", status=404)
    return token, stored[b"data"], stored[b"filename"].decode()


def _filename(field) -> str:
    name = PurePath(str(getattr(field, "filename", "") or "upload.csv").replace("\\", "/")).name
    return "".join(character for character in name if character.isprintable())[:100] or "upload.csv"


@routes.get("/stock/import")
@require_role("operator")
@aiohttp_jinja2.template("stock_import.html")
async def import_form(request: web.Request):
    """The upload form, and the file's format."""
    return {"columns": COLUMNS, "max_bytes": request.app[CONSOLE].settings.stock_import_max_bytes}


@routes.post("/stock/import")
@action("stock.import_upload", role="operator")
async def upload(request: web.Request) -> Done:
    """Check an uploaded goods-received CSV and keep it for its preview and confirm."""
    console = request.app[CONSOLE]
    field = (await request.post()).get("file")
    if not hasattr(field, "file"):
        raise Refused("file: choose a goods-received CSV to upload")
    filename = _filename(field)
    data = field.file.read(console.settings.stock_import_max_bytes + 1)
    preview = await _preview(request, data, filename)
    token = secrets.token_urlsafe(24)
    key = _key(request, token)

    def keep() -> None:
        with console.redis.pipeline() as pipe:
            pipe.hset(key, mapping={"user": current_user(request).username, "filename": filename, "data": data})
            pipe.expire(key, UPLOAD_TTL_S)
            pipe.execute()

    await console.call(keep)
    return Done(f"{filename}: {len(preview.good)} lines to book, {len(preview.bad)} bad: check and confirm",
                f"/stock/import/{token}", detail=f"upload {token[:8]}: {filename}, {len(data)} bytes, "
                                                 f"{len(preview.good)} good lines, {len(preview.bad)} bad")


upload.takes_upload = True  # type: ignore[attr-defined]  # its body may be STOCK_IMPORT_MAX_BYTES


@routes.get("/stock/import/{token}")
@require_role("operator")
@aiohttp_jinja2.template("stock_import_preview.html")
async def preview_page(request: web.Request):
    """What the kept upload would book now, and every line it would not (books nothing)."""
    token, data, filename = await _kept(request)
    return {"token": token, "filename": filename, "preview": await _preview(request, data, filename)}


@routes.post("/stock/import/{token}/confirm")
@action("stock.import", role="operator")
async def confirm(request: web.Request) -> Done:
    """Book every good line of the kept upload (checked again now) as top-ups, then forget the upload."""
    console = request.app[CONSOLE]
    token, data, filename = await _kept(request)
    preview = await _preview(request, data, filename)
    if not preview.good:
        raise Refused(f"{filename}: no line can be booked ({len(preview.bad)} bad)", status=409)
    results, queued = await console.call(book_and_push, preview.events, sessions=console.sessions,
                                         broker=console.broker, redis=console.redis)
    await console.call(console.redis.delete, _key(request, token))
    booked = sum(result.status == "applied" for result in results)
    pushed = "their pushes enqueued" if queued else "their pushes will be sent by the next sweep"
    message = (f"{filename}: booked {booked} top-ups ({preview.units} units); {pushed}"
               + (f"; {len(results) - booked} were booked meanwhile (not again)" if booked < len(results) else "")
               + (f"; {len(preview.bad)} bad lines not booked" if preview.bad else ""))
    return Done(message, "/stock/import", detail=f"{message} (upload {token[:8]})")
