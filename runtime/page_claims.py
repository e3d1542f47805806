"""Page claims in Redis: which message fetches each page of a sync run (the rule: :mod:`core.page_claims`).

A claim is read and changed in one ``WATCH`` transaction, so two deliveries racing for a page see
one winner.  Claims live as long as the run's counters; if Redis loses them, a duplicate fetches
again (as before claims), it never stops the walk.
"""
from __future__ import annotations

from typing import Callable, Mapping, TypeVar

from redis.exceptions import WatchError

from core import page_claims
from core.page_claims import MINE, NEW, TAKEN
from runtime.sync_stats import STATS_TTL_S

__all__ = ["MINE", "NEW", "TAKEN", "claim", "claim_key", "hand_over", "resume"]

T = TypeVar("T")


def claim_key(namespace: str, sync_id: int, page: int) -> str:
    """The Redis string holding who fetches a page of a run."""
    return f"{namespace}:sync:{sync_id}:claim:{page}"


async def _change(redis, key: str, change: Callable[[str | None], tuple[T, str | None]]) -> T:
    """Apply ``change`` (held claim -> result, claim to store or None) atomically; asyncio client."""
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(key)
                raw = await pipe.get(key)
                result, value = change(raw.decode() if isinstance(raw, bytes) else raw)
                pipe.multi()
                if value is not None:
                    pipe.set(key, value, ex=STATS_TTL_S)
                await pipe.execute()
                return result
            except WatchError:  # another delivery changed it meanwhile: decide again on what it wrote
                continue


async def claim(redis, namespace: str, sync_id: int, page: int, message_id: str) -> str:
    """Claim ``page`` for message ``message_id``: :data:`~core.page_claims.NEW`, ``MINE`` or ``TAKEN``."""
    return await _change(redis, claim_key(namespace, sync_id, page),
                         lambda held: page_claims.claim(held, message_id))


async def hand_over(redis, namespace: str, sync_id: int, page: int, message_id: str, successor: str) -> bool:
    """Hand ``page`` from ``message_id`` to the message ``successor`` it sends in its place; False: not its own."""
    def change(held: str | None) -> tuple[bool, str | None]:
        value = page_claims.hand_over(held, message_id, successor)
        return value is not None, value

    return await _change(redis, claim_key(namespace, sync_id, page), change)


def resume(redis, namespace: str, sync_id: int, messages: Mapping[int, str]) -> None:
    """Give each resumed page to the message that fetches it again (``page -> message id``); blocking client."""
    with redis.pipeline(transaction=False) as pipe:
        for page, message_id in messages.items():
            pipe.set(claim_key(namespace, sync_id, page), page_claims.resumed(message_id), ex=STATS_TTL_S)
        pipe.execute()
