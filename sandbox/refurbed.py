"""A simulated Refurbed Merchant API (orders) and its "Instant Order Notifications" webhook.

What it serves and how it behaves where the vendor's docs are silent: :class:`RefurbedSandbox`.
"""
from __future__ import annotations

import http.client
import itertools
import json
import queue
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

from aiohttp import web

from sandbox.common import Dials, credential_matches, injected_failure, pause

__all__ = ["Delivery", "RefurbedSandbox"]

SERVICE = "/refb.merchant.v1."
ORDER_ID_BASE = 9_100_000
ITEM_ID_BASE = 77_000_000
MAX_LIMIT = 100
OFFER_ID_BASE = 5_200_000

ORDER_ITEM_STATES = ("NEW", "REJECTED", "CANCELLED", "ACCEPTED", "SHIPPED", "RETURNED")
#: Item state changes a merchant (or the customer) may make (OrderItemState in the Swagger).
_TRANSITIONS = {"NEW": {"REJECTED", "CANCELLED", "ACCEPTED"}, "ACCEPTED": {"CANCELLED", "SHIPPED"},
                "SHIPPED": {"RETURNED"}}

# gRPC status codes the gateway maps to HTTP statuses.
INVALID_ARGUMENT, NOT_FOUND, INTERNAL, UNAUTHENTICATED = 3, 5, 13, 16
_HTTP_STATUS = {INVALID_ARGUMENT: 400, NOT_FOUND: 404, INTERNAL: 500, UNAUTHENTICATED: 401}

_ADDRESS = {"first_name": "Erika", "family_name": "Mustermann", "entity": "FEMALE", "country_code": "AT",
            "post_code": "1010", "town": "Wien", "street_name": "Stephansplatz", "house_no": "1",
            "phone_number": "+4312345678"}


@dataclass(frozen=True)
class Delivery:
    """One webhook POST: which order, which copy (0 first, 1.. re-sends), which attempt, what came back.

    ``status`` is ``None`` when no answer came (connection refused, timeout); ``error`` says why.
    """

    order_id: int
    copy: int
    attempt: int
    status: int | None
    error: str | None
    at: float


class _RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _page_limit(pagination: dict) -> int:
    """An Int64Pagination's ``limit`` (default and maximum 100); :class:`_RpcError` if it is not one."""
    limit = pagination.get("limit") or MAX_LIMIT
    if isinstance(limit, str) and limit.isdigit():
        limit = int(limit)
    if not isinstance(limit, int) or limit < 1:
        raise _RpcError(INVALID_ARGUMENT, "pagination limit must be a positive integer")
    if limit > MAX_LIMIT:
        raise _RpcError(INVALID_ARGUMENT, "pagination limit is too large (>100)")
    return limit


