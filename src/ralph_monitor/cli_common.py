"""What the two command lines share: `cli` (`ralph-monitor`) and `query_cli` (`ralph-query`)
both run their parsed command through `run_command`, take `--config` the same way and read
`--since`-style times with `parse_since`. Neither imports the other.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone

from ralph_monitor.config import DEFAULT_CONFIG_PATH, Settings, load_settings
from ralph_monitor.errors import RalphMonitorError
from ralph_monitor.logs import setup_logging

EXIT_OK = 0
EXIT_FAILURE = 1
_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str) -> datetime:
    """`2h`, `30m`, `1d`, `1w` ago, or an ISO 8601 timestamp (UTC if it has no offset)."""
    match = _DURATION.fullmatch(text.strip())
    if match:
        return datetime.now(timezone.utc) - timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration like 2h / 30m / 1d nor a timestamp like 2026-11-25T03:00") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help=f"config file (default: $RALPH_MONITOR_CONFIG or {DEFAULT_CONFIG_PATH})")


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse, load settings, run; print operator-readable errors and return the exit code."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        if not hasattr(args, "items") or any("=" not in extra or extra.startswith("-") for extra in extras):
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        args.items = [*args.items, *extras]
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        settings = Settings() if getattr(args, "no_settings", False) else load_settings(getattr(args, "config", None))
        setup_logging(settings.monitor_log_level)
        return func(args, settings)
    except RalphMonitorError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:   # `ralph-query session ID | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # so the interpreter's final flush does not fail again
        return EXIT_OK
