"""Drift explained in the console: a reconciliation run's page shows the counts per cause and each difference's
cause and evidence (escaped, to any logged-in user).  Real PostgreSQL and Redis."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import text

from db.reconcile import begin_reconciliation, compare_page, finish_reconciliation
from db.snapshot import PageItem
from tests.console_support import pages_as, world  # noqa: F401


def test_a_reconciliations_page_shows_its_counts_per_cause_and_each_rows_cause(world):
    with world.sessions() as session:
        listing, marketplace_id = session.execute(text(
            "SELECT external_id, marketplace_id FROM listings WHERE sku = 'IPHONE13-128-BLK'")).one()
        reconciliation = begin_reconciliation(session, "backmarket", dry_run=True)
        # The marketplace shows 8 where the stock table says 5, with no order, push or cancellation behind it.
        compare_page(session, run_id=reconciliation.id, marketplace_id=marketplace_id, page=1, total_pages=1,
                     fetched_at=datetime.now(timezone.utc), dry_run=True,
                     items=[PageItem(listing, None, "IPHONE13-128-BLK", "iPhone", 8, 2, None, None)])
        session.commit()
        finish_reconciliation(session, reconciliation.id, threshold=10)

    status, page = pages_as(world, "viewer", f"/syncs/{reconciliation.id}")[f"/syncs/{reconciliation.id}"]
    assert status == 200
    assert '<li data-cause="hand_edit">hand_edit <b>1</b></li>' in page
    assert '<li data-cause="push_lost">push_lost <b>0</b></li>' in page
    row = page.split('<tr data-cause="hand_edit">')[1].split("</tr>")[0]
    assert page.count('<tr data-cause="hand_edit">') == 1 and "+3" in row
    assert "no order, push or cancellation explains it" in row and "&#34;" in row  # the evidence, escaped JSON
