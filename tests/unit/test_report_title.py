"""The morning report's title names the night as a reader does: the evening it began and the
morning it ended (a window of Sat 18:00 to Sun 09:00 is not "the night of Sunday")."""

from __future__ import annotations

from datetime import datetime, time, timezone
from zoneinfo import ZoneInfo

from ralph_monitor import queries
from ralph_monitor.alerts.report import _night_days


def night(now: datetime, zone: ZoneInfo, start: str, end: str) -> str:
    window = queries.night_window(now, zone, start=time.fromisoformat(start), end=time.fromisoformat(end))
    return _night_days(window, zone)


def test_the_night_is_named_by_its_evening_and_its_morning() -> None:
    zone = ZoneInfo("Europe/Berlin")
    assert night(datetime(2026, 11, 29, 8, 30, tzinfo=timezone.utc), zone, "18:00", "09:00") == "Sat 28 to Sun 29 Nov"
    assert night(datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc), zone, "18:00", "09:00") == "Mon 30 Nov to Tue 01 Dec"
    assert night(datetime(2026, 11, 29, 9, 0, tzinfo=timezone.utc), zone, "01:00", "07:00") == "Sun 29 Nov"
