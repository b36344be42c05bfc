"""The store: the only package that talks to PostgreSQL, and the only one that imports psycopg.

Why one room: every connection the monitor opens, and what it may do there, is in these few
files; psycopg's exceptions are turned into `StoreUnavailable` (the database is away: spool,
retry) or `StoreError` (it said no) here, so no caller handles driver errors; and the rest
of the package, the agent side above all, never pays for importing the driver.
`tests/unit/test_psycopg_imports.py` fails on an import of psycopg anywhere else in src/.

One module per connection role, each on a connection of its own:
- `connect`: connection strings, DSN helpers, migrations, creating the database;
- `events`: the daemon's writer (group commit: COPY, one-statement batches, row-by-row retry);
- `projection`: the projector's (dirty sessions and buckets, projection failures);
- `reads`: the CLI's and the site renderer's, read-only (named queries);
- `maintenance`: backups' snapshots, row counts and retention;
- `facts`: what `ralph-monitor doctor` learns from the database;
- `alerts`: the alert service's (rules evaluated with their outbox rows in one transaction, leases).

The names below are the store's public face: import them from `ralph_monitor.store`.
"""

from ralph_monitor.store.alerts import AlertStore
from ralph_monitor.store.connect import conninfo, describe_dsn, dsn_uses_tcp, ensure_database, migrate, tool_conninfo
from ralph_monitor.store.events import (
    DUPLICATE,
    SMALL_BATCH_EVENTS,
    STORED,
    EventStore,
    Refused,
    prepare_database,
)
from ralph_monitor.store.facts import DatabaseFacts, database_facts
from ralph_monitor.store.maintenance import (
    LockBusy,
    MaintenanceSession,
    database_objects,
    dump_snapshot,
    open_maintenance,
    table_counts,
)
from ralph_monitor.store.projection import ProjectionStore
from ralph_monitor.store.reads import Plan, ReadSource, ReadStore, gather, open_read_store

__all__ = [
    "AlertStore", "DUPLICATE", "SMALL_BATCH_EVENTS", "STORED", "DatabaseFacts", "EventStore", "LockBusy",
    "MaintenanceSession", "Plan", "ProjectionStore", "ReadSource", "ReadStore", "Refused", "conninfo", "database_facts",
    "database_objects", "describe_dsn", "dsn_uses_tcp", "dump_snapshot", "ensure_database", "gather", "migrate",
    "open_maintenance", "open_read_store", "prepare_database", "table_counts", "tool_conninfo",
]
