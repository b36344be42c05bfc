"""`ralph-monitor loop`: run an agent command once per spec (or per iteration) and record
each run as a spec run: exit code, duration, and — for `claude -p --output-format json` or
`stream-json` — the result's cost, token usage (in all and per model), turns, is_error,
subtype, terminal_reason, api_error_status, API time and permission denials. A run that was
refused a tool (`permission_denials`) is recorded with `attention: ["permission_denied"]` and
an error text naming the refused calls, so it does not read as a plain success. Text that
leaves the machine (the command line, the result, stderr) is redacted (`agent.redact`).

    ralph-monitor loop --specs specs/ --timeout 3600 -- claude -p --output-format json "Do {spec_file}"

Around the runs: `session_started` (with the number of specs), `session_heartbeat` while a
command runs, `timeout_triggered` when one runs past `--timeout` (it is then stopped: the
signal to its process group, SIGKILL after `--kill-grace`), and `session_ended` with the
summary. SIGINT / SIGTERM stop the command the same way and end the session as
`interrupted`. With `--stop-on stuck` the wrapper asks the daemon (`session_flags`) before
each spec and every few seconds during one; once the session is flagged by a loop-health rule
it stops the command the same way and ends the session as `stuck`, with the reason. The
command sees RALPH_SESSION_ID, RALPH_SPEC_ID, RALPH_SPEC_FILE and RALPH_MONITOR_SOCKET, so
the Claude Code hook files its events under the same spec.
Unless `--no-git`, each spec run's closing event also says what it changed in the git
repository of the working directory (`data.git`, see `agent.gitstate`).

A run that ends on the subscription's usage limit (`agent.usage_limit`) is not a failure: the
wrapper records `usage_limit` (with `resets_at` when the message gives it) instead of
`spec_failed`, and with `--on-usage-limit wait` (the default) waits until the reset plus
`--usage-limit-margin` (or `--usage-limit-wait` when no reset time is given; at most
USAGE_LIMIT_MAX_WAIT_S at a time), sending heartbeats, then runs the same spec again: a new
attempt (the cut-short one is interrupted, not failed). With `stop` it ends the session as
`interrupted` with the reason and exits EXIT_USAGE_LIMIT, for a scheduler to start it again later.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from ralph_monitor.agent import gitstate, usage_limit
from ralph_monitor.agent.client import SESSION_ENV, SOCKET_ENV, SPEC_ENV, Client, session_flags, utc_now
from ralph_monitor.agent.guard import flag_reason
from ralph_monitor.agent.redact import Redactor
from ralph_monitor.errors import ConfigError, RalphMonitorError

SPEC_FILE_ENV = "RALPH_SPEC_FILE"
EXIT_BUDGET_EXCEEDED = 3
"""Exit status when the loop stopped starting specs because its budget was spent."""
EXIT_STUCK = 4
"""Exit status when the loop stopped because the monitor flagged its session stuck."""
EXIT_USAGE_LIMIT = 5
"""Exit status when the loop stopped at the usage limit (--on-usage-limit stop)."""
STUCK_CHECK_S = 2.0
"""How often a running spec asks whether the session was flagged (--stop-on stuck)."""
CONFIG_ENV = "RALPH_MONITOR_CONFIG"
CAPTURE_BYTES = 16 << 20
"""How much of a command's stdout is kept to find the result object (its tail)."""
STDERR_TAIL_BYTES = 4096
SUMMARY_CHARS = 2000
MAX_SPEC_ID_CHARS = 200
POLL_S = 0.2
USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
RESULT_KEYS = ("num_turns", "is_error", "subtype", "duration_ms", "duration_api_ms", "stop_reason",
               "terminal_reason", "api_error_status")
USAGE_LIMIT_MARGIN_S = 30.0
"""How long past the announced reset the loop waits before it tries again (clocks differ)."""
USAGE_LIMIT_WAIT_S = 1800.0
"""How long the loop waits at the usage limit when the message gives no reset time (or a past one)."""
USAGE_LIMIT_MAX_WAIT_S = 8 * 3600.0
"""The longest wait in one go: then the spec is tried again, which finds the limit anew if it still holds."""
LIMIT_OUTPUT_BYTES = 4096
"""How much of a run's stdout and stderr (without a result object) is read for a limit message."""
MAX_DENIALS = 20
INPUT_CHARS = 500
"""How much of a refused tool call's input is kept."""


