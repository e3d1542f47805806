"""The fleet-wide rate limiter: unit tests on fakeredis, exactness across OS processes on a real Redis."""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import traceback

import fakeredis
import pytest
import redis.asyncio

from clients.ratelimit import FleetRateLimiter, RateLimitWaitTimeout


def run(coro):
    return asyncio.run(coro)


def fake_redis() -> redis.asyncio.Redis:
    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())


# ---------------------------------------------------------------------------------------------
# Unit tests (fakeredis runs the same Lua script through lupa)


def test_grants_up_to_the_limit_then_says_how_long_to_wait():
    async def main():
        limiter = FleetRateLimiter(fake_redis(), "bm", limit=3, window_s=10)
        # Given three free slots, I expect three grants
        assert [await limiter.try_acquire() for _ in range(3)] == [(True, 0.0)] * 3
        # When the window is full, I expect a refusal with the time until the oldest slot leaves it
        granted, wait_s = await limiter.try_acquire()
        assert granted is False
        assert 9.0 < wait_s <= 10.0

    run(main())


def test_acquire_waits_for_the_window_instead_of_failing():
    async def main():
        seen = []
        limiter = FleetRateLimiter(fake_redis(), "bm", limit=2, window_s=0.2, on_wait=lambda *a: seen.append(a))
        first = await limiter.acquire()
        second = await limiter.acquire()
        start = limiter.last_granted_at
        # The third slot frees up when the first one leaves the 0.2 s window
        third = await limiter.acquire()
        assert first < 0.05 and second < 0.05
        assert 0.19 <= third < 0.4
        assert limiter.last_granted_at - start >= 0.199
        assert [name for name, _ in seen] == ["bm"] * 3
        assert seen[2][1] == third

    run(main())


def test_remaining_counts_the_free_slots_and_a_full_window_says_when_it_frees():
    async def main():
        server = fakeredis.FakeServer()
        limiter = FleetRateLimiter(fakeredis.FakeAsyncRedis(server=server), "lines", limit=3, window_s=10,
                                   max_wait_s=0)
        assert await limiter.remaining() == 3
        await limiter.acquire()
        await limiter.acquire()
        assert await limiter.remaining() == 1  # peeking takes nothing
        assert await limiter.remaining() == 1
        await limiter.acquire()
        with pytest.raises(RateLimitWaitTimeout) as full:
            await limiter.acquire()
        assert 9.0 < full.value.retry_after_s <= 10.0
        from clients.ratelimit import slots_used

        assert slots_used(fakeredis.FakeRedis(server=server), "lines", 10) == 3

    run(main())


def test_instances_with_the_same_name_share_one_quota_and_namespaces_do_not():
    async def main():
        client = fake_redis()
        one = FleetRateLimiter(client, "bm", limit=1, window_s=10)
        two = FleetRateLimiter(client, "bm", limit=1, window_s=10)
        other_name = FleetRateLimiter(client, "im", limit=1, window_s=10)
        other_ns = FleetRateLimiter(client, "bm", limit=1, window_s=10, namespace="other")
        assert (await one.try_acquire())[0] is True
        assert (await two.try_acquire())[0] is False
        assert (await other_name.try_acquire())[0] is True
        assert (await other_ns.try_acquire())[0] is True

    run(main())


def test_penalty_blocks_every_acquirer_of_the_quota_until_it_expires():
    async def main():
        client = fake_redis()
        limiter = FleetRateLimiter(client, "bm", limit=100, window_s=1)
        elsewhere = FleetRateLimiter(client, "bm", limit=100, window_s=1)
        unrelated = FleetRateLimiter(client, "im", limit=100, window_s=1)
        await limiter.penalize(0.3)
        granted, wait_s = await elsewhere.try_acquire()
        assert granted is False and 0.2 < wait_s <= 0.3
        assert (await unrelated.try_acquire())[0] is True
        waited = await elsewhere.acquire()
        assert 0.2 < waited < 0.6

    run(main())


def test_a_shorter_penalty_never_cuts_a_longer_one():
    async def main():
        client = fake_redis()
        limiter = FleetRateLimiter(client, "bm", limit=1, window_s=1)
        await limiter.penalize(5)
        await limiter.penalize(0.1)
        assert await client.pttl(limiter.penalty_key) > 4000
        await limiter.penalize(8)
        assert await client.pttl(limiter.penalty_key) > 7000

    run(main())


