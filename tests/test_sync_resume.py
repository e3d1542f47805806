"""A stalled sync's missing pages, from what PostgreSQL applied (db/syncs.py)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import text

from db.engine import session_factory
from db.syncs import Resume, SyncPolicy, begin_run, pages_to_resume, stalled_runs


def test_the_pages_to_fetch_again_are_the_ones_not_applied():
    assert pages_to_resume(1, 5, {1, 2, 4}) == Resume(1, [3, 5], fan_out=False)
    assert pages_to_resume(1, 5, {1, 2, 3, 4, 5}) == Resume(1, [], fan_out=False)
    # Page 1 not applied: the page count is unknown; page 1 fans out again only if no other page landed.
    assert pages_to_resume(1, None, set()) == Resume(1, [1], fan_out=True)
    assert pages_to_resume(1, None, {3}) == Resume(1, [1], fan_out=False)


def test_a_run_is_resumed_once_it_stalls_and_at_most_once_per_stall_window(database_url):
    sessions = session_factory(database_url)
    with sessions() as session:
        run = begin_run(session, kind="stock", target="backmarket", trigger="manual", policy=SyncPolicy(0, 0, 900))
        session.execute(text("UPDATE sync_runs SET total_pages = 4 WHERE id = :s"), {"s": run.id})
        session.execute(text("INSERT INTO sync_pages (sync_id, page, items, fetched_at) VALUES "
                             "(:s, 1, 50, now()), (:s, 3, 50, now())"), {"s": run.id})
        session.commit()
        now = datetime.now(timezone.utc)
        assert stalled_runs(session, kind="stock", target="backmarket", stalled_after_s=180, now=now) == []
        later = now + timedelta(seconds=200)
        assert stalled_runs(session, kind="stock", target="backmarket", stalled_after_s=180, now=later) == [
            Resume(run.id, [2, 4], fan_out=False)]
        # Just resumed: not again until another window has passed without progress.
        assert stalled_runs(session, kind="stock", target="backmarket", stalled_after_s=180,
                            now=later + timedelta(seconds=60)) == []
        assert len(stalled_runs(session, kind="stock", target="backmarket", stalled_after_s=180,
                                now=later + timedelta(seconds=200))) == 1
        details = session.execute(text("SELECT details FROM sync_runs WHERE id = :s"), {"s": run.id}).scalar()
        assert details["resumes"] == 2
        # Another target's runs are not touched.
        assert stalled_runs(session, kind="stock", target="refurbed", stalled_after_s=180,
                            now=later + timedelta(seconds=900)) == []
