"""The import rule of `ralph_monitor.agent` (see its docstring): each module, imported alone in
a fresh interpreter, loads only the standard library, the agent package and `errors`; and the
hook's own path, which Claude Code starts on every tool call, loads less still."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ralph_monitor.agent

AGENT_MODULES = sorted(
    "ralph_monitor.agent" if path.stem == "__init__" else f"ralph_monitor.agent.{path.stem}"
    for path in Path(ralph_monitor.agent.__file__).parent.glob("*.py"))
OWN_MODULES_ALLOWED = {"ralph_monitor", "ralph_monitor.errors"}


def modules_loaded_by(statement: str) -> set[str]:
    """The modules `statement` adds to sys.modules in a new interpreter (start-up's own excluded)."""
    code = f"import sys; before = set(sys.modules); {statement}; print(' '.join(sorted(set(sys.modules) - before)))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


def outside_the_rule(name: str) -> bool:
    if name.startswith("ralph_monitor"):
        return name not in OWN_MODULES_ALLOWED and not name.startswith("ralph_monitor.agent")
    return name.partition(".")[0] not in sys.stdlib_module_names


@pytest.mark.parametrize("module", AGENT_MODULES)
def test_agent_modules_import_only_the_standard_library_and_each_other(module: str) -> None:
    loaded = modules_loaded_by(f"import {module}")
    assert module in loaded
    assert sorted(filter(outside_the_rule, loaded)) == []


def test_the_hook_path_imports_nothing_heavy() -> None:
    """Claude Code starts the hook for every tool call: no database driver, no argparse, no
    full config module, no rest of the command line, and none of the slow standard modules."""
    loaded = modules_loaded_by("sys.argv = ['ralph-monitor', 'hook']; import ralph_monitor.launcher, ralph_monitor.agent.hook")
    assert "ralph_monitor.agent.hook" in loaded
    heavy = {"psycopg", "psycopg_pool", "argparse", "ralph_monitor.config", "ralph_monitor.cli", "ralph_monitor.store",
             "uuid", "dataclasses", "logging", "threading", "tomli_w", "zoneinfo", "subprocess"}
    assert not heavy & loaded


def test_what_claude_code_waits_for_imports_nothing_but_the_entry_point() -> None:
    """The parent process of a hook call (`agent.hook_start`) reads stdin and forks; everything
    else happens in the detached child."""
    loaded = modules_loaded_by("import ralph_monitor.launcher, ralph_monitor.agent.hook_start")
    own = {"ralph_monitor", "ralph_monitor.launcher", "ralph_monitor.agent", "ralph_monitor.agent.hook_start"}
    # Not even `__future__` or `collections.abc` for a type: each is a file to find and run.
    assert loaded == own


def test_the_guard_asks_with_built_in_modules_only() -> None:
    """`hook --guard` asks the daemon before Claude Code may go on (agent/guard_quick.py): no
    json, socket, tomllib (their `re`, `enum`, ... take ~40 ms on Debian's Python)."""
    loaded = modules_loaded_by("import ralph_monitor.launcher, ralph_monitor.agent.hook_start, "
                               "ralph_monitor.agent.guard_quick")
    own = {"ralph_monitor", "ralph_monitor.launcher", "ralph_monitor.agent", "ralph_monitor.agent.hook_start",
           "ralph_monitor.agent.guard_quick"}
    assert loaded - own <= {"_socket"}


def test_the_status_line_imports_nothing_heavy() -> None:
    """Claude Code runs the status line on every refresh: it prints before the rest loads."""
    loaded = modules_loaded_by("import ralph_monitor.launcher, ralph_monitor.agent.statusline")
    assert "ralph_monitor.agent.statusline" in loaded
    heavy = {"psycopg", "argparse", "ralph_monitor.config", "ralph_monitor.cli", "ralph_monitor.store",
             "ralph_monitor.agent.hook", "ralph_monitor.agent.client", "uuid", "logging", "subprocess", "socket"}
    assert not heavy & loaded
