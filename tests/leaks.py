"""Tests leave nothing behind: every temporary file of a test run lives in one private
directory, and every process the run started carries a marker in its environment. At the end
of the run, `check_and_clean` reports (and removes) whatever is left of either, and the run
fails if anything was.

Why: a render child that outlives its daemon recreated `state/site/` after the test removed
it, and some 22 folders piled up in /tmp per run on the machines that run the suite.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

MARKER = "RALPH_MONITOR_TEST_RUN"
"""Environment variable every process of a test run inherits (value: the run's directory name)."""
KILL_WAIT_S = 10.0


def start_run() -> Path:
    """Make the run's private temporary directory, and point TMPDIR and the marker at it."""
    root = Path(tempfile.mkdtemp(prefix="rm-run-", dir="/tmp"))
    root.chmod(0o755)  # traversable by the `postgres` user that runs the clusters
    os.environ["TMPDIR"] = str(root)
    tempfile.tempdir = str(root)
    os.environ[MARKER] = root.name
    return root


def _marked_processes(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if f"{MARKER}={marker}".encode() in environ.split(b"\0"):
            found.append(int(entry))
    return found


def _describe(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_all(pids: list[int]) -> None:
    """SIGKILL each process and wait (bounded) until it is gone."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + KILL_WAIT_S
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                break
            if state == "Z":   # exited; its parent (maybe not us) reaps it
                break
            time.sleep(0.01)


def check_and_clean(root: Path) -> list[str]:
    """What the run left behind (processes, then files), after removing all of it."""
    problems = []
    leftover = _marked_processes(root.name)
    if leftover:
        problems += [f"process left running: {pid} {_describe(pid)}" for pid in leftover]
        kill_all(leftover)
    if root.exists():
        for entry in sorted(root.iterdir()):
            if entry.name.startswith("pytest-of-"):
                continue   # pytest's own tmp_path folders, which it manages itself
            problems.append(f"left in the temporary directory: {entry}")
        shutil.rmtree(root, ignore_errors=True)
    return problems
