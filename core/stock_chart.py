"""The geometry of a SKU's stock chart: listed stock per account over a window, its marks, its legend (pure).

The console draws it as server-rendered SVG from these numbers (no script, no external asset); a
series is a step line (the listed quantity holds until the next booking), the marketplace's reads
are dots beside it (a dashed step line when there are too many to tell apart), and orders,
top-ups and pushes are marks along the top.  However many rows a window holds, a line has at most
a few points per pixel column (the caller may give them already sliced per column).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

#: One colour per account, in account order (picked to stay apart for the common colour blindnesses).
PALETTE = ("#2756c5", "#d9480f", "#087f5b", "#862e9c", "#c2255c", "#5c940d", "#1098ad", "#e67700")

#: Marks along the top: kind -> (symbol shown in the legend, what it is).
MARKS = {"order": ("▼", "order"), "topup": ("▲", "top-up"), "manual": ("■", "manual change"),
         "push": ("◆", "push")}


@dataclass(frozen=True)
class Series:
    """One account's line: its colour, the SVG path, its read dots and its quantities at both ends."""

    account: str
    colour: str
    path: str
    reads: list[tuple[float, float, int]]
    first: int
    last: int
    changes: int
    #: The reads as a dashed step line, when there are too many for dots ("" otherwise).
    read_path: str = ""


@dataclass(frozen=True)
class Mark:
    """An order, top-up, manual change or push of one account, at ``x``."""

    x: float
    y: float
    kind: str
    symbol: str
    account: str
    colour: str
    label: str
    #: How many events of the kind the mark stands for (one pixel column's worth).
    count: int = 1


@dataclass(frozen=True)
class Chart:
    """Everything the SVG needs, in pixels; ``summary`` is the chart told in words (its ``desc``)."""

    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    series: list[Series]
    marks: list[Mark]
    x_ticks: list[tuple[float, str]]
    y_ticks: list[tuple[float, int]]
    summary: str
    mark_kinds: list[tuple[str, str]] = field(default_factory=list)


def _nice_step(span: int, ticks: int = 5) -> int:
    raw = max(1, span) / ticks
    power = 10 ** math.floor(math.log10(raw))
    return max(1, int(next(step * power for step in (1, 2, 5, 10) if step * power >= raw)))


def _step_path(points: list[tuple[float, float]]) -> str:
    """An SVG step path through ``points`` (x rising): horizontal, then vertical; one pixel column keeps
    its lowest, highest and last value only."""
    if not points:
        return ""
    parts = [f"M{points[0][0]:.1f},{points[0][1]:.1f}"]
    append = parts.append
    column = low = high = last = None  # the pixel column's; SVG y grows downwards: low is the largest y

    def flush() -> None:
        append(f"V{low:.1f}")
        if high != low:
            append(f"V{high:.1f}")
        if last != low and last != high:
            append(f"V{last:.1f}")

    for x, y in points[1:]:
        pixel = round(x)
        if pixel != column:
            if column is not None:
                flush()
            column, low, high = pixel, y, y
            append(f"H{x:.1f}")
        elif y > low:
            low = y
        elif y < high:
            high = y
        last = y
    if column is not None:
        flush()
    return "".join(parts)


#: Most read dots a chart draws; past it the reads are a dashed line.
MAX_DOTS = 150

#: Width of the plot area of the default chart (the column count a caller may slice its rows into).
PLOT_WIDTH = 960 - 52 - 16


#: Column widths a chart's grid may take, in ms: 2^(k/4) (each about 19% wider than the one before), from the
#: epoch, so a column of a width always spans the same time (what lets its roll-up be kept).
GRID_MS = tuple(sorted({round(2 ** (k / 4)) for k in range(0, 164)}))
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def column_ms(span_s: float, columns: int) -> int:
    """The grid for about ``columns`` columns over ``span_s`` seconds: the narrowest width of :data:`GRID_MS` at
    least ``span_s / columns`` (so 84% to 100% of ``columns`` columns, one or two more where the window's
    ends cut one)."""
    wanted = span_s * 1000 / max(columns, 1)
    return next((width for width in GRID_MS if width >= wanted), GRID_MS[-1])