def test_keys_expire_when_idle():
    async def main():
        client = fake_redis()
        limiter = FleetRateLimiter(client, "bm", limit=5, window_s=2, namespace="ns")
        assert limiter.key == "ns:ratelimit:bm" and limiter.penalty_key == "ns:ratelimit:bm:penalty"
        await limiter.acquire()
        assert 2000 < await client.pttl(limiter.key) <= 3000
        await limiter.penalize(1.5)
        assert 1000 < await client.pttl(limiter.penalty_key) <= 1500

    run(main())


def test_max_wait_fails_at_once_when_the_wait_is_known_to_be_too_long():
    async def main():
        limiter = FleetRateLimiter(fake_redis(), "bm", limit=1, window_s=30, max_wait_s=0.05)
        await limiter.acquire()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RateLimitWaitTimeout, match="no slot within max_wait_s=0.050s") as raised:
            await limiter.acquire()
        assert loop.time() - started < 0.05
        assert raised.value.permanent is False

    run(main())


def test_a_failing_on_wait_callback_does_not_cost_the_slot():
    def broken(name, seconds):
        raise RuntimeError("metrics down")

    async def main():
        limiter = FleetRateLimiter(fake_redis(), "bm", limit=1, window_s=1, on_wait=broken)
        assert await limiter.acquire() < 0.05

    run(main())


def test_refund_gives_back_exactly_the_slot_named_and_only_once():
    async def main():
        limiter = FleetRateLimiter(fake_redis(), "ingram", limit=2, window_s=10)
        await limiter.acquire()
        kept = limiter.last_slot
        await limiter.acquire()
        refused = limiter.last_slot
        assert kept != refused
        # Given a full window, when the second request's slot is refunded (the API refused it),
        # I expect one free slot at once, and the first grant still counted
        assert (await limiter.try_acquire())[0] is False
        assert await limiter.refund(refused) is True
        assert await limiter.redis.zscore(limiter.key, kept) is not None
        assert await limiter.try_acquire() == (True, 0.0)
        assert (await limiter.try_acquire())[0] is False
        # A slot given back (or already gone from the window) is not given back twice
        assert await limiter.refund(refused) is False
        assert await limiter.redis.zcard(limiter.key) == 2

    run(main())


def test_several_slots_are_granted_together_or_not_at_all():
    async def main():
        limiter = FleetRateLimiter(fake_redis(), "bm", limit=3, window_s=10)
        await limiter.acquire()
        await limiter.acquire()
        # Given one free slot, a pair is refused and takes nothing
        granted, wait_s = await limiter.try_acquire(2)
        assert granted is False and 9.0 < wait_s <= 10.0
        assert await limiter.remaining() == 1
        limiter2 = FleetRateLimiter(fake_redis(), "bm2", limit=3, window_s=10)
        assert await limiter2.try_acquire(2) == (True, 0.0)
        assert len(limiter2.last_slots) == 2 and await limiter2.remaining() == 1
        # Each slot of a pair can be given back on its own
        assert await limiter2.refund(limiter2.last_slots[1]) is True
        assert await limiter2.remaining() == 2
        with pytest.raises(ValueError, match="count"):
            await limiter2.try_acquire(4)

    run(main())


def test_an_urgent_waiter_gets_the_next_free_slots_before_the_others():
    async def main():
        server = fakeredis.FakeServer()
        walk = FleetRateLimiter(fakeredis.FakeAsyncRedis(server=server), "bm", limit=4, window_s=0.3)
        push = FleetRateLimiter(fakeredis.FakeAsyncRedis(server=server), "bm", limit=4, window_s=0.3)
        for _ in range(4):
            await walk.acquire()
        # Given a full window and an urgent pair waiting, when the window frees, I expect the walk
        # to be granted only what is left beside the claimed pair
        granted, _ = await push.try_acquire(2, urgent=True, member="push-1")
        assert granted is False
        assert await push.redis.zcard(push.claims_key) == 2
        await asyncio.sleep(0.31)
        assert [(await walk.try_acquire())[0] for _ in range(3)] == [True, True, False]
        assert await push.try_acquire(2, urgent=True, member="push-1") == (True, 0.0)
        # Served, its claim is gone: the walk has the rest of the next window to itself
        assert await push.redis.zcard(push.claims_key) == 0

    run(main())


