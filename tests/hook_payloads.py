"""Claude Code hook inputs shaped like the real ones (fields per the hooks reference), the
status-line input, and transcript lines as Claude Code writes them (a streamed response repeats
its usage)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CC_SESSION = "00893aaf-19fa-41d2-8238-13269b9b3ca0"
FINAL_REPLY = "I've fixed the rounding; tests pass."
"""The Stop input's last_assistant_message, and the last reply `write_transcript` writes."""


def common(event: str, transcript: str = "/nonexistent/transcript.jsonl", **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "session_id": CC_SESSION, "transcript_path": transcript, "cwd": "/home/dev/shop",
        "permission_mode": "bypassPermissions", "hook_event_name": event,
    }
    payload.update(extra)
    return payload


def all_payloads(transcript: str = "/nonexistent/transcript.jsonl") -> dict[str, dict[str, Any]]:
    """One input per hook event the README installs the hook for."""
    bash = {"command": "pytest -q", "description": "Run the tests", "timeout": 120000}
    return {
        "SessionStart": common("SessionStart", transcript, source="startup", model="claude-sonnet-4-6"),
        "UserPromptSubmit": common("UserPromptSubmit", transcript, prompt="Implement CR-02: VAT rounding"),
        "PreToolUse": common("PreToolUse", transcript, tool_name="Bash", tool_input=bash,
                             tool_use_id="toolu_01ABC123"),
        "PermissionRequest": common("PermissionRequest", transcript, tool_name="Bash", tool_input=bash,
                                    permission_suggestions=[{"type": "addRules", "behavior": "allow",
                                                             "rules": [{"toolName": "Bash", "ruleContent": "pytest -q"}],
                                                             "destination": "localSettings"}]),
        "PermissionDenied": common("PermissionDenied", transcript, tool_name="Bash", tool_input=bash,
                                   tool_use_id="toolu_01ABC124", reason="Auto mode denied: outside the project"),
        "PostToolUse": common("PostToolUse", transcript, tool_name="Write",
                              tool_input={"file_path": "/home/dev/shop/vat.py", "content": "ROUND = 2\n"},
                              tool_response={"filePath": "/home/dev/shop/vat.py", "success": True},
                              tool_use_id="toolu_01ABC125"),
        "PostToolBatch": common("PostToolBatch", transcript, prompt_id="b0b07faa-7c89-4fc8-8f74-4d58cdea5e37",
                                tool_calls=[{"tool_name": "Write", "tool_use_id": "toolu_01ABC125",
                                             "tool_input": {"file_path": "/home/dev/shop/vat.py"},
                                             "tool_response": "File created successfully"}]),
        "PostToolUseFailure": common("PostToolUseFailure", transcript, tool_name="Bash", tool_input=bash,
                                     tool_use_id="toolu_01ABC126",
                                     error="Command exited with non-zero status code 1", is_interrupt=False),
        "Notification": common("Notification", transcript, message="Claude needs your permission to use Bash",
                               title="Permission needed", notification_type="permission_prompt"),
        "SubagentStart": common("SubagentStart", transcript, agent_id="agent-abc123", agent_type="Explore"),
        "SubagentStop": common("SubagentStop", transcript, stop_hook_active=False, agent_id="agent-abc123",
                               agent_type="Explore", agent_transcript_path=transcript,
                               last_assistant_message="Found 3 call sites."),
        "TaskCreated": common("TaskCreated", transcript, task_id="task-001", task_subject="Fix VAT rounding"),
        "TaskCompleted": common("TaskCompleted", transcript, task_id="task-001", task_subject="Fix VAT rounding"),
        "Stop": common("Stop", transcript, stop_hook_active=False,
                       last_assistant_message=FINAL_REPLY),
        "StopFailure": common("StopFailure", transcript, error="rate_limit", error_details="429 Too Many Requests",
                              last_assistant_message="API Error: Rate limit reached"),
        "TeammateIdle": common("TeammateIdle", transcript, teammate_name="researcher", team_name="shop"),
        "PreCompact": common("PreCompact", transcript, trigger="auto", custom_instructions=""),
        "PostCompact": common("PostCompact", transcript, trigger="auto", compact_summary="Summary of the work..."),
        "SessionEnd": common("SessionEnd", transcript, reason="prompt_input_exit"),
    }


