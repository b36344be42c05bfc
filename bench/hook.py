#!/usr/bin/env python3
"""Hook benchmark: wall time of one `ralph-monitor hook` call as Claude Code makes it (a new
process, the hook JSON on stdin), with the daemon up, down (the hook spools) and hung; and, with
the real Claude Code CLI, the time the hook adds to a `claude -p` run.

    python bench/hook.py [--calls N] [--transcript-mb M] [--foreground]
    python bench/hook.py --claude ~/.cache/ralph-monitor-tests/@anthropic-ai+claude-code-2.1.328/node_modules/.bin/claude

The time of a call is what Claude Code waits for: the hook reads its input and returns, a
detached child records it (`--foreground` measures the whole work in the call instead). After
each phase the bench waits until the children have stored (or spooled) every event.

Phases (each a sequence of `--calls` calls, one at a time, like Claude Code's tool hooks):
  python        `python -c pass`: the interpreter's own start-up, for reference
  python-S      `python -S -c pass`: the same without the `site` step (site-packages, .pth files)
  up            daemon running: PostToolUse with a few kB of tool input/output, back to back (each
                call shares the 2 cores with the detached children of the calls before it)
  up-paced      the same, --gap-ms apart (default 250): what Claude Code waits for per tool call,
                whose hooks come seconds apart
  up-paced-fast up-paced with the PostToolUse command `ralph-monitor claude-settings` prints
                (`python -S .../agent/fast_entry.py hook`): what that start saves per tool call
  up-paced-guard the same with its PreToolUse command (`hook --guard`: it first asks the daemon
                whether the session is flagged stuck), a session not flagged
  up-stop       daemon running: Stop, summing the tokens of a transcript of --transcript-mb MB
  up-10mb       daemon running: PostToolUse whose tool_response is 10 MB (cut to 4 kB)
  down          no daemon (socket missing): every event is fsync'd to the client spool
  catch-up      daemon back: the first call delivers the whole backlog first (one call)
  hung          a socket that accepts but never answers: the first call waits for the ack
                timeout, the next ones back off and spool at once

  claude        with --claude: `claude -p` (one prompt, one Bash tool call, against a local stand-in
                for the Messages API, tests/messages_api_mock.py) --cli-runs times with no hooks
                and as many with the README's hook settings, alternating; the difference of the
                medians is what the hook adds to a run

Reports median, p90, p99 and max per phase, and checks that after the catch-up every event
sent in the run is stored exactly once. Standalone: creates a private PostgreSQL cluster
under /tmp (as root it runs as `postgres`) and removes everything at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # for tests.*
from tests.daemon_proc import DaemonNotReady, start_daemon  # noqa: E402
from tests.hook_payloads import readme_hook_settings  # noqa: E402
from tests.messages_api_mock import MessagesApiMock  # noqa: E402

READY_TIMEOUT_S = 60.0
BIN = Path(sys.executable).parent
LOOP_SESSION = "6f1c2b4e-5555-4000-8000-000000000005"
GUARD_SESSION = "6f1c2b4e-5555-4000-8000-000000000006"
GUARD_COMMANDS = ("git status", "pytest -q tests/checkout", "cat README.md", "make lint", "grep -rn TODO src",
                  "git diff --stat", "ls docs")
"""up-paced-guard's tool calls, in turn: loop health flags a session that makes the same call
(numbers and paths aside) again and again, and the guard would then stop it."""
HUNG_SETTLE_S = 1.5
GAP_MS = 250.0
"""up-paced: calls this far apart, as Claude Code's hooks are (a tool runs or the model answers in
between), so each call meets no detached child of the one before; `up` calls back to back."""


def payload(event: str, transcript: str, **extra: Any) -> bytes:
    body = {"session_id": "00893aaf-19fa-41d2-8238-13269b9b3ca0", "transcript_path": transcript,
            "cwd": "/home/dev/shop", "permission_mode": "bypassPermissions", "hook_event_name": event, **extra}
    return json.dumps(body).encode()


def tool_payload(transcript: str, response_bytes: int = 3000) -> bytes:
    return payload("PostToolUse", transcript, tool_name="Bash", tool_use_id="toolu_01ABC",
                   tool_input={"command": "pytest -q tests/checkout", "description": "Run the checkout tests"},
                   tool_response={"stdout": "." * response_bytes + "\n 120 passed in 3.1s", "stderr": "",
                                  "interrupted": False})


def write_transcript(path: Path, megabytes: float) -> int:
    """A transcript like Claude Code's: each request streamed as 3 lines repeating its usage."""
    usage = {"input_tokens": 4, "cache_creation_input_tokens": 2400, "cache_read_input_tokens": 38000,
             "output_tokens": 310}
    lines, size, n = [], 0, 0
    while size < megabytes * 1e6:
        n += 1
        for part in range(3):
            line = json.dumps({"type": "assistant", "requestId": f"req_{n}", "sessionId": "s", "uuid": f"{n}-{part}",
                               "message": {"id": f"msg_{n}", "model": "claude-sonnet-4-6", "role": "assistant",
                                           "content": [{"type": "text", "text": "x" * 400}], "usage": usage}})
            lines.append(line)
            size += len(line) + 1
        tool = json.dumps({"type": "user", "message": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"t{n}", "content": "y" * 600}]}})
        lines.append(tool)
        size += len(tool) + 1
    path.write_text("\n".join(lines) + "\n")
    return n


