"""The Ingram Micro Reseller API v6 client (docs/api-shapes.md §2), on aiohttp.

What the supplier sync needs: price & availability for up to 50 products a call
(``POST /resellers/v6/catalog/priceandavailability``) and one product's details
(``GET /resellers/v6/catalog/details/{ingramPartNumber}``), both behind an OAuth client-credentials
token.

- **The token** is shared by the whole fleet through Redis (:class:`SharedToken`): one worker
  fetches it under a Redis lock, stores it with its expiry, and every worker reads it.  It is
  replaced before it expires (at most 24 h after it was issued).  A 401 makes the client drop
  that token and fetch a new one once; a second 401 is an error.
- **Quotas** are fleet-wide :class:`clients.ratelimit.FleetRateLimiter` instances (one for price &
  availability, one for details): every HTTP attempt takes a slot first.  A 429 penalizes the
  whole fleet until ``X-RateLimit-Reset``.
- **5xx answers and timeouts** are retried with exponential backoff and jitter (tenacity); after
  the last attempt the typed error of :mod:`clients.errors` is raised, transient or permanent, and
  the actor's retry schedule takes over.
- **207 Multi-Status** answers are parsed item by item: products the API answered with an error
  come back as :class:`ProductError` next to the products it priced.

:class:`FleetSemaphore` (at most N holders across the fleet, a lease that expires if its holder
dies) lives here too because the price & availability batches are its only user so far.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Sequence
from urllib.parse import quote

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from clients.backmarket import RequestRecord  # one record type for every API, so metrics need one hook
from clients.errors import (ApiError, MalformedResponse, NotFound, RateLimited, TransportError, Unauthorized,
                            error_class, is_transient)
from clients.ratelimit import FleetRateLimiter

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["API", "DETAILS", "MAX_PRODUCTS", "PRICE_AVAILABILITY", "TOKEN", "FleetSemaphore", "IngramClient",
           "check_batch_size", "give_back",
           "LocalToken", "PriceAvailability", "PriceAvailabilityResult", "ProductError", "RequestRecord",
           "SharedToken", "WarehouseStock", "parse_price_availability"]

#: The API's name in errors, records and metrics.
API = "ingram"

#: Route templates: how calls are named in records, metrics and errors.
TOKEN = "POST /oauth/oauth20/token"
PRICE_AVAILABILITY = "POST /resellers/v6/catalog/priceandavailability"
DETAILS = "GET /resellers/v6/catalog/details/{ingramPartNumber}"

#: The most products one price & availability request may carry.
MAX_PRODUCTS = 50

#: The longest a token is used, whatever ``expires_in`` says (the docs: "expires every 24 hours").
MAX_TOKEN_LIFETIME_S = 24 * 3600

#: The longest exponential backoff between two attempts (seconds).
MAX_BACKOFF_S = 30.0

#: ``IM-CorrelationID`` and ``IM-SenderID`` are at most this long (the SDK enforces it).
MAX_HEADER_ID = 32

#: ``X-RateLimit-Reset`` values below this are read as seconds from now rather than an epoch time.
_EPOCH_FLOOR = 1_000_000_000

_COUNTRY = re.compile(r"^[A-Z]{2}$")
_INTEGER = re.compile(r"^[0-9]+$")


def check_batch_size(batch_size: int) -> int:
    """Return ``batch_size`` if a price & availability request may carry that many products; else raise.

    Raises:
      ValueError: saying why (Ingram Micro takes 1 to 50 products a request).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_PRODUCTS:
        raise ValueError(f"batch size {batch_size!r} refused: Ingram Micro's price & availability takes 1 to "
                         f"{MAX_PRODUCTS} products a request")
    return batch_size


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarehouseStock:
    """Stock of one product in one Ingram Micro warehouse."""

    warehouse_id: str
    location: str | None
    quantity_available: int
    quantity_backordered: int

    def to_json(self) -> dict[str, Any]:
        """The JSON stored per warehouse (keyed by ``warehouse_id`` by the caller)."""
        return {"location": self.location, "available": self.quantity_available,
                "backordered": self.quantity_backordered}


@dataclass(frozen=True)
class PriceAvailability:
    """One product of a price & availability answer, validated.

    ``price`` is the reseller's price (``pricing.customerPrice``); ``status`` is ``productStatus``
    (whether the product is active), ``product_class`` Ingram's stocking class (A, B, ... D
    discontinued, ...), ``status_code``/``status_message`` the item's ``productStatusCode`` and
    message (``W`` warnings land here; ``E`` errors become :class:`ProductError` instead).
    """

    part_number: str
    vendor_part_number: str | None
    customer_part_number: str | None
    upc: str | None
    vendor_name: str | None
    description: str | None
    status: str | None
    status_code: str | None
    status_message: str | None
    product_class: str | None
    available: bool | None
    total_availability: int | None
    warehouses: tuple[WarehouseStock, ...]
    price: Decimal | None
    retail_price: Decimal | None
    currency: str | None

    @property
    def warehouses_json(self) -> dict[str, dict[str, Any]]:
        """Per-warehouse stock as stored: ``{warehouseId: {location, available, backordered}}``."""
        return {w.warehouse_id: w.to_json() for w in self.warehouses}


