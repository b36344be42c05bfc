"""The `ralph-monitor` command's entry point.

`ralph-monitor hook` goes straight to the Claude Code hook, without importing the rest of the
command line: Claude Code starts it for every hook event (every tool call), so its start-up
time is the agent's time. Every other subcommand goes to `cli`.
"""

from __future__ import annotations

import sys


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["hook"] and not {"-h", "--help"} & set(args):
        from ralph_monitor.agent.hook import main as hook_main

        return hook_main(args[1:])
    from ralph_monitor.cli import monitor_main

    return monitor_main(args)