def default_name(command: list[str]) -> str:
    """A session's name when --name is not given: the directory the loop runs in and the command
    ("shop-backend: claude"). `ralph-query diff` compares a session with the previous one of its
    name, so the command's name alone would make every loop of every repository one series."""
    return f"{Path.cwd().name or '/'}: {Path(command[0]).name}"


@dataclass(frozen=True)
class Spec:
    id: str
    file: str | None = None


def load_specs(path: str | os.PathLike[str]) -> list[Spec]:
    """A directory: one spec per (non-hidden) file, id = file name without extension, in
    name order. A file: one spec id per line; blank lines and `#` comments are skipped."""
    source = Path(path)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
        specs = [Spec(p.stem[:MAX_SPEC_ID_CHARS] or p.name[:MAX_SPEC_ID_CHARS], str(p.resolve())) for p in files]
    elif source.is_file():
        lines = source.read_text(encoding="utf-8").splitlines()
        specs = [Spec(line.strip()[:MAX_SPEC_ID_CHARS]) for line in lines
                 if line.strip() and not line.lstrip().startswith("#")]
    else:
        raise ConfigError(f"--specs {path}: no such file or directory")
    if not specs:
        raise ConfigError(f"--specs {path}: no specs in it")
    return specs


def find_result(output: bytes) -> dict[str, Any] | None:
    """The `claude -p` result object in a command's stdout: the whole output
    (`--output-format json`) or its last `{"type": "result", ...}` line (`stream-json`)."""
    text = output.strip()
    if not text.startswith(b"{") and not text.startswith(b"["):
        text = text[text.rfind(b"\n{") + 1:] if b"\n{" in text else text
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    if isinstance(whole, dict) and whole.get("type") == "result":
        return whole
    if isinstance(whole, list):  # older `--output-format json --verbose` printed every message
        results = [m for m in whole if isinstance(m, dict) and m.get("type") == "result"]
        return results[-1] if results else None
    for line in reversed(output.splitlines()):
        line = line.strip()
        if not line.startswith(b"{") or b'"result"' not in line:
            continue
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("type") == "result":
            return message
    return None


def result_fields(result: dict[str, Any], redactor: Redactor | None = None) -> dict[str, Any]:
    """What a spec run records from a `claude -p` result object (text redacted)."""
    redactor = redactor or Redactor()
    fields: dict[str, Any] = {}
    cost = result.get("total_cost_usd", result.get("cost_usd"))
    if isinstance(cost, (int, float)) and not isinstance(cost, bool):
        fields["cost_usd"] = cost
    usage = result.get("usage")
    if isinstance(usage, dict):
        counts = {f: usage[f] for f in USAGE_FIELDS if isinstance(usage.get(f), int)}
        fields["tokens_used"] = sum(counts.values())
        fields["usage"] = counts
    model_usage = result.get("modelUsage")
    if isinstance(model_usage, dict):
        fields["model_usage"] = model_usage
    for key in RESULT_KEYS:
        if key in result:
            fields[key] = result[key]
    if isinstance(result.get("session_id"), str):
        fields["claude_session_id"] = result["session_id"]
    text = result.get("result")
    if isinstance(text, str) and text:
        fields["output_summary"] = redactor.text(text[:SUMMARY_CHARS])
    errors = result.get("errors")
    if isinstance(errors, list) and errors:
        fields["errors"] = [redactor.text(str(e)[:SUMMARY_CHARS]) for e in errors[:10]]
    denials = result.get("permission_denials")
    if isinstance(denials, list) and denials:
        fields["permission_denials"] = [_denial(d, redactor) for d in denials[:MAX_DENIALS]]
        fields["permission_denial_count"] = len(denials)
        fields["attention"] = ["permission_denied"]
    return fields


