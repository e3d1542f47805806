"""The Back Market seller API client (sandbox/specs/backmarket-openapi.yml), on aiohttp.

What a stock sync needs: listing pages (``GET /ws/listings``), one listing, and the absolute stock
update (``POST /ws/listings/{listingId}``).  Every request takes a slot from the fleet-wide limiter
first; a 429 penalizes the whole fleet (Back Market blocks for about 10 s and sends no
Retry-After); 5xx answers and transport failures are retried with exponential backoff; anything
permanent (401, 403, 404, 400, a malformed page) is raised at once as a typed error from
:mod:`clients.errors`.  After its last attempt a transient error is raised too, so the actor
(and Dramatiq's retries) decide what happens next.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from clients.errors import MalformedResponse

# RequestRecord is re-exported: one record type for every API, so metrics need one hook.
from clients.http import (MAX_BACKOFF_S, AttemptHeaders, ErrorDetails, JsonApi, RequestRecord, RetryPolicy, Secret,
                          retry_after, with_hint)
from clients.http import is_int as _is_int
from clients.http import json_kind as _kind
from clients.http import text as _text

if TYPE_CHECKING:
    from clients.ratelimit import FleetRateLimiter

#: The API's name in errors, records and metrics.
API = "backmarket"

#: Route templates: how calls are named in records, metrics and errors.
LIST_LISTINGS = "GET /ws/listings"
GET_LISTING = "GET /ws/listings/{listingId}"
UPDATE_LISTING = "POST /ws/listings/{listingId}"
LIST_ORDERS = "GET /ws/orders"

#: The largest ``page-size`` Back Market accepts.
MAX_PAGE_SIZE = 50

_LOCALE = re.compile(r"^[a-z]{2}-[a-z]{2}$")
_INTEGER = re.compile(r"^[0-9]+$")
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)

#: What to tell an operator, by status, when it is not obvious from the server's own words.
_HINTS = {
    400: "Back Market refused the request as invalid",
    401: "the token was refused: check the API token and that it was made on this platform (EU/NA/AP, "
         "prod or preprod)",
    403: "forbidden: the account may not be a merchant, the ingestion channel may be disabled, or the WAF "
         "blocked the call (check the User-Agent)",
    404: "no such listing, or it does not belong to this merchant",
    429: "rate limited by Back Market (Cloudflare blocks for about 10 s)",
}


@dataclass(frozen=True)
class Listing:
    """The fields of a Back Market ``ListingPublic`` that a stock sync needs, validated.

    ``id`` is the listing's uuid (preferred by the API), ``listing_id`` its legacy integer id,
    ``quantity`` the stock (one number for every country).  ``price`` and ``currency`` are those of
    the market chosen by ``Accept-Language``; they and ``title`` may be ``None`` when the API leaves
    them empty.
    """

    id: str
    listing_id: int
    sku: str
    quantity: int
    title: str | None
    publication_state: int
    price: str | None
    currency: str | None

    def to_message(self) -> dict:
        """A JSON-able dict, to pass in a Dramatiq message."""
        return {"id": self.id, "listing_id": self.listing_id, "sku": self.sku, "quantity": self.quantity,
                "title": self.title, "publication_state": self.publication_state, "price": self.price,
                "currency": self.currency}

    @classmethod
    def from_message(cls, data: dict) -> Listing:
        """The inverse of :meth:`to_message`; raises ``KeyError`` for a missing field."""
        return cls(id=data["id"], listing_id=data["listing_id"], sku=data["sku"], quantity=data["quantity"],
                   title=data.get("title"), publication_state=data["publication_state"], price=data.get("price"),
                   currency=data.get("currency"))


@dataclass(frozen=True)
class ListingsPage:
    """One page of ``GET /ws/listings``: ``count`` is the total of listings over all pages."""

    page: int
    count: int
    next: str | None
    previous: str | None
    results: list[Listing]


class _Invalid(ValueError):
    """A field of an item is not what the spec promises (turned into :class:`MalformedResponse`)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field {field!r} {problem}")
        self.field = field


