"""Stock: SKU search, a variation's stock per marketplace and its ledger; top-up, adjustment, refresh.

Top-ups and adjustments are stock events (the one contract, ``core.events``) booked in PostgreSQL
before the operator is answered, with the user as the ledger's ``actor``; their push is enqueued
after, and a push Redis loses is sent by the sweep.  The reference comes with the form (made when
it was shown, or typed) under the ``console:`` prefix, so the same form sent twice books once and
an operator's reference never takes a producer's.  A refresh enqueues ``recheck_stock`` for the
row: one GET of its listing, applied with the re-check's rules.  The page ends with the SKU's timeline
across every account (:mod:`pipelines.timeline`): a server-rendered SVG chart and the latest entries,
as of the moment its GET form (``as_of``) names.  Each is offered, and accepted, only on the
accounts whose platform can take it (``core.platforms``): a top-up where it can be pushed (or where
nothing syncs it away), a refresh where one listing can be read.
"""
from __future__ import annotations

import uuid

import aiohttp_jinja2
from aiohttp import web

from actors.events import book_and_push
from core.accounts import AccountError
from core.console_rules import console_reference
from core.events import InvalidEvent, make_event
from core.platforms import NotSupported, platform
from core.push_log import PushFilter
from core.timeline import BadMoment
from db import console_queries, push_log
from db.accounts import list_accounts
from pipelines import timeline
from workers.console.context import CONSOLE
from workers.console.security import Done, Refused, action, current_user

routes = web.RouteTableDef()

MAX_SEARCH_RESULTS = 50

#: Pushes shown on a variation's page (the push log has the rest).
LAST_PUSHES = 10


#: The largest id or number a form or query may carry (PostgreSQL's bigint): past it, a 400, not a 500.
MAX_NUMBER = 2**63 - 1


def _int(value, name: str, *, minimum: int | None = None, maximum: int = MAX_NUMBER) -> int:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise Refused(f"{name} must be a whole number, got {str(value)[:40]!r}") from None
    if minimum is not None and number < minimum:
        raise Refused(f"{name} must be at least {minimum}, got {str(number)[:40]}")
    if number > maximum:
        raise Refused(f"{name} must be at most {maximum}, got {str(number)[:40]}")
    return number


def _id(request: web.Request, name: str = "variation_id") -> int:
    value = request.match_info[name]
    if not value.isdigit() or len(value) > 18:
        raise web.HTTPNotFound(text=f"no such {name.replace('_', ' ')}: {value[:40]!r}")
    return int(value)


@routes.get("/stock")
@aiohttp_jinja2.template("stock_search.html")
async def search(request: web.Request):
    """Variations whose SKU starts with ``q``; exactly one found goes straight to its page."""
    console = request.app[CONSOLE]
    prefix = request.query.get("q", "").strip()
    if len(prefix) > 200:
        raise web.HTTPBadRequest(text="q (a SKU prefix) must be at most 200 characters")
    found = await console.read(console_queries.search_variations, prefix, MAX_SEARCH_RESULTS) if prefix else []
    if len(found) == 1 and request.query.get("exact") != "0":
        raise web.HTTPSeeOther(f"/variations/{found[0].id}")
    return {"q": prefix, "found": found, "limit": MAX_SEARCH_RESULTS}


def _variation_page(session, variation_id: int, before_id: int | None, limit: int, options: dict):
    variation = console_queries.get_variation(session, variation_id)
    if variation is None:
        return None
    ledger, more = console_queries.ledger_page(session, variation_id, before_id=before_id, limit=limit)
    able = _accounts(session)
    pushes, _ = push_log.list_pushes(session, PushFilter(sku=variation.sku, limit=LAST_PUSHES))
    return {"variation": variation, "stock": console_queries.stock_rows(session, variation_id), "ledger": ledger,
            "pushes": pushes,
            "more": more, "marketplaces": [code for code, p in able.items() if p.takes_local_changes],
            "refreshable": [code for code, p in able.items() if p.read_one],
            "timeline": timeline_section(session, variation_id, variation.sku, options)}


def timeline_section(session, variation_id: int, sku: str, options: dict) -> timeline.Timeline | None:
    """The page's timeline section (the console bench swaps it for nothing to measure the page without it)."""
    return timeline.timeline(session, variation_id, sku, limit=TIMELINE_ENTRIES, **options)


#: Entries the SKU page lists under its chart (the read API gives more).
TIMELINE_ENTRIES = 100


def _accounts(session) -> dict:
    """The enabled accounts and their platforms (what each can take is a column there)."""
    return {row.code: platform(row.platform) for row in list_accounts(session, enabled_only=True)}


async def _able(console, code: str, capability: str) -> None:
    """Refuse, naming the account and what it cannot do, unless account ``code`` has ``capability``.

    ``push`` is asked for a local change, which an account with no API (nothing syncs it away) takes as is.
    """
    found = (await console.read(_accounts)).get(code)
    if found is None:
        raise Refused(f"marketplace: no enabled account is called {code[:40]!r}")
    if capability == "push" and found.takes_local_changes:
        return
    try:
        found.require(capability, code)
    except NotSupported as refused:
        raise Refused(f"marketplace: {refused}", status=409) from None


