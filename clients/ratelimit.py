"""A fleet-wide rate limiter in Redis that waits for its slot instead of failing.

Dramatiq's own limiters never wait: they raise ``RateLimitExceeded``, which burns the message's
retries, and ``WindowRateLimiter`` overshoots by up to 25%.  An API quota needs a limiter that is
exact across every worker process and host and that simply makes the caller wait its turn.

:class:`FleetRateLimiter` keeps a sliding-window log (one sorted-set entry per granted request)
checked and updated by one Lua script (``ratelimit.lua``) on Redis ``TIME``, so it is exact no
matter how many processes share it or how far apart their clocks are.  A 429 from the API calls
:meth:`FleetRateLimiter.penalize`, which blocks every acquirer in the fleet until it expires; when
the API did not count the refused request, :meth:`FleetRateLimiter.refund` takes its slot back out
of the window.

"At least X seconds apart" is ``limit=1, window_s=X``.
"""
from __future__ import annotations

import asyncio
import logging
import random
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import redis.asyncio

#: The script behind every limiter, read once at import.
LUA_SOURCE = (Path(__file__).with_name("ratelimit.lua")).read_text()

#: Outcomes of one attempt (the script's first value).
REFUSED, GRANTED, RESERVED = 0, 1, 2

#: How far ahead :meth:`FleetRateLimiter.acquire` reserves a slot rather than asking again later.
#: Longer waits (a long window, a penalty) sleep and ask again, so a waiter that dies holds no
#: slot far in the future.
RESERVE_AHEAD_S = 30.0

#: The most jitter (seconds) added to each wait, so waiters woken together do not retry in lockstep.
MAX_JITTER_S = 0.005


class RateLimitWaitTimeout(Exception):
    """Waiting for a slot would take longer than the limiter's ``max_wait_s``.

    Transient: the quota frees up on its own, so the message may be retried later.
    """

    permanent = False

    def __init__(self, name: str, waited_s: float, max_wait_s: float) -> None:
        super().__init__(name, waited_s, max_wait_s)
        self.name = name
        self.waited_s = waited_s
        self.max_wait_s = max_wait_s

    def __str__(self) -> str:
        return "rate limiter %r: no slot within max_wait_s=%.3fs (waited %.3fs)" % (
            self.name, self.max_wait_s, self.waited_s)