class BackMarketClient:
    """A Back Market seller API client sharing an aiohttp session (one per worker process).

    Parameters:
      session(aiohttp.ClientSession): The process's HTTP session.
      base_url(str): e.g. ``https://www.backmarket.fr`` (paths are under ``/ws/``).
      token(str): The back-office API token, sent as ``Authorization: Basic <token>`` verbatim.
        It never appears in an error, a log line or a repr.
      user_agent(str): Mandatory, e.g. ``BM-Company-Integration;ops@company.com``.
      language(str): ``Accept-Language``: the market whose prices and filters apply, e.g. ``fr-fr``.
      limiter(FleetRateLimiter): The fleet-wide quota; every HTTP attempt takes one slot first.
      timeout_s(float): Total time allowed for one HTTP attempt, in seconds.
      attempts(int): HTTP attempts per call for transient errors (429, 5xx, transport).
      penalty_s(float): How long a 429 blocks the whole fleet, in seconds.
      backoff_s(float): First backoff after a 5xx or transport error, in seconds; it doubles each
        attempt (up to 30 s) with up to ``backoff_s`` of jitter.
      on_request(Callable[[RequestRecord], None]): Called once per HTTP attempt.
    """

    def __init__(self, session: aiohttp.ClientSession, *, base_url: str, token: str, user_agent: str,
                 language: str = "fr-fr", limiter: FleetRateLimiter | None = None, timeout_s: float = 30,
                 attempts: int = 4, penalty_s: float = 10.0, backoff_s: float = 0.5,
                 on_request: Callable[[RequestRecord], None] | None = None) -> None:
        if not _LOCALE.match(language):
            raise ValueError(f"language must be a lowercase locale like 'fr-fr', got {language!r}")
        if not user_agent:
            raise ValueError("user_agent is mandatory for Back Market (requests without one may be refused)")
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.user_agent = user_agent
        self.language = language
        self.limiter = limiter
        self.attempts = attempts
        self.penalty_s = penalty_s
        self.backoff_s = backoff_s
        self.on_request = on_request
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        secret = Secret(token)
        self._http = JsonApi(
            session, api=API, base_url=base_url, describe_error=_describe_error, reset_at=retry_after,
            request_id_header="X-Request-Id",
            auth=AttemptHeaders({"Authorization": f"Basic {token}"}, secret),
            headers={"User-Agent": user_agent, "Accept-Language": language, "Accept": "application/json",
                     # Sent on every call, GETs included, as Back Market's own examples do.
                     "Content-Type": "application/json"},
            retry=RetryPolicy(attempts=attempts, backoff_s=backoff_s, max_backoff_s=MAX_BACKOFF_S,
                              penalty_s=penalty_s),
            timeout_s=timeout_s, on_request=on_request, logger=self.logger)
        self.timeout = self._http.timeout

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(base_url={self.base_url!r}, language={self.language!r}, "
                f"user_agent={self.user_agent!r}, token=<hidden>)")

    async def get_listings_page(self, page: int, page_size: int = MAX_PAGE_SIZE) -> ListingsPage:
        """Fetch and validate one page of this merchant's listings.

        Raises:
          MalformedResponse: The page is not a ``{count, next, previous, results}`` envelope of
            valid listings; the message names the page, the item, its listing id and the field.
        """
        if page < 1:
            raise ValueError(f"page must be at least 1, got {page!r}")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size!r}")
        body = await self._call("GET", LIST_LISTINGS, "/ws/listings", params={"page": page, "page-size": page_size})
        return self._parse_page(page, body)

    async def get_listing(self, listing_id: str | int) -> dict:
        """One listing (``ListingPublic``), by uuid or legacy integer id, as the API returns it."""
        body = await self._call("GET", GET_LISTING, f"/ws/listings/{quote(str(listing_id), safe='')}")
        return self._expect_object(body, GET_LISTING, f"listing {listing_id}")

    async def update_listing(self, listing_id: str | int, *, quantity: int) -> dict:
        """Set a listing's stock to ``quantity`` (absolute, for every country) in one call.

        The update is absolute, so repeating it is harmless: transient failures are retried.
        Returns the updated listing as the API echoes it.
        """
        if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 0:
            raise ValueError(f"quantity must be a non-negative integer, got {quantity!r}")
        body = await self._call("POST", UPDATE_LISTING, f"/ws/listings/{quote(str(listing_id), safe='')}",
                                body={"quantity": quantity})
        return self._expect_object(body, UPDATE_LISTING, f"listing {listing_id}")

    async def get_orders_page(self, page: int, page_size: int = MAX_PAGE_SIZE, **filters: str | int) -> Any:
        """One page of ``GET /ws/orders`` as the API returns it; ``filters`` are its query parameters
        (``date_modification``, ``date_creation``, ``state``, ``country_code``).

        The orders are parsed by :mod:`clients.backmarket_orders`.
        """
        if page < 1 or not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page must be >= 1 and page_size in 1..{MAX_PAGE_SIZE}, got {page!r}, {page_size!r}")
        params = {**{name: str(value) for name, value in filters.items()}, "page": page, "page-size": page_size}
        return await self._call("GET", LIST_ORDERS, "/ws/orders", params=params)

    async def _call(self, method: str, route: str, path: str, *, params: dict | None = None,
                    body: dict | None = None) -> Any:
        answer = await self._http.call(method, route, path, params=params, body=body, limiter=self.limiter)
        return answer.body

    def _parse_page(self, page: int, body: Any) -> ListingsPage:
        where = f"page {page}"

        def malformed(problem: str) -> MalformedResponse:
            return MalformedResponse(f"{where}: {problem}", api=API, endpoint=LIST_LISTINGS, status=200)

        if not isinstance(body, dict):
            raise malformed(f"expected a JSON object envelope, got {_kind(body)}")
        missing = [key for key in ("count", "next", "previous", "results") if key not in body]
        if missing:
            raise malformed(f"envelope lacks {', '.join(missing)}")
        count = body["count"]
        if not _is_int(count) or count < 0:
            raise malformed(f"count must be a non-negative integer, got {count!r}")
        for key in ("next", "previous"):
            if body[key] is not None and not isinstance(body[key], str):
                raise malformed(f"{key} must be a URL string or null, got {_kind(body[key])}")
        if not isinstance(body["results"], list):
            raise malformed(f"results must be a list, got {_kind(body['results'])}")
        listings = []
        for index, item in enumerate(body["results"]):
            try:
                listings.append(parse_listing(item))
            except _Invalid as invalid:
                ident = item.get("id") or item.get("listing_id") if isinstance(item, dict) else None
                of = f" (listing {ident})" if ident else ""
                raise malformed(f"item {index}{of}: {invalid}") from None
        return ListingsPage(page=page, count=count, next=body["next"], previous=body["previous"], results=listings)

    def _expect_object(self, body: Any, route: str, what: str) -> dict:
        if not isinstance(body, dict):
            raise MalformedResponse(f"{what}: expected a JSON object, got {_kind(body)}", api=API, endpoint=route,
                                    status=200)
        return body


