"""`ralph-monitor alert test`: send a test message to every configured destination now, and
say for each whether it arrived (exit 1 if any did not). Recorded in the outbox like any
message, so `ralph-query alerts` and the dashboard show it too.

`ralph-monitor alert report`: print last night's morning report, and with --send queue it to
every destination now (the running daemon delivers it).

`ralph-monitor budget check`: exit 1 when the night's (or a session's) spend is over its
budget, for shell loops: `while ralph-monitor budget check; do ...; done`."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from decimal import Decimal
from datetime import datetime, timezone
from typing import Any

from ralph_monitor.alerts import delivery
from ralph_monitor.alerts.report import morning_report
from ralph_monitor.alerts.service import queue_morning_report
from ralph_monitor.cli_common import EXIT_FAILURE, EXIT_OK, add_config_option
from ralph_monitor.cluster import resolve_dsn
from ralph_monitor.config import Settings, report_zone
from ralph_monitor.agent.client import SESSION_ENV
from ralph_monitor.alerts.rules import night_bounds
from ralph_monitor.queries import resolve_session
from ralph_monitor.errors import ConfigError, RalphMonitorError, UnknownSession
from ralph_monitor.store import AlertStore, open_read_store


def _cmd_alert_test(args: argparse.Namespace, settings: Settings) -> int:
    destinations = delivery.destinations(settings)
    if not destinations:
        raise ConfigError("no alert destination is configured: add Apprise URLs to [alerts] urls (e.g. "
                          "[\"ntfy://ntfy.sh/your-topic\"]) or a [alerts] command")
    for problem in delivery.check_urls(settings.alerts_urls):
        print(problem)
    store = AlertStore(settings, dsn=resolve_dsn(settings))
    title = "ralph-monitor test message"
    body = (f"A test from ralph-monitor on {settings.host}: if you read this, alerts reach you here."
            + (f"\n{settings.alerts_dashboard_url}" if settings.alerts_dashboard_url else ""))
    failures = 0
    try:
        for destination in destinations:
            message_id = store.queue_test(destination.label, title, body)
            error = delivery.send(destination, title=title, body=body, message=_message(title, body))
            store.record(message_id, error, give_up=True)
            print(f"{destination.label}: {'delivered' if error is None else 'FAILED: ' + error}")
            failures += error is not None
    finally:
        store.close()
    return EXIT_FAILURE if failures else EXIT_OK


def _cmd_alert_report(args: argparse.Namespace, settings: Settings) -> int:
    dsn = resolve_dsn(settings)
    zone = report_zone(settings.reports_timezone)
    with open_read_store(settings, dsn=dsn) as reads:
        _, title, body = morning_report(reads, settings, now=datetime.now(timezone.utc), zone=zone)
    print(title)
    print()
    print(body)
    if args.send:
        destinations = [d.label for d in delivery.destinations(settings)]
        if not destinations:
            raise ConfigError("no alert destination is configured: add Apprise URLs to [alerts] urls")
        store = AlertStore(settings, dsn=dsn)
        try:
            queue_morning_report(settings, store, dsn, destinations, again=True)
        finally:
            store.close()
        print(f"\nqueued for {len(destinations)} destination(s); the daemon delivers it "
              "(ralph-query alerts shows when)", file=sys.stderr)
    return EXIT_OK


EXIT_OVER_BUDGET = 1
EXIT_CANNOT_CHECK = 2


def _cmd_budget_check(args: argparse.Namespace, settings: Settings) -> int:
    session_id = args.session or os.environ.get(SESSION_ENV)
    max_usd = args.max_usd if args.max_usd is not None else (
        settings.budget_session_usd if session_id else settings.budget_night_usd)
    max_tokens = args.max_tokens if args.max_tokens is not None else (
        settings.budget_session_tokens if session_id else settings.budget_night_tokens)
    if not max_usd and not max_tokens:
        print("no budget set ([budget] in the config, or --max-usd / --max-tokens): nothing to check",
              file=sys.stderr)
        return EXIT_OK
    try:
        with open_read_store(settings, dsn=resolve_dsn(settings)) as reads:
            if session_id:
                session_id = str(resolve_session(reads, session_id))
                rows = reads.fetch("budget_session_spend", {"session_id": session_id})
                what = f"session {rows[0]['name'] or session_id}" if rows else f"session {session_id}"
                cost, tokens = (rows[0]["cost_usd"], rows[0]["tokens_used"]) if rows else (Decimal(0), 0)
            else:
                start, end = night_bounds(datetime.now(timezone.utc), settings)
                spend = reads.fetch("alert_spend_between", {"start": start, "end": end})[0]
                what = f"tonight (since {start:%H:%M})"
                cost, tokens = spend["cost_usd"], spend["tokens_used"]
    except UnknownSession as exc:   # nothing recorded for it yet: nothing spent either
        print(f"ralph-monitor: {exc}: nothing spent yet", file=sys.stderr)
        return EXIT_CANNOT_CHECK if args.strict else EXIT_OK
    except RalphMonitorError as exc:
        print(f"ralph-monitor: cannot check the budget: {exc}", file=sys.stderr)
        if args.strict:
            return EXIT_CANNOT_CHECK
        print("going on (fail open; --strict stops instead)", file=sys.stderr)
        return EXIT_OK
    over = []
    if max_usd:
        over.append(cost > Decimal(str(max_usd)))
        print(f"{what}: ${cost:.2f} of ${max_usd:.2f}")
    if max_tokens:
        over.append(tokens > max_tokens)
        print(f"{what}: {tokens:,} of {max_tokens:,} tokens")
    if any(over):
        print(f"OVER BUDGET: {what}", file=sys.stderr)
        return EXIT_OVER_BUDGET
    return EXIT_OK


def _message(title: str, body: str) -> dict[str, Any]:
    return {"kind": "test", "rule": "test", "subject": socket.gethostname(), "title": title, "body": body,
            "link": None, "session_id": None}


def add_commands(sub: Any) -> None:
    alert = sub.add_parser("alert", help="alerts: a test message to every destination, the morning report",
                           description="Alerts go to the Apprise URLs of [alerts] urls and to [alerts] command.")
    actions = alert.add_subparsers(dest="action", metavar="ACTION", required=True)
    test = actions.add_parser("test", help="send a test message to every configured destination now",
                              description="Exit status 1 if any destination did not take the message.")
    add_config_option(test)
    test.set_defaults(func=_cmd_alert_test)
    report = actions.add_parser("report", help="print last night's morning report (--send: send it now)",
                                description="The report the daemon sends at [reports] night_end.")
    add_config_option(report)
    report.add_argument("--send", action="store_true", help="also queue it to every [alerts] destination now")
    report.set_defaults(func=_cmd_alert_report)
    budget = sub.add_parser("budget", help="budgets: is the night (or a session) over its [budget]?")
    budget_actions = budget.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = budget_actions.add_parser(
        "check", help="exit 1 when over budget (for `while ralph-monitor budget check; do ...; done`)",
        description="Compares the spend of tonight (since [reports] night_start) with [budget] night_usd / "
        "night_tokens, or, with --session (or $RALPH_SESSION_ID), one session's with session_usd / "
        "session_tokens. Exit 0 within budget, 1 over it; when the database cannot be reached it says so "
        "and exits 0 (a monitoring outage should not stop the loop), or 2 with --strict.")
    add_config_option(check)
    check.add_argument("--session", metavar="ID",
                       help="check this session, by id or a unique prefix (default: $RALPH_SESSION_ID, else the night)")
    check.add_argument("--max-usd", type=float, metavar="USD", help="budget in USD (default: from [budget])")
    check.add_argument("--max-tokens", type=int, metavar="N", help="budget in tokens (default: from [budget])")
    check.add_argument("--strict", action="store_true", help="exit 2 when the spend cannot be read")
    check.set_defaults(func=_cmd_budget_check)
