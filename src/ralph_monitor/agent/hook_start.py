"""The first milliseconds of `ralph-monitor hook`: read the hook input, note when the hook was
called, and hand the rest to a detached child process, so Claude Code goes on at once.

Claude Code waits for a command hook to exit (and to close its output) before it goes on, on
every tool call. Reading the transcript, redacting, connecting to the daemon and waiting for
its acknowledgement take tens of milliseconds, and on Stop the transcript wait takes up to
half a second more; none of that needs the agent to wait. So this module imports nothing
but `os`, `sys` and `time`: it reads stdin, forks, and the parent exits 0 while the child
(its own session, stdin and stdout on /dev/null) imports `agent.hook` and does the work under
the hook's own time limit. The moment of the call is taken before the fork, so the events
keep the order in which Claude Code fired them whatever order the children finish in.

`--foreground` (or `RALPH_MONITOR_HOOK_DEBUG=1`, which also shows the hook's complaints on
stderr) keeps everything in the one process, as does a failed fork.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

MAX_STDIN_BYTES = 64 << 20
FOREGROUND_OPTION = "--foreground"
DEBUG_ENV = "RALPH_MONITOR_HOOK_DEBUG"


def main(argv: Sequence[str]) -> int:
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
    debug = bool(os.environ.get(DEBUG_ENV))
    if FOREGROUND_OPTION not in argv and not debug and _detach():
        os._exit(0)  # the parent: Claude Code goes on now
    from ralph_monitor.agent.hook import run  # only here: the parent never pays for it

    return run([a for a in argv if a != FOREGROUND_OPTION], raw, called_ns=called_ns)


def _detach() -> bool:
    """Fork; True in the parent. The child leaves the agent's process group (a loop stopping
    the agent's group must not kill a delivery under way) and lets go of the agent's pipes."""
    try:
        pid = os.fork()
    except OSError:
        return False  # do the work here instead
    if pid:
        return True
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    return False
