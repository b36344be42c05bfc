"""Claude Code transcripts as the CLI writes them (the line shapes of `@anthropic-ai/claude-code`
2.1.328, read off its own files), generated in bulk: a month of a user's sessions, for the
import tests and bench/import.py.

What real transcripts hold, and the generator too: a reply streamed as one line per content
block, all repeating the request's usage; tool calls and their results; an API error written
by the CLI itself (model `<synthetic>`); a subagent's requests in `<session>/subagents/`; a
resumed session whose new file starts with a copy of the old one; the CLI's `cost-state` line
(newer versions) or a `costUSD` on each line (older ones); secrets in a shell command.

`Truth` adds up what was generated (tokens per day and model, each request once), for a test
to compare an import or ccusage with.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
MODELS = ("claude-sonnet-4-5-20250929", "claude-opus-4-1-20250805", "claude-haiku-4-5-20251001")
VERSION = "2.1.328"
SECRET_COMMAND = "export OPENAI_API_KEY=sk-" + "proj-" + "Zx81" * 20 + " && ./deploy.sh"


@dataclass
class Truth:
    tokens: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    """day -> model -> usage field -> tokens"""
    sessions: int = 0
    turns: int = 0
    tool_calls: int = 0
    api_errors: int = 0

    def add(self, day: str, model: str, usage: dict[str, int]) -> None:
        totals = self.tokens.setdefault(day, {}).setdefault(model, {f: 0 for f in USAGE_FIELDS})
        for name in USAGE_FIELDS:
            totals[name] += usage[name]

    def total(self) -> int:
        return sum(u[f] for models in self.tokens.values() for u in models.values() for f in USAGE_FIELDS)


class TranscriptWriter:
    """Writes sessions into `projects` (the layout of ~/.claude/projects)."""

    def __init__(self, projects: Path, seed: int = 15, padding: int = 0) -> None:
        self.projects = projects
        self.rng = random.Random(seed)
        self.truth = Truth()
        self.padding = padding
        """Average characters of text added to replies and tool outputs (real ones are long)."""

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _filler(self) -> str:
        if not self.padding:
            return ""
        words = ("the", "test", "fails", "because", "rounding", "of", "VAT", "in", "checkout.py", "line", "42")
        text = " ".join(self.rng.choice(words) for _ in range(self.rng.randint(0, self.padding // 3)))
        return "\n" + text

    def _usage(self) -> dict[str, Any]:
        rng = self.rng
        usage = {"input_tokens": rng.randint(1, 400), "output_tokens": rng.randint(5, 3000),
                 "cache_creation_input_tokens": rng.choice((0, rng.randint(100, 30000))),
                 "cache_read_input_tokens": rng.randint(0, 120000)}
        return {**usage, "cache_creation": {"ephemeral_5m_input_tokens": usage["cache_creation_input_tokens"],
                                            "ephemeral_1h_input_tokens": 0},
                "service_tier": "standard", "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0}}

    def session(self, start: datetime, *, project: str = "shop", turns: int = 4, model: str | None = None,
                cost_style: str = "cost-state", subagent: bool = False, api_error: bool = False,
                secret: bool = False, resume_of: Path | None = None) -> Path:
        """One session file (and a subagent file); returns the main file's path."""
        rng = self.rng
        session_id = self._uuid()
        cwd = f"/home/dev/{project}"
        folder = self.projects / cwd.replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{session_id}.jsonl"
        model = model or rng.choice(MODELS)
        clock = [start]
        base = {"userType": "external", "entrypoint": "cli", "cwd": cwd, "sessionId": session_id,
                "version": VERSION, "gitBranch": "main"}
        lines: list[dict[str, Any]] = []
        if resume_of is not None:  # the CLI copies the resumed conversation into the new file
            for line in resume_of.read_text().splitlines():
                entry = json.loads(line)
                if entry.get("type") in ("user", "assistant"):
                    lines.append({**entry, "sessionId": session_id})
        parent: str | None = None
        cost_total = 0.0
        model_usage: dict[str, dict[str, Any]] = {}

        def tick(seconds: float) -> str:
            clock[0] += timedelta(seconds=seconds)
            return clock[0].isoformat(timespec="milliseconds").replace("+00:00", "Z")

        def request(blocks: list[dict[str, Any]], chosen: str, sidechain: bool = False,
                    sink: list[dict[str, Any]] | None = None) -> None:
            nonlocal parent, cost_total
            usage = self._usage()
            message_id, request_id = f"msg_{self._uuid().replace('-', '')[:24]}", f"req_{self._uuid().replace('-', '')[:24]}"
            ts = tick(rng.uniform(2, 30))
            self.truth.add(ts[:10], chosen, usage)
            cost = round(sum(usage[f] for f in USAGE_FIELDS) * 3e-6, 6)
            cost_total += cost
            totals = model_usage.setdefault(chosen, {"costUSD": 0.0})
            totals["costUSD"] += cost
            for block in blocks:
                uid = self._uuid()
                line = {"parentUuid": parent, "isSidechain": sidechain, "message": {
                    "id": message_id, "type": "message", "role": "assistant", "model": chosen, "content": [block],
                    "stop_reason": "tool_use" if blocks[-1]["type"] == "tool_use" else "end_turn",
                    "stop_sequence": None, "usage": usage}, "requestId": request_id, "type": "assistant",
                    "uuid": uid, "timestamp": ts, **base}
                if cost_style == "costUSD":
                    line["costUSD"] = cost
                (sink if sink is not None else lines).append(line)
                parent = uid

        for _ in range(turns):
            self.truth.turns += 1
            prompt_id = self._uuid()
            uid = self._uuid()
            lines.append({"parentUuid": parent, "isSidechain": False, "promptId": prompt_id, "type": "user",
                          "message": {"role": "user", "content": rng.choice(
                              ("Fix the failing VAT test", "Add a CSV export", "Why is the build slow?"))},
                          "uuid": uid, "timestamp": tick(rng.uniform(20, 300)), **base})
            parent = uid
            for _ in range(rng.randint(0, 3)):
                tool_id = f"toolu_{self._uuid().replace('-', '')[:24]}"
                command = SECRET_COMMAND if secret else rng.choice(("pytest -q", "git status", "ls src"))
                request([{"type": "text", "text": "Let me check." + self._filler()},
                         {"type": "tool_use", "id": tool_id, "name": "Bash",
                          "input": {"command": command, "description": "Run it"}}], model)
                secret = False
                failed = rng.random() < 0.2
                output = ("1 failed, 12 passed" if failed else "ok") + self._filler()
                uid = self._uuid()
                lines.append({"parentUuid": parent, "isSidechain": False, "promptId": prompt_id, "type": "user",
                              "message": {"role": "user", "content": [{"tool_use_id": tool_id, "type": "tool_result",
                                                                       "content": output, "is_error": failed}]},
                              "uuid": uid, "timestamp": tick(rng.uniform(1, 60)),
                              "toolUseResult": {"stdout": output, "stderr": "", "interrupted": False},
                              "sourceToolAssistantUUID": parent, **base})
                parent = uid
                self.truth.tool_calls += 1
            if api_error:
                lines.append({"parentUuid": parent, "isSidechain": False, "type": "assistant", "uuid": self._uuid(),
                              "timestamp": tick(1), "isApiErrorMessage": True, "message": {
                                  "id": self._uuid(), "type": "message", "role": "assistant", "model": "<synthetic>",
                                  "content": [{"type": "text", "text": "API Error: 529 Overloaded"}],
                                  "usage": {f: 0 for f in USAGE_FIELDS}}, **base})
                self.truth.api_errors += 1
                api_error = False
                continue
            request([{"type": "text", "text": "Done: the tests pass." + self._filler()}], model)
        if subagent:
            agent_lines: list[dict[str, Any]] = []
            request([{"type": "text", "text": "Found 3 call sites."}], MODELS[2], sidechain=True, sink=agent_lines)
            agent_dir = folder / session_id / "subagents"
            agent_dir.mkdir(parents=True, exist_ok=True)
            (agent_dir / f"agent-{self._uuid()[:8]}.jsonl").write_text(
                "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in agent_lines))
        if cost_style == "cost-state":
            lines.append({"type": "cost-state", "sessionId": session_id, "totalCostUSD": round(cost_total, 6),
                          "modelUsage": model_usage})
        path.write_text("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))
        self.truth.sessions += 1
        return path

    def month(self, end: datetime, *, days: int = 30, sessions_per_day: int = 3, turns: int = 6,
              cost_styles: tuple[str, ...] = ("cost-state", "costUSD", "none")) -> Truth:
        """`days` days of sessions ending at `end`, each day's inside the day (UTC): a mix of
        every shape above (and of the `cost_styles`)."""
        for day in range(days, 0, -1):
            midnight = (end - timedelta(days=day)).replace(hour=0, minute=0, second=0, microsecond=0)
            for n in range(sessions_per_day):
                start = midnight + timedelta(hours=8 + n * 3, minutes=self.rng.randint(0, 50))
                first = self.session(start, project=f"proj{n % 4}", turns=turns,
                                     cost_style=cost_styles[(day + n) % len(cost_styles)],
                                     subagent=n == 0, api_error=n == 1 and day % 5 == 0, secret=n == 2)
                if n == 1 and day % 7 == 0:
                    self.session(start + timedelta(hours=1), project=f"proj{n % 4}", turns=2, resume_of=first,
                                 cost_style=cost_styles[0])
        return self.truth
