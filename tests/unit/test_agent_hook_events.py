"""The hook's mapping from Claude Code hook inputs to events (no daemon needed)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest

from ralph_monitor.agent.client import encode_event
from ralph_monitor.agent.hook import events_for, transcript_usage
from ralph_monitor.protocol import KNOWN_TYPES, Origin, parse_line
from tests.hook_payloads import (
    CC_SESSION, FINAL_REPLY, all_payloads, assistant_line, readme_hook_settings, write_transcript,
)

LOOP = {"RALPH_SESSION_ID": "6f1c2b4e-1111-4000-8000-000000000001", "RALPH_SPEC_ID": "CR-02"}
ORIGIN = Origin(host="test", uid=0, pid=0)


def wire_valid(event: dict) -> None:
    """The daemon would accept it."""
    from datetime import datetime, timezone

    line = encode_event(event).rstrip(b"\n")
    parse_line(line, received_at=datetime.now(timezone.utc), origin=ORIGIN)
    assert len(line) < 1 << 20


@pytest.mark.parametrize("name", sorted(all_payloads()))
def test_every_hook_event_maps_to_a_cc_event_in_the_loop_session(name: str, tmp_path: Path) -> None:
    transcript = tmp_path / "t.jsonl"
    write_transcript(transcript)
    payload = all_payloads(str(transcript))[name]
    events = events_for(json.dumps(payload).encode(), environ=LOOP)
    main = [e for e in events if e["type"] == f"cc.{name}"]
    assert len(main) == 1
    event = main[0]
    assert event["session_id"] == LOOP["RALPH_SESSION_ID"] and event["spec_id"] == "CR-02"
    assert uuid.UUID(event["event_id"]) and event["ts"].endswith("Z")
    data = event["data"]
    assert data["cc_session_id"] == CC_SESSION
    assert data["cwd"] == "/home/dev/shop" and data["permission_mode"] == "bypassPermissions"
    for key, value in payload.items():
        if key not in ("session_id", "hook_event_name", "tool_calls"):  # PostToolBatch: summarised
            assert data[key] == value, key
    if name in ("Stop", "SubagentStop", "SessionEnd", "StopFailure"):
        assert data["usage"]["tokens_used"] > 0
    else:
        assert "usage" not in data
    # Under a loop, the loop owns the session: no session_started / session_ended from the hook.
    assert not [e for e in events if e["type"] in ("session_started", "session_ended")]
    for e in events:
        wire_valid(e)


def test_permission_prompt_under_a_loop_is_an_intervention_request() -> None:
    payload = all_payloads()["Notification"]
    events = events_for(json.dumps(payload).encode(), environ=LOOP)
    assert [e["type"] for e in events] == ["cc.Notification", "intervention_request"]
    assert events[1]["data"]["message"] == "Claude needs your permission to use Bash"
    # Interactive (no loop): a permission dialog is the user's business, not a request.
    assert [e["type"] for e in events_for(json.dumps(payload).encode(), environ={})] == ["cc.Notification"]


def test_without_a_loop_claudes_session_is_the_session_and_starts_and_ends(tmp_path: Path) -> None:
    transcript = tmp_path / "t.jsonl"
    sums = write_transcript(transcript)
    payloads = all_payloads(str(transcript))
    start = events_for(json.dumps(payloads["SessionStart"]).encode(), environ={})
    assert [e["type"] for e in start] == ["session_started", "cc.SessionStart"]
    assert {e["session_id"] for e in start} == {CC_SESSION}
    assert start[0]["data"]["name"] == "claude shop"
    assert start[0]["data"]["metadata"]["model"] == "claude-sonnet-4-6"
    end = events_for(json.dumps(payloads["SessionEnd"]).encode(), environ={})
    assert [e["type"] for e in end] == ["cc.SessionEnd", "session_ended"]
    assert end[1]["data"] == {"status": "completed", "reason": "prompt_input_exit", "tokens_used": sums["tokens_used"],
                              "models": ["claude-haiku-4-5", "claude-sonnet-4-6"]}
    # A resumed session's start (or a second end) is the same event: stored once.
    again = events_for(json.dumps(payloads["SessionStart"]).encode(), environ={})
    assert again[0]["event_id"] == start[0]["event_id"]
    compact = dict(payloads["SessionStart"], source="compact")
    assert [e["type"] for e in events_for(json.dumps(compact).encode(), environ={})] == ["cc.SessionStart"]
    tool = events_for(json.dumps(payloads["PreToolUse"]).encode(), environ={})
    assert [e["type"] for e in tool] == ["cc.PreToolUse"] and "spec_id" not in tool[0]
    assert all(e["type"] not in KNOWN_TYPES or e["type"].startswith("session_") for e in start + end)


def test_transcript_usage_counts_each_request_once_per_model(tmp_path: Path) -> None:
    transcript = tmp_path / "t.jsonl"
    expected = write_transcript(transcript)
    assert transcript_usage(str(transcript)) == expected
    assert transcript_usage(str(tmp_path / "missing.jsonl"))["error"].endswith("No such file or directory")
    assert transcript_usage(None) is None
    # Out of time: what was summed so far, marked partial.
    assert transcript_usage(str(transcript), deadline=time.monotonic() - 1)["partial"] is True


@pytest.mark.parametrize("raw, problem", [
    (b"", "empty hook input"),
    (b"   \n", "empty hook input"),
    (b"{\"hook_event_name\": \"PreToolUse\", ", "not JSON"),
    (b"\xff\xfe garbage \x00\x01", "not JSON"),
    (b"[1, 2, 3]", "not an object"),
    (b"null", "not an object"),
])
def test_unreadable_input_is_recorded_as_a_hook_error(raw: bytes, problem: str) -> None:
    events = events_for(raw, environ=LOOP)
    assert [e["type"] for e in events] == ["cc.hook_error"]
    assert problem in events[0]["data"]["error"]
    assert events[0]["data"]["input_bytes"] == len(raw)
    assert events[0]["session_id"] == LOOP["RALPH_SESSION_ID"]
    wire_valid(events[0])


def test_big_and_odd_fields_are_cut_to_size() -> None:
    payload = all_payloads()["PostToolUse"]
    payload["tool_response"] = {"stdout": "x" * (10 << 20), "stderr": "", "lines": list(range(100_000)),
                                "deep": json.loads("[" * 50 + "]" * 50)}
    payload["tool_input"] = {"command": "cat big\x00file", "weird": "\ud800 lone surrogate"}
    payload["extra_" + "k" * 500] = 10 ** 400
    payload["hook_event_name"] = "PostToolUse"
    raw = json.dumps(payload).encode()
    assert len(raw) > 10 << 20
    started = time.monotonic()
    events = events_for(raw, max_field_bytes=4096, environ=LOOP)
    assert time.monotonic() - started < 0.5
    data = events[0]["data"]
    assert data["tool_response"]["stdout"].startswith("x" * 4096)
    assert data["tool_response"]["stdout"].endswith("[10485760 chars, truncated]")
    assert len(data["tool_response"]["lines"]) == 101
    assert data["tool_input"]["command"] == "cat big\ufffdfile"
    line = encode_event(events[0])
    assert len(line) < 64 << 10
    wire_valid(events[0])


def test_unknown_or_odd_event_names_still_map() -> None:
    assert events_for(b'{"hook_event_name": "FutureEvent", "x": 1}', environ={})[0]["type"] == "cc.FutureEvent"
    odd = events_for(b'{"hook_event_name": "no spaces allowed!", "session_id": "not-a-uuid"}', environ={})
    assert odd[0]["type"] == "cc.unknown" and odd[0]["data"]["hook_event_name"] == "no spaces allowed!"
    assert "session_id" not in odd[0] and odd[0]["data"]["cc_session_id"] == "not-a-uuid"
    assert events_for(b'{"x": 1}', environ={})[0]["type"] == "cc.unknown"


def socket_for(argv: list[str]) -> str:
    from ralph_monitor.agent import hook

    options = hook.Options(argv)
    return hook.socket_path_for(options, hook.read_config(options))


def test_socket_path_lookup_and_uuid_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ralph_monitor.agent import hook
    from ralph_monitor.agent.client import new_uuid
    from ralph_monitor.config import DEFAULT_CONFIG_PATH, Settings

    assert hook.DEFAULT_CONFIG == str(DEFAULT_CONFIG_PATH)
    assert hook.DEFAULT_SOCKET == Settings().socket_path
    monkeypatch.delenv("RALPH_MONITOR_SOCKET", raising=False)
    config = tmp_path / "config.toml"
    config.write_text('[socket]\npath = "/srv/rm.sock"\n[database]\nnonsense = 1\n')
    assert socket_for(["--config", str(config)]) == "/srv/rm.sock"
    monkeypatch.setenv("RALPH_MONITOR_CONFIG", str(config))
    assert socket_for([]) == "/srv/rm.sock"
    monkeypatch.setenv("RALPH_MONITOR_SOCKET", "/env.sock")
    assert socket_for([]) == "/env.sock"
    assert socket_for(["--socket=/opt.sock"]) == "/opt.sock"
    config.write_text("not [ toml")
    assert socket_for(["--config", str(config)]) == hook.DEFAULT_SOCKET
    options = hook.Options(["--timeout", "0.5", "--max-field-bytes=100", "--bogus", "--timeout", "x"])
    assert (options.timeout, options.max_field_bytes) == (0.5, 100)

    namespace = uuid.UUID(bytes=hook.HOOK_NAMESPACE)
    assert hook._uuid5("abc/session_started") == str(uuid.uuid5(namespace, "abc/session_started"))
    canonical = hook.canonical_uuid
    assert canonical("{6F1C2B4E-1111-4000-8000-000000000001}") == "6f1c2b4e-1111-4000-8000-000000000001"
    assert canonical("urn:uuid:6f1c2b4e111140008000000000000001") == "6f1c2b4e-1111-4000-8000-000000000001"
    assert canonical("6f1c2b4e-11114000-8000-000000000001 ") == "6f1c2b4e-1111-4000-8000-000000000001"
    for bad in ("abc123", 42, None, "6f1c2b4e--1111-4000-8000-000000000001", "6f1c2b4e-1111-4000-8000-0000000000012",
                "-6f1c2b4e111140008000000000000001", "6f1c2b4e-1111-4000-8000-00000000000g"):
        assert canonical(bad) is None, bad
    made = [uuid.UUID(new_uuid()) for _ in range(1000)]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in made)
    assert len(set(made)) == 1000
    millis = [u.int >> 80 for u in made]
    assert millis == sorted(millis) and abs(millis[-1] / 1000 - time.time()) < 5


def test_the_readme_installs_the_hook_for_every_event_tested_here() -> None:
    settings = readme_hook_settings()
    assert set(settings["hooks"]) == set(all_payloads())
    for groups in settings["hooks"].values():
        assert groups == [{"hooks": [{"type": "command", "command": "ralph-monitor hook", "timeout": 5}]}]


def _append_later(path: Path, line: str, delay_s: float) -> threading.Thread:
    def write() -> None:
        time.sleep(delay_s)
        with path.open("a") as transcript:
            transcript.write(line + "\n")
    thread = threading.Thread(target=write)
    thread.start()
    return thread


@pytest.mark.parametrize("earlier_turn_said_the_same", [False, True])
def test_stop_waits_until_the_transcript_holds_the_last_reply(tmp_path: Path, earlier_turn_said_the_same: bool) -> None:
    """Claude Code calls the Stop hook 20-100 ms before it writes the turn's last reply."""
    transcript = tmp_path / "t.jsonl"
    u1 = {"input_tokens": 5, "output_tokens": 50, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 0}
    u2 = {"input_tokens": 7, "output_tokens": 70, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 900}
    earlier = "Done." if earlier_turn_said_the_same else "Looking at it."
    lines = [json.dumps({"type": "user", "message": {"role": "user", "content": "first"}}),
             assistant_line("req_1", "msg_1", "claude-sonnet-4-6", u1, earlier),
             json.dumps({"type": "user", "message": {"role": "user", "content": "second"}})]
    transcript.write_text("\n".join(lines) + "\n")
    payload = dict(all_payloads(str(transcript))["Stop"], last_assistant_message="Done.")
    writer = _append_later(transcript, assistant_line("req_2", "msg_2", "claude-sonnet-4-6", u2, "Done."), 0.08)
    started = time.monotonic()
    events = events_for(json.dumps(payload).encode(), environ=LOOP, transcript_deadline=started + 0.5)
    writer.join()
    usage = events[0]["data"]["usage"]
    assert usage["requests"] == 2 and usage["tokens_used"] == sum(u1.values()) + sum(u2.values())
    assert 60 <= usage["waited_ms"] < 400 and "last_reply_missing" not in usage


