"""Page claims: each page of a walk is fetched by one message, whatever the broker delivers twice.

The rule is plain (:mod:`core.page_claims`); the Redis transaction is raced on a real Redis.
"""
from __future__ import annotations

import asyncio

import redis.asyncio

from core.page_claims import MINE, NEW, TAKEN, claim, hand_over, resumed
from runtime import page_claims


def test_the_first_message_claims_a_page_and_finds_it_its_own_when_delivered_again():
    assert claim(None, "m1") == (NEW, "m1")
    assert claim("m1", "m1") == (MINE, None)  # delivered again, or retried: same message id
    assert claim("m1", "m2") == (TAKEN, None)  # the same page sent twice: the second copy stops


def test_a_page_handed_over_is_the_successors_and_a_late_copy_of_its_owner_stops():
    held = hand_over("m1", "m1", "m2")
    assert held == "m1>m2"
    assert claim(held, "m1") == (MINE, None)  # the owner's retry (its send failed) goes on
    assert claim(held, "m3") == (TAKEN, None)
    assert claim(held, "m2") == (NEW, "m2")  # the successor takes the page: a first fetch, no retry
    assert claim("m2", "m1") == (TAKEN, None)  # then a late copy of the owner stops
    assert hand_over("m2", "m1", "m4") is None  # and may not send the page again
    assert hand_over(None, "m1", "m4") is None


def test_a_resume_takes_a_page_whoever_held_it():
    assert claim(resumed("r1"), "r1") == (NEW, "r1")
    assert claim(resumed("r1"), "m1") == (TAKEN, None)


def test_racing_deliveries_see_one_winner(redis_url):
    async def race() -> list[str]:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            return await asyncio.gather(*(page_claims.claim(client, "t", 7, 3, f"m{n % 5}") for n in range(40)))
        finally:
            await client.aclose()

    outcomes = asyncio.run(race())
    assert outcomes.count(NEW) == 1
    winner = f"m{outcomes.index(NEW) % 5}"
    # The winner's other deliveries find it theirs; every other message stops.
    assert all(outcome == (MINE if f"m{n % 5}" == winner else TAKEN)
               for n, outcome in enumerate(outcomes) if outcome != NEW)