def parse_listing(item: Any) -> Listing:
    """Validate one ``ListingPublic`` and keep the fields a stock sync needs.

    Raises ``ValueError`` naming the field that is missing or wrong.
    """
    if not isinstance(item, dict):
        raise _Invalid("item", f"must be a JSON object, got {_kind(item)}")
    for field in ("id", "listing_id", "sku", "quantity", "publication_state"):
        if field not in item:
            raise _Invalid(field, "is missing")
    if not isinstance(item["id"], str) or not item["id"]:
        raise _Invalid("id", f"must be a non-empty string (uuid), got {item['id']!r}")
    if not _is_int(item["listing_id"]):
        raise _Invalid("listing_id", f"must be an integer, got {item['listing_id']!r}")
    if not isinstance(item["sku"], str) or not item["sku"]:
        raise _Invalid("sku", f"must be a non-empty string, got {item['sku']!r}")
    quantity = item["quantity"]
    if isinstance(quantity, str) and _INTEGER.match(quantity.strip()):
        quantity = int(quantity)
    if not _is_int(quantity) or quantity < 0:
        raise _Invalid("quantity", f"must be a non-negative integer, got {item['quantity']!r}")
    if not _is_int(item["publication_state"]):
        raise _Invalid("publication_state", f"must be an integer, got {item['publication_state']!r}")
    title = _optional_text(item, "title")
    price = item.get("price")
    if _is_int(price) or isinstance(price, float):
        # The spec says a decimal string; accept a JSON number rather than lose the listing.
        price = str(price)
    elif price is not None and not isinstance(price, str):
        raise _Invalid("price", f"must be a decimal string, got {price!r}")
    currency = _optional_text(item, "currency")
    return Listing(id=item["id"], listing_id=item["listing_id"], sku=item["sku"], quantity=quantity, title=title,
                   publication_state=item["publication_state"], price=price, currency=currency)


