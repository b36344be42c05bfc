"""Periodic jobs inside the daemon (APScheduler 3 on the daemon's asyncio loop).

Jobs are coroutines. Blocking work (rendering, pg_dump) must hop to a thread inside the
job, so ingestion never waits for it. A failing job is logged and retried at its next
run; it never stops the daemon. One instance of a job runs at a time; missed runs
(e.g. the machine slept) are coalesced into one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, time, tzinfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

log = logging.getLogger(__name__)

MISFIRE_GRACE_S = 3600
"""A daily job that could not run on time still runs if at most this late."""

Job = Callable[[], Awaitable[object]]


class Scheduler:
    """A thin, explicit wrapper: `every(...)`, `daily(...)`, `start()`, `shutdown()`."""

    def __init__(self, *, zone: tzinfo) -> None:
        self._scheduler = AsyncIOScheduler(timezone=zone)
        self._zone = zone

    def _wrap(self, name: str, job: Job) -> Job:
        async def run() -> None:
            try:
                await job()
            except asyncio.CancelledError:
                # shutdown() cancels jobs still running: the daemon is stopping, not failing.
                log.info("scheduled job %s stopped: the daemon is shutting down", name)
            except Exception:
                log.exception("scheduled job %s failed; it will run again at its next time", name)

        return run

    def every(self, name: str, seconds: float, job: Job, *, run_now: bool = False) -> None:
        """Run `job` every `seconds` (and once right away if `run_now`)."""
        first = {"next_run_time": datetime.now(self._zone)} if run_now else {}
        self._scheduler.add_job(self._wrap(name, job), IntervalTrigger(seconds=seconds), id=name, name=name,
                                coalesce=True, max_instances=1, misfire_grace_time=max(1, int(seconds)),
                                replace_existing=True, **first)

    def daily(self, name: str, at: time, job: Job) -> None:
        """Run `job` every day at `at` (to the second) in the scheduler's time zone."""
        trigger = CronTrigger(hour=at.hour, minute=at.minute, second=at.second, timezone=self._zone)
        self._scheduler.add_job(self._wrap(name, job), trigger,
                                id=name, name=name, coalesce=True, max_instances=1,
                                misfire_grace_time=MISFIRE_GRACE_S, replace_existing=True)

    def run_soon(self, name: str) -> None:
        """Move the next run of job `name` to now (the scheduler must be running)."""
        job = self._scheduler.get_job(name)
        if job is not None:
            job.modify(next_run_time=datetime.now(self._zone))

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
