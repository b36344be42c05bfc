"""Text formatting for people: aligned tables, relative times, money, durations."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any


def relative_time(moment: datetime | None, now: datetime | None = None) -> str:
    """`3 min ago` style."""
    if moment is None:
        return "-"
    seconds = ((now or datetime.now(timezone.utc)) - moment).total_seconds()
    suffix = "ago" if seconds >= 0 else "from now"
    seconds = abs(seconds)
    for limit, unit, size in ((60, "s", 1), (3600, "min", 60), (86400, "h", 3600), (float("inf"), "d", 86400)):
        if seconds < limit:
            return f"{int(seconds // size)} {unit} {suffix}"
    raise AssertionError("unreachable")


def duration(seconds: float | None) -> str:
    """`1h 02m`, `12m 03s`, `42s`."""
    if seconds is None:
        return "-"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def money(amount: Decimal | float | None) -> str:
    return "-" if amount is None else f"${amount:,.2f}"


def percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.0f}%"


def shorten(text: str | None, width: int) -> str:
    """One line, at most `width` characters."""
    if not text:
        return ""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def local_time(moment: datetime | None, zone: Any) -> str:
    return "-" if moment is None else moment.astimezone(zone).strftime("%Y-%m-%d %H:%M")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned to their widest cell."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.extend("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
    return "\n".join(lines)


def json_default(value: Any) -> Any:
    """JSON encoding for what query results hold."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def to_json(value: Any) -> str:
    return json.dumps(asdict(value) if is_dataclass(value) and not isinstance(value, type) else value,
                      default=json_default, ensure_ascii=False)
