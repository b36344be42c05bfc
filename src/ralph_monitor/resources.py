"""Locate and load the files shipped beside the code: `sql/` and `site_templates/`.

In a wheel they sit inside the package (see pyproject's force-include); in a source
checkout (editable install, tests) they sit at the top of the repository.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_MIGRATION_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_QUERY_HEADER = re.compile(r"^-- name: ([a-z0-9_]+)\s*$", re.MULTILINE)


def resource_dir(name: str) -> Path:
    """The directory `name` ("sql", "site_templates") inside the package or the checkout."""
    for base in (_PACKAGE_DIR, _PACKAGE_DIR.parent.parent):
        candidate = base / name
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"{name}/ not found beside {_PACKAGE_DIR}; the installation is incomplete")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """All numbered migrations in order. Versions must be unique and contiguous from 1."""
    found = []
    for path in sorted((resource_dir("sql") / "migrations").glob("*.sql")):
        match = _MIGRATION_NAME.fullmatch(path.name)
        if match is None:
            raise ValueError(f"migration file {path} must be named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"migrations in {resource_dir('sql') / 'migrations'} are not numbered 1..N: {versions}")
    return tuple(found)


@functools.cache
def queries() -> dict[str, str]:
    """Named queries from sql/queries.sql, keyed by their `-- name:` header."""
    text = (resource_dir("sql") / "queries.sql").read_text(encoding="utf-8")
    parts = _QUERY_HEADER.split(text)
    named: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        if name in named:
            raise ValueError(f"query {name!r} is defined twice in sql/queries.sql")
        named[name] = body.strip().rstrip(";")
    return named


def query(name: str) -> str:
    """The SQL text of one named query."""
    try:
        return queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/queries.sql") from None


@functools.cache
def psql_script(name: str) -> str:
    """The text of `sql/<name>.sql`, a script for psql (it may use psql variables and
    meta-commands, so it is not a named query)."""
    return (resource_dir("sql") / f"{name}.sql").read_text(encoding="utf-8")
