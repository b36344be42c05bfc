"""What `ralph-monitor doctor` learns from the database, on a connection of its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ralph_monitor import resources
from ralph_monitor.config import Settings
from ralph_monitor.errors import StoreError
from ralph_monitor.store.connect import connect_plain, describe_dsn, describe_error

FAILURES_MIGRATION = 4
"""The migration that made projection_failures (doctor may look at an older database)."""


@dataclass(frozen=True)
class DatabaseFacts:
    """What `ralph-monitor doctor` learns from the database."""

    user: str
    superuser: bool
    database: str
    server_version: str
    server_version_num: int
    applied_migrations: list[int]
    events_table: bool
    can_insert_events: bool
    reader_roles: list[str]
    latest: dict[str, tuple[datetime, dict[str, Any]] | None]
    """Newest backup_completed / backup_failed / prune_completed / prune_failed event."""
    spool_backlog: dict[str, int]
    """Per daemon host, as last reported."""
    projection_failures: list[dict[str, Any]] = field(default_factory=list)
    """The oldest sessions whose projection fails (projection_failures)."""
    projection_failures_total: int = 0


def database_facts(settings: Settings, dsn: str) -> DatabaseFacts:
    """Identity, privileges, migrations and the monitor's own health rows. Raises
    StoreUnavailable when the database cannot be reached."""
    with connect_plain(dsn, settings, configured=True) as conn:
        conn.row_factory = dict_row  # type: ignore[assignment]
        try:
            ident = conn.execute(resources.query("doctor_identity")).fetchone()
            assert ident is not None
            applied: list[int] = []
            if ident["migrations_table"]:
                applied = [r["version"] for r in conn.execute(resources.query("applied_migrations")).fetchall()]
            readers: list[str] = []
            latest: dict[str, tuple[datetime, dict[str, Any]] | None] = {}
            backlog: dict[str, int] = {}
            if ident["events_table"]:
                readers = [r["rolname"] for r in conn.execute(resources.query("doctor_reader_roles")).fetchall()]
                for kind in ("backup_completed", "backup_failed", "prune_completed", "prune_failed"):
                    row = conn.execute(resources.query("latest_event_of_type"),
                                       {"event_type": kind, "since": None}).fetchone()
                    latest[kind] = (row["occurred_at"], row["data"] if isinstance(row["data"], dict) else {}) \
                        if row else None
                backlog = {r["host"]: r["spool_backlog"] for r in
                           conn.execute(resources.query("monitor_hosts")).fetchall()}
            failures: list[dict[str, Any]] = []
            failing = 0
            if ident["events_table"] and FAILURES_MIGRATION in applied:
                failures = conn.execute(resources.query("projection_failures"), {"limit": 1}).fetchall()
                failing = conn.execute(resources.query("projection_failure_count")).fetchone()["failing"]
        except psycopg.Error as exc:
            raise StoreError(f"cannot inspect {describe_dsn(dsn)}: {describe_error(exc)}") from exc
    return DatabaseFacts(
        user=ident["user"], superuser=ident["superuser"], database=ident["database"],
        server_version=ident["server_version"], server_version_num=ident["server_version_num"],
        applied_migrations=applied, events_table=ident["events_table"],
        can_insert_events=bool(ident["can_insert_events"]), reader_roles=readers, latest=latest,
        spool_backlog=backlog, projection_failures=failures, projection_failures_total=failing)