class FleetRateLimiter:
    """At most ``limit`` acquisitions in any ``window_s`` seconds, across every process sharing Redis.

    Instances are cheap (no I/O until used): make one wherever it is needed; every instance with
    the same ``namespace`` and ``name`` on the same Redis shares the same quota.

    Parameters:
      redis(redis.asyncio.Redis): An asyncio Redis client.  ``fakeredis.FakeAsyncRedis`` works too
        (in-process mode): it runs the same Lua script.
      name(str): The quota's name, e.g. ``"backmarket-catalog"``.
      limit(int): Slots per window.
      window_s(float): The window, in seconds.
      namespace(str): Prefix of the Redis keys.
      max_wait_s(float): Give up with :class:`RateLimitWaitTimeout` rather than wait longer than
        this in one :meth:`acquire`.  ``None`` waits as long as it takes.
      on_wait(Callable[[str, float], None]): Called after every :meth:`acquire` with the limiter's
        name and the seconds it waited (``0.0`` when the slot was free), e.g. to feed a histogram.
    """

    def __init__(self, redis: "redis.asyncio.Redis", name: str, limit: int, window_s: float, *,
                 namespace: str = "stocksync", max_wait_s: float | None = None,
                 on_wait: Callable[[str, float], None] | None = None) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s!r}")
        self.redis = redis
        self.name = name
        self.limit = int(limit)
        self.window_s = float(window_s)
        self.max_wait_s = max_wait_s
        self.on_wait = on_wait
        self.key = f"{namespace}:ratelimit:{name}"
        self.penalty_key = f"{namespace}:ratelimit:{name}:penalty"
        #: Redis time (seconds since the epoch) of the last slot this instance granted, or ``None``.
        #: Read it right after ``await acquire()``, before the next ``await``.
        self.last_granted_at: float | None = None
        #: The id of the last slot this instance granted (its window entry), for :meth:`refund`, or
        #: ``None``.  Read it right after ``await acquire()``, before the next ``await``.
        self.last_slot: str | None = None
        self._window_us = max(1, round(self.window_s * 1_000_000))
        self._script = redis.register_script(LUA_SOURCE)
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r}, limit={self.limit}, window_s={self.window_s})"

    async def try_acquire(self) -> tuple[bool, float]:
        """Make one attempt at a slot.

        Returns:
          tuple[bool, float]: ``(True, 0.0)`` when granted, else ``(False, seconds)`` where
          ``seconds`` is how long until a slot may be free (a penalty's remaining time, or until
          the oldest slot in the window leaves it).
        """
        granted, wait_s = await self._attempt(reserve_us=0)
        return granted == GRANTED, wait_s

    async def _attempt(self, reserve_us: int) -> tuple[int, float]:
        """One script call: ``(GRANTED, 0.0)``, ``(RESERVED, seconds until the slot)`` or ``(REFUSED, seconds)``."""
        member = uuid.uuid4().hex
        status, wait_us, now_us = await self._script(
            keys=[self.key, self.penalty_key], args=["acquire", self.limit, self._window_us, member, reserve_us])
        status, wait_us = int(status), int(wait_us)
        if status != REFUSED:
            # A reservation counts from its time, not from now: that is when its request may go.
            self.last_granted_at = (int(now_us) + (wait_us if status == RESERVED else 0)) / 1_000_000
            self.last_slot = member
        return status, (0.0 if status == GRANTED else wait_us / 1_000_000)

    async def acquire(self) -> float:
        """Wait for a slot, however long the quota (or a penalty) makes it take.

        A slot free within :data:`RESERVE_AHEAD_S` (and ``max_wait_s``) is reserved at once: the
        waiter sleeps until its time and goes, first come first served, unless a 429 penalty began
        meanwhile (then the slot is given back and the penalty waited out).  A cancelled waiter
        gives its reserved slot back.

        Returns:
          float: The seconds spent waiting.

        Raises:
          RateLimitWaitTimeout: Only when ``max_wait_s`` is set and the wait would exceed it.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            waited = loop.time() - started
            budget_s = RESERVE_AHEAD_S if self.max_wait_s is None else min(RESERVE_AHEAD_S,
                                                                           self.max_wait_s - waited)
            status, wait_s = await self._attempt(reserve_us=max(0, int(budget_s * 1_000_000)))
            waited = loop.time() - started
            if status == GRANTED:
                self._report(waited)
                return waited
            if status == RESERVED:
                slot, granted_at = self.last_slot, self.last_granted_at
                if await self._sleep_until_reserved(wait_s, slot):
                    waited = loop.time() - started
                    # Another task on this instance may have acquired while we slept.
                    self.last_slot, self.last_granted_at = slot, granted_at
                    self._report(waited)
                    return waited
                continue  # a 429 penalty began meanwhile: the slot was given back; wait it out
            if self.max_wait_s is not None and waited + wait_s > self.max_wait_s:
                # Fail now rather than sleep into a timeout we already know about.
                raise RateLimitWaitTimeout(self.name, waited, self.max_wait_s)
            # A penalty, or a wait longer than we reserve for: sleep until then and ask again; the
            # jitter spreads out waiters that were all told the same moment.
            await asyncio.sleep(wait_s + random.uniform(0, MAX_JITTER_S))

    async def _sleep_until_reserved(self, wait_s: float, slot: str) -> bool:
        """Sleep until a reserved slot's time; False (slot given back) if a penalty began meanwhile."""
        try:
            await asyncio.sleep(wait_s)
            if await self.redis.pttl(self.penalty_key) > 0:
                await self.refund(slot)
                return False
            return True
        except asyncio.CancelledError:
            # Nobody will use it: give it back rather than leave a hole in the quota.
            await asyncio.shield(self.refund(slot))
            raise

    async def penalize(self, seconds: float) -> None:
        """Block every acquirer of this quota, fleet-wide, for ``seconds``.

        Called on a 429: the API is blocking us, so the whole fleet backs off, not one thread.  A
        penalty already running for longer is kept as it is.
        """
        penalty_ms = max(1, round(seconds * 1000))
        await self._script(keys=[self.key, self.penalty_key], args=["penalize", penalty_ms])
        self.logger.warning("rate limiter %r penalized: every worker waits %.3fs", self.name, seconds)

    async def refund(self, slot: str) -> bool:
        """Give back the slot ``slot`` (``last_slot`` right after its ``acquire``): it no longer counts.

        For a request the API refused without counting it (an Ingram Micro 429): it should not count
        against our window either, so the retry may go as soon as the penalty ends, not a whole
        window later.  Returns whether the slot was given back (not if it already left the window).
        """
        # Each grant is its own member of the window's sorted set, so removing it is exact and
        # atomic on its own: no script needed, and no other grant can be hit by mistake.
        return bool(await self.redis.zrem(self.key, slot))

    def _report(self, waited: float) -> None:
        if self.on_wait is None:
            return
        try:
            self.on_wait(self.name, waited)
        except Exception:
            # Metrics must never cost a request its slot.
            self.logger.exception("on_wait callback of rate limiter %r failed", self.name)
