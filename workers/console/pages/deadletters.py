"""Dead letters through ``runtime.dlq``: the filters of ``stocksync dlq list``, one message, retry, purge, history.

Retry and purge are the dead-letter tool's own atomic moves, with the console user as the operator
in its audit stream; a purge is asked to be confirmed first (a page listing what it would delete).
"""
from __future__ import annotations

from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web

from runtime.dlq import parse_since
from workers.console.context import CONSOLE
from workers.console.security import Done, Refused, action, current_user

routes = web.RouteTableDef()

FILTERS = ("queue", "actor", "since", "grep")
MAX_SHOWN = 500


def _filters(values) -> dict[str, str]:
    found = {name: str(values.get(name) or "").strip() for name in FILTERS}
    return {name: value[:200] for name, value in found.items() if value}


def _selection(filters: dict[str, str]) -> dict:
    selection = {"queue": filters.get("queue"), "actor": filters.get("actor"), "grep": filters.get("grep")}
    if filters.get("since"):
        try:
            selection["since"] = parse_since(filters["since"])
        except ValueError as error:
            raise Refused(f"since: {error}") from None
    return selection


def _queues(request: web.Request):
    console = request.app[CONSOLE]
    if console.dead_letters is None:
        raise Refused("dead letters live in Redis: this console runs without REDIS_URL (the in-process demo "
                      "broker keeps none)", status=409)
    return console, console.dead_letters


@routes.get("/deadletters")
async def dead_letters(request: web.Request) -> web.Response:
    """The list, filtered, newest last (as the CLI), and the latest retries and purges."""
    console = request.app[CONSOLE]
    filters = _filters(request.query)
    if console.dead_letters is None:
        return aiohttp_jinja2.render_template("deadletters.html", request, {
            "available": False, "filters": filters, "letters": [], "total": 0, "history": [], "sizes": {}})
    try:
        selection = _selection(filters)
    except Refused as refused:
        raise web.HTTPBadRequest(text=refused.message) from None
    letters = await console.call(console.dead_letters.select, **selection)
    history = await console.call(console.dead_letters.history, 50)
    sizes = await console.call(console.dead_letters.sizes)
    return aiohttp_jinja2.render_template("deadletters.html", request, {
        "available": True, "filters": filters, "letters": letters[-MAX_SHOWN:], "total": len(letters),
        "history": history, "sizes": sizes, "query": urlencode(filters)})


async def _one(console, queues, ident: str):
    if not ident or len(ident) > 100:
        raise Refused("message_id is required")
    found = await console.call(queues.find, ident)
    if not found:
        raise Refused(f"no dead letter {ident} (retried, purged or expired meanwhile?)", status=404)
    if len(found) > 1:
        raise Refused(f"{len(found)} dead letters carry message {ident}: retry them by their Redis id", status=409)
    return found[0]


@routes.get("/deadletters/purge")
@aiohttp_jinja2.template("deadletters_purge.html")
async def confirm_purge(request: web.Request):
    """What a purge with these filters (or of one message) would delete, and the button that does it."""
    try:
        console, queues = _queues(request)
        filters = _filters(request.query)
        ident = request.query.get("message_id", "").strip()
        letters = [await _one(console, queues, ident)] if ident else \
            await console.call(queues.select, **_selection(filters))
    except Refused as refused:
        raise web.HTTPBadRequest(text=refused.message) from None
    return {"filters": filters, "message_id": ident, "letters": letters[:MAX_SHOWN], "total": len(letters)}


@routes.get("/deadletters/{ident}")
@aiohttp_jinja2.template("deadletter.html")
async def dead_letter(request: web.Request):
    """One dead letter: actor, arguments, error, traceback, attempts, times."""
    try:
        console, queues = _queues(request)
        letter = await _one(console, queues, request.match_info["ident"])
    except Refused as refused:
        raise web.HTTPNotFound(text=refused.message) from None
    return {"letter": letter}


def _moved(verb: str, result) -> Done:
    skipped = "; ".join(f"{letter.message_id}: {reason}" for letter, reason in result.skipped[:5])
    message = f"{verb} {len(result.moved)} dead letter(s)" + (f"; skipped {len(result.skipped)} ({skipped})"
                                                              if result.skipped else "")
    return Done(message, "/deadletters", detail=message + ": " + ", ".join(l.message_id for l in result.moved[:50]))


@routes.post("/deadletters/retry")
@action("dlq.retry", role="operator")
async def retry(request: web.Request) -> Done:
    """Put one dead letter back on its queue."""
    console, queues = _queues(request)
    letter = await _one(console, queues, str((await request.post()).get("message_id") or "").strip())
    result = await console.call(queues.retry, [letter], operator=current_user(request).username)
    if not result.moved:
        raise Refused(f"dead letter {letter.message_id} was not retried: {result.skipped[0][1]}", status=409)
    return _moved("put back", result)


@routes.post("/deadletters/retry-all")
@action("dlq.retry_all", role="operator")
async def retry_all(request: web.Request) -> Done:
    """Put back every dead letter that passes the filters."""
    console, queues = _queues(request)
    letters = await console.call(queues.select, **_selection(_filters(await request.post())))
    if not letters:
        raise Refused("no dead letters match", status=409)
    return _moved("put back", await console.call(queues.retry, letters, operator=current_user(request).username))


@routes.post("/deadletters/purge")
@action("dlq.purge", role="operator")
async def purge(request: web.Request) -> Done:
    """Delete one dead letter, or every one that passes the filters, once confirmed."""
    console, queues = _queues(request)
    form = await request.post()
    if form.get("confirm") != "yes":
        raise Refused("a purge must be confirmed (confirm=yes): use the purge page", status=400)
    ident = str(form.get("message_id") or "").strip()
    letters = [await _one(console, queues, ident)] if ident else \
        await console.call(queues.select, **_selection(_filters(form)))
    if not letters:
        raise Refused("no dead letters match", status=409)
    return _moved("purged", await console.call(queues.purge, letters, operator=current_user(request).username))
