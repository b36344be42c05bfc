"""Migrations from an empty database produce exactly the committed schema (sql/schema.sql),
and are applied once, recorded, and safe to run again or concurrently."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

from ralph_monitor import resources
from ralph_monitor.cluster import find_bindir
from ralph_monitor.config import Settings
from ralph_monitor.store import EventStore, migrate
from tests.conftest import create_database, query

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"


def dump_schema(dsn: str) -> str:
    """pg_dump --schema-only, without comments, SET lines and per-run tokens."""
    out = subprocess.run([str(find_bindir() / "pg_dump"), "--schema-only", "--no-owner", "--no-privileges", dsn],
                         capture_output=True, text=True, check=True).stdout
    kept = [line for line in out.splitlines()
            if line.strip() and not line.startswith(("--", "SET ", "SELECT pg_catalog.set_config", "\\"))]
    return re.sub(r"\n{2,}", "\n", "\n".join(kept)) + "\n"


def test_migrations_from_empty_equal_committed_schema(pg_cluster) -> None:
    dsn = create_database(pg_cluster, "migrate_empty")
    assert asyncio.run(migrate(dsn)) == [m.version for m in resources.migrations()]
    actual = dump_schema(dsn)
    schema_file = ROOT / "sql" / "schema.sql"
    expected = schema_file.read_text() if schema_file.exists() else ""
    if actual != expected:
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "schema.sql").write_text(actual)
    assert actual == expected, ("schema from migrations differs from sql/schema.sql; if the change is "
                                "intended: cp test-artifacts/schema.sql sql/schema.sql")


def test_migrations_are_recorded_and_idempotent(db_dsn: str) -> None:
    assert asyncio.run(migrate(db_dsn)) == []
    rows = query(db_dsn, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in resources.migrations()]


def test_concurrent_daemons_migrate_an_empty_database_once(pg_cluster) -> None:
    dsn = create_database(pg_cluster, "migrate_race")

    async def race() -> None:
        stores = [EventStore(Settings(), dsn=dsn) for _ in range(4)]
        await asyncio.gather(*(s.connect() for s in stores))
        await asyncio.gather(*(s.close() for s in stores))

    asyncio.run(race())
    assert len(query(dsn, "SELECT * FROM schema_migrations")) == len(resources.migrations())
