"""The `ralph-monitor` command's entry point.

`ralph-monitor hook` goes straight to the Claude Code hook (`agent.hook_start`), without
importing the rest of the command line: Claude Code starts it for every hook event (every tool
call), so its start-up time is the agent's time; `ralph-monitor statusline` likewise goes straight to
`agent.statusline` (Claude Code runs it on every status-line refresh). Every other subcommand (and
`--help` of these two) goes to `cli`.
This is the only way in: the console script, `python -m ralph_monitor` and `agent/fast_entry.py`
(the same without Python's `site` step, for Claude Code's settings) all call `main`.
"""

import sys


def standalone(args: list[str]) -> bool:
    """Whether `ralph-monitor ARGS` goes straight to `agent` (`hook`, `statusline`), which needs
    nothing but the standard library; their `--help` is argparse's, in `cli`."""
    return args[:1] in (["hook"], ["statusline"]) and not {"-h", "--help"} & set(args)


def main(argv: list[str] | None = None) -> int:
    """Run `ralph-monitor ARGS` (default: this process's arguments); return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if standalone(args) and args[0] == "hook":
        from ralph_monitor.agent.hook_start import main as hook_main

        return hook_main(args[1:])  # never fails the agent: no config errors, no usage errors
    if standalone(args):
        from ralph_monitor.agent.statusline import main as statusline_main

        return statusline_main(args[1:])
    from ralph_monitor.cli import monitor_main

    return monitor_main(args)