def _optional_text(item: dict, field: str) -> str | None:
    value = item.get(field)
    if value is not None and not isinstance(value, str):
        raise _Invalid(field, f"must be a string, got {_kind(value)}")
    return value


def _describe_error(status: int, raw: bytes, headers) -> ErrorDetails:
    """Read an error answer (any of Back Market's envelopes, or a Cloudflare page) for :class:`JsonApi`."""
    message, code, request_id = _describe(raw, headers)
    hint = _HINTS.get(status)
    if status == 403 and headers.get("cf-ray"):
        hint = "blocked by Back Market's WAF (Cloudflare): check the User-Agent; quote the cf-ray to support"
    return ErrorDetails(with_hint(message, hint), code=code, request_id=request_id, cf_ray=headers.get("cf-ray"))


def _describe(raw: bytes, headers) -> tuple[str, str | None, str | None]:
    """``(message, code, request_id)`` from an error body, whichever envelope it uses."""
    text = _text(raw).strip()
    if not text:
        return "", None, None
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    else:
        if isinstance(body, str):
            # 400 on listing updates is a bare JSON string, e.g. "parameter catalog not found".
            return body, None, None
        if isinstance(body, dict):
            request_id = body.get("requestId") if isinstance(body.get("requestId"), str) else None
            error = body.get("error")
            if isinstance(error, dict):  # ErrorResponseV1
                return str(error.get("message") or ""), _code(error), request_id
            errors = body.get("errors")
            if isinstance(errors, list) and errors:  # ErrorResponseV2 (also the WAF's bot challenge)
                first = errors[0] if isinstance(errors[0], dict) else {}
                messages = "; ".join(str(e.get("message") or e.get("code")) for e in errors if isinstance(e, dict))
                return messages or text, _code(first), request_id
            for key in ("message", "detail"):
                if isinstance(body.get(key), str):
                    return body[key], None, request_id
        return text, None, None
    content_type = headers.get("Content-Type", "")
    if "html" in content_type or text[:200].lower().lstrip().startswith(("<!doctype html", "<html")):
        title = _HTML_TITLE.search(text)
        title_text = f" titled {' '.join(title.group(1).split())!r}" if title else ""
        source = "Cloudflare " if headers.get("cf-ray") or headers.get("Server", "").lower() == "cloudflare" else ""
        return f"{source}HTML page{title_text} instead of JSON", None, None
    return text, None, None


def _code(error: dict) -> str | None:
    code = error.get("code")
    return str(code) if code is not None else None
