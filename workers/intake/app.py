"""The HTTP intake (``stocksync serve``): order webhooks, the signed producer endpoint, the read API.

Routes:

- ``POST /webhooks/refurbed/{secret}``: Refurbed's "Instant Order Notification", ``{"order_id": n}``,
  unsigned: the secret in the URL (compared in constant time, never logged) is what proves the
  sender.  The body is not trusted beyond the id: ``refurbed_order_notified`` re-fetches the order.
- ``POST /webhooks/shopify``: ``orders/create`` and ``orders/cancelled``; ``X-Shopify-Hmac-Sha256``
  verified in constant time over the raw body; ``X-Shopify-Webhook-Id`` remembered in Redis (SET NX
  with a TTL) so a re-delivery is answered 200 and not enqueued again.  The headers are not signed:
  what is booked, and the delivery's age (``WEBHOOK_MAX_AGE_S``), come from the body.
- ``POST /events``: in-house producers; ``X-Stocksync-Signature: t=..,v1=..`` (HMAC-SHA256 over
  ``"<t>." + body``, 300 s tolerance); one event ``{"type": "order_created", ...}`` or a batch
  ``{"events": [...]}``, validated whole before any is enqueued; booked under the key's own name
  (``producer:<PRODUCER_KEY_ID>``), whatever ``actor`` or ``source`` the body gives.
- ``GET /stock?sku=...`` and ``GET /variations/{id}/stock``: stock per marketplace with
  ``last_synced_at``, from PostgreSQL (one indexed query on a psycopg async pool), no API call;
  only with ``Authorization: Bearer <a token of READ_API_TOKENS>``.
- ``GET /skus/{sku}/timeline?as_of=&since=&limit=``: the SKU's timeline across every account
  (:mod:`pipelines.timeline`): every account's state as of ``as_of`` (default now) and the latest
  ``limit`` entries (ledger rows, reads, orders, pushes) of ``[since, as_of]`` in time order; same tokens.
- ``GET /pushes``: the push log (filters ``account``, ``state``, ``since``, ``until``, ``sku``;
  paged by ``before`` and ``limit``), with the counts per state; the same token.
- ``GET /healthz`` (the process answers) and ``GET /readyz`` (Redis and PostgreSQL reachable, the
  schema at the migrations' head: 200 ``{"status": "ok"}`` or 503 ``{"status": "not ok"}``; what is
  wrong only to a caller with a read token).

A public proxy forwards ``/webhooks/...`` and ``POST /events`` only: the rest is for the inside.

Answers are JSON.  A bad request gets a 4xx saying what is wrong and nothing is enqueued; an
accepted one is enqueued and answered 202.  Whatever the sender repeats, the ledger's unique
idempotency key is the last guard: the dedupe here only saves work.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

import dramatiq
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from psycopg_pool import PoolTimeout
from sqlalchemy.exc import DBAPIError

from core.console_rules import CONSOLE_REFERENCE_PREFIX
from core.events import InvalidStockEvent, StockEvent, check_sku
from core.push_log import BadPushFilter, parse_filter
from core.timeline import BadMoment
from db import push_log
from db.engine import session_factory
from pipelines import timeline
from pipelines.events import check_accounts
from pipelines.orders import SHOPIFY_TOPICS, MalformedOrder, shopify_body_time, shopify_order_events
from runtime import accounts, metrics, queues, resources
from runtime.failures import is_outage
from runtime.health import ReadinessProbe, answer, public_answer
from runtime.heap import settle_for_serving
from runtime.producer import REDIS_UNAVAILABLE, EventsNotSent, StockEvents
from runtime.settings import Settings, get_settings
from workers.intake import auth

logger = logging.getLogger(__name__)

#: Most events one signed request may carry.
MAX_BATCH = 1000

#: Deepest JSON nesting a body may have (an order is 3 levels deep): deeper is refused, not parsed on.
MAX_JSON_DEPTH = 32

#: How long a request waits for Redis before the intake answers 503: webhook senders give up on
#: a request after a few seconds (Shopify: 5 s) and retry later, which is what Retry-After asks.
REDIS_WAIT_S = 2.0
RETRY_AFTER_S = 10

#: How long a read waits for a database connection before answering 503 (seconds).
READ_WAIT_S = 5.0

_SECRET_IN_PATH = re.compile(r"^(/webhooks/refurbed/)[^/?]+")

SETTINGS_KEY = web.AppKey("settings", Settings)
EVENTS_KEY = web.AppKey("events", StockEvents)
READER_KEY = web.AppKey("reader", object)
READY_KEY = web.AppKey("ready", ReadinessProbe)
READ_TOKENS_KEY = web.AppKey("read_tokens", list)
DATABASE_URL_KEY = web.AppKey("database_url", str)


def redact_path(path: str) -> str:
    """``path`` with the Refurbed webhook secret replaced, fit for a log line."""
    return _SECRET_IN_PATH.sub(r"\1<redacted>", path)


class RedactingAccessLogger(AbstractAccessLogger):
    """An access log of webhooks, events and errors that never writes the Refurbed secret (it is in the URL).

    Successful reads are not logged: they are the high-volume path, and a line each would cost
    more than the read itself.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """One line per request: method, redacted path, status, size, milliseconds."""
        if request.method == "GET" and response.status < 400:
            return
        self.logger.info("%s %s %s %s %.1fms", request.method, redact_path(request.path), response.status,
                         response.body_length, time * 1000)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _count_requests(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "(unmatched)"
        metrics.intake_request(route, status, time.perf_counter() - started)


@web.middleware
async def _json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _error(error.status, error.reason if error.status != 413 else
                      f"the body is larger than the {request.app[SETTINGS_KEY].intake_max_body_bytes} bytes accepted")
    except _BadRequest as bad:
        return _error(400, str(bad))
    except (EventsNotSent, *REDIS_UNAVAILABLE) as down:
        # Nothing was enqueued (or the caller may not know it was): the sender retries later.
        logger.warning("intake: Redis unavailable on %s %s: %s", request.method, redact_path(request.path),
                       type(down).__name__)
        response = _error(503, "the event queue is unavailable: retry later (sending the same again is harmless)")
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response
    except Exception as error:
        if is_outage(error) or isinstance(error, PoolTimeout):
            # PostgreSQL (or Redis) is unreachable: not the request's fault, and it may work later.
            logger.warning("intake: %s unreachable on %s %s", type(error).__name__, request.method,
                           redact_path(request.path))
            response = _error(503, "the stock database is unavailable: retry later")
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
            return response
        # The path is redacted: the traceback must not carry the Refurbed secret to the logs.
        logger.exception("intake failed on %s %s", request.method, redact_path(request.path))
        return _error(500, "internal error")


def build_intake_app(settings: Settings | None = None, *, broker: dramatiq.Broker | None = None,
                     database_url: str | None = None) -> web.Application:
    """The intake's aiohttp application.

    Parameters:
      settings(Settings): Default: the process's settings.
      broker(dramatiq.Broker): Where events are enqueued; default the fleet's broker.
      database_url(str): The read API's database; default the process's (``DATABASE_URL``).
    """
    settings = settings or get_settings()
    app = web.Application(middlewares=[_count_requests, _json_errors], client_max_size=settings.intake_max_body_bytes)
    app[SETTINGS_KEY] = settings
    app[EVENTS_KEY] = StockEvents(broker, retry_s=REDIS_WAIT_S)
    app[READER_KEY] = None
    app[READY_KEY] = ReadinessProbe(settings.redis_url, database_url or resources.database_url)
    app[READ_TOKENS_KEY] = auth.token_list(settings.read_api_tokens.get_secret_value())
    app[DATABASE_URL_KEY] = database_url or ""
    app.router.add_post("/webhooks/refurbed/{secret}", refurbed_webhook)
    app.router.add_post("/webhooks/shopify", shopify_webhook)
    app.router.add_post("/events", producer_events)
    app.router.add_get("/stock", stock_by_sku)
    app.router.add_get("/variations/{variation_id}/stock", stock_by_variation)
    # A SKU may hold '/': the route takes the rest of the path up to the last '/timeline'.
    app.router.add_get("/skus/{sku:.+}/timeline", sku_timeline)
    app.router.add_get("/pushes", pushes)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)

    async def open_reader(app: web.Application) -> None:
        reader = StockReader(database_url or resources.database_url(), pool_size=settings.intake_read_pool_size)
        await reader.open()
        app[READER_KEY] = reader

    async def close_resources(app: web.Application) -> None:
        if app[READER_KEY] is not None:
            await app[READER_KEY].close()
        await resources.close_loop_resources()

    app.on_startup.append(open_reader)
    app.on_cleanup.append(close_resources)
    return app


