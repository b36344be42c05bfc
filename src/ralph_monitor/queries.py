"""Typed read queries: what the CLI and the dashboard ask of the database.

Each function runs one named query from sql/queries.sql through a ReadStore and returns
plain dataclasses, so callers never see SQL or database rows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ralph_monitor.store import ReadStore


@dataclass(frozen=True)
class EventRow:
    id: int
    event_id: uuid.UUID
    event_type: str
    session_id: uuid.UUID | None
    spec_id: str | None
    occurred_at: datetime
    created_at: datetime
    host: str
    writer_uid: int | None
    writer_pid: int | None
    payload: dict[str, Any]

    @property
    def data(self) -> dict[str, Any]:
        data = self.payload.get("data")
        return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class RejectRow:
    received_at: datetime
    host: str
    writer_uid: int | None
    writer_pid: int | None
    reason: str
    detail: str
    line_bytes: int
    excerpt: str


@dataclass(frozen=True)
class HostHealth:
    host: str
    version: str
    started_at: datetime
    last_seen: datetime
    events_total: int
    rejects_total: int
    spool_backlog: int
    spooled_total: int
    last_spooled_at: datetime | None
    last_replayed_at: datetime | None
    ingest_rate_per_s: float


def recent_events(store: ReadStore, *, since: datetime | None = None, event_type: str | None = None,
                  session_id: uuid.UUID | None = None, spec_id: str | None = None,
                  limit: int = 100) -> list[EventRow]:
    """Newest first (by the agent's time), filtered by any of the arguments."""
    rows = store.fetch("recent_events", {"since": since, "event_type": event_type,
                                         "session_id": session_id, "spec_id": spec_id, "limit": limit})
    return [EventRow(**row) for row in rows]


def recent_rejects(store: ReadStore, *, limit: int = 50) -> list[RejectRow]:
    """Refused lines, newest first."""
    return [RejectRow(**row) for row in store.fetch("recent_rejects", {"limit": limit})]


def monitor_hosts(store: ReadStore) -> list[HostHealth]:
    """One health row per daemon host writing to this database."""
    return [HostHealth(**row) for row in store.fetch("monitor_hosts")]
