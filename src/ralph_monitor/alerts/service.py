"""The alerts in the daemon: evaluate the rules every [alerts] check_interval_s, deliver due
messages every DELIVER_POLL_S. Both run in worker threads with a connection of their own,
so a slow destination or a slow query never delays an acknowledgement.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, time, timezone
from typing import TYPE_CHECKING, Any

from ralph_monitor.alerts import delivery, report
from ralph_monitor.alerts.rules import night_bounds
from ralph_monitor.config import Settings, report_zone
from ralph_monitor.errors import StoreError
from ralph_monitor.logs import Throttle
from ralph_monitor.store import AlertStore, open_read_store

if TYPE_CHECKING:
    from ralph_monitor.context import DaemonContext

log = logging.getLogger(__name__)

DELIVER_POLL_S = 1.0
MESSAGES_PER_POLL = 20
FAILURE_LOG_INTERVAL_S = 300.0
"""A destination that keeps failing is named in the log at most this often."""


class AlertService:
    """The daemon feature: evaluation and delivery loops, and the morning report's job."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []
        self._store_errors = Throttle(FAILURE_LOG_INTERVAL_S)
        self._delivery_errors: dict[str, Throttle] = {}

    def install(self, context: DaemonContext) -> None:
        self._settings = context.settings
        self._dsn = context.dsn
        self._store = AlertStore(context.settings, dsn=context.dsn)
        self._destinations = {d.label: d for d in delivery.destinations(context.settings)}
        if not self._destinations:
            log.info("no [alerts] urls or command configured: alerts are recorded, not sent")
        self._tasks = [asyncio.create_task(self._loop(self.evaluate, self._settings.alerts_check_interval_s),
                                           name="alerts-evaluate"),
                       asyncio.create_task(self._loop(self.deliver, DELIVER_POLL_S), name="alerts-deliver")]
        if self._settings.reports_morning_report:
            context.scheduler.daily("morning-report", time.fromisoformat(self._settings.reports_night_end),
                                    self.send_report)

    async def stop(self) -> None:
        """Cancel the loops and the query in progress; a send in progress finishes in its thread
        (bounded by its timeouts)."""
        self._store.interrupt()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self._store.close)

    async def _loop(self, step: Any, interval_s: float) -> None:
        while True:
            try:
                await step()
            except StoreError as exc:
                if self._store_errors.ready() is not None:
                    log.warning("alerts: %s; retrying", exc)
            await asyncio.sleep(interval_s)

    async def evaluate(self) -> None:
        night = night_bounds(datetime.now(timezone.utc), self._settings)
        fired, resolved = await asyncio.to_thread(
            self._store.evaluate, night=night, destinations=list(self._destinations))
        if fired or resolved:
            log.info("alerts: %d fired, %d resolved", fired, resolved)

    async def deliver(self) -> None:
        messages = await asyncio.to_thread(self._store.claim, limit=MESSAGES_PER_POLL)
        await asyncio.gather(*(self._deliver_one(m) for m in messages))

    async def _deliver_one(self, message: dict[str, Any]) -> None:
        destination = self._destinations.get(message["destination"])
        if destination is None:
            await asyncio.to_thread(self._store.record, message["id"],
                                    "destination no longer configured", give_up=True)
            return
        error = await asyncio.to_thread(delivery.send, destination, title=message["title"], body=message["body"],
                                        message=_payload(message), body_format=message["body_format"])
        if error is not None:
            throttle = self._delivery_errors.setdefault(destination.label, Throttle(FAILURE_LOG_INTERVAL_S))
            if throttle.ready() is not None:
                log.warning("alert to %s not delivered (attempt %d): %s; retrying with backoff",
                            destination.label, message["attempts"], error)
        await asyncio.to_thread(self._store.record, message["id"], error)

    async def send_report(self) -> None:
        """The morning report, once per night (the first daemon to get here sends it)."""
        queued = await asyncio.to_thread(queue_morning_report, self._settings, self._store, self._dsn,
                                         list(self._destinations))
        if queued:
            log.info("morning report queued for %d destination(s)", len(self._destinations))


def _payload(message: dict[str, Any]) -> dict[str, Any]:
    """What the command channel gets on stdin."""
    return {key: message.get(key) for key in ("kind", "rule", "subject", "title", "body", "link", "session_id")}


def queue_morning_report(settings: Settings, store: AlertStore, dsn: str, destinations: list[str], *,
                         again: bool = False) -> bool:
    """Compose last night's report and queue it; whether it was queued (not already sent)."""
    zone = report_zone(settings.reports_timezone)
    with open_read_store(settings, dsn=dsn) as reads:
        subject, title, body = report.morning_report(reads, settings, now=datetime.now(timezone.utc), zone=zone)
    return store.queue_report(subject=subject, title=title, body=body, destinations=destinations, again=again)