@dataclass(frozen=True)
class ProductError:
    """A product the API answered with an error inside a 200/207 (or left out of its answer)."""

    part_number: str
    code: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.part_number}: {self.message}" + (f" (code {self.code})" if self.code else "")


@dataclass(frozen=True)
class PriceAvailabilityResult:
    """One price & availability call: the products priced and the products in error."""

    status: int
    products: list[PriceAvailability]
    errors: list[ProductError] = field(default_factory=list)


# -- the shared token ----------------------------------------------------------------------------

# Delete the token (or a lock) only if it is still the one we mean: another worker may already have
# stored its replacement, which must survive.
_DELETE_IF_EQUAL = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
"""

#: ``fetch()`` of a token store: returns ``(access_token, lifetime_s)``.
TokenFetcher = Callable[[], Awaitable[tuple[str, float]]]


def cache_lifetime(lifetime_s: float, refresh_before_s: float) -> float:
    """How long a token with ``lifetime_s`` left is kept: at most 24 h, ending ``refresh_before_s`` early.

    A short-lived token (less than twice ``refresh_before_s``) is kept for half its life instead, so
    that it is still used at all.
    """
    lifetime = min(float(lifetime_s), MAX_TOKEN_LIFETIME_S)
    early = min(refresh_before_s, lifetime / 2)
    return max(lifetime - early, 0.001)


class SharedToken:
    """An OAuth access token shared by every worker of the fleet through Redis.

    The token is stored with ``SET ... PX``: its key expires ``refresh_before_s`` before the token
    does (and at most 24 h after it was issued), so the next caller fetches a new one while the old
    one still works for the requests in flight.  One caller fetches at a time, under a Redis lock
    (``SET NX PX``); the others wait for the new token and read it.

    The token sits in Redis in clear: Redis is the fleet's trusted store (it also holds the
    messages).  Nothing here logs or raises it.

    Parameters:
      redis(redis.asyncio.Redis): An asyncio Redis client (fakeredis works too).
      name(str): Which token: one per API app (base URL and client id).
      namespace(str): Prefix of the Redis keys.
      refresh_before_s(float): Replace the token this long before it expires.
      lock_ttl_s(float): The longest a fetch may hold the lock (a dead fetcher's lock expires).
      poll_s(float): How often a waiting caller looks for the new token.
    """

    def __init__(self, redis: "redis.asyncio.Redis", name: str, *, namespace: str = "stocksync",
                 refresh_before_s: float = 300.0, lock_ttl_s: float = 30.0, poll_s: float = 0.01) -> None:
        self.redis = redis
        self.key = f"{namespace}:oauth:{name}:token"
        self.lock_key = f"{namespace}:oauth:{name}:lock"
        self.refresh_before_s = refresh_before_s
        self.lock_ttl_s = lock_ttl_s
        self.poll_s = poll_s
        self._delete_if = redis.register_script(_DELETE_IF_EQUAL)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r})"

    async def get(self, fetch: TokenFetcher) -> str:
        """The fleet's current token; fetch and store a new one first if there is none.

        Raises whatever ``fetch`` raises (the lock is released, so another caller may try).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lock_ttl_s * 2
        while True:
            stored = await self.redis.get(self.key)
            if stored is not None:
                return stored.decode() if isinstance(stored, bytes) else stored
            owner = uuid.uuid4().hex
            if await self.redis.set(self.lock_key, owner, nx=True, px=max(1, round(self.lock_ttl_s * 1000))):
                try:
                    # Another worker may have stored one between our GET and our lock.
                    stored = await self.redis.get(self.key)
                    if stored is not None:
                        return stored.decode() if isinstance(stored, bytes) else stored
                    token, lifetime_s = await fetch()
                    keep_ms = max(1, round(cache_lifetime(lifetime_s, self.refresh_before_s) * 1000))
                    await self.redis.set(self.key, token, px=keep_ms)
                    return token
                finally:
                    await self._delete_if(keys=[self.lock_key], args=[owner])
            # Someone else is fetching: wait for their token (or for their lock to go).
            if loop.time() > deadline:
                raise TimeoutError(f"no OAuth token appeared in {self.key!r} within {self.lock_ttl_s * 2:g}s")
            await asyncio.sleep(self.poll_s)

    async def invalidate(self, token: str) -> bool:
        """Drop the stored token if it is still ``token`` (the one refused); True if dropped."""
        return bool(await self._delete_if(keys=[self.key], args=[token]))


class LocalToken:
    """A token kept in this process only (a client without Redis: scripts, unit tests)."""

    def __init__(self, refresh_before_s: float = 300.0) -> None:
        self.refresh_before_s = refresh_before_s
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    async def get(self, fetch: TokenFetcher) -> str:
        """The current token, fetched first if there is none or it is due for replacement."""
        async with self._lock:
            if self._token is None or time.monotonic() >= self._expires_at:
                token, lifetime_s = await fetch()
                self._token = token
                self._expires_at = time.monotonic() + cache_lifetime(lifetime_s, self.refresh_before_s)
            return self._token

    async def invalidate(self, token: str) -> bool:
        """Forget the token if it is still ``token``."""
        if self._token is not None and self._token == token:
            self._token = None
            return True
        return False


# -- the fleet-wide concurrency limit ------------------------------------------------------------

# KEYS[1]: sorted set of leases (member: holder id, score: lease end in ms, Redis time).
# KEYS[2]: list of wake-ups, one pushed per release, popped by a waiter (BLPOP).
# Expired leases (their holder died) are dropped first, so a killed worker's slot comes back.
_SEMAPHORE = """
if redis.replicate_commands then
  redis.replicate_commands()
end
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now)
local command = ARGV[1]
if command == "acquire" then
  local limit, ttl, holder = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
  if redis.call("ZSCORE", KEYS[1], holder) or redis.call("ZCARD", KEYS[1]) < limit then
    redis.call("ZADD", KEYS[1], now + ttl, holder)
    redis.call("PEXPIRE", KEYS[1], ttl * 2)
    return {1, 0}
  end
  local first = redis.call("ZRANGE", KEYS[1], 0, 0, "WITHSCORES")
  return {0, tonumber(first[2]) - now}
elseif command == "renew" then
  local ttl, holder = tonumber(ARGV[2]), ARGV[3]
  if redis.call("ZSCORE", KEYS[1], holder) then
    redis.call("ZADD", KEYS[1], now + ttl, holder)
    redis.call("PEXPIRE", KEYS[1], ttl * 2)
    return 1
  end
  return 0
elseif command == "release" then
  local holder, limit = ARGV[2], tonumber(ARGV[3])
  local removed = redis.call("ZREM", KEYS[1], holder)
  if removed == 1 then
    redis.call("RPUSH", KEYS[2], "1")
    redis.call("LTRIM", KEYS[2], -limit, -1)
    redis.call("PEXPIRE", KEYS[2], 60000)
  end
  return removed
elseif command == "count" then
  return redis.call("ZCARD", KEYS[1])
end
return redis.error_reply("semaphore: unknown command " .. tostring(command))
"""


class FleetSemaphore:
    """At most ``limit`` holders at once across every process sharing Redis; a holder waits its turn.

    Dramatiq's ``ConcurrentRateLimiter`` raises when full (and burns the message's retries) and a
    slot leaked by a killed worker can stay taken; here a slot is a lease that its holder renews
    while it runs (every ``ttl_s / 3``) and that expires ``ttl_s`` after a holder dies.  A waiter
    blocks on a Redis list that each release pushes to, so it wakes as soon as a slot frees (and at
    least every ``max_block_s`` to look for expired leases).

    Parameters:
      redis(redis.asyncio.Redis): An asyncio Redis client (fakeredis works too).
      name(str): The limit's name; every instance with the same name shares the slots.
      namespace(str): Prefix of the Redis keys.
      ttl_s(float): Lease length: how long a dead holder keeps its slot.
      max_block_s(float): The longest one wait on the wake-up list lasts.
    """

    def __init__(self, redis: "redis.asyncio.Redis", name: str, *, namespace: str = "stocksync",
                 ttl_s: float = 60.0, max_block_s: float = 1.0) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s!r}")
        self.redis = redis
        self.name = name
        self.key = f"{namespace}:semaphore:{name}"
        self.wake_key = f"{namespace}:semaphore:{name}:wake"
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.max_block_s = max_block_s
        self._script = redis.register_script(_SEMAPHORE)
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r}, ttl_s={self.ttl_ms / 1000:g})"

    async def holders(self) -> int:
        """How many live leases there are now."""
        return int(await self._script(keys=[self.key, self.wake_key], args=["count"]))

    async def acquire(self, limit: int, holder: str) -> float:
        """Wait for a slot for ``holder``; return the seconds spent waiting."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            granted, wait_ms = await self._script(keys=[self.key, self.wake_key],
                                                  args=["acquire", limit, self.ttl_ms, holder])
            if int(granted):
                return loop.time() - started
            # A release wakes us at once; the timeout catches leases that expire instead.
            timeout = min(max(int(wait_ms), 1) / 1000, self.max_block_s)
            await self.redis.blpop([self.wake_key], timeout=max(timeout, 0.01))

    async def release(self, holder: str, limit: int) -> bool:
        """Give ``holder``'s slot back and wake one waiter; False if its lease had already expired."""
        return bool(await self._script(keys=[self.key, self.wake_key], args=["release", holder, limit]))

    @contextlib.asynccontextmanager
    async def hold(self, limit: int) -> AsyncIterator[float]:
        """``async with semaphore.hold(limit) as waited:`` run the block in one of ``limit`` slots."""
        holder = uuid.uuid4().hex
        waited = await self.acquire(limit, holder)
        renewer = asyncio.create_task(self._renew(holder))
        try:
            yield waited
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await self.release(holder, limit)

    async def _renew(self, holder: str) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                alive = await self._script(keys=[self.key, self.wake_key], args=["renew", self.ttl_ms, holder])
            except Exception:  # Redis hiccup: the lease still has two thirds of its time
                self.logger.exception("could not renew lease of %s", self.key)
                continue
            if not int(alive):
                # Our event loop stalled longer than the lease: someone else may hold our slot now.
                self.logger.warning("lease of %s expired while held; the limit may be exceeded once", self.key)
                return


