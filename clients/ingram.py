"""The Ingram Micro Reseller API v6 client, on aiohttp: price & availability for up to 50 products
a call, and one product's details, behind an OAuth client-credentials token.

The token is shared by the whole fleet through Redis (:class:`clients.ingram_token.SharedToken`);
a 401 drops it and fetches a new one once.  A 207 answer is parsed item by item: products answered
with an error come back as :class:`ProductError` beside the priced ones.  The names of
:mod:`clients.ingram_parsing`, :mod:`clients.ingram_token` and :mod:`clients.semaphore` are
re-exported here.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp

from clients.errors import ApiError, MalformedResponse, NotFound, Unauthorized
from clients.http import (MAX_BACKOFF_S, AttemptHeaders, JsonAnswer, JsonApi, RequestRecord, RetryPolicy, Secret,
                          json_kind, rate_limit_reset)
from clients.ingram_parsing import (API, DETAILS, MAX_PART_NUMBER, MAX_PRODUCTS, PRICE_AVAILABILITY, TOKEN, Measure,
                                    PriceAvailability, PriceAvailabilityResult, ProductDimensions, ProductError,
                                    WarehouseStock, check_batch_size, describe_error, parse_dimensions,
                                    parse_price_availability, parse_token)
from clients.ingram_token import MAX_TOKEN_LIFETIME_S, LocalToken, SharedToken, TokenFetcher, cache_lifetime
from clients.ratelimit import FleetRateLimiter
from clients.semaphore import FleetSemaphore

__all__ = ["API", "DETAILS", "MAX_PART_NUMBER", "MAX_PRODUCTS", "MAX_TOKEN_LIFETIME_S", "PRICE_AVAILABILITY", "TOKEN",
           "FleetSemaphore", "IngramClient", "LocalToken", "Measure", "PriceAvailability", "PriceAvailabilityResult",
           "ProductDimensions", "ProductError", "RequestRecord", "SharedToken", "TokenFetcher", "WarehouseStock",
           "cache_lifetime", "check_batch_size", "parse_dimensions", "parse_price_availability"]

#: ``IM-CorrelationID`` and ``IM-SenderID`` are at most this long (the SDK enforces it).
MAX_HEADER_ID = 32

_COUNTRY = re.compile(r"^[A-Z]{2}$")


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
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.customer_number = customer_number
        self.country_code = country_code
        self.sender_id = sender_id or None
        self.tokens = tokens if tokens is not None else LocalToken()
        self.pa_limiter = pa_limiter
        self.details_limiter = details_limiter
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.min_penalty_s = min_penalty_s
        self.on_request = on_request
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self._secret = Secret(client_secret, "<client_secret>")
        # A refused request (429) did not count at Ingram Micro, so its slot is refunded: the retry
        # goes at the reset, not a whole window later.
        policy = RetryPolicy(attempts=attempts, backoff_s=backoff_s, max_backoff_s=MAX_BACKOFF_S,
                             penalty_s=min_penalty_s, refund_on_429=True)
        # The token call has no limiter: a 429 there takes the ordinary backoff, as a 5xx does.
        self._token_policy = dataclasses.replace(policy, wait_for_reset=False)
        self._http = JsonApi(session, api=API, base_url=base_url, describe_error=describe_error,
                             reset_at=rate_limit_reset, request_id_header="IM-CorrelationID",
                             secrets=[self._secret], retry=policy, timeout_s=timeout_s, on_request=on_request,
                             logger=self.logger)
        self.timeout = self._http.timeout

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
        answer = await self._call(
            "POST", PRICE_AVAILABILITY, "/resellers/v6/catalog/priceandavailability",
            params={"includeAvailability": "true", "includePricing": "true"}, body=body, limiter=self.pa_limiter)
        return parse_price_availability(answer.body, parts, answer.status)

    async def product_details(self, part_number: str) -> dict[str, Any] | None:
        """A product's details (``ProductDetailResponse``) as the API returns them; None on 404.

        Its dimensions and net weight are read with :func:`parse_dimensions` (numbers or strings
        with a unit).  A malformed one is logged as a warning naming the field, not raised: the
        details are still stored as given, and one odd field does not fail the product (and with
        it the sync run).

        Raises:
          MalformedResponse: The answer is not a JSON object.
          ApiError: Any other failure, after the client's own retries.
        """
        if not isinstance(part_number, str) or not part_number.strip():
            raise ValueError(f"part_number must be a non-empty string, got {part_number!r}")
        try:
            answer = await self._call(
                "GET", DETAILS, f"/resellers/v6/catalog/details/{quote(part_number, safe='')}",
                limiter=self.details_limiter, empty_ok=True)
        except NotFound:
            return None  # the docs: 404 "No Content" — the product has no details
        if answer.status == 204 or answer.body is None:
            return None
        if not isinstance(answer.body, dict):
            raise MalformedResponse(f"details of {part_number}: expected a JSON object, got {json_kind(answer.body)}",
                                    api=API, endpoint=DETAILS, status=answer.status)
        try:
            parse_dimensions(answer.body, part_number)
        except MalformedResponse as malformed:
            self.logger.warning("%s (stored as given)", malformed.message)
        return answer.body

    async def access_token(self) -> str:
        """The current access token (the fleet's, when ``tokens`` is a :class:`SharedToken`)."""
        return await self.tokens.get(self._fetch_token)


    # -- HTTP ------------------------------------------------------------------------------------

    async def _fetch_token(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials", "client_id": self.client_id,
                "client_secret": self._secret.reveal()}
        try:
            answer = await self._http.call("POST", TOKEN, "/oauth/oauth20/token", form=form,
                                           headers={"Accept": "application/json"}, retry=self._token_policy)
        except ApiError as error:
            if error.status in (400, 401, 403):
                # The docs answer bad credentials with 400 {"message": ...}: nothing a retry fixes.
                raise Unauthorized(f"{error.message} — the token request was refused: check "
                                   f"INGRAM_CLIENT_ID ({self.client_id!r}) and INGRAM_CLIENT_SECRET",
                                   api=API, endpoint=TOKEN, status=error.status, code=error.code) from None
            raise
        return parse_token(answer.body)

    async def _call(self, method: str, route: str, path: str, *, params: dict | None = None,
                    body: dict | None = None, limiter: FleetRateLimiter | None = None,
                    empty_ok: bool = False) -> JsonAnswer:
        """One API call: token, limiter, retries of transient errors, one token refresh on a 401."""
        refreshed = False
        while True:
            sent: list[str] = []  # the tokens this call's attempts sent, to drop the one refused

            async def sign() -> AttemptHeaders:
                # Read per attempt, before the limiter's slot: nothing may stand between the slot and
                # the request, and a token replaced meanwhile still works (it is replaced early).
                token = await self.access_token()
                sent.append(token)
                headers = {"Authorization": f"Bearer {token}", "Accept": "application/json",
                           "IM-CustomerNumber": self.customer_number, "IM-CountryCode": self.country_code,
                           "IM-CorrelationID": uuid.uuid4().hex}  # 32 characters: the SDK's limit
                if self.sender_id:
                    headers["IM-SenderID"] = self.sender_id
                return AttemptHeaders(headers, Secret(token))

            try:
                return await self._http.call(method, route, path, params=params, body=body, auth=sign,
                                             limiter=limiter, empty_ok=empty_ok)
            except Unauthorized as error:
                if error.endpoint != route or not sent:
                    raise  # the token request itself was refused: a refresh cannot help
                if refreshed:
                    raise Unauthorized(f"{error.message} — the access token was refused again right after "
                                       f"a refresh: check the API app's access and IM-CustomerNumber",
                                       api=API, endpoint=route, status=401, code=error.code,
                                       request_id=error.request_id) from None
                refreshed = True
                self.logger.info("%s: access token refused (401); fetching a new one", route)
                await self.tokens.invalidate(sent[-1])
