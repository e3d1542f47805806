"""The HTTP request core every API client is built on: :class:`JsonApi`.

A client keeps what is its own (routes, answer validation, error envelope); what every client
does the same way is here, once: take a slot from the fleet-wide limiter, send on the process's
session, report a :class:`RequestRecord` per attempt, decode JSON, turn an error answer into the
typed error of :mod:`clients.errors`, penalize the whole fleet on a 429, retry transient errors
(429, 5xx, 408/425, timeouts) with backoff and jitter, and keep every :class:`Secret` out of
reprs, errors and logs.  ``clients/ingram.py`` is the shortest client to copy.

Calls are named by route template (``"GET /ws/listings"``), never by URL, in errors and metrics.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from clients.errors import (
    ApiError,
    Forbidden,
    MalformedResponse,
    RateLimited,
    TransportError,
    error_class,
    is_transient,
)

if TYPE_CHECKING:
    from clients.ratelimit import FleetRateLimiter

#: The longest exponential backoff between two attempts (seconds), unless a policy says otherwise.
MAX_BACKOFF_S = 30.0

#: The largest answer a vendor call may bring back: a page of listings is a few hundred kB.
MAX_BODY_BYTES = 16 * 1024 * 1024

#: A rate-limit reset header below this value is read as seconds from now rather than an epoch time.
EPOCH_FLOOR = 1_000_000_000


@dataclass
class RequestRecord:
    """One HTTP attempt, for the ``api_calls``/``retries``/``errors`` counters and metrics.

    ``status`` is ``None`` when no response came back (timeout, connection error); ``attempt`` is
    1-based within one client call; ``waited_s`` is the time spent waiting for the rate limiter.
    """

    api: str
    endpoint: str
    status: int | None
    attempt: int
    elapsed_s: float
    waited_s: float


class Secret:
    """Holds a credential so that no repr, log line or traceback local shows it.

    Parameters:
      value(str): The credential.
      placeholder(str): What :meth:`redact` writes in its place, e.g. ``"<token>"``.
    """

    __slots__ = ("_value", "placeholder")

    def __init__(self, value: str, placeholder: str = "<token>") -> None:
        self._value = value
        self.placeholder = placeholder

    def reveal(self) -> str:
        """The credential itself: only to put it in a request."""
        return self._value

    def redact(self, text: str) -> str:
        """``text`` with every occurrence of the credential replaced by the placeholder."""
        return text.replace(self._value, self.placeholder) if self._value else text

    def __repr__(self) -> str:
        return "<hidden>"

    __str__ = __repr__


@dataclass(frozen=True, repr=False)
class AttemptHeaders:
    """Headers that authenticate a request, and the secret in them (redacted from any error).

    Give :class:`JsonApi` one as its ``auth`` when it never changes (a static API token), or an async
    callable returning one, called before every attempt, when it does (an OAuth token read from a
    shared store; a fresh correlation id per attempt).  Its repr shows no header values.
    """

    headers: Mapping[str, str]
    secret: Secret | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({sorted(self.headers)!r})"


#: ``auth`` of :class:`JsonApi` or of one call: fixed headers, or a coroutine function making them per attempt.
Auth = AttemptHeaders | Callable[[], Awaitable[AttemptHeaders]]


@dataclass(frozen=True)
class ErrorDetails:
    """What a client's ``describe_error`` found in an error answer.

    ``message`` is what the API said (with the client's hint for the operator, if any); an empty
    message becomes ``"empty body"``.  :class:`JsonApi` redacts secrets from it.  ``cf_ray`` is
    Cloudflare's block id, kept on a 403 (:class:`clients.errors.Forbidden`).
    """

    message: str
    code: str | None = None
    request_id: str | None = None
    cf_ray: str | None = None


#: ``describe_error(status, raw_body, response_headers)`` of a client.
DescribeError = Callable[[int, bytes, Mapping[str, str]], ErrorDetails]


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries transient errors and reacts to a 429.

    Parameters:
      attempts(int): HTTP attempts per call for transient errors (429, 5xx, transport).
      backoff_s(float): First backoff after a 5xx or a transport error; it doubles each attempt (up
        to ``max_backoff_s``) with up to ``backoff_s`` of jitter.
      max_backoff_s(float): The longest backoff (never below ``backoff_s``).
      penalty_s(float): The least a 429 pauses the fleet, whatever the API's reset time says (clocks
        differ); also the pause when the 429 gives no reset time.
      refund_on_429(bool): Give the refused request's limiter slot back: for APIs where a refused
        request does not count against the quota, so the retry goes at the reset, not a window later.
      wait_for_reset(bool): Without a limiter, a 429 sleeps until the reset (at least ``penalty_s``);
        False makes it take the ordinary backoff instead.
    """

    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = MAX_BACKOFF_S
    penalty_s: float = 1.0
    refund_on_429: bool = False
    wait_for_reset: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts!r}")

    def backoff(self):
        """The tenacity wait for 5xx and transport errors: exponential with jitter."""
        # tenacity's wait_exponential_jitter, spelled the same way on tenacity 8 and 9.
        return (wait_exponential(multiplier=self.backoff_s, max=max(self.max_backoff_s, self.backoff_s))
                + wait_random(0, self.backoff_s))

    def penalty(self, error: RateLimited) -> float:
        """How long a 429 pauses the fleet (seconds): until the API's reset, at least ``penalty_s``."""
        if error.reset_at is None:
            return self.penalty_s
        return max(self.penalty_s, error.reset_at - time.time())


