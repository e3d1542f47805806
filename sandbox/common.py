"""What every sandbox vendor shares: dials, quota windows, auth, latency, faults, counting.

The sandboxes (:mod:`sandbox.backmarket`, :mod:`sandbox.ingram`, :mod:`sandbox.refurbed`, ...) each
speak their vendor's routes, envelopes and errors; the machinery in front of their handlers is the
same and lives here:

- :class:`Dials`: ``configure(**dials)`` / ``dials()`` and the ``/_sandbox/config`` admin routes, on
  attributes ``_<dial>`` read under the sandbox's lock;
- :class:`SlidingWindowQuota`: a vendor's request quota (429 when over it), exact over any window;
- :func:`credential_matches`: the ``Authorization: <scheme> <token>`` check, in constant time;
- :func:`pause` (the latency dial), :func:`injected_failure` (the error-rate dial);
- :func:`serve_counted`: gate, handler and the per-status count, aiohttp's own 404/405 included;
- :class:`Draws`: deterministic draws from a hash, to generate a catalogue item on its own in O(1);
- :class:`WebhookSender`: a webhook's POSTs from a background thread, retried with a doubling
  interval, every attempt kept as a :class:`Delivery`;
- :func:`max_in_window` (what a quota test asserts), :func:`admin_error` and :class:`OutOfStock`.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import math
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from aiohttp import web

__all__ = ["Admission", "Delivery", "Dials", "Draws", "OutOfStock", "SlidingWindowQuota", "WebhookSender", "admin_body",
           "admin_error", "credential_matches", "injected_failure", "max_in_window", "optional_bool", "pause",
           "serve_counted"]


class OutOfStock(ValueError):
    """An order asks for more than a listing's (an offer's) stock."""


class Draws:
    """Bounded integers taken one after another from a hash of ``parts`` (same inputs, same draws).

    A hash rather than a seeded ``random.Random``: item ``i`` of a catalogue is generated on its own,
    in O(1), and is the same in every process and Python version.  ``digest_size`` (bytes) bounds how
    many draws there are entropy for; a catalogue keeps its own, since it decides every draw.
    """

    __slots__ = ("_rest",)

    def __init__(self, *parts: object, digest_size: int = 16) -> None:
        digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=digest_size).digest()
        self._rest = int.from_bytes(digest, "big")

    def below(self, bound: int) -> int:
        """An integer in ``[0, bound)``."""
        self._rest, value = divmod(self._rest, bound)
        return value

    def weighted(self, choices: Iterable[tuple]) -> tuple:
        """One of ``choices``, whose last item is its weight in percent."""
        roll = self.below(100)
        for choice in choices:
            roll -= choice[-1]
            if roll < 0:
                return choice
        raise AssertionError("weights must add up to 100")


class Admission(NamedTuple):
    """A quota's answer: ``admitted``; the slots ``remaining`` in the window after this request; and
    ``reset_in_s``, the seconds until the oldest admitted request leaves the window (or a block ends).
    """

    admitted: bool
    remaining: int
    reset_in_s: float


class SlidingWindowQuota:
    """At most ``limit`` requests admitted in any ``window_s`` seconds, all clients together.

    A sliding log of admission times; a refused request is not logged.  With ``block_s`` > 0 the
    first refusal also refuses everything for ``block_s`` seconds, like a Cloudflare rule's
    mitigation timeout; refusals during the block do not extend it.  ``limit`` 0 or None (or
    ``window_s`` 0 or None) admits everything.  Not thread-safe: a sandbox calls it under its lock.
    """

    def __init__(self, limit: int | None, window_s: float | None, block_s: float = 0.0) -> None:
        self._admitted: deque[float] = deque()
        self._blocked_until = -math.inf
        self.reconfigure(limit, window_s, block_s)

    def reconfigure(self, limit: int | None, window_s: float | None, block_s: float = 0.0) -> None:
        """Change the limits; the requests already admitted still count."""
        self.limit = int(limit or 0)
        self.window_s = float(window_s or 0.0)
        self.block_s = float(block_s or 0.0)

    @property
    def enabled(self) -> bool:
        """Whether any request can be refused."""
        return self.limit > 0 and self.window_s > 0

    def admit(self, now: float) -> Admission:
        """Admit (and log) a request at time ``now``, or refuse it."""
        if not self.enabled:
            return Admission(True, 0, 0.0)
        if now < self._blocked_until:
            return Admission(False, 0, self._blocked_until - now)
        horizon = now - self.window_s
        while self._admitted and self._admitted[0] <= horizon:
            self._admitted.popleft()
        admitted = len(self._admitted) < self.limit
        if admitted:
            self._admitted.append(now)
        elif self.block_s > 0:
            self._blocked_until = now + self.block_s
            return Admission(False, 0, self.block_s)
        reset_in = self._admitted[0] + self.window_s - now if self._admitted else 0.0
        return Admission(admitted, self.limit - len(self._admitted), max(reset_in, 0.0))


class Dials:
    """Run-time dials of a sandbox: ``configure(**dials)``, ``dials()`` and their admin routes.

    A subclass names its dials in ``_DIALS`` (the constructor's keywords), keeps each in the
    attribute ``_<name>``, has a ``_lock`` (``threading.Lock``), and may override
    :meth:`_check_dial` (validate one value, return it normalised) and :meth:`_dials_changed`
    (apply the new values, under the lock, e.g. to reconfigure a quota).
    """

    _DIALS: tuple[str, ...] = ()

    def configure(self, **dials: Any) -> None:
        """Change dials at run time (names as in the constructor).

        Raises:
          TypeError: An unknown dial.
          ValueError: A value out of range.
        """
        unknown = sorted(set(dials) - set(self._DIALS))
        if unknown:
            raise TypeError(f"unknown sandbox dials: {', '.join(unknown)} (known: {', '.join(self._DIALS)})")
        # Checked before the lock is taken, so that a bad value changes no dial at all.
        checked = {name: self._check_dial(name, value) for name, value in dials.items()}
        with self._lock:
            # Each dial is the attribute "_<name>", read under the lock by the request handlers.
            for name, value in checked.items():
                setattr(self, f"_{name}", value)
            self._dials_changed()

    def dials(self) -> dict[str, Any]:
        """The current dials, JSON-able (credentials included: a sandbox has no secrets)."""
        with self._lock:
            return {name: getattr(self, f"_{name}") for name in self._DIALS}

    def _check_dial(self, name: str, value: Any) -> Any:
        return value

    def _dials_changed(self) -> None:
        pass

    async def _admin_get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.dials())

    async def _admin_set_config(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object of dials")
            self.configure(**body)
        except (TypeError, ValueError) as error:
            return admin_error(400, str(error))
        return web.json_response(self.dials())


def credential_matches(header: str | None, scheme: str, token: str, *, exact_scheme: bool = False) -> bool:
    """Whether an ``Authorization`` header is ``<scheme> <token>``.

    The token is compared in constant time.  The scheme is compared ignoring case, as HTTP says,
    unless ``exact_scheme`` (a vendor that refuses any other spelling).
    """
    given, _, credential = (header or "").strip().partition(" ")
    same_scheme = given == scheme if exact_scheme else given.lower() == scheme.lower()
    return same_scheme and hmac.compare_digest(credential.strip().encode(), token.encode())


async def pause(seconds: float) -> None:
    """The latency dial: wait ``seconds`` (nothing when 0)."""
    if seconds > 0:
        await asyncio.sleep(seconds)


def injected_failure(rng: random.Random, rate: float) -> bool:
    """The error-rate dial: True for a share ``rate`` of calls, drawn from the sandbox's seeded ``rng``."""
    # No draw at all when the dial is off, so turning it on later starts the same seeded sequence.
    return rate > 0 and rng.random() < rate


async def serve_counted(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                        gate: Callable[[web.Request], Awaitable[web.StreamResponse | None]] | None,
                        count_status: Callable[[int], None]) -> web.StreamResponse:
    """Answer ``request``: ``gate`` first (an answer refuses it; None lets it through), then ``handler``.

    Every answer's status is counted, aiohttp's own 404/405 for unknown routes included.
    """
    try:
        response = await gate(request) if gate is not None else None
        if response is None:
            response = await handler(request)
    except web.HTTPException as http_error:
        count_status(http_error.status)
        raise
    count_status(response.status)
    return response


def max_in_window(times: Sequence[float], window_s: float) -> int:
    """The most of ``times`` (ascending) inside any window of ``window_s`` seconds.

    Windows are half-open, as the quotas': requests ``window_s`` apart are not in one window.
    """
    best = start = 0
    for end, at in enumerate(times):
        while at - times[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def admin_error(status: int, message: str) -> web.Response:
    """An answer of a ``/_sandbox/`` admin route refusing a request."""
    return web.json_response({"error": message}, status=status)


async def admin_body(request: web.Request) -> dict[str, Any]:
    """The JSON object an admin route was sent; ``ValueError`` when it is not one."""
    body = await request.json()
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    return body


def optional_bool(body: dict[str, Any], name: str, default: bool | None = None) -> bool | None:
    """``body[name]``: true, false, or ``default`` when absent; ``ValueError`` for anything else."""
    value = body.get(name, default)
    if value is not default and not isinstance(value, bool):
        raise ValueError(f"{name} must be true, false or absent")
    return value


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


class WebhookSender:
    """A sandbox's webhook POSTs, made one after another by a daemon thread started on the first one.

    A POST that gets no 2xx (or no answer) is tried again after ``retry_s``, doubling, up to
    ``max_attempts`` times in all; every attempt is kept as a :class:`Delivery`.
    """

    def __init__(self, name: str, user_agent: str) -> None:
        self._name, self._user_agent = name, user_agent
        self._lock = threading.Lock()
        self._outbox: queue.Queue[tuple | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._deliveries: list[Delivery] = []

    def send(self, order_id: int, copy: int, url: str, body: Callable[[], tuple[bytes, dict[str, str]]],
             max_attempts: int, retry_s: float) -> None:
        """Queue one POST to ``url``; ``body()`` makes its body and headers when it is sent (each attempt)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._send_forever, name=self._name, daemon=True)
                self._thread.start()
        self._outbox.put((order_id, copy, url, body, max_attempts, retry_s))

    def deliveries(self) -> list[Delivery]:
        """Every attempt so far, oldest first."""
        with self._lock:
            return list(self._deliveries)

    def wait(self, timeout: float = 30.0) -> None:
        """Wait until every queued POST was delivered or gave up; raise ``TimeoutError``."""
        deadline = time.monotonic() + timeout
        while self._outbox.unfinished_tasks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"webhook deliveries still pending after {timeout:g}s")
            time.sleep(0.01)

    def close(self) -> None:
        """Stop the thread once its queue is empty."""
        if self._thread is not None and self._thread.is_alive():
            self._outbox.put(None)
            self._thread.join(10)

    def _send_forever(self) -> None:
        while True:
            job = self._outbox.get()
            try:
                if job is None:
                    return
                self._deliver(*job)
            finally:
                self._outbox.task_done()

    def _deliver(self, order_id: int, copy: int, url: str, body: Callable[[], tuple[bytes, dict[str, str]]],
                 max_attempts: int, retry_s: float) -> None:
        for attempt in range(1, max_attempts + 1):
            payload, headers = body()
            status, error = _post(url, payload, {"Content-Type": "application/json", "User-Agent": self._user_agent,
                                                **headers})
            with self._lock:
                self._deliveries.append(Delivery(order_id, copy, attempt, status, error, time.monotonic()))
            if status is not None and 200 <= status < 300:
                return
            time.sleep(retry_s * 2 ** (attempt - 1))  # the vendors retry "with an increasing interval"


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
    """POST ``body`` to ``url``; ``(status, None)`` or ``(None, error)`` when no answer came."""
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=10)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", path or "/", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, None
    except OSError as error:
        return None, f"{type(error).__name__}: {error}"
    finally:
        connection.close()
