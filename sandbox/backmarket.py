"""A simulated Back Market seller API: an aiohttp app speaking the shapes of the real one.

What it serves and how it behaves where the vendor's docs are silent: :class:`BackMarketSandbox`.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import random
import re
import threading
import time
import uuid
from collections import Counter, deque
from decimal import Decimal, InvalidOperation
from json.encoder import encode_basestring_ascii as _js
from typing import Any, Callable, Iterable, NamedTuple
from urllib.parse import urlencode

from aiohttp import web

from sandbox.backmarket_orders import BackMarketOrders
from sandbox.common import (Dials, Draws, SlidingWindowQuota, admin_error, credential_matches, injected_failure,
                            max_in_window, pause, serve_counted)

__all__ = ["SANDBOX_KEY", "BackMarketSandbox", "CatalogueEntry", "SlidingWindowQuota", "StockChange", "build_app",
           "catalogue_entry", "malformed_kind"]

#: ``page-size`` when the request gives none, and the largest one accepted (spec: PageSize).
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 50

#: The market used when a request has no ``Accept-Language``.
DEFAULT_LOCALE = "fr-fr"
LOCALE_PATTERN = re.compile(r"[a-z]{2}-[a-z]{2}")

#: The spec's "Data limitation": SKU lines of listing updates accepted per window (seconds).
DATA_LIMIT_LINES = 2000
DATA_LIMIT_WINDOW_S = 3600.0

#: Requests under this prefix are "catalog" requests: quota, injected errors.
CATALOG_PREFIX = "/ws/listings"
ADMIN_PREFIX = "/_sandbox/"

#: Listing number ``i`` has the legacy integer id ``LISTING_ID_BASE + i``.
LISTING_ID_BASE = 100_000

#: Generated stock is 0..MAX_GENERATED_QUANTITY, and so is stock changed by drift/change_stock.
MAX_GENERATED_QUANTITY = 40

#: The largest quantity a POST accepts (the stock column on the other side is an int32).
MAX_QUANTITY = 2**31 - 1

PUBLICATION_STATES = (0, 1, 2, 3, 4)

#: How many stock changes :meth:`BackMarketSandbox.stock_changes` remembers (the oldest go first).
STOCK_LOG_LIMIT = 1_000_000

#: Currency and price in thousandths of the EUR price, by market; other valid locales use EUR.
MARKET_CURRENCIES: dict[str, tuple[str, int]] = {
    "en-gb": ("GBP", 850), "en-us": ("USD", 1080), "sv-se": ("SEK", 11500), "ja-jp": ("JPY", 160000),
    "en-au": ("AUD", 1650),
}

#: What Back Market's WAF answers a request it takes for a bot (sandbox/specs/backmarket-openapi.yml, "WAF").
WAF_CHALLENGE = {"errors": [{"code": "bot-need-challenge", "message": "Forbidden",
                             "challengePath": "/testchallengepage"}]}

#: The ways a page listed in ``malformed_pages`` is broken, chosen by page number (see malformed_kind).
MALFORMED_KINDS = ("results-not-a-list", "missing-quantity", "quantity-not-a-number")

_INTEGER = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]{1,2})?")
_SKU = re.compile(r"BM-(-?[0-9]+)-([0-9]{6,})", re.IGNORECASE)
_SHIPPING_FIELDS = ("shipper", "shipper_display", "shipping_delay", "shipping_price")
_NAMESPACE = uuid.NAMESPACE_URL.bytes

# Catalogue material: (model, EUR cents for the smallest storage).
_MODELS = (("iPhone 12", 38900), ("iPhone 13", 47900), ("iPhone 14 Pro", 79900), ("iPhone SE (2022)", 24900),
           ("Galaxy S21", 32900), ("Galaxy A54", 22900), ("Pixel 7", 29900), ("iPad Air 4", 39900),
           ("MacBook Air M1", 69900), ("Apple Watch Series 7", 21900))
_STORAGE = (("64 GB", 100), ("128 GB", 112), ("256 GB", 128), ("512 GB", 150))  # price in % of the base
_COLOURS = ("Black", "White", "Blue", "Red", "Green", "Purple", "Silver")
# (grade, deprecated state, price in %, weight in % of listings)
_GRADES = (("PREMIUM", 9, 112, 5), ("EXCELLENT", 0, 100, 30), ("VERY_GOOD", 1, 92, 30), ("GOOD", 2, 85, 25),
           ("FAIR", 3, 78, 8), ("STALLONE", 4, 70, 2))
# (publication_state, weight in %): mostly online (2); 0/1/3/4 as the spec's enum allows.
_PUBLICATION_WEIGHTS = ((2, 85), (3, 8), (1, 3), (0, 2), (4, 2))
_COMMENTS = {grade: f"{grade.replace('_', ' ').title()} condition, fully tested, charger included"
             for grade, *_ in _GRADES}
_SHIPPERS = (("UPS", 24), ("DHL Express", 24), ("Colissimo", 48), ("Chronopost", 24), ("DPD", 48))


# -- the catalogue -------------------------------------------------------------------------------


class CatalogueEntry(NamedTuple):
    """The generated, market-independent facts of one listing (its stock lives in the sandbox)."""

    index: int
    id: str
    listing_id: int
    product_id: str
    backmarket_id: int
    sku: str
    title: str
    price_cents: int
    has_min_price: bool
    publication_state: int
    state: int
    grade: str
    comment: str | None
    shipper: str
    shipping_delay: int
    initial_quantity: int


def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(uuid.NAMESPACE_URL, name))``, three times faster (a big catalogue makes many)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    hexa = digest.hex()
    return f"{hexa[:8]}-{hexa[8:12]}-{hexa[12:16]}-{hexa[16:20]}-{hexa[20:]}"


def _listing_uuid(seed: int, index: int) -> str:
    return _uuid5(f"stocksync-sandbox:backmarket:{seed}:listing:{index}")


def _initial_draws(seed: int, index: int) -> tuple[Draws, int, int]:
    # Quantity and publication state come first so that the sandbox can set up a big catalogue
    # without generating every field of every listing.
    draws = Draws("listing", seed, index)
    quantity = draws.below(MAX_GENERATED_QUANTITY + 1)
    publication_state = draws.weighted(_PUBLICATION_WEIGHTS)[0]
    return draws, quantity, publication_state


@functools.lru_cache(maxsize=1024)
def _product(seed: int, product: int) -> tuple[str, str, int]:
    # (product uuid, title, EUR cents): cached because neighbouring listings share a product and
    # pages are read in order.
    draws = Draws("product", seed, product)
    model, base_cents = _MODELS[draws.below(len(_MODELS))]
    storage, storage_percent = _STORAGE[draws.below(len(_STORAGE))]
    colour = _COLOURS[draws.below(len(_COLOURS))]
    return (_uuid5(f"stocksync-sandbox:backmarket:{seed}:product:{product}"),
            f"{model} - {storage} - {colour} - Unlocked", base_cents * storage_percent // 100)


def catalogue_entry(seed: int, index: int, listing_uuid: str | None = None) -> CatalogueEntry:
    """Listing number ``index`` (0-based) of the catalogue made from ``seed``: same inputs, same listing.

    ``listing_uuid`` saves recomputing the listing's uuid when the caller knows it.
    """
    draws, quantity, publication_state = _initial_draws(seed, index)
    grade, state, grade_percent, _ = draws.weighted(_GRADES)
    shipper, shipping_delay = _SHIPPERS[draws.below(len(_SHIPPERS))]
    has_min_price = draws.below(4) != 0
    comment = _COMMENTS[grade] if draws.below(3) != 0 else None
    # Three listings (three grades, say) per product, as a seller lists one phone in several grades.
    product = index // 3
    product_id, title, product_cents = _product(seed, product)
    price_cents = product_cents * grade_percent // 100 + draws.below(500)
    # Positional: a NamedTuple built from keywords costs more than the rest of this function.
    return CatalogueEntry(index, listing_uuid or _listing_uuid(seed, index), LISTING_ID_BASE + index, product_id,
                          1000 + product, f"BM-{seed}-{index:06d}", title, price_cents, has_min_price,
                          publication_state, state, grade, comment, shipper, shipping_delay, quantity)


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def market_currency(locale: str) -> tuple[str, int]:
    """The currency of the market ``locale`` and its price in thousandths of the EUR price."""
    return MARKET_CURRENCIES.get(locale, ("EUR", 1000))


def _market_prices(entry: CatalogueEntry, locale: str) -> tuple[str, str, str | None, str]:
    """(currency, price, min_price, max_price) of the listing in the market ``locale``."""
    currency, rate = market_currency(locale)
    price = entry.price_cents * rate // 1000
    min_price = _money(price * 90 // 100) if entry.has_min_price else None
    return currency, _money(price), min_price, _money(price * 150 // 100)


def listing_fields(entry: CatalogueEntry, locale: str) -> dict[str, Any]:
    """``ListingPublic`` without ``quantity``, as the market ``locale`` shows the generated listing."""
    currency, price, min_price, max_price = _market_prices(entry, locale)
    return {
        "id": entry.id, "listing_id": entry.listing_id, "product_id": entry.product_id,
        "backmarket_id": entry.backmarket_id, "sku": entry.sku, "title": entry.title, "price": price,
        "currency": currency, "min_price": min_price, "max_price": max_price,
        "publication_state": entry.publication_state, "state": entry.state, "grade": entry.grade,
        "warranty_delay": 12, "comment": entry.comment,
        "shippings": [{"shipping_price": "0.00", "shipping_delay": entry.shipping_delay, "shipper": entry.shipper,
                       "shipper_display": entry.shipper, "country_code": locale}],
    }


def listing_fragment(entry: CatalogueEntry, locale: str) -> str:
    """:func:`listing_fields` as compact JSON, missing its closing ``<quantity>}``.

    The same object as ``json.dumps`` would write, from a template: four times faster, which is
    what lets a benchmark walk 100,000 listings in seconds.  A test checks the two agree.
    """
    currency, price, min_price, max_price = _market_prices(entry, locale)
    shipper = _js(entry.shipper)
    return (f'{{"id":"{entry.id}","listing_id":{entry.listing_id},"product_id":"{entry.product_id}",'
            f'"backmarket_id":{entry.backmarket_id},"sku":{_js(entry.sku)},"title":{_js(entry.title)},'
            f'"price":"{price}","currency":{_js(currency)},'
            f'"min_price":{"null" if min_price is None else _js(min_price)},"max_price":"{max_price}",'
            f'"publication_state":{entry.publication_state},"state":{entry.state},"grade":"{entry.grade}",'
            f'"warranty_delay":12,"comment":{"null" if entry.comment is None else _js(entry.comment)},'
            f'"shippings":[{{"shipping_price":"0.00","shipping_delay":{entry.shipping_delay},"shipper":{shipper},'
            f'"shipper_display":{shipper},"country_code":{_js(locale)}}}],"quantity":')


def malformed_kind(page: int) -> str:
    """How page ``page`` is broken when it is one of the ``malformed_pages`` (one of MALFORMED_KINDS).

    An empty page is always ``results-not-a-list`` (it has no item to break).
    """
    return MALFORMED_KINDS[page % len(MALFORMED_KINDS)]


# -- quota and records ---------------------------------------------------------------------------


class StockChange(NamedTuple):
    """One change of a listing's true stock: when (sandbox clock), which, from, to, and why.

    ``cause`` is ``"api"`` (a POST), ``"drift"`` (the drift dial), ``"change_stock"``,
    ``"set_quantity"`` or ``"admin"`` (``POST /_sandbox/stock``).
    """

    at: float
    listing: str
    before: int
    after: int
    cause: str


class _Counters:
    """What the sandbox counts about API requests (admin routes are not counted)."""

    def __init__(self) -> None:
        self.by_endpoint: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.accepted: list[float] = []  # sandbox-clock times of requests past the WAF and the quota
        self.errors_injected = 0
        self.malformed_pages_served = 0
        self.drifted_listings = 0
        self.listing_updates = 0


class InvalidInput(ValueError):
    """A request parameter or body field the API refuses (400); ``name`` says which."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