def _denial(denial: Any, redactor: Redactor) -> dict[str, Any]:
    """One refused tool call: its tool, id and (cut, redacted) input."""
    if not isinstance(denial, dict):
        return {"tool_name": redactor.text(str(denial)[:INPUT_CHARS])}
    shown = redactor.value(denial.get("tool_input"))
    encoded = json.dumps(shown, default=str)
    return {"tool_name": str(denial.get("tool_name"))[:200], "tool_use_id": str(denial.get("tool_use_id"))[:200],
            "tool_input": shown if len(encoded) <= INPUT_CHARS else encoded[:INPUT_CHARS] + "…"}


def denial_text(denials: list[dict[str, Any]], count: int) -> str:
    """What a run was refused, in a line: `permission denied: 2 tool calls refused: Write /etc/x, Bash git push`."""
    shown = []
    for denial in denials[:5]:
        tool_input = denial.get("tool_input")
        what = ""
        if isinstance(tool_input, dict):
            what = str(tool_input.get("command") or tool_input.get("file_path") or tool_input.get("url") or "")
        shown.append(f"{denial.get('tool_name')} {what[:80]}".strip())
    more = f", and {count - len(shown)} more" if count > len(shown) else ""
    calls = "1 tool call" if count == 1 else f"{count} tool calls"
    return f"permission denied: {calls} refused: {', '.join(shown)}{more}"


@dataclass
class RunOutcome:
    status: str  # completed, failed, timeout, interrupted, usage_limit
    data: dict[str, Any] = field(default_factory=dict)


class _Pump(threading.Thread):
    """Copies a child's pipe to our stream (unless quiet) and keeps its tail."""

    def __init__(self, pipe: IO[bytes], sink: IO[bytes] | None, keep: int) -> None:
        super().__init__(daemon=True)
        self.pipe, self.sink, self.keep = pipe, sink, keep
        self.data = bytearray()

    def run(self) -> None:
        fd = self.pipe.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            if self.sink is not None:
                try:
                    self.sink.write(chunk)
                    self.sink.flush()
                except (OSError, ValueError):
                    self.sink = None
            self.data += chunk
            if len(self.data) > 2 * self.keep:
                del self.data[:len(self.data) - self.keep]
        self.pipe.close()

    def tail(self) -> bytes:
        return bytes(self.data[-self.keep:])