async def give_back(limiter: FleetRateLimiter, granted_at: float) -> bool:
    """Take the slot granted at ``granted_at`` (``limiter.last_granted_at``) out of the limiter's window.

    For a request the API refused (429): it did not count against the API's quota, so it should not
    count against ours.  The window is ``ratelimit.lua``'s sorted set of grants scored by Redis time
    in microseconds; no two grants share a microsecond (scripts run one at a time).  Returns whether
    a slot was given back (not if it already left the window).
    """
    at_us = round(granted_at * 1_000_000)
    # A float of seconds keeps microseconds to within one: allow for it.
    return bool(await limiter.redis.zremrangebyscore(limiter.key, at_us - 2, at_us + 2))


# -- the client ----------------------------------------------------------------------------------


class _Secret:
    """Holds a credential so that no repr, log line or traceback local shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<hidden>"

    __str__ = __repr__


class _TokenRefused(Exception):
    """A 401 on an API call: the token was refused.  Carries the error and the token (hidden)."""

    def __init__(self, error: Unauthorized, token: _Secret) -> None:
        super().__init__(str(error))
        self.error = error
        self.token = token


class _Invalid(ValueError):
    """A field of an answer is not what the spec promises (turned into :class:`MalformedResponse`)."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"field {field_name!r} {problem}")


