"""The dashboard inside the daemon: when to render, in which process, and what a failure does.

Renders run in the render process (worker.RenderProcess), which a worker thread waits for:
every [schedule] render_interval_s, render_debounce_s after the aggregates changed, and a
full rebuild at start-up and every FULL_EVERY_S. A failed render is logged and noted in
render-state.json; the last good site stays published.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ralph_monitor.context import DaemonContext
from ralph_monitor.dashboard.publish import SiteDir
from ralph_monitor.dashboard.render import SiteRenderer
from ralph_monitor.dashboard.worker import RenderProcess
from ralph_monitor.errors import RenderFailed

log = logging.getLogger(__name__)

FULL_EVERY_S = 6 * 3600
"""Also rebuild everything this often (drops pages of sessions pruned by retention)."""
JOB_NAME = "render-site"
RENDER_DUTY = 10
"""After new events, wait at least this many times the last render's duration before the next."""


class SiteService:
    """The dashboard feature (context.Feature): a scheduled render every [schedule]
    render_interval_s, a debounced one after aggregates changed, a full rebuild at start-up
    and every FULL_EVERY_S."""

    _context: DaemonContext
    _process: RenderProcess
    _site: SiteDir
    """These three are set by `install`, which the daemon calls before anything else."""

    def __init__(self) -> None:
        self._full_due = 0.0  # monotonic time of the next full rebuild; 0: at once
        self._running = False
        self._again = False
        self._kick: asyncio.TimerHandle | None = None
        self._failing = False
        self._stopping = False
        self._last_seconds = 0.0
        """How long the last incremental render took."""

    def install(self, context: DaemonContext) -> None:
        settings = context.settings
        self._context = context
        self._process = RenderProcess(SiteRenderer, settings, context.dsn)
        self._site = SiteDir(settings.site_dir)
        context.scheduler.every(JOB_NAME, settings.schedule_render_interval_s, self.run, run_now=True)
        context.projector.listeners.append(self.changed)

    def stop(self) -> None:
        """No more renders; a render in progress ends now (its render process gets SIGTERM)."""
        self._stopping = True
        if self._kick is not None:
            self._kick.cancel()
            self._kick = None
        self._process.stop()

    def changed(self) -> None:
        """Aggregates changed: render within [schedule] render_debounce_s (once for a burst), or
        later when renders are slow, so that rendering takes at most 1/RENDER_DUTY of the time
        (it shares the CPUs, and the database, with ingestion)."""
        if self._kick is None and not self._stopping:
            delay = max(self._context.settings.schedule_render_debounce_s, RENDER_DUTY * self._last_seconds)
            self._kick = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._kick = None
        if self._running:
            self._again = True
        else:
            self._context.scheduler.run_soon(JOB_NAME)

    async def run(self) -> None:
        self._running = True
        try:
            while True:
                self._again = False
                full = time.monotonic() >= self._full_due
                if await asyncio.to_thread(self._render, full) and full:
                    self._full_due = time.monotonic() + FULL_EVERY_S
                if not self._again or self._stopping:
                    return
        finally:
            self._running = False

    def _render(self, full: bool) -> bool:
        try:
            result = self._process.render(full=full)
        except Exception as exc:
            if self._stopping:
                log.info("dashboard render stopped: the daemon is shutting down")
                return False
            detail = str(exc) if isinstance(exc, RenderFailed) else f"{type(exc).__name__}: {exc}"
            summary = detail.strip().splitlines()[-1] if detail.strip() else type(exc).__name__
            if not self._failing:
                log.error("dashboard render failed; the last good site stays published, retrying: %s", detail)
            else:
                log.warning("dashboard render failed again: %s", summary)
            self._failing = True
            self._site.record_failure(summary)
            return False
        if self._failing:
            log.info("dashboard renders again")
            self._failing = False
        if not result.full:
            self._last_seconds = result.seconds
        (log.info if result.full else log.debug)(
            "dashboard %s: %d pages, %d files changed, %.3f s (release %s)",
            "rebuilt" if result.full else "updated", result.pages, result.written, result.seconds, result.release)
        return True
