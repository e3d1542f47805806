"""A SKU chart's columns rolled up once (``chart_cells``): on random bookings and reads, every column's count,
lowest, highest and last quantity and marks are what the raw rows say, when first drawn, when read back
stored, after a read written late into a stored column and after a prune; and the chart drawn from stored
columns is the chart drawn from the rows alone."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from core.stock_chart import GRID_MS, column_ms, settled_columns
from core.timeline import chart_window
from db import timeline as queries
from db.engine import session_factory
from db.snapshot import ensure_marketplace
from pipelines import timeline

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MARKED = ("order_created", "topup", "manual")


def test_the_grid_is_the_narrowest_width_that_fits_and_keeps_only_whole_settled_columns():
    width = column_ms(90 * 86400, 223)
    assert width in GRID_MS and width >= 90 * 86400 * 1000 / 223
    assert GRID_MS[GRID_MS.index(width) - 1] < 90 * 86400 * 1000 / 223
    assert 188 <= 90 * 86400 * 1000 // width <= 223
    since = datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc)  # 1 us past a column start: that column is cut
    kept = settled_columns(since, since + timedelta(seconds=10), since + timedelta(seconds=5), 1000)
    assert kept == range(int((since - EPOCH).total_seconds()) + 1, int((since - EPOCH).total_seconds()) + 5)
    assert not settled_columns(since, since + timedelta(seconds=10), since, 1000)


def test_a_window_ending_now_is_drawn_over_whole_minutes_the_same_all_minute_long():
    now = datetime(2026, 12, 7, 21, 14, 36, 123456, tzinfo=timezone.utc)
    since, until = chart_window(now - timedelta(days=90), now)
    assert (since, until) == (datetime(2026, 9, 8, 21, 14, tzinfo=timezone.utc),
                              datetime(2026, 12, 7, 21, 15, tzinfo=timezone.utc))
    assert chart_window(now - timedelta(days=90, seconds=30), now + timedelta(seconds=20)) == (since, until)
    assert chart_window(since, until) == (since, until)  # whole minutes stay as they are


def _column(moment: datetime, width_ms: int) -> int:
    return ((moment - EPOCH) // timedelta(microseconds=1)) // (width_ms * 1000)


def expected(source: str, rows: list[tuple], width_ms: int, since: datetime, until: datetime,
             marked: tuple[str, ...]) -> list:
    """Per (stock row, column): first time, count, low, high, last, id sum, marks, from rows (id, stock, at, q,
    kind, change), in plain Python (the last: a ledger's highest id, a read's latest time, then highest id)."""
    found: dict[tuple, list] = {}
    last = (lambda r: r[0]) if source == "ledger" else (lambda r: (r[2], r[0]))
    for row_id, stock, at, q, kind, change in sorted(rows, key=last):
        if not since <= at <= until:
            continue
        cell = found.setdefault((stock, _column(at, width_ms)), [at, 0, q, q, q, 0, {k: [0, 0] for k in marked}])
        cell[0] = min(cell[0], at)
        cell[1] += 1
        cell[2], cell[3], cell[4], cell[5] = min(cell[2], q), max(cell[3], q), q, cell[5] + row_id
        if kind in cell[6]:
            cell[6][kind][0] += 1
            cell[6][kind][1] += change
    return [(stock, column, *(values[:6]), [n for kind in marked for n in values[6][kind]])
            for (stock, column), values in sorted(found.items())]


def got(cells: list[queries.Cell]) -> list:
    return [tuple(cell) for cell in cells]


@pytest.fixture
def random_history(database_url):
    """Two stock rows of one variation with random bookings and reads over 30 days ending an hour ago, some at
    the same moment, some exactly on a column's start."""
    sessions = session_factory(database_url)
    rng = random.Random(18)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    since, until = now - timedelta(days=30), now
    width = column_ms((until - since).total_seconds(), 223)
    with sessions() as session:
        ids = [ensure_marketplace(session, code, code) for code in ("backmarket", "refurbed")]
        variation = session.execute(text("INSERT INTO variations (sku, title, total_stock) VALUES ('R-1', 'R', 0) "
                                         "RETURNING id")).scalar_one()
        stocks = [session.execute(text("INSERT INTO marketplace_stock (variation_id, marketplace_id, listed) "
                                       "VALUES (:v, :m, 0) RETURNING id"), {"v": variation, "m": m}).scalar_one()
                  for m in ids]
        moments = [since - timedelta(hours=6) + timedelta(seconds=rng.randrange(0, 31 * 86400)) for _ in range(1500)]
        start = _column(since, width) + 5
        moments += [EPOCH + timedelta(milliseconds=(start + k) * width) for k in range(0, 150, 7)]  # on a start
        moments += moments[:40]  # ties
        for n, at in enumerate(moments):
            stock = stocks[n % 2]
            if n % 3:
                kind = rng.choice(("order_created", "topup", "manual", "sync"))
                change = rng.randint(-3, 3)
                session.execute(text(
                    "INSERT INTO stock_ledger (stock_id, variation_id, marketplace_id, quantity_before, quantity_after, "
                    "change, change_type, idempotency_key, event_time, created_at) SELECT id, variation_id, "
                    "marketplace_id, 0, :q, :c, :k, :key, :t, :t FROM marketplace_stock WHERE id = :s"),
                    {"q": rng.randint(0, 30), "c": change, "k": kind, "key": f"r{n}", "t": at, "s": stock})
            else:
                read(session, stock, at, rng.randint(0, 30))
        session.commit()
    return sessions, variation, stocks, since, until, width


