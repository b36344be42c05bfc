"""The maintenance jobs in the daemon: the nightly backup and prune, and stopping them.

The one place that wires `backup` and `retention` into the daemon: each job runs in a worker
thread (`asyncio.to_thread`) so ingestion never waits for it, one at a time, and records
its outcome as one of the monitor's own events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import time as dtime
from typing import TYPE_CHECKING

from ralph_monitor import backup, retention
from ralph_monitor.config import report_zone
from ralph_monitor.errors import RalphMonitorError
from ralph_monitor.protocol import internal_event

if TYPE_CHECKING:
    from ralph_monitor.context import DaemonContext

log = logging.getLogger(__name__)


def stop_running_work() -> None:
    """The daemon is stopping: end pg_dump/pg_restore children and make retention stop
    retrying, so the worker thread (which asyncio cannot cancel) returns promptly."""
    backup.stop()
    retention.stop()


def install(context: DaemonContext) -> None:
    """Schedule the nightly backup and prune in the daemon (one at a time, in a thread)."""
    settings = context.settings
    zone = report_zone(settings.reports_timezone)
    exclusive = asyncio.Lock()

    async def backup_job() -> None:
        async with exclusive:
            started = time.monotonic()
            try:
                result = await asyncio.to_thread(backup.backup, settings, context.dsn, zone=zone)
            except asyncio.CancelledError:
                stop_running_work()
                raise
            except Exception as exc:  # a failed backup must never disturb the daemon
                log.error("backup failed: %s", exc, exc_info=not isinstance(exc, RalphMonitorError))
                context.record(internal_event("backup_failed", origin=context.origin, data={
                    "error": str(exc), "duration_s": round(time.monotonic() - started, 3),
                    "backup_dir": str(settings.backup_dir)}))
                return
            log.info("backup %s written (%d bytes in %.1f s)", result.path, result.size_bytes, result.duration_s)
            context.record(internal_event("backup_completed", origin=context.origin, data=result.event_data()))

    async def prune_job() -> None:
        async with exclusive:
            try:
                report = await asyncio.to_thread(retention.prune, settings, context.dsn)
            except asyncio.CancelledError:
                stop_running_work()
                raise
            except retention.PruneBusy as exc:  # another daemon on the same database is pruning it
                log.info("prune skipped: %s", exc)
                return
            except Exception as exc:
                log.error("prune failed: %s", exc, exc_info=not isinstance(exc, RalphMonitorError))
                context.record(internal_event("prune_failed", origin=context.origin, data={"error": str(exc)}))
                return
            for line in report.lines():
                log.info("prune: %s", line)
            kind = "prune_failed" if report.errors else "prune_completed"
            data = report.event_data()
            if report.errors:
                data["error"] = "; ".join(report.errors)
            context.record(internal_event(kind, origin=context.origin, data=data))

    if settings.schedule_backup_time:
        context.scheduler.daily("backup", dtime.fromisoformat(settings.schedule_backup_time), backup_job)
    if settings.schedule_prune_time:
        context.scheduler.daily("prune", dtime.fromisoformat(settings.schedule_prune_time), prune_job)
