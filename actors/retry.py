"""Retry policies for actors: transient failures retry, permanent ones go straight to the DLQ."""
from __future__ import annotations

from core.errors import MalformedMessage

__all__ = ["MalformedMessage", "transient_only"]


def transient_only(max_retries: int):
    """A dramatiq ``retry_when`` that retries up to ``max_retries`` times, never a permanent error.

    A permanent error (a 401, a 404, a malformed page) would fail the same way on every attempt:
    retrying only delays the dead letter an operator needs to see.  PostgreSQL or Redis being
    unreachable never reaches this count: the broker's ``runtime.failures.OutageRetries`` waits
    such an outage out first (``OUTAGE_RETRY_FOR_S``).
    """
    def retry_when(retries: int, exception: BaseException) -> bool:
        if getattr(exception, "permanent", False):
            return False
        return retries < max_retries

    retry_when.__name__ = f"transient_only_{max_retries}"
    return retry_when
