"""A simulated Ingram Micro Reseller API v6: an aiohttp app speaking the shapes of the real one.

The shapes follow Ingram Micro's v6 developer pages and its published reseller SDK; where the
docs leave behaviour open, :class:`IngramSandbox` says what the sandbox does.
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import itertools
import json
import math
import random
import re
import secrets
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable
from urllib.parse import parse_qs

from aiohttp import web

from sandbox.common import (Dials, Draws, SlidingWindowQuota, admin_error, injected_failure, max_in_window, pause,
                            serve_counted)

__all__ = ["IngramSandbox", "ProductEntry", "WindowQuota", "product_entry"]

ADMIN_PREFIX = "/_sandbox/"
TOKEN_PATH = "/oauth/oauth20/token"
PA_PATH = "/resellers/v6/catalog/priceandavailability"
DETAILS_PREFIX = "/resellers/v6/catalog/details/"

#: The endpoints the sandbox counts and limits, by name.
PA = "priceandavailability"
DETAILS = "details"

MAX_PRODUCTS = 50
MAX_HEADER_ID = 32

#: Ingram part numbers are at most this long (the SDK's ``ingramPartNumber``).
MAX_PART_NUMBER = 6
_BASE36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: A catalogue holds at most this many products: the index has the 4 characters after the seed's 2.
MAX_CATALOGUE = 36 ** (MAX_PART_NUMBER - 2)

#: Generated stock per warehouse is 0..MAX_WAREHOUSE_STOCK.
MAX_WAREHOUSE_STOCK = 60

#: One product in this many has no details (its details answer 404).
NO_DETAILS_EVERY = 17

_WAREHOUSES = (("10", "Mira Loma, CA"), ("20", "Millington, TN"), ("30", "Carol Stream, IL"),
               ("40", "Jonestown, PA"), ("80", "Fort Worth, TX"))
_VENDORS = (("HP INC", "0000009X"), ("LENOVO", "00000C3L"), ("APPLE", "00000APL"), ("SAMSUNG", "00000SMG"),
            ("DELL", "00000DEL"), ("CISCO", "00000CSC"))
_KINDS = (("Refurbished Notebook", "Computers", "Notebooks", 54900), ("Refurbished Smartphone", "Phones",
          "Smartphones", 32900), ("Refurbished Tablet", "Computers", "Tablets", 27900),
          ("Refurbished Monitor 27in", "Displays", "Monitors", 15900), ("Docking Station", "Accessories",
          "Docks", 8900), ("USB-C Charger 65W", "Accessories", "Power", 2900))
# (productClass, weight in %): mostly stocked everywhere; some limited, new, discontinued.
_CLASSES = (("A", 60), ("B", 20), ("C", 8), ("N", 6), ("D", 4), ("X", 2))
_STATUSES = {"D": "Discontinued", "V": "Discontinued"}


# -- the catalogue -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProductEntry:
    """The generated facts of one product (its price, stock and class live in the sandbox)."""

    index: int
    part_number: str
    vendor_part_number: str
    upc: str
    vendor_name: str
    vendor_number: str
    description: str
    category: str
    subcategory: str
    price_cents: int
    warehouses: tuple[tuple[str, str, int], ...]
    product_class: str
    has_details: bool


def part_number(seed: int, index: int) -> str:
    """The Ingram part number of product ``index`` of catalogue ``seed``: 6 characters, e.g. ``"01002S"``.

    Two digits of the seed, then the index in base 36 on 4 characters (upper case), so part
    numbers sort in catalogue order.  Raises ``ValueError`` past :data:`MAX_CATALOGUE` products.
    """
    if not 0 <= index < MAX_CATALOGUE:
        raise ValueError(f"product index {index!r} out of range: a catalogue holds at most {MAX_CATALOGUE} products "
                         f"(Ingram part numbers are at most {MAX_PART_NUMBER} characters)")
    digits = ""
    for _ in range(MAX_PART_NUMBER - 2):
        index, digit = divmod(index, 36)
        digits = _BASE36[digit] + digits
    return f"{seed % 100:02d}{digits}"


def product_entry(seed: int, index: int) -> ProductEntry:
    """Product number ``index`` (0-based) of the catalogue made from ``seed``: same inputs, same product."""
    draws = Draws("ingram-product", seed, index, digest_size=24)
    vendor, vendor_number = _VENDORS[draws.below(len(_VENDORS))]
    kind, category, subcategory, base_cents = _KINDS[draws.below(len(_KINDS))]
    price_cents = base_cents * (80 + draws.below(60)) // 100 + draws.below(100)
    count = 1 + draws.below(3)
    first = draws.below(len(_WAREHOUSES))
    warehouses = tuple((*_WAREHOUSES[(first + n) % len(_WAREHOUSES)], draws.below(MAX_WAREHOUSE_STOCK + 1))
                       for n in range(count))
    product_class = draws.weighted(_CLASSES)[0]
    return ProductEntry(index=index, part_number=part_number(seed, index),
                        vendor_part_number=f"{vendor.split()[0][:3]}-{index:06d}-RFB",
                        upc=f"{(seed * 1_000_003 + index) % 10**12:012d}", vendor_name=vendor,
                        vendor_number=vendor_number, description=f"{vendor.title()} {kind} #{index}",
                        category=category, subcategory=subcategory, price_cents=price_cents,
                        warehouses=warehouses, product_class=product_class,
                        has_details=index % NO_DETAILS_EVERY != NO_DETAILS_EVERY - 1)


def _money(cents: int) -> float:
    return cents / 100


# -- quota ---------------------------------------------------------------------------------------


#: The quota of each limited endpoint (the name tests and tools know it by).
WindowQuota = SlidingWindowQuota


class _Counters:
    """What the sandbox counts about API requests (admin routes are not counted)."""

    def __init__(self) -> None:
        self.by_endpoint: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        # Per limited endpoint: (sandbox-clock time, admitted) of every request that reached the quota.
        self.quota_log: dict[str, list[tuple[float, bool]]] = {PA: [], DETAILS: []}
        self.tokens_issued = 0
        self.products_asked = 0
        self.partial_errors = 0
        self.faults_injected: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()


# -- the sandbox ---------------------------------------------------------------------------------


class IngramSandbox(Dials):
    """The state of a simulated Ingram Micro reseller account, and the app that serves it.

    :class:`IngramSandbox` holds a deterministic catalogue of products whose prices and stock drift,
    and serves:

    - ``POST /oauth/oauth20/token`` (client credentials as a form) and ``GET /oauth/oauth20/token?
      grant_type=client_credentials&client_id=…&client_secret=…`` (the SDK's form): the same checks and
      answers, ``{"access_token", "token_type": "Bearer", "expires_in": "86400"}`` (``expires_in`` a
      string, as the SDK types it); wrong credentials or grant type answer 400 ``{"message": ...}``.
    - ``POST /resellers/v6/catalog/priceandavailability?includeAvailability=true&includePricing=true``:
      at most 50 products; a top-level JSON array, 200, or 207 when some products are in error
      (``productStatusCode`` ``E``).
    - ``GET /resellers/v6/catalog/details/{ingramPartNumber}``: ``ProductDetailResponse``, or 404
      ("No Content") for a product without details.  ``additionalInformation`` ``height``, ``width``,
      ``length`` and ``netWeight`` are strings with their unit (``"0.8 Inches"``, ``"2.4 lbs"``), as
      the SDK types them.
    - ``/_sandbox/...``: admin routes for tests and benchmarks (stats, truth, dials, faults); no auth.

    Ingram part numbers are at most 6 characters (the SDK's limit): the catalogue's are 6, the seed's
    two digits and the product's index in base 36 (see :func:`part_number`).

    Every API request needs ``Authorization: Bearer <token>`` (401 gateway fault otherwise), then the
    headers ``IM-CustomerNumber`` (must match), ``IM-CountryCode`` (two letters), ``IM-CorrelationID``
    (at most 32 characters) and optionally ``IM-SenderID`` (at most 32); the correlation and sender
    ids are echoed back.

    Behaviour the docs leave open, and what the sandbox does:

    - Checks run in the order of a gateway: token (401), quota (429), then the backend (latency,
      injected faults, header and body validation, the handler).  Requests refused for their token
      do not reach the quota.
    - Quotas are sliding windows per endpoint: price & availability ``pa_quota_requests`` per
      ``pa_quota_window_s`` (60 per 60 s), details ``details_quota_requests`` per
      ``details_quota_window_s`` (1 per 0.5 s: "at least 500 ms apart").  A refused request does not
      use the window.  Every answer carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
      ``X-RateLimit-Reset``; the 429 body is ``{"errors": [{"field": null, "message": "too many
      requests"}]}``.  ``X-RateLimit-Reset`` is epoch seconds **with milliseconds** (the real one is
      whole seconds, as far as the docs show), so a time-scaled run is not rounded to a second.
    - ``time_scale`` multiplies every quota window and the drift's minute, so a benchmark can run
      the real quotas 20 times faster (``time_scale=0.05``).  Token lifetimes are real seconds.
    - ``partial_rate``: the share of products a price & availability answer reports in error
      ("temporarily unavailable"), seeded.  Such errors are transient: a product answered with one
      is answered normally the next time it is asked for.  Part numbers the catalogue does not have
      are always in error ("Invalid SKU").

    The catalogue has ``products`` products generated from ``seed`` (see :func:`product_entry`);
    their prices, stock and class live in dicts that the dials and the Python methods change.  The
    app runs on an event loop thread while tests call the methods from theirs: every method takes
    the sandbox's lock.

    Dials (constructor keywords, and :meth:`configure` at run time):

    - ``client_id``, ``client_secret``, ``customer_number``: the credentials it accepts.
    - ``time_scale``: multiplies the quota windows and the drift's minute.
    - ``pa_quota_requests`` per ``pa_quota_window_s``, ``details_quota_requests`` per
      ``details_quota_window_s`` (0: unthrottled).
    - ``token_ttl_s``: a token's lifetime (real seconds), reported as ``expires_in`` (a string).
    - ``latency_s``: added to every API request past the quota.
    - ``partial_rate``: share of products answered in error in a 207 (transient; see the module).
    - ``error_rate``: share of API requests answered 500 (seeded).
    - ``drift_per_minute``: products whose price or stock changes per (scaled) minute, as sales and
      repricing do while a sync runs.

    One-shot faults (:meth:`fail_next`, :meth:`throttle_next`, :meth:`hang_next`,
    :meth:`malformed_next`, :meth:`expire_tokens`) hit the next requests whatever the dials say.
    ``clock`` (default ``time.monotonic``) times quotas and records; ``wall_clock`` (default
    ``time.time``) makes ``X-RateLimit-Reset``.
    """

    _DIALS = ("client_id", "client_secret", "customer_number", "time_scale", "pa_quota_requests",
              "pa_quota_window_s", "details_quota_requests", "details_quota_window_s", "token_ttl_s", "latency_s",
              "partial_rate", "error_rate", "drift_per_minute")

    def __init__(self, *, products: int = 1000, seed: int = 1, client_id: str = "sandbox-client",
                 client_secret: str = "sandbox-secret", customer_number: str = "20-222222", time_scale: float = 1.0,
                 pa_quota_requests: int = 60, pa_quota_window_s: float = 60.0, details_quota_requests: int = 1,
                 details_quota_window_s: float = 0.5, token_ttl_s: float = 86400.0, latency_s: float = 0.0,
                 partial_rate: float = 0.0, error_rate: float = 0.0, drift_per_minute: float = 0.0,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time) -> None:
        if products < 0:
            raise ValueError(f"products must be >= 0, got {products!r}")
        self.seed = seed
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._quotas = {PA: WindowQuota(0, 0), DETAILS: WindowQuota(0, 0)}
        self._rng = {name: random.Random(f"{name}:{seed}") for name in ("partial", "error", "drift", "change")}
        self._counters = _Counters()
        self._tokens: dict[str, float] = {}
        self._faults: deque[tuple[str, Any]] = deque()
        self._failed_last: set[str] = set()
        self._drift_origin = clock()
        self._drifted = 0
        self._request_ids = itertools.count(1)
        # The catalogue: generated facts by part number, and the state that changes.
        self._entries: dict[str, ProductEntry] = {}
        self._by_vendor_part: dict[str, str] = {}
        self._prices: dict[str, int] = {}
        self._stock: dict[str, list[int]] = {}
        self._classes: dict[str, str] = {}
        self._order: list[str] = []
        self.configure(client_id=client_id, client_secret=client_secret, customer_number=customer_number,
                       time_scale=time_scale, pa_quota_requests=pa_quota_requests,
                       pa_quota_window_s=pa_quota_window_s, details_quota_requests=details_quota_requests,
                       details_quota_window_s=details_quota_window_s, token_ttl_s=token_ttl_s, latency_s=latency_s,
                       partial_rate=partial_rate, error_rate=error_rate, drift_per_minute=drift_per_minute)
        self.add_products(products)

    # -- dials -----------------------------------------------------------------------------------

    def _check_dial(self, name: str, value: Any) -> Any:
        return _check_dial(name, value)

    def _dials_changed(self) -> None:
        scale = self._time_scale
        self._quotas[PA].reconfigure(self._pa_quota_requests, self._pa_quota_window_s * scale)
        self._quotas[DETAILS].reconfigure(self._details_quota_requests, self._details_quota_window_s * scale)

    def quota_window_s(self, endpoint: str) -> float:
        """The scaled window of ``endpoint``'s quota (``"priceandavailability"`` or ``"details"``)."""
        with self._lock:
            return self._quotas[endpoint].window_s

    # -- one-shot faults -------------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` API requests (price & availability or details) with ``status`` (5xx)."""
        if not 500 <= status <= 599:
            raise ValueError(f"status must be a 5xx, got {status!r}")
        self._add_faults("fail", status, count)

    def throttle_next(self, count: int, reset_in_s: float) -> None:
        """Answer the next ``count`` API requests 429 with ``X-RateLimit-Reset`` ``reset_in_s`` from now."""
        self._add_faults("throttle", float(reset_in_s), count)

    def hang_next(self, count: int, seconds: float) -> None:
        """Hold the next ``count`` API requests for ``seconds`` before answering (client timeouts)."""
        self._add_faults("hang", float(seconds), count)

    def malformed_next(self, count: int) -> None:
        """Answer the next ``count`` price & availability requests 200 with an object, not an array."""
        self._add_faults("malformed", None, count)

    def expire_tokens(self) -> int:
        """Expire every token issued so far (as a token running out mid-run); return how many."""
        with self._lock:
            count = len(self._tokens)
            self._tokens.clear()
            return count

    def _add_faults(self, kind: str, value: Any, count: int) -> None:
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count!r}")
        with self._lock:
            self._faults.extend([(kind, value)] * count)

    # -- the catalogue ---------------------------------------------------------------------------

    def add_products(self, count: int) -> list[str]:
        """Add ``count`` generated products at the end of the catalogue; return their part numbers."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count!r}")
        with self._lock:
            start = len(self._order)
            if start + count > MAX_CATALOGUE:
                # Refused whole, before adding any: part numbers longer than 6 would not be Ingram's.
                raise ValueError(f"a catalogue holds at most {MAX_CATALOGUE} products, asked for {start + count}")
            added = []
            for index in range(start, start + count):
                entry = product_entry(self.seed, index)
                part = entry.part_number
                self._entries[part] = entry
                self._by_vendor_part[entry.vendor_part_number] = part
                self._prices[part] = entry.price_cents
                self._stock[part] = [quantity for _, _, quantity in entry.warehouses]
                self._classes[part] = entry.product_class
                added.append(part)
            self._order.extend(added)
            return added

    def part_numbers(self) -> list[str]:
        """Every part number of the catalogue, in catalogue order."""
        with self._lock:
            return list(self._order)

    def entry(self, part: str) -> ProductEntry:
        """The generated facts of a product.  Raises ``KeyError`` for an unknown part."""
        with self._lock:
            return self._entries[part]

    def truth(self) -> dict[str, dict[str, Any]]:
        """What is true now, per part number: what a sync must end with.

        ``price`` is a :class:`~decimal.Decimal`, ``warehouses`` ``{warehouseId: quantity}``.
        """
        with self._lock:
            return {part: self._truth(part) for part in self._order}

    def product_json(self, part: str) -> dict[str, Any]:
        """The price & availability item the API answers for ``part`` now."""
        with self._lock:
            return self._pa_item(0, part)

    def details_json(self, part: str) -> dict[str, Any] | None:
        """The details the API answers for ``part`` now (None: it answers 404)."""
        with self._lock:
            return self._details(part)

    def change_products(self, count: int, rng_seed: int | str | None = 0) -> dict[str, str]:
        """Change the price, stock or class of ``count`` random products; return part → what changed.

        The same ``rng_seed`` on the same catalogue makes the same changes.  Every product chosen
        really changes (a new price, a new quantity in one warehouse, or a new class).
        """
        rng = random.Random(f"change:{self.seed}:{rng_seed}")
        with self._lock:
            chosen = rng.sample(self._order, min(count, len(self._order)))
            return {part: self._change(part, rng) for part in chosen}

    # -- counters --------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters: requests by endpoint and status, tokens issued, partials, injected faults, in flight.

        ``rate_limited`` counts the requests a quota refused; the 429s of :meth:`throttle_next` are in
        ``faults_injected`` (and ``by_status``).  ``max_in_flight`` is the most requests of each limited
        endpoint the sandbox was answering at once.
        """
        with self._lock:
            counters = self._counters
            return {
                "requests": dict(counters.by_endpoint), "by_status": {str(k): v for k, v in counters.by_status.items()},
                "total_requests": sum(counters.by_endpoint.values()),
                "rate_limited": sum(1 for log in counters.quota_log.values() for _, ok in log if not ok),
                "tokens_issued": counters.tokens_issued, "products_asked": counters.products_asked,
                "partial_errors": counters.partial_errors, "faults_injected": dict(counters.faults_injected),
                "max_in_flight": dict(counters.max_in_flight),
                "faults_pending": len(self._faults), "drifted": self._drifted,
            }

    def quota_requests(self, endpoint: str, *, admitted_only: bool = False) -> list[float]:
        """Sandbox-clock times of the requests that reached ``endpoint``'s quota, oldest first."""
        with self._lock:
            log = self._counters.quota_log[endpoint]
            return [at for at, ok in log if ok or not admitted_only]

    def max_in_any_window(self, endpoint: str, window_s: float, *, admitted_only: bool = False) -> int:
        """The most requests to ``endpoint`` inside any window of ``window_s`` seconds.

        Counts every request that reached the quota, refused ones too (``admitted_only`` counts only
        those let through): a fleet that keeps under the quota never has a refused request at all.
        Windows are half-open, as the quota's: requests ``window_s`` apart are not in one window.
        """
        return max_in_window(self.quota_requests(endpoint, admitted_only=admitted_only), window_s)

    def requests_per_window(self, endpoint: str, window_s: float) -> list[int]:
        """Requests to ``endpoint`` per consecutive fixed window of ``window_s`` seconds, from the first."""
        times = self.quota_requests(endpoint)
        if not times:
            return []
        counts = [0] * (int((times[-1] - times[0]) // window_s) + 1)
        for at in times:
            counts[int((at - times[0]) // window_s)] += 1
        return counts

    def min_gap_s(self, endpoint: str) -> float | None:
        """The shortest time between two consecutive requests to ``endpoint`` (None under two)."""
        times = self.quota_requests(endpoint)
        return min((b - a for a, b in zip(times, times[1:])), default=None)

    def reset_stats(self) -> None:
        """Zero the counters (the quotas' own logs stay)."""
        with self._lock:
            self._counters = _Counters()

    # -- the app ---------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """A new aiohttp application serving this sandbox (API and ``/_sandbox/`` admin routes)."""
        app = web.Application(middlewares=[self._middleware])
        add = app.router.add_route
        add("POST", TOKEN_PATH, self._token)
        add("GET", TOKEN_PATH, self._token)  # the SDK's form: the same fields in the query string
        add("POST", PA_PATH, self._price_availability)
        add("GET", DETAILS_PREFIX + "{ingramPartNumber}", self._product_details)
        add("GET", ADMIN_PREFIX + "stats", self._admin_stats)
        add("GET", ADMIN_PREFIX + "products", self._admin_products)
        add("GET", ADMIN_PREFIX + "truth", self._admin_truth)
        add("GET", ADMIN_PREFIX + "config", self._admin_get_config)
        add("POST", ADMIN_PREFIX + "config", self._admin_set_config)
        add("POST", ADMIN_PREFIX + "change", self._admin_change)
        add("POST", ADMIN_PREFIX + "faults", self._admin_faults)
        add("POST", ADMIN_PREFIX + "expire-tokens", self._admin_expire_tokens)
        add("POST", ADMIN_PREFIX + "reset-stats", self._admin_reset_stats)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.path.startswith(ADMIN_PREFIX):
            return await handler(request)
        endpoint = _endpoint(request)
        kind = _kind(request)
        state = _RequestState()
        _STATE.set(state)  # this request's task only: handlers read it, the answer gets its headers
        with self._lock:
            counters = self._counters
            counters.by_endpoint[endpoint] += 1
            if kind is not None:
                counters.in_flight[kind] += 1
                counters.max_in_flight[kind] = max(counters.max_in_flight[kind], counters.in_flight[kind])
        try:
            # The token endpoint has no quota, faults or headers to check: it is the gate's way in.
            gate = None if request.path == TOKEN_PATH else functools.partial(self._gate, kind=kind)
            response = await serve_counted(request, handler, gate, self._count_status)
        finally:
            if kind is not None:
                with self._lock:
                    counters.in_flight[kind] -= 1
        if state.ratelimit is not None:
            limit, remaining, reset_at = state.ratelimit
            response.headers["X-RateLimit-Limit"] = str(limit)
            response.headers["X-RateLimit-Remaining"] = str(max(remaining, 0))
            response.headers["X-RateLimit-Reset"] = f"{reset_at:.3f}"
        for name in ("IM-CorrelationID", "IM-SenderID"):
            if name in request.headers and name not in response.headers:
                response.headers[name] = request.headers[name]
        return response

    async def _gate(self, request: web.Request, kind: str | None) -> web.Response | None:
        """The checks in front of the API handlers; an answer refuses the request, None lets it through."""
        state = _STATE.get()
        with self._lock:
            now = self._clock()
            if not self._token_valid(request.headers.get("Authorization", ""), now):
                return _fault(401, "Invalid Access Token", "keymanagement.service.invalid_access_token")
            fault = None
            if kind is not None:
                admitted, remaining, reset_in = self._quotas[kind].admit(now)
                self._counters.quota_log[kind].append((now, admitted))
                if self._quotas[kind].enabled:
                    state.ratelimit = (self._quotas[kind].limit, remaining, self._wall_clock() + reset_in)
                if not admitted:
                    return self._too_many(request)
                self._drift(now)
                if self._faults and (kind == PA or self._faults[0][0] != "malformed"):
                    fault = self._faults.popleft()
                    self._counters.faults_injected[fault[0]] += 1
                elif injected_failure(self._rng["error"], self._error_rate):
                    fault = ("fail", 500)
                    self._counters.faults_injected["error_rate"] += 1
            latency = self._latency_s
        if fault is not None and fault[0] == "throttle":
            state.ratelimit = ((state.ratelimit or (0,))[0], 0, self._wall_clock() + fault[1])
            return self._too_many(request)
        await pause(latency)
        if fault is not None and fault[0] == "hang":
            await asyncio.sleep(fault[1])
        if fault is not None and fault[0] == "fail":
            return web.json_response(
                {"errors": [{"id": f"sandbox-{next(self._request_ids)}", "type": "internal_error",
                             "message": "Internal server error (injected by the sandbox)"}]}, status=fault[1])
        if fault is not None and fault[0] == "malformed":
            state.malformed = True
        return self._check_headers(request)

    def _check_headers(self, request: web.Request) -> web.Response | None:
        headers = request.headers
        with self._lock:
            customer_number = self._customer_number
        if headers.get("IM-CustomerNumber") != customer_number:
            return web.json_response(
                {"faultcode": "Server", "faultstring": "Invalid customer number. The customer number provided on the "
                 "API call does not match the registered customer number."}, status=400)
        problems = []
        if not re.fullmatch(r"[A-Za-z]{2}", headers.get("IM-CountryCode", "")):
            problems.append(("IM-CountryCode", headers.get("IM-CountryCode"), "must be a two-letter ISO country code"))
        correlation = headers.get("IM-CorrelationID", "")
        if not correlation or len(correlation) > MAX_HEADER_ID:
            problems.append(("IM-CorrelationID", correlation, f"is required, at most {MAX_HEADER_ID} characters"))
        if len(headers.get("IM-SenderID", "")) > MAX_HEADER_ID:
            problems.append(("IM-SenderID", headers["IM-SenderID"], f"must be at most {MAX_HEADER_ID} characters"))
        if problems:
            return self._bad_request(request, "Invalid request headers", problems)
        return None

    # -- handlers --------------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        # POST carries the fields as a form, GET in the query string; both are checked alike.
        if request.method == "GET":
            values = {key: request.query.getone(key) for key in request.query}
        else:
            form = parse_qs((await request.read()).decode("utf-8", errors="replace"))
            values = {key: items[0] for key, items in form.items() if items}
        with self._lock:
            valid = (values.get("grant_type") == "client_credentials" and values.get("client_id") == self._client_id
                     and values.get("client_secret") == self._client_secret)
            if not valid:
                return web.json_response({"message": "Invalid client credentials or grant_type"}, status=400)
            token = secrets.token_urlsafe(24)
            ttl = self._token_ttl_s
            self._tokens[token] = self._clock() + ttl
            self._counters.tokens_issued += 1
        # A string, as the SDK's AccesstokenResponse types it (the docs' example is a number).
        return web.json_response({"access_token": token, "token_type": "Bearer",
                                  "expires_in": str(int(math.ceil(ttl)))})

    async def _price_availability(self, request: web.Request) -> web.Response:
        for flag in ("includeAvailability", "includePricing"):
            if request.query.get(flag, "").lower() not in ("true", "false"):
                return self._bad_request(request, f"{flag} is required (true or false)",
                                         [(flag, request.query.get(flag), "must be true or false")])
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._bad_request(request, "The request body is not valid JSON", [])
        products = body.get("products") if isinstance(body, dict) else None
        if not isinstance(products, list) or not products:
            return self._bad_request(request, "products is required: a list of 1 to 50 products",
                                     [("products", None, "must be a non-empty list")])
        if len(products) > MAX_PRODUCTS:
            return self._bad_request(request, f"At most {MAX_PRODUCTS} products per request",
                                     [("products", len(products), f"upto {MAX_PRODUCTS} products")])
        with_availability = request.query["includeAvailability"].lower() == "true"
        with_pricing = request.query["includePricing"].lower() == "true"
        items = []
        errors = 0
        with self._lock:
            self._counters.products_asked += len(products)
            for index, product in enumerate(products):
                part = None
                if isinstance(product, dict):
                    part = product.get("ingramPartNumber") or self._by_vendor_part.get(product.get("vendorPartNumber"))
                if not isinstance(part, str) or part not in self._entries:
                    errors += 1
                    items.append({"index": index, "ingramPartNumber": part if isinstance(part, str) else None,
                                  "productStatusCode": "E", "productStatusMessage": "Invalid SKU: product not found"})
                    continue
                if part in self._failed_last:
                    self._failed_last.discard(part)  # transient: the next answer for it is a normal one
                elif self._partial_rate > 0 and self._rng["partial"].random() < self._partial_rate:
                    self._failed_last.add(part)
                    self._counters.partial_errors += 1
                    errors += 1
                    items.append({"index": index, "ingramPartNumber": part, "productStatusCode": "E",
                                  "productStatusMessage": "Price and availability temporarily unavailable"})
                    continue
                item = self._pa_item(index, part)
                if not with_availability:
                    item.pop("availability")
                if not with_pricing:
                    item.pop("pricing")
                items.append(item)
        if _STATE.get().malformed:
            # An object where the spec promises an array: what a client must refuse, clearly.
            return web.json_response({"products": items}, status=200)
        return web.json_response(items, status=207 if errors else 200)

    async def _product_details(self, request: web.Request) -> web.Response:
        part = request.match_info["ingramPartNumber"]
        with self._lock:
            details = self._details(part) if part in self._entries else None
        if details is None:
            return web.json_response(
                {"errors": [{"id": f"sandbox-{next(self._request_ids)}", "type": "not_found",
                             "message": "No Content"}]}, status=404)
        return web.json_response(details)

    # -- admin routes ----------------------------------------------------------------------------

    async def _admin_stats(self, request: web.Request) -> web.Response:
        stats = self.stats()
        try:
            for endpoint in (PA, DETAILS):
                window = request.query.get(f"{endpoint}_window")
                if window is not None:
                    stats[f"{endpoint}_max_in_window"] = self.max_in_any_window(endpoint, float(window))
        except ValueError:
            return admin_error(400, "windows must be numbers of seconds")
        return web.json_response(stats)

    async def _admin_products(self, request: web.Request) -> web.Response:
        return web.json_response(self.part_numbers())

    async def _admin_truth(self, request: web.Request) -> web.Response:
        truth = {part: {**fields, "price": str(fields["price"])} for part, fields in self.truth().items()}
        return web.json_response(truth)

    async def _admin_change(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            count = body["count"] if isinstance(body, dict) else None
            if not isinstance(count, int) or count < 0:
                raise ValueError("expected {\"count\": n, \"seed\": ...} with n >= 0")
        except (KeyError, ValueError) as error:
            return admin_error(400, str(error))
        return web.json_response({"changed": self.change_products(count, body.get("seed", 0))})

    async def _admin_faults(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            if "fail" in body:
                self.fail_next(int(body["fail"]), int(body.get("status", 500)))
            if "throttle" in body:
                self.throttle_next(int(body["throttle"]), float(body.get("reset_in_s", 1.0)))
            if "hang" in body:
                self.hang_next(int(body["hang"]), float(body.get("seconds", 60.0)))
            if "malformed" in body:
                self.malformed_next(int(body["malformed"]))
        except (TypeError, ValueError) as error:
            return admin_error(400, str(error))
        return web.json_response({"pending": self.stats()["faults_pending"]})

    async def _admin_expire_tokens(self, request: web.Request) -> web.Response:
        return web.json_response({"expired": self.expire_tokens()})

    async def _admin_reset_stats(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.json_response({"ok": True})

    # -- helpers (call with the lock held) -------------------------------------------------------

    def _token_valid(self, authorization: str, now: float) -> bool:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        expires_at = self._tokens.get(token.strip())
        return expires_at is not None and now < expires_at

    def _truth(self, part: str) -> dict[str, Any]:
        entry = self._entries[part]
        stock = self._stock[part]
        product_class = self._classes[part]
        return {"price": Decimal(self._prices[part]) / 100, "currency": "USD", "total": sum(stock),
                "warehouses": {w[0]: quantity for w, quantity in zip(entry.warehouses, stock)},
                "status": _STATUSES.get(product_class, "Active"), "product_class": product_class}

    def _pa_item(self, index: int, part: str) -> dict[str, Any]:
        entry = self._entries[part]
        stock = self._stock[part]
        product_class = self._classes[part]
        price = self._prices[part]
        total = sum(stock)
        return {
            "index": index, "ingramPartNumber": part, "vendorPartNumber": entry.vendor_part_number,
            "extendedVendorPartNumber": entry.vendor_part_number, "customerPartNumber": None, "upc": entry.upc,
            "partNumberType": "IM", "vendorNumber": entry.vendor_number, "vendorName": entry.vendor_name,
            "description": entry.description, "productClass": product_class, "uom": "EA",
            "productStatus": _STATUSES.get(product_class, "Active"), "acceptBackOrder": product_class != "D",
            "productAuthorized": True, "returnableProduct": True, "endUserInfoRequired": False,
            "availability": {
                "available": total > 0, "totalAvailability": total,
                "availabilityByWarehouse": [
                    {"location": location, "warehouseId": warehouse_id, "quantityAvailable": quantity,
                     "quantityBackordered": 0, "quantityOnOrder": 0, "backOrderInfo": []}
                    for (warehouse_id, location, _), quantity in zip(entry.warehouses, stock)],
            },
            "pricing": {"currencyCode": "USD", "retailPrice": _money(price * 125 // 100), "mapPrice": 0.0,
                        "customerPrice": _money(price), "specialBidPricingAvailable": False,
                        "webDiscountsAvailable": False},
            "bundlePartIndicator": False,
        }

    def _details(self, part: str) -> dict[str, Any] | None:
        entry = self._entries[part]
        if not entry.has_details:
            return None
        product_class = self._classes[part]
        return {
            "ingramPartNumber": part, "vendorPartNumber": entry.vendor_part_number, "productAuthorized": "true",
            "description": entry.description, "upc": entry.upc, "productCategory": entry.category,
            "productSubcategory": entry.subcategory, "vendorName": entry.vendor_name,
            "vendorNumber": entry.vendor_number, "productStatusCode": "A", "productClass": product_class,
            "indicators": {"hasWarranty": True, "isNewProduct": False, "isRefurbishedProduct": True,
                           "isDiscontinuedProduct": product_class in ("D", "V"), "isDirectship": product_class == "X",
                           "isReturnableProduct": True, "IsBackOrderAllowed": product_class != "D"},
            # The SDK types the dimensions and net weight as strings with their unit ("5.2 Inches").
            "additionalInformation": {"productWeight": [{"plantId": "10", "weight": 1.2 + entry.index % 7 / 10,
                                                         "weightUnit": "KG"}],
                                      "isBulkFreight": False, "height": f"{0.8 + entry.index % 5 / 10:.1f} Inches",
                                      "width": "11.8 Inches", "length": "8.3 Inches",
                                      "netWeight": f"{2.4 + entry.index % 7 / 10:.1f} lbs", "dimensionUnit": "Inches"},
        }

    def _change(self, part: str, rng: random.Random) -> str:
        what = rng.choice(("price", "stock", "stock", "class") if len(self._stock[part]) else ("price", "class"))
        if what == "price":
            old = self._prices[part]
            new = old
            while new == old:
                new = max(100, old * rng.randint(85, 115) // 100 + rng.randint(-99, 99))
            self._prices[part] = new
        elif what == "stock":
            stock = self._stock[part]
            slot = rng.randrange(len(stock))
            old = stock[slot]
            while stock[slot] == old:
                stock[slot] = rng.randint(0, MAX_WAREHOUSE_STOCK)
        else:
            old = self._classes[part]
            self._classes[part] = rng.choice([c for c, _ in _CLASSES if c != old])
        return what

    def _drift(self, now: float) -> None:
        if self._drift_per_minute <= 0 or not self._order:
            return
        minutes = (now - self._drift_origin) / (60.0 * self._time_scale)
        due = int(minutes * self._drift_per_minute) - self._drifted
        for _ in range(max(due, 0)):
            self._change(self._rng["drift"].choice(self._order), self._rng["drift"])
            self._drifted += 1

    def _too_many(self, request: web.Request) -> web.Response:
        return web.json_response({"errors": [{"field": None, "message": "too many requests"}]}, status=429)

    def _bad_request(self, request: web.Request, message: str, fields: list[tuple[str, Any, str]]) -> web.Response:
        body = {"errors": [{"id": f"sandbox-{next(self._request_ids)}", "type": "validation_error", "message": message,
                            "fields": [{"field": f, "value": None if v is None else str(v), "message": m}
                                       for f, v, m in fields]}]}
        return web.json_response(body, status=400)

    def _count_status(self, status: int) -> None:
        with self._lock:
            self._counters.by_status[status] += 1


class _RequestState:
    """What the gate decided about one request: its quota headers, and whether to answer it malformed."""

    __slots__ = ("ratelimit", "malformed")

    def __init__(self) -> None:
        self.ratelimit: tuple[int, int, float] | None = None
        self.malformed = False


_STATE: contextvars.ContextVar[_RequestState] = contextvars.ContextVar("ingram_sandbox_request")


def _kind(request: web.Request) -> str | None:
    """Which limited endpoint a request is for (None: the token endpoint or an unknown path)."""
    if request.path == PA_PATH:
        return PA
    if request.path.startswith(DETAILS_PREFIX):
        return DETAILS
    return None


def _endpoint(request: web.Request) -> str:
    if request.path.startswith(DETAILS_PREFIX):
        return f"{request.method} {DETAILS_PREFIX}{{ingramPartNumber}}"
    return f"{request.method} {request.path}"


def _fault(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"fault": {"faultstring": message, "detail": {"errorcode": code}}}, status=status)


def _check_dial(name: str, value: Any) -> Any:
    if name in ("client_id", "client_secret", "customer_number"):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        return value
    if name in ("pa_quota_requests", "details_quota_requests"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0 (0: unthrottled), got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if name in ("partial_rate", "error_rate") and not 0 <= value <= 1:
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
    if name == "time_scale" and value <= 0:
        raise ValueError(f"time_scale must be positive, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return float(value)
