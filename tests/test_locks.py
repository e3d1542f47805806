"""The scheduler's leader lock and the Ingram token lock, on redis-py's Lock, against a real Redis."""
from __future__ import annotations

import asyncio

import redis
import redis.asyncio

from clients.ingram_token import SharedToken
from runtime.local_servers import wait_until
from workers.scheduler import LeaderLock


def test_the_leader_lock_expires_and_a_stale_holder_cannot_touch_its_successor(redis_url):
    client = redis.Redis.from_url(redis_url)
    first = LeaderLock(client, "test:leader", ttl_s=0.3, owner="a")
    second = LeaderLock(client, "test:leader", ttl_s=30, owner="b")
    assert first.acquire() and first.holder() == first.token
    assert 0 < client.pttl("test:leader") <= 300
    assert not second.acquire()  # held
    wait_until(lambda: client.get("test:leader") is None, 5, what="the lock to expire")
    assert second.acquire() and second.holder() == second.token
    assert not first.renew() and not first.release()  # the stale holder neither extends nor deletes it
    assert second.holder() == second.token
    assert second.renew() and client.pttl("test:leader") > 29_000
    assert second.release() and second.holder() is None


def test_one_token_fetch_for_many_callers_and_a_slow_fetch_leaves_the_next_lock_alone(redis_url):
    async def scenario():
        client = redis.asyncio.Redis.from_url(redis_url)
        fetches = []

        async def fetch():
            fetches.append(1)
            await asyncio.sleep(0.2)
            return f"token-{len(fetches)}", 3600.0

        shared = SharedToken(client, "test-app", namespace="t", lock_ttl_s=5, poll_s=0.01)
        tokens = await asyncio.gather(*(shared.get(fetch) for _ in range(20)))
        assert set(tokens) == {"token-1"} and len(fetches) == 1
        assert await client.get(shared.lock_key) is None  # released

        # A fetch slower than the lock's expiry must not delete the lock another caller took since.
        slow = SharedToken(client, "slow-app", namespace="t", lock_ttl_s=0.1, poll_s=0.01)

        async def slow_fetch():
            await asyncio.sleep(0.3)
            await client.set(slow.lock_key, "someone-else", px=10_000)
            return "slow-token", 3600.0

        assert await slow.get(slow_fetch) == "slow-token"
        assert await client.get(slow.lock_key) == b"someone-else"
        await client.aclose()

    asyncio.run(scenario())
