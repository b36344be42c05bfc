"""What a spec run changed in its git repository: HEAD before and after, the commits made,
files changed, lines added and removed, and whether the tree was left dirty.

`ralph-monitor loop` (and `emit --git`) take a `Before` when a spec starts and call
`changes(before)` when it ends; the result goes into the closing event as `data.git`:

    {"repo": "/src/app", "head_before": "3f2a…", "head_after": "9c1d…",
     "commits": [{"hash": "9c1d…", "subject": "CR-04: parse dates"}], "commit_count": 1,
     "files_changed": 6, "insertions": 120, "deletions": 40, "dirty": false}

Lines and files count the committed changes (head_before to head_after); `dirty` says
whether anything was left uncommitted (untracked files included). No repository, or no
git: `{"repo": null, "reason": "not a git repository"}`: recorded, never an error. Each git
call has a timeout, so a hung git (a lock, a network file system) costs a spec run seconds,
not the night.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIT_TIMEOUT_S = 10.0
"""Each git call's limit."""
MAX_COMMITS = 50
"""Commits listed per spec run (commit_count has them all)."""
SUBJECT_CHARS = 200


class GitUnavailable(Exception):
    """Why no git state could be read (the text goes into `reason`)."""


@dataclass(frozen=True)
class Before:
    """The repository and its HEAD when a spec started; `reason` when there is none."""

    repo: str | None
    head: str | None = None
    reason: str | None = None

    def as_data(self) -> dict[str, Any]:
        """What spec_started records."""
        if self.repo is None:
            return {"repo": None, "reason": self.reason}
        return {"repo": self.repo, "head": self.head}


def _run(repo: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", "-C", repo, *args], capture_output=True, timeout=GIT_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0",
                                                             "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"})
    except FileNotFoundError:
        raise GitUnavailable("git not found on PATH") from None
    except subprocess.TimeoutExpired:
        raise GitUnavailable(f"git {args[0]} took longer than {GIT_TIMEOUT_S:g} s") from None
    except OSError as exc:
        raise GitUnavailable(f"cannot run git: {exc.strerror or exc}") from None


def _git(repo: str, *args: str) -> str:
    done = _run(repo, *args)
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GitUnavailable(f"git {args[0]} failed: {message[-1] if message else f'exit code {done.returncode}'}")
    return done.stdout.decode("utf-8", "replace")


def _head(repo: str) -> str | None:
    """HEAD's commit, or None in a repository with no commit yet."""
    return _run(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}").stdout.decode().strip() or None


def before(directory: str | os.PathLike[str] | None = None) -> Before:
    """The repository holding `directory` (default: the current one) and its HEAD."""
    where = os.fspath(directory or os.getcwd())
    if not os.path.isdir(where):
        return Before(None, reason=f"no such directory: {where}")
    try:
        probe = _run(where, "rev-parse", "--show-toplevel")
        if probe.returncode != 0:
            return Before(None, reason="not a git repository")
        repo = probe.stdout.decode("utf-8", "replace").strip()
        return Before(repo, _head(repo))
    except GitUnavailable as exc:
        return Before(None, reason=str(exc))


def changes(start: Before) -> dict[str, Any]:
    """`data.git` for the end of a spec run that started at `start`."""
    if start.repo is None:
        return {"repo": None, "reason": start.reason}
    try:
        return _changes(start.repo, start.head)
    except GitUnavailable as exc:
        return {"repo": start.repo, "head_before": start.head, "reason": str(exc)}


def _changes(repo: str, head_before: str | None) -> dict[str, Any]:
    head_after = _head(repo)
    data: dict[str, Any] = {"repo": repo, "head_before": head_before, "head_after": head_after}
    if head_after is None or head_after == head_before:
        data.update(commits=[], commit_count=0, files_changed=0, insertions=0, deletions=0)
    else:
        span = f"{head_before}..{head_after}" if head_before else head_after
        log = _git(repo, "log", f"--max-count={MAX_COMMITS}", "--format=%H%x1f%s", span)
        data["commits"] = [{"hash": h, "subject": s[:SUBJECT_CHARS]}
                           for h, _, s in (line.partition("\x1f") for line in log.splitlines() if line)]
        data["commit_count"] = int(_git(repo, "rev-list", "--count", span).strip() or 0)
        base = head_before or _git(repo, "hash-object", "-t", "tree", "/dev/null").strip()
        files = insertions = deletions = 0
        for line in _git(repo, "diff", "--numstat", "--no-renames", base, head_after).splitlines():
            added, _, rest = line.partition("\t")
            removed = rest.partition("\t")[0]
            files += 1
            insertions += int(added) if added.isdigit() else 0  # "-" for a binary file
            deletions += int(removed) if removed.isdigit() else 0
        data.update(files_changed=files, insertions=insertions, deletions=deletions)
    data["dirty"] = bool(_git(repo, "status", "--porcelain", "--untracked-files=normal").strip())
    return data


CLOSING_TYPES = ("spec_completed", "spec_failed", "timeout_triggered")


def for_emit(event_type: str, directory: str, *, session_id: str | None, spec_id: str | None,
             state_dir: Path) -> dict[str, Any]:
    """`data.git` for `ralph-monitor emit --git`: spec_started notes HEAD (in `state_dir`, per
    session and spec, as a one-shot `emit` has no memory of its own); a closing event reads
    that note back and reports the changes since; any other event, the state now."""
    note = state_dir / hashlib.sha256(f"{session_id}/{spec_id}".encode()).hexdigest()[:32]
    now = before(directory)
    if event_type == "spec_started":
        if now.repo is not None:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            note.write_text(json.dumps(now.as_data()), encoding="utf-8")
        return now.as_data()
    if event_type not in CLOSING_TYPES:
        return now.as_data()
    try:
        noted = json.loads(note.read_text(encoding="utf-8"))
        note.unlink()
    except (OSError, ValueError):
        noted = None
    if now.repo is None:
        return now.as_data()
    if not isinstance(noted, dict) or noted.get("repo") != now.repo:
        return {"repo": now.repo, "head_before": None, "head_after": now.head,
                "reason": "no HEAD noted at its start: send spec_started with --git too"}
    return changes(Before(now.repo, noted.get("head")))