def test_stop_gives_up_at_the_deadline_and_says_so(tmp_path: Path) -> None:
    transcript = tmp_path / "t.jsonl"
    write_transcript(transcript)
    payload = dict(all_payloads(str(transcript))["Stop"], last_assistant_message="A reply never written")
    started = time.monotonic()
    events = events_for(json.dumps(payload).encode(), environ=LOOP, transcript_deadline=started + 0.15)
    assert 0.15 <= time.monotonic() - started < 0.4
    assert events[0]["data"]["usage"]["last_reply_missing"] is True
    # The reply is there at once: no wait.
    payload["last_assistant_message"] = FINAL_REPLY
    started = time.monotonic()
    events = events_for(json.dumps(payload).encode(), environ=LOOP, transcript_deadline=started + 0.5)
    assert time.monotonic() - started < 0.1 and "waited_ms" not in events[0]["data"]["usage"]


def test_message_display_is_ignored_and_a_tool_batch_summarised() -> None:
    display = {"session_id": CC_SESSION, "hook_event_name": "MessageDisplay", "turn_id": "t", "message_id": "m",
               "index": 3, "final": False, "delta": "a streamed line\n"}
    assert events_for(json.dumps(display).encode(), environ=LOOP) == []
    batch = {"session_id": CC_SESSION, "hook_event_name": "PostToolBatch", "prompt_id": "p", "tool_calls": [
        {"tool_name": "Bash", "tool_input": {"command": "pytest"}, "tool_use_id": "toolu_1", "tool_response": "ok" * 900},
        {"tool_name": "Read", "tool_input": {"file_path": "/a"}, "tool_use_id": "toolu_2", "tool_response": "x"}]}
    data = events_for(json.dumps(batch).encode(), environ=LOOP)[0]["data"]
    assert data["tool_count"] == 2 and "tool_calls" not in data
    assert data["tools"] == [{"tool_name": "Bash", "tool_use_id": "toolu_1"}, {"tool_name": "Read", "tool_use_id": "toolu_2"}]


