"""Connection strings, DSN helpers and migrations: what every connection of the store shares.

Each role (events, projection, reads, maintenance, facts) opens its own connection from
`conninfo` or `connect_plain`; messages name a database with `describe_dsn`, never its password.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import args_row

from ralph_monitor import resources
from ralph_monitor.config import Settings, read_password
from ralph_monitor.errors import StoreError, StoreUnavailable

APPLICATION_NAME = "ralph-monitor"

MAINTENANCE_APPLICATION_NAME = "ralph-monitor maintenance"


def conninfo(settings: Settings, *, dsn: str | None = None, dbname: str | None = None) -> str:
    """The libpq connection string: configured DSN (or `dsn`), plus password file and timeout."""
    extra: dict[str, Any] = {
        "connect_timeout": max(1, round(settings.database_connect_timeout_s)),
        "application_name": APPLICATION_NAME,
    }
    password = read_password(settings)
    if password is not None:
        extra["password"] = password
    if dbname is not None:
        extra["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(dsn if dsn is not None else settings.database_dsn, **extra)


def describe_error(exc: psycopg.Error) -> str:
    """The first line of a psycopg error, for messages (its class name if it has no text)."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


NamedRequest = tuple[str, "dict[str, Any] | None"] | tuple[str, "dict[str, Any] | None", "Callable[..., Any]"]
"""A named query (sql/queries.sql), its parameters and, optionally, what its rows are made
into: `row(*columns)` (a class whose fields are the query's columns, in order: no dict per row,
for the hot reads); else the connection's rows."""


def fetch_pipelined(conn: psycopg.Connection[Any], requests: Sequence[NamedRequest]) -> list[list[Any]]:
    """The rows of several independent named queries, sent in one pipeline: one round trip
    instead of one per query (a single query goes without one: entering and leaving pipeline
    mode costs more than it saves then). psycopg errors propagate (the caller names its role)."""
    if len(requests) == 1:
        return [_cursor(conn, requests[0]).execute(resources.query(requests[0][0]), requests[0][1]).fetchall()]
    with conn.pipeline():
        cursors = [_cursor(conn, request).execute(resources.query(request[0]), request[1]) for request in requests]
    return [cur.fetchall() for cur in cursors]


def _cursor(conn: psycopg.Connection[Any], request: NamedRequest) -> psycopg.Cursor[Any]:
    return conn.cursor(row_factory=args_row(request[2])) if len(request) > 2 else conn.cursor()


def maintenance_conninfo(settings: Settings, dsn: str) -> str:
    """`conninfo` under the maintenance application name (visible in pg_stat_activity)."""
    return psycopg.conninfo.make_conninfo(conninfo(settings, dsn=dsn), application_name=MAINTENANCE_APPLICATION_NAME)


def _plain_conninfo(dsn: str, timeout_s: float) -> str:
    return psycopg.conninfo.make_conninfo(
        dsn, connect_timeout=max(1, round(timeout_s)), application_name=MAINTENANCE_APPLICATION_NAME)


def tool_conninfo(settings: Settings, dsn: str, *, configured: bool = True) -> tuple[str, dict[str, str]]:
    """A connection string for pg_dump/pg_restore without any password in it (command lines
    are visible to every local user), and the environment that carries the password instead.

    `configured`: `dsn` is the configured database, so [database] password_file applies."""
    text = conninfo(settings, dsn=dsn) if configured else _plain_conninfo(dsn, settings.database_connect_timeout_s)
    params = psycopg.conninfo.conninfo_to_dict(text)
    password = params.pop("password", None)
    env = {"PGPASSWORD": str(password)} if password else {}
    return psycopg.conninfo.make_conninfo("", **params), env


def describe_dsn(dsn: str) -> str:
    """`dbname on host` for messages and events: never the password."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(unparsable DSN)"
    where = params.get("host") or "the default socket"
    user = f" as {params['user']}" if params.get("user") else ""
    return f"database {params.get('dbname', '(default)')} on {where}{user}"


def dsn_uses_tcp(dsn: str) -> bool:
    """Whether libpq would reach this DSN over TCP (a host name or address, not a socket directory)."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return False
    if params.get("hostaddr"):
        return True
    hosts = str(params.get("host") or "").split(",")
    return any(h and not h.startswith(("/", "@")) for h in hosts)


def connect_plain(dsn: str, settings: Settings, *, configured: bool) -> psycopg.Connection[Any]:
    """A synchronous autocommit connection for maintenance and doctor. `configured`: `dsn` is the
    configured database ([database] password_file applies), else any DSN as given."""
    text = (maintenance_conninfo(settings, dsn) if configured
            else _plain_conninfo(dsn, settings.database_connect_timeout_s))
    try:
        return psycopg.connect(text, autocommit=True)
    except psycopg.Error as exc:
        raise StoreUnavailable(f"cannot connect to {describe_dsn(dsn)}: {describe_error(exc)}") from exc


async def apply_migrations(conn: psycopg.AsyncConnection[Any]) -> list[int]:
    """Apply the migrations this database lacks, under a lock (several daemons may start at once)."""
    applied_now = []
    async with conn.transaction():
        await conn.execute(resources.query("migrations_lock"))
        await conn.execute(resources.query("migrations_table"))
        cur = await conn.execute(resources.query("applied_migrations"))
        done = {row[0] for row in await cur.fetchall()}
        for migration in resources.migrations():
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(resources.query("record_migration"),
                               {"version": migration.version, "name": migration.name})
            applied_now.append(migration.version)
    return applied_now


async def migrate(dsn: str) -> list[int]:
    """Bring the schema of the database at `dsn` up to date; the versions applied now."""
    try:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            return await apply_migrations(conn)
    except psycopg.Error as exc:
        raise StoreError(f"migration failed: {describe_error(exc)}") from exc


def ensure_database(admin_dsn: str, name: str) -> bool:
    """Create database `name` through a superuser connection if it does not exist yet;
    whether it was created now."""
    try:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            if conn.execute(resources.query("database_exists"), {"name": name}).fetchone() is not None:
                return False
            conn.execute(sql.SQL(resources.query("create_database")).format(database=sql.Identifier(name)))
            return True
    except psycopg.Error as exc:
        raise StoreError(f"cannot create database {name!r}: {describe_error(exc)}") from exc