class IngramClient:
    """An Ingram Micro Reseller API v6 client sharing an aiohttp session (one per worker process).

    Parameters:
      session(aiohttp.ClientSession): The process's HTTP session.
      base_url(str): e.g. ``https://api.ingrammicro.com:443`` (paths ``/oauth/...``, ``/resellers/v6/...``).
      client_id(str), client_secret(str): The API app's OAuth client credentials.  The secret and
        the access token never appear in an error, a log line or a repr.
      customer_number(str): ``IM-CustomerNumber`` (at most 10 characters).
      country_code(str): ``IM-CountryCode``, two upper-case letters.
      sender_id(str): Optional ``IM-SenderID`` (at most 32 characters).
      tokens(SharedToken | LocalToken): Where the access token lives; :class:`SharedToken` shares it
        with the fleet.  Default: this client only.
      pa_limiter(FleetRateLimiter), details_limiter(FleetRateLimiter): The fleet-wide quotas; every
        HTTP attempt of that kind takes one slot first.
      timeout_s(float): Total time allowed for one HTTP attempt.
      attempts(int): HTTP attempts per call for transient errors (429, 5xx, transport).
      backoff_s(float): First backoff after a 5xx or a timeout; it doubles each attempt (up to 30 s)
        with up to ``backoff_s`` of jitter.
      min_penalty_s(float): The least a 429 pauses the fleet, whatever ``X-RateLimit-Reset`` says
        (clocks differ); also the pause when the 429 has no reset time.
      on_request(Callable[[RequestRecord], None]): Called once per HTTP attempt, token calls included.
    """

    def __init__(self, session: aiohttp.ClientSession, *, base_url: str, client_id: str, client_secret: str,
                 customer_number: str, country_code: str = "US", sender_id: str | None = None,
                 tokens: SharedToken | LocalToken | None = None, pa_limiter: FleetRateLimiter | None = None,
                 details_limiter: FleetRateLimiter | None = None, timeout_s: float = 30, attempts: int = 4,
                 backoff_s: float = 0.5, min_penalty_s: float = 1.0,
                 on_request: Callable[[RequestRecord], None] | None = None) -> None:
        if not client_id:
            raise ValueError("client_id is required (INGRAM_CLIENT_ID)")
        if not client_secret:
            raise ValueError("client_secret is required (INGRAM_CLIENT_SECRET)")
        if not customer_number or len(customer_number) > 10:
            raise ValueError(f"customer_number must be 1 to 10 characters (IM-CustomerNumber), got {customer_number!r}")
        if not _COUNTRY.match(country_code or ""):
            raise ValueError(f"country_code must be two upper-case letters like 'US', got {country_code!r}")
        if sender_id and len(sender_id) > MAX_HEADER_ID:
            raise ValueError(f"sender_id must be at most {MAX_HEADER_ID} characters, got {len(sender_id)}")
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts!r}")
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.customer_number = customer_number
        self.country_code = country_code
        self.sender_id = sender_id or None
        self.tokens = tokens if tokens is not None else LocalToken()
        self.pa_limiter = pa_limiter
        self.details_limiter = details_limiter
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.min_penalty_s = min_penalty_s
        self.on_request = on_request
        self._secret = _Secret(client_secret)
        self._backoff = (wait_exponential(multiplier=backoff_s, max=max(MAX_BACKOFF_S, backoff_s))
                         + wait_random(0, backoff_s))
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(base_url={self.base_url!r}, client_id={self.client_id!r}, "
                f"customer_number={self.customer_number!r}, country_code={self.country_code!r}, "
                f"client_secret=<hidden>)")

    # -- public calls ----------------------------------------------------------------------------

    async def price_and_availability(self, part_numbers: Sequence[str]) -> PriceAvailabilityResult:
        """Price and stock of up to 50 products, by Ingram part number.

        Products the API answers with an error (207) are in ``errors``, the others in ``products``;
        a product missing from the answer is an error too.

        Raises:
          ValueError: No products, more than 50, or a part number that is not a non-empty string.
          MalformedResponse: The answer is not a JSON array of product objects; the message names
            the item, its part number and the field.
          ApiError: Any other failure, after the client's own retries (see the class).
        """
        parts = list(part_numbers)
        if not 1 <= len(parts) <= MAX_PRODUCTS:
            raise ValueError(f"price & availability takes 1 to {MAX_PRODUCTS} products a request, got {len(parts)}")
        for part in parts:
            if not isinstance(part, str) or not part.strip():
                raise ValueError(f"part numbers must be non-empty strings, got {part!r}")
        body = {"showAvailableDiscounts": False, "showReserveInventoryDetails": False,
                "products": [{"ingramPartNumber": part} for part in parts]}
        status, answer = await self._call(
            "POST", PRICE_AVAILABILITY, "/resellers/v6/catalog/priceandavailability",
            params={"includeAvailability": "true", "includePricing": "true"}, body=body, limiter=self.pa_limiter)
        return parse_price_availability(answer, parts, status)

    async def product_details(self, part_number: str) -> dict[str, Any] | None:
        """A product's details (``ProductDetailResponse``) as the API returns them; None on 404.

        Raises:
          MalformedResponse: The answer is not a JSON object.
          ApiError: Any other failure, after the client's own retries.
        """
        if not isinstance(part_number, str) or not part_number.strip():
            raise ValueError(f"part_number must be a non-empty string, got {part_number!r}")
        try:
            status, answer = await self._call(
                "GET", DETAILS, f"/resellers/v6/catalog/details/{quote(part_number, safe='')}",
                limiter=self.details_limiter, empty_ok=True)
        except NotFound:
            return None  # the docs: 404 "No Content" — the product has no details
        if status == 204 or answer is None:
            return None
        if not isinstance(answer, dict):
            raise MalformedResponse(f"details of {part_number}: expected a JSON object, got {_kind(answer)}",
                                    api=API, endpoint=DETAILS, status=status)
        return answer

    async def access_token(self) -> str:
        """The current access token (the fleet's, when ``tokens`` is a :class:`SharedToken`)."""
        return await self.tokens.get(self._fetch_token)

    # -- HTTP ------------------------------------------------------------------------------------

    async def _fetch_token(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials", "client_id": self.client_id,
                "client_secret": self._secret.reveal()}
        retrying = AsyncRetrying(retry=retry_if_exception(is_transient), stop=stop_after_attempt(self.attempts),
                                 wait=self._backoff, before_sleep=self._log_retry, reraise=True)
        async for attempt in retrying:
            with attempt:
                status, raw, headers = await self._send(
                    "POST", TOKEN, "/oauth/oauth20/token", attempt.retry_state.attempt_number, data=form,
                    headers={"Accept": "application/json"})
                if not 200 <= status < 300:
                    error = self._error(TOKEN, status, raw, headers, None)
                    if status in (400, 401, 403):
                        # The docs answer bad credentials with 400 {"message": ...}: nothing a retry fixes.
                        raise Unauthorized(f"{error.message} — the token request was refused: check "
                                           f"INGRAM_CLIENT_ID ({self.client_id!r}) and INGRAM_CLIENT_SECRET",
                                           api=API, endpoint=TOKEN, status=status, code=error.code)
                    raise error
                return self._parse_token(self._json(TOKEN, status, raw))
        raise AssertionError("unreachable")  # pragma: no cover

    def _parse_token(self, body: Any) -> tuple[str, float]:
        def malformed(problem: str) -> MalformedResponse:
            return MalformedResponse(f"token answer: {problem}", api=API, endpoint=TOKEN, status=200)

        if not isinstance(body, dict):
            raise malformed(f"expected a JSON object, got {_kind(body)}")
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise malformed("access_token is missing or not a string")
        token_type = body.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise malformed(f"token_type must be Bearer, got {token_type!r}")
        expires_in = body.get("expires_in")
        # The SDK types expires_in as a string; the docs' example is a number.
        if isinstance(expires_in, str) and _INTEGER.match(expires_in.strip()):
            expires_in = int(expires_in)
        if not _is_number(expires_in) or expires_in <= 0:
            raise malformed(f"expires_in must be a positive number of seconds, got {expires_in!r}")
        return token, float(expires_in)

    async def _call(self, method: str, route: str, path: str, *, params: dict | None = None,
                    body: dict | None = None, limiter: FleetRateLimiter | None = None,
                    empty_ok: bool = False) -> tuple[int, Any]:
        """One API call: token, limiter, retries of transient errors, one token refresh on a 401."""
        refreshed = False
        while True:
            retrying = AsyncRetrying(retry=retry_if_exception(is_transient), stop=stop_after_attempt(self.attempts),
                                     wait=functools.partial(self._wait, limiter), before_sleep=self._log_retry,
                                     reraise=True)
            try:
                async for attempt in retrying:
                    with attempt:
                        return await self._attempt(method, route, path, params, body, limiter,
                                                   attempt.retry_state.attempt_number, empty_ok)
            except _TokenRefused as refused:
                if refreshed:
                    raise Unauthorized(f"{refused.error.message} — the access token was refused again right after "
                                       f"a refresh: check the API app's access and IM-CustomerNumber",
                                       api=API, endpoint=route, status=401, code=refused.error.code,
                                       request_id=refused.error.request_id) from None
                refreshed = True
                self.logger.info("%s: access token refused (401); fetching a new one", route)
                await self.tokens.invalidate(refused.token.reveal())

    async def _attempt(self, method: str, route: str, path: str, params: dict | None, body: dict | None,
                       limiter: FleetRateLimiter | None, number: int, empty_ok: bool) -> tuple[int, Any]:
        # The token is read before the wait: nothing may stand between the slot and the request, and a
        # token replaced meanwhile still works (it is replaced INGRAM_TOKEN_REFRESH_BEFORE_S early).
        token = await self.access_token()
        waited = await limiter.acquire() if limiter is not None else 0.0
        granted_at = limiter.last_granted_at if limiter is not None else None  # read before the next await
        correlation_id = uuid.uuid4().hex  # 32 characters: the SDK's limit
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json",
                   "IM-CustomerNumber": self.customer_number, "IM-CountryCode": self.country_code,
                   "IM-CorrelationID": correlation_id}
        if self.sender_id:
            headers["IM-SenderID"] = self.sender_id
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        status, raw, response_headers = await self._send(method, route, path, number, params=params, data=data,
                                                         headers=headers, waited=waited, token=token)
        if 200 <= status < 300:
            if empty_ok and (status == 204 or not raw.strip()):
                return status, None
            return status, self._json(route, status, raw, token)
        error = self._error(route, status, raw, response_headers, correlation_id, token)
        if status == 401:
            raise _TokenRefused(error, _Secret(token))
        if isinstance(error, RateLimited) and limiter is not None:
            # The supplier refused the whole app: every worker pauses until the window resets.  The
            # refused request did not count at the supplier, so its slot is given back: the retry
            # goes at the reset, not a whole window later.
            await limiter.penalize(self._penalty(error))
            if granted_at is not None:
                await give_back(limiter, granted_at)
        raise error

    async def _send(self, method: str, route: str, path: str, number: int, *, params: dict | None = None,
                    data: Any = None, headers: dict[str, str], waited: float = 0.0,
                    token: str | None = None) -> tuple[int, bytes, Any]:
        status = None
        started = time.monotonic()
        try:
            async with self.session.request(method, self.base_url + path, params=params, data=data,
                                            headers=headers, timeout=self.timeout) as response:
                status = response.status
                raw = await response.read()
                return status, raw, response.headers
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            status = None
            if isinstance(error, asyncio.TimeoutError) and not str(error):
                what = f"no complete answer within {self.timeout.total:g}s (timeout)"
            else:
                what = f"{type(error).__name__}: {error}".rstrip(": ")
            raise TransportError(self._redact(what, token), api=API, endpoint=route) from None
        finally:
            self._record(RequestRecord(API, route, status, number, time.monotonic() - started, waited))

    def _json(self, route: str, status: int, raw: bytes, token: str | None = None) -> Any:
        try:
            return json.loads(raw)
        except ValueError:
            raise MalformedResponse(f"the {status} answer is not JSON: {self._redact(_text(raw)[:120], token)!r}",
                                    api=API, endpoint=route, status=status) from None

    def _error(self, route: str, status: int, raw: bytes, headers, correlation_id: str | None,
               token: str | None = None) -> ApiError:
        """Turn an error answer (any of Ingram Micro's envelopes) into a typed error."""
        message, code = _describe(raw, headers)
        message = self._redact(message or _HINTS.get(status) or "empty body", token)
        cls = error_class(status)
        kwargs: dict[str, Any] = {"api": API, "endpoint": route, "status": status, "code": code,
                                  "request_id": headers.get("IM-CorrelationID") or correlation_id}
        if cls is RateLimited:
            kwargs["reset_at"] = _reset_at(headers)
        elif cls is ApiError and status in (408, 425):
            kwargs["permanent"] = False
        return cls(message, **kwargs)

    def _penalty(self, error: RateLimited) -> float:
        if error.reset_at is None:
            return self.min_penalty_s
        return max(error.reset_at - time.time(), self.min_penalty_s)

    def _wait(self, limiter: FleetRateLimiter | None, retry_state) -> float:
        error = retry_state.outcome.exception()
        if isinstance(error, RateLimited):
            if limiter is not None:
                # The fleet-wide penalty already makes the next acquire() wait until the reset.
                return 0.0
            return self._penalty(error)
        return self._backoff(retry_state)

    def _log_retry(self, retry_state) -> None:
        self.logger.warning("attempt %d/%d failed, retrying in %.2fs: %s", retry_state.attempt_number,
                            self.attempts, retry_state.next_action.sleep if retry_state.next_action else 0.0,
                            retry_state.outcome.exception())

    def _record(self, record: RequestRecord) -> None:
        if self.on_request is None:
            return
        try:
            self.on_request(record)
        except Exception:
            # Counting a request must never fail it.
            self.logger.exception("on_request callback failed")

    def _redact(self, text: str, token: str | None = None) -> str:
        secret = self._secret.reveal()
        if secret:
            text = text.replace(secret, "<client_secret>")
        if token:
            text = text.replace(token, "<token>")
        return text


