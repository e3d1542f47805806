"""A fleet-wide query-cost budget in Redis: Shopify's GraphQL leaky bucket, shared by every worker of one shop.

Shopify meters the GraphQL Admin API by calculated query cost per app and shop: a bucket of
``maximumAvailable`` points refilled at ``restoreRate`` points a second; a query needs its
*requested* cost in the bucket and is charged its *actual* cost.  :class:`FleetCostBucket` mirrors
that bucket in Redis (one Lua script, ``costbucket.lua``, on Redis ``TIME``): :meth:`debit` waits
until the requested cost is there and takes it, :meth:`credit` gives back what a call did not use
(or a throttled call was not charged), and :meth:`observe` lowers the bucket to what Shopify's
``throttleStatus`` says is left (and learns its size and rate), so the fleet never runs ahead of
Shopify's own count.  A ``THROTTLED`` answer is thus waited out by every worker at once, not
retried blindly by each.
"""
from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from clients.ratelimit import report_wait

if TYPE_CHECKING:
    import redis.asyncio

LUA_SOURCE = (Path(__file__).with_name("costbucket.lua")).read_text()

#: The most jitter (seconds) added to a wait, so workers told the same moment do not all come back at once.
MAX_JITTER_S = 0.01


class FleetCostBucket:
    """One shop's query-cost budget, shared by every process on the same Redis.

    Parameters:
      redis(redis.asyncio.Redis): An asyncio Redis client (``fakeredis`` works too).
      name(str): The bucket's name (one per shop), e.g. ``"shopify-cost:shop.myshopify.com"``.
      maximum(float), restore_rate(float): The bucket's size and refill (points a second) until
        Shopify's ``throttleStatus`` says otherwise.
      namespace(str): Prefix of the Redis key.
      on_wait(Callable[[str, float], None]): Called after every :meth:`debit` with the name and the seconds waited.
    """

    def __init__(self, redis: "redis.asyncio.Redis", name: str, *, maximum: float, restore_rate: float,
                 namespace: str = "stocksync", on_wait: Callable[[str, float], None] | None = None) -> None:
        if maximum <= 0 or restore_rate <= 0:
            raise ValueError(f"maximum and restore_rate must be positive, got {maximum!r}, {restore_rate!r}")
        self.name = name
        self.maximum = float(maximum)
        self.restore_rate = float(restore_rate)
        self.on_wait = on_wait
        self.key = f"{namespace}:costbucket:{name}"
        self._script = redis.register_script(LUA_SOURCE)
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r}, maximum={self.maximum}, restore_rate={self.restore_rate})"

    async def debit(self, cost: float) -> float:
        """Wait until ``cost`` points are in the bucket and take them; return the seconds waited."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            granted, wait_us, _ = await self._script(
                keys=[self.key], args=["debit", max(0.0, float(cost)), self.maximum, self.restore_rate])
            if int(granted):
                waited = loop.time() - started
                report_wait(self.on_wait, self.name, waited, self.logger)
                return waited
            await asyncio.sleep(int(wait_us) / 1_000_000 + random.uniform(0, MAX_JITTER_S))

    async def credit(self, points: float) -> None:
        """Give back ``points`` (requested minus actual cost, or the whole cost of a call Shopify did not run)."""
        if points > 0:
            await self._script(keys=[self.key], args=["credit", float(points)])

    async def observe(self, currently_available: float, maximum: float, restore_rate: float) -> None:
        """Take Shopify's ``throttleStatus``: the bucket holds no more than it says, and has its size and rate."""
        if maximum > 0 and restore_rate > 0:
            self.maximum, self.restore_rate = float(maximum), float(restore_rate)
            await self._script(keys=[self.key], args=["observe", max(0.0, float(currently_available)),
                                                      self.maximum, self.restore_rate])

    async def available(self) -> float:
        """The points in the bucket now (nothing is taken)."""
        _, _, points = await self._script(keys=[self.key], args=["debit", 0, self.maximum, self.restore_rate])
        return float(points)

