"""`ralph-monitor alert test`: send a test message to every configured destination now, and
say for each whether it arrived (exit 1 if any did not). Recorded in the outbox like any
message, so `ralph-query alerts` and the dashboard show it too."""

from __future__ import annotations

import argparse
import socket
from typing import Any

from ralph_monitor.alerts import delivery
from ralph_monitor.cli_common import EXIT_FAILURE, EXIT_OK, add_config_option
from ralph_monitor.cluster import resolve_dsn
from ralph_monitor.config import Settings
from ralph_monitor.errors import ConfigError
from ralph_monitor.store import AlertStore


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


def _message(title: str, body: str) -> dict[str, Any]:
    return {"kind": "test", "rule": "test", "subject": socket.gethostname(), "title": title, "body": body,
            "link": None, "session_id": None}


def add_commands(sub: Any) -> None:
    alert = sub.add_parser("alert", help="alerts: send a test message to every destination",
                           description="Alerts go to the Apprise URLs of [alerts] urls and to [alerts] command.")
    actions = alert.add_subparsers(dest="action", metavar="ACTION", required=True)
    test = actions.add_parser("test", help="send a test message to every configured destination now",
                              description="Exit status 1 if any destination did not take the message.")
    add_config_option(test)
    test.set_defaults(func=_cmd_alert_test)