# -- parsing -------------------------------------------------------------------------------------

#: What to tell an operator, by status, when the answer says nothing useful.
_HINTS = {
    400: "Ingram Micro refused the request as invalid",
    401: "the access token was refused",
    403: "forbidden: the API app may not be subscribed to this API",
    404: "not found",
    429: "too many requests: over Ingram Micro's quota",
}


def parse_price_availability(body: Any, requested: Sequence[str], status: int = 200) -> PriceAvailabilityResult:
    """Validate a price & availability answer (a top-level JSON array) against the products asked for.

    An item is matched to a requested product by ``ingramPartNumber``, else by ``index``.  An item
    with ``productStatusCode`` ``E`` is a :class:`ProductError`; a requested product with no item
    is one too ("not in the answer").

    Raises:
      MalformedResponse: naming the item, its part number and the field.
    """
    def malformed(problem: str) -> MalformedResponse:
        return MalformedResponse(f"price & availability answer: {problem}", api=API, endpoint=PRICE_AVAILABILITY,
                                 status=status)

    if not isinstance(body, list):
        what = f"an object with keys {', '.join(sorted(body)[:5])}" if isinstance(body, dict) else _kind(body)
        raise malformed(f"expected a top-level JSON array of products, got {what}")
    # Part numbers are matched as sent, else ignoring case (the API may answer in upper case).
    wanted = {part.upper(): part for part in requested}
    products: dict[str, PriceAvailability] = {}
    errors: dict[str, ProductError] = {}
    for position, item in enumerate(body):
        if not isinstance(item, dict):
            raise malformed(f"item {position} must be a JSON object, got {_kind(item)}")
        part = item.get("ingramPartNumber")
        index = item.get("index")
        if isinstance(part, str) and part.upper() in wanted:
            part = wanted[part.upper()]
        elif part in (None, "") and _is_int(index) and 0 <= index < len(requested):
            part = requested[index]  # an error item may name its product by position only
        elif part in (None, ""):
            raise malformed(f"item {position} has neither an ingramPartNumber nor a valid index")
        else:
            raise malformed(f"item {position} is for {part!r}, which was not asked for")
        code = item.get("productStatusCode")
        if isinstance(code, str) and code.strip().upper() == "E":
            message = item.get("productStatusMessage")
            errors[part] = ProductError(part, code, str(message) if message else "error (no message)")
            continue
        try:
            products[part] = _price_availability(part, item)
        except _Invalid as invalid:
            raise malformed(f"item {position} (product {part}): {invalid}") from None
    for part in requested:
        if part not in products and part not in errors:
            errors[part] = ProductError(part, None, "not in the answer")
    return PriceAvailabilityResult(status=status, products=[products[p] for p in requested if p in products],
                                   errors=[errors[p] for p in requested if p in errors])


