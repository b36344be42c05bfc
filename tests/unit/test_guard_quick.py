"""`hook --guard`'s quick path (agent/guard_quick.py) without a daemon: where it finds the
session and the socket, when it leaves the decision to the full guard, and what it makes of a
reply. A stand-in server on a real Unix socket answers; tests/integration/test_loop_health.py
and test_claude_settings.py run the guard against the daemon."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ralph_monitor.agent.guard_quick import ASK_AGAIN, quick_verdict, top_session_id

SESSION = str(uuid.uuid4())


def hook_input(**extra: object) -> bytes:
    return json.dumps({"session_id": SESSION, "transcript_path": "/t.jsonl", "hook_event_name": "PreToolUse",
                       **extra}).encode()


def test_the_session_is_the_top_level_session_id() -> None:
    assert top_session_id(hook_input(tool_input={"session_id": str(uuid.uuid4())})) == SESSION
    assert top_session_id(b'{ "session_id" : "' + SESSION.upper().encode() + b'" }') == SESSION
    assert top_session_id(b'{"hook_event_name": "Stop"}') is None
    assert top_session_id(b'{"session_id": 5}') is None
    assert top_session_id(b'{"session_id": "not-a-uuid"}') is None


@pytest.mark.parametrize("raw", [
    b'{"tool_input": {"session_id": "' + SESSION.encode() + b'"}, "session_id": "x"}',  # nested first
    b'[{"session_id": "' + SESSION.encode() + b'"}]',
    b'{"cwd": "a\\"{", "session_id": "' + SESSION.encode() + b'"}',  # an escaped quote before it
    b'{"session_id": "' + SESSION[:8].encode() + b'\\u002d"}',
    b'{"session_id" "' + SESSION.encode() + b'"}',
])
def test_an_input_it_cannot_be_sure_of_goes_to_the_full_guard(raw: bytes) -> None:
    assert top_session_id(raw) is ASK_AGAIN


@pytest.fixture
def daemon_stand_in(tmp_path: Path) -> Iterator[tuple[str, list[bytes], list[bytes]]]:
    """A Unix socket answering each connection with the next canned reply; the questions it got."""
    path = str(tmp_path / "events.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()
    replies: list[bytes] = []
    questions: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                questions.append(conn.recv(4096))
                if replies:
                    conn.sendall(replies.pop(0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, replies, questions
    server.close()


def test_a_session_not_flagged_is_settled_here(daemon_stand_in: tuple[str, list[bytes], list[bytes]],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path, replies, questions = daemon_stand_in
    monkeypatch.delenv("RALPH_SESSION_ID", raising=False)
    monkeypatch.delenv("RALPH_MONITOR_SOCKET", raising=False)
    replies.append(json.dumps({"ok": True, "session_id": SESSION, "flagged": False}).encode() + b"\n")
    assert quick_verdict(["--socket", path], hook_input()) is None
    assert json.loads(questions[0]) == {"query": "session_flags", "session_id": SESSION}
    # Flagged: the full guard writes the stop message (and asks again).
    replies.append(json.dumps({"ok": True, "session_id": SESSION, "flagged": True, "reason": "x"}).encode() + b"\n")
    assert quick_verdict([f"--socket={path}"], hook_input()) is ASK_AGAIN
    # A refusal, a reply cut short, no answer: the guard stops nothing.
    replies.append(b'{"ok": false, "error": "invalid_query"}\n')
    assert quick_verdict(["--socket", path], hook_input()) is None
    replies.append(b'{"ok": true, "flagged": tr')
    assert quick_verdict(["--socket", path], hook_input()) is None
    assert quick_verdict(["--socket", path + ".missing"], hook_input()) is None


def test_the_loop_session_and_socket_come_from_the_environment(daemon_stand_in: tuple[str, list[bytes], list[bytes]],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path, replies, questions = daemon_stand_in
    loop_session = str(uuid.uuid4())
    monkeypatch.setenv("RALPH_MONITOR_SOCKET", path)
    monkeypatch.setenv("RALPH_SESSION_ID", loop_session.replace("-", ""))
    replies.append(b'{"ok": true, "flagged": false}\n')
    assert quick_verdict([], hook_input()) is None
    assert json.loads(questions[-1])["session_id"] == loop_session
    # A loop session that is no UUID: Claude Code's own, as the full guard does.
    monkeypatch.setenv("RALPH_SESSION_ID", "nope")
    replies.append(b'{"ok": true, "flagged": false}\n')
    assert quick_verdict([], hook_input()) is None
    assert json.loads(questions[-1])["session_id"] == SESSION
    # The socket of a config file: the full guard reads it.
    assert quick_verdict(["--config", "/etc/ralph-monitor/config.toml"], hook_input()) is ASK_AGAIN
    monkeypatch.delenv("RALPH_MONITOR_SOCKET")
    assert quick_verdict([], hook_input()) is ASK_AGAIN
    assert len(questions) == 2

