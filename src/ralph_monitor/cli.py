"""`ralph-monitor`'s command line: the daemon, operations and the agent-side commands.

`launcher` is the entry point (it sends `hook` calls to the hook before any of this is
imported); `ralph-query` is `query_cli`; what both share is in `cli_common`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ralph_monitor import __version__, alert_cli, dashboard_users, ops_cli
from ralph_monitor.cli_common import EXIT_FAILURE, EXIT_OK, add_config_option, run_command
from ralph_monitor.cluster import resolve_dsn
from ralph_monitor.config import DEFAULT_CONFIG_PATH, Settings, render_default_config
from ralph_monitor.errors import ClientError, ConfigError
from ralph_monitor.protocol import SESSION_ONLY_TYPES

MONITOR_EPILOG = """\
Quick use:
  ralph-monitor run                       start the daemon (no config: private PostgreSQL under
                                          /var/lib/ralph-monitor, socket /run/ralph-monitor/events.sock)
  ralph-monitor emit spec_started --spec CR-02 --session $RALPH_SESSION_ID
  echo '{"type":"session_heartbeat"}' | socat - UNIX-CONNECT:/run/ralph-monitor/events.sock
  ralph-monitor init-config /etc/ralph-monitor/config.toml

The config file is /etc/ralph-monitor/config.toml unless --config or $RALPH_MONITOR_CONFIG says otherwise.
"""

CLAUDE_HOOK_EVENTS = (
    "SessionStart", "UserPromptSubmit", "PreToolUse", "PermissionRequest", "PermissionDenied", "PostToolUse",
    "PostToolUseFailure", "PostToolBatch", "Notification", "SubagentStart", "SubagentStop", "TaskCreated",
    "TaskCompleted", "Stop", "StopFailure", "TeammateIdle", "PreCompact", "PostCompact", "SessionEnd",
)
"""The Claude Code hook events the hook is installed for, in the README's order (a unit test keeps
the README's settings block equal to it). Not MessageDisplay (every streamed chunk: ignored, yet
each call costs a process start) nor WorktreeCreate (a hook there replaces git's worktree creation)."""
GUARD_HOOK_EVENTS = frozenset({"UserPromptSubmit", "PreToolUse"})
"""Where `hook --guard` goes: before each prompt and each tool call, so a stuck session stops there."""
CLAUDE_HOOK_TIMEOUT_S = 5


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

    sessions, buckets = rebuild_aggregates(settings, dsn=resolve_dsn(settings))
    print(f"recomputed {sessions} sessions and {buckets} metric buckets from events")
    return EXIT_OK


def _cmd_render(args: argparse.Namespace, settings: Settings) -> int:
    from ralph_monitor.dashboard.render import render_once

    result = render_once(settings, dsn=resolve_dsn(settings), full=args.full)
    print(f"{'rebuilt' if result.full else 'updated'} the dashboard in {settings.site_dir / 'current'}: "
          f"{result.pages} pages rendered, {result.written} files changed, {result.seconds:.2f} s")
    return EXIT_OK


def _socket_path(args: argparse.Namespace, settings: Settings) -> str:
    """--socket, else $RALPH_MONITOR_SOCKET (set by `ralph-monitor loop`), else the config's."""
    return args.socket or os.environ.get("RALPH_MONITOR_SOCKET") or settings.socket_path


def _cmd_emit(args: argparse.Namespace, settings: Settings) -> int:
    from ralph_monitor.agent.client import EventRejected, deliver, encode_event, new_event
    from ralph_monitor.agent.spool import ClientSpool

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
    session_id = args.session or os.environ.get("RALPH_SESSION_ID")
    spec_id = args.spec or os.environ.get("RALPH_SPEC_ID")
    if session_id is None and args.type in SESSION_ONLY_TYPES:
        print(f"ralph-monitor emit: note: no --session and no $RALPH_SESSION_ID: this {args.type} is stored "
              "but belongs to no session (it counts in no session's totals)", file=sys.stderr)
    if args.git is not None:
        from ralph_monitor.agent import gitstate
        from ralph_monitor.agent.spool import default_base_dir

        data["git"] = gitstate.for_emit(args.type, args.git, session_id=session_id, spec_id=spec_id,
                                        state_dir=default_base_dir() / "git-heads")
    event = new_event(args.type, session_id=session_id, spec_id=spec_id, data=data or None,
                      ts=args.ts, event_id=args.event_id)
    socket_path = _socket_path(args, settings)
    spool = None if args.no_spool else ClientSpool.for_socket(socket_path)
    try:
        reply = deliver(encode_event(event), socket_path, spool, timeout_s=args.timeout)
    except EventRejected as exc:
        print(f"ralph-monitor emit: rejected: {exc.reply.get('error')}", file=sys.stderr)
        return EXIT_FAILURE
    if reply.get("client_spooled"):
        flush = "ralph-monitor flush" + (f" --socket {shlex.quote(socket_path)}" if args.socket else "")
        print(f"ralph-monitor emit: the daemon is unreachable; the event waits in {reply['spool']} "
              f"and goes out with the next send or `{flush}`", file=sys.stderr)
    if not args.json:
        for warning in reply.get("warnings", []):
            print(f"ralph-monitor emit: warning: {warning}", file=sys.stderr)
    print(json.dumps(reply) if args.json else reply["id"])
    return EXIT_OK


def _cmd_flush(args: argparse.Namespace, settings: Settings) -> int:
    from ralph_monitor.agent.client import flush_spool
    from ralph_monitor.agent.spool import ClientSpool

    socket_path = _socket_path(args, settings)
    spool = ClientSpool.for_socket(socket_path)
    if not spool.has_pending():
        print(f"nothing waiting in {spool.directory}")
        return EXIT_OK
    result = flush_spool(spool, socket_path, timeout_s=args.timeout, wait=True)
    print(f"delivered {result.delivered} events ({result.duplicates} were already stored)"
          + (f"; {result.rejected} refused, kept in {spool.directory / 'rejected.jsonl'}" if result.rejected else ""))
    if result.error is not None:
        print(f"ralph-monitor flush: stopped: {result.error}; {result.remaining} events still waiting", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_hook(args: argparse.Namespace, settings: Settings) -> int:
    """Only for callers of `monitor_main` itself: `launcher` runs the hook before argparse."""
    from ralph_monitor.agent.hook_start import FOREGROUND_OPTION, GUARD_OPTION
    from ralph_monitor.agent.hook_start import main as hook_main

    options = {"--socket": args.socket, "--config": args.config,
               "--max-field-bytes": args.max_field_bytes, "--timeout": args.timeout}
    argv = [f"{name}={value}" for name, value in options.items() if value is not None]
    return hook_main(argv + ([FOREGROUND_OPTION] if args.foreground else []) + ([GUARD_OPTION] if args.guard else []))


def _cmd_guard(args: argparse.Namespace, settings: Settings) -> int:
    from ralph_monitor.agent.guard import guard_session

    try:
        flagged, message = guard_session(_socket_path(args, settings), args.session, timeout_s=args.timeout)
    except ClientError as exc:
        print(f"ralph-monitor guard: cannot tell: {exc}" + ("" if args.strict else "; going on (--strict stops)"),
              file=sys.stderr)
        return alert_cli.EXIT_CANNOT_CHECK if args.strict else EXIT_OK
    if flagged:
        print(f"{message}\nStop here (`ralph-query session` shows the evidence).", file=sys.stderr)
        return EXIT_FAILURE
    if not args.quiet:
        print(message)
    return EXIT_OK


def _cmd_statusline(args: argparse.Namespace, settings: Settings) -> int:
    """Only for callers of `monitor_main` itself: `launcher` runs the status line before argparse."""
    from ralph_monitor.agent.statusline import main as statusline_main

    options = {"--socket": args.socket, "--config": args.config, "--every": args.every}
    return statusline_main([f"{name}={value}" for name, value in options.items() if value is not None]
                           + (["--no-session"] if args.no_session else []))


def claude_settings(socket_path: str | None, *, guard: bool, config: str | None = None) -> dict[str, Any]:
    """The "hooks" and "statusLine" of Claude Code's settings, every command `PYTHON -S
    <agent/fast_entry.py> ... --socket PATH` with absolute paths: no `site` step at each call, no
    PATH lookup, and no config file to read (`hook --guard` then asks the daemon with built-in
    modules, agent/guard_quick.py). Without `socket_path`, the socket the hook would find now
    (`config`, else $RALPH_MONITOR_SOCKET, [socket] path of the config file, the default)."""
    from ralph_monitor.agent import fast_entry
    from ralph_monitor.agent.hook import Options, read_config, socket_path_for

    if socket_path is None:
        options = Options([f"--config={config}"] if config else [])
        socket_path = socket_path_for(options, read_config(options))
    start = f"{shlex.quote(sys.executable)} -S {shlex.quote(os.path.abspath(fast_entry.__file__))}"
    socket_option = f" --socket {shlex.quote(os.path.abspath(socket_path))}"

    def hook(event: str) -> list[dict[str, Any]]:
        command = f"{start} hook{' --guard' if guard and event in GUARD_HOOK_EVENTS else ''}{socket_option}"
        return [{"hooks": [{"type": "command", "command": command, "timeout": CLAUDE_HOOK_TIMEOUT_S}]}]

    return {"hooks": {event: hook(event) for event in CLAUDE_HOOK_EVENTS},
            "statusLine": {"type": "command", "command": f"{start} statusline{socket_option}"}}


def _cmd_claude_settings(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(claude_settings(args.socket, guard=not args.no_guard, config=args.config), indent=2))
    return EXIT_OK


def _cmd_loop(args: argparse.Namespace, settings: Settings) -> int:
    import uuid

    from ralph_monitor.agent.client import Client
    from ralph_monitor.agent.loop import LoopRunner, Spec, load_specs
    from ralph_monitor.agent.redact import Redactor

    command = args.agent_command[1:] if args.agent_command[:1] == ["--"] else args.agent_command
    if args.session is not None:
        try:
            args.session = str(uuid.UUID(args.session))
        except ValueError:
            raise ConfigError(f"--session {args.session!r} is not a UUID") from None
    specs = load_specs(args.specs) if args.specs else [Spec(s) for s in args.spec] if args.spec else None
    with Client(_socket_path(args, settings), timeout_s=2.0, spool=not args.no_spool) as client:
        return LoopRunner(
            client, command, specs, iterations=args.iterations, name=args.name, session_id=args.session,
            timeout_s=args.timeout, heartbeat_s=args.heartbeat, kill_grace_s=args.kill_grace,
            stop_on_failure=args.stop_on_failure, stdin_spec=args.stdin_spec, quiet=args.quiet,
            stop_on_stuck=args.stop_on == "stuck" or settings.loop_health_stop_loop,
            max_cost_usd=settings.budget_session_usd if args.max_cost is None else args.max_cost,
            max_tokens=settings.budget_session_tokens if args.max_tokens is None else args.max_tokens,
            redactor=Redactor(enabled=settings.redaction_enabled, extra_patterns=settings.redaction_patterns),
            config_path=os.path.abspath(args.config) if args.config else None,
            git_dir=None if args.no_git else args.git, on_usage_limit=args.on_usage_limit,
            usage_limit_wait_s=args.usage_limit_wait, usage_limit_margin_s=args.usage_limit_margin).run()


def _cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from ralph_monitor.agent.claude_import import run_import
    from ralph_monitor.agent.prices import PRICES_DATE, PriceTable
    from ralph_monitor.agent.redact import Redactor

    try:
        prices = PriceTable.with_overrides(settings.import_prices_file or None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"[import] prices_file: {exc}") from None
    summary = run_import(_socket_path(args, settings), projects=args.projects, since=args.since,
                         redactor=Redactor(enabled=settings.redaction_enabled,
                                           extra_patterns=settings.redaction_patterns),
                         prices=prices, dry_run=args.dry_run, progress=None if args.json else sys.stderr)
    if args.json:
        print(json.dumps(summary.as_json(), indent=2, sort_keys=True))
    else:
        verb = "would record" if args.dry_run else "recorded"
        print(f"{verb} {summary.sessions} sessions ({summary.turns} turns, {summary.tool_calls} tool calls, "
              f"{summary.tokens_used:,} tokens) from {summary.files} transcript files")
        print(f"cost: ${summary.cost_api_usd:,.2f} as the transcripts give it (api), "
              f"${summary.cost_estimate_usd:,.2f} estimated from the price table of {PRICES_DATE}"
              + (f"; no price for {', '.join(sorted(summary.unpriced_models))}" if summary.unpriced_models else ""))
        if not args.dry_run:
            print(f"{summary.events_stored} events stored, {summary.events_sent - summary.events_stored - summary.rejected} "
                  f"already there; {summary.unchanged} sessions unchanged since the last import, "
                  f"{summary.recorded_by_hook} recorded live by the hook; {summary.redactions} secrets redacted")
    if summary.rejected:
        print(f"ralph-monitor import: {summary.rejected} events refused, e.g.: {summary.first_rejection}",
              file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from ralph_monitor.config import report_zone
    from ralph_monitor.demo import run_demo

    result = run_demo(_socket_path(args, settings), zone=report_zone(settings.reports_timezone),
                      night_start=settings.reports_night_start, night_end=settings.reports_night_end,
                      stall_after_s=settings.aggregates_stall_after_s, seed=args.seed)
    since, until = result["night"]
    print(f"sent {result['events']} events of a simulated night "
          f"({since:%a %H:%M} to {until:%a %H:%M}) in {len(result['sessions'])} sessions:")
    for name, session_id in result["sessions"].items():
        print(f"  {session_id}  {name}")
    print("\nNow look at them:\n  ralph-query status      what is running, stalled or waiting for a human"
          "\n  ralph-query night       what happened last night"
          "\n  ralph-query failures    which specs failed, and why")
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
    add_config_option(run)
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
    add_config_option(rebuild)
    rebuild.set_defaults(func=_cmd_rebuild)

    render = sub.add_parser(
        "render", help="regenerate the static dashboard now",
        description="Render the dashboard (HTML pages and api/*.json) into [paths] site_dir and publish it "
        "atomically. Without --full only what changed since the last render is redone. The daemon does "
        "this by itself every [schedule] render_interval_s; run this as the daemon's user.")
    add_config_option(render)
    render.add_argument("--full", action="store_true", help="rebuild every page, not only what changed")
    render.set_defaults(func=_cmd_render)

    emit = sub.add_parser("emit", help="send one event and wait for its acknowledgement",
                          description="Send one event. Exits 0 once the daemon acknowledged it (or, when "
                          "the daemon is unreachable, once it is fsync'd to this user's spool: see flush), "
                          "1 with the reason when it was rejected.")
    add_config_option(emit)
    emit.add_argument("type", help="event type, e.g. spec_started, spec_failed, session_heartbeat")
    emit.add_argument("items", nargs="*", metavar="key=value",
                      help="data fields; values are parsed as JSON when they can be (tokens_used=1200)")
    emit.add_argument("--session", help="session UUID (default: $RALPH_SESSION_ID)")
    emit.add_argument("--spec", help="spec id (default: $RALPH_SPEC_ID)")
    emit.add_argument("--data", dest="data_json", metavar="JSON", help="data as one JSON object")
    emit.add_argument("--socket", help="socket path (default: [socket] path from the config)")
    emit.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the ack (default 5)")
    emit.add_argument("--json", action="store_true", help="print the daemon's whole reply as JSON")
    emit.add_argument("--ts", help="when it happened, RFC 3339 (default: now)")
    emit.add_argument("--event-id", help="event UUID (default: a new one); the same id is stored once")
    emit.add_argument("--no-spool", action="store_true",
                      help="fail (exit 1) instead of spooling the event when the daemon is unreachable")
    emit.add_argument("--git", nargs="?", const=".", metavar="DIR",
                      help="add data.git, the git state of the repository holding DIR (default: the current "
                      "directory): on spec_started its HEAD; on spec_completed / spec_failed / timeout_triggered "
                      "the commits, files and lines since that spec_started, and whether the tree is dirty")
    emit.set_defaults(func=_cmd_emit)
    _add_agent_parsers(sub)
    ops_cli.add_commands(sub)
    alert_cli.add_commands(sub)
    dashboard_users.add_commands(sub)
    return parser


def _add_agent_parsers(sub: Any) -> None:
    from ralph_monitor.agent.hook import add_arguments as add_hook_arguments

    flush = sub.add_parser("flush", help="deliver the events spooled while the daemon was unreachable",
                           description="Deliver this user's spooled events to the daemon, oldest first. "
                           "emit, the Python client and the hook do this on their next send too.")
    add_config_option(flush)
    flush.add_argument("--socket", help="socket path (default: $RALPH_MONITOR_SOCKET, else the config's)")
    flush.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each reply (default 10)")
    flush.set_defaults(func=_cmd_flush)

    hook = sub.add_parser("hook", help="Claude Code hook: forward the hook JSON on stdin as an event",
                          description="For .claude/settings.json (see the README): reads a Claude Code hook "
                          "input on stdin and records it as event cc.<hook_event_name>. Always exits 0, "
                          "prints nothing, and gives up after --timeout seconds.")
    add_hook_arguments(hook)
    hook.set_defaults(func=_cmd_hook, no_settings=True)

    statusline = sub.add_parser(
        "statusline", help="Claude Code status line: print a short line, forward the usage windows",
        description="For .claude/settings.json: \"statusLine\": {\"type\": \"command\", \"command\": "
        "\"ralph-monitor statusline\"}. Prints the model, the 5-hour and 7-day usage windows (with their reset "
        "times) and the session's cost from the JSON Claude Code gives on stdin, at once; then, in a detached "
        "child, records the windows as a rate_limits event (when they changed, or every --every seconds). "
        "Always exits 0.")
    statusline.add_argument("--socket", help="daemon socket (default: $RALPH_MONITOR_SOCKET, else the config's)")
    statusline.add_argument("--config", metavar="FILE", help="config file to read the socket path from")
    statusline.add_argument("--every", type=float, metavar="S",
                            help="forward unchanged windows at most every S seconds (default 60)")
    statusline.add_argument("--no-session", action="store_true",
                            help="record the windows in no session (for a status line without the hook)")
    statusline.set_defaults(func=_cmd_statusline, no_settings=True)

    claude = sub.add_parser(
        "claude-settings", help="print the Claude Code settings (JSON) that run the hook and the status line",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print, as JSON, the \"hooks\" and \"statusLine\" to put in Claude Code's settings:\n"
        ".claude/settings.json in a project, or ~/.claude/settings.json for every project.\n\n"
        "The hook is on every event the README lists, with --guard on PreToolUse and UserPromptSubmit\n"
        "(it stops a session the monitor flags stuck); the status line forwards the usage windows of a\n"
        "Claude subscription. Each command is this Python with -S and the absolute path of\n"
        "ralph-monitor's agent/fast_entry.py: it needs nothing on Claude Code's PATH and starts without\n"
        "Python's site step: about half the time per tool call of `ralph-monitor hook`. The daemon's\n"
        "socket is written in too, so --guard asks it without reading the config file.\n\n"
        "Merge the output into an existing settings file rather than overwrite it, and print it again\n"
        "after moving or reinstalling ralph-monitor or moving the socket (the paths are in the commands).",
        epilog="Examples:\n"
        "  ralph-monitor claude-settings > .claude/settings.json   # a project with no settings yet\n"
        "  ralph-monitor claude-settings --socket /srv/rm/events.sock --no-guard")
    claude.add_argument("--socket", metavar="PATH",
                        help="the daemon's socket, written into each command (default: $RALPH_MONITOR_SOCKET, "
                        "else [socket] path of the config file, else /run/ralph-monitor/events.sock)")
    claude.add_argument("--config", metavar="FILE", help="config file to read the socket path from")
    claude.add_argument("--no-guard", action="store_true",
                        help="leave --guard out: a flagged session is then not stopped, and PreToolUse and "
                        "UserPromptSubmit skip its round trip to the daemon")
    claude.set_defaults(func=_cmd_claude_settings, no_settings=True)

    imports = sub.add_parser(
        "import", help="record the Claude Code sessions already on disk (its transcripts)",
        description="Read Claude Code's transcripts (~/.claude/projects/**/*.jsonl, or $CLAUDE_CONFIG_DIR/projects) "
        "and record each session with its turns, tool calls, tokens per model and cost (api where the transcript "
        "has it, else estimated). Safe to run again: only new or grown transcripts are sent, and nothing is "
        "stored twice.")
    add_config_option(imports)
    imports.add_argument("source", choices=["claude-code"], help="what to import")
    imports.add_argument("--since", default="30d", metavar="WHEN",
                         help="transcripts touched since: 30d, 12h, 2w, a date, or all (default 30d)")
    imports.add_argument("--projects", metavar="DIR", help="the transcripts' directory (default ~/.claude/projects)")
    imports.add_argument("--socket", help="socket path (default: $RALPH_MONITOR_SOCKET, else the config's)")
    imports.add_argument("--dry-run", action="store_true", help="read and sum up, send nothing")
    imports.add_argument("--json", action="store_true",
                         help="print the summary as JSON (with tokens per day and model, as ccusage counts them)")
    imports.set_defaults(func=_cmd_import)

    loop = sub.add_parser(
        "loop", help="run an agent command per spec and record each run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run COMMAND once per spec (or iteration), recording a session with one spec run each: "
        "exit code, duration, and the cost/tokens/turns of a `claude -p --output-format json|stream-json` "
        "result. {spec} and {spec_file} in COMMAND are replaced; the command also gets RALPH_SESSION_ID, "
        "RALPH_SPEC_ID, RALPH_SPEC_FILE and RALPH_MONITOR_SOCKET.",
        epilog="Examples:\n"
        "  ralph-monitor loop --specs specs/ --stdin-spec -- claude -p --output-format json\n"
        "  ralph-monitor loop --iterations 0 -- sh -c 'cat PROMPT.md | claude -p --output-format json'")
    add_config_option(loop)
    which = loop.add_mutually_exclusive_group()
    which.add_argument("--specs", metavar="FILE|DIR",
                       help="a file with one spec id per line, or a directory with one file per spec")
    which.add_argument("--spec", action="append", metavar="ID", help="run this spec (repeatable)")
    which.add_argument("--iterations", type=int, default=1, metavar="N",
                       help="without specs: run N iterations (0: until stopped; default 1)")
    loop.add_argument("--name", help="session name; `ralph-query diff` compares runs of one name "
                      "(default: the directory and the command, 'shop-backend: claude')")
    loop.add_argument("--session", metavar="UUID",
                      help="add the runs to this existing session (no session_started / session_ended)")
    loop.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                      help="stop a command after S seconds and record timeout_triggered (0: never; default 3600)")
    loop.add_argument("--heartbeat", type=float, default=60.0, metavar="S",
                      help="session_heartbeat every S seconds while a command runs (default 60)")
    loop.add_argument("--kill-grace", type=float, default=10.0, metavar="S",
                      help="seconds between the stop signal and SIGKILL (default 10)")
    loop.add_argument("--stop-on-failure", action="store_true", help="stop at the first failed or timed-out spec")
    loop.add_argument("--stop-on", choices=["stuck"],
                      help="stuck: stop when the monitor flags the session (loop health: the same error again and "
                      "again, the same tool call, no progress, ...); the session ends as stuck and the loop exits 4 "
                      "(default: [loop_health] stop_loop)")
    loop.add_argument("--max-cost", type=float, metavar="USD",
                      help="start no further spec once the session spent more than USD; the session ends as "
                      "budget_exceeded and the loop exits 3 (default: [budget] session_usd; 0: no limit)")
    loop.add_argument("--max-tokens", type=int, metavar="N",
                      help="the same for tokens (default: [budget] session_tokens; 0: no limit)")
    loop.add_argument("--on-usage-limit", choices=["wait", "stop"], default="wait",
                      help="when a run hits the subscription's usage limit (recorded as usage_limit, not as a "
                      "failure): wait: wait for the reset, then run the same spec again (default); stop: end the "
                      "session as interrupted and exit 5")
    loop.add_argument("--usage-limit-wait", type=float, default=1800.0, metavar="S",
                      help="how long to wait at the usage limit when no reset time is given (default 1800; "
                      "a wait is at most 8 h, then the spec is tried again)")
    loop.add_argument("--usage-limit-margin", type=float, default=30.0, metavar="S",
                      help="how long past the reset time to wait (default 30)")
    loop.add_argument("--stdin-spec", action="store_true", help="give each spec's file to the command on stdin")
    loop.add_argument("--git", metavar="DIR", default=".",
                      help="record what each spec run changed in the git repository holding DIR: commits, "
                      "files, lines, a dirty tree (default: the current directory)")
    loop.add_argument("--no-git", action="store_true", help="do not read git state around the spec runs")
    loop.add_argument("--quiet", action="store_true", help="do not echo the command's output")
    loop.add_argument("--socket", help="socket path (default: $RALPH_MONITOR_SOCKET, else the config's)")
    loop.add_argument("--no-spool", action="store_true", help="do not spool events while the daemon is unreachable")
    loop.add_argument("agent_command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    loop.set_defaults(func=_cmd_loop)

    guard = sub.add_parser(
        "guard", help="exit 1 when a session is flagged stuck (for `while ralph-monitor guard; do ...; done`)",
        description="Ask the daemon whether the session is flagged by a loop-health rule (or ended as stuck); "
        "exit 1 with the reason if so, 0 if not. If the daemon cannot be asked it says so and exits 0, so a "
        "monitoring outage does not stop the night's work; --strict exits 2 instead.")
    add_config_option(guard)
    guard.add_argument("--session", metavar="UUID", help="the session (default: $RALPH_SESSION_ID)")
    guard.add_argument("--socket", help="socket path (default: $RALPH_MONITOR_SOCKET, else the config's)")
    guard.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the daemon (default 2)")
    guard.add_argument("--strict", action="store_true", help="exit 2 when the daemon cannot be asked")
    guard.add_argument("--quiet", action="store_true", help="print nothing while the session is not flagged")
    guard.set_defaults(func=_cmd_guard)

    demo = sub.add_parser("demo", help="record a simulated overnight run, to see the views populated",
                          description="Send the daemon a realistic night of events (sessions with passes, "
                          "failures, a timeout, an intervention request, a stalled and a live session), "
                          "timed inside the configured night window.")
    add_config_option(demo)
    demo.add_argument("--socket", help="socket path (default: $RALPH_MONITOR_SOCKET, else the config's)")
    demo.add_argument("--seed", type=int, default=7, help="random seed for the simulated details")
    demo.set_defaults(func=_cmd_demo)


def monitor_main(argv: Sequence[str] | None = None) -> int:
    """`ralph-monitor` once `launcher` has sent `hook` calls to the hook."""
    return run_command(monitor_parser(), argv)