def rfc3339(moment: datetime) -> str:
    """``2026-11-23T09:35:24.123456Z`` (UTC)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class RefurbedSandbox(Dials):
    """The orders of one simulated Refurbed merchant, the app that serves them and the webhook sender.

    Shapes follow Refurbed's Swagger (``sandbox/specs/refurbed-merchant-openapi.json``): the HTTP
    gateway of a gRPC API, so every call is ``POST
    /refb.merchant.v1.<Service>/<Method>`` with a JSON body, ``Authorization: Plain <token>``,
    snake_case fields, int64 ids as strings, enums as strings, errors as ``google.rpc.Status``
    (``{"code", "message", "details"}``) behind the gateway's HTTP status.

    Served: ``OrderService/GetOrder`` (``{"id"}`` → ``{"order"}``), ``OrderService/ListOrders``
    (``Int64Pagination`` with ``limit`` ≤ 100, ``starting_after``/``ending_before``; sort by ``ID`` or
    ``RELEASED_AT``; filters ``id``, ``state`` and ``released_at``; → ``{"orders", "has_more"}``) and
    ``OrderItemService/UpdateOrderItemState`` (to accept, reject, cancel or ship an item).

    The webhook: when :meth:`RefurbedSandbox.place_order` releases an order, a sender thread POSTs
    ``{"order_id": <int>}`` (nothing else, unsigned, as Refurbed does) to ``webhook_url``.  Refurbed
    delivers at least once, so the sandbox makes duplicates happen: every notification is delivered
    ``1 + webhook_resends`` times (at least one re-send by default), and a delivery that fails (no
    2xx, or no answer) is retried with a doubling interval up to ``webhook_max_attempts`` times.
    ``deliveries()`` lists every attempt; ``wait_for_deliveries()`` waits until the queue is empty.

    Dials (constructor keywords, and :meth:`configure`):

    - ``token``: what ``Authorization: Plain <token>`` must carry.
    - ``webhook_url``: where notifications go (None: not sent).
    - ``webhook_resends``: extra deliveries of every notification (at least once more by default).
    - ``webhook_max_attempts``, ``webhook_retry_s``: retries of a failed delivery, doubling from
      ``webhook_retry_s`` seconds.
    - ``latency_s``: added to every API request; ``error_rate``: the share answered 500 (seeded).

    Every method takes the sandbox's lock: the app runs on its own thread.
    """

    _DIALS = ("token", "webhook_url", "webhook_resends", "webhook_max_attempts", "webhook_retry_s", "latency_s",
              "error_rate")

    def __init__(self, *, token: str = "refurbed-sandbox-token", webhook_url: str | None = None,
                 webhook_resends: int = 1, webhook_max_attempts: int = 6, webhook_retry_s: float = 0.05,
                 latency_s: float = 0.0, error_rate: float = 0.0, seed: int = 1,
                 now: Callable[[], datetime] | None = None) -> None:
        self.now = now or (lambda: datetime.now(timezone.utc))
        self._lock = threading.Lock()
        self._orders: dict[int, dict[str, Any]] = {}
        self._order_ids = itertools.count(ORDER_ID_BASE)
        self._item_ids = itertools.count(ITEM_ID_BASE)
        self._error_rng = random.Random(f"refurbed-errors:{seed}")
        self._requests: dict[str, int] = {}
        self._deliveries: list[Delivery] = []
        self._offers: dict[int, dict[str, Any]] = {}  # OfferService (sandbox/specs/refurbed-merchant-openapi.json)
        self._outbox: queue.Queue[tuple[int, int] | None] = queue.Queue()
        self._sender: threading.Thread | None = None
        self.configure(token=token, webhook_url=webhook_url, webhook_resends=webhook_resends,
                       webhook_max_attempts=webhook_max_attempts, webhook_retry_s=webhook_retry_s,
                       latency_s=latency_s, error_rate=error_rate)

    def _check_dial(self, name: str, value: Any) -> Any:
        if (name == "webhook_resends" and value < 0) or (name == "webhook_max_attempts" and value < 1):
            raise ValueError("webhook_resends must be >= 0 and webhook_max_attempts >= 1")
        return value

    # -- orders --------------------------------------------------------------------------------------

    def place_order(self, skus: Iterable[str], *, notify: bool = True, state: str = "NEW") -> dict[str, Any]:
        """Release an order of one item per SKU (Refurbed items have no quantity) and notify the webhook.

        Returns the ``Order`` as ``GetOrder`` shows it.
        """
        skus = list(skus)
        if not skus:
            raise ValueError("an order needs at least one item")
        if state not in ORDER_ITEM_STATES:
            raise ValueError(f"state must be one of {ORDER_ITEM_STATES}, got {state!r}")
        with self._lock:
            order_id = next(self._order_ids)
            items = [self._item(order_id, sku, state) for sku in skus]
            order = {
                "id": str(order_id), "released_at": rfc3339(self.now()), "state": state, "labels": [],
                "customer_email": f"customer{order_id}@example.com", "shipping_address": dict(_ADDRESS),
                "invoice_address": dict(_ADDRESS), "currency_code": "EUR", "settlement_currency_code": "EUR",
                "settlement_exchange_rate": "1", "total_charged": _money(len(items) * 24900),
                "settlement_total_charged": _money(len(items) * 24900), "total_discount": "0.00",
                "total_paid": _money(len(items) * 24900), "total_refunded": "0.00",
                "total_vat_charged": "0.00", "is_refundable": True, "refund_eligibility": "ELIGIBLE",
                "is_invoiceable": True, "has_invoice": False, "items": items, "payment_method": "STRIPE_CARDS",
            }
            self._orders[order_id] = order
            shown = json.loads(json.dumps(order))
        if notify:
            self.notify(order_id)
        return shown

    def set_item_state(self, item_id: str | int, state: str) -> dict[str, Any]:
        """Move an item (e.g. to ``CANCELLED``); the order's state follows.  Returns the OrderItem.

        Raises:
          KeyError: No such item.
          ValueError: A change Refurbed does not allow (e.g. SHIPPED → CANCELLED).
        """
        with self._lock:
            order, item = self._find_item(str(item_id))
            if state not in _TRANSITIONS.get(item["state"], ()):
                raise ValueError(f"item {item_id} cannot go from {item['state']} to {state}")
            item["state"] = state
            order["state"] = _order_state(i["state"] for i in order["items"])
            return json.loads(json.dumps(item))

    # -- offers (OfferService) ------------------------------------------------------------------------

    def add_offer(self, sku: str, stock: int, *, state: str = "OK", grading: str = "A") -> dict[str, Any]:
        """Create an offer (``sku`` may be empty, as for old offers) and return it as ListOffers shows it."""
        if stock < 0:
            raise ValueError(f"stock is a uint32, got {stock!r}")
        with self._lock:
            offer_id = OFFER_ID_BASE + len(self._offers)
            offer = {
                "id": str(offer_id), "version": "1", "is_current": True, "created_at": rfc3339(self.now()),
                "instance_id": str(offer_id + 500_000), "instance_name": f"Refurbished device {sku or offer_id}",
                "state": state, "sku": sku, "grading": grading, "warranty": "M12", "stock": stock,
                "shipping_profile_id": "1", "shipping_profile_name": "Standard", "taxation": "MARGINAL",
                "reference_currency_code": "EUR", "reference_price": "249.00", "reference_min_price": "199.00",
                "set_market_prices": [], "calculated_market_prices": [],
            }
            self._offers[offer_id] = offer
            return json.loads(json.dumps(offer))

    def set_offer_stock(self, sku: str, stock: int) -> None:
        """Set the stock of the offer(s) with ``sku`` (as ``UpdateOffer`` would).  Raises ``KeyError``."""
        with self._lock:
            offers = [offer for offer in self._offers.values() if offer["sku"] == sku]
            if not offers:
                raise KeyError(f"no offer with SKU {sku!r}")
            for offer in offers:
                offer["stock"] = stock
                offer["version"] = str(int(offer["version"]) + 1)

    def offers(self) -> list[dict[str, Any]]:
        """Every offer, by id (copies)."""
        with self._lock:
            return json.loads(json.dumps([offer for _, offer in sorted(self._offers.items())]))

    def _list_offers(self, body: dict) -> dict:
        """``ListOffers``: Int64Pagination by id (limit ≤ 100, starting_after), filter ``sku`` any_of."""
        pagination = body.get("pagination") or {}
        limit = _page_limit(pagination)
        offers = [offer for _, offer in sorted(self._offers.items())]
        skus = ((body.get("filter") or {}).get("sku") or {}).get("any_of")
        if skus:
            offers = [offer for offer in offers if offer["sku"] in skus]
        if pagination.get("starting_after") is not None:
            cursor = _int64(pagination["starting_after"], "pagination.starting_after")
            offers = [offer for offer in offers if int(offer["id"]) > cursor]
        # proto3 JSON leaves out zero values: an offer with no stock has no "stock" field.
        page = [{name: value for name, value in offer.items() if not (name == "stock" and value == 0)}
                for offer in offers[:limit]]
        return {"offers": page, "has_more": len(offers) > limit}

    def order(self, order_id: int | str) -> dict[str, Any]:
        """One ``Order``.  Raises ``KeyError``."""
        with self._lock:
            return json.loads(json.dumps(self._orders[int(order_id)]))

    # -- the webhook ---------------------------------------------------------------------------------

    def notify(self, order_id: int) -> None:
        """Queue the ``{"order_id": n}`` notification of an order (delivered 1 + ``webhook_resends`` times)."""
        with self._lock:
            if self._webhook_url is None:
                return
            copies = 1 + self._webhook_resends
            if self._sender is None or not self._sender.is_alive():
                self._sender = threading.Thread(target=self._send_forever, name="refurbed-webhook", daemon=True)
                self._sender.start()
        for copy in range(copies):
            self._outbox.put((order_id, copy))

    def deliveries(self) -> list[Delivery]:
        """Every webhook attempt so far, oldest first."""
        with self._lock:
            return list(self._deliveries)

    def wait_for_deliveries(self, timeout: float = 30.0) -> None:
        """Wait until every queued notification was delivered or gave up; raise ``TimeoutError``."""
        deadline = time.monotonic() + timeout
        while self._outbox.unfinished_tasks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"webhook deliveries still pending after {timeout:g}s")
            time.sleep(0.01)

    def close(self) -> None:
        """Stop the sender thread once its queue is empty."""
        if self._sender is not None and self._sender.is_alive():
            self._outbox.put(None)
            self._sender.join(10)

    def _send_forever(self) -> None:
        while True:
            job = self._outbox.get()
            try:
                if job is None:
                    return
                self._deliver(*job)
            finally:
                self._outbox.task_done()

    def _deliver(self, order_id: int, copy: int) -> None:
        with self._lock:
            url, attempts, retry_s = self._webhook_url, self._webhook_max_attempts, self._webhook_retry_s
        body = json.dumps({"order_id": order_id}).encode()
        for attempt in range(1, attempts + 1):
            status, error = _post(url, body)
            with self._lock:
                self._deliveries.append(Delivery(order_id, copy, attempt, status, error, time.monotonic()))
            if status is not None and 200 <= status < 300:
                return
            time.sleep(retry_s * 2 ** (attempt - 1))  # "for up to two days with an increasing interval"

    # -- the app -------------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """A new aiohttp application serving this sandbox."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post(SERVICE + "OrderService/GetOrder", self._rpc(self._get_order))
        app.router.add_post(SERVICE + "OrderService/ListOrders", self._rpc(self._list_orders))
        app.router.add_post(SERVICE + "OrderItemService/UpdateOrderItemState", self._rpc(self._update_item_state))
        app.router.add_post(SERVICE + "OfferService/ListOffers", self._rpc(self._list_offers))
        app.router.add_get("/_sandbox/stats", self._admin_stats)
        app.router.add_post("/_sandbox/orders", self._admin_place)
        return app

    def stats(self) -> dict[str, Any]:
        """Requests by method name, and webhook deliveries."""
        with self._lock:
            return {"requests": dict(self._requests), "deliveries": len(self._deliveries)}

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.path.startswith("/_sandbox/"):
            return await handler(request)
        with self._lock:
            method = request.path.rsplit("/", 1)[-1]
            self._requests[method] = self._requests.get(method, 0) + 1
            token, latency = self._token, self._latency_s
            fail = injected_failure(self._error_rng, self._error_rate)
        await pause(latency)
        if not credential_matches(request.headers.get("Authorization"), "Plain", token, exact_scheme=True):
            return _status(UNAUTHENTICATED, "missing or invalid authorization header: send 'Plain <token>'")
        if fail:
            return _status(INTERNAL, "internal error (injected by the sandbox)")
        return await handler(request)

    def _rpc(self, method: Callable[[dict], dict]) -> Callable:
        async def handle(request: web.Request) -> web.Response:
            try:
                body = json.loads(await request.read() or b"{}")
                if not isinstance(body, dict):
                    raise _RpcError(INVALID_ARGUMENT, "the request body must be a JSON object")
                with self._lock:
                    answer = method(body)
            except ValueError:
                return _status(INVALID_ARGUMENT, "the request body is not valid JSON")
            except _RpcError as error:
                return _status(error.code, error.message)
            return web.json_response(answer)
        return handle

    def _get_order(self, body: dict) -> dict:
        order = self._orders.get(_int64(body.get("id"), "id"))
        if order is None:
            raise _RpcError(NOT_FOUND, "order not found")
        return {"order": order}

    def _list_orders(self, body: dict) -> dict:
        pagination = body.get("pagination") or {}
        limit = _page_limit(pagination)
        after, before = pagination.get("starting_after"), pagination.get("ending_before")
        if after is not None and before is not None:
            raise _RpcError(INVALID_ARGUMENT,
                            "both \"ending_before\" and \"starting_after\" are specified in pagination")
        sort = body.get("sort") or {}
        descending = sort.get("order", "ASC") == "DESC"
        by = sort.get("by", "ID")
        if by not in ("ID", "RELEASED_AT"):
            raise _RpcError(INVALID_ARGUMENT, f"sort.by {by!r} is not supported by the sandbox")
        orders = [order for _, order in sorted(self._orders.items()) if _matches(order, body.get("filter") or {})]
        if by == "RELEASED_AT":
            orders.sort(key=lambda order: (order["released_at"], int(order["id"])))
        if descending:
            orders.reverse()
        # The cursor is a primary key: "after" follows the sort direction, as grpc cursors do.
        if after is not None:
            cursor = _int64(after, "pagination.starting_after")
            position = next((i for i, order in enumerate(orders) if int(order["id"]) == cursor), None)
            orders = orders[position + 1:] if position is not None else [
                order for order in orders if (int(order["id"]) < cursor if descending else int(order["id"]) > cursor)]
        elif before is not None:
            cursor = _int64(before, "pagination.ending_before")
            position = next((i for i, order in enumerate(orders) if int(order["id"]) == cursor), len(orders))
            orders = orders[max(0, position - limit):position]
        return {"orders": orders[:limit], "has_more": len(orders) > limit}

    def _update_item_state(self, body: dict) -> dict:
        item_id = str(_int64(body.get("id"), "id"))
        try:
            order, item = self._find_item(item_id)
        except KeyError:
            raise _RpcError(NOT_FOUND, "order item not found") from None
        state = body.get("state")
        if state not in _TRANSITIONS.get(item["state"], ()):
            raise _RpcError(9, f"order item cannot go from {item['state']} to {state}")
        if state == "SHIPPED":
            if not body.get("parcel_tracking_url"):
                raise _RpcError(INVALID_ARGUMENT, "parcel_tracking_url is required to ship an item")
            item["parcel_tracking_url"] = body["parcel_tracking_url"]
        item["state"] = state
        order["state"] = _order_state(i["state"] for i in order["items"])
        return {"order_item": item}

    async def _admin_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _admin_place(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            order = self.place_order(body["skus"], notify=bool(body.get("notify", True)))
        except (KeyError, TypeError, ValueError) as error:
            return web.json_response({"error": str(error)}, status=400)
        return web.json_response(order, status=201)

    # -- helpers (lock held) -------------------------------------------------------------------------

    def _item(self, order_id: int, sku: str, state: str) -> dict[str, Any]:
        item_id = next(self._item_ids)
        return {
            "id": str(item_id), "order_id": str(order_id), "name": f"Refurbished device {sku}", "state": state,
            "sku": sku, "currency_code": "EUR", "settlement_currency_code": "EUR", "total_charged": "249.00",
            "settlement_total_charged": "249.00", "total_discount": "0.00", "total_paid": "249.00",
            "settlement_total_paid": "249.00", "total_refunded": "0.00", "settlement_total_refunded": "0.00",
            "taxation": "MARGINAL", "is_refundable": True, "refund_eligibility": "ELIGIBLE",
            "offer_data": {"offer_id": str(item_id + 1_000_000), "offer_version": "1", "offer_grading": "A",
                           "offer_warranty": "M12", "shipping_profile_id": "1", "shipping_profile_version": "1",
                           "shipping_costs": "0.00"},
            "parcel_tracking_url": "", "item_identifiers": [], "shipment_status": "UNSPECIFIED",
            "return_initiated": False, "vat_rate": "0.00", "vat_country": "AT", "vat_charged": "0.00",
            "weight_kg": 0.3, "manufacturing_country": "CN", "hs_code": "85171300",
        }

    def _find_item(self, item_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        for order in self._orders.values():
            for item in order["items"]:
                if item["id"] == item_id:
                    return order, item
        raise KeyError(f"no order item {item_id}")


def _order_state(item_states: Iterable[str]) -> str:
    """The order's state from its items' (OrderState in the Swagger)."""
    states = set(item_states)
    if "NEW" in states:
        return "NEW"
    if len(states) == 1:
        return states.pop()
    if "ACCEPTED" in states:
        return "ACCEPTED"
    fulfilled, unfulfilled = states & {"SHIPPED", "RETURNED"}, states & {"REJECTED", "CANCELLED"}
    if fulfilled and unfulfilled:
        return "PARTIALLY_FULFILLED"
    return "FULFILLED" if fulfilled else "UNFULFILLED"


def _matches(order: dict[str, Any], filters: dict[str, Any]) -> bool:
    state = filters.get("state") or {}
    if state.get("any_of") and order["state"] not in state["any_of"]:
        return False
    if order["state"] in (state.get("none_of") or ()):
        return False
    ids = filters.get("id") or {}
    if ids.get("any_of") and order["id"] not in {str(i) for i in ids["any_of"]}:
        return False
    released = filters.get("released_at") or {}
    at = datetime.fromisoformat(order["released_at"])
    for name, keep in (("ge", at.__ge__), ("gt", at.__gt__), ("le", at.__le__), ("lt", at.__lt__)):
        if name in released:
            try:
                bound = datetime.fromisoformat(released[name])
            except (TypeError, ValueError):
                raise _RpcError(INVALID_ARGUMENT, f"filter.released_at.{name} is not an RFC 3339 time") from None
            if not keep(bound):
                return False
    return True


def _int64(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise _RpcError(INVALID_ARGUMENT, f"{name} must be an int64 (a string of digits), got {value!r}")
    return int(value)


def _status(code: int, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message, "details": []}, status=_HTTP_STATUS.get(code, 400))


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _post(url: str, body: bytes) -> tuple[int | None, str | None]:
    """POST ``body`` to ``url``; ``(status, None)`` or ``(None, error)`` when no answer came."""
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=10)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", path or "/", body=body, headers={"Content-Type": "application/json",
                                                                   "User-Agent": "refurbed-ion-sandbox"})
        response = connection.getresponse()
        response.read()
        return response.status, None
    except OSError as error:
        return None, f"{type(error).__name__}: {error}"
    finally:
        connection.close()
