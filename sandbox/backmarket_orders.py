"""Orders of the sandbox Back Market: ``GET /ws/orders`` and ``GET /ws/orders/{order_id}``.

What it serves and how it behaves where the vendor's docs are silent: :class:`BackMarketOrders`.
"""
from __future__ import annotations

import itertools
import json
import math
import re
import threading
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable
from urllib.parse import urlencode

from aiohttp import web

from sandbox.common import OutOfStock

if TYPE_CHECKING:
    from sandbox.backmarket import BackMarketSandbox

__all__ = ["BackMarketOrders", "OutOfStock", "order_state"]

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 50

#: First order id and first orderline id the sandbox hands out.
ORDER_ID_BASE = 5_000_000
LINE_ID_BASE = 37_000_000

#: Order states ``/ws/orders`` never lists (new, payment pending validation; not paid).
HIDDEN_ORDER_STATES = frozenset({0, 8})
ORDER_STATES = (0, 10, 1, 3, 8, 9)
LINE_STATES = (0, 9, 8, 1, 2, 3, 4, 5, 6, 7)
#: Line states that put the stock back: cancelled, refunded before shipping (and not paid).
RESTOCKING_LINE_STATES = frozenset({4, 5, 7})

#: ProductCondition by the listing's grade.
_CONDITIONS = {"PREMIUM": 9, "EXCELLENT": 10, "VERY_GOOD": 10, "GOOD": 11, "FAIR": 12, "STALLONE": 12}
_BRANDS = (("iPhone", "apple"), ("iPad", "apple"), ("MacBook", "apple"), ("Apple", "apple"), ("Galaxy", "samsung"),
           ("Pixel", "google"))
_INTEGER = re.compile(r"-?[0-9]+")
_ADDRESS = {"first_name": "Victor", "last_name": "Hugo", "street": "6 place des Vosges", "street2": "",
            "postal_code": "75004", "city": "Paris", "country": "FR", "phone": "+33612345678",
            "email": "victor.hugo@example.com", "company": "", "gender": 0}