async def _enqueue(request: web.Request, send: Callable[[], Any]) -> Any:
    # The broker's client blocks: keep the event loop (and the read API) free while Redis answers.
    return await asyncio.to_thread(send)


async def _json_body(request: web.Request, raw: bytes | None = None) -> Any:
    raw = await request.read() if raw is None else raw
    try:
        body = json.loads(raw)
    except ValueError:  # also a body that is not UTF-8, and a number of more than 4300 digits
        raise _BadRequest("the body is not valid JSON") from None
    except RecursionError:
        raise _BadRequest(f"the body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    _check_depth(body)
    return body


def _check_depth(body: Any) -> None:
    # Iterative: a recursive walk would hit the very limit it guards against.
    level = [body]
    for _ in range(MAX_JSON_DEPTH):
        level = [child for value in level if isinstance(value, (dict, list))
                 for child in (value.values() if isinstance(value, dict) else value)]
        if not level:
            return
    if any(isinstance(value, (dict, list)) for value in level):
        raise _BadRequest(f"the body is nested more than {MAX_JSON_DEPTH} levels deep")


class _BadRequest(Exception):
    """Answered 400 with this message; nothing was enqueued."""


# -- Refurbed ------------------------------------------------------------------------------------


async def refurbed_webhook(request: web.Request) -> web.Response:
    """``{"order_id": n}`` from Refurbed: check the URL secret, enqueue the re-fetch, answer 202."""
    settings = request.app[SETTINGS_KEY]
    given = request.match_info["secret"]
    main = accounts.main_webhook_account("refurbed", settings)
    matches = _secret_matches([main] if main else [], given)
    if not matches:
        # Not the main account's (checked without the database): another Refurbed account's, if any.
        others = await asyncio.to_thread(accounts.webhook_secrets, "refurbed", settings=settings)
        if main is None and not others:
            return _error(404, "Refurbed webhooks are not enabled here (REFURBED_WEBHOOK_SECRET is not set)")
        matches = _secret_matches(others, given)
        if not matches:
            return _error(403, "wrong webhook secret in the URL")
    body = await _json_body(request)
    if not isinstance(body, dict) or "order_id" not in body:
        raise _BadRequest('expected {"order_id": <positive integer>}')
    order_id = body["order_id"]
    if isinstance(order_id, str) and order_id.isascii() and order_id.isdigit() and len(order_id) <= 19:
        order_id = int(order_id)
    if isinstance(order_id, bool) or not isinstance(order_id, int) or not 0 < order_id < 2**63:
        shown = json.dumps(order_id)[:40] if isinstance(order_id, (str, int, float)) or order_id is None \
            else f"a JSON {'object' if isinstance(order_id, dict) else 'array'}"
        raise _BadRequest(f"order_id must be a positive integer, got {shown}")
    # Addressed by name, as the producer API does: the intake declares no actors.
    received_at = datetime.now(timezone.utc).isoformat()
    message = dramatiq.Message(queue_name=queues.ORDERS, actor_name="refurbed_order_notified", args=(),
                               kwargs={"order_id": str(order_id), "received_at": received_at,
                                       "account": matches[0]}, options={})
    enqueued = await _enqueue(request, lambda: request.app[EVENTS_KEY].enqueue(message))
    return web.json_response({"accepted": True, "order_id": order_id, "message_id": enqueued.message_id}, status=202)


def _secret_matches(candidates, given: str) -> list[str]:
    """The accounts whose URL secret is ``given``: every secret compared in constant time, none skipped."""
    return [code for code, secrets, _ in candidates for secret in secrets if auth.secrets_match(given, secret)]


# -- Shopify -------------------------------------------------------------------------------------


async def shopify_webhook(request: web.Request) -> web.Response:
    """An order webhook from Shopify: verify, dedupe on the delivery id, enqueue its events."""
    settings = request.app[SETTINGS_KEY]
    raw = await request.read()
    main = accounts.main_webhook_account("shopify", settings)
    account, refusal = _shopify_account([main] if main else [], raw, request.headers)
    if account is None:
        # Not signed by the main shop's secret (checked without the database): another shop's, if any.
        others = await asyncio.to_thread(accounts.webhook_secrets, "shopify", settings=settings)
        if main is None and not others:
            return _error(404, "Shopify webhooks are not enabled here (SHOPIFY_WEBHOOK_SECRET is not set)")
        account, refused_again = _shopify_account(others, raw, request.headers)
        if account is None:
            return _error(401, refused_again or refusal)
    webhook_id = request.headers.get("X-Shopify-Webhook-Id", "").strip()
    topic = request.headers.get("X-Shopify-Topic", "").strip()
    if not webhook_id or len(webhook_id) > 200 or not webhook_id.isascii() or not webhook_id.isprintable():
        return _error(400, "missing or malformed X-Shopify-Webhook-Id header (printable ASCII, up to 200 characters)")
    if topic not in SHOPIFY_TOPICS:
        # A 4xx would make Shopify retry, then drop the subscription: acknowledge and ignore.
        shown = topic[:60] if topic.isascii() and topic.isprintable() else "(unreadable)"
        return web.json_response({"ignored": f"topic {shown or '(none)'} does not move stock"}, status=200)
    body = await _json_body(request, raw)
    try:
        chains, skipped = shopify_order_events(body, topic, account)
        age_s = (datetime.now(timezone.utc) - shopify_body_time(body)).total_seconds()
    except MalformedOrder as bad:
        return _error(400, str(bad))
    except InvalidStockEvent as invalid:
        return _error(400, f"order payload: {invalid}")
    if age_s > settings.webhook_max_age_s:
        # A captured delivery replayed later: Shopify's own retries resend it well within the bound.
        return _error(400, f"the delivery's body was made {age_s / 3600:.1f} h ago, more than WEBHOOK_MAX_AGE_S "
                           f"({settings.webhook_max_age_s / 3600:g} h): refused, nothing booked")
    redis = resources.async_redis()
    key = f"{settings.redis_namespace}:intake:shopify-webhook:{webhook_id}"
    if await redis.exists(key):
        metrics.duplicate_event("shopify-webhook")
        return web.json_response({"duplicate": True, "webhook_id": webhook_id}, status=200)
    events = request.app[EVENTS_KEY]
    await _enqueue(request, lambda: [events.send_in_order(chain) for chain in chains])
    # Remembered only once enqueued: a delivery that failed half-way is taken again when Shopify
    # retries it (a repeat is a no-op in the ledger), never answered "duplicate" and lost.
    await redis.set(key, 1, ex=settings.shopify_webhook_dedupe_ttl_s)
    return web.json_response({"accepted": True, "events": sum(len(chain) for chain in chains),
                              "skipped_lines": skipped}, status=202)


def _shopify_account(candidates, raw: bytes, headers) -> tuple[str | None, str]:
    """The account whose secret signed this delivery (each shop its own secret), or None and why not.

    An account that knows its shop's domain takes only that shop's deliveries: an app's secret signs
    every shop that installed it.  Where shops share one secret, the shop domain header picks among
    those the signature fits: it can only choose between accounts the signed body was valid for anyway.
    """
    shop = headers.get("X-Shopify-Shop-Domain", "").strip().lower()
    refusal, signed = "", []
    for code, secrets, domain in candidates:
        try:
            auth.verify_shopify(secrets, raw, headers.get(auth.SHOPIFY_HMAC_HEADER))
        except auth.SignatureError as refused:
            refusal = str(refused)
            continue
        if domain and domain.lower() != shop:
            refusal = "X-Shopify-Shop-Domain names no shop this webhook secret belongs to"
            continue
        signed.append((code, domain))
    if len(signed) > 1:
        signed = [(code, domain) for code, domain in signed if domain and domain.lower() == shop] or signed[:0]
        if not signed:
            return None, "several shops share this webhook secret and X-Shopify-Shop-Domain names none of them"
    return (signed[0][0], "") if signed else (None, refusal)


# -- in-house producers --------------------------------------------------------------------------


async def producer_events(request: web.Request) -> web.Response:
    """Signed events from in-house producers: verify, validate all, enqueue all, answer 202."""
    settings = request.app[SETTINGS_KEY]
    key = settings.producer_hmac_key.get_secret_value()
    if not key:
        return _error(404, "the producer endpoint is not enabled here (PRODUCER_HMAC_KEY is not set)")
    raw = await request.read()
    try:
        auth.verify_producer(key, raw, request.headers.get(auth.SIGNATURE_HEADER),
                                     tolerance_s=settings.producer_signature_tolerance_s)
    except auth.SignatureError as refused:
        return _error(401, str(refused))
    body = await _json_body(request, raw)
    batched = isinstance(body, dict) and "events" in body
    batch = body["events"] if batched else [body]
    if batched and len(body) > 1:
        raise _BadRequest('a batch is {"events": [...]} and nothing else')
    if not isinstance(batch, list) or not batch or len(batch) > MAX_BATCH:
        raise _BadRequest(f"events must be a list of 1 to {MAX_BATCH} events")
    # The ledger's actor is the key's own name, not a field the producer fills in (it could name anyone).
    actor = f"producer:{settings.producer_key_id}"
    events = []
    for index, item in enumerate(batch):
        try:
            events.append(StockEvent.from_json(item).booked_by(actor))
        except InvalidStockEvent as invalid:
            where = f"events[{index}]." if batched else ""
            raise _BadRequest(f"{where}{invalid}") from None
    for index, event in enumerate(events):
        # The console's references are its own: a producer's can never pre-empt (or replay) an operator's.
        if (event.reference or "").startswith(CONSOLE_REFERENCE_PREFIX):
            where = f"events[{index}]." if batched else ""
            raise _BadRequest(f"{where}reference: the {CONSOLE_REFERENCE_PREFIX!r} prefix is the console's own")
    try:
        await asyncio.to_thread(check_accounts, events)
    except ValueError as refused:  # no such account, or a local change it cannot receive
        return _error(422, str(refused))
    except DBAPIError:
        # PostgreSQL down (or not migrated yet): the events still queue in Redis (booking refuses a bad
        # account later, to the dead letters), so producers are not stopped by what they cannot see.
        pass
    producer = request.app[EVENTS_KEY]
    # A posted batch goes as batch messages (booked set-based, all or nothing per message).
    messages = await _enqueue(request, lambda: producer.send_batch(events) if batched else producer.send_all(events))
    return web.json_response({"accepted": len(events), "actor": actor,
                              "message_ids": [m.message_id for m in messages]}, status=202)


# -- read API ------------------------------------------------------------------------------------


def _reader_refused(request: web.Request) -> web.Response | None:
    """None when the request carries a valid read token; otherwise the answer (404 off, 401 refused)."""
    tokens = request.app[READ_TOKENS_KEY]
    if not tokens:
        return _error(404, "the read API is not enabled here (READ_API_TOKENS is not set)")
    try:
        auth.verify_bearer(tokens, request.headers.get("Authorization"))
    except auth.SignatureError as refused:
        response = _error(401, str(refused))
        response.headers["WWW-Authenticate"] = f'{auth.BEARER} realm="stocksync-read-api"'
        return response
    return None


def _read_api(*parameters: str) -> Callable[[Callable[[web.Request], Awaitable[web.Response]]],
                                            Callable[[web.Request], Awaitable[web.Response]]]:
    """A read API handler: a valid bearer token first, then only ``parameters``, each at most once."""
    def decorate(handler: Callable[[web.Request], Awaitable[web.Response]]
                 ) -> Callable[[web.Request], Awaitable[web.Response]]:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.Response:
            refused = _reader_refused(request)
            if refused is not None:
                return refused
            unknown = sorted({name for name in request.query if name not in parameters})
            if unknown:
                takes = f"takes only {', '.join(parameters)}" if parameters else "takes no query parameters"
                raise _BadRequest(f"unknown query parameter {', '.join(repr(n[:40]) for n in unknown[:5])}: "
                                  f"{request.path[:60]} {takes}")
            repeated = [name for name in parameters if len(request.query.getall(name, [])) > 1]
            if repeated:
                raise _BadRequest(f"query parameter {repeated[0]} is given more than once")
            return await handler(request)
        return guarded
    return decorate


@_read_api("sku")
async def stock_by_sku(request: web.Request) -> web.Response:
    """``GET /stock?sku=...``: a variation's stock on every marketplace."""
    sku = request.query.get("sku", "")
    if not sku.strip():
        return _error(400, "give the variation's SKU: /stock?sku=<sku>")
    try:
        check_sku(sku)
    except InvalidStockEvent as invalid:
        return _error(400, str(invalid))
    found = await request.app[READER_KEY].by_sku(sku)
    if found is None:
        return _error(404, f"no variation with SKU {sku[:200]!r}")
    return _stock_response(found)


@_read_api()
async def stock_by_variation(request: web.Request) -> web.Response:
    """``GET /variations/{id}/stock``: the same, by variation id."""
    raw = request.match_info["variation_id"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) >= 2**63:
        return _error(400, f"variation id must be a positive integer, got {raw[:40]!r}")
    found = await request.app[READER_KEY].by_variation(int(raw))
    if found is None:
        return _error(404, f"no variation {raw}")
    return _stock_response(found)


@_read_api("as_of", "since", "limit")
async def sku_timeline(request: web.Request) -> web.Response:
    """``GET /skus/{sku}/timeline``: the SKU's timeline across every account, as of ``as_of``."""
    sku = request.match_info["sku"]
    try:
        check_sku(sku)
        options = timeline.parse_options(request.query.get("as_of"), request.query.get("since"),
                                         request.query.get("limit"))
    except (InvalidStockEvent, BadMoment) as invalid:
        return _error(400, str(invalid))
    sessions = session_factory(request.app[DATABASE_URL_KEY] or resources.database_url())

    def read():
        with sessions() as session:
            return timeline.timeline_of_sku(session, sku, **options)

    found = await asyncio.to_thread(read)
    if found is None:
        return _error(404, f"no variation with SKU {sku[:200]!r}")
    return _stock_response(found.to_json())
@_read_api("account", "state", "since", "until", "sku", "before", "limit")
async def pushes(request: web.Request) -> web.Response:
    """``GET /pushes``: one page of the push log, newest first, and the counts per state of its filters."""
    try:
        wanted = parse_filter(request.query)
    except BadPushFilter as bad:
        return _error(400, str(bad))

    def read() -> dict:
        with session_factory(request.app[DATABASE_URL_KEY] or resources.database_url())() as session:
            entries, more = push_log.list_pushes(session, wanted)
            counts = push_log.count_states(session, wanted)
        return {"pushes": [entry.as_json() for entry in entries], "counts": counts,
                "next_before": entries[-1].id if more else None}

    return _stock_response(await asyncio.to_thread(read))


class StockReader:
    """Reads a variation's stock per marketplace from PostgreSQL for the read API.

    One statement per request on a psycopg async pool (no ORM, no per-request session): the
    variation by its unique SKU (or id), joined to its stock rows by the (variation, marketplace)
    unique key, so both lookups are index scans whatever the catalogue size.  Statements are
    prepared on each connection at their first run.
    """

    _QUERY = ("SELECT v.id, v.sku, v.total_stock, m.code, s.listed, s.locked, s.last_api_quantity, "
              "s.last_synced_at, s.updated_at FROM variations v "
              "LEFT JOIN marketplace_stock s ON s.variation_id = v.id "
              "LEFT JOIN marketplaces m ON m.id = s.marketplace_id WHERE {where}")
    BY_SKU = _QUERY.format(where="v.sku = %s")
    BY_ID = _QUERY.format(where="v.id = %s")

    def __init__(self, database_url: str, *, pool_size: int = 4) -> None:
        from psycopg_pool import AsyncConnectionPool
        from sqlalchemy.engine import make_url

        # SQLAlchemy's URL (postgresql+psycopg://...) as libpq wants it.
        conninfo = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.pool = AsyncConnectionPool(conninfo, min_size=pool_size, max_size=pool_size, open=False,
                                        kwargs={"autocommit": True}, name="read-api")

    async def open(self) -> None:
        """Start the pool: it connects in the background, so the intake serves webhooks while PostgreSQL is down."""
        await self.pool.open(wait=False)

    async def close(self) -> None:
        """Close the pool."""
        await self.pool.close()

    async def by_sku(self, sku: str) -> dict | None:
        """The stock of the variation with this SKU, or None."""
        return await self._read(self.BY_SKU, sku)

    async def by_variation(self, variation_id: int) -> dict | None:
        """The stock of variation ``variation_id``, or None."""
        return await self._read(self.BY_ID, variation_id)

    async def _read(self, query: str, key: Any) -> dict | None:
        # A short wait for a connection: while PostgreSQL is down the reader answers 503 soon.
        async with self.pool.connection(timeout=READ_WAIT_S) as connection:
            cursor = await connection.execute(query, (key,), prepare=True)
            rows = await cursor.fetchall()
        if not rows:
            return None
        variation_id, sku, total = rows[0][:3]
        marketplaces = {}
        for row in rows:
            code, listed, locked, api_quantity, synced_at, updated_at = row[3:]
            if code is not None:
                marketplaces[code] = {"listed": listed, "locked": locked, "available": listed - locked,
                                      "last_api_quantity": api_quantity, "last_synced_at": _iso(synced_at),
                                      "updated_at": _iso(updated_at)}
        return {"variation_id": variation_id, "sku": sku, "total_stock": total, "marketplaces": marketplaces}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _stock_response(found: dict) -> web.Response:
    return web.Response(text=json.dumps(found), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: Redis and PostgreSQL answer and the schema is at head: 200, else 503.

    The public answer is ``{"status": "ok"}`` or ``{"status": "not ok"}``; a caller with a read
    token (``Authorization: Bearer``) also gets each check and what is wrong.  A wrong token is 401.
    """
    detailed = "Authorization" in request.headers
    if detailed:
        refused = _reader_refused(request)
        if refused is not None:
            return refused
    checks = await asyncio.to_thread(request.app[READY_KEY])
    status, summary = public_answer(checks)
    body = {**summary, **answer(checks)[1]} if detailed else summary
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


def run(host: str, port: int, *, settings: Settings | None = None) -> None:
    """Serve the intake in the foreground until interrupted (``stocksync serve``)."""
    app = build_intake_app(settings)
    settle_for_serving()
    web.run_app(app, host=host, port=port, access_log_class=RedactingAccessLogger,
                access_log=logging.getLogger("stocksync.intake.access"), print=None, shutdown_timeout=5.0)
