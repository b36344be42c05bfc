"""`agent/fast_entry.py` run by path with `python -S`, as `ralph-monitor claude-settings` has
Claude Code run it: `hook` and `statusline` start without `site`, everything else gets it back.
(tests/integration/test_claude_settings.py runs it against a daemon.)"""

from __future__ import annotations

import subprocess
import sys

import ralph_monitor
from ralph_monitor.agent import fast_entry

ENTRY = fast_entry.__file__


def run_entry(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-S", ENTRY, *args], input=stdin, capture_output=True, timeout=60)


def test_the_statusline_runs_without_site() -> None:
    done = run_entry("statusline", stdin=b"{not json")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"ralph-monitor: no status input\n", b"")


def test_every_other_subcommand_gets_site_packages_back() -> None:
    """`--version` and `--help` go through `cli`, whose third-party packages (psycopg, tomli_w, ...)
    `python -S` alone does not find."""
    bare = subprocess.run([sys.executable, "-S", "-c", "import psycopg"], capture_output=True, timeout=60)
    assert bare.returncode != 0 and b"ModuleNotFoundError" in bare.stderr
    version = run_entry("--version")
    assert (version.returncode, version.stdout) == (0, f"ralph-monitor {ralph_monitor.__version__}\n".encode())
    help_text = run_entry("hook", "--help")
    assert help_text.returncode == 0 and b"usage: ralph-monitor hook" in help_text.stdout