def _price_availability(part: str, item: dict) -> PriceAvailability:
    availability = item.get("availability")
    if availability is not None and not isinstance(availability, dict):
        raise _Invalid("availability", f"must be an object, got {_kind(availability)}")
    availability = availability or {}
    available = availability.get("available")
    if available is not None and not isinstance(available, bool):
        raise _Invalid("availability.available", f"must be a boolean, got {available!r}")
    total = _optional_count(availability, "totalAvailability", "availability.totalAvailability")
    warehouses = []
    by_warehouse = availability.get("availabilityByWarehouse") or []
    if not isinstance(by_warehouse, list):
        raise _Invalid("availability.availabilityByWarehouse", f"must be a list, got {_kind(by_warehouse)}")
    for n, warehouse in enumerate(by_warehouse):
        where = f"availability.availabilityByWarehouse[{n}]"
        if not isinstance(warehouse, dict):
            raise _Invalid(where, f"must be an object, got {_kind(warehouse)}")
        warehouse_id = warehouse.get("warehouseId")
        if _is_int(warehouse_id):
            warehouse_id = str(warehouse_id)
        if not isinstance(warehouse_id, str) or not warehouse_id:
            raise _Invalid(f"{where}.warehouseId", f"must be a non-empty string, got {warehouse_id!r}")
        location = warehouse.get("location")
        warehouses.append(WarehouseStock(
            warehouse_id, location if isinstance(location, str) else None,
            _optional_count(warehouse, "quantityAvailable", f"{where}.quantityAvailable") or 0,
            _optional_count(warehouse, "quantityBackordered", f"{where}.quantityBackordered") or 0))
    pricing = item.get("pricing")
    if pricing is not None and not isinstance(pricing, dict):
        raise _Invalid("pricing", f"must be an object, got {_kind(pricing)}")
    pricing = pricing or {}
    currency = pricing.get("currencyCode")
    if currency is not None and not isinstance(currency, str):
        raise _Invalid("pricing.currencyCode", f"must be a string, got {currency!r}")
    return PriceAvailability(
        part_number=part, vendor_part_number=_optional_text(item, "vendorPartNumber"),
        customer_part_number=_optional_text(item, "customerPartNumber"), upc=_optional_text(item, "upc"),
        vendor_name=_optional_text(item, "vendorName"), description=_optional_text(item, "description"),
        status=_optional_text(item, "productStatus"), status_code=_optional_text(item, "productStatusCode"),
        status_message=_optional_text(item, "productStatusMessage"),
        product_class=_optional_text(item, "productClass"), available=available, total_availability=total,
        warehouses=tuple(warehouses), price=_optional_money(pricing, "customerPrice"),
        retail_price=_optional_money(pricing, "retailPrice"), currency=currency or None)