def status_input(**rate_limits: Any) -> dict[str, Any]:
    """What Claude Code gives a status-line command on stdin (the fields 2.1.328 sends)."""
    payload: dict[str, Any] = {
        "session_id": CC_SESSION, "transcript_path": "/nonexistent", "cwd": "/src/app",
        "model": {"id": "claude-opus-4-6", "display_name": "Opus 4.6"},
        "workspace": {"current_dir": "/src/app", "project_dir": "/src/app", "added_dirs": []},
        "version": "2.1.328", "output_style": {"name": "default"},
        "cost": {"total_cost_usd": 1.372, "total_duration_ms": 60000, "total_api_duration_ms": 20000,
                 "total_lines_added": 12, "total_lines_removed": 3},
        "context_window": {"total_input_tokens": 26100, "total_output_tokens": 1800,
                           "context_window_size": 200000, "used_percentage": 13, "remaining_percentage": 87},
        "exceeds_200k_tokens": False}
    if rate_limits:
        payload["rate_limits"] = rate_limits
    return payload


def readme_hook_settings() -> dict[str, Any]:
    """The `.claude/settings.json` the README tells users to install."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index('```json\n{\n  "hooks"') + len("```json\n")
    return json.loads(readme[start:readme.index("```", start)])


def assistant_line(request_id: str, message_id: str, model: str, usage: dict[str, int], text: str = "…") -> str:
    return json.dumps({
        "parentUuid": "p", "isSidechain": False, "userType": "external", "cwd": "/home/dev/shop",
        "sessionId": CC_SESSION, "version": "2.1.0", "type": "assistant", "requestId": request_id,
        "uuid": f"u-{request_id}-{len(text)}", "timestamp": "2026-11-25T02:00:00.000Z",
        "message": {"id": message_id, "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": text}], "stop_reason": None,
                    "usage": {**usage, "service_tier": "standard"}},
    })


def write_transcript(path: Path) -> dict[str, Any]:
    """A transcript with two requests on one model (one streamed as three lines), one on
    another (the last reply, FINAL_REPLY), user lines that mention "usage", and a synthetic
    error line. Returns the sums."""
    u1 = {"input_tokens": 4, "cache_creation_input_tokens": 24205, "cache_read_input_tokens": 11648, "output_tokens": 268}
    u2 = {"input_tokens": 10, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 30000, "output_tokens": 500}
    u3 = {"input_tokens": 7, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 0, "output_tokens": 50}
    lines = [
        json.dumps({"type": "user", "message": {"role": "user", "content": "what is the token usage?"}}),
        assistant_line("req_1", "msg_1", "claude-sonnet-4-6", u1, "thinking"),
        assistant_line("req_1", "msg_1", "claude-sonnet-4-6", u1, "tool call"),
        assistant_line("req_1", "msg_1", "claude-sonnet-4-6", u1, "final"),
        json.dumps({"type": "user", "message": {"role": "user", "content": [
            {"type": "tool_result", "content": '{"type":"assistant","usage":{"input_tokens":999}}'}]}}),
        assistant_line("req_2", "msg_2", "claude-sonnet-4-6", u2),
        assistant_line("req_4", "msg_4", "<synthetic>", {"input_tokens": 0, "output_tokens": 0}),
        "{not json",
        assistant_line("req_3", "msg_3", "claude-haiku-4-5", u3, FINAL_REPLY),
    ]
    path.write_text("\n".join(lines) + "\n")
    sonnet = {k: u1[k] + u2[k] for k in u1}
    return {
        "tokens_used": sum(sonnet.values()) + sum(u3.values()),
        "by_model": {"claude-sonnet-4-6": {**sonnet, "requests": 2}, "claude-haiku-4-5": {**u3, "requests": 1}},
        "requests": 3,
    }