@dataclass(frozen=True)
class JsonAnswer:
    """A successful answer: its status, its decoded JSON body (``None`` for an allowed empty body) and headers."""

    status: int
    body: Any
    headers: Mapping[str, str]


class JsonApi:
    """One external JSON API on the process's aiohttp session: attempts, retries, errors, metrics.

    Parameters:
      session(aiohttp.ClientSession): The process's HTTP session.
      api(str): The API's name in errors, records and metrics, e.g. ``"backmarket"``.
      base_url(str): Prefix of every path (a trailing ``/`` is dropped).
      describe_error(DescribeError): Reads an error answer into :class:`ErrorDetails`.
      reset_at(Callable[[Mapping], float | None]): Reads a 429's reset time (epoch seconds) from its
        headers, e.g. :func:`retry_after` or :func:`rate_limit_reset`.  None: no reset time.
      request_id_header(str): Header carrying the request id when the body has none (looked up in
        the answer, then in what was sent, e.g. a correlation id).
      auth(Auth): Authentication headers for every call that does not give its own.
      headers(Mapping[str, str]): Headers sent with every request (no secrets here: use ``auth``).
      secrets(Iterable[Secret]): Other credentials to redact from errors (e.g. an OAuth client secret).
      retry(RetryPolicy): Retries and 429 handling.
      timeout_s(float): Total time allowed for one HTTP attempt, in seconds.
      on_request(Callable[[RequestRecord], None]): Called once per HTTP attempt; it never fails one.
      on_answer(Callable[[int, Mapping[str, str]], None]): Called with the status and headers of every
        answer (errors and 429s included), e.g. to learn ``X-RateLimit-*``; it never fails one.
      logger(logging.Logger): Where retries are logged (the client's logger).
    """

    def __init__(self, session: aiohttp.ClientSession, *, api: str, base_url: str, describe_error: DescribeError,
                 reset_at: Callable[[Mapping[str, str]], float | None] | None = None,
                 request_id_header: str | None = None, auth: Auth | None = None,
                 headers: Mapping[str, str] | None = None, secrets: Iterable[Secret] = (),
                 retry: RetryPolicy | None = None, timeout_s: float = 30,
                 on_request: Callable[[RequestRecord], None] | None = None,
                 on_answer: Callable[[int, Mapping[str, str]], None] | None = None,
                 logger: logging.Logger | None = None) -> None:
        self.session = session
        self.api = api
        self.base_url = base_url.rstrip("/")
        self.describe_error = describe_error
        self.reset_at = reset_at
        self.request_id_header = request_id_header
        self.auth = auth
        self.headers = dict(headers or {})
        self.secrets = tuple(secrets)
        self.retry = retry if retry is not None else RetryPolicy()
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.on_request = on_request
        self.on_answer = on_answer
        self.logger = logger or logging.getLogger(f"{__name__}.{type(self).__name__}")
        self._backoff = self.retry.backoff()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.api!r}, base_url={self.base_url!r})"

    async def call(self, method: str, route: str, path: str, *, params: Mapping[str, Any] | None = None,
                   body: Any = None, form: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None,
                   auth: Auth | None = None, limiter: FleetRateLimiter | None = None, empty_ok: bool = False,
                   retry: RetryPolicy | None = None) -> JsonAnswer:
        """One API call: every attempt, with retries of transient errors.

        Parameters:
          method(str), path(str): The HTTP method and the path under ``base_url`` (already quoted).
          route(str): The route template naming the call in errors and records.
          params: Query parameters.  body: A JSON body (sent as ``application/json``).  form: A form
            body instead (``application/x-www-form-urlencoded``).
          headers: Extra headers for this call.  auth: This call's authentication instead of the API's.
          limiter(FleetRateLimiter): The quota this call counts against; every attempt takes a slot.
          empty_ok(bool): A 204 or an empty 2xx body is ``None`` rather than malformed.
          retry(RetryPolicy): This call's policy instead of the API's.

        Raises:
          ApiError: The typed error of the last attempt (:mod:`clients.errors`).
        """
        policy = retry if retry is not None else self.retry
        backoff = self._backoff if retry is None else policy.backoff()

        def wait(retry_state) -> float:
            error = retry_state.outcome.exception()
            if isinstance(error, RateLimited) and policy.wait_for_reset:
                if limiter is not None:
                    # The fleet-wide penalty already makes the next acquire() wait.
                    return 0.0
                return policy.penalty(error)
            return backoff(retry_state)

        def log_retry(retry_state) -> None:
            self.logger.warning("attempt %d/%d failed, retrying in %.2fs: %s", retry_state.attempt_number,
                                policy.attempts, retry_state.next_action.sleep if retry_state.next_action else 0.0,
                                retry_state.outcome.exception())

        retrying = AsyncRetrying(retry=retry_if_exception(is_transient), stop=stop_after_attempt(policy.attempts),
                                 wait=wait, before_sleep=log_retry, reraise=True)
        async for attempt in retrying:
            with attempt:
                return await self._attempt(method, route, path, params=params, body=body, form=form,
                                           headers=headers, auth=auth if auth is not None else self.auth,
                                           limiter=limiter, empty_ok=empty_ok, policy=policy,
                                           number=attempt.retry_state.attempt_number)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, method: str, route: str, path: str, *, params, body, form, headers, auth: Auth | None,
                       limiter: FleetRateLimiter | None, empty_ok: bool, policy: RetryPolicy,
                       number: int) -> JsonAnswer:
        # Authentication comes before the slot: nothing slow may stand between the slot and the request.
        signed = (await auth()) if callable(auth) else auth
        waited = await limiter.acquire() if limiter is not None else 0.0
        slot = getattr(limiter, "last_slot", None)  # read before the next await: another call may take one
        sent = {**self.headers, **(headers or {}), **(signed.headers if signed is not None else {})}
        data: Any = form
        if body is not None:
            sent.setdefault("Content-Type", "application/json")
            data = json.dumps(body).encode()
        secret = signed.secret if signed is not None else None

        status = None
        started = time.monotonic()
        try:
            # No redirects: the credential goes to the configured host only, never where an answer points.
            async with self.session.request(method, self.base_url + path, params=params, data=data,
                                            headers=sent, timeout=self.timeout, allow_redirects=False) as response:
                status = response.status
                raw = await _read_capped(response, MAX_BODY_BYTES)
                response_headers = response.headers
        except (TimeoutError, aiohttp.ClientError) as error:
            status = None
            if isinstance(error, asyncio.TimeoutError) and not str(error):
                what = f"no complete answer within {self.timeout.total:g}s (timeout)"
            else:
                what = f"{type(error).__name__}: {error}".rstrip(": ")
            # ``from None``: the cause adds nothing the message lacks, and keeps the traceback short.
            raise TransportError(self.redact(what, secret), api=self.api, endpoint=route) from None
        finally:
            self._record(RequestRecord(self.api, route, status, number, time.monotonic() - started, waited))
        self._answered(status, response_headers)

        if 200 <= status < 300:
            if empty_ok and (status == 204 or not raw.strip()):
                return JsonAnswer(status, None, response_headers)
            try:
                decoded = json.loads(raw)
            except ValueError:
                raise MalformedResponse(f"the {status} answer is not JSON: {self.redact(text(raw)[:120], secret)!r}",
                                        api=self.api, endpoint=route, status=status) from None
            return JsonAnswer(status, decoded, response_headers)

        error = self._error(route, status, raw, response_headers, sent, secret)
        if isinstance(error, RateLimited) and limiter is not None:
            # The API is refusing us: the whole fleet must stop, not this thread alone.
            await limiter.penalize(policy.penalty(error))
            if policy.refund_on_429 and slot is not None:
                await limiter.refund(slot)
        raise error

    def _answered(self, status: int, headers: Mapping[str, str]) -> None:
        if self.on_answer is None:
            return
        try:
            self.on_answer(status, headers)
        except Exception:
            # Learning from an answer must never fail it.
            self.logger.exception("on_answer callback failed")

    def _error(self, route: str, status: int, raw: bytes, headers: Mapping[str, str], sent: Mapping[str, str],
               secret: Secret | None) -> ApiError:
        details = self.describe_error(status, raw, headers)
        request_id = details.request_id
        if request_id is None and self.request_id_header:
            request_id = headers.get(self.request_id_header) or sent.get(self.request_id_header)
        cls = error_class(status)
        kwargs: dict[str, Any] = {"api": self.api, "endpoint": route, "status": status, "code": details.code,
                                  "request_id": request_id}
        if cls is Forbidden:
            kwargs["cf_ray"] = details.cf_ray
        elif cls is RateLimited:
            kwargs["reset_at"] = self.reset_at(headers) if self.reset_at is not None else None
        elif cls is ApiError and status in (408, 425):
            # Request Timeout and Too Early: the same request may well succeed later.
            kwargs["permanent"] = False
        return cls(self.redact(details.message or "empty body", secret), **kwargs)

    def redact(self, message: str, secret: Secret | None = None) -> str:
        """``message`` without any of this API's secrets (nor ``secret``, the attempt's own)."""
        for each in (*self.secrets, secret):
            if each is not None:
                message = each.redact(message)
        return message

    def _record(self, record: RequestRecord) -> None:
        if self.on_request is None:
            return
        try:
            self.on_request(record)
        except Exception:
            # Counting a request must never fail it.
            self.logger.exception("on_request callback failed")


