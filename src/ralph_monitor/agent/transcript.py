"""What the hook reads from a Claude Code transcript (`~/.claude/projects/<dir>/<session>.jsonl`).

Token usage per model: each assistant line carries `message.usage`, and a response streamed
as several content blocks is written as several lines repeating the same usage, so each API
request counts once (`requestId`, else `message.id`). Lines of the model `<synthetic>` (an
error Claude Code wrote itself) cost nothing and are skipped.

The last reply: Claude Code calls the Stop hook 20 to 100 ms before it appends the turn's
last assistant message to the transcript, so the hook reads the file incrementally
(`read()` again picks up only what was appended) until the reply it was told about
(`last_assistant_message`) is there, within its time budget.

The cost: the CLI keeps its own running total in a `cost-state` line (the last one wins),
with the cost per model as the API's prices gave it.

Standard library only (see `ralph_monitor.agent`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
SYNTHETIC_MODEL = "<synthetic>"
MAX_MODEL_CHARS = 200


def reply_text(message: Any) -> str:
    """The text blocks of an assistant message, joined (empty for a tool call alone)."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "\n".join(b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str))


def same_reply(expected: str, written: str) -> bool:
    """Whether the reply Claude Code reported is the one in the transcript: equal, or (one
    message written as several lines, one per text block) ending with the line's text."""
    a, b = expected.strip(), written.strip()
    return bool(b) and (a == b or a.endswith(b))


class TranscriptTally:
    """Usage, last reply and cost of one transcript, read incrementally."""

    def __init__(self, path: str) -> None:
        self.path = os.path.expanduser(path)
        self.offset = 0
        self.lines = 0
        self.per_request: dict[str, tuple[str, dict[str, int]]] = {}
        self.last_reply: str | None = None
        """Text of the last assistant line since the last user line (None: none since)."""
        self.cost_state: dict[str, Any] | None = None
        self.error: str | None = None
        self.partial = False

    def read(self, deadline: float | None = None) -> None:
        """Take in the complete lines appended since the last call (until `deadline`)."""
        self.partial = False
        try:
            with open(self.path, "rb") as transcript:
                transcript.seek(self.offset)
                for line in transcript:
                    if deadline is not None and self.lines % 64 == 0 and time.monotonic() > deadline:
                        self.partial = True
                        break
                    if not line.endswith(b"\n"):
                        break  # still being written: read it next time
                    self.offset += len(line)
                    self.lines += 1
                    self._take(line)
        except OSError as exc:
            self.error = f"transcript {self.path[:500]}: {exc.strerror or exc}"

    def holds_reply(self, expected: str) -> bool:
        return self.last_reply is not None and same_reply(expected, self.last_reply)

    def _take(self, line: bytes) -> None:
        if b'"assistant"' in line:
            entry = _json(line)
            if entry.get("type") == "assistant":
                self._assistant(entry, line)
        elif b'"user"' in line:
            if _json(line).get("type") == "user":
                self.last_reply = None
        elif b'"cost-state"' in line:
            entry = _json(line)
            if entry.get("type") == "cost-state":
                self.cost_state = entry

    def _assistant(self, entry: dict[str, Any], line: bytes) -> None:
        message = entry.get("message")
        if not isinstance(message, dict):
            return
        self.last_reply = reply_text(message)
        usage = message.get("usage")
        model = message.get("model") if isinstance(message.get("model"), str) else "unknown"
        if not isinstance(usage, dict) or model == SYNTHETIC_MODEL:
            return
        key = str(entry.get("requestId") or message.get("id") or f"line {self.lines}")
        counts = {f: usage[f] for f in USAGE_FIELDS if isinstance(usage.get(f), int)}
        seen = self.per_request.get(key)
        if seen is not None:
            counts = {f: max(counts.get(f, 0), seen[1].get(f, 0)) for f in USAGE_FIELDS}
        self.per_request[key] = (model[:MAX_MODEL_CHARS], counts)

    def usage(self) -> dict[str, Any]:
        """tokens_used, requests and by_model (tokens and requests per model); `error` if the
        file could not be read, `partial` if the time ran out before its end."""
        if self.error is not None and not self.per_request:
            return {"error": self.error}
        by_model: dict[str, dict[str, int]] = {}
        for model, counts in self.per_request.values():
            totals = by_model.setdefault(model, {f: 0 for f in USAGE_FIELDS} | {"requests": 0})
            for name in USAGE_FIELDS:
                totals[name] += counts.get(name, 0)
            totals["requests"] += 1
        result: dict[str, Any] = {
            "tokens_used": sum(t[f] for t in by_model.values() for f in USAGE_FIELDS),
            "requests": len(self.per_request),
            "by_model": by_model,
        }
        if self.partial:
            result["partial"] = True
        return result

    def cost(self) -> dict[str, Any] | None:
        """The CLI's own total from the last `cost-state` line: cost_usd, per model, source."""
        state = self.cost_state
        total = state.get("totalCostUSD") if state else None
        if not isinstance(total, (int, float)) or isinstance(total, bool):
            return None
        by_model = {}
        models = state.get("modelUsage") if state else None
        for model, usage in (models.items() if isinstance(models, dict) else ()):
            cost = usage.get("costUSD") if isinstance(usage, dict) else None
            if isinstance(cost, (int, float)) and not isinstance(cost, bool):
                by_model[str(model)[:MAX_MODEL_CHARS]] = cost
        return {"cost_usd": total, "by_model": by_model, "source": "api"}


def _json(line: bytes) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except ValueError:
        return {}
    return entry if isinstance(entry, dict) else {}