class Daemon:
    def __init__(self, root: Path, dsn: str) -> None:
        self.root, self.dsn = root, dsn
        self.socket_path = str(root / "events.sock")
        self.config_path = root / "config.toml"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.config_path.write_text(
            f'[socket]\npath = "{self.socket_path}"\ngroup = ""\n[database]\ndsn = "{self.dsn}"\n'
            f'[paths]\nstate_dir = "{self.root / "state"}"\n[monitor]\nlog_level = "warning"\n')
        try:
            self.process = start_daemon(self.config_path, log_path=self.root / "daemon.log",
                                        notify_path=self.root / "notify.sock", timeout_s=READY_TIMEOUT_S)
        except DaemonNotReady as exc:
            raise SystemExit(str(exc)) from None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)


def fast_hook_argvs(socket_path: str) -> dict[str, list[str]]:
    """The commands `ralph-monitor claude-settings --socket SOCKET_PATH` prints, by hook event, as argvs."""
    printed = subprocess.run([str(BIN / "ralph-monitor"), "claude-settings", "--socket", socket_path],
                             capture_output=True, check=True)
    return {event: shlex.split(groups[0]["hooks"][0]["command"])
            for event, groups in json.loads(printed.stdout)["hooks"].items()}


def call(argv: list[str], data: bytes, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or result.stdout:
        raise SystemExit(f"hook misbehaved: exit {result.returncode}, stdout {result.stdout[:200]!r}")
    return elapsed


def phase(name: str, calls: int, argv: list[str], data: bytes | Callable[[int], bytes], env: dict[str, str], *,
          gap_s: float = 0.0) -> dict[str, Any]:
    """`calls` calls one after the other, `gap_s` apart (the time Claude Code spends between two
    hooks: the tool runs, the model answers); `data`: the input, or the i-th call's input."""
    times = []
    for i in range(calls):
        times.append(call(argv, data(i) if callable(data) else data, env))
        time.sleep(gap_s)
    row = {"phase": name, "calls": calls, **percentiles(times)}
    print(f"{name:<17} {calls:>6} {row['median_ms']:>9.1f} {row['p90_ms']:>8.1f} {row['p99_ms']:>8.1f} "
          f"{row['max_ms']:>8.1f}", flush=True)
    return row


def wait_until(predicate: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not reached within {timeout_s:g} s")
        time.sleep(0.05)


def percentiles(times: list[float]) -> dict[str, float]:
    times = sorted(times)

    def pct(p: float) -> float:
        return times[min(len(times) - 1, int(round(p * (len(times) - 1))))]

    return {"median_ms": statistics.median(times) * 1e3, "p90_ms": pct(0.9) * 1e3, "p99_ms": pct(0.99) * 1e3,
            "max_ms": times[-1] * 1e3}


def claude_runs(claude: str, runs: int, hook: list[str], socket_path: str, root: Path) -> list[dict[str, Any]]:
    """`claude -p` with no hooks and with the README's, `runs` times each, alternating."""
    mock = MessagesApiMock().start()
    project = root / "project"
    project.mkdir(exist_ok=True)
    homes = {}
    for mode in ("hooks off", "hooks on"):
        home = root / mode.replace(" ", "-")
        (home / ".claude").mkdir(parents=True)
        command = " ".join(hook + ["--socket", socket_path])
        hooks = {} if mode == "hooks off" else {
            name: [{"hooks": [{"type": "command", "command": command, "timeout": 5}]}]
            for name in readme_hook_settings()["hooks"]}
        (home / ".claude" / "settings.json").write_text(json.dumps({"hooks": hooks}))
        homes[mode] = home
    times: dict[str, list[float]] = {mode: [] for mode in homes}
    try:
        for _ in range(runs):
            for mode, home in homes.items():
                env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "TMPDIR": str(home),
                       "ANTHROPIC_BASE_URL": mock.url, "ANTHROPIC_API_KEY": "sk-ant-api03-dummy",
                       "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
                       "DISABLE_ERROR_REPORTING": "1", "DISABLE_AUTOUPDATER": "1"}
                started = time.perf_counter()
                result = subprocess.run([claude, "-p", "Run the scripted command", "--allowedTools", "Bash",
                                         "--output-format", "json"], capture_output=True, env=env, cwd=project,
                                        timeout=300)
                times[mode].append(time.perf_counter() - started)
                if result.returncode != 0:
                    raise SystemExit(f"claude failed: {result.stderr.decode(errors='replace')[-1000:]}")
    finally:
        mock.stop()
    rows = []
    for mode, values in times.items():
        row = {"phase": f"claude, {mode}", "calls": runs, **percentiles(values)}
        print(f"{row['phase']:<17} {runs:>6} {row['median_ms']:>9.0f} {row['p90_ms']:>8.0f} {row['p99_ms']:>8.0f} "
              f"{row['max_ms']:>8.0f}", flush=True)
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="calls per phase (default 200)")
    parser.add_argument("--transcript-mb", type=float, default=5.0, help="transcript size for up-stop (default 5)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--gap-ms", type=float, default=GAP_MS,
                        help=f"pause between the up-paced phase's calls, ms (default {GAP_MS:g})")
    parser.add_argument("--foreground", action="store_true", help="time the whole work of each call (no detaching)")
    parser.add_argument("--claude", metavar="PATH", help="the Claude Code CLI, for the claude phase")
    parser.add_argument("--cli-runs", type=int, default=10, help="claude -p runs per mode (default 10)")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    import psycopg

    from ralph_monitor.agent.spool import ClientSpool
    from ralph_monitor.cluster import Cluster
    from ralph_monitor.store import ensure_database, prepare_database

    root = Path(tempfile.mkdtemp(prefix="rm-bench-hook-", dir="/tmp"))
    root.chmod(0o755)
    cluster = Cluster(root / "pg")
    daemon: Daemon | None = None
    hung: socket.socket | None = None
    try:
        cluster.start()
        ensure_database(cluster.dsn("postgres"), "bench")
        dsn = cluster.dsn("bench")
        asyncio.run(prepare_database(dsn))
        daemon_root = root / "daemon"
        daemon_root.mkdir()
        daemon = Daemon(daemon_root, dsn)
        daemon.start()

        transcript = root / "transcript.jsonl"
        requests = write_transcript(transcript, args.transcript_mb)
        # Without PYTHONDONTWRITEBYTECODE (some sandboxes set it): a module edited since its .pyc
        # was written would be compiled again on every call (3 ms for launcher.py), as no
        # installed copy ever is.
        environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env = {**environ, "RALPH_SESSION_ID": LOOP_SESSION, "RALPH_SPEC_ID": "CR-01",
               "RALPH_MONITOR_SOCKET": daemon.socket_path, "RALPH_MONITOR_CLIENT_SPOOL": str(root / "spool")}
        foreground = ["--foreground"] if args.foreground else []
        hook = [str(BIN / "ralph-monitor"), "hook", *foreground]
        fast_hooks = fast_hook_argvs(daemon.socket_path)
        fast_hook = fast_hooks["PostToolUse"] + foreground

        def count() -> int:
            return psycopg.connect(dsn).execute("SELECT count(*) FROM events").fetchone()[0]
        print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}; transcript "
              f"{transcript.stat().st_size / 1e6:.1f} MB ({requests} requests); times are wall ms per call\n")
        print(f"{'phase':<17} {'calls':>6} {'median':>9} {'p90':>8} {'p99':>8} {'max':>8}")
        rows = [phase("python", args.calls, [sys.executable, "-c", "pass"], b"", env),
                phase("python-S", args.calls, [sys.executable, "-S", "-c", "pass"], b"", env)]
        sent = 0
        rows.append(phase("up", args.calls, hook, tool_payload(str(transcript)), env))
        sent += args.calls
        wait_until(lambda: count() >= sent, "the up phase's events stored")
        rows.append(phase("up-paced", args.calls, hook, tool_payload(str(transcript)), env, gap_s=args.gap_ms / 1000))
        sent += args.calls
        wait_until(lambda: count() >= sent, "the up-paced phase's events stored")
        rows.append(phase("up-paced-fast", args.calls, fast_hook, tool_payload(str(transcript)), env,
                          gap_s=args.gap_ms / 1000))
        sent += args.calls
        wait_until(lambda: count() >= sent, "the up-paced-fast phase's events stored")
        # A session of its own, each call a different command: the same call again and again is
        # what loop health flags stuck (the phases above do it), and a flagged session stops here.
        guard_env = {**env, "RALPH_SESSION_ID": GUARD_SESSION}
        rows.append(phase("up-paced-guard", args.calls, fast_hooks["PreToolUse"] + foreground,
                          lambda i: payload("PreToolUse", str(transcript), tool_name="Bash", tool_use_id=f"toolu_{i}",
                                            tool_input={"command": GUARD_COMMANDS[i % len(GUARD_COMMANDS)]}),
                          guard_env, gap_s=args.gap_ms / 1000))
        sent += args.calls
        wait_until(lambda: count() >= sent, "the up-paced-guard phase's events stored")
        stop_calls = max(10, args.calls // 10)
        rows.append(phase("up-stop", stop_calls, hook, payload("Stop", str(transcript), stop_hook_active=False,
                                                                last_assistant_message="x" * 400), env))
        sent += stop_calls
        wait_until(lambda: count() >= sent, "the up-stop phase's events stored")
        big_calls = max(10, args.calls // 10)
        rows.append(phase("up-10mb", big_calls, hook, tool_payload(str(transcript), 10 << 20), env))
        sent += big_calls
        wait_until(lambda: count() >= sent, "the up-10mb phase's events stored")

        daemon.stop()  # the socket file goes away with the daemon
        rows.append(phase("down", args.calls, hook, tool_payload(str(transcript)), env))
        sent += args.calls
        spool = ClientSpool.for_socket(daemon.socket_path, root / "spool")
        wait_until(lambda: spool.pending_count() >= args.calls, "the down phase's events spooled")
        daemon.start()
        rows.append(phase("catch-up", 1, hook, tool_payload(str(transcript)), env))
        sent += 1
        wait_until(lambda: count() >= sent, "the catch-up delivered")
        stored = psycopg.connect(dsn).execute("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone()
        ok = stored == (sent, sent)
        print(f"\nstored {stored[0]} events ({stored[1]} distinct) of {sent} sent: "
              f"{'exactly once' if ok else 'MISMATCH'}")

        hung_path = str(root / "hung.sock")
        hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        hung.bind(hung_path)
        hung.listen(4096)
        hung_env = {**env, "RALPH_MONITOR_SOCKET": hung_path}
        print()
        rows.append(phase("hung", max(10, args.calls // 10), hook, tool_payload(str(transcript)), hung_env))
        time.sleep(HUNG_SETTLE_S)  # the children give up on the hung socket within their time limit
        if args.claude:
            print()
            rows.extend(claude_runs(args.claude, args.cli_runs, hook, daemon.socket_path, root))
            off, on = rows[-2], rows[-1]
            print(f"the hook adds {on['median_ms'] - off['median_ms']:.0f} ms to a claude -p run (median; "
                  f"p99 {on['p99_ms'] - off['p99_ms']:.0f} ms)")

        by_phase = {row["phase"]: row for row in rows}
        base = by_phase["python"]["median_ms"]
        up, paced, fast, guard, down = (by_phase[name] for name in ("up", "up-paced", "up-paced-fast",
                                                                    "up-paced-guard", "down"))
        print(f"\nhook with the daemon up: median {up['median_ms']:.0f} ms, p99 {up['p99_ms']:.0f} ms "
              f"({up['median_ms'] - base:.0f} ms over a bare interpreter start) back to back; "
              f"{args.gap_ms:g} ms apart: median {paced['median_ms']:.0f} ms, p99 {paced['p99_ms']:.0f} ms "
              f"({paced['median_ms'] - base:.0f} ms over)")
        print(f"started as claude-settings has it (python -S): median {fast['median_ms']:.0f} ms, "
              f"p99 {fast['p99_ms']:.0f} ms ({paced['median_ms'] - fast['median_ms']:.1f} ms less than up-paced; "
              f"python -S -c pass: {by_phase['python-S']['median_ms']:.1f} ms)")
        print(f"PreToolUse as claude-settings has it (with --guard, session not flagged): median "
              f"{guard['median_ms']:.0f} ms, p99 {guard['p99_ms']:.0f} ms")
        print(f"hook with the daemon down (spooling): median {down['median_ms']:.0f} ms, p99 {down['p99_ms']:.0f} ms")
        if args.json:
            Path(args.json).write_text(json.dumps({"phases": rows, "exactly_once": ok}, indent=2))
        return 0 if ok else 1
    finally:
        if hung is not None:
            hung.close()
        if daemon is not None:
            daemon.stop()
        cluster.stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
