"""The `ralph-monitor` command's entry point.

`ralph-monitor hook` goes straight to the Claude Code hook (`agent.hook_start`), without
importing the rest of the command line: Claude Code starts it for every hook event (every tool
call), so its start-up time is the agent's time. Every other subcommand (and `hook --help`) goes to `cli`.
This is the only way in: the console script and `python -m ralph_monitor` both call `main`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run `ralph-monitor ARGS` (default: this process's arguments); return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["hook"] and not {"-h", "--help"} & set(args):
        from ralph_monitor.agent.hook_start import main as hook_main

        return hook_main(args[1:])  # never fails the agent: no config errors, no usage errors
    from ralph_monitor.cli import monitor_main

    return monitor_main(args)
