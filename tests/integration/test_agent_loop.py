"""`ralph-monitor loop` around a fake `claude` that prints real-shaped results, fails,
crashes, hangs past the timeout, is interrupted, or hits the usage limit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.agent_tools import BIN, agent_env, events, settle, wait_for
from tests.conftest import Daemon, query

FAKE_CLAUDE = textwrap.dedent('''\
    #!{python}
    """A stand-in for `claude -p --output-format json|stream-json`: behaviour by spec id."""
    import json, os, subprocess, sys, time
    spec = sys.argv[1]
    fmt = sys.argv[sys.argv.index("--output-format") + 1] if "--output-format" in sys.argv else "text"
    # Like Claude Code with the hook installed: one PreToolUse call per run.
    hook = {{"session_id": "00893aaf-19fa-41d2-8238-13269b9b3ca0", "transcript_path": "/nonexistent",
             "cwd": os.getcwd(), "permission_mode": "bypassPermissions", "hook_event_name": "PreToolUse",
             "tool_name": "Bash", "tool_input": {{"command": "pytest -q"}}, "tool_use_id": "toolu_1"}}
    subprocess.run([{monitor!r}, "hook"], input=json.dumps(hook).encode(), check=True)
    if spec.startswith("slow"):
        with open(os.environ["PID_FILE"], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)
    if spec.startswith("crash"):
        print("Traceback (most recent call last):\\nRuntimeError: boom", file=sys.stderr)
        sys.exit(3)
    if spec.startswith("limited") and not os.path.exists(os.environ["LIMIT_FILE"]):
        # The first run hits the subscription's usage limit, as `claude -p` reports it.
        open(os.environ["LIMIT_FILE"], "w").close()
        resets = int(time.time()) + int(os.environ["RESETS_IN_S"])
        print(json.dumps({{"type": "result", "subtype": "success", "is_error": True, "duration_ms": 310,
                          "duration_api_ms": 0, "num_turns": 1, "result": f"Claude AI usage limit reached|{{resets}}",
                          "session_id": "9ecbeb02-4f54-4380-9b7b-38cdf9a92eab", "total_cost_usd": 0,
                          "usage": {{"input_tokens": 0, "output_tokens": 0}}, "permission_denials": []}}))
        sys.exit(1)
    n = int(spec.rsplit("-", 1)[1])
    failed = spec.startswith("fail")
    result = {{"type": "result", "subtype": "error_max_turns" if failed else "success", "is_error": failed,
              "duration_ms": 1200, "duration_api_ms": 1100, "num_turns": 3 * n, "stop_reason": "end_turn",
              "result": "" if failed else f"{{spec}} done", "session_id": "9ecbeb02-4f54-4380-9b7b-38cdf9a92eab",
              "total_cost_usd": 0.25 * n,
              "usage": {{"input_tokens": 10 * n, "cache_creation_input_tokens": 100 * n,
                         "cache_read_input_tokens": 1000 * n, "output_tokens": 50 * n, "service_tier": "standard"}},
              "modelUsage": {{}}, "permission_denials": []}}
    if fmt == "stream-json":
        print(json.dumps({{"type": "system", "subtype": "init", "session_id": result["session_id"]}}))
        print(json.dumps({{"type": "assistant", "message": {{"content": [{{"type": "text", "text": "working"}}]}}}}))
        print(json.dumps(result))
    else:
        print(json.dumps(result))
    sys.exit(1 if failed else 0)
''')


@pytest.fixture
def fake_claude(tmp_path: Path) -> Path:
    path = tmp_path / "claude"
    path.write_text(FAKE_CLAUDE.format(python=sys.executable, monitor=str(BIN / "ralph-monitor")))
    path.chmod(0o755)
    return path


def loop(daemon: Daemon, env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(loop_argv(daemon, *args), capture_output=True, env=env, timeout=timeout,
                          cwd=tempfile.gettempdir())  # not a git checkout


def loop_argv(daemon: Daemon, *args: str) -> list[str]:
    return [str(BIN / "ralph-monitor"), "loop", "--config", str(daemon.config_path), *args]


def the_session(dsn: str) -> dict[str, Any]:
    rows = query(dsn, "SELECT * FROM sessions")
    assert len(rows) == 1
    return rows[0]


def test_a_night_of_specs_with_passes_failures_a_crash_and_a_timeout(daemon: Daemon, fake_claude: Path,
                                                                      tmp_path: Path) -> None:
    specs = tmp_path / "specs.txt"
    specs.write_text("# tonight\nok-1\nfail-2\ncrash-3\nslow-4\nok-2\n")
    env = agent_env(tmp_path / "spool", PID_FILE=str(tmp_path / "pid"))
    result = loop(daemon, env, "--specs", str(specs), "--name", "nightly", "--timeout", "2", "--heartbeat", "0.5",
                  "--kill-grace", "1", "--", str(fake_claude), "{spec}", "-p", "--output-format", "json")
    assert result.returncode == 1, result.stderr  # some specs failed
    assert b'"total_cost_usd": 0.25' in result.stdout  # the command's output is passed through
    assert b"slow-4: no result after 2 s; stopping it" in result.stderr
    settle(daemon.dsn, lambda: the_session(daemon.dsn)["end_time"] is not None)
    session = the_session(daemon.dsn)
    assert (session["name"], session["total_specs"], session["execution_state"]) == ("nightly", 5, "completed")
    assert (session["specs_completed"], session["specs_failed"], session["specs_timed_out"]) == (2, 3, 1)
    assert session["cost_usd"] == Decimal("1.25")  # 0.25 + 0.50 + 0.50 (the failed run's cost counts too)
    runs = {r["spec_id"]: r for r in query(daemon.dsn, "SELECT * FROM spec_runs")}
    assert {k: r["status"] for k, r in runs.items()} == {
        "ok-1": "completed", "fail-2": "failed", "crash-3": "failed", "slow-4": "timeout", "ok-2": "completed"}
    assert runs["ok-1"]["tokens_used"] == 1160 and runs["ok-2"]["tokens_used"] == 2320
    assert runs["fail-2"]["error_message"] == "error_max_turns"
    assert runs["crash-3"]["error_message"] == "exit code 3: Traceback (most recent call last):\nRuntimeError: boom"
    assert "timed out after 2 s" in runs["slow-4"]["error_message"]
    assert 2 <= runs["slow-4"]["duration_seconds"] < 5
    done = events(daemon.dsn, "event_type = 'spec_completed' AND spec_id = 'ok-1'")[0]["payload"]["data"]
    assert (done["exit_code"], done["num_turns"], done["is_error"], done["subtype"]) == (0, 3, False, "success")
    assert done["cost_usd"] == 0.25 and done["output_summary"] == "ok-1 done"
    assert done["claude_session_id"] == "9ecbeb02-4f54-4380-9b7b-38cdf9a92eab"
    timeout = events(daemon.dsn, "event_type = 'timeout_triggered'")[0]["payload"]["data"]
    assert timeout["signal"] == "SIGTERM" and timeout["timeout_s"] == 2
    assert events(daemon.dsn, "event_type = 'session_heartbeat' AND spec_id = 'slow-4'")
    # The hook inside each run filed its events under the loop's session and spec.
    # (The hook records in a detached child: its events may land just after the loop's own.)
    tools = wait_for(lambda: (found := events(daemon.dsn, "event_type = 'cc.PreToolUse'")) and len(found) == 5 and found,
                     what="the hook's events")
    assert {(t["session_id"], t["spec_id"]) for t in tools} == {
        (str(session["id"]), s) for s in ("ok-1", "fail-2", "crash-3", "slow-4", "ok-2")}
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    end = events(daemon.dsn, "event_type = 'session_ended'")[0]["payload"]["data"]
    assert (end["status"], end["specs_completed"], end["specs_failed"], end["specs_timed_out"]) == ("completed", 2, 3, 1)


def test_stream_json_iterations_and_joining_an_existing_session(daemon: Daemon, fake_claude: Path,
                                                                tmp_path: Path) -> None:
    env = agent_env(tmp_path / "spool")
    session = "6f1c2b4e-4444-4000-8000-000000000004"
    result = loop(daemon, env, "--session", session, "--spec", "ok-1", "--quiet", "--",
                  str(fake_claude), "{spec}", "-p", "--output-format", "stream-json")
    assert result.returncode == 0 and result.stdout == b""
    again = loop(daemon, env, "--session", session, "--spec", "ok-2", "--quiet", "--",
                 str(fake_claude), "{spec}", "-p", "--output-format", "stream-json")
    assert again.returncode == 0
    settle(daemon.dsn, lambda: query(daemon.dsn, "SELECT 1 FROM spec_runs WHERE spec_id = 'ok-2' AND status = 'completed'"))
    assert not events(daemon.dsn, "event_type IN ('session_started', 'session_ended')")  # joined, not owned
    runs = query(daemon.dsn, "SELECT spec_id, status, tokens_used, cost_usd FROM spec_runs ORDER BY spec_id")
    assert [(r["spec_id"], r["status"], r["tokens_used"]) for r in runs] == [("ok-1", "completed", 1160),
                                                                             ("ok-2", "completed", 2320)]
    text = loop(daemon, env, "--iterations", "2", "--quiet", "--", "sh", "-c", "echo plain text; exit 0")
    assert text.returncode == 0
    done = events(daemon.dsn, "event_type = 'spec_completed' AND spec_id LIKE 'iteration-%%'")
    assert [d["spec_id"] for d in done] == ["iteration-1", "iteration-2"]
    assert done[0]["payload"]["data"]["exit_code"] == 0 and "tokens_used" not in done[0]["payload"]["data"]
    missing = loop(daemon, env, "--", str(tmp_path / "no-such-agent"))
    assert missing.returncode == 1
    failed = events(daemon.dsn, "event_type = 'spec_failed'")[-1]["payload"]["data"]
    assert failed["error"].startswith("cannot run ") and "No such file" in failed["error"]


def test_sigterm_ends_the_session_as_interrupted_and_stops_the_command(daemon: Daemon, fake_claude: Path,
                                                                       tmp_path: Path) -> None:
    env = agent_env(tmp_path / "spool", PID_FILE=str(tmp_path / "pid"))
    proc = subprocess.Popen([str(BIN / "ralph-monitor"), "loop", "--config", str(daemon.config_path),
                             "--spec", "ok-1", "--spec", "slow-2", "--spec", "ok-3", "--kill-grace", "1", "--quiet",
                             "--", str(fake_claude), "{spec}", "-p", "--output-format", "json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    wait_for(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text(), timeout=20, what="slow spec running")
    child = int((tmp_path / "pid").read_text())
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert time.monotonic() - started < 5
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    settle(daemon.dsn, lambda: the_session(daemon.dsn)["end_time"] is not None)
    session = the_session(daemon.dsn)
    assert session["execution_state"] == "interrupted" and session["specs_completed"] == 1
    assert session["name"] == f"{tmp_path.name}: {fake_claude.name}"  # no --name: where it ran, what it ran
    runs = {r["spec_id"]: r["status"] for r in query(daemon.dsn, "SELECT spec_id, status FROM spec_runs")}
    assert runs == {"ok-1": "completed", "slow-2": "interrupted"}  # ok-3 never started
    end = events(daemon.dsn, "event_type = 'session_ended'")[0]["payload"]["data"]
    assert end["status"] == "interrupted" and end["signal"] == "SIGTERM"
    assert json.loads(json.dumps(end))  # plain JSON


def test_a_usage_limit_pauses_the_session_until_the_reset_then_the_same_spec_runs_again(
        daemon: Daemon, fake_claude: Path, tmp_path: Path) -> None:
    env = agent_env(tmp_path / "spool", LIMIT_FILE=str(tmp_path / "limited"), RESETS_IN_S="6")
    proc = subprocess.Popen(loop_argv(daemon, "--spec", "ok-1", "--spec", "limited-2", "--spec", "ok-3",
                                      "--heartbeat", "1", "--usage-limit-margin", "1", "--quiet", "--",
                                      str(fake_claude), "{spec}", "-p", "--output-format", "json"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tempfile.gettempdir())
    paused = wait_for(lambda: query(daemon.dsn, "SELECT * FROM sessions WHERE execution_state = %s",
                                    ("paused_for_usage_limit",)), what="the session paused")[0]
    assert proc.poll() is None  # waiting, not gone on to the next spec
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert b"limited-2: usage limit reached (resets " in stderr
    limit = events(daemon.dsn, "event_type = 'usage_limit'")
    assert len(limit) == 1 and limit[0]["spec_id"] == "limited-2"
    data = limit[0]["payload"]["data"]
    assert (data["source"], data["message"]) == ("result", f"Claude AI usage limit reached|{data['resets_at']}")
    assert paused["paused_until"].timestamp() == data["resets_at"]
    assert not events(daemon.dsn, "event_type = 'spec_failed'")
    waits = events(daemon.dsn, "event_type = 'session_heartbeat' AND spec_id = 'limited-2'")
    assert waits and all(w["payload"]["data"]["waiting_for"] == "usage_limit" for w in waits)
    retry = events(daemon.dsn, "event_type = 'spec_started' AND spec_id = 'limited-2'")[-1]
    assert retry["occurred_at"].timestamp() >= data["resets_at"]
    settle(daemon.dsn, lambda: the_session(daemon.dsn)["end_time"] is not None)
    session = the_session(daemon.dsn)
    assert (session["execution_state"], session["specs_completed"], session["specs_failed"]) == ("completed", 3, 0)
    runs = query(daemon.dsn, "SELECT * FROM spec_runs ORDER BY spec_id, attempt")
    assert [(r["spec_id"], r["attempt"], r["status"], r["outcome"]) for r in runs] == [
        ("limited-2", 1, "interrupted", "later_passed"), ("limited-2", 2, "completed", "passed"),
        ("ok-1", 1, "completed", "passed"), ("ok-3", 1, "completed", "passed")]
    assert runs[0]["error_message"] == data["message"] and runs[0]["duration_seconds"] < 5  # not the wait
    end = events(daemon.dsn, "event_type = 'session_ended'")[0]["payload"]["data"]
    assert (end["status"], end["usage_limits"], end["specs_failed"]) == ("completed", 1, 0)


def test_on_usage_limit_stop_ends_the_session_for_a_later_restart(daemon: Daemon, fake_claude: Path,
                                                                  tmp_path: Path) -> None:
    env = agent_env(tmp_path / "spool", LIMIT_FILE=str(tmp_path / "limited"), RESETS_IN_S="3600")
    result = loop(daemon, env, "--spec", "limited-1", "--spec", "ok-2", "--on-usage-limit", "stop", "--quiet",
                  "--", str(fake_claude), "{spec}", "-p", "--output-format", "json")
    assert result.returncode == 5, result.stderr
    settle(daemon.dsn, lambda: the_session(daemon.dsn)["end_time"] is not None)
    session = the_session(daemon.dsn)
    assert (session["execution_state"], session["specs_completed"], session["specs_failed"]) == ("interrupted", 0, 0)
    assert session["final_result"]["reason"].startswith("usage limit reached (resets ")
    runs = query(daemon.dsn, "SELECT spec_id, status FROM spec_runs")
    assert [(r["spec_id"], r["status"]) for r in runs] == [("limited-1", "interrupted")]  # ok-2 never started
    assert events(daemon.dsn, "event_type = 'usage_limit'")[0]["payload"]["data"]["on_usage_limit"] == "stop"
    assert not events(daemon.dsn, "event_type = 'spec_failed'")


def test_sigterm_while_waiting_for_the_usage_limit_stops_at_once(daemon: Daemon, fake_claude: Path,
                                                                 tmp_path: Path) -> None:
    env = agent_env(tmp_path / "spool", LIMIT_FILE=str(tmp_path / "limited"), RESETS_IN_S="3600")
    proc = subprocess.Popen(loop_argv(daemon, "--spec", "limited-1", "--quiet", "--",
                                      str(fake_claude), "{spec}", "-p", "--output-format", "json"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tempfile.gettempdir())
    wait_for(lambda: events(daemon.dsn, "event_type = 'usage_limit'"), what="the usage limit recorded")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert time.monotonic() - started < 3
    settle(daemon.dsn, lambda: the_session(daemon.dsn)["end_time"] is not None)
    assert the_session(daemon.dsn)["execution_state"] == "interrupted"
