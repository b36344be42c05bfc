"""psycopg is imported only inside `ralph_monitor/store/` (see its docstring): the rule is
checked on the source, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import ralph_monitor

PACKAGE = Path(ralph_monitor.__file__).parent


def psycopg_imports_outside_store(package: Path) -> list[str]:
    """`path:line` of every `import psycopg…` / `from psycopg… import` outside package/store/."""
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if relative.parts[0] == "store":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            if any(m.partition(".")[0] in ("psycopg", "psycopg_pool") for m in modules):
                found.append(f"{relative}:{node.lineno}")
    return found


def test_psycopg_is_imported_only_in_the_store() -> None:
    assert psycopg_imports_outside_store(PACKAGE) == []


def test_the_check_finds_imports_outside_the_store(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "events.py").write_text("import psycopg\n")
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "hook.py").write_text("def f():\n    from psycopg.rows import dict_row\n")
    (tmp_path / "daemon.py").write_text("import os, psycopg_pool\n")
    (tmp_path / "site.py").write_text("from ralph_monitor.store import ReadStore\n")
    assert psycopg_imports_outside_store(tmp_path) == ["agent/hook.py:2", "daemon.py:1"]
