"""The console's Redis limits: login attempts reserved before the password is checked, and bursts of
unauthenticated requests audited once per window.

Both are one Lua script each, so that concurrent requests cannot all pass a check before any of
them counts (``login_throttle.lua``, ``audit_burst.lua`` beside this module say how).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

_LOGIN_SCRIPT = Path(__file__).with_name("login_throttle.lua").read_text()
_BURST_SCRIPT = Path(__file__).with_name("audit_burst.lua").read_text()


@dataclass(frozen=True)
class Reservation:
    """A login attempt's turn: ``allowed`` (counted: check the password), or wait ``wait_s`` because of
    ``reason`` (too many attempts on this account from this address, or from this address)."""

    allowed: bool
    wait_s: float = 0.0
    reason: str | None = None

    def message(self) -> str:
        """What the login form says to a refused attempt."""
        seconds = max(1, math.ceil(self.wait_s))
        wait = f"{seconds} seconds" if seconds < 120 else f"{math.ceil(seconds / 60)} minutes"
        return f"Too many login attempts {self.reason}: try again in {wait}."


class LoginThrottle:
    """Login attempts per (account, address) and per address, each with a delay growing past its free ones.

    :meth:`reserve` counts an attempt before its password is checked (or says how long to wait);
    :meth:`succeeded` forgets the (account, address) count: the address's counts failures only.  No
    account is ever locked for everyone: an account's count is per address.
    """

    def __init__(self, redis, namespace: str, *, window_s: float, free_per_account: int, free_per_address: int,
                 base_delay_s: float, max_delay_s: float) -> None:
        self.redis = redis
        self.prefix = f"{namespace}:console:login"
        self.window_ms = max(1, int(window_s * 1000))
        self.free = (free_per_account, free_per_address)
        self.base_ms = max(1, int(base_delay_s * 1000))
        self.max_ms = max(self.base_ms, int(max_delay_s * 1000))
        self._script = redis.register_script(_LOGIN_SCRIPT)

    def _keys(self, username: str, address: str) -> list[str]:
        return [f"{self.prefix}:pair:{username}:{address}", f"{self.prefix}:address:{address}"]

    def reserve(self, username: str, address: str) -> Reservation:
        """Count this attempt and let it check its password, or say how long it must wait (not counted)."""
        result = self._script(keys=self._keys(username, address),
                              args=[*self.free, self.base_ms, self.max_ms, self.window_ms, "reserve"])
        if int(result[0]) == 1:
            return Reservation(True)
        reason = "on this account from your address" if int(result[2]) == 1 else "from your address"
        return Reservation(False, int(result[1]) / 1000, reason)

    def succeeded(self, username: str, address: str) -> None:
        """A good password forgets its (account, address) count and gives back the attempt it counted on
        the address (only that one: a good account must not reset a guesser's budget for the others)."""
        self._script(keys=self._keys(username, address),
                     args=[*self.free, self.base_ms, self.max_ms, self.window_ms, "succeeded"])


class AuditBursts:
    """Whether an unauthenticated event is audited: the first per (kind, address) and window, the rest counted."""

    def __init__(self, redis, namespace: str, *, window_s: int) -> None:
        self.prefix = f"{namespace}:console:audit-burst"
        self.window_s = max(1, int(window_s))
        self._script = redis.register_script(_BURST_SCRIPT)

    def admit(self, kind: str, address: str) -> int | None:
        """None: not audited (counted).  Otherwise how many of the same were not audited before this one."""
        key = f"{self.prefix}:{kind}:{address}"
        suppressed = int(self._script(keys=[key, f"{key}:suppressed"], args=[self.window_s]))
        return None if suppressed < 0 else suppressed