def _optional_count(container: dict, key: str, name: str) -> int | None:
    value = container.get(key)
    if value is None:
        return None
    # The stock webhook sends totalAvailability as a string; accept digits as a count.
    if isinstance(value, str) and _INTEGER.match(value.strip()):
        value = int(value)
    if not _is_int(value) or value < 0:
        raise _Invalid(name, f"must be a non-negative integer, got {value!r}")
    return value


def _optional_money(container: dict, key: str) -> Decimal | None:
    value = container.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Invalid(f"pricing.{key}", f"must be a number, got {_kind(value)}")
    try:
        money = Decimal(str(value))
    except InvalidOperation:
        raise _Invalid(f"pricing.{key}", f"must be a number, got {value!r}") from None
    if not money.is_finite():
        raise _Invalid(f"pricing.{key}", f"must be a finite number, got {value!r}")
    return money


def _optional_text(item: dict, key: str) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if _is_int(value):
        return str(value)
    if not isinstance(value, str):
        raise _Invalid(key, f"must be a string, got {_kind(value)}")
    return value


def _describe(raw: bytes, headers) -> tuple[str, str | None]:
    """``(message, code)`` from an error body, whichever of Ingram Micro's envelopes it uses."""
    text = _text(raw).strip()
    if not text:
        return "", None
    try:
        body = json.loads(text)
    except ValueError:
        if "html" in headers.get("Content-Type", "") or text[:100].lower().lstrip().startswith(("<!doctype", "<html")):
            return "HTML page instead of JSON", None
        return text, None
    if isinstance(body, str):
        return body, None
    if not isinstance(body, dict):
        return text, None
    errors = body.get("errors")
    if isinstance(errors, list) and errors:  # v6 ErrorResponse, and the 429 body
        parts, code = [], None
        for error in errors:
            if not isinstance(error, dict):
                continue
            code = code or _str_or_none(error.get("type") or error.get("id"))
            message = str(error.get("message") or "")
            fields = error.get("fields") if isinstance(error.get("fields"), list) else []
            named = [f"{f.get('field')}: {f.get('message')}" for f in fields if isinstance(f, dict)]
            if error.get("field"):
                named.append(str(error["field"]))
            parts.append(message + (f" ({'; '.join(named)})" if named else ""))
        return "; ".join(p for p in parts if p) or text, code
    fault = body.get("fault")
    if isinstance(fault, dict):  # gateway fault
        detail = fault.get("detail") if isinstance(fault.get("detail"), dict) else {}
        return str(fault.get("faultstring") or text), _str_or_none(detail.get("errorcode"))
    if "faultstring" in body:
        return str(body["faultstring"]), _str_or_none(body.get("faultcode"))
    for key in ("message", "error_description", "error"):
        if isinstance(body.get(key), str):
            return body[key], None
    return text, None


def _reset_at(headers) -> float | None:
    """``X-RateLimit-Reset`` as an epoch time (seconds; a small number is read as seconds from now)."""
    value = headers.get("X-RateLimit-Reset")
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    return number if number >= _EPOCH_FLOOR else time.time() + max(number, 0.0)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
