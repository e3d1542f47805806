"""Which delivery of a page's fetch may fetch it: each page of a walk fetched by one message, so one chain.

Brokers deliver at least once: a message delivered again (its worker killed between its work and
its ack) re-sends what it sent, and every page after it would be fetched twice, a second chain
spending the vendor's quota.  A page's claim holds the id of the message that fetches it (its
owner), or ``owner>successor`` while the owner hands the page to the message it sends in its
place (a bulk poll not ready; a resume, with no owner).  A message delivered again keeps its id,
so it finds its own claim and goes on (a retry); any other message for the page stops.
"""
from __future__ import annotations

#: The message claims the page now: its first fetch.
NEW = "new"
#: The page is the message's already: it is delivered again or retried.
MINE = "mine"
#: Another message fetches the page: this one is a duplicate and stops.
TAKEN = "taken"


def claim(held: str | None, message_id: str) -> tuple[str, str | None]:
    """``message_id`` claiming a page whose claim is ``held``: the outcome, and the claim to store (None: unchanged)."""
    if held is None:
        return NEW, message_id
    owner, _, successor = held.partition(">")
    if successor == message_id:
        return NEW, message_id  # handed to it: it is the owner now, and the page's first fetch of its own
    if owner == message_id:
        return MINE, None
    return TAKEN, None


def hand_over(held: str | None, message_id: str, successor: str) -> str | None:
    """The claim once its owner ``message_id`` sends its page again as ``successor``; None: it owns it no more.

    The owner keeps the page until the successor takes it, so a retry of the owner (its send
    failed) still goes on; once the successor claimed it, a late copy of the owner stops.
    """
    owner, _, _ = (held or "").partition(">")
    return f"{message_id}>{successor}" if held is not None and owner == message_id else None


def resumed(message_id: str) -> str:
    """The claim a resume stores for a page it fetches again: its message takes the page, whoever held it."""
    return f">{message_id}"
