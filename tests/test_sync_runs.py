"""Sync run lifecycle on a real PostgreSQL: no overlap, cooldowns, force, stale runs."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from db.engine import session_factory
from db.syncs import SyncPolicy, SyncRefused, begin_run

POLICY = SyncPolicy(cooldown_scheduled_s=6 * 3600, cooldown_manual_s=1800, stale_after_s=900)


@pytest.fixture
def session(database_url):
    with session_factory(database_url)() as session:
        yield session


def start(session, **kw):
    return begin_run(session, kind="stock", target="backmarket", policy=POLICY, **{"trigger": "manual", **kw})


def finish(session, run_id, ago_s: float):
    session.execute(text("UPDATE sync_runs SET status = 'succeeded', finished_at = now() - make_interval(secs => :a) "
                         "WHERE id = :id"), {"a": ago_s, "id": run_id})
    session.commit()


def test_two_runs_never_overlap_even_forced(session):
    run = start(session)
    with pytest.raises(SyncRefused, match=f"already running \\(sync {run.id}\\)"):
        start(session, force=True)


def test_manual_cooldown_refuses_then_force_bypasses(session):
    finish(session, start(session).id, ago_s=60)
    with pytest.raises(SyncRefused, match="cooldown is 1800 s") as refused:
        start(session)
    assert 1700 < refused.value.retry_after_s <= 1740
    assert start(session, force=True).forced is True


def test_scheduled_cooldown_is_longer_than_manual(session):
    finish(session, start(session).id, ago_s=3600)
    assert start(session).status == "running"  # manual: 30 min passed
    session.execute(text("UPDATE sync_runs SET status = 'succeeded', finished_at = now() WHERE status = 'running'"))
    session.commit()
    with pytest.raises(SyncRefused):
        start(session, trigger="scheduled")


def test_stale_running_run_is_abandoned(session):
    run = start(session)
    session.execute(text("UPDATE sync_runs SET heartbeat_at = now() - interval '1 hour' WHERE id = :id"),
                    {"id": run.id})
    session.commit()
    replacement = start(session)
    status = session.execute(text("SELECT status FROM sync_runs WHERE id = :id"), {"id": run.id}).scalar()
    assert replacement.id != run.id and status == "abandoned"


def test_unknown_trigger_is_refused_clearly(session):
    with pytest.raises(ValueError, match="unknown trigger 'hourly'"):
        start(session, trigger="hourly")
