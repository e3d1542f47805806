"""A fleet-wide rate limiter in Redis that waits for its slot instead of failing.

Dramatiq's own limiters never wait: they raise ``RateLimitExceeded``, which burns the message's
retries, and ``WindowRateLimiter`` overshoots by up to 25%.  An API quota needs a limiter that is
exact across every worker process and host and that simply makes the caller wait its turn.

:class:`FleetRateLimiter` keeps a sliding-window log (one sorted-set entry per granted request)
checked and updated by one Lua script (``ratelimit.lua``) on Redis ``TIME``, so it is exact no
matter how many processes share it or how far apart their clocks are.  A 429 from the API calls
:meth:`FleetRateLimiter.penalize`, which blocks every acquirer in the fleet until it expires; when
the API did not count the refused request, :meth:`FleetRateLimiter.refund` takes its slot back out
of the window.  An *urgent* acquirer (a push, whose read and write must go together) is served
before the others: while it waits, its slots are claimed, so a walk's page fetches cannot take
every slot a window frees.

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

#: The most jitter (seconds) added to each wait, so waiters woken together do not retry in lockstep.
MAX_JITTER_S = 0.005


class RateLimitWaitTimeout(Exception):
    """Waiting for a slot would take longer than the limiter's ``max_wait_s``.

    Transient: the quota frees up on its own, so the message may be retried later.
    """

    permanent = False

    def __init__(self, name: str, waited_s: float, max_wait_s: float, retry_after_s: float = 0.0) -> None:
        super().__init__(name, waited_s, max_wait_s)
        self.name = name
        self.waited_s = waited_s
        self.max_wait_s = max_wait_s
        #: How long until a slot may be free, as the limiter said when it gave up.
        self.retry_after_s = retry_after_s

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
        self.claims_key = f"{namespace}:ratelimit:{name}:urgent"
        #: Redis time (seconds since the epoch) of the last slot this instance granted, or ``None``.
        #: Read it right after ``await acquire()``, before the next ``await``.
        self.last_granted_at: float | None = None
        #: The id of the last slot this instance granted (its window entry), for :meth:`refund`, or
        #: ``None``.  Read it right after ``await acquire()``, before the next ``await``.
        self.last_slot: str | None = None
        #: Every slot of the last grant (several when ``count`` > 1), for :meth:`refund`.
        self.last_slots: list[str] = []
        self._window_us = max(1, round(self.window_s * 1_000_000))
        self._script = redis.register_script(LUA_SOURCE)
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r}, limit={self.limit}, window_s={self.window_s})"

    async def try_acquire(self, count: int = 1, *, urgent: bool = False, member: str | None = None
                          ) -> tuple[bool, float]:
        """Make one attempt at ``count`` slots, granted together or not at all.

        ``urgent``: served before the others; refused, it claims its slots until it comes back with
        the same ``member`` (or a window passes).

        Returns:
          tuple[bool, float]: ``(True, 0.0)`` when granted, else ``(False, seconds)`` where
          ``seconds`` is how long until a slot may be free (a penalty's remaining time, or until
          the oldest slot in the window leaves it).
        """
        if not 1 <= count <= self.limit:
            raise ValueError(f"count must be between 1 and the limit {self.limit}, got {count!r}")
        member = member or uuid.uuid4().hex
        granted, wait_us, now_us = await self._script(
            keys=[self.key, self.penalty_key, self.claims_key],
            args=["acquire", self.limit, self._window_us, member, count, "1" if urgent else "0"])
        if int(granted):
            self.last_granted_at = int(now_us) / 1_000_000
            self.last_slots = [f"{member}:{i}" for i in range(1, count + 1)]
            self.last_slot = self.last_slots[0]
            return True, 0.0
        return False, int(wait_us) / 1_000_000

    async def acquire(self, count: int = 1, *, urgent: bool = False) -> float:
        """Wait for ``count`` slots (granted together), however long the quota (or a penalty) makes it take.

        Returns:
          float: The seconds spent waiting.

        Raises:
          RateLimitWaitTimeout: Only when ``max_wait_s`` is set and the wait would exceed it.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        member = uuid.uuid4().hex  # one claim across the attempts of this wait
        while True:
            granted, wait_s = await self.try_acquire(count, urgent=urgent, member=member)
            waited = loop.time() - started
            if granted:
                self._report(waited)
                return waited
            if self.max_wait_s is not None and waited + wait_s > self.max_wait_s:
                # Fail now rather than sleep into a timeout we already know about.
                if urgent:
                    await self.withdraw(member, count)
                raise RateLimitWaitTimeout(self.name, waited, self.max_wait_s, wait_s)
            # Sleep exactly until the slot should free up; the jitter spreads out waiters that
            # were all told the same moment, so they do not all hit Redis in the same millisecond.
            await asyncio.sleep(wait_s + random.uniform(0, MAX_JITTER_S))

    async def restamp(self, slots: list[str]) -> int:
        """Count ``slots`` (granted earlier, still in the window) from now: a slot reserved ahead of its request
        is stamped when the request leaves, so the window matches what the API sees.  Returns how many moved."""
        if not slots:
            return 0
        moved, _ = await self._script(keys=[self.key, self.penalty_key, self.claims_key], args=["restamp", self._window_us, *slots])
        return int(moved)

    async def withdraw(self, member: str, count: int = 1) -> None:
        """Drop the claim an urgent acquirer that gives up left (it would lapse on its own within a window)."""
        await self.redis.zrem(self.claims_key, *(f"{member}:{i}" for i in range(1, count + 1)))

    async def remaining(self) -> int:
        """Slots free in the window now (nothing is taken; a penalty is not counted)."""
        used, _ = await self._script(keys=[self.key, self.penalty_key, self.claims_key],
                                     args=["peek", self._window_us])
        return max(0, self.limit - int(used))

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
        report_wait(self.on_wait, self.name, waited, self.logger)


def report_wait(on_wait: Callable[[str, float], None] | None, name: str, waited: float,
                logger: logging.Logger) -> None:
    """Tell ``on_wait`` how long a limiter (or cost bucket) ``name`` made a caller wait; its failure is only logged."""
    if on_wait is None:
        return
    try:
        on_wait(name, waited)
    except Exception:
        # Metrics must never cost a request its slot.
        logger.exception("on_wait callback of %r failed", name)


def slots_used(redis, name: str, window_s: float, *, namespace: str = "stocksync") -> int:
    """Slots of the limiter ``name`` granted in its last ``window_s`` seconds, with a blocking Redis client.

    For readers outside an event loop (the console): the same script and keys as :class:`FleetRateLimiter`.
    """
    key = f"{namespace}:ratelimit:{name}"
    used, _ = redis.register_script(LUA_SOURCE)(keys=[key, f"{key}:penalty", f"{key}:urgent"],
                                                 args=["peek", max(1, round(window_s * 1_000_000))])
    return int(used)