def rfc3339(moment: datetime) -> str:
    """``2026-11-23T09:35:24.123456Z``: UTC, microseconds."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def order_state(line_states: Iterable[int]) -> int:
    """An order's state from its lines': 1 while a line awaits the merchant, 3 while one awaits
    shipping, else 9 (processed)."""
    states = set(line_states)
    if 1 in states:
        return 1
    if 2 in states:
        return 3
    return 9


class BackMarketOrders:
    """The orders of one sandbox Back Market account (``sandbox.orders``).

    An add-on of :class:`sandbox.backmarket.BackMarketSandbox` (``sandbox.orders``): it keeps the
    account's orders and registers their routes on the sandbox's app, behind the same middleware
    (WAF, ``Authorization: Basic``, ``Accept-Language``, latency, counters; not the catalog quota).
    Shapes are the spec's ``Order`` and ``OrderLine`` (sandbox/specs/backmarket-openapi.yml), addresses in
    snake_case as Back Market really sends them.

    Like the real marketplace, placing an order lowers the sandbox's own stock of each line's listing
    (:meth:`BackMarketOrders.place_order`); a line cancelled (4) or refunded before shipping (5) puts
    it back when the sandbox's ``restock_on_cancel`` dial says so, or as told
    (:meth:`BackMarketOrders.set_line_state`).

    Behaviour the spec leaves open, and what the sandbox does:

    - ``date_modification`` / ``date_creation`` filters keep orders modified / created **at or after**
      the given time; ``state`` and ``country_code`` keep equal ones; orders in state 0 or 8 are never
      listed (the spec says so).
    - Orders come in ascending ``order_id`` (Django's default primary-key order); ``page`` and
      ``page-size`` (default 10, at most 50) work as on ``/ws/listings``, past the last page is 200 with
      empty results.
    - Times are RFC 3339 in UTC with microseconds (``2026-11-23T09:35:24.123456Z``), including
      ``expected_dispatch_date``, whose example in the spec has no offset (not a valid ``date-time``).
    - An unknown ``order_id`` is a 404 ``ErrorResponseV1`` (the spec declares the 404 without a body).
    - ``/_sandbox/orders`` (no auth) places orders and moves lines, for demos and benchmarks.

    Parameters:
      sandbox(BackMarketSandbox): Whose stock orders lower and whose app serves the routes.
      now(Callable[[], datetime]): The wall clock of ``date_creation``/``date_modification``;
        a test can pass its own.
    """

    def __init__(self, sandbox: BackMarketSandbox, now: Callable[[], datetime] | None = None) -> None:
        self.sandbox = sandbox
        self.now = now or (lambda: datetime.now(timezone.utc))
        # Orders change under this lock; the sandbox's stock under its own (always taken second).
        self._lock = threading.Lock()
        self._orders: dict[int, dict[str, Any]] = {}
        self._order_ids = itertools.count(ORDER_ID_BASE)
        self._line_ids = itertools.count(LINE_ID_BASE)
        self._line_listings: dict[int, str] = {}  # line id -> listing uuid, whose stock it took

    # -- the Python API ----------------------------------------------------------------------------

    def place_order(self, lines: Iterable[tuple[str, int]], *, state: int = 1, line_state: int | None = None,
                    country_code: str = "fr-fr", oversell: bool = False) -> dict[str, Any]:
        """Place an order of ``(listing uuid, quantity)`` lines; lower each listing's stock; return the Order.

        ``state`` 1 (paid, the merchant must accept) by default; lines take ``line_state`` (default:
        1 for an order in state 1, else 2 in state 3, 3 in state 9, 0 otherwise).

        Raises:
          KeyError: A listing not in the catalogue.
          OutOfStock: A line asks for more than the listing has (unless ``oversell``).
          ValueError: A quantity below 1, an unknown state.
        """
        lines = [(listing, quantity) for listing, quantity in lines]
        if not lines:
            raise ValueError("an order needs at least one line")
        if state not in ORDER_STATES:
            raise ValueError(f"state must be one of {ORDER_STATES}, got {state!r}")
        if line_state is None:
            line_state = {1: 1, 3: 2, 9: 3}.get(state, 0)
        if line_state not in LINE_STATES:
            raise ValueError(f"line_state must be one of {LINE_STATES}, got {line_state!r}")
        for listing, quantity in lines:
            if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
                raise ValueError(f"a line's quantity must be an integer >= 1, got {quantity!r}")
        locale = country_code
        with self._lock:
            wanted: dict[str, int] = {}
            for listing, quantity in lines:
                wanted[listing] = wanted.get(listing, 0) + quantity
            stock = {listing: self.sandbox.quantity(listing) for listing in wanted}
            short = [listing for listing, quantity in wanted.items() if stock[listing] < quantity]
            if short and not oversell:
                raise OutOfStock(f"not enough stock for {', '.join(short)}")
            # Like Back Market: the order takes the stock when it is placed.
            for listing, quantity in wanted.items():
                self.sandbox.set_quantity(listing, max(0, stock[listing] - quantity))
            moment = rfc3339(self.now())
            order_id = next(self._order_ids)
            orderlines = [self._line(listing, quantity, line_state, locale, moment) for listing, quantity in lines]
            currency = orderlines[0]["currency"]
            total = sum(_cents(line["price"]) * line["quantity"] for line in orderlines)
            order = {
                "order_id": order_id, "shipping_address": dict(_ADDRESS), "billing_address": dict(_ADDRESS),
                "delivery_note": f"https://www.backmarket.fr/delivery_note/{order_id}.pdf",
                "expected_dispatch_date": rfc3339(self.now() + timedelta(days=2)),
                "tracking_number": "", "tracking_url": "", "shipper_display": "Colissimo", "is_backship": False,
                "date_creation": moment, "date_modification": moment, "date_payment": moment, "state": state,
                "orderlines": orderlines, "price": _money(total), "shipping_price": "0.00", "currency": currency,
                "country_code": country_code, "paypal_reference": None, "installment_payment": False,
                "payment_method": "CARD", "sales_taxes": "0.00",
            }
            self._orders[order_id] = order
            return json.loads(json.dumps(order))

    def set_line_state(self, order_id: int, line_id: int, state: int, *, restock: bool | None = None
                       ) -> dict[str, Any]:
        """Move a line to ``state`` (e.g. 4 cancelled); the order's state and ``date_modification`` follow.

        A line moving into cancelled/refunded-before-shipping/not-paid puts its quantity back into
        the listing's stock when ``restock`` (default: the sandbox's ``restock_on_cancel`` dial), and
        only once.  Returns the Order.

        Raises:
          KeyError: No such order or line.
        """
        if state not in LINE_STATES:
            raise ValueError(f"state must be one of {LINE_STATES}, got {state!r}")
        if restock is None:
            restock = self.sandbox.restock_on_cancel
        with self._lock:
            order = self._orders[order_id]
            line = next((line for line in order["orderlines"] if line["id"] == line_id), None)
            if line is None:
                raise KeyError(f"order {order_id} has no line {line_id}")
            if restock and state in RESTOCKING_LINE_STATES and line["state"] not in RESTOCKING_LINE_STATES:
                listing = self._line_listings[line_id]
                self.sandbox.set_quantity(listing, self.sandbox.quantity(listing) + line["quantity"])
            line["state"] = state
            if state == 3:
                order["date_shipping"] = rfc3339(self.now())
            if order["state"] not in HIDDEN_ORDER_STATES:
                order["state"] = order_state(line["state"] for line in order["orderlines"])
            order["date_modification"] = rfc3339(self.now())
            return json.loads(json.dumps(order))

    def set_order_state(self, order_id: int, state: int) -> dict[str, Any]:
        """Set an order's own state (e.g. 0 → 1 when the payment is validated); returns the Order."""
        if state not in ORDER_STATES:
            raise ValueError(f"state must be one of {ORDER_STATES}, got {state!r}")
        with self._lock:
            order = self._orders[order_id]
            order["state"] = state
            order["date_modification"] = rfc3339(self.now())
            return json.loads(json.dumps(order))

    def order(self, order_id: int) -> dict[str, Any]:
        """One Order as the API shows it.  Raises ``KeyError``."""
        with self._lock:
            return json.loads(json.dumps(self._orders[order_id]))

    def orders(self) -> list[dict[str, Any]]:
        """Every order (hidden states included), by id."""
        with self._lock:
            return json.loads(json.dumps([self._orders[key] for key in sorted(self._orders)]))

    # -- the app -----------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """Register the order routes on the sandbox's ``app`` (with and without a trailing slash)."""
        for suffix in ("", "/"):
            app.router.add_route("GET", "/ws/orders" + suffix, self._list_orders)
            app.router.add_route("GET", "/ws/orders/{order_id}" + suffix, self._get_order)
        app.router.add_route("GET", "/_sandbox/orders", self._admin_list)
        app.router.add_route("POST", "/_sandbox/orders", self._admin_place)
        app.router.add_route("POST", "/_sandbox/orders/{order_id}/lines/{line_id}", self._admin_set_line)

    async def _list_orders(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            page = _query_int(query, "page", 1, minimum=1)
            page_size = _query_int(query, "page-size", DEFAULT_PAGE_SIZE, minimum=1, maximum=MAX_PAGE_SIZE)
            state = _query_int(query, "state", None)
            modified_since = _query_time(query, "date_modification")
            created_since = _query_time(query, "date_creation")
        except ValueError as invalid:
            return _error_v1(400, "invalid-parameter", str(invalid))
        country = query.get("country_code")
        with self._lock:
            selected = [order for _, order in sorted(self._orders.items())
                        if order["state"] not in HIDDEN_ORDER_STATES
                        and (state is None or order["state"] == state)
                        and (country is None or order["country_code"] == country)
                        and (modified_since is None or _parse(order["date_modification"]) >= modified_since)
                        and (created_since is None or _parse(order["date_creation"]) >= created_since)]
            count = len(selected)
            body = json.dumps(selected[(page - 1) * page_size:page * page_size])
        last = max(1, math.ceil(count / page_size))
        base = f"{request.scheme}://{request.host}{request.path}"
        next_url = _page_url(base, query, page + 1) if page < last else None
        previous_url = _page_url(base, query, min(page - 1, last)) if page > 1 else None
        return web.Response(text=f'{{"count":{count},"next":{json.dumps(next_url)},'
                                 f'"previous":{json.dumps(previous_url)},"results":{body}}}',
                            content_type="application/json")

    async def _get_order(self, request: web.Request) -> web.Response:
        raw = request.match_info["order_id"]
        if not _INTEGER.fullmatch(raw):
            return _error_v1(400, "invalid-parameter", f"order_id {raw!r} is not an integer")
        with self._lock:
            order = self._orders.get(int(raw))
            body = json.dumps(order) if order is not None and order["state"] not in HIDDEN_ORDER_STATES else None
        if body is None:
            return _error_v1(404, "not-found", "Order not found, or it does not belong to the authenticated merchant")
        return web.Response(text=body, content_type="application/json")

    async def _admin_list(self, request: web.Request) -> web.Response:
        return web.json_response(self.orders())

    async def _admin_place(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            lines = [(line["listing"], line["quantity"]) for line in body["lines"]]
            order = self.place_order(lines, state=body.get("state", 1), country_code=body.get("country_code", "fr-fr"),
                                     oversell=bool(body.get("oversell", False)))
        except KeyError as missing:
            return web.json_response({"error": f"unknown listing or missing field: {missing}"}, status=400)
        except (TypeError, ValueError) as error:
            return web.json_response({"error": str(error)}, status=409 if isinstance(error, OutOfStock) else 400)
        return web.json_response(order, status=201)

    async def _admin_set_line(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            order = self.set_line_state(int(request.match_info["order_id"]), int(request.match_info["line_id"]),
                                        body["state"], restock=None if body.get("restock") is None
                                        else bool(body["restock"]))
        except KeyError as missing:
            return web.json_response({"error": f"not found: {missing}"}, status=404)
        except (TypeError, ValueError) as error:
            return web.json_response({"error": str(error)}, status=400)
        return web.json_response(order)

    # -- helpers -----------------------------------------------------------------------------------

    def _line(self, listing: str, quantity: int, state: int, locale: str, moment: str) -> dict[str, Any]:
        shown = self.sandbox.listing_by_id(listing, locale)
        entry = self.sandbox.entry(listing)
        brand = next((brand for prefix, brand in _BRANDS if shown["title"].startswith(prefix)), "other")
        fee = _cents(shown["price"]) // 10
        line_id = next(self._line_ids)
        self._line_listings[line_id] = listing
        return {
            "id": line_id, "date_creation": moment, "state": state, "price": shown["price"],
            "shipping_price": "0.00", "shipping_delay": entry.shipping_delay, "currency": shown["currency"],
            "return_message": "", "listing": shown["sku"], "listing_id": shown["listing_id"],
            "orderline_fee": _money(fee), "product": shown["title"], "quantity": quantity, "brand": brand,
            "product_id": shown["backmarket_id"], "backcare": False, "backcare_price": 0, "sales_taxes": "0.00",
            "imei": "", "serial_number": "", "condition": _CONDITIONS.get(shown["grade"], 10),
        }


def _cents(price: str) -> int:
    units, _, fraction = price.partition(".")
    return int(units) * 100 + int((fraction + "00")[:2])


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _query_int(query, name: str, default: int | None, *, minimum: int | None = None,
               maximum: int | None = None) -> int | None:
    raw = query.get(name)
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw):
        raise ValueError(f"{name} must be an integer, got {raw!r}")
    value = int(raw)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be in {minimum}..{maximum if maximum is not None else ''}, got {value}")
    return value


def _query_time(query, name: str) -> datetime | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace(" ", "+"))  # a '+' left unencoded arrives as a space
    except ValueError:
        raise ValueError(f"{name} must be an RFC 3339 time like 2026-11-23T09:35:24Z, got {raw!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _page_url(base: str, query, page: int) -> str:
    params = sorted((key, value) for key, value in query.items() if key != "page")
    if page > 1:
        params.append(("page", str(page)))
    encoded = urlencode(sorted(params))
    return base + (f"?{encoded}" if encoded else "")


def _error_v1(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}, "requestId": "sandbox-orders"},
                             status=status)
