"""The push log, recorded by the one push path: real PostgreSQL and Redis, the Back Market sandbox over HTTP.

Each scenario drives the real drain (``pipelines/drain.py``) with the small in-order broker of
``test_events_drain.py`` and reads what the log says: a push that waits for the data limit then is
sent and confirmed, a push superseded by a change that lands after its read, a push the sandbox's
fault dial fails (retried, failed when its message dead-letters, retried by an operator, confirmed).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from core.push_log import BadPushFilter, PushFilter, PushState, parse_filter
from db import push_log
from pipelines import drain as drains
from pipelines import events as pipeline
from pipelines import push_log as push_log_pipeline
from tests.test_events_drain import Broker, scale_data_limit, topup, world  # noqa: F401


def entries(world, **wanted) -> list[push_log.PushEntry]:
    with world["sessions"]() as session:
        found, _ = push_log.list_pushes(session, PushFilter(limit=500, **wanted))
    return sorted(found, key=lambda entry: entry.id)


def counted(state: str) -> float:
    return REGISTRY.get_sample_value("stocksync_pushes_total", {"marketplace": "backmarket", "state": state}) or 0.0


def test_pushes_beyond_the_data_limit_wait_then_are_sent_and_confirmed(world):
    sandbox = world["sandbox"]
    scale_data_limit(world, 2, 2.0)  # 2 lines per 2 seconds
    rows = world["listings"][:4]
    for n, listing in enumerate(rows):
        topup(world, listing, 3, f"PO-{n}")
    before = {state: counted(state) for state in ("waiting", "sent", "confirmed")}
    broker = Broker()
    drains.request("push", "backmarket", broker.send)
    first = broker.waiting.pop(0)
    run = drains.drain(first[1], first[2], "m-0", broker.send)
    assert run.rows == 2 and run.again_in_ms  # the data limit's two lines are used: two rows wait

    halfway = {entry.sku: entry for entry in entries(world)}
    assert sorted(entry.state for entry in halfway.values()) == ["confirmed", "confirmed", "waiting", "waiting"]
    waiting = [entry for entry in halfway.values() if entry.state == "waiting"]
    assert {entry.sku for entry in waiting} == {listing["sku"] for listing in rows[2:]}
    assert all(entry.attempts == 0 and entry.sent_at is None and "data limit" in entry.note for entry in waiting)
    assert REGISTRY.get_sample_value("stocksync_pushes_waiting", {"marketplace": "backmarket"}) == 2
    with world["sessions"]() as session:
        assert push_log.count_states(session, PushFilter(account="backmarket"))["waiting"] == 2

    broker.run()
    done = {entry.sku: entry for entry in entries(world)}
    assert len(done) == 4 and {entry.state for entry in done.values()} == {"confirmed"}
    for listing in rows:
        entry = done[listing["sku"]]
        # One entry per push: the waiting one went on to sent and confirmed (same id), with what it read and sent.
        assert entry.listings == [listing["id"]] and entry.attempts == 1
        assert (entry.quantity_read, entry.quantity_sent) == (listing["quantity"], listing["quantity"] + 3)
        assert sandbox.quantity(listing["id"]) == listing["quantity"] + 3
        assert entry.started_at <= entry.sent_at <= entry.finished_at and entry.note is None
    assert {sku: done[sku].id for sku in halfway} == {sku: entry.id for sku, entry in halfway.items()}
    assert all(done[entry.sku].started_at < done[entry.sku].sent_at for entry in waiting)
    assert counted("waiting") - before["waiting"] == 2
    assert counted("sent") - before["sent"] == 4 and counted("confirmed") - before["confirmed"] == 4
    drains.publish_backlog("backmarket")
    assert REGISTRY.get_sample_value("stocksync_pushes_waiting", {"marketplace": "backmarket"}) == 0


def test_a_change_after_the_read_supersedes_the_push_and_a_newer_one_sends_it(world, monkeypatch):
    listing = world["listings"][0]
    topup(world, listing, 2, "PO-1")
    sending = pipeline._send_quantities
    late = []

    async def change_lands_first(marketplace, quantities, slots):
        if not late:  # a top-up booked between the push's read and its write
            late.append(quantities)
            topup(world, listing, 5, "PO-late")
        return await sending(marketplace, quantities, slots)

    monkeypatch.setattr(pipeline, "_send_quantities", change_lands_first)
    broker = Broker()
    drains.request("push", "backmarket", broker.send)
    broker.run()
    first, second = entries(world, sku=listing["sku"])
    assert (first.state, first.quantity_read, first.quantity_sent) == ("superseded", listing["quantity"],
                                                                       listing["quantity"] + 2)
    assert "newer local change" in first.note and first.finished_at is not None
    assert (second.state, second.quantity_read, second.quantity_sent) == ("confirmed", listing["quantity"] + 2,
                                                                          listing["quantity"] + 7)
    assert world["sandbox"].quantity(listing["id"]) == listing["quantity"] + 7


def test_a_push_the_marketplace_fails_is_retried_failed_then_retried_and_confirmed(world):
    sandbox = world["sandbox"]
    listing = world["listings"][0]
    topup(world, listing, 4, "PO-1")
    sandbox.configure(error_rate=1.0)  # every catalog request answers 500 (production HTTP attempts and backoff)
    broker = Broker()
    drains.request("push", "backmarket", broker.send)
    broker.waiting.pop(0)
    with pytest.raises(Exception) as raised:
        drains.drain("push", "backmarket", "m-failing", broker.send)
    (entry,) = entries(world)
    assert entry.state == "retried" and "500" in entry.error and entry.finished_at is None
    # The drain message's retries run out: its dead-letter handler fails what it held.
    error = f"{type(raised.value).__name__}: {raised.value}"
    assert drains.pushes_failed("m-failing", error) == 1
    (entry,) = entries(world)
    assert entry.state == "failed" and entry.finished_at is not None
    with world["sessions"]() as session:
        assert push_log.list_pushes(session, parse_filter({"state": "failed", "account": "backmarket"}))[0][0]

    sandbox.configure(error_rate=0.0)
    assert pipeline.retry_push("backmarket", listing["sku"])  # the operator's retry (actor push_stock)
    (entry,) = entries(world)
    assert entry.state == "retried" and entry.note == "retried by an operator"
    drains.request("push", "backmarket", broker.send, force=True)
    broker.run()
    (entry,) = entries(world)  # still one push: its retries are its own history
    assert (entry.state, entry.quantity_sent, entry.attempts) == ("confirmed", listing["quantity"] + 4, 1)
    assert "500" in entry.error  # the last error stays readable on the confirmed push
    assert sandbox.quantity(listing["id"]) == listing["quantity"] + 4


def test_the_sweep_prunes_pushes_past_the_retention_but_keeps_open_ones(world):
    old, recent, open_ = world["listings"][:3]
    with world["sessions"]() as session:
        ids = dict(session.execute(text(
            "SELECT v.sku, s.id FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
            "WHERE v.sku = ANY(:skus)"), {"skus": [old["sku"], recent["sku"], open_["sku"]]}).all())
        long_ago = datetime.now(timezone.utc) - timedelta(days=31)
        push_log_pipeline.note(session, PushState.CONFIRMED, stock_ids=[ids[old["sku"]]], now=long_ago)
        push_log_pipeline.note(session, PushState.WAITING, stock_ids=[ids[open_["sku"]]], now=long_ago)
        push_log_pipeline.note(session, PushState.CONFIRMED, stock_ids=[ids[recent["sku"]]])
        session.commit()
    pipeline.sweep("backmarket")  # PUSH_LOG_RETENTION_DAYS: 30 by default
    assert sorted(entry.sku for entry in entries(world)) == sorted([recent["sku"], open_["sku"]])


@pytest.mark.parametrize("query, field", [
    ({"state": "lost"}, "state"), ({"state": "sent,nope"}, "state"), ({"since": "yesterday"}, "since"),
    ({"until": "2026-13-01"}, "until"), ({"since": "2026-12-02", "until": "2026-12-01"}, "since"),
    ({"before": "-1"}, "before"), ({"before": "9" * 30}, "before"), ({"limit": "0"}, "limit"),
    ({"limit": "501"}, "limit"), ({"account": "x" * 65}, "account"), ({"sku": "s" * 201}, "sku"),
])
def test_bad_filters_are_refused_naming_the_field(query, field):
    with pytest.raises(BadPushFilter) as refused:
        parse_filter(query)
    assert str(refused.value).startswith(field)


def test_a_filter_reads_the_states_times_and_pages():
    found = parse_filter({"account": "backmarket", "state": "failed,retried,failed", "since": "2026-12-07T18:00:00Z",
                          "until": "2026-12-08", "before": "42", "limit": "10"})
    assert found.states == ("failed", "retried") and found.before == 42 and found.limit == 10
    assert found.since == datetime(2026, 12, 7, 18, tzinfo=timezone.utc)
    assert found.until == datetime(2026, 12, 8, tzinfo=timezone.utc)


def test_the_migrations_match_the_models_and_go_down_and_up(pg_server):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine, inspect

    import db.event_models  # noqa: F401
    from db.migrate import downgrade, upgrade
    from db.models import Base

    url = pg_server.create_database("push_log_migration")
    upgrade(url)
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
            indexes = {ix["name"] for ix in inspect(connection).get_indexes("push_log")}
        assert [entry for entry in diff if "push_log" in repr(entry) or "reconciliation_reports" in repr(entry)] == []
        assert {"ix_push_log_account", "ix_push_log_state", "ix_push_log_started", "ix_push_log_open"} <= indexes
        downgrade(url, "0010")
        assert "push_log" not in inspect(engine).get_table_names()
        assert "cause" not in {c["name"] for c in inspect(engine).get_columns("reconciliation_reports")}
        upgrade(url)
        assert "push_log" in inspect(engine).get_table_names()
        assert {"cause", "evidence"} <= {c["name"] for c in inspect(engine).get_columns("reconciliation_reports")}
    finally:
        engine.dispose()