def with_hint(message: str, hint: str | None) -> str:
    """The server's ``message`` followed by the operator ``hint`` (`` — ``), or whichever of them there is."""
    if message and hint:
        return f"{message} — {hint}"
    return message or hint or ""


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` (seconds, or an HTTP date) as an epoch time; ``None`` when absent or unreadable."""
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return time.time() + float(value)
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def rate_limit_reset(headers: Mapping[str, str]) -> float | None:
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
    return number if number >= EPOCH_FLOOR else time.time() + max(number, 0.0)


def text(raw: bytes) -> str:
    """A body as text, whatever its bytes (undecodable bytes become U+FFFD)."""
    return raw.decode("utf-8", errors="replace")


def is_int(value: Any) -> bool:
    """True for a JSON integer (a Python ``int`` that is not a ``bool``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def json_kind(value: Any) -> str:
    """The JSON-ish name of a value's type for error messages (``null`` for ``None``)."""
    return "null" if value is None else type(value).__name__


async def _read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """The answer's body, refused (a ``ClientPayloadError``) beyond ``cap`` bytes, never read whole first."""
    if (response.content_length or 0) > cap:
        raise aiohttp.ClientPayloadError(f"answer of {response.content_length} bytes is over the {cap} byte cap")
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > cap:
            raise aiohttp.ClientPayloadError(f"answer is over the {cap} byte cap")
        chunks.append(chunk)
    return b"".join(chunks)
