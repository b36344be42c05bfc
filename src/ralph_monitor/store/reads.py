"""Reads: the synchronous, read-only connection of the CLI and the site renderer (ReadStore).

With `[database] read_dsn` (a streaming replica) reads go there; writes never do. A replica
that cannot be reached is not an outage: reads fall back to the primary, with a warning that
is logged here and carried by the store (`ReadStore.source()`), so the health panel and
`ralph-query status` show it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg.rows import args_row, dict_row
from psycopg.types.json import set_json_loads

from ralph_monitor import resources
from ralph_monitor.config import Settings
from ralph_monitor.errors import StoreError, StoreUnavailable
from ralph_monitor.store.connect import NamedRequest, conninfo, describe_dsn, describe_error, fetch_pipelined

T = TypeVar("T")

log = logging.getLogger(__name__)

STREAM_BATCH_ROWS = 2000
"""Rows fetched per round trip when streaming an export."""

Plan = Generator[Sequence[NamedRequest], list[list[Any]], T]
"""A read written as a generator (queries.py): it yields the named queries of its next round
trip, is sent their rows (a list per query, in order), and returns its result. `ReadStore.run`
runs one; `gather` joins several into one whose round trips carry the queries of them all."""


def gather(plans: Sequence[Plan[Any]]) -> Plan[list[Any]]:
    """Several plans as one, their results in order: each round trip sends the next queries of
    every plan still going (a plan of two round trips and one of three take three in all)."""
    results: list[Any] = [None] * len(plans)
    steps: dict[int, Sequence[NamedRequest]] = {}

    def advance(i: int, rows: list[list[Any]] | None) -> None:
        try:
            steps[i] = plans[i].send(rows)  # type: ignore[arg-type]  # None starts the generator
        except StopIteration as done:
            results[i] = done.value

    for i in range(len(plans)):
        advance(i, None)
    while steps:
        current = list(steps.items())
        steps.clear()
        rows = yield [request for _, requests in current for request in requests]
        at = 0
        for i, requests in current:
            advance(i, rows[at:at + len(requests)])
            at += len(requests)
    return results


@dataclass(frozen=True)
class ReadSource:
    """Where the reads of a ReadStore are answered."""

    database: str
    """`dbname on host` actually read from (never a password)."""
    replica_configured: bool
    """[database] read_dsn is set."""
    in_recovery: bool
    """The server read from is a standby."""
    lag_s: float | None
    """How far the standby's replay is behind: 0 when it has replayed all it received, else the
    age of the last transaction it replayed; None on a primary."""
    last_replay_at: datetime | None
    """Commit time (on the primary) of the last transaction the standby replayed."""
    fallback: str | None
    """Why reads went to the primary although a replica is configured; None when they did not."""


class ReadStore:
    """A synchronous connection for the CLI and the site renderer: runs named queries."""

    def __init__(self, conn: psycopg.Connection[dict[str, Any]], *, database: str = "",
                 replica_configured: bool = False, fallback: str | None = None) -> None:
        self._conn = conn
        self._database = database
        self._replica_configured = replica_configured
        self.fallback = fallback
        """Set when a configured replica could not be reached and this store reads the primary."""

    def source(self, row: dict[str, Any] | None = None) -> ReadSource:
        """Where these reads come from, with the standby's replay lag measured now (`row`: the
        read_source query's, when it was read in a batch)."""
        row = row or self.fetch("read_source")[0]
        return ReadSource(database=self._database, replica_configured=self._replica_configured,
                          in_recovery=row["in_recovery"], lag_s=row["lag_s"],
                          last_replay_at=row["last_replay_at"], fallback=self.fallback)

    def fetch(self, name: str, params: dict[str, Any] | Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """All rows of named query `name` as dicts."""
        with _failing_as(f"query {name}"):
            return self._conn.execute(resources.query(name), params).fetchall()

    def fetch_many(self, requests: Sequence[NamedRequest]) -> list[list[Any]]:
        """The rows of several independent named queries, in one round trip (the overview's
        status: nine queries in half the time)."""
        with _failing_as("queries " + ", ".join(dict.fromkeys(request[0] for request in requests))):
            return fetch_pipelined(self._conn, requests)

    def run(self, plan: Plan[T]) -> T:
        """The result of a plan (queries.py), one round trip per step that has queries."""
        rows: list[list[Any]] | None = None
        try:
            while True:
                requests = plan.send(rows)  # type: ignore[arg-type]  # None starts the generator
                rows = self.fetch_many(requests) if requests else []
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def fetch_as(self, name: str, params: dict[str, Any] | Sequence[Any] | None, row: Callable[..., T]) -> list[T]:
        """All rows of named query `name` as `row(*columns)` (a class whose fields are the query's
        columns, in order): no dict per row, for the hot reads."""
        with _failing_as(f"query {name}"), self._conn.cursor(row_factory=args_row(row)) as cur:
            return cur.execute(resources.query(name), params).fetchall()

    def stream(self, name: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Rows of named query `name`, fetched through a server-side cursor (constant memory)."""
        with _failing_as(f"query {name}"), self._conn.transaction(), \
                self._conn.cursor(name=f"stream_{name}") as cur:
            cur.itersize = STREAM_BATCH_ROWS
            cur.execute(resources.query(name), params)
            yield from cur


@contextmanager
def _failing_as(what: str) -> Iterator[None]:
    """A psycopg error inside as a StoreError naming `what` ("query <name>"), as every read maps it."""
    try:
        yield
    except psycopg.Error as exc:
        raise StoreError(f"{what} failed: {describe_error(exc)}") from exc


def _json_loads(data: bytes | str) -> Any:
    """Payloads as the reads show them: orjson (a page of events decodes in a third of the
    time); json for what orjson refuses (a number beyond a double, which jsonb keeps). An
    integer beyond 64 bits reads as a float: reads show it, nothing here counts with it."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _connect(settings: Settings, dsn: str | None) -> psycopg.Connection[dict[str, Any]]:
    conn = psycopg.connect(conninfo(settings, dsn=dsn), row_factory=dict_row, autocommit=True)
    set_json_loads(_json_loads, conn)
    try:
        conn.execute(resources.query("read_only_session"))
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def open_read_store(settings: Settings, *, dsn: str | None = None) -> Iterator[ReadStore]:
    """A read-only session: on [database] read_dsn when set (falling back to the primary, with a
    warning, when it cannot be reached), else on `dsn` (default [database] dsn), the primary.
    The error names the DSN setting to fix."""
    primary = dsn if dsn is not None else settings.database_dsn
    replica = settings.database_read_dsn
    conn = None
    fallback = None
    if replica:
        try:
            conn = _connect(settings, replica)
        except psycopg.Error as exc:
            fallback = (f"the read replica ({describe_dsn(replica)}) cannot be reached ({describe_error(exc)}); "
                        "reading from the primary; check [database] read_dsn")
            log.warning("%s", fallback)
    if conn is None:
        try:
            conn = _connect(settings, primary)
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL ({describe_error(exc)}); check [database] dsn in the config "
                "or that the daemon (and its embedded cluster) is running") from exc
    with conn:
        yield ReadStore(conn, database=describe_dsn(replica if fallback is None and replica else primary),
                        replica_configured=bool(replica), fallback=fallback)
