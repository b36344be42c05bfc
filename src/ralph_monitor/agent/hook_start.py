"""The first milliseconds of `ralph-monitor hook`: read the hook input, note when the hook was
called, and hand the rest to a detached child process, so Claude Code goes on at once.

Claude Code waits for a command hook to exit (and to close its output) before it goes on, on
every tool call. Reading the transcript, redacting, connecting to the daemon and waiting for
its acknowledgement take tens of milliseconds, and on Stop the transcript wait takes up to
half a second more; none of that needs the agent to wait. So this module imports nothing
but `posix`, `sys` and `time`: it reads stdin, forks, and the parent exits 0 while the child
(its own session, stdin and stdout on /dev/null) imports `agent.hook` and does the work under
the hook's own time limit. The moment of the call is taken before the fork, so the events
keep the order in which Claude Code fired them whatever order the children finish in.

It uses `posix` (built in, loaded at interpreter start) rather than `os`: under `python -S`
(agent/fast_entry.py, as `ralph-monitor claude-settings` installs the hook) nothing has
imported `os` yet, and importing it would cost ~2.5 ms of a ~20 ms call.

`--foreground` (or `RALPH_MONITOR_HOOK_DEBUG=1`, which also shows the hook's complaints on
stderr) keeps everything in the one process, as does a failed fork.

`--guard` (for PreToolUse and UserPromptSubmit) first asks the daemon whether the session is
flagged stuck and, if so, prints `{"continue": false, "stopReason": ...}` so Claude Code stops;
that one round trip is the only work done before the parent exits. It is asked with built-in
modules (`agent.guard_quick`); a flagged session, a config file to read or an input it cannot
be sure of go to the full guard (`agent.guard`). Without `--guard` the hook prints nothing.
"""

import posix
import sys
import time

MAX_STDIN_BYTES = 64 << 20
HARD_TIMEOUT_S = 1.0
ACK_TIMEOUT_S = 0.3
"""How long the hook waits for the daemon's answer (an event's acknowledgement, the guard's
session_flags): after it, the event is spooled and the guard stops nothing."""
DEFAULT_MAX_FIELD_BYTES = 4096
FOREGROUND_OPTION = "--foreground"
GUARD_OPTION = "--guard"
DEBUG_ENV = "RALPH_MONITOR_HOOK_DEBUG"
DEVNULL = "/dev/null"


def _debug() -> bool:
    """RALPH_MONITOR_HOOK_DEBUG is set (posix.environ's keys are bytes)."""
    return bool(posix.environ.get(DEBUG_ENV.encode()))


class Options:
    """The hook's command line (parsed by hand: argparse costs import time on every call)."""

    def __init__(self, argv: list[str]) -> None:
        self.socket: str | None = None
        self.config: str | None = None
        self.max_field_bytes = DEFAULT_MAX_FIELD_BYTES
        self.timeout = HARD_TIMEOUT_S
        args = list(argv)
        while args:
            arg = args.pop(0)
            name, eq, value = arg.partition("=")
            if name not in ("--socket", "--config", "--max-field-bytes", "--timeout"):
                continue  # unknown options are ignored: the agent must not fail on them
            if not eq:
                if not args:
                    break
                value = args.pop(0)
            try:
                if name == "--socket":
                    self.socket = value
                elif name == "--config":
                    self.config = value
                elif name == "--max-field-bytes":
                    self.max_field_bytes = max(64, int(value))
                elif float(value) > 0:
                    self.timeout = float(value)
            except ValueError:
                pass


UUID_GROUPS = (8, 4, 4, 4, 12)
HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def canonical_uuid(value: object) -> str | None:
    """A UUID (hyphens optional between its groups, braces or `urn:uuid:` around it) in
    canonical form, or None. Without `uuid` or `re`: both are slow to import."""
    if not isinstance(value, str):
        return None
    text = value.strip().removeprefix("urn:uuid:").strip("{}")
    groups, at = [], 0
    for i, size in enumerate(UUID_GROUPS):
        if i and text[at:at + 1] == "-":
            at += 1
        group = text[at:at + size]
        if len(group) != size or not HEX_DIGITS.issuperset(group):
            return None
        groups.append(group.lower())
        at += size
    return "-".join(groups) if at == len(text) else None


def main(argv: list[str]) -> int:
    """Entry point of `ralph-monitor hook ARGS`; always returns 0 (the parent exits at once)."""
    called_ns = time.time_ns()
    stdin = sys.stdin
    if stdin is None or stdin.isatty():
        print("ralph-monitor hook reads a Claude Code hook's JSON on stdin; see the README", file=sys.stderr)
        return 0
    try:
        raw = stdin.buffer.read(MAX_STDIN_BYTES + 1)
    except (OSError, ValueError):
        raw = b""
    debug = _debug()
    guard = GUARD_OPTION in argv
    argv = [a for a in argv if a != GUARD_OPTION]
    if guard:
        _guard(argv, raw)
    if FOREGROUND_OPTION not in argv and not debug and detach():
        posix._exit(0)  # the parent: Claude Code goes on now
    from ralph_monitor.agent.hook import run  # only here: the parent never pays for it

    return run([a for a in argv if a != FOREGROUND_OPTION], raw, called_ns=called_ns)


def _guard(argv: list[str], raw: bytes) -> None:
    """--guard: print the output that stops Claude Code if the session is flagged (never fails)."""
    try:
        from ralph_monitor.agent.guard_quick import ASK_AGAIN, quick_verdict

        if quick_verdict(argv, raw) is not ASK_AGAIN:
            return  # not flagged, or the daemon cannot say: nothing to print
        from ralph_monitor.agent.guard import hook_verdict

        verdict = hook_verdict(argv, raw)
        if verdict is not None:
            sys.stdout.buffer.write(verdict)
            sys.stdout.flush()
    except Exception as exc:  # noqa: BLE001 - the agent must go on whatever happens here
        if _debug():
            print(f"ralph-monitor hook --guard: {type(exc).__name__}: {exc}", file=sys.stderr)


def detach() -> bool:
    """Fork; True in the parent. The child leaves the agent's process group (a loop stopping
    the agent's group must not kill a delivery under way) and lets go of the agent's pipes."""
    try:
        pid = posix.fork()
    except OSError:
        return False  # do the work here instead
    if pid:
        return True
    posix.setsid()
    devnull = posix.open(DEVNULL, posix.O_RDWR)
    for fd in (0, 1, 2):
        posix.dup2(devnull, fd)
    posix.close(devnull)
    return False
