"""The Ingram Micro OAuth access token, shared by the whole fleet (:class:`SharedToken`).

One worker fetches the token under a Redis lock and stores it with its expiry; every worker reads it.
It is replaced before it expires (at most 24 h after it was issued).  :class:`LocalToken` keeps it in
one process only (scripts, unit tests).  Both take the fetch as a coroutine function
(:data:`TokenFetcher`), so they know nothing of HTTP: :class:`clients.ingram.IngramClient` supplies it.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from redis.exceptions import LockError

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["MAX_TOKEN_LIFETIME_S", "LocalToken", "SharedToken", "TokenFetcher", "cache_lifetime"]

#: The longest a token is used, whatever ``expires_in`` says (the docs: "expires every 24 hours").
MAX_TOKEN_LIFETIME_S = 24 * 3600

# Delete the token only if it is still the one we mean: another worker may already have
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
    one still works for the requests in flight.  One caller fetches at a time, under redis-py's
    :class:`~redis.asyncio.lock.Lock` (``SET NX PX``, released only by its holder); the others wait
    for the new token and read it.

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
            # redis-py's Lock: SET NX PX with a random token, released only by its holder.
            lock = self.redis.lock(self.lock_key, timeout=self.lock_ttl_s, thread_local=False)
            if await lock.acquire(blocking=False):
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
                    try:
                        await lock.release()
                    except LockError:  # it expired while we fetched: whoever holds it now keeps it
                        pass
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