@routes.get("/variations/{variation_id}")
@aiohttp_jinja2.template("variation.html")
async def variation(request: web.Request):
    """One variation: totals, stock per marketplace, the first ledger page and the action forms."""
    console = request.app[CONSOLE]
    before = request.query.get("before")
    before_id = _int(before, "before", minimum=1) if before else None
    as_of = request.query.get("as_of")
    try:
        options = timeline.parse_options(as_of=as_of)
    except BadMoment as bad:
        raise Refused(str(bad)) from None
    data = await console.read(_variation_page, _id(request), before_id, console.settings.console_page_size,
                              options)
    if data is None:
        raise web.HTTPNotFound(text=f"no variation {request.match_info['variation_id']}")
    data.update(before=before_id, reference=uuid.uuid4().hex[:12], as_of=(as_of or "").strip()[:40])
    return data


@routes.get("/variations/{variation_id}/ledger")
@aiohttp_jinja2.template("ledger.html")
async def ledger(request: web.Request):
    """One page of the variation's ledger, newest first (``before``: the last id of the previous page)."""
    console = request.app[CONSOLE]
    before = request.query.get("before")
    before_id = _int(before, "before", minimum=1) if before else None
    variation_id = _id(request)

    def load(session):
        found = console_queries.get_variation(session, variation_id)
        if found is None:
            return None
        rows, more = console_queries.ledger_page(session, variation_id, before_id=before_id,
                                                 limit=console.settings.console_page_size)
        return {"variation": found, "ledger": rows, "more": more, "before": before_id}

    data = await console.read(load)
    if data is None:
        raise web.HTTPNotFound(text=f"no variation {variation_id}")
    return data


async def _stock_form(request: web.Request):
    console = request.app[CONSOLE]
    form = await request.post()
    variation_id = _int(form.get("variation_id"), "variation_id", minimum=1)
    found = await console.read(console_queries.get_variation, variation_id)
    if found is None:
        raise Refused(f"no variation {variation_id}", status=404)
    marketplace = str(form.get("marketplace") or "").strip()
    return console, form, found, marketplace


def _event_error(error: InvalidEvent) -> Refused:
    return Refused(str(error))  # names the field: "quantity: must be ..."


@routes.post("/stock/topup")
@action("stock.topup", role="operator")
async def topup(request: web.Request) -> Done:
    """A top-up stock event (pushed to the marketplace as any top-up)."""
    return await _local_event(request, "stock_topup", "quantity", minimum=1)


@routes.post("/stock/adjust")
@action("stock.adjust", role="operator")
async def adjust(request: web.Request) -> Done:
    """A manual adjustment (either sign) as a stock event."""
    return await _local_event(request, "manual_adjustment", "change")


async def _local_event(request: web.Request, kind: str, field: str, *, minimum: int | None = None) -> Done:
    console, form, found, marketplace = await _stock_form(request)
    amount = _int(form.get(field), field, minimum=minimum)
    await _able(console, marketplace, "push")
    typed = str(form.get("reference") or "").strip()
    if not typed:
        raise Refused("reference: must not be empty")
    try:
        event = make_event(kind, marketplace=marketplace, sku=found.sku, reference=console_reference(typed),
                           actor=current_user(request).username, note=str(form.get("note") or "") or None,
                           **{field: amount})
    except InvalidEvent as error:
        raise _event_error(error) from None
    # Booked before the answer: the operator's action survives Redis losing its data.
    try:
        [result], queued = await console.call(book_and_push, [event], sessions=console.sessions,
                                              broker=console.broker, redis=console.redis)
    except (AccountError, NotSupported) as error:  # no such account, or one stocksync cannot push to
        raise Refused(f"marketplace: {error}") from None
    what = f"top-up of {amount}" if kind == "stock_topup" else f"adjustment of {amount:+d}"
    if result.status == "duplicate":
        return Done(f"{what} on {marketplace} was already booked (reference {event.reference})",
                    f"/variations/{found.id}", detail=f"duplicate {event.key}")
    pushed = (("its push enqueued" if result.push_requested else "nothing to push") if queued else
              "its push will be sent by the next sweep (the queue is unavailable)")
    return Done(f"{what} on {marketplace} booked; {pushed}", f"/variations/{found.id}",
                detail=f"booked {event.key}: {result.before} -> {result.after}")


@routes.post("/stock/refresh")
@action("stock.refresh", role="operator")
async def refresh(request: web.Request) -> Done:
    """Read one listing again from the marketplace (``recheck_stock`` with ``refresh``)."""
    console, form, found, marketplace = await _stock_form(request)
    await _able(console, marketplace, "read_one")
    rows = await console.read(console_queries.stock_rows, found.id)
    row = next((row for row in rows if row.marketplace == marketplace), None)
    if row is None or not row.listings:
        raise Refused(f"{found.sku} has no listing on {marketplace} to read", status=409)
    actor = console.broker.get_actor("recheck_stock")
    message = await console.call(actor.send_with_options, args=(marketplace, found.sku),
                                 kwargs={"refresh": True})
    return Done(f"refresh of {marketplace} enqueued", f"/variations/{found.id}",
                detail=f"message {message.message_id}")
