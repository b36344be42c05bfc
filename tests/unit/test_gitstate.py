"""agent.gitstate on real repositories: the first commit of an empty repository, binary files,
a HEAD moved back, and a directory that does not exist."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ralph_monitor.agent import gitstate


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def new_repo(path: Path) -> Path:
    path.mkdir()
    git(path, "init", "-q")
    git(path, "config", "user.name", "Ralph Test")
    git(path, "config", "user.email", "ralph@example.com")
    return path


def test_the_first_commits_of_an_empty_repository_count_from_nothing(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "empty")
    start = gitstate.before(repo)
    assert start == gitstate.Before(str(repo.resolve()), None)
    (repo / "a.txt").write_text("1\n2\n3\n")
    (repo / "logo.png").write_bytes(b"\x89PNG\x00\x01\x02")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    changed = gitstate.changes(start)
    assert changed["head_before"] is None and changed["head_after"] == git(repo, "rev-parse", "HEAD")
    assert [c["subject"] for c in changed["commits"]] == ["first"]
    # The binary file counts as a file changed, with no lines.
    assert (changed["files_changed"], changed["insertions"], changed["deletions"], changed["dirty"]) == (2, 3, 0, False)


def test_a_head_moved_back_counts_no_commits_and_the_lines_it_undid(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    for n in (1, 2):
        (repo / "a.txt").write_text("".join(f"{i}\n" for i in range(n * 2)))
        git(repo, "add", "a.txt")
        git(repo, "commit", "-q", "-m", f"c{n}")
    start = gitstate.before(repo)
    git(repo, "reset", "-q", "--hard", "HEAD~1")
    changed = gitstate.changes(start)
    assert (changed["commit_count"], changed["commits"]) == (0, [])
    assert (changed["files_changed"], changed["insertions"], changed["deletions"]) == (1, 0, 2)


def test_a_missing_directory_is_recorded_as_such(tmp_path: Path) -> None:
    start = gitstate.before(tmp_path / "nowhere")
    assert gitstate.changes(start) == {"repo": None, "reason": f"no such directory: {tmp_path / 'nowhere'}"}
