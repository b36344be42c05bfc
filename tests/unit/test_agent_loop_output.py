"""The loop wrapper's reading of specs and of `claude -p` output (json and stream-json), and
its telling a run that hit the usage limit from one that failed or talked about limits."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ralph_monitor.agent.loop import Spec, find_result, load_specs, result_fields
from ralph_monitor.agent.usage_limit import detect, reset_time
from ralph_monitor.errors import ConfigError

RESULT = {
    "type": "result", "subtype": "success", "is_error": False, "duration_ms": 48211, "duration_api_ms": 45002,
    "num_turns": 7, "result": "Implemented CR-02; 14 tests pass.", "stop_reason": "end_turn",
    "session_id": "9ecbeb02-4f54-4380-9b7b-38cdf9a92eab", "total_cost_usd": 0.4213,
    "usage": {"input_tokens": 24, "cache_creation_input_tokens": 13000, "cache_read_input_tokens": 90000,
              "output_tokens": 2100, "server_tool_use": {"web_search_requests": 0}, "service_tier": "standard"},
    "modelUsage": {"claude-sonnet-4-6": {"inputTokens": 24, "outputTokens": 2100, "cacheReadInputTokens": 90000,
                                         "cacheCreationInputTokens": 13000, "costUSD": 0.4213}},
    "permission_denials": [], "uuid": "d7f0c1e2-0000-4000-8000-000000000000",
}


def test_json_output_is_the_result_object() -> None:
    assert find_result(json.dumps(RESULT).encode() + b"\n") == RESULT
    assert find_result(b"warning: something\n" + json.dumps(RESULT).encode()) == RESULT


def test_stream_json_output_ends_with_the_result_line() -> None:
    lines = [
        {"type": "system", "subtype": "init", "session_id": RESULT["session_id"], "tools": ["Bash"], "model": "x"},
        {"type": "assistant", "message": {"content": [{"type": "text", "text": '{"type": "result"}'}]}},
        {"type": "user", "message": {"content": [{"type": "tool_result", "content": "ok"}]}},
        RESULT,
    ]
    output = b"\n".join(json.dumps(m).encode() for m in lines) + b"\n"
    assert find_result(output) == RESULT
    assert find_result(output[:-len(json.dumps(RESULT)) - 1]) is None  # killed before the result


def test_text_output_has_no_result() -> None:
    assert find_result(b"Done! I implemented the spec.\n") is None
    assert find_result(b"") is None


def test_result_fields() -> None:
    fields = result_fields(RESULT)
    assert fields["cost_usd"] == 0.4213
    assert fields["tokens_used"] == 24 + 13000 + 90000 + 2100
    assert fields["num_turns"] == 7 and fields["is_error"] is False and fields["subtype"] == "success"
    assert fields["output_summary"] == RESULT["result"]
    assert fields["claude_session_id"] == RESULT["session_id"]
    assert fields["model_usage"]["claude-sonnet-4-6"]["costUSD"] == 0.4213


def test_specs_from_a_file_and_a_directory(tmp_path: Path) -> None:
    listing = tmp_path / "specs.txt"
    listing.write_text("# tonight\nCR-01\n\n  CR-02  \n# CR-03 skipped\nCR-04\n")
    assert load_specs(listing) == [Spec("CR-01"), Spec("CR-02"), Spec("CR-04")]
    folder = tmp_path / "specs"
    folder.mkdir()
    for name in ("CR-02-vat.md", "CR-01-cart.md", ".hidden.md"):
        (folder / name).write_text(f"Implement {name}\n")
    assert [(s.id, Path(s.file).name) for s in load_specs(folder)] == [
        ("CR-01-cart", "CR-01-cart.md"), ("CR-02-vat", "CR-02-vat.md")]
    with pytest.raises(ConfigError, match="no such file"):
        load_specs(tmp_path / "missing")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no specs"):
        load_specs(tmp_path / "empty.txt")


NOW = datetime(2026, 11, 29, 4, 30, tzinfo=ZoneInfo("UTC")).timestamp()
"""Sunday 05:30 in Berlin."""
LIMITED = {**RESULT, "subtype": "success", "is_error": True, "num_turns": 1, "total_cost_usd": 0,
           "result": "Claude AI usage limit reached|1764400000"}
RATE_LIMITED = {**LIMITED, "api_error_status": 429,
                "result": 'API Error: 429 {"type":"error","error":{"type":"rate_limit_error","message":"This request '
                          'would exceed your account\'s rate limit. Please try again later."}}'}


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.mark.parametrize(("result", "source", "resets_at"), [
    (LIMITED, "result", 1764400000.0),
    ({**LIMITED, "result": "5-hour limit reached ∙ resets 3am (Europe/Berlin)"}, "result",
     at("2026-11-30T03:00:00+01:00")),
    ({**LIMITED, "result": "You've hit your limit · resets 4pm (Europe/Berlin)"}, "result",
     at("2026-11-29T16:00:00+01:00")),
    ({**LIMITED, "result": "You’ve hit your limit · resets Apr 23 at 4pm (America/Recife)"}, "result",
     at("2027-04-23T16:00:00-03:00")),
    ({**LIMITED, "result": "Claude usage limit reached. Your limit will reset at 9am (America/Chicago)."}, "result",
     at("2026-11-29T09:00:00-06:00")),
    ({**LIMITED, "result": "Weekly limit reached ∙ resets Dec 1, 10:30am (Europe/Berlin)"}, "result",
     at("2026-12-01T10:30:00+01:00")),
    ({**LIMITED, "result": "You've hit your limit · resets 4pm (Mars/Olympus_Mons)"}, "result", None),
    (RATE_LIMITED, "api_error_status", None),
    ({**RATE_LIMITED, "result": "API Error: 429 Too Many Requests"}, "api_error_status", None),
])
def test_a_result_at_the_usage_limit(result: dict[str, object], source: str, resets_at: float | None) -> None:
    found = detect(result, 1, "", now=NOW)
    assert found is not None and (found.source, found.resets_at) == (source, resets_at)
    assert found.message == result["result"]


@pytest.mark.parametrize("result", [
    RESULT,  # a success
    {**RESULT, "result": "Implemented CR-07: the usage limit reached banner; resets 3am in the test."},
    {**LIMITED, "is_error": False},  # the message without an error is the agent's output
    {**RESULT, "subtype": "error_max_turns", "is_error": True, "result": "Hit the turn limit (max_turns=30)"},
    {**RESULT, "is_error": True, "result": "Tests fail: rate limit reached in test_throttle.py; usage limit reached"},
    {**RESULT, "is_error": True, "api_error_status": 500, "result": "API Error: 500 overloaded_error"},
    {**RESULT, "api_error_status": 429},  # a 429 that Claude Code retried past
    {**RESULT, "is_error": True, "api_error_status": 429, "result": ""},  # no word of a limit
])
def test_look_alikes_are_not_the_usage_limit(result: dict[str, object]) -> None:
    assert detect(result, 1, "", now=NOW) is None


def test_text_output_at_the_usage_limit() -> None:
    found = detect(None, 1, "Claude AI usage limit reached|1764400000\n", now=NOW)
    assert found is not None and (found.source, found.resets_at) == ("output", 1764400000.0)
    assert detect(None, 0, "Claude AI usage limit reached|1764400000\n", now=NOW) is None  # it exited 0
    assert detect(None, 1, "FAILED test_limit.py: expected 'usage limit reached'\nexit 1\n", now=NOW) is None
    assert detect(None, 1, "error: the limit is 10\nlimit reached for retries\n", now=NOW) is None


def test_a_clock_reset_is_the_next_such_time() -> None:
    assert reset_time("resets 4:05am (UTC)", now=NOW) == at("2026-11-30T04:05:00+00:00")  # 04:30 passed
    assert reset_time("resets 12pm (UTC)", now=NOW) == at("2026-11-29T12:00:00+00:00")
    assert reset_time("resets 12am (UTC)", now=NOW) == at("2026-11-30T00:00:00+00:00")
    local = reset_time("5-hour limit reached ∙ resets 3am", now=NOW)  # no zone: the local one
    assert local is not None and NOW < local <= NOW + timedelta(days=1).total_seconds()
    assert (datetime.fromtimestamp(local).hour, datetime.fromtimestamp(local).minute) == (3, 0)
    for nothing in ("You've hit your limit", "resets soon", "resets in 5 hours", "resets 13pm (UTC)"):
        assert reset_time(nothing, now=NOW) is None
