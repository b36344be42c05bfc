"""What each spec run changed in git, against real repositories with scripted commits: the loop
wrapper and `emit --git` record it, the projection keeps it per spec run, and `ralph-query
session`, `ralph-query night` and the session page show it, summed per session and night.
No repository, or no git on PATH, is recorded as such; absurd counts are skipped and said so."""

from __future__ import annotations

import json
import subprocess
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from ralph_monitor.config import load_settings
from ralph_monitor.dashboard.render import render_once
from tests.agent_tools import BIN, agent_env, events, settle
from tests.conftest import Daemon, query
from tests.scenario import scenario_zone
from tests.site_helpers import read_page

# Each spec of the fake agent does something different to the repository it runs in.
AGENT = textwrap.dedent('''\
    #!/bin/sh
    set -e
    case "$1" in
      two-commits)
        printf 'a\\nb\\nc\\n' > one.txt; printf 'x\\n' > two.txt
        git add one.txt two.txt; git commit -q -m "CR-04: add one and two"
        printf 'a\\nB\\nc\\nd\\n' > one.txt; rm base.txt
        git add -A; git commit -q -m "CR-04: edit one, drop base"
        ;;
      dirty) echo scratch > notes.txt ;;
      nothing) : ;;
    esac
''')


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with one commit (base.txt: 2 lines) and its own author."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q")
    git(path, "config", "user.name", "Ralph Test")
    git(path, "config", "user.email", "ralph@example.com")
    (path / "base.txt").write_text("one\ntwo\n")
    git(path, "add", "base.txt")
    git(path, "commit", "-q", "-m", "base")
    return path


@pytest.fixture
def night_daemon(daemon_factory: Any) -> Daemon:
    """A daemon whose "night" is the whole of today in a zone where it is about noon, so the runs
    of the next minutes are in it (in UTC, a run in the day's last minute fell outside 00:00-23:59)."""
    d = daemon_factory(reports={"night_start": "00:00", "night_end": "23:59",
                                "timezone": scenario_zone(datetime.now(timezone.utc))})
    d.start()
    return d


