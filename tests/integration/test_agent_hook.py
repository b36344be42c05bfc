"""`ralph-monitor hook` as Claude Code runs it: a process per hook call, JSON on stdin. It
must always exit 0, quickly, print nothing, and store what it can — daemon up, down or hung.
The call returns as soon as it has read its input; a detached child records it, so the tests
wait for what the child stores."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from ralph_monitor.agent.spool import ClientSpool
from tests.agent_tools import BIN, agent_env, events, settle, wait_for
from tests.conftest import Daemon, query
from tests.hook_payloads import CC_SESSION, all_payloads, write_transcript

LOOP_SESSION = "6f1c2b4e-3333-4000-8000-000000000003"
HARD_LIMIT_S = 1.0
SLACK_S = 0.5
"""Interpreter start-up before the hook's own timer starts, on a loaded CI machine."""
TYPICAL_CALL_S = 0.25
"""What Claude Code typically waits for: Python's start-up and reading stdin, the rest is detached."""


def stored(dsn: str, count: int) -> list[dict[str, Any]]:
    """The events, once there are `count` of them (the detached children have delivered)."""
    def enough() -> list[dict[str, Any]] | None:
        rows = events(dsn)
        return rows if len(rows) >= count else None
    return wait_for(enough, what=f"{count} events stored")


def run_hook(payload: dict[str, Any] | bytes, env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[bytes], float]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    started = time.monotonic()
    result = subprocess.run([str(BIN / "ralph-monitor"), "hook", *args], input=raw, capture_output=True,
                            env=env, timeout=10)
    return result, time.monotonic() - started


def assert_quiet_success(result: subprocess.CompletedProcess[bytes], elapsed: float,
                         limit: float = HARD_LIMIT_S + SLACK_S) -> None:
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    assert elapsed < limit, elapsed


