"""The loop wrapper's reading of specs and of `claude -p` output (json and stream-json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ralph_monitor.agent.loop import Spec, find_result, load_specs, result_fields
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
