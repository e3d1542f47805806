"""The push log's states and filters (pure): what a push of a stock row went through, and how to ask for some.

One push of a stock row is one ``push_log`` row, from its first wait or send to its end.  It is
*open* while it may still move on (``waiting``, ``sent``, ``retried``) and *closed* once it ended
(``confirmed``, ``superseded``, ``refused``, ``failed``); a ``failed`` one that the sweep or an
operator puts back in line is ``retried`` again.  The console, the read API and the CLI read the
log through :func:`parse_filter`, so a bad filter is refused the same way (naming the field)
wherever it comes from.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping


class PushState(str, enum.Enum):
    """Where a push of a stock row stands."""

    #: Waiting for its turn: the data limit (Back Market's SKU lines per hour) or a read within the skew.
    WAITING = "waiting"
    #: The quantity went out (a POST); its answer has not been recorded yet.
    SENT = "sent"
    #: The marketplace took the quantity, and it is still the row's latest.
    CONFIRMED = "confirmed"
    #: A newer local change came after the push's read (or another push sent it): a newer push follows.
    SUPERSEDED = "superseded"
    #: The marketplace refused a compare-and-set: its count was not the one read (Shopify's, when it lands).
    REFUSED = "refused"
    #: Failed for good (no listing to push to, the drain's message dead-lettered): waits for the sweep.
    FAILED = "failed"
    #: An attempt failed and the push is tried again (the message's retry, the sweep, an operator).
    RETRIED = "retried"


STATES: tuple[str, ...] = tuple(state.value for state in PushState)
#: States a push may still leave: a new state of its stock row updates this row, not a new one.
OPEN_STATES: tuple[str, ...] = (PushState.WAITING.value, PushState.SENT.value, PushState.RETRIED.value)
CLOSED_STATES: tuple[str, ...] = tuple(state for state in STATES if state not in OPEN_STATES)

#: The longest page of the log one request may ask for.
MAX_PAGE = 500
_ACCOUNT_CHARS = 64


class BadPushFilter(ValueError):
    """A push log filter is wrong; the message names the field and what was given."""


@dataclass(frozen=True)
class PushFilter:
    """Which pushes to list: of one ``account``, in some ``states``, changed in ``[since, until)``, of one
    ``sku``, older than entry ``before`` (the previous page's last id), at most ``limit``."""

    account: str | None = None
    states: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    sku: str | None = None
    before: int | None = None
    limit: int = 50


def _time(name: str, raw: str) -> datetime:
    try:
        moment = datetime.fromisoformat(raw.strip().replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise BadPushFilter(f"{name} must be an ISO 8601 time (2026-12-07T18:00:00Z), got {raw[:40]!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _whole(name: str, raw: str, lowest: int, highest: int) -> int:
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not lowest <= int(raw) <= highest:
        raise BadPushFilter(f"{name} must be a whole number from {lowest} to {highest}, got {raw[:40]!r}")
    return int(raw)


def parse_filter(query: Mapping[str, str], *, default_limit: int = 50) -> PushFilter:
    """A :class:`PushFilter` from query parameters (``account``, ``state`` (comma-separated), ``since``,
    ``until``, ``sku``, ``before``, ``limit``); empty ones are ignored.  Raises :class:`BadPushFilter`."""
    def given(name: str) -> str:
        return str(query.get(name) or "").strip()

    account = given("account") or None
    if account is not None and (len(account) > _ACCOUNT_CHARS or not account.isprintable()):
        raise BadPushFilter(f"account must be an account code of at most {_ACCOUNT_CHARS} characters, "
                            f"got {account[:40]!r}")
    states = tuple(dict.fromkeys(part.strip() for part in given("state").split(",") if part.strip()))
    unknown = [state for state in states if state not in STATES]
    if unknown:
        raise BadPushFilter(f"state must be one of {', '.join(STATES)}, got {unknown[0][:40]!r}")
    since = _time("since", given("since")) if given("since") else None
    until = _time("until", given("until")) if given("until") else None
    if since and until and since >= until:
        raise BadPushFilter("since must be before until")
    sku = given("sku") or None
    if sku is not None and len(sku) > 200:
        raise BadPushFilter("sku must be at most 200 characters")
    before = _whole("before", given("before"), 1, 2**63 - 1) if given("before") else None
    limit = _whole("limit", given("limit"), 1, MAX_PAGE) if given("limit") else default_limit
    return PushFilter(account, states, since, until, sku, before, limit)
