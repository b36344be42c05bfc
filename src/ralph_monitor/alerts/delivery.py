"""Sending one alert message to one destination: an Apprise URL or the configured command.

Apprise speaks to ntfy, Slack, Discord, e-mail, Telegram, Gotify, plain JSON webhooks and
some hundred more, with the URL notation its users already know. It is imported only when a
message goes out (it is heavy), and each send runs in a worker thread of the daemon with the
destination's own network timeouts, so a destination that hangs delays only its own message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ralph_monitor.config import Settings

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 30.0
NETWORK_TIMEOUT_S = 10.0
"""Apprise's connect and read timeouts for a destination (its `cto`/`rto` URL options win)."""
MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class Destination:
    """Where messages go. `label` names it in the outbox, the CLI and the dashboard without
    the URL's secrets (tokens, passwords, a ntfy topic)."""

    label: str
    url: str | None = None
    command: str | None = None


def label_for(url: str) -> str:
    """`scheme://host (#hash)`: enough to tell destinations apart, nothing to steal."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host} #{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def destinations(settings: Settings) -> list[Destination]:
    """Every configured destination, in config order."""
    found = [Destination(label_for(url), url=url) for url in settings.alerts_urls]
    if settings.alerts_command:
        found.append(Destination("command", command=settings.alerts_command))
    return found


def check_urls(urls: tuple[str, ...]) -> list[str]:
    """Problems with the configured URLs (one line each), for `doctor` and `alert test`."""
    import apprise

    return [f"[alerts] urls: {label_for(url)} is not a URL Apprise knows (see its wiki for the notation)"
            for url in urls if apprise.Apprise.instantiate(url) is None]


def send(destination: Destination, *, title: str, body: str, message: dict[str, Any],
         body_format: str = "text") -> str | None:
    """Deliver one message; None when it was delivered, else why not (one line). A Markdown
    body (the morning report) reaches e-mail as HTML and chat services in their own format."""
    try:
        if destination.command is not None:
            return _run_command(destination.command, message)
        assert destination.url is not None
        return _notify(destination.url, title, body, body_format)
    except Exception as exc:  # noqa: BLE001 - a destination's failure is its message's state, never the daemon's
        return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]


def _notify(url: str, title: str, body: str, body_format: str) -> str | None:
    import apprise

    plugin = apprise.Apprise.instantiate(url)
    if plugin is None:
        return "not a URL Apprise knows"
    for name, value in (("socket_connect_timeout", NETWORK_TIMEOUT_S), ("socket_read_timeout", NETWORK_TIMEOUT_S)):
        if "cto=" not in url and "rto=" not in url and hasattr(plugin, name):
            setattr(plugin, name, value)
    sender = apprise.Apprise()
    sender.add(plugin)
    with apprise.LogCapture(level=logging.WARNING) as captured:
        delivered = sender.notify(title=title, body=body, body_format=(
            apprise.NotifyFormat.MARKDOWN if body_format == "markdown" else apprise.NotifyFormat.TEXT))
        said = captured.getvalue().strip()
    if delivered:
        return None
    lines = [line.split(" - ", 2)[-1] for line in said.splitlines() if line.strip()]
    return ("; ".join(lines[-3:]) or "the destination refused the message")[:MAX_ERROR_CHARS]


def _run_command(command: str, message: dict[str, Any]) -> str | None:
    try:
        result = subprocess.run(
            command, shell=True, input=json.dumps(message, default=str), text=True, capture_output=True,
            timeout=COMMAND_TIMEOUT_S, env={**os.environ, "RALPH_ALERT_TITLE": message["title"],
                                            "RALPH_ALERT_KIND": message["kind"]})
    except subprocess.TimeoutExpired:
        return f"[alerts] command did not finish within {COMMAND_TIMEOUT_S:g} s"
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        return f"[alerts] command exited with {result.returncode}" + (f": {detail[-1]}" if detail else "")
    return None
