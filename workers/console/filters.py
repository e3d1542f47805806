"""Jinja2 filters of the console's templates: times, ages, durations (output is escaped as any value)."""
from __future__ import annotations

import json
from datetime import datetime, timezone

from pipelines.progress import format_duration


def when(moment: datetime | None) -> str:
    """``2026-11-24 12:00:05`` in UTC; ``-`` for none."""
    if moment is None:
        return "-"
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def ago(moment: datetime | None) -> str:
    """How long ago: ``42s``, ``5m``, ``3h``, ``2d``; ``-`` for none."""
    if moment is None:
        return "-"
    return age((datetime.now(timezone.utc) - moment).total_seconds())


def age(seconds: float | None) -> str:
    """A duration in the largest unit that fits: ``42s``, ``5m``, ``3h``, ``2d``."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def signed(value: int) -> str:
    """``+3``, ``-2``, ``0``."""
    return f"{value:+d}" if value else "0"


def to_json(value) -> str:
    """Arguments as JSON text (escaped by the template like any text)."""
    return json.dumps(value, default=str, ensure_ascii=False)


FILTERS = {"when": when, "ago": ago, "age": age, "duration": format_duration, "signed": signed, "json": to_json}