class LoopRunner:
    """Runs the command per spec and reports the session; `run()` returns the exit code."""

    def __init__(self, client: Client, command: Sequence[str], specs: Sequence[Spec] | None, *,
                 iterations: int = 1, name: str | None = None, session_id: str | None = None,
                 timeout_s: float = 0.0, heartbeat_s: float = 60.0, kill_grace_s: float = 10.0,
                 stop_on_failure: bool = False, stop_on_stuck: bool = False, stdin_spec: bool = False,
                 quiet: bool = False,
                 metadata: dict[str, Any] | None = None, max_cost_usd: float = 0.0, max_tokens: int = 0,
                 redactor: Redactor | None = None, config_path: str | None = None,
                 git_dir: str | None = None, on_usage_limit: str = "wait",
                 usage_limit_wait_s: float = USAGE_LIMIT_WAIT_S,
                 usage_limit_margin_s: float = USAGE_LIMIT_MARGIN_S) -> None:
        if not command:
            raise ConfigError("no command to run; put it after --, e.g. ralph-monitor loop --specs specs -- claude -p ...")
        self.client = client
        self.command = list(command)
        self.specs = list(specs) if specs is not None else None
        self.iterations = iterations
        self.name = name
        self.joined = session_id is not None
        self.session_id = session_id or str(uuid.uuid4())
        self.timeout_s = timeout_s
        self.heartbeat_s = heartbeat_s
        self.kill_grace_s = kill_grace_s
        self.stop_on_failure = stop_on_failure
        self.stop_on_stuck = stop_on_stuck
        self.stuck: str | None = None
        """Why the monitor flagged the session, once the loop stopped for it (--stop-on stuck)."""
        self._flags_unknown = False
        self.stdin_spec = stdin_spec
        self.quiet = quiet
        self.metadata = metadata or {}
        self.max_cost_usd = max_cost_usd
        self.max_tokens = max_tokens
        self.over_budget: str | None = None
        """Why the loop stopped starting specs (spend over --max-cost / --max-tokens), if it did."""
        self.redactor = redactor or Redactor()
        self.config_path = config_path
        """Exported to the command as RALPH_MONITOR_CONFIG, so its hook reads the same settings."""
        self.git_dir = git_dir
        """The directory whose repository each spec run's changes are read from (None: not read)."""
        self._git_start: gitstate.Before | None = None
        if on_usage_limit not in ("wait", "stop"):
            raise ConfigError(f"--on-usage-limit {on_usage_limit!r}: wait or stop")
        self.on_usage_limit = on_usage_limit
        self.usage_limit_wait_s = usage_limit_wait_s
        self.usage_limit_margin_s = usage_limit_margin_s
        self.limited: str | None = None
        """Why the loop stopped at the usage limit (--on-usage-limit stop), if it did."""
        self.usage_limits = 0
        """How many runs hit the usage limit."""
        self.counts = {"completed": 0, "failed": 0, "timeout": 0}
        self.tokens_used = 0
        self.cost_usd = 0.0
        self._signal: int | None = None

    # reporting

    def _emit(self, event_type: str, *, spec_id: str | None = None, data: dict[str, Any] | None = None,
              ts: str | None = None) -> None:
        try:
            self.client.emit(event_type, session_id=self.session_id, spec_id=spec_id, data=data, ts=ts)
        except RalphMonitorError as exc:
            self._say(f"warning: {event_type} not recorded: {exc}")

    def _say(self, message: str) -> None:
        print(f"ralph-monitor loop: {message}", file=sys.stderr, flush=True)

    # the loop

    def _plan(self) -> tuple[int | None, Any]:
        if self.specs is not None:
            return len(self.specs), iter(self.specs)
        if self.iterations <= 0:
            return None, (Spec(f"iteration-{i}") for i in range(1, 1 << 62))
        return self.iterations, (Spec(f"iteration-{i}") for i in range(1, self.iterations + 1))

    def run(self) -> int:
        total, specs = self._plan()
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        started = time.monotonic()
        try:
            if not self.joined:
                data: dict[str, Any] = {"name": self.name or default_name(self.command),
                                        "metadata": {"command": self.redactor.text(shlex.join(self.command)[:1000]),
                                                     "cwd": os.getcwd(), "runner": "ralph-monitor loop",
                                                     **self.metadata}}
                if total is not None:
                    data["total_specs"] = total
                self._emit("session_started", data=data)
            self._say(f"session {self.session_id}" + (f", {total} spec{'' if total == 1 else 's'}" if total is not None else ""))
            for spec in specs:
                if self._signal is not None or self._check_stuck():
                    break
                outcome = self.run_spec(spec)
                while outcome.status == "usage_limit" and self._wait_for_reset(spec, outcome):
                    outcome = self.run_spec(spec)
                if outcome.status in ("interrupted", "usage_limit") or self.stuck is not None:
                    break
                if outcome.status != "completed" and self.stop_on_failure:
                    self._say(f"stopping after {spec.id} ({outcome.status}): --stop-on-failure")
                    break
                self.over_budget = self._budget_spent()
                if self.over_budget is not None:
                    self._say(f"stopping after {spec.id}: {self.over_budget}; no further spec is started")
                    break
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self._finish(started)

    def _check_stuck(self) -> bool:
        """With --stop-on stuck: is the session flagged now? (Sets `stuck`; a daemon that cannot
        be asked is said once and never stops the loop.)"""
        if not self.stop_on_stuck or self.stuck is not None:
            return self.stuck is not None
        try:
            reply = session_flags(self.client.socket_path, self.session_id, timeout_s=1.0)
        except RalphMonitorError as exc:
            if not self._flags_unknown:
                self._say(f"warning: cannot ask whether the session is flagged ({exc}); going on")
                self._flags_unknown = True
            return False
        if reply.get("flagged"):
            self.stuck = flag_reason(reply)
            self._say(f"stopping: {self.stuck} (--stop-on stuck)")
        return self.stuck is not None

    def _budget_spent(self) -> str | None:
        """Why the budget is spent, or None while it is not."""
        if self.max_cost_usd and self.cost_usd > self.max_cost_usd:
            return f"spent ${self.cost_usd:.2f} of --max-cost ${self.max_cost_usd:.2f}"
        if self.max_tokens and self.tokens_used > self.max_tokens:
            return f"used {self.tokens_used:,} of --max-tokens {self.max_tokens:,} tokens"
        return None

    def _finish(self, started: float) -> int:
        interrupted = self._signal is not None
        failed = self.counts["failed"] + self.counts["timeout"]
        status = ("interrupted" if interrupted or self.limited else "stuck" if self.stuck else
                  "budget_exceeded" if self.over_budget else "completed")
        summary: dict[str, Any] = {
            "status": status, "specs_completed": self.counts["completed"], "specs_failed": failed,
            "specs_timed_out": self.counts["timeout"], "duration_s": round(time.monotonic() - started, 3)}
        if self.usage_limits:
            summary["usage_limits"] = self.usage_limits
        if self.tokens_used:
            summary["tokens_used"] = self.tokens_used
        if self.cost_usd:
            summary["cost_usd"] = round(self.cost_usd, 6)
        if interrupted:
            assert self._signal is not None
            summary["signal"] = signal.Signals(self._signal).name
        if self.over_budget:
            summary["reason"] = self.over_budget
        if self.stuck:
            summary["reason"] = self.stuck
        if self.limited and not interrupted:
            summary["reason"] = self.limited
        if not self.joined:
            self._emit("session_ended", data=summary)
        self._say(f"{status}: {self.counts['completed']} completed, {failed} failed "
                  f"({self.counts['timeout']} timed out)"
                  + (f", ${self.cost_usd:.4f}" if self.cost_usd else ""))
        if interrupted:
            assert self._signal is not None
            return 128 + self._signal
        if self.stuck:
            return EXIT_STUCK
        if self.limited:
            return EXIT_USAGE_LIMIT
        if self.over_budget:
            return EXIT_BUDGET_EXCEEDED
        return 0 if failed == 0 else 1

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._signal is None:
            self._signal = signum

    def run_spec(self, spec: Spec) -> RunOutcome:
        argv = [a.replace("{spec}", spec.id).replace("{spec_file}", spec.file or "") for a in self.command]
        env = {**os.environ, SESSION_ENV: self.session_id, SPEC_ENV: spec.id, SOCKET_ENV: self.client.socket_path}
        if self.config_path:
            env[CONFIG_ENV] = self.config_path
        if spec.file:
            env[SPEC_FILE_ENV] = spec.file
        else:
            env.pop(SPEC_FILE_ENV, None)
        self.redactor.count = 0
        start_data: dict[str, Any] = {"command": self.redactor.text(shlex.join(argv)[:1000])}
        if spec.file:
            start_data["spec_file"] = spec.file
        self._git_start = gitstate.before(self.git_dir) if self.git_dir is not None else None
        if self._git_start is not None:
            start_data["git"] = self._git_start.as_data()
        if self.redactor.count:
            start_data["redactions"] = self.redactor.count
            self.redactor.count = 0
        self._emit("spec_started", spec_id=spec.id, data=start_data)
        started = time.monotonic()
        stdin: Any = subprocess.DEVNULL
        try:
            if self.stdin_spec and spec.file:
                stdin = open(spec.file, "rb")  # noqa: SIM115 - closed below
            proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=env, start_new_session=True)
        except OSError as exc:
            error = f"cannot run {argv[0]}: {exc.strerror or exc}"
            return self._record(spec, RunOutcome("failed", {"error": error, "duration_s": 0.0}))
        finally:
            if stdin is not subprocess.DEVNULL:
                stdin.close()
        assert proc.stdout is not None and proc.stderr is not None
        out = _Pump(proc.stdout, None if self.quiet else sys.stdout.buffer, CAPTURE_BYTES)
        err = _Pump(proc.stderr, None if self.quiet else sys.stderr.buffer, STDERR_TAIL_BYTES)
        out.start()
        err.start()
        timed_out_at: str | None = None
        next_beat = started + self.heartbeat_s if self.heartbeat_s > 0 else None
        next_flag_check = started + STUCK_CHECK_S
        while proc.poll() is None:
            try:
                proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if self._signal is not None:
                self._stop(proc, self._signal)
                break
            if self.timeout_s > 0 and now - started >= self.timeout_s:
                timed_out_at = utc_now()
                self._say(f"{spec.id}: no result after {self.timeout_s:g} s; stopping it")
                self._stop(proc, signal.SIGTERM)
                break
            if self.stop_on_stuck and now >= next_flag_check:
                next_flag_check = now + STUCK_CHECK_S
                if self._check_stuck():
                    self._stop(proc, signal.SIGTERM)
                    break
            if next_beat is not None and now >= next_beat:
                self._emit("session_heartbeat", spec_id=spec.id,
                           data={"spec_id": spec.id, "elapsed_s": round(now - started, 1), "pid": proc.pid})
                next_beat = now + self.heartbeat_s
        proc.wait()
        out.join(timeout=5)
        err.join(timeout=5)
        duration = round(time.monotonic() - started, 3)
        data: dict[str, Any] = {"exit_code": proc.returncode, "duration_s": duration}
        if proc.returncode < 0:
            data["signal"] = signal.Signals(-proc.returncode).name
        result = find_result(out.tail())
        if result is not None:
            data.update(result_fields(result, self.redactor))
        if self._signal is not None and timed_out_at is None:
            self._say(f"{spec.id}: interrupted ({signal.Signals(self._signal).name})")
            return RunOutcome("interrupted", data)
        if self.stuck is not None:
            self._say(f"{spec.id}: stopped (the session is {self.stuck})")
            return RunOutcome("interrupted", data)
        if timed_out_at is not None:
            data["timeout_s"] = self.timeout_s
            data["error"] = f"timed out after {self.timeout_s:g} s (stopped, exit code {proc.returncode})"
            return self._record(spec, RunOutcome("timeout", data), ts=timed_out_at)
        tails = out.tail()[-LIMIT_OUTPUT_BYTES:] + b"\n" + err.tail()
        limit = usage_limit.detect(result, proc.returncode, tails.decode("utf-8", "replace"), now=time.time())
        if limit is not None:
            return self._limited(spec, limit, data)
        if proc.returncode == 0 and not (result or {}).get("is_error"):
            if data.get("permission_denials"):
                data["error"] = denial_text(data["permission_denials"], data["permission_denial_count"])
            return self._record(spec, RunOutcome("completed", data))
        data["error"] = self.redactor.text(_failure_text(proc.returncode, result, err.tail()))
        return self._record(spec, RunOutcome("failed", data))

    def _limited(self, spec: Spec, limit: usage_limit.UsageLimit, data: dict[str, Any]) -> RunOutcome:
        """Record a run that hit the usage limit as `usage_limit`, not as a failure: the spec
        is run again after the reset (or the session stopped, --on-usage-limit stop)."""
        self.usage_limits += 1
        data.update({"source": limit.source, "message": self.redactor.text(limit.message),
                     "on_usage_limit": self.on_usage_limit})
        if limit.resets_at is not None:
            data["resets_at"] = int(limit.resets_at)
        self._account(data)
        self._emit("usage_limit", spec_id=spec.id, data=data)
        when = (f"resets {datetime.fromtimestamp(limit.resets_at).astimezone():%Y-%m-%d %H:%M %Z}"
                if limit.resets_at is not None else "no reset time given")
        self._say(f"{spec.id}: usage limit reached ({when}): {data['message'][:120]}")
        if self.on_usage_limit == "stop":
            self.limited = f"usage limit reached ({when}); stopped: --on-usage-limit stop"
            self._say(f"stopping: {self.limited}")
        return RunOutcome("usage_limit", data)

    def _wait_for_reset(self, spec: Spec, outcome: RunOutcome) -> bool:
        """Wait until the usage limit resets (plus the margin; --usage-limit-wait when the time
        is unknown or past; never more than USAGE_LIMIT_MAX_WAIT_S), with heartbeats so the
        session is not taken for stalled. False when the loop is not to go on: stopping at the
        limit, or a signal came (the wait ends at once)."""
        if self.limited is not None or self._signal is not None:
            return False
        resets_at = outcome.data.get("resets_at")
        now = time.time()
        if isinstance(resets_at, int) and resets_at > now:
            wait_s = resets_at - now + self.usage_limit_margin_s
        else:
            wait_s = self.usage_limit_wait_s
        wait_s = min(wait_s, USAGE_LIMIT_MAX_WAIT_S)
        retry_at = now + wait_s
        shown = datetime.fromtimestamp(retry_at).astimezone()
        self._say(f"{spec.id}: waiting {wait_s:.0f} s for the usage limit; trying again at {shown:%Y-%m-%d %H:%M:%S %Z}")
        deadline = time.monotonic() + wait_s
        next_beat = time.monotonic() + self.heartbeat_s if self.heartbeat_s > 0 else None
        while self._signal is None and time.monotonic() < deadline and time.time() < retry_at:
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
            if next_beat is not None and time.monotonic() >= next_beat:
                self._emit("session_heartbeat", spec_id=spec.id,
                           data={"spec_id": spec.id, "waiting_for": "usage_limit", "retry_at": int(retry_at)})
                next_beat = time.monotonic() + self.heartbeat_s
        if self._signal is not None:
            self._say(f"{spec.id}: interrupted ({signal.Signals(self._signal).name}) while waiting for the usage limit")
            return False
        return True

    def _stop(self, proc: subprocess.Popen[bytes], signum: int) -> None:
        """Signal the command's process group; SIGKILL it if it has not exited after the grace."""
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=self.kill_grace_s)
        except subprocess.TimeoutExpired:
            pass
        try:  # also whatever it left behind in its group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _account(self, data: dict[str, Any]) -> None:
        """Complete a finished run's closing data (redactions, git changes) and add its spend
        to the session's, which the budget is checked against."""
        if self.redactor.count:
            data["redactions"] = self.redactor.count
        if self._git_start is not None:
            data["git"] = gitstate.changes(self._git_start)
        if isinstance(data.get("tokens_used"), int):
            self.tokens_used += data["tokens_used"]
        if isinstance(data.get("cost_usd"), (int, float)):
            self.cost_usd += float(data["cost_usd"])

    def _record(self, spec: Spec, outcome: RunOutcome, *, ts: str | None = None) -> RunOutcome:
        data = outcome.data
        self._account(data)
        self.counts[outcome.status] = self.counts.get(outcome.status, 0) + 1
        event_type = {"completed": "spec_completed", "failed": "spec_failed", "timeout": "timeout_triggered"}
        self._emit(event_type[outcome.status], spec_id=spec.id, data=data, ts=ts)
        cost = f", ${data['cost_usd']:.4f}" if isinstance(data.get("cost_usd"), (int, float)) else ""
        self._say(f"{spec.id}: {outcome.status} in {data.get('duration_s', 0):g} s "
                  f"(exit {data.get('exit_code')}{cost})")
        return outcome


def _failure_text(returncode: int, result: dict[str, Any] | None, stderr_tail: bytes) -> str:
    if result is not None and (result.get("is_error") or result.get("subtype") not in (None, "success")):
        detail = result.get("result") or "; ".join(str(e) for e in result.get("errors") or []) or ""
        why = result.get("subtype") or "error"
        if isinstance(result.get("api_error_status"), int):
            why += f" (API status {result['api_error_status']})"
        return f"{why}: {str(detail)[:SUMMARY_CHARS]}".rstrip(": ")
    text = f"exit code {returncode}"
    if returncode < 0:
        text += f" ({signal.Signals(-returncode).name})"
    tail = stderr_tail.decode("utf-8", "replace").strip().replace("\x00", "\ufffd")
    return f"{text}: {tail[-STDERR_TAIL_BYTES:]}" if tail else text