def test_a_walk_of_acquirers_cannot_starve_an_urgent_pair():
    async def main():
        server = fakeredis.FakeServer()
        walk = FleetRateLimiter(fakeredis.FakeAsyncRedis(server=server), "bm", limit=4, window_s=0.2)
        push = FleetRateLimiter(fakeredis.FakeAsyncRedis(server=server), "bm", limit=4, window_s=0.2)
        stop = asyncio.Event()

        async def fetcher():
            while not stop.is_set():
                await walk.acquire()

        fetchers = [asyncio.create_task(fetcher()) for _ in range(8)]
        await asyncio.sleep(0.25)  # the walk holds the window
        # When a push wants two slots at once, I expect it served within about one window
        waited = await asyncio.wait_for(push.acquire(2, urgent=True), timeout=2.0)
        stop.set()
        for task in fetchers:
            task.cancel()
        await asyncio.gather(*fetchers, return_exceptions=True)
        assert waited < 0.5, waited

    run(main())


def test_an_urgent_waiter_that_gives_up_leaves_no_claim():
    async def main():
        limiter = FleetRateLimiter(fake_redis(), "bm", limit=2, window_s=10, max_wait_s=0.1)
        await limiter.acquire()
        with pytest.raises(RateLimitWaitTimeout):
            await limiter.acquire(2, urgent=True)
        assert await limiter.redis.zcard(limiter.claims_key) == 0
        # So the one free slot is still anybody's
        assert await limiter.try_acquire() == (True, 0.0)

    run(main())


def test_a_slot_reserved_ahead_counts_from_when_it_is_restamped():
    async def main():
        limiter = FleetRateLimiter(fake_redis(), "bm", limit=2, window_s=0.3)
        await limiter.acquire(2)
        reserved = limiter.last_slots
        await asyncio.sleep(0.2)
        # Given two slots granted 0.2 s ago, when their requests leave now, I expect them to count a whole
        # window from now: 0.3 s after the grant the window is still full
        assert await limiter.restamp(reserved) == 2
        await asyncio.sleep(0.15)
        assert (await limiter.try_acquire())[0] is False
        # A slot that already left the window is not put back into it
        await asyncio.sleep(0.35)
        assert await limiter.restamp(reserved) == 0
        assert await limiter.remaining() == 2

    run(main())


def test_a_pool_serves_several_pushes_from_one_urgent_grant_and_gives_back_the_rest():
    from pipelines.events import PairedSlots, PairPool

    async def main():
        server = fakeredis.FakeServer()
        limiter = FleetRateLimiter(fakeredis.FakeAsyncRedis(server=server), "bm", limit=20, window_s=10)
        pool = PairPool(8)
        # A pool of 8 rows on a 20-slot quota: at most half the quota (5 pairs) in one grant
        first = PairedSlots(lambda: limiter, pool=pool)
        await first.take_two()
        assert len(first.held) == 2 and len(pool.pairs) == 4 and await limiter.remaining() == 10
        second = PairedSlots(lambda: limiter, pool=pool)
        await second.take_two()
        assert len(pool.pairs) == 3 and set(second.held).isdisjoint(first.held)
        await pool.release()
        assert pool.pairs == [] and await limiter.remaining() == 16

    run(main())


def test_a_quota_of_one_call_a_window_still_serves_a_push_its_read_then_its_write():
    """A pair cannot be granted together under a quota of 1: the read takes the one slot, the write the next window's.

    It used to ask the limiter for 2 slots at once, which a limit of 1 refuses (ValueError): every push
    drain of such an account was dead-lettered and its rows marked failed.
    """
    from pipelines.events import PairedSlots, PairPool

    async def main():
        server = fakeredis.FakeServer()
        limiter = FleetRateLimiter(fakeredis.FakeAsyncRedis(server=server), "refurbed", limit=1, window_s=0.2)
        alone = PairedSlots(lambda: limiter)
        await alone.take_two()
        assert len(alone.held) == 1 and await limiter.remaining() == 0
        assert await alone.acquire() == 0.0  # the read, on the slot held
        assert await alone.acquire() > 0  # the write waited for the next window
        pooled = PairedSlots(lambda: limiter, pool=PairPool(3))
        await pooled.take_two()
        assert len(pooled.held) == 1

    run(main())


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="limit"):
        FleetRateLimiter(fake_redis(), "bm", limit=0, window_s=1)
    with pytest.raises(ValueError, match="window_s"):
        FleetRateLimiter(fake_redis(), "bm", limit=1, window_s=0)


