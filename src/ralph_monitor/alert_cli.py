"""`ralph-monitor alert test`: send a test message to every configured destination now, and
say for each whether it arrived (exit 1 if any did not). Recorded in the outbox like any
message, so `ralph-query alerts` and the dashboard show it too.

`ralph-monitor alert report`: print last night's morning report, and with --send queue it to
every destination now (the running daemon delivers it)."""

from __future__ import annotations

import argparse
import socket
import sys
from datetime import datetime, timezone
from typing import Any

from ralph_monitor.alerts import delivery
from ralph_monitor.alerts.report import morning_report
from ralph_monitor.alerts.service import queue_morning_report
from ralph_monitor.cli_common import EXIT_FAILURE, EXIT_OK, add_config_option
from ralph_monitor.cluster import resolve_dsn
from ralph_monitor.config import Settings, report_zone
from ralph_monitor.errors import ConfigError
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
