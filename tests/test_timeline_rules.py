"""The timeline's pure rules: merging sources in time order, "as of T", the orders behind order rows,
times given as text, and the chart's geometry."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from core.stock_chart import build_chart
from core.timeline import BadMoment, Entry, as_of, latest, merge, orders_of, parse_moment, window_start

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def ledger(minutes, account, after, change_type="sync", seq=0, **data) -> Entry:
    return Entry(at(minutes), "ledger", account, seq, {"after": after, "change_type": change_type, **data})


def test_merge_orders_every_source_by_time_then_kind_then_seq():
    ledger_rows = [ledger(5, "bm", 4, seq=2), ledger(1, "bm", 5, seq=1)]  # a source may come newest first
    reads = [Entry(at(1), "read", "bm", 7, {"quantity": 5}), Entry(at(3), "read", "rf", 8, {"quantity": 2})]
    orders = [Entry(at(5), "order", "bm", 2, {"order_id": "O-1"})]
    merged = list(merge(ledger_rows, reads, orders))
    assert [(e.at, e.kind, e.account) for e in merged] == [
        (at(1), "read", "bm"), (at(1), "ledger", "bm"), (at(3), "read", "rf"), (at(5), "order", "bm"),
        (at(5), "ledger", "bm")]
    assert list(merge()) == []


def test_latest_keeps_the_last_entries_in_order_and_says_so():
    entries = [ledger(n, "bm", n) for n in range(5)]
    assert latest(entries, 2) == (entries[3:], True)
    assert latest(entries, 5) == (entries, False)


def test_as_of_is_each_accounts_last_ledger_entry_at_or_before_the_moment():
    entries = list(merge([ledger(1, "bm", 5), ledger(2, "rf", 3), ledger(4, "bm", 2, "order_created"),
                          Entry(at(3), "read", "bm", 0, {"quantity": 9})]))
    assert as_of(entries, at(0)) == {}
    assert as_of(entries, at(0), {"bm": 1, "sh": 4}) == {"bm": 1, "sh": 4}
    assert as_of(entries, at(2)) == {"bm": 5, "rf": 3}  # the moment itself counts
    assert as_of(entries, at(3.5)) == {"bm": 5, "rf": 3}  # a read is not the ledger
    assert as_of(entries, at(9)) == {"bm": 2, "rf": 3}


def test_orders_behind_order_rows_one_per_account_and_order():
    rows = [ledger(3, "bm", 4, "order_created", seq=10, order_id="O-1", order_line_id="L-2", change=-1,
                   event_time=at(2)),
            ledger(3, "bm", 3, "order_created", seq=11, order_id="O-1", order_line_id="L-1", change=-1,
                   event_time=at(1)),
            ledger(4, "rf", 3, "order_created", seq=12, order_id="O-1", order_line_id="X", change=0,
                   event_time=at(4)),
            ledger(6, "bm", 4, "order_cancelled", seq=13, order_id="O-1", order_line_id="L-1", change=1,
                   event_time=at(6)),
            ledger(7, "bm", 9, "topup", seq=14, change=5, event_time=at(7))]
    orders = {(e.account, e.data["order_id"]): e for e in orders_of(rows)}
    assert set(orders) == {("bm", "O-1"), ("rf", "O-1")}
    bm = orders[("bm", "O-1")]
    assert (bm.at, bm.kind, bm.seq) == (at(1), "order", 10)
    assert bm.data == {"order_id": "O-1", "lines": ["L-1", "L-2"], "booked": -1, "cancelled": True}
    assert orders[("rf", "O-1")].data["booked"] == 0  # a page had counted it


@pytest.mark.parametrize("given, expected", [
    ("2026-12-07T18:00:00Z", datetime(2026, 12, 7, 18, tzinfo=timezone.utc)),
    ("2026-12-07T19:30+01:00", datetime(2026, 12, 7, 18, 30, tzinfo=timezone.utc)),
    ("2026-12-07T18:00", datetime(2026, 12, 7, 18, tzinfo=timezone.utc)),  # the console's form: UTC
    ("2026-12-07", datetime(2026, 12, 7, tzinfo=timezone.utc)),
    (" 2026-12-07 18:00:01.5 ", datetime(2026, 12, 7, 18, 0, 1, 500000, tzinfo=timezone.utc)),
])
def test_moments_read_as_iso_8601(given, expected):
    assert parse_moment(given) == expected


@pytest.mark.parametrize("given, says", [
    ("yesterday", "ISO 8601"), ("", "ISO 8601"), ("2026-13-01", "not a real time"), ("2026-02-30T10:00Z", "not a real"),
    ("1999-12-31T23:59Z", "on or after 2000-01-01"), ("2026-12-07T18:00:00Z" * 3, "ISO 8601"),
    ("2026-12-07T18:00:00+99:99", "not a real time"),
])
def test_bad_moments_are_refused_naming_the_parameter(given, says):
    with pytest.raises(BadMoment, match=says) as refused:
        parse_moment(given, "as_of")
    assert str(refused.value).startswith("as_of")


def test_window_starts_at_the_first_booking_when_that_is_later():
    first = at(-60)
    assert window_start(T0, first, 90) == first
    assert window_start(T0, T0 - timedelta(days=400), 90) == T0 - timedelta(days=90)
    assert window_start(T0, None, 90) == T0 - timedelta(days=90)
    assert window_start(T0, at(60), 90) == T0 - timedelta(days=90)  # booked after T: nothing to start from


def test_chart_lines_steps_marks_and_words():
    chart = build_chart(at(0), at(100), {"bm": 5, "rf": 0},
                        {"bm": [(at(25), 3), (at(75), 8)], "rf": [(at(50), 2)]},
                        {"bm": [(at(20), 3)]},
                        [(at(25), "bm", "order", "order O-1", 1), (at(75), "bm", "topup", "topup +5", 1),
                         (at(80), "zz", "order", "unknown account", 1), (at(80), "bm", "nonsense", "?", 1)],
                        width=452, height=156)
    left, top, plot_w, plot_h = chart.left, chart.top, chart.plot_width, chart.plot_height
    assert (plot_w, plot_h) == (452 - 52 - 16, 156 - 26 - 30)
    bm, rf = chart.series
    assert (bm.account, bm.first, bm.last, bm.changes) == ("bm", 5, 8, 2)
    # The y axis runs from 0 to 8 (a nice step of 2 over the values 0..8): 8 is at the top.
    y = {q: top + plot_h * (8 - q) / 8 for q in (5, 3, 8)}
    assert bm.path == (f"M{left:.1f},{y[5]:.1f}H{left + plot_w * .25:.1f}V{y[3]:.1f}"
                       f"H{left + plot_w * .75:.1f}V{y[8]:.1f}H{left + plot_w:.1f}V{y[8]:.1f}")
    assert bm.reads == [(left + plot_w * .2, y[3], 3)]
    assert [(m.kind, m.account, m.symbol) for m in chart.marks] == [("order", "bm", "▼"), ("topup", "bm", "▲")]
    assert chart.series[0].colour != chart.series[1].colour
    assert [q for _, q in chart.y_ticks] == [0, 2, 4, 6, 8]
    assert "bm 5 to 8 (2 changes)" in chart.summary and "rf 0 to 2 (1 change)" in chart.summary
    assert "Marked: 1 order, 1 top-up." in chart.summary
    assert [label for _, label in chart.x_ticks] == ["12-01 08:00", "12-01 08:25", "12-01 08:50", "12-01 09:15", "12-01 09:40"]


def test_chart_keeps_a_few_points_per_pixel_however_many_rows():
    rows = [(T0 + timedelta(seconds=n), n % 7) for n in range(10_000)]
    chart = build_chart(T0, rows[-1][0], {"bm": 0}, {"bm": rows}, {"bm": rows}, [], read_begin={"bm": 3},
                        width=468)
    assert chart.series[0].path.count("V") <= 3 * 400 + 2
    # Too many reads for dots: a dashed line from the read before the window, as thin.
    assert chart.series[0].reads == [] and chart.series[0].read_path.startswith(f"M52.0,")
    assert chart.series[0].read_path.count("V") <= 3 * 400 + 2


def test_marks_standing_for_several_events_count_them_in_the_words():
    chart = build_chart(at(0), at(10), {"bm": 5}, {}, {}, [(at(5), "bm", "order", "3 orders", 3)])
    assert chart.marks[0].count == 3 and "Marked: 3 orders." in chart.summary