def read(session, stock: int, at: datetime, quantity: int) -> None:
    session.execute(text(
        "INSERT INTO listing_reads (stock_id, variation_id, marketplace_id, quantity, read_at, source) "
        "SELECT id, variation_id, marketplace_id, :q, :t, 'page' FROM marketplace_stock WHERE id = :s"),
        {"q": quantity, "t": at, "s": stock})


def raw(session, source: str, stocks: list[int]) -> list[tuple]:
    if source == "ledger":
        return [tuple(r) for r in session.execute(text(
            "SELECT id, stock_id, created_at, quantity_after, change_type, change FROM stock_ledger "
            "WHERE stock_id = ANY(:s)"), {"s": stocks})]
    return [tuple(r) for r in session.execute(text(
        "SELECT id, stock_id, read_at, quantity, NULL, 0 FROM listing_reads WHERE stock_id = ANY(:s)"), {"s": stocks})]


def stored(session, source: str) -> int:
    return session.execute(text("SELECT count(*) FROM chart_cells WHERE source = :s"), {"s": source}).scalar_one()


def current(session, source: str, stocks: list[int], width: int, since: datetime, until: datetime, kept: range):
    """The window's cells from the stored kept columns and the rows of its ends (None: the stored ones not current)."""
    found = queries.window_cells(session, stocks, width_ms=width, since=since, until=until, kept=kept, marked=MARKED)
    if found.stale[source] is not None:
        return None
    return got(sorted(found.kept[source] + found.ends[source], key=lambda cell: (cell.stock_id, cell.cell)))


@pytest.mark.parametrize("source", ["ledger", "read"])
def test_columns_from_stored_cells_are_what_the_rows_say(random_history, source):
    sessions, _, stocks, since, until, width = random_history
    marked = MARKED if source == "ledger" else ()
    with sessions() as session:
        def draw():
            return got(timeline.chart_cells(session, stocks, since=since, until=until, width_ms=width,
                                            marked=MARKED)[source])

        def truth():
            return expected(source, raw(session, source, stocks), width, since, until, marked)

        assert stored(session, source) == 0
        assert draw() == truth()  # from the rows, then stored behind the answer
        timeline.settle_rollups()
        assert stored(session, source) > 100
        kept = settled_columns(since, until, datetime.now(timezone.utc) - timeline.SETTLE, width)
        assert current(session, source, stocks, width, since, until, kept) == truth()
        assert draw() == truth()  # from the stored cells and the window's ends
        if source == "read":  # a read written late into a stored column, one pruned: both seen
            read(session, stocks[0], since + timedelta(days=10), 99)
            session.commit()
            assert current(session, source, stocks, width, since, until, kept) is None
            assert draw() == truth()
            assert 99 in [c[5] for c in draw()]
            session.execute(text("DELETE FROM listing_reads WHERE id = (SELECT min(id) FROM listing_reads "
                                 "WHERE read_at > :t)"), {"t": since + timedelta(days=2)})
        else:  # a booking made in a transaction that started before a stored column ended
            session.execute(text(
                "INSERT INTO stock_ledger (stock_id, variation_id, marketplace_id, quantity_before, quantity_after, "
                "change, change_type, idempotency_key, event_time, created_at) SELECT id, variation_id, "
                "marketplace_id, 0, 77, 1, 'topup', 'late', :t, :t FROM marketplace_stock WHERE id = :s"),
                {"t": since + timedelta(days=10), "s": stocks[1]})
            session.commit()
            # Only the late booking's column is read from the rows again (and stored again), not the window.
            late = _column(since + timedelta(days=10), width)
            assert queries.window_cells(session, stocks, width_ms=width, since=since, until=until, kept=kept,
                                        marked=MARKED).stale[source] == range(late, late + 1)
        session.commit()
        assert current(session, source, stocks, width, since, until, kept) is None
        assert draw() == truth()  # from the rows, stored again behind the answer
        timeline.settle_rollups()
        assert current(session, source, stocks, width, since, until, kept) == truth()
        assert draw() == truth()


def test_the_chart_from_stored_columns_is_the_chart_from_the_rows(random_history):
    sessions, variation, stocks, since, until, width = random_history
    with sessions() as session:
        for as_of in (until, until - timedelta(days=3, minutes=17)):  # a fixed moment: the same window twice
            first = timeline.timeline(session, variation, "R-1", as_of=as_of, since=since)
            timeline.settle_rollups()
            assert stored(session, "ledger") and stored(session, "read")
            timeline._charts.clear()
            again = timeline.timeline(session, variation, "R-1", as_of=as_of, since=since)
            assert again.chart == first.chart
            session.execute(text("DELETE FROM chart_cells"))
            session.commit()


def test_a_roll_up_that_cannot_be_stored_is_logged_and_drawn_from_the_rows_again(random_history, monkeypatch,
                                                                                 caplog):
    sessions, _, stocks, since, until, width = random_history

    def refused(*_, **__):
        raise RuntimeError("the database went away")

    with sessions() as session:
        truth = expected("read", raw(session, "read", stocks), width, since, until, ())
        monkeypatch.setattr(queries, "store_cells", refused)
        assert got(timeline.chart_cells(session, stocks, since=since, until=until, width_ms=width)["read"]) == truth
        timeline.settle_rollups()
        assert stored(session, "read") == 0
        assert "could not store the columns" in caplog.text and "RuntimeError" in caplog.text
        monkeypatch.undo()  # the next draw stores them: the failed one is no longer counted as waiting
        assert got(timeline.chart_cells(session, stocks, since=since, until=until, width_ms=width)["read"]) == truth
        timeline.settle_rollups()
        assert stored(session, "read") > 100
