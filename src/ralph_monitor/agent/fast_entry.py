"""`ralph-monitor`, run by path without Python's `site` step: what `ralph-monitor
claude-settings` puts in Claude Code's settings.

    PYTHON -S /abs/path/to/ralph_monitor/agent/fast_entry.py hook [ARGS]

Claude Code waits for the hook's process on every tool call (and for the status line on every
refresh). The hook's parent imports only built-in modules before it exits (agent/hook_start.py),
so most of that wait is the interpreter's start-up, and a few milliseconds of it are `site`
(finding site-packages, running its .pth files) and a console script's own imports. `hook` and
`statusline` need neither: everything under `ralph_monitor/agent/` is standard library only.

Run by path, Python puts this file's directory first on `sys.path`; `run` puts the directory
that holds the `ralph_monitor` package there instead, from `__file__` (absolute since Python
3.9) with string operations: under `-S` nothing has loaded `os` yet, and the hook's parent
process never does. Any other subcommand, or `--help`, runs `site.main()` first so that the
command line's third-party packages are found: this file is a complete `ralph-monitor`.
Importing it does nothing.
"""

import sys


def run() -> int:
    """Make `ralph_monitor` importable from where this file is, then run `launcher.main`."""
    root = __file__.rsplit("/", 3)[0]  # .../site-packages of .../site-packages/ralph_monitor/agent/fast_entry.py
    if sys.flags.safe_path:  # -P / PYTHONSAFEPATH: Python did not add this file's directory
        sys.path.insert(0, root)
    else:
        sys.path[0] = root
    from ralph_monitor import launcher

    args = sys.argv[1:]
    if not launcher.standalone(args):
        import site

        site.main()
    return launcher.main(args)


if __name__ == "__main__":
    sys.exit(run())
