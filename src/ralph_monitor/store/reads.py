"""Reads: the synchronous, read-only connection of the CLI and the site renderer (ReadStore)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ralph_monitor import resources
from ralph_monitor.config import Settings
from ralph_monitor.errors import StoreError, StoreUnavailable
from ralph_monitor.store.connect import conninfo, describe_error

STREAM_BATCH_ROWS = 2000
"""Rows fetched per round trip when streaming an export."""


class ReadStore:
    """A synchronous connection for the CLI and the site renderer: runs named queries."""

    def __init__(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        self._conn = conn

    def fetch(self, name: str, params: dict[str, Any] | Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """All rows of named query `name` as dicts."""
        try:
            return self._conn.execute(resources.query(name), params).fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"query {name} failed: {describe_error(exc)}") from exc

    def stream(self, name: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Rows of named query `name`, fetched through a server-side cursor (constant memory)."""
        try:
            with self._conn.transaction(), self._conn.cursor(name=f"stream_{name}") as cur:
                cur.itersize = STREAM_BATCH_ROWS
                cur.execute(resources.query(name), params)
                yield from cur
        except psycopg.Error as exc:
            raise StoreError(f"query {name} failed: {describe_error(exc)}") from exc


@contextmanager
def open_read_store(settings: Settings, *, dsn: str | None = None) -> Iterator[ReadStore]:
    """A read-only session on the database; the error names the DSN setting to fix."""
    try:
        conn = psycopg.connect(conninfo(settings, dsn=dsn), row_factory=dict_row, autocommit=True)
    except psycopg.Error as exc:
        raise StoreUnavailable(
            f"cannot connect to PostgreSQL ({describe_error(exc)}); check [database] dsn in the config "
            "or that the daemon (and its embedded cluster) is running") from exc
    with conn:
        conn.execute(resources.query("read_only_session"))
        yield ReadStore(conn)