# ---------------------------------------------------------------------------------------------
# Integration: several OS processes × several asyncio tasks on one real Redis


def _hammer(redis_url, name, limit, window_s, tasks, duration_s, barrier, results):
    """Child process: acquire in a loop from ``tasks`` tasks; report the Redis times of the grants."""
    try:
        grants = asyncio.run(_hammer_async(redis_url, name, limit, window_s, tasks, duration_s, barrier, results))
        results.put(("grants", os.getpid(), grants))
    except BaseException:
        results.put(("error", os.getpid(), traceback.format_exc()))


async def _hammer_async(redis_url, name, limit, window_s, tasks, duration_s, barrier, results):
    client = redis.asyncio.Redis.from_url(redis_url)
    await client.ping()
    barrier.wait(30)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration_s
    grants = []

    async def worker():
        limiter = FleetRateLimiter(client, name, limit, window_s)
        while loop.time() < deadline:
            await limiter.acquire()
            # Read at once: no other task runs between the grant and this line.
            grants.append(round(limiter.last_granted_at * 1_000_000))
            if len(grants) == 1:
                results.put(("started", os.getpid(), None))

    await asyncio.gather(*(worker() for _ in range(tasks)))
    await client.aclose()
    return grants


def _run_fleet(redis_url, processes, *, on_started=None, **kwargs):
    """Start ``processes`` hammering children; return {pid: [grant times in µs]}."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    children = [context.Process(target=_hammer, args=(redis_url,), daemon=True,
                                kwargs={**kwargs, "barrier": barrier, "results": results})
                for _ in range(processes)]
    for child in children:
        child.start()
    grants, started = {}, set()
    try:
        while len(grants) < processes:
            kind, pid, payload = results.get(timeout=60)
            if kind == "error":
                pytest.fail(f"child {pid} failed:\n{payload}")
            if kind == "started":
                started.add(pid)
                if len(started) == processes and on_started:
                    on_started()
            else:
                grants[pid] = payload
    except queue.Empty:
        pytest.fail("the children did not report in time")
    finally:
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()
    return grants


def _max_in_any_window(times_us, window_us):
    times = sorted(times_us)
    best, start = 0, 0
    for end, t in enumerate(times):
        # A slot granted at s still counts at t while t - s < window.
        while t - times[start] >= window_us:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_limit_is_exact_across_processes_and_tasks(redis_url):
    limit, window_s, duration_s = 10, 0.5, 2.0
    grants = _run_fleet(redis_url, 4, name="exact", limit=limit, window_s=window_s, tasks=8, duration_s=duration_s)
    everything = sorted(t for times in grants.values() for t in times)
    # Exact: never more than `limit` grants in any 0.5 s window, fleet-wide
    assert _max_in_any_window(everything, int(window_s * 1_000_000)) == limit
    # And close to the quota: the limiter waits for slots, it does not waste them
    first = everything[0]
    in_duration = [t for t in everything if t - first < duration_s * 1_000_000]
    assert len(in_duration) >= 0.8 * limit * duration_s / window_s
    assert all(times for times in grants.values()), "every process got slots"


def test_penalty_makes_every_process_wait(redis_url):
    penalty_s = 0.5
    marks = {}

    async def penalize():
        client = redis.asyncio.Redis.from_url(redis_url)
        limiter = FleetRateLimiter(client, "penalized", 20, 0.1)
        marks["before"] = _micros(await client.time())
        await limiter.penalize(penalty_s)
        marks["after"] = _micros(await client.time())
        await client.aclose()

    # Once every process is getting slots, a 429 (here: penalize) must stop all of them
    grants = _run_fleet(redis_url, 3, on_started=lambda: run(penalize()), name="penalized", limit=20, window_s=0.1,
                        tasks=4, duration_s=1.5)
    penalty_ends = marks["before"] + int(penalty_s * 1_000_000)
    slack = 2000  # PTTL has millisecond resolution
    for pid, times in grants.items():
        assert any(t < marks["before"] for t in times), f"process {pid} was running before the penalty"
        after = [t for t in times if t > marks["after"]]
        assert after, f"process {pid} resumed after the penalty"
        assert min(after) >= penalty_ends - slack, f"process {pid} did not wait for the penalty"


def _micros(redis_time) -> int:
    seconds, micros = redis_time
    return int(seconds) * 1_000_000 + int(micros)
