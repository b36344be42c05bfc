"""sql/queries.sql holds no dead query and none that PostgreSQL would refuse: every named
query is called by name somewhere in src/, and parses, with its parameters, against the
migrated schema (so a renamed column or table fails here, not at 03:00 in the nightly prune).

Parsing is the extended protocol's Parse step (what PREPARE does, for any statement): a
SELECT, INSERT, UPDATE or DELETE is analysed against the catalog there; a utility statement
(COPY, DDL, SET) only has its syntax checked, PostgreSQL looks its names up when it runs."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest
from psycopg import pq, sql

from ralph_monitor import resources

SRC = Path(__file__).resolve().parents[2] / "src" / "ralph_monitor"
PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s|%%")
"""psycopg's placeholders (named or positional) and its escaped percent sign."""
TEMPLATE_FIELD = re.compile(r"\{([a-z_]+)\}")
"""An identifier the store fills in with psycopg.sql (a partition, a table, a database)."""
SAMPLE_IDENTIFIER = "events"
"""What a template's identifier becomes here: a table that exists in the migrated schema."""


def source_text() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in sorted(SRC.rglob("*.py")))


def server_text(query: str, conn: psycopg.Connection) -> str:
    """The query as the server receives it: a template with its identifiers filled in, or the
    placeholders numbered $1, $2, ... (a name used twice is one parameter)."""
    fields = TEMPLATE_FIELD.findall(query)
    if fields:
        return sql.SQL(query).format(**{f: sql.Identifier(SAMPLE_IDENTIFIER) for f in fields}).as_string(conn)
    numbers: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        if match[0] == "%%":
            return "%"
        key = match[1] if match[1] is not None else f"#{len(numbers)}"
        return f"${numbers.setdefault(key, len(numbers) + 1)}"

    return PLACEHOLDER.sub(number, query)


def test_every_named_query_has_a_caller() -> None:
    text = source_text()
    unused = [name for name in resources.queries() if f'"{name}"' not in text]
    assert not unused, f"named queries nobody calls by name in src/ (remove them or call them by name): {unused}"


def test_every_named_query_parses_against_the_migrated_schema(db_dsn: str) -> None:
    refused = {}
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for name, query in resources.queries().items():
            result = conn.pgconn.prepare(b"", server_text(query, conn).encode())
            if result.status != pq.ExecStatus.COMMAND_OK:
                refused[name] = (result.error_message or b"").decode(errors="replace").strip()
    assert not refused, "\n".join(f"{name}: {error}" for name, error in refused.items())


@pytest.mark.parametrize("query, expected", [
    ("SELECT %(a)s, %(b)s, %(a)s", "SELECT $1, $2, $1"),
    ("VALUES (%s, %s)", "VALUES ($1, $2)"),
    ("SELECT 'x%%' || %(p)s", "SELECT 'x%' || $1"),
    ("SELECT 1 WHERE 'a' ~ '^[0-9]{8}$'", "SELECT 1 WHERE 'a' ~ '^[0-9]{8}$'"),
])
def test_placeholders_become_server_parameters(query: str, expected: str) -> None:
    assert server_text(query, None) == expected  # type: ignore[arg-type]


def test_a_refused_query_is_reported(db_dsn: str) -> None:
    """The check above can fail: a query on a column the schema lacks does not parse."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        result = conn.pgconn.prepare(b"", server_text("SELECT no_such_column FROM events WHERE id = %(id)s",
                                                      conn).encode())
    assert result.status == pq.ExecStatus.FATAL_ERROR
    assert b"no_such_column" in (result.error_message or b"")