def test_every_hook_event_is_recorded_in_the_loops_session(daemon: Daemon, tmp_path: Path) -> None:
    transcript = tmp_path / "transcript.jsonl"
    usage = write_transcript(transcript)
    env = agent_env(tmp_path / "spool", RALPH_SESSION_ID=LOOP_SESSION, RALPH_SPEC_ID="CR-07",
                    RALPH_MONITOR_SOCKET=daemon.socket_path)
    payloads = all_payloads(str(transcript))
    times = []
    for payload in payloads.values():
        result, elapsed = run_hook(payload, env)
        assert_quiet_success(result, elapsed)
        times.append(elapsed)
    rows = stored(daemon.dsn, len(payloads) + 1)
    types = sorted(r["event_type"] for r in rows)
    assert types == sorted([f"cc.{name}" for name in payloads] + ["intervention_request"])
    assert {(r["session_id"], r["spec_id"]) for r in rows} == {(LOOP_SESSION, "CR-07")}
    stop = next(r for r in rows if r["event_type"] == "cc.Stop")["payload"]["data"]
    assert stop["usage"]["tokens_used"] == usage["tokens_used"]
    assert stop["usage"]["by_model"] == usage["by_model"]
    assert stop["last_assistant_message"] == "I've fixed the rounding; tests pass."
    tool = next(r for r in rows if r["event_type"] == "cc.PostToolUse")["payload"]["data"]
    assert tool["tool_name"] == "Write" and tool["tool_response"]["success"] is True
    assert sorted(times)[len(times) // 2] < TYPICAL_CALL_S  # a Python start-up, not the work
    settle(daemon.dsn)
    pending = query(daemon.dsn, "SELECT message FROM interventions WHERE session_id = %s", (LOOP_SESSION,))
    assert [p["message"] for p in pending] == ["Claude needs your permission to use Bash"]


def test_garbage_empty_huge_and_missing_transcript_still_exit_0_and_store_what_they_can(daemon: Daemon,
                                                                                         tmp_path: Path) -> None:
    env = agent_env(tmp_path / "spool", RALPH_MONITOR_SOCKET=daemon.socket_path)
    huge = all_payloads()["PostToolUse"]
    huge["tool_response"] = {"stdout": "y" * (10 << 20), "stderr": "", "interrupted": False}
    stop_missing = all_payloads(str(tmp_path / "gone.jsonl"))["Stop"]
    for payload in (b"", b"\x00\xff{{{ not json", b'{"hook_event_name": "PreToolUse", "tool_inp', huge, stop_missing):
        result, elapsed = run_hook(payload, env)
        assert_quiet_success(result, elapsed)
    rows = stored(daemon.dsn, 5)
    assert [r["event_type"] for r in rows] == ["cc.hook_error"] * 3 + ["cc.PostToolUse", "cc.Stop"]
    errors = [r["payload"]["data"]["error"] for r in rows[:3]]
    assert errors[0] == "empty hook input" and "not JSON" in errors[1] and "not JSON" in errors[2]
    big = rows[3]["payload"]["data"]["tool_response"]["stdout"]
    assert len(big) < 5000 and big.endswith("[10485760 chars, truncated]")
    assert rows[3]["session_id"] == CC_SESSION
    assert "No such file" in rows[4]["payload"]["data"]["usage"]["error"]
    # A config file that does not exist (or is broken) does not fail the agent either.
    result, elapsed = run_hook(all_payloads()["PreToolUse"], {**env, "RALPH_MONITOR_CONFIG": "/nonexistent.toml"},
                               "--config", "/nonexistent.toml")
    assert_quiet_success(result, elapsed)
    # Nor do unknown options.
    result, elapsed = run_hook(all_payloads()["PreToolUse"], env, "--no-such-option")
    assert_quiet_success(result, elapsed)
    assert len(stored(daemon.dsn, 6)) == 6  # the bad-config call went to the default socket (or its spool)


def test_daemon_down_the_hook_spools_then_the_next_call_delivers_in_order_exactly_once(daemon_factory: Any,
                                                                                        tmp_path: Path) -> None:
    d = daemon_factory()
    d.write_config()
    env = agent_env(tmp_path / "spool", RALPH_SESSION_ID=LOOP_SESSION, RALPH_SPEC_ID="CR-08",
                    RALPH_MONITOR_CONFIG=str(d.config_path))
    payloads = list(all_payloads().values())[:6]
    for payload in payloads[:5]:
        result, elapsed = run_hook(payload, env)
        assert_quiet_success(result, elapsed)
    spool = ClientSpool.for_socket(d.socket_path, tmp_path / "spool")
    wait_for(lambda: spool.pending_count() == 5, what="5 events spooled")
    d.start()
    result, elapsed = run_hook(payloads[5], env)
    assert_quiet_success(result, elapsed)
    rows = stored(d.dsn, 6)
    # In the order Claude Code called the hook, whichever child spooled first.
    assert [r["event_type"] for r in rows] == [f"cc.{p['hook_event_name']}" for p in payloads]
    assert len({r["event_id"] for r in rows}) == 6
    assert not spool.has_pending()


def test_a_hung_daemon_costs_at_most_the_time_limit_and_the_event_is_spooled(tmp_path: Path) -> None:
    path = str(tmp_path / "hung.sock")
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(path)
    hung.listen(100)  # accepts connections (in the kernel) but never answers
    try:
        env = agent_env(tmp_path / "spool", RALPH_MONITOR_SOCKET=path)
        result, elapsed = run_hook(all_payloads()["PreToolUse"], env)
        assert_quiet_success(result, elapsed)
        # In the foreground (as the agent would wait for it), the time limit bounds the call.
        result, elapsed = run_hook(all_payloads()["PostToolUse"], env, "--timeout", "0.5", "--foreground")
        assert_quiet_success(result, elapsed, limit=0.5 + SLACK_S)
        result, elapsed = run_hook(all_payloads()["Stop"], env, "--foreground")
        assert_quiet_success(result, elapsed)
        spool = ClientSpool.for_socket(path, tmp_path / "spool")
        wait_for(lambda: spool.pending_count() == 3, what="3 events spooled")
    finally:
        hung.close()


def test_a_claude_session_without_a_loop_starts_and_ends(daemon: Daemon, tmp_path: Path) -> None:
    transcript = tmp_path / "transcript.jsonl"
    usage = write_transcript(transcript)
    env = agent_env(tmp_path / "spool", RALPH_MONITOR_SOCKET=daemon.socket_path)
    payloads = all_payloads(str(transcript))
    for name in ("SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop", "SessionEnd"):
        result, elapsed = run_hook(payloads[name], env)
        assert_quiet_success(result, elapsed)
    stored(daemon.dsn, 8)
    settle(daemon.dsn, lambda: query(daemon.dsn, "SELECT 1 FROM sessions WHERE end_time IS NOT NULL"))
    row = query(daemon.dsn, "SELECT * FROM sessions")[0]
    assert str(row["id"]) == CC_SESSION
    assert (row["name"], row["execution_state"], row["tokens_used"]) == ("claude shop", "completed", usage["tokens_used"])
    assert row["event_count"] == 8
