"""The push log of Refurbed's batch pushes (one ListOffers read, one BatchUpdateOffers write): each row of a
batch has its own entry, and a line that fails alone is retried on its own.  Real PostgreSQL and Redis, the
Refurbed sandbox over HTTP, the in-order broker of test_events_drain.py."""
from __future__ import annotations

import pytest

from core.push_log import PushFilter
from db import push_log
from pipelines import drain as drains
from tests.test_events_drain import Broker
from tests.test_refurbed_batch_push import topup, world  # noqa: F401


def test_each_row_of_a_batch_has_its_entry_and_a_line_failing_alone_is_retried(world):
    from clients.errors import ServerError

    sandbox = world["sandbox"]
    offers = world["offers"][:5]
    truth = topup(world, offers)
    failing = offers[2]["sku"]
    sandbox.fail_offer_updates([failing], status=503)
    broker = Broker()
    with pytest.raises(ServerError, match="injected"):
        drains.drain("push", "refurbed", "message-1", broker.send)

    def entries() -> dict[str, push_log.PushEntry]:
        with world["sessions"]() as session:
            found, _ = push_log.list_pushes(session, PushFilter(account="refurbed", limit=50))
        return {entry.sku: entry for entry in found}

    first = entries()
    assert sorted(entry.state for entry in first.values()) == ["confirmed"] * 4 + ["retried"]
    assert "ServerError" in first[failing].error and first[failing].attempts == 1
    for offer in offers:
        entry = first[offer["sku"]]
        assert (entry.quantity_read, entry.quantity_sent) == (offer["quantity"], truth[offer["sku"]])
        assert entry.listings == [offer["id"]] and entry.sent_at is not None

    # The message's retry (same id): the failed line is read and written again, in the same entry.
    assert drains.drain("push", "refurbed", "message-1", broker.send).rows == 1
    again = entries()
    assert again[failing].id == first[failing].id
    assert (again[failing].state, again[failing].attempts, again[failing].quantity_sent) == (
        "confirmed", 2, truth[failing])
    assert {sku: entry.state for sku, entry in again.items()} == dict.fromkeys(truth, "confirmed")
