"""A fleet-wide concurrency limit in Redis: :class:`FleetSemaphore`.

At most N holders at once across every worker process and host; a holder's slot is a lease that
expires if the holder dies.  Its first user is the Ingram Micro price & availability batches.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["FleetSemaphore"]

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