def test_session_end_records_the_clis_own_cost(tmp_path: Path) -> None:
    transcript = tmp_path / "t.jsonl"
    sums = write_transcript(transcript)
    with transcript.open("a") as f:
        f.write(json.dumps({"type": "cost-state", "sessionId": CC_SESSION, "totalCostUSD": 0.5,
                            "modelUsage": {"claude-sonnet-4-6": {"costUSD": 0.4}, "claude-haiku-4-5": {"costUSD": 0.1}}})
                + "\n")
        f.write(json.dumps({"type": "cost-state", "sessionId": CC_SESSION, "totalCostUSD": 0.75,
                            "modelUsage": {"claude-sonnet-4-6": {"costUSD": 0.6}, "claude-haiku-4-5": {"costUSD": 0.15}}})
                + "\n")
    end = events_for(json.dumps(all_payloads(str(transcript))["SessionEnd"]).encode(), environ={})
    assert end[0]["data"]["cost"] == {"cost_usd": 0.75, "source": "api",
                                      "by_model": {"claude-sonnet-4-6": 0.6, "claude-haiku-4-5": 0.15}}
    assert (end[1]["type"], end[1]["data"]["cost_usd"], end[1]["data"]["cost_source"]) == ("session_ended", 0.75, "api")
    assert end[1]["data"]["tokens_used"] == sums["tokens_used"]
