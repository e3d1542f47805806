"""A Redis lock with an expiry, held by one process at a time (the scheduler's leader, a marketplace's drain)."""
from __future__ import annotations

import os
import socket
import uuid


class LeaderLock:
    """A Redis lock with an expiry that one process at a time holds, identified by a random token.

    redis-py's :class:`redis.lock.Lock` does the work: :meth:`acquire` takes it if free (``SET NX
    PX``); :meth:`renew` pushes its expiry back to a full ``ttl_s`` only if we still hold it
    (``reacquire``, a Lua compare-and-extend); :meth:`release` deletes it only if we hold it.  A
    holder that stops renewing (dead, frozen, cut off) loses it after ``ttl_s``.
    """

    def __init__(self, client, key: str, ttl_s: float, owner: str | None = None, token: str | None = None) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        # A fixed token (a message id) lets a redelivery of the same work take its own lock back.
        self.token = token or f"{self.owner}:{uuid.uuid4().hex}"
        # Not thread-local: the renewal loop and a signal handler's stop may be different threads.
        self._lock = client.lock(key, timeout=self.ttl_ms / 1000, thread_local=False)

    def acquire(self) -> bool:
        """Take the lock if nobody holds it (or renew it if we do); True if we hold it now."""
        if self._lock.acquire(blocking=False, token=self.token):
            return True
        return self.renew()

    def renew(self) -> bool:
        """Extend the lock to a full ``ttl_s`` from now; False if it is no longer ours."""
        from redis.exceptions import LockError

        self._lock.local.token = self.token.encode()  # ours, even before a first acquire in this process
        try:
            return bool(self._lock.reacquire())
        except LockError:  # LockNotOwnedError: expired, or another scheduler holds it
            return False

    def release(self) -> bool:
        """Give the lock up (if we hold it) so another scheduler takes over at once."""
        from redis.exceptions import LockError

        self._lock.local.token = self.token.encode()
        try:
            self._lock.release()
            return True
        except LockError:
            return False

    def holder(self) -> str | None:
        """The token of whoever holds the lock now (None if free)."""
        value = self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else value