def settled_columns(since: datetime, until: datetime, settled_before: datetime, width_ms: int) -> range:
    """The columns of the ``width_ms`` grid that lie wholly in ``[since, until]`` and ended by ``settled_before``
    (their rows are no longer expected to change: the ones a chart may keep rolled up)."""
    width_us = width_ms * 1000
    first = -(-_micros(since) // width_us)
    stop = _micros(min(until, settled_before)) // width_us
    return range(first, max(first, stop))


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def build_chart(start: datetime, end: datetime, begin: dict[str, int], changes: dict[str, list[tuple[datetime, int]]],
                reads: dict[str, list[tuple[datetime, int]]], marks: list[tuple[datetime, str, str, str, int]], *,
                read_begin: dict[str, int] | None = None, changes_counted: dict[str, int] | None = None,
                width: int = 960, height: int = 280) -> Chart:
    """The chart of ``[start, end]``.

    ``begin``: each account's listed quantity at ``start``; ``changes``: its bookings after (time,
    quantity after), in time order; ``reads``: what the marketplace's reads said (time, quantity),
    ``read_begin`` the last read before ``start``; ``marks``: (time, account, kind of :data:`MARKS`,
    label, how many events it stands for).  ``changes_counted``: how many bookings each account's points stand for (default: one each).
    """
    left, right, top, bottom = 52, 16, 26, 30
    plot_width, plot_height = width - left - right, height - top - bottom
    span_s = max((end - start).total_seconds(), 1.0)
    accounts = sorted(set(begin) | set(changes) | set(reads))
    read_begin = read_begin or {}
    values = [0, *begin.values(), *(q for rows in changes.values() for _, q in rows),
              *(q for rows in reads.values() for _, q in rows), *read_begin.values()]
    dots = sum(len(rows) for rows in reads.values()) <= MAX_DOTS
    low, high = min(values), max(max(values), 1)
    step = _nice_step(high - low)
    low, high = math.floor(low / step) * step, math.ceil(high / step) * step
    if high == low:
        high = low + step

    start_s, x_scale, y_scale = start.timestamp(), plot_width / span_s, plot_height / (high - low)

    def x_of(moment: datetime) -> float:
        return left + min(max((moment.timestamp() - start_s) * x_scale, 0.0), plot_width)

    def y_of(quantity: int) -> float:
        return top + (high - quantity) * y_scale

    def placed_points(rows: list[tuple[datetime, int]]) -> list[tuple[float, float]]:
        # A chart places a few thousand points, often several at one time (a column's low, high, last): each
        # time is placed once.
        placed, moment, x = [], None, 0.0
        for t, q in rows:
            if t is not moment:
                moment, x = t, left + min(max((t.timestamp() - start_s) * x_scale, 0.0), plot_width)
            placed.append((x, top + (high - q) * y_scale))
        return placed

    series = []
    for index, account in enumerate(accounts):
        first = begin.get(account, 0)
        rows = changes.get(account, [])
        points = [(x_of(start), y_of(first))] + placed_points(rows)
        last = rows[-1][1] if rows else first
        points.append((x_of(end), y_of(last)))
        said = reads.get(account, [])
        placed_dots, read_path = {}, ""
        if dots:
            for moment, quantity in said:
                placed_dots[(round(x_of(moment)), quantity)] = (round(x_of(moment), 1), round(y_of(quantity), 1),
                                                                quantity)
        elif said:
            start_read = read_begin.get(account)
            read_points = ([(x_of(start), y_of(start_read))] if start_read is not None else []) + placed_points(said)
            read_points.append((x_of(end), read_points[-1][1]))
            read_path = _step_path(read_points)
        counted = (changes_counted or {}).get(account, len(rows))
        series.append(Series(account, PALETTE[index % len(PALETTE)], _step_path(points), list(placed_dots.values()),
                             first, last, counted, read_path))
    colour = {s.account: s.colour for s in series}
    placed, shown = [], []
    for moment, account, kind, label, count in marks:
        if kind not in MARKS or account not in colour:
            continue
        placed.append(Mark(round(x_of(moment), 1), top - 8, kind, MARKS[kind][0], account, colour[account], label,
                           count))
        if kind not in shown:
            shown.append(kind)
    time_format = "%H:%M:%S" if span_s < 3600 else "%m-%d %H:%M" if span_s < 4 * 86400 else "%Y-%m-%d"
    x_ticks = [(round(left + plot_width * i / 4, 1), (start + (end - start) * i / 4).strftime(time_format)) for i in range(5)]
    y_ticks = [(round(y_of(q), 1), q) for q in range(int(low), int(high) + 1, step)]
    told = "; ".join(f"{s.account} {s.first} to {s.last} ({s.changes} change{'s' * (s.changes != 1)})"
                     for s in series) or "no stock rows"
    counts = {kind: sum(m.count for m in placed if m.kind == kind) for kind in shown}
    marked = ", ".join(f"{n} {MARKS[kind][1]}{'s' * (n != 1)}" for kind, n in counts.items())
    summary = (f"Listed stock per account from {start.strftime('%Y-%m-%d %H:%M')} to {end.strftime('%Y-%m-%d %H:%M')}"
               f" UTC: {told}." + (f" Marked: {marked}." if marked else ""))
    return Chart(width, height, left, top, plot_width, plot_height, series, placed, x_ticks, y_ticks, summary,
                 [(MARKS[kind][0], MARKS[kind][1]) for kind in shown])
