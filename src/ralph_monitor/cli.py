"""Command-line entry points: `ralph-monitor` (daemon and agent side) and `ralph-query`."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ralph_monitor import __version__
from ralph_monitor.client import build_event, send_event
from ralph_monitor.cluster import database_dsn
from ralph_monitor.config import DEFAULT_CONFIG_PATH, Settings, load_settings, render_default_config
from ralph_monitor.errors import ConfigError, RalphMonitorError
from ralph_monitor.logs import setup_logging

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

MONITOR_EPILOG = """\
Quick use:
  ralph-monitor run                       start the daemon (no config: private PostgreSQL under
                                          /var/lib/ralph-monitor, socket /run/ralph-monitor/events.sock)
  ralph-monitor emit spec_started --spec CR-02 --session $RALPH_SESSION_ID
  echo '{"type":"session_heartbeat"}' | socat - UNIX-CONNECT:/run/ralph-monitor/events.sock
  ralph-monitor init-config /etc/ralph-monitor/config.toml

The config file is /etc/ralph-monitor/config.toml unless --config or $RALPH_MONITOR_CONFIG says otherwise.
"""

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


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help=f"config file (default: $RALPH_MONITOR_CONFIG or {DEFAULT_CONFIG_PATH})")


def _key_values(pairs: Sequence[str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"data item {pair!r} must look like key=value")
        try:
            data[key] = json.loads(value)
        except json.JSONDecodeError:
            data[key] = value
    return data


# ralph-monitor


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from ralph_monitor.daemon import run_daemon

    return run_daemon(settings)


def _cmd_init_config(args: argparse.Namespace, settings: Settings) -> int:
    text = render_default_config()
    if args.path == "-":
        sys.stdout.write(text)
        return EXIT_OK
    path = Path(args.path)
    if path.exists() and not args.force:
        raise ConfigError(f"{path} already exists; use --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o640)
    print(f"wrote {path}")
    return EXIT_OK


def _cmd_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from ralph_monitor.projector import rebuild_aggregates

    sessions, buckets = rebuild_aggregates(settings, dsn=database_dsn(settings.database_dsn, settings.state_dir))
    print(f"recomputed {sessions} sessions and {buckets} metric buckets from events")
    return EXIT_OK


def _cmd_emit(args: argparse.Namespace, settings: Settings) -> int:
    data: dict[str, Any] = {}
    if args.data_json:
        try:
            loaded = json.loads(args.data_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--data is not valid JSON: {exc.msg}") from None
        if not isinstance(loaded, dict):
            raise ConfigError("--data must be a JSON object")
        data.update(loaded)
    data.update(_key_values(args.items))
    event = build_event(
        args.type, session_id=args.session or os.environ.get("RALPH_SESSION_ID"),
        spec_id=args.spec or os.environ.get("RALPH_SPEC_ID"), data=data or None)
    reply = send_event(args.socket or settings.socket_path, event, timeout_s=args.timeout)
    if not reply.get("ok"):
        print(f"ralph-monitor emit: rejected: {reply.get('error')}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(reply) if args.json else reply["id"])
    return EXIT_OK


def monitor_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ralph-monitor", description="Record every event of overnight agent runs in PostgreSQL.",
        epilog=MONITOR_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground (systemd runs this)",
                         description="Listen on the event socket and commit every event to PostgreSQL. "
                         "Without [database] dsn, a private PostgreSQL cluster is started under [paths] state_dir.")
    _add_config_option(run)
    run.set_defaults(func=_cmd_run)

    init = sub.add_parser("init-config", help="write a commented config file with every default",
                          description="Write a config file listing every setting with its default and help.")
    init.add_argument("path", nargs="?", default=str(DEFAULT_CONFIG_PATH),
                      help=f"where to write it ('-' for stdout; default {DEFAULT_CONFIG_PATH})")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=_cmd_init_config, no_settings=True)

    rebuild = sub.add_parser(
        "rebuild-aggregates", help="recompute sessions, spec runs and metric buckets from events",
        description="Recompute every aggregate (sessions, spec_runs, interventions, metric_buckets) "
        "from the events table, e.g. after an upgrade or a repair. Safe while the daemon runs.")
    _add_config_option(rebuild)
    rebuild.set_defaults(func=_cmd_rebuild)

    emit = sub.add_parser("emit", help="send one event and wait for its acknowledgement",
                          description="Send one event. Exits 0 once the daemon acknowledged it, "
                          "1 with the reason when it was rejected or the daemon is unreachable.")
    _add_config_option(emit)
    emit.add_argument("type", help="event type, e.g. spec_started, spec_failed, session_heartbeat")
    emit.add_argument("items", nargs="*", metavar="key=value",
                      help="data fields; values are parsed as JSON when they can be (tokens_used=1200)")
    emit.add_argument("--session", help="session UUID (default: $RALPH_SESSION_ID)")
    emit.add_argument("--spec", help="spec id (default: $RALPH_SPEC_ID)")
    emit.add_argument("--data", dest="data_json", metavar="JSON", help="data as one JSON object")
    emit.add_argument("--socket", help="socket path (default: [socket] path from the config)")
    emit.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the ack (default 5)")
    emit.add_argument("--json", action="store_true", help="print the daemon's whole reply as JSON")
    emit.set_defaults(func=_cmd_emit)
    return parser


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


def monitor_main(argv: Sequence[str] | None = None) -> int:
    return run_command(monitor_parser(), argv)
