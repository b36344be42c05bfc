"""The commands `ralph-monitor claude-settings --socket <the daemon's>` prints, run as Claude Code
runs them (`/bin/sh -c COMMAND`, the input on stdin) against a real daemon: each hook command
exits 0, prints nothing and its event is stored; the `--guard` one stops a flagged session; the
status line prints what `ralph-monitor statusline` prints. Under `-S` they load the standard
library and `ralph_monitor` only, and what Claude Code waits for loads nothing past the entry point."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tests.agent_tools import BIN, agent_env, events, wait_for
from tests.conftest import Daemon, LineClient
from tests.hook_payloads import all_payloads, status_input, write_transcript

LOOP_SESSION = "6f1c2b4e-2121-4000-8000-000000000021"
IMPORT_TIME_ENV = {"PYTHONPROFILEIMPORTTIME": "1"}
"""`-X importtime` for a command line we do not edit: each import on stderr."""
ENTRY_POINT = {"ralph_monitor", "ralph_monitor.launcher", "ralph_monitor.agent", "ralph_monitor.agent.hook_start"}


def claude_settings(daemon: Daemon) -> dict[str, Any]:
    done = subprocess.run([str(BIN / "ralph-monitor"), "claude-settings", "--socket", daemon.socket_path],
                          capture_output=True, timeout=60, check=True)
    return json.loads(done.stdout)


def hook_commands(settings: dict[str, Any]) -> dict[str, str]:
    return {event: groups[0]["hooks"][0]["command"] for event, groups in settings["hooks"].items()}


def sh(command: str, stdin: bytes, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """COMMAND as Claude Code runs a command hook or the status line."""
    return subprocess.run(["/bin/sh", "-c", command], input=stdin, capture_output=True, env=env, timeout=30)


def imported(stderr: bytes) -> set[str]:
    """The modules an `-X importtime` run loaded, from its stderr."""
    return {line.split("|")[2].strip() for line in stderr.decode().splitlines()
            if line.startswith("import time:") and not line.endswith("imported package")}


def outside_stdlib(names: set[str]) -> list[str]:
    return sorted(n for n in names if n.partition(".")[0] not in sys.stdlib_module_names | {"ralph_monitor"})


def test_every_hook_command_records_its_event_and_prints_nothing(daemon: Daemon, tmp_path: Path) -> None:
    transcript = tmp_path / "transcript.jsonl"
    write_transcript(transcript)
    payloads = all_payloads(str(transcript))
    commands = hook_commands(claude_settings(daemon))
    assert len(set(commands.values())) == 2  # plain, and --guard on PreToolUse and UserPromptSubmit
    # No socket in the environment: the events reach this daemon through the commands' --socket.
    env = agent_env(tmp_path / "spool", RALPH_SESSION_ID=LOOP_SESSION, RALPH_SPEC_ID="CR-21")
    for event, command in commands.items():
        done = sh(command, json.dumps(payloads[event]).encode(), env)
        assert (done.returncode, done.stdout, done.stderr) == (0, b"", b""), (event, done.stderr)
    expected = sorted([f"cc.{event}" for event in commands] + ["intervention_request"])
    rows = wait_for(lambda: (found := events(daemon.dsn)) and len(found) >= len(expected) and found,
                    what="every hook command's event")
    assert sorted(r["event_type"] for r in rows) == expected
    assert {(r["session_id"], r["spec_id"]) for r in rows} == {(LOOP_SESSION, "CR-21")}


def test_the_guard_command_stops_a_session_the_monitor_flags_stuck(daemon: Daemon, tmp_path: Path) -> None:
    session = str(uuid.uuid4())
    client = LineClient(daemon.connect())
    try:
        assert client.request({"type": "session_started", "session_id": session, "data": {"name": "stuck"}})["ok"]
        for i in range(3):  # [loop_health] repeated_error_runs: the same error three runs in a row
            error = f"exit 1: /tmp/run-{i}/out.log: quota"
            for kind, data in (("spec_started", {}), ("spec_failed", {"error": error})):
                assert client.request({"type": kind, "session_id": session, "spec_id": f"iteration-{i}",
                                       "data": data})["ok"]
    finally:
        client.close()
    commands = hook_commands(claude_settings(daemon))
    env = agent_env(tmp_path / "spool", RALPH_SESSION_ID=session)
    payload = json.dumps(all_payloads()["PreToolUse"]).encode()
    stopped = wait_for(lambda: (done := sh(commands["PreToolUse"], payload, env)).stdout and done,
                       what="the --guard command stopping the flagged session")
    assert stopped.returncode == 0
    verdict = json.loads(stopped.stdout)
    assert verdict["continue"] is False and "flagged stuck: the same error" in verdict["stopReason"]
    plain = sh(commands["PostToolUse"], json.dumps(all_payloads()["PostToolUse"]).encode(), env)
    assert (plain.returncode, plain.stdout) == (0, b"")


def test_the_status_line_command_prints_what_ralph_monitor_statusline_prints(daemon: Daemon, tmp_path: Path) -> None:
    resets = int(time.time()) + 3600
    windows = {"five_hour": {"used_percentage": 42, "resets_at": resets},
               "seven_day": {"used_percentage": 36.5, "resets_at": resets + 5 * 86400}}
    status = json.dumps(status_input(**windows)).encode()
    env = agent_env(tmp_path / "spool")
    fast = sh(claude_settings(daemon)["statusLine"]["command"], status, env)
    assert (fast.returncode, fast.stderr) == (0, b"")
    plain = subprocess.run([str(BIN / "ralph-monitor"), "statusline", "--socket", daemon.socket_path], input=status,
                           capture_output=True, env=env, timeout=30)
    assert fast.stdout == plain.stdout and fast.stdout.decode().startswith("[Opus 4.6] · 5h 42% ↻")
    # The windows were forwarded (by the fast command: the plain one, with the same windows, sends nothing).
    sent = wait_for(lambda: events(daemon.dsn, "event_type = 'rate_limits'"), what="the rate_limits event")
    assert sent[0]["payload"]["data"]["five_hour"] == windows["five_hour"]


def test_under_s_the_commands_load_only_the_standard_library_and_ralph_monitor(daemon: Daemon,
                                                                                tmp_path: Path) -> None:
    settings = claude_settings(daemon)
    commands = hook_commands(settings)
    env = agent_env(tmp_path / "spool", RALPH_SESSION_ID=LOOP_SESSION, **IMPORT_TIME_ENV)
    # The interpreter's start-up under -S: not even `os` (site loads it; the hook forks with `posix`).
    startup = imported(subprocess.run([sys.executable, "-S", "-c", "pass"], capture_output=True, env=env,
                                      timeout=30, check=True).stderr)
    assert "encodings" in startup and not {"site", "os"} & startup
    # What Claude Code waits for: that and the entry point, nothing else (no site, no `os`, no `re`
    # of a console script).
    waited = sh(commands["PostToolUse"], json.dumps(all_payloads()["PostToolUse"]).encode(), env)
    assert waited.returncode == 0 and waited.stdout == b""
    assert imported(waited.stderr) - startup == ENTRY_POINT
    # With --guard (PreToolUse), a session not flagged: the question goes out with built-in modules.
    guarded = sh(commands["PreToolUse"], json.dumps(all_payloads()["PreToolUse"]).encode(), env)
    assert guarded.returncode == 0 and guarded.stdout == b""
    assert imported(guarded.stderr) - startup - {"_socket"} == ENTRY_POINT | {"ralph_monitor.agent.guard_quick"}
    # The whole work, guard included, in the one process (--foreground).
    whole = sh(commands["PreToolUse"] + " --foreground", json.dumps(all_payloads()["PreToolUse"]).encode(), env)
    assert whole.returncode == 0 and whole.stdout == b""
    loaded = imported(whole.stderr)
    assert {"ralph_monitor.agent.guard_quick", "ralph_monitor.agent.hook", "ralph_monitor.agent.client"} <= loaded
    assert "site" not in loaded and outside_stdlib(loaded) == []
    line = sh(settings["statusLine"]["command"], json.dumps(status_input()).encode(), env)
    assert line.stdout == b"[Opus 4.6] \xc2\xb7 $1.37\n"
    assert "ralph_monitor.agent.statusline" in imported(line.stderr)
    assert "site" not in imported(line.stderr) and outside_stdlib(imported(line.stderr)) == []
    # The recorded events went through (the foreground one before its command returned).
    wait_for(lambda: len(events(daemon.dsn, "event_type IN ('cc.PostToolUse', 'cc.PreToolUse')")) == 3,
             what="the three events")