# -- the sandbox ---------------------------------------------------------------------------------


class BackMarketSandbox(Dials):
    """The state of a simulated Back Market merchant account, and the app that serves it.

    The shapes come from Back Market's OpenAPI document, vendored as ``sandbox/specs/backmarket-openapi.yml``.
    :class:`BackMarketSandbox` holds a deterministic catalogue of listings and serves:

    - ``GET /ws/listings``: ``page`` (default 1) and ``page-size`` (default 10, at most 50), filters
      ``publication_state``, ``min_quantity``, ``max_quantity``; the ``{count, next, previous,
      results}`` envelope of ``ListingPublic`` with absolute ``next``/``previous`` URLs.
    - ``GET /ws/listings/{listingId}`` and ``GET /ws/listings/detail?id=|listing_id=|sku=``:
      ``ListingPublic`` + ``"statuscode": 200``; the id is the uuid or the legacy integer.
    - ``POST /ws/listings/{listingId}``: a partial update (``quantity`` as an int or a numeric string,
      ``price``, ``comment``, ...) echoed back with ``"statuscode": 200``.
    - ``/_sandbox/...``: admin routes for tests and benchmarks (stats, stock, dials); no auth.

    Behaviour the spec leaves open, and what the sandbox does:

    - Past the last page, ``GET /ws/listings`` answers **200 with empty results** (``next`` null,
      ``previous`` the last real page): the spec declares no 404 for the list, only 200/401/403.
      Like Django REST framework (whose envelope this is), the link to page 1 drops ``page`` and the
      query parameters are sorted.
    - ``page-size`` above 50 (or below 1, or not an integer) answers 400 ``ErrorResponseV1``: the spec
      declares ``maximum: 50``.  The real API may clamp instead of refusing; clients send ≤ 50 anyway.
    - ``Accept-Language`` is optional (the spec says ``required: false``; default ``fr-fr``); one that
      does not match ``^[a-z]{2}-[a-z]{2}$`` answers 400.  Stock is global; price and currency follow
      the market (``en-gb`` prices in GBP, ``en-us`` in USD, ...).
    - Checks run in the order of the real stack: the WAF (no ``User-Agent`` → 403
      ``bot-need-challenge``), then Cloudflare's rate limit (429), then the application (latency,
      ``Authorization`` → 401, ``Accept-Language`` → 400, injected 500s, the handler).  So
      unauthenticated requests use the quota too, as they would at Cloudflare.
    - The quota is a sliding window of ``quota_requests`` admitted requests per ``quota_window_s``
      over all ``/ws/listings*`` requests of all clients.  **A refused request (429) does not use the
      window**: it never reached the origin, and counting it would lock out for good a client that
      keeps retrying.  This is Cloudflare's "throttle" behaviour; its default "block for the
      mitigation timeout" ("blocked for 10 seconds" in Back Market's docs) is the ``quota_block_s``
      dial (0 = off).  429s carry no ``Retry-After``, like the real ones.

    The catalogue has ``listings`` listings generated from ``seed`` (see :func:`catalogue_entry`);
    their stock lives in a dict that the API, the dials and the Python methods change.  The app
    runs on an event loop thread while tests call the methods from theirs: every method takes the
    sandbox's lock.

    Dials (constructor keywords, and :meth:`configure` at run time):

    - ``token``: what ``Authorization: Basic <token>`` must carry.
    - ``quota_requests`` per ``quota_window_s`` (0/None: unthrottled), ``quota_block_s``: see
      :class:`SlidingWindowQuota`; applies to ``/ws/listings*``.
    - ``latency_s``: added to every API request that passes the quota.
    - ``error_rate``: the share of catalog requests answered 500 ``ErrorResponseV1`` (seeded RNG).
    - ``malformed_pages``: listing pages answered 200 with a broken body (see :func:`malformed_kind`).
    - ``drift_per_request``: after each ``GET /ws/listings``, the stock of this many random
      listings changes (seeded RNG), as sales do while a sync runs.
    - ``base_url_for_next``: the base of ``next``/``previous`` (default: the request's own host).
    - ``restock_on_cancel``: whether a line cancelled (or refunded before shipping) gives its
      units back to the listing by itself (Back Market does not document which it does).
    - ``lines_per_window`` per ``lines_window_s`` (default 2,000 per 3,600 s; 0/None: off): the
      spec's "Data limitation": each ``POST /ws/listings/{listingId}`` past the quota is one SKU
      line, and one beyond the limit is refused with a 429 (not counted).  Tests scale it down.

    ``clock`` (default ``time.monotonic``) times the quota and the records; a test can pass a
    fake one to step through windows without waiting.
    """

    _DIALS = ("token", "quota_requests", "quota_window_s", "quota_block_s", "latency_s", "error_rate",
              "malformed_pages", "drift_per_request", "base_url_for_next", "restock_on_cancel",
              "lines_per_window", "lines_window_s")

    def __init__(self, *, listings: int = 1000, seed: int = 1, token: str = "sandbox-token",
                 quota_requests: int | None = 20, quota_window_s: float | None = 10.0, quota_block_s: float = 0.0,
                 latency_s: float = 0.0, error_rate: float = 0.0, malformed_pages: Iterable[int] = (),
                 drift_per_request: int = 0, base_url_for_next: str | None = None, restock_on_cancel: bool = True,
                 lines_per_window: int | None = DATA_LIMIT_LINES, lines_window_s: float | None = DATA_LIMIT_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if listings < 0:
            raise ValueError(f"listings must be >= 0, got {listings!r}")
        self.seed = seed
        self._clock = clock
        self._lock = threading.Lock()
        self._quota = SlidingWindowQuota(None, None)
        self._lines = SlidingWindowQuota(None, None)
        self._error_rng = random.Random(f"errors:{seed}")
        self._drift_rng = random.Random(f"drift:{seed}")
        self._request_ids = itertools.count(1)
        self._counters = _Counters()
        self._stock_log: deque[StockChange] = deque(maxlen=STOCK_LOG_LIMIT)
        # The catalogue.  By creation index: uuid and publication state (kept for the filter);
        # by uuid: index and stock, for listings still in the catalogue, in catalogue order.
        self._uuids: list[str] = []
        self._publication_states = bytearray()
        self._index: dict[str, int] = {}
        self._quantities: dict[str, int] = {}
        self._order: list[str] = []
        self._by_publication_state: dict[int, list[str]] = {}
        # Per-market fields changed by POSTs, and each listing's JSON without its quantity
        # (``{"id":...,"quantity":``): a page is these fragments and the current quantities.
        self._overrides: dict[tuple[str, str], dict[str, Any]] = {}
        self._fragments: dict[tuple[str, str], str] = {}
        self.configure(token=token, quota_requests=quota_requests, quota_window_s=quota_window_s,
                       quota_block_s=quota_block_s, latency_s=latency_s, error_rate=error_rate,
                       malformed_pages=malformed_pages, drift_per_request=drift_per_request,
                       base_url_for_next=base_url_for_next, restock_on_cancel=restock_on_cancel,
                       lines_per_window=lines_per_window, lines_window_s=lines_window_s)
        self.add_listings(listings)
        #: The account's orders (``GET /ws/orders``); placing one lowers this sandbox's stock.
        self.orders = BackMarketOrders(self)

    # -- dials -----------------------------------------------------------------------------------

    @property
    def token(self) -> str:
        """The token ``Authorization: Basic <token>`` must carry."""
        return self._token

    def dials(self) -> dict[str, Any]:
        """The current dials, JSON-able."""
        values = super().dials()
        values["malformed_pages"] = sorted(values["malformed_pages"])
        return values

    def _check_dial(self, name: str, value: Any) -> Any:
        return _check_dial(name, value)

    def _dials_changed(self) -> None:
        self._quota.reconfigure(self._quota_requests, self._quota_window_s, self._quota_block_s)
        self._lines.reconfigure(self._lines_per_window, self._lines_window_s)

    # -- the catalogue ---------------------------------------------------------------------------

    def add_listings(self, count: int) -> list[str]:
        """Add ``count`` generated listings at the end of the catalogue; return their uuids."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count!r}")
        with self._lock:
            start = len(self._uuids)
            added = []
            for index in range(start, start + count):
                _, quantity, publication_state = _initial_draws(self.seed, index)
                listing = _listing_uuid(self.seed, index)
                self._uuids.append(listing)
                self._publication_states.append(publication_state)
                self._index[listing] = index
                self._quantities[listing] = quantity
                added.append(listing)
            self._order.extend(added)
            self._by_publication_state.clear()
        return added

    def remove_listing(self, listing_uuid: str) -> None:
        """Take a listing out of the catalogue: the API no longer knows it (404, absent from pages).

        Raises:
          KeyError: No such listing in the catalogue.
        """
        with self._lock:
            del self._quantities[listing_uuid]
            self._order.remove(listing_uuid)
            self._by_publication_state.clear()

    def listing_count(self) -> int:
        """How many listings the catalogue has now."""
        with self._lock:
            return len(self._order)

    def listing(self, i: int, locale: str = DEFAULT_LOCALE) -> dict[str, Any]:
        """Listing number ``i`` (0-based, in creation order) as the API shows it (``ListingPublic``).

        Raises:
          IndexError: No listing ``i`` was ever created.
          KeyError: Listing ``i`` was removed.
        """
        with self._lock:
            if not 0 <= i < len(self._uuids):
                raise IndexError(f"no listing {i}: the catalogue has made {len(self._uuids)}")
            return self._public(self._uuids[i], locale)

    def listing_by_id(self, listing_uuid: str, locale: str = DEFAULT_LOCALE) -> dict[str, Any]:
        """The listing with this uuid as the API shows it (``ListingPublic``).

        Raises:
          KeyError: No such listing in the catalogue.
        """
        with self._lock:
            return self._public(listing_uuid, locale)

    def warm_cache(self, locale: str = DEFAULT_LOCALE) -> None:
        """Serialise every listing for the market ``locale`` now rather than on its first page.

        Pages are cached after they are first served; a benchmark that times a sync of a big
        catalogue calls this first so that it times the sync, not the sandbox (~25 µs a listing).
        """
        with self._lock:
            order = list(self._order)
        for start in range(0, len(order), 1000):
            # In slices, so that requests served meanwhile do not wait for the whole catalogue.
            with self._lock:
                for listing in order[start:start + 1000]:
                    if listing in self._quantities:
                        self._fragment(listing, locale)

    def entry(self, listing_uuid: str) -> CatalogueEntry:
        """The generated facts of a listing (including removed ones)."""
        with self._lock:
            return catalogue_entry(self.seed, self._index[listing_uuid])

    # -- stock -----------------------------------------------------------------------------------

    @property
    def restock_on_cancel(self) -> bool:
        """Whether a cancelled line gives its units back by itself (the ``restock_on_cancel`` dial)."""
        with self._lock:
            return self._restock_on_cancel

    def quantity(self, listing_uuid: str) -> int:
        """A listing's true stock.  Raises ``KeyError`` for a listing not in the catalogue."""
        with self._lock:
            return self._quantities[listing_uuid]

    def quantities(self) -> dict[str, int]:
        """The truth: uuid → stock for every listing in the catalogue, in catalogue order."""
        with self._lock:
            return dict(self._quantities)

    def set_quantity(self, listing_uuid: str, quantity: int) -> None:
        """Set a listing's stock, as the seller's back office would.

        Raises:
          KeyError: No such listing in the catalogue.
          ValueError: ``quantity`` is not a non-negative integer.
        """
        quantity = _check_quantity(quantity)
        with self._lock:
            self._set_quantity(listing_uuid, quantity, "set_quantity")

    def change_stock(self, count: int, rng_seed: int | str | None = 0) -> dict[str, int]:
        """Change the stock of ``count`` random listings (all of them if fewer); return uuid → new stock.

        The same ``rng_seed`` on the same catalogue changes the same listings the same way; every
        listing chosen gets a stock different from its current one, in 0..40.
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count!r}")
        with self._lock:
            return self._change_random(count, random.Random(rng_seed), "change_stock")

    def stock_changes(self, since: float | None = None) -> list[StockChange]:
        """Every stock change (by any cause) at or after ``since`` on the sandbox clock, oldest first."""
        with self._lock:
            if since is None:
                return list(self._stock_log)
            return [change for change in self._stock_log if change.at >= since]

    # -- counters --------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The counters, JSON-able.

        ``total_requests``; ``by_endpoint`` ("GET /ws/listings", "POST /ws/listings/{listingId}",
        ...); ``by_status`` (status as a string → count); ``rate_limited`` (429s);
        ``accepted_requests`` (past the WAF and the quota: what the quota counts);
        ``errors_injected``, ``malformed_pages_served``, ``drifted_listings``,
        ``listing_updates`` (successful POSTs); ``listings`` (catalogue size now).
        """
        with self._lock:
            counters = self._counters
            return {
                "total_requests": sum(counters.by_endpoint.values()),
                "by_endpoint": dict(counters.by_endpoint),
                "by_status": {str(status): n for status, n in sorted(counters.by_status.items())},
                "rate_limited": counters.by_status.get(429, 0),
                "accepted_requests": len(counters.accepted),
                "errors_injected": counters.errors_injected,
                "malformed_pages_served": counters.malformed_pages_served,
                "drifted_listings": counters.drifted_listings,
                "listing_updates": counters.listing_updates,
                "listings": len(self._order),
            }

    def listing_page_requests(self) -> int:
        """How many ``GET /ws/listings`` requests reached the sandbox (any answer)."""
        with self._lock:
            return self._counters.by_endpoint.get("GET /ws/listings", 0)

    def accepted_timestamps(self) -> list[float]:
        """Sandbox-clock times of the requests past the WAF and the quota, oldest first."""
        with self._lock:
            return list(self._counters.accepted)

    def max_in_any_window(self, window_s: float) -> int:
        """The most accepted requests inside any window of ``window_s`` seconds.

        Windows are half-open, as the quota's: requests ``window_s`` apart are not in one window.
        """
        return max_in_window(self.accepted_timestamps(), window_s)

    def reset_stats(self) -> None:
        """Zero the counters and forget the accepted timestamps (the quota's own log stays)."""
        with self._lock:
            self._counters = _Counters()

    # -- the app ---------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """A new aiohttp application serving this sandbox (API routes and ``/_sandbox/`` admin routes).

        Each call makes a new application on the same state, e.g. to serve it on two ports.
        New endpoints (orders: ``/ws/orders``, ``/ws/orders/{order_id}``) are added here, with a
        handler method and their state on this class: the middleware already gives every route
        the counters, the WAF, auth and the market; only ``/ws/listings*`` takes the catalog quota
        and the injected errors (see ``_gate``).
        """
        app = web.Application(middlewares=[self._middleware])
        add = app.router.add_route
        # Back Market is a Django app: its paths work with and without the trailing slash.
        for suffix in ("", "/"):
            add("GET", "/ws/listings" + suffix, self._list_listings)
            add("GET", "/ws/listings/detail" + suffix, self._listing_detail)
            add("GET", "/ws/listings/{listingId}" + suffix, self._get_listing)
            add("POST", "/ws/listings/{listingId}" + suffix, self._update_listing)
        add("GET", ADMIN_PREFIX + "stats", self._admin_stats)
        add("GET", ADMIN_PREFIX + "stock", self._admin_get_stock)
        add("POST", ADMIN_PREFIX + "stock", self._admin_set_stock)
        add("GET", ADMIN_PREFIX + "config", self._admin_get_config)
        add("POST", ADMIN_PREFIX + "config", self._admin_set_config)
        add("POST", ADMIN_PREFIX + "reset-stats", self._admin_reset_stats)
        self.orders.add_routes(app)
        app[SANDBOX_KEY] = self
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.path.startswith(ADMIN_PREFIX):
            return await handler(request)
        with self._lock:
            self._counters.by_endpoint[_endpoint(request)] += 1
        return await serve_counted(request, handler, self._gate, self._count_status)

    async def _gate(self, request: web.Request) -> web.Response | None:
        """The checks in front of every API handler; an answer refuses the request, None lets it through."""
        if not request.headers.get("User-Agent", "").strip():
            return _waf_challenge()
        catalog = request.path.startswith(CATALOG_PREFIX)
        with self._lock:
            now = self._clock()
            admitted = self._quota.admit(now).admitted if catalog else True
            if admitted:
                self._counters.accepted.append(now)
            token, latency = self._token, self._latency_s
        if not admitted:
            return self._error_v1(429, "too-many-requests", "Too many requests: slow down and retry later")
        await pause(latency)
        # The literal word Basic and the back-office token as it is (not base64 of anything).
        if not credential_matches(request.headers.get("Authorization"), "Basic", token):
            return self._error_v1(401, "unauthenticated", "Authentication credentials were not provided or are "
                                  "invalid: send 'Authorization: Basic <token>'")
        locale = request.headers.get("Accept-Language", DEFAULT_LOCALE)
        if not LOCALE_PATTERN.fullmatch(locale):
            return self._bad_request(request, "Accept-Language", f"Accept-Language {locale!r} is not a market "
                                     "locale like fr-fr")
        if catalog:
            with self._lock:
                fail = injected_failure(self._error_rng, self._error_rate)
                if fail:
                    self._counters.errors_injected += 1
            if fail:
                return self._error_v1(500, "internal-error", "Internal server error (injected by the sandbox)")
        return None

    async def _list_listings(self, request: web.Request) -> web.Response:
        try:
            page = _query_int(request, "page", default=1, minimum=1)
            page_size = _query_int(request, "page-size", default=DEFAULT_PAGE_SIZE, minimum=1, maximum=MAX_PAGE_SIZE)
            publication_state = _query_int(request, "publication_state", choices=PUBLICATION_STATES)
            min_quantity = _query_int(request, "min_quantity")
            max_quantity = _query_int(request, "max_quantity")
        except InvalidInput as invalid:
            return self._error_v1(400, "invalid-parameter", str(invalid), target=invalid.name)
        locale = _locale(request)
        with self._lock:
            selected = self._select(publication_state, min_quantity, max_quantity)
            count = len(selected)
            items = [f"{self._fragment(listing, locale)}{self._quantities[listing]}}}"
                     for listing in selected[(page - 1) * page_size:page * page_size]]
            malformed = page in self._malformed_pages
            if malformed:
                self._counters.malformed_pages_served += 1
            # The page above is what the client sees; the drift is what sells right after.
            self._change_random(self._drift_per_request, self._drift_rng, "drift")
            base = (self._base_url_for_next or f"{request.scheme}://{request.host}").rstrip("/")
        last_page = max(1, math.ceil(count / page_size))
        next_url = _page_url(base, request, page + 1) if page < last_page else None
        previous_url = _page_url(base, request, min(page - 1, last_page)) if page > 1 else None
        if malformed:
            body = _malformed_page(page, count, next_url, previous_url, items)
        else:
            body = (f'{{"count":{count},"next":{json.dumps(next_url)},"previous":{json.dumps(previous_url)},'
                    f'"results":[{",".join(items)}]}}')
        return web.Response(text=body, content_type="application/json")

    async def _get_listing(self, request: web.Request) -> web.Response:
        return self._show_listing(request, lambda: self._find(request.match_info["listingId"]))

    async def _listing_detail(self, request: web.Request) -> web.Response:
        return self._show_listing(request, lambda: self._find_by_query(request))

    def _show_listing(self, request: web.Request, find: Callable[[], str | None]) -> web.Response:
        locale = _locale(request)
        try:
            with self._lock:
                listing = find()
                if listing is not None:
                    body = f'{self._fragment(listing, locale)}{self._quantities[listing]},"statuscode":200}}'
        except InvalidInput as invalid:
            return self._error_v1(400, "invalid-parameter", str(invalid), target=invalid.name)
        if listing is None:
            return self._not_found()
        return web.Response(text=body, content_type="application/json")

    async def _update_listing(self, request: web.Request) -> web.Response:
        locale = _locale(request)
        try:
            with self._lock:
                listing = self._find(request.match_info["listingId"])
        except InvalidInput as invalid:
            return _bare_error(400, str(invalid))
        if listing is None:
            return self._not_found()
        with self._lock:
            within_data_limit = self._lines.admit(self._clock()).admitted
        if not within_data_limit:
            return self._error_v1(429, "too-many-requests", "Data limit reached: at most "
                                  f"{self._lines.limit} SKU lines per {self._lines.window_s:g} s; retry later")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _bare_error(400, "the body is not valid JSON")
        if not isinstance(body, dict):
            return _bare_error(400, "the body must be a JSON object")
        with self._lock:
            if listing not in self._quantities:  # removed while the body was being read
                return self._not_found()
            try:
                quantity, fields, messages = _parse_update(body, locale, self._public(listing, locale))
            except InvalidInput as invalid:
                return _bare_error(400, str(invalid))
            if quantity is not None:
                self._set_quantity(listing, quantity, "api")
            if fields:
                self._overrides.setdefault((listing, locale), {}).update(fields)
                self._fragments.pop((listing, locale), None)
            self._counters.listing_updates += 1
            echo = self._public(listing, locale)
        echo["statuscode"] = 200
        if messages:
            echo["shippings_response"] = messages
        return web.json_response(echo)

    # -- admin routes ----------------------------------------------------------------------------

    async def _admin_stats(self, request: web.Request) -> web.Response:
        stats = self.stats()
        try:
            if "window" in request.query:
                stats["max_in_window"] = self.max_in_any_window(float(request.query["window"]))
        except ValueError:
            return admin_error(400, "window must be a number of seconds")
        if request.query.get("timestamps") in ("1", "true", "yes"):
            stats["accepted_timestamps"] = self.accepted_timestamps()
        return web.json_response(stats)

    async def _admin_get_stock(self, request: web.Request) -> web.Response:
        return web.json_response(self.quantities())

    async def _admin_set_stock(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            if "change" in body:
                changed = self.change_stock(_check_quantity(body["change"]), body.get("seed", 0))
                return web.json_response({"changed": changed})
            quantities = {listing: _check_quantity(quantity) for listing, quantity in body.items()}
            with self._lock:
                unknown = sorted(set(quantities) - set(self._quantities))
                if unknown:
                    return admin_error(404, f"no such listings: {', '.join(unknown[:5])}")
                for listing, quantity in quantities.items():
                    self._set_quantity(listing, quantity, "admin")
        except ValueError as error:
            return admin_error(400, str(error))
        return web.json_response({"updated": len(quantities)})

    async def _admin_reset_stats(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.json_response({"ok": True})

    # -- helpers (call with the lock held) -------------------------------------------------------

    def _public(self, listing: str, locale: str) -> dict[str, Any]:
        fields = listing_fields(catalogue_entry(self.seed, self._index[listing], listing), locale)
        overrides = self._overrides.get((listing, locale))
        if overrides:
            fields.update(overrides)
            fields["shippings"] = [dict(option) for option in fields["shippings"]]
        fields["quantity"] = self._quantities[listing]
        return fields

    def _fragment(self, listing: str, locale: str) -> str:
        key = (listing, locale)
        fragment = self._fragments.get(key)
        if fragment is None:
            if key in self._overrides:
                fields = self._public(listing, locale)
                del fields["quantity"]
                # Quantity last, so that the fragment is the object minus "<quantity>}".
                fragment = json.dumps(fields, separators=(",", ":"))[:-1] + ',"quantity":'
            else:
                fragment = listing_fragment(catalogue_entry(self.seed, self._index[listing], listing), locale)
            self._fragments[key] = fragment
        return fragment

    def _select(self, publication_state: int | None, min_quantity: int | None,
                max_quantity: int | None) -> list[str]:
        selected = self._order
        if publication_state is not None:
            selected = self._by_publication_state.get(publication_state)
            if selected is None:
                states, index = self._publication_states, self._index
                selected = [listing for listing in self._order if states[index[listing]] == publication_state]
                self._by_publication_state[publication_state] = selected
        if min_quantity is not None or max_quantity is not None:
            low = -math.inf if min_quantity is None else min_quantity
            high = math.inf if max_quantity is None else max_quantity
            quantities = self._quantities
            selected = [listing for listing in selected if low <= quantities[listing] <= high]
        return selected

    def _find(self, raw: str) -> str | None:
        """The uuid of the listing ``raw`` names (uuid or legacy integer id), None if unknown."""
        if _INTEGER.fullmatch(raw):
            index = int(raw) - LISTING_ID_BASE
            listing = self._uuids[index] if 0 <= index < len(self._uuids) else None
        else:
            try:
                listing = str(uuid.UUID(raw))
            except ValueError:
                raise InvalidInput("listingId", f"listingId {raw!r} is neither a uuid nor an integer") from None
        return listing if listing in self._quantities else None

    def _find_by_query(self, request: web.Request) -> str | None:
        query = request.query
        if "id" in query:
            return self._find(query["id"])
        if "listing_id" in query:
            if not _INTEGER.fullmatch(query["listing_id"]):
                raise InvalidInput("listing_id", f"listing_id {query['listing_id']!r} is not an integer")
            return self._find(query["listing_id"])
        if "sku" in query:
            match = _SKU.fullmatch(query["sku"])
            if match is None or int(match.group(1)) != self.seed:
                return None
            listing = self._find(str(LISTING_ID_BASE + int(match.group(2))))
            # SKUs are case-insensitive, but "BM-1-7" is not "BM-1-000007".
            return listing if listing and catalogue_entry(self.seed, self._index[listing], listing).sku.lower() == \
                query["sku"].lower() else None
        raise InvalidInput("sku", "give one of the query parameters id, listing_id or sku")

    def _set_quantity(self, listing: str, quantity: int, cause: str) -> None:
        before = self._quantities[listing]
        self._quantities[listing] = quantity
        if quantity != before:
            self._stock_log.append(StockChange(self._clock(), listing, before, quantity, cause))

    def _change_random(self, count: int, rng: random.Random, cause: str) -> dict[str, int]:
        if count <= 0 or not self._order:
            return {}
        changed = {}
        for listing in rng.sample(self._order, min(count, len(self._order))):
            # A step of 1..40 modulo 41 never lands on the current stock (when it is in 0..40).
            new = (self._quantities[listing] + rng.randint(1, MAX_GENERATED_QUANTITY)) % (MAX_GENERATED_QUANTITY + 1)
            self._set_quantity(listing, new, cause)
            changed[listing] = new
        if cause == "drift":
            self._counters.drifted_listings += len(changed)
        return changed

    def _count_status(self, status: int) -> None:
        with self._lock:
            self._counters.by_status[status] += 1

    def _error_v1(self, status: int, code: str, message: str, *, target: str | None = None) -> web.Response:
        """An ``ErrorResponseV1`` answer."""
        error: dict[str, Any] = {"code": code, "message": message}
        if target is not None:
            error["target"] = target
        return web.json_response({"error": error, "requestId": f"sandbox-{next(self._request_ids):08d}"},
                                 status=status)

    def _not_found(self) -> web.Response:
        return self._error_v1(404, "not-found", "Listing not found, or it does not belong to the authenticated "
                              "merchant")

    def _bad_request(self, request: web.Request, target: str, message: str) -> web.Response:
        # The spec's 400 is a bare JSON string on the listing POSTs, ErrorResponseV1 elsewhere.
        if request.method == "POST":
            return _bare_error(400, message)
        return self._error_v1(400, "invalid-parameter", message, target=target)


#: Where an application made by :meth:`BackMarketSandbox.build_app` keeps its sandbox.
SANDBOX_KEY = web.AppKey("backmarket_sandbox", BackMarketSandbox)


def build_app(sandbox: BackMarketSandbox | None = None, **dials: Any) -> web.Application:
    """The aiohttp application of ``sandbox``, or of a new ``BackMarketSandbox(**dials)``.

    The sandbox is ``app[SANDBOX_KEY]``, for the truth and the counters.
    """
    if sandbox is None:
        sandbox = BackMarketSandbox(**dials)
    elif dials:
        raise TypeError("give either a sandbox or dials for a new one, not both")
    return sandbox.build_app()


# -- small pure helpers --------------------------------------------------------------------------


def _endpoint(request: web.Request) -> str:
    """``METHOD /route/{template}``: how requests are counted."""
    resource = request.match_info.route.resource
    if resource is None:
        return f"{request.method} (no route)"
    return f"{request.method} {resource.canonical.rstrip('/') or '/'}"


def _locale(request: web.Request) -> str:
    """The request's market (the gate has checked the header's shape)."""
    return request.headers.get("Accept-Language", DEFAULT_LOCALE)


def _waf_challenge() -> web.Response:
    # Cloudflare answers, not the application: hence its headers and the V2-like envelope.
    ray = uuid.uuid4().hex[:16]
    return web.json_response(WAF_CHALLENGE, status=403, headers={"Server": "cloudflare", "CF-RAY": f"{ray}-CDG"})


def _bare_error(status: int, message: str) -> web.Response:
    return web.json_response(message, status=status)


def _query_int(request: web.Request, name: str, *, default: int | None = None, minimum: int | None = None,
               maximum: int | None = None, choices: tuple[int, ...] | None = None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw):
        raise InvalidInput(name, f"{name} must be an integer, got {raw!r}")
    value = int(raw)
    if minimum is not None and value < minimum:
        raise InvalidInput(name, f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InvalidInput(name, f"{name} must be at most {maximum}, got {value}")
    if choices is not None and value not in choices:
        raise InvalidInput(name, f"{name} must be one of {', '.join(map(str, choices))}, got {value}")
    return value


def _page_url(base: str, request: web.Request, page: int) -> str:
    # As Django REST framework builds them: the request's other parameters kept, sorted, and no
    # ``page`` at all for page 1.
    params = [(key, value) for key, value in request.query.items() if key != "page"]
    if page > 1:
        params.append(("page", str(page)))
    query = urlencode(sorted(params))
    return f"{base}{request.path}" + (f"?{query}" if query else "")


def _malformed_page(page: int, count: int, next_url: str | None, previous_url: str | None,
                    items: list[str]) -> str:
    results: Any = [json.loads(item) for item in items]
    kind = malformed_kind(page) if results else MALFORMED_KINDS[0]
    if kind == "results-not-a-list":
        results = {item["id"]: item for item in results}
    elif kind == "missing-quantity":
        del results[0]["quantity"]
    else:
        results[0]["quantity"] = "abc"
    return json.dumps({"count": count, "next": next_url, "previous": previous_url, "results": results})


def _check_quantity(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QUANTITY:
        raise ValueError(f"a quantity must be an integer in 0..{MAX_QUANTITY}, got {value!r}")
    return value


def _check_dial(name: str, value: Any) -> Any:
    if name == "token":
        if not isinstance(value, str) or not value:
            raise ValueError("token must be a non-empty string")
    elif name in ("quota_requests", "drift_per_request", "lines_per_window"):
        value = value or 0
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    elif name in ("quota_window_s", "quota_block_s", "latency_s", "lines_window_s"):
        value = float(value or 0.0)
        if value < 0 or math.isnan(value):
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    elif name == "error_rate":
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {value!r}")
    elif name == "malformed_pages":
        value = frozenset(int(page) for page in value or ())
    elif name == "restock_on_cancel" and not isinstance(value, bool):
        raise ValueError(f"restock_on_cancel must be true or false, got {value!r}")
    elif name == "base_url_for_next" and value is not None and not isinstance(value, str):
        raise ValueError(f"base_url_for_next must be a URL string or None, got {value!r}")
    return value


def _decimal_string(name: str, value: Any, *, nullable: bool = False) -> str | None:
    """A price as the API stores it ("160.99"), from a string (preferred) or a number."""
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidInput(name, f"{name} must be a decimal string like '160.99', got {value!r}")
    text = value if isinstance(value, str) else repr(value)
    try:
        amount = Decimal(text)
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite() or amount < 0 or \
            (isinstance(value, str) and not _DECIMAL.fullmatch(value)):
        raise InvalidInput(name, f"{name} must be a decimal string like '160.99', got {value!r}")
    return f"{amount.quantize(Decimal('0.01'))}"


def _integer_field(name: str, value: Any, minimum: int, maximum: int = MAX_QUANTITY) -> int:
    """An integer given as an int or a string of digits (both allowed by the spec)."""
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidInput(name, f"{name} must be an integer in {minimum}..{maximum}, got {value!r}")
    return value


def _parse_update(body: dict[str, Any], locale: str,
                  current: dict[str, Any]) -> tuple[int | None, dict[str, Any], list[str]]:
    """Validate a POST body: (new quantity or None, per-market field changes, shippings messages).

    Unknown fields are ignored ("specify the field(s) you would like to change").
    """
    quantity = _integer_field("quantity", body["quantity"], 0) if "quantity" in body else None
    fields: dict[str, Any] = {}
    currency = market_currency(locale)[0]
    if "currency" in body and body["currency"] != currency:
        raise InvalidInput("currency", f"currency {body['currency']!r} does not match the market {locale} "
                           f"({currency})")
    if "price" in body:
        fields["price"] = _decimal_string("price", body["price"])
    if "min_price" in body:
        fields["min_price"] = _decimal_string("min_price", body["min_price"], nullable=True)
    if "comment" in body:
        comment = body["comment"]
        if comment is not None and (not isinstance(comment, str) or len(comment) > 500):
            raise InvalidInput("comment", "comment must be a string of at most 500 characters, or null")
        fields["comment"] = comment
    if "warranty_delay" in body:
        fields["warranty_delay"] = _integer_field("warranty_delay", body["warranty_delay"], 12, 120)
    shippings, messages = _parse_shippings(body, locale, current["shippings"])
    if messages:
        fields["shippings"] = shippings
    return quantity, fields, messages


def _parse_shippings(body: dict[str, Any], locale: str,
                     current: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Apply ``shipper_N``/``shipper_display_N``/``shipping_delay_N``/``shipping_price_N`` (N = 1..3)."""
    options: dict[int, dict[str, Any] | None] = dict(enumerate((dict(option) for option in current), start=1))
    messages = []
    for number in (1, 2, 3):
        given = {field: body[f"{field}_{number}"] for field in _SHIPPING_FIELDS if f"{field}_{number}" in body}
        if not given:
            continue
        if "shipper" in given and given["shipper"] is None:
            options[number] = None
            messages.append(f"Shipping method {number} removed")
            continue
        option = options.get(number)
        if option is None:  # a new option: its displayed name is the shipper's unless given
            shipper = given.get("shipper") or "Other"
            option = {"shipping_price": "0.00", "shipping_delay": 24, "shipper": shipper, "shipper_display": shipper,
                      "country_code": locale}
        for field, value in given.items():
            if field == "shipping_price":
                option[field] = _decimal_string(f"shipping_price_{number}", value if value is not None else "0.00")
            elif field == "shipping_delay":
                option[field] = _integer_field(f"shipping_delay_{number}", value if value is not None else 24, 0, 720)
            elif value is not None:
                if not isinstance(value, str) or not value:
                    raise InvalidInput(f"{field}_{number}", f"{field}_{number} must be a non-empty string")
                option[field] = value
        options[number] = option
        messages.append(f"Shipping method {number} ({option['shipper']}) updated")
    return [option for _, option in sorted(options.items()) if option is not None], messages
