"""The features interface: what the daemon gives a scheduled feature, and what it asks of one.

A feature (the dashboard, backups and retention, alerts) is installed once the daemon is wired, and
stopped when the daemon shuts down. This module sits below the daemon and the features, so a
feature imports it rather than the daemon (which imports the features).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ralph_monitor.config import Settings
from ralph_monitor.protocol import Event, Origin

if TYPE_CHECKING:  # both pull in heavy imports; a context's users only read them
    from ralph_monitor.projector import Projector
    from ralph_monitor.scheduler import Scheduler


@dataclass(frozen=True)
class DaemonContext:
    """What scheduled features (dashboard, backups, retention) get from the daemon."""

    settings: Settings
    dsn: str
    """The database (the embedded cluster's, or [database] dsn)."""
    origin: Origin
    """Host, uid and pid to record on the monitor's own events."""
    scheduler: Scheduler
    record: Callable[[Event], None]
    """Store an event of the monitor's own (backup_completed, ...) through the normal path."""
    projector: Projector
    """Its `listeners` are called whenever aggregates changed."""


class Feature(Protocol):
    """A scheduled feature of the daemon."""

    def install(self, context: DaemonContext) -> None:
        """Register the feature's jobs and listeners (before the scheduler starts)."""

    def stop(self) -> Awaitable[None] | None:
        """The daemon is stopping (called on its event loop, after the scheduler cancelled the
        jobs): end blocking work now, so that worker threads, which asyncio cannot cancel,
        return promptly. May return an awaitable, which the daemon awaits."""


@dataclass(frozen=True)
class FunctionFeature:
    """A feature written as two functions of its module (install, stop)."""

    install: Callable[[DaemonContext], None]
    stop: Callable[[], None]