def ralph_query(daemon: Daemon, *args: str) -> str:
    done = subprocess.run([str(BIN / "ralph-query"), *args, "--config", str(daemon.config_path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_loop_records_commits_files_lines_and_a_dirty_tree_per_spec_run(
        night_daemon: Daemon, repo: Path, tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    agent.write_text(AGENT)
    agent.chmod(0o755)
    base = git(repo, "rev-parse", "HEAD")
    result = subprocess.run(
        [str(BIN / "ralph-monitor"), "loop", "--config", str(night_daemon.config_path), "--name", "gitty",
         "--spec", "two-commits", "--spec", "dirty", "--spec", "nothing", "--quiet", "--", str(agent), "{spec}"],
        cwd=repo, capture_output=True, env=agent_env(tmp_path / "spool"), timeout=60)
    assert result.returncode == 0, result.stderr
    head = git(repo, "rev-parse", "HEAD")
    settle(night_daemon.dsn, lambda: query(night_daemon.dsn, "SELECT 1 FROM sessions WHERE end_time IS NOT NULL"))

    closing = {e["spec_id"]: e["payload"]["data"]["git"] for e in events(night_daemon.dsn, "event_type = 'spec_completed'")}
    two = closing["two-commits"]
    assert (two["repo"], two["head_before"], two["head_after"]) == (str(repo.resolve()), base, head)
    assert [c["subject"] for c in two["commits"]] == ["CR-04: edit one, drop base", "CR-04: add one and two"]
    assert two["commits"][0]["hash"] == head and two["commit_count"] == 2
    # one.txt +4, two.txt +1, base.txt -2: as `git diff --numstat base head` counts them.
    assert (two["files_changed"], two["insertions"], two["deletions"], two["dirty"]) == (3, 5, 2, False)
    assert closing["dirty"]["dirty"] is True and closing["dirty"]["commit_count"] == 0
    assert closing["dirty"]["head_before"] == closing["dirty"]["head_after"] == head
    assert closing["nothing"]["dirty"] is True  # notes.txt is still there, untracked
    started = events(night_daemon.dsn, "event_type = 'spec_started' AND spec_id = 'two-commits'")[0]
    assert started["payload"]["data"]["git"] == {"repo": str(repo.resolve()), "head": base}

    runs = {r["spec_id"]: r for r in query(night_daemon.dsn, "SELECT * FROM spec_runs")}
    assert (runs["two-commits"]["git_commits"], runs["two-commits"]["git_files_changed"],
            runs["two-commits"]["git_insertions"], runs["two-commits"]["git_deletions"],
            runs["two-commits"]["git_dirty"]) == (2, 3, 5, 2, False)
    assert (runs["dirty"]["git_commits"], runs["dirty"]["git_dirty"]) == (0, True)

    session_id = str(runs["dirty"]["session_id"])
    shown = ralph_query(night_daemon, "session", session_id)
    assert "changed: 2 commits, +5 \u22122 in 3 files, 2 left dirty (3 spec runs recorded it)" in shown
    assert "2 commits, +5 \u22122 in 3 files" in next(line for line in shown.splitlines()
                                                     if line.startswith("two-commits"))
    assert "0 commits, left dirty" in next(line for line in shown.splitlines() if line.startswith("dirty"))
    assert "2 commits, +5 \u22122 in 3 files" in ralph_query(night_daemon, "spec", "two-commits")
    night = ralph_query(night_daemon, "night")
    assert "What the spec runs changed: 2 commits, +5 \u22122 in 3 files, 2 left dirty" in night
    assert "  two-commits: 2 commits, +5 \u22122 in 3 files (gitty)" in night
    as_json = json.loads(ralph_query(night_daemon, "night", "--json"))
    assert as_json["git"] == {"runs": 3, "commits": 2, "files_changed": 3, "insertions": 5, "deletions": 2,
                              "left_dirty": 2}

    site = tmp_path / "site"
    render_once(load_settings(night_daemon.config_path), dsn=night_daemon.dsn, site_dir=site, full=True)
    html, values, _ = read_page(site, f"sessions/{session_id}.html")
    assert values["git_changes"] == "2 commits, +5 \u22122 in 3 files, 2 left dirty"
    cell = html[html.index('<tr id="run-two-commits-1"'):]
    assert f'<td title="{head[:10]} CR-04: edit one, drop base' in cell
    assert ">2 commits, +5 \u22122 in 3 files</td>" in cell
    _, overview, _ = read_page(site, "index.html")
    assert overview["night-git"] == "Changed in git: 2 commits, +5 \u22122 in 3 files, 2 left dirty (3 spec runs)."


def test_no_repository_and_no_git_are_recorded_as_such(daemon: Daemon, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    env = agent_env(tmp_path / "spool")
    base = [str(BIN / "ralph-monitor"), "loop", "--config", str(daemon.config_path), "--quiet"]
    done = subprocess.run([*base, "--spec", "no-repo", "--", "/bin/sh", "-c", "exit 0"], cwd=plain, env=env,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    no_path = {**env, "PATH": str(tmp_path / "empty-bin")}
    done = subprocess.run([*base, "--spec", "no-git", "--", "/bin/sh", "-c", "exit 0"], cwd=plain, env=no_path,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([*base, "--spec", "not-asked", "--no-git", "--", "/bin/sh", "-c", "exit 0"], cwd=plain,
                          env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    settle(daemon.dsn, lambda: len(query(daemon.dsn, "SELECT 1 FROM spec_runs WHERE status = 'completed'")) == 3)
    closing = {e["spec_id"]: e["payload"]["data"] for e in events(daemon.dsn, "event_type = 'spec_completed'")}
    assert closing["no-repo"]["git"] == {"repo": None, "reason": "not a git repository"}
    assert closing["no-git"]["git"] == {"repo": None, "reason": "git not found on PATH"}
    assert "git" not in closing["not-asked"]
    runs = {r["spec_id"]: r for r in query(daemon.dsn, "SELECT spec_id, git, git_commits, value_problems FROM spec_runs")}
    assert runs["no-repo"]["git"] == {"repo": None, "reason": "not a git repository"}
    assert runs["no-repo"]["git_commits"] is None and runs["no-repo"]["value_problems"] == []
    session_id = query(daemon.dsn, "SELECT session_id FROM spec_runs WHERE spec_id = 'no-git'")[0]["session_id"]
    shown = ralph_query(daemon, "session", str(session_id))
    assert "no repository (git not found on PATH)" in shown


def test_emit_git_reports_the_changes_since_spec_started(daemon: Daemon, repo: Path, tmp_path: Path) -> None:
    env = agent_env(tmp_path / "spool", RALPH_SESSION_ID="6f1c2b4e-1616-4000-8000-000000000016",
                    RALPH_SPEC_ID="CR-07")

    def emit(*args: str, cwd: Path = repo) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(BIN / "ralph-monitor"), "emit", "--config", str(daemon.config_path), *args],
                              cwd=cwd, env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done

    emit("spec_started", "--git")
    (repo / "feature.py").write_text("print('hi')\n")
    git(repo, "add", "feature.py")
    git(repo, "commit", "-q", "-m", "CR-07: feature")
    emit("spec_completed", "--git", str(repo), "cost_usd=0.42", cwd=tmp_path)
    emit("spec_failed", "--spec", "CR-08", "--git")  # no spec_started --git before it
    settle(daemon.dsn, lambda: len(query(daemon.dsn, "SELECT 1 FROM spec_runs WHERE end_time IS NOT NULL")) == 2)
    closing = {e["spec_id"]: e["payload"]["data"]["git"]
               for e in events(daemon.dsn, "event_type IN ('spec_completed', 'spec_failed')")}
    assert closing["CR-07"]["commit_count"] == 1 and closing["CR-07"]["commits"][0]["subject"] == "CR-07: feature"
    assert (closing["CR-07"]["files_changed"], closing["CR-07"]["insertions"], closing["CR-07"]["deletions"]) == (1, 1, 0)
    assert closing["CR-08"]["head_before"] is None and "spec_started with --git" in closing["CR-08"]["reason"]
    shown = ralph_query(daemon, "session", "6f1c2b4e-1616-4000-8000-000000000016")
    assert "1 commit, +1 \u22120 in 1 file" in next(line for line in shown.splitlines() if line.startswith("CR-07"))
    assert "unknown (no HEAD noted at its start" in next(line for line in shown.splitlines()
                                                              if line.startswith("CR-08"))


def test_absurd_git_values_are_skipped_with_a_warning(daemon: Daemon, tmp_path: Path) -> None:
    sent = {"repo": "/src/app", "head_before": "a" * 40, "head_after": "b" * 40, "commit_count": 2,
            "commits": [{"hash": "b" * 40, "subject": "x"}], "files_changed": "3", "insertions": 1e30,
            "deletions": -4, "dirty": "yes"}
    done = subprocess.run(
        [str(BIN / "ralph-monitor"), "emit", "--config", str(daemon.config_path), "spec_completed", "--json",
         "--session", "6f1c2b4e-1617-4000-8000-000000000017", "--spec", "CR-09", "--data", json.dumps({"git": sent})],
        env=agent_env(tmp_path / "spool"), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    warnings = json.loads(done.stdout)["warnings"][0]
    assert 'git.files_changed="3" ignored: a string, not a number' in warnings
    assert "git.insertions=1e+30 ignored: out of range" in warnings
    assert "git.deletions=-4 ignored: negative" in warnings and 'git.dirty="yes" ignored' in warnings
    settle(daemon.dsn, lambda: query(daemon.dsn, "SELECT 1 FROM spec_runs"))
    run = query(daemon.dsn, "SELECT * FROM spec_runs")[0]
    assert (run["git_commits"], run["git_files_changed"], run["git_insertions"], run["git_deletions"],
            run["git_dirty"]) == (2, None, None, None, None)
    assert any("git.insertions=1e+30" in p for p in run["value_problems"])
    stored = events(daemon.dsn, "event_type = 'spec_completed'")[0]["payload"]["data"]["git"]
    assert float(stored["insertions"]) == 1e30  # the event keeps what was sent
