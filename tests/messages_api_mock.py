"""A stand-in for the Anthropic Messages API on loopback, for running the real Claude Code CLI
in tests (stdlib only).

`POST /v1/messages` answers every request the CLI makes, streamed as server-sent events when
the request asks for `stream` (the CLI's main loop does), else as one JSON message. What it
answers follows the conversation: a request from the agent's main loop (its tools include
`Bash`) whose last user turn holds no tool result gets one `tool_use`, chosen by the prompt
(`Script.tool_call`: by default `Bash` running `Script.command`); one that holds a tool result
gets the closing text, and any other request (a side request, such as a session title) a
short text. A prompt containing a word of `Script.errors_by_word` gets that HTTP error instead. Each reply carries known, distinct token usage, kept in `replies` so a test can
add up exactly what the "API" billed. `POST /v1/messages/count_tokens` answers a count;
anything else is a 404, recorded in `unexpected`.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


@dataclass
class Script:
    """What the mock says: the tool call the model makes for a prompt, and its closing words."""

    command: str = "echo mock-tool-ran"
    final_text: str = "Done: the command ran."
    side_text: str = "Mock title"
    calls_by_word: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    """A prompt containing the word (the key) gets this (tool name, input) call instead."""
    errors_by_word: dict[str, int] = field(default_factory=dict)
    """A prompt containing the word (the key) is answered with this HTTP status, no message."""

    def tool_call(self, prompt: str) -> tuple[str, dict[str, Any]]:
        for word, call in self.calls_by_word.items():
            if word in prompt:
                return call
        return "Bash", {"command": self.command, "description": "Run the scripted command"}


@dataclass
class Reply:
    """One answered request: its model, whether it was streamed, the usage it reported, and
    the user text it answered (to tell the runs of a test apart)."""

    model: str
    streamed: bool
    kind: str  # tool_use, final, side
    usage: dict[str, int]
    request_id: str
    prompt: str


@dataclass
class MessagesApiMock:
    """The server; `start()` it, point `ANTHROPIC_BASE_URL` at `url`, `stop()` it."""

    script: Script = field(default_factory=Script)
    replies: list[Reply] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    chunk_delay_s: float = 0.0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> MessagesApiMock:
        mock = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?", 1)[0]
                try:
                    request = json.loads(body or b"{}")
                except ValueError:
                    request = {}
                if path == "/v1/messages":
                    mock._answer(self, request)
                elif path == "/v1/messages/count_tokens":
                    self._json(200, {"input_tokens": 1000})
                else:
                    mock.unexpected.append(f"POST {self.path}")
                    self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": path}})

            def do_GET(self) -> None:
                mock.unexpected.append(f"GET {self.path}")
                self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})

            do_HEAD = do_GET

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # totals a test compares with what was recorded

    def usage_by_model(self, word: str = "") -> dict[str, dict[str, int]]:
        """Tokens per model over every reply (to prompts containing `word`), with the number of requests."""
        totals: dict[str, dict[str, int]] = {}
        for reply in self.replies:
            if word not in reply.prompt:
                continue
            model = totals.setdefault(reply.model, {f: 0 for f in USAGE_FIELDS} | {"requests": 0})
            for name in USAGE_FIELDS:
                model[name] += reply.usage[name]
            model["requests"] += 1
        return totals

    def tokens_total(self, word: str = "") -> int:
        return sum(r.usage[f] for r in self.replies if word in r.prompt for f in USAGE_FIELDS)

    # answering

    def _answer(self, handler: BaseHTTPRequestHandler, request: dict[str, Any]) -> None:
        model = str(request.get("model") or "claude-unknown")
        prompt = _user_text(request.get("messages") or [])
        for word, status in self.script.errors_by_word.items():
            if word in prompt:
                self._error(handler, status)
                return
        tools = {t.get("name") for t in request.get("tools") or [] if isinstance(t, dict)}
        kind = "side"
        if "Bash" in tools:
            kind = "final" if _last_user_has_tool_result(request.get("messages") or []) else "tool_use"
        with self._lock:
            n = len(self.replies) + 1
            usage = {"input_tokens": 100 + n, "output_tokens": 10 * n + 7,
                     "cache_creation_input_tokens": 1000 * n, "cache_read_input_tokens": 500 * n + 3}
            reported = {**usage, "cache_creation": {"ephemeral_5m_input_tokens": 1000 * n,
                                                    "ephemeral_1h_input_tokens": 0}}
            request_id = f"req_mock{n:04d}{uuid.uuid4().hex[:12]}"
            self.replies.append(Reply(model, bool(request.get("stream")), kind, usage, request_id, prompt))
        message_id = f"msg_mock{uuid.uuid4().hex[:20]}"
        if kind == "tool_use":
            tool, tool_input = self.script.tool_call(prompt)
            blocks: list[dict[str, Any]] = [
                {"type": "text", "text": "I'll run the command."},
                {"type": "tool_use", "id": f"toolu_mock{uuid.uuid4().hex[:16]}", "name": tool, "input": tool_input}]
            stop_reason = "tool_use"
        else:
            text = self.script.final_text if kind == "final" else self.script.side_text
            blocks, stop_reason = [{"type": "text", "text": text}], "end_turn"
        if request.get("stream"):
            self._stream(handler, message_id, model, blocks, stop_reason, usage, request_id)
        else:
            message = {"id": message_id, "type": "message", "role": "assistant", "model": model,
                       "content": blocks, "stop_reason": stop_reason, "stop_sequence": None, "usage": reported}
            raw = json.dumps(message).encode()
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("request-id", request_id)
            handler.send_header("Content-Length", str(len(raw)))
            handler.end_headers()
            handler.wfile.write(raw)

    def _error(self, handler: BaseHTTPRequestHandler, status: int) -> None:
        kind = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error",
                529: "overloaded_error"}.get(status, "api_error")
        raw = json.dumps({"type": "error", "error": {"type": kind, "message": f"mock: HTTP {status}"}}).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)

    def _stream(self, handler: BaseHTTPRequestHandler, message_id: str, model: str, blocks: list[dict[str, Any]],
                stop_reason: str, usage: dict[str, int], request_id: str) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("request-id", request_id)
        handler.send_header("Connection", "close")
        handler.end_headers()
        start_usage = {**usage, "output_tokens": 1, "cache_creation": {
            "ephemeral_5m_input_tokens": usage["cache_creation_input_tokens"], "ephemeral_1h_input_tokens": 0}}
        events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": {
            "id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": start_usage}})]
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                       "content_block": {"type": "text", "text": ""}}))
                words = block["text"].split(" ")
                for i, word in enumerate(words):
                    piece = word if i == 0 else f" {word}"
                    events.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                           "delta": {"type": "text_delta", "text": piece}}))
            else:
                events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                       "content_block": {**block, "input": {}}}))
                raw_input = json.dumps(block["input"])
                for i in range(0, len(raw_input), 16):
                    events.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                           "delta": {"type": "input_json_delta",
                                                                     "partial_json": raw_input[i:i + 16]}}))
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        events.append(("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                         "usage": {"output_tokens": usage["output_tokens"]}}))
        events.append(("message_stop", {"type": "message_stop"}))
        for name, payload in events:
            handler.wfile.write(f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode())
            handler.wfile.flush()
            if self.chunk_delay_s:
                threading.Event().wait(self.chunk_delay_s)
        handler.close_connection = True


def _last_user_has_tool_result(messages: list[Any]) -> bool:
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        return isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
    return False


def _user_text(messages: list[Any]) -> str:
    """All the text the user turns hold (the prompt, and what the CLI adds around it)."""
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str))
    return "\n".join(parts)
