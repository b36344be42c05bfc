"""The daemon: wires config, store, spool, ingestor and server; handles signals and systemd.

Start-up order matters for guarantee 1: the spool is opened (and replayed once the
database answers) before the socket accepts anything, and READY=1 is sent only once the
socket listens and the schema is migrated (or the database is known to be down, in which
case events are spooled). SIGTERM stops reading, commits and acknowledges everything
already received, then exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from contextlib import suppress
import inspect
from pathlib import Path

import sdnotify

from ralph_monitor import __version__, disk, jobs
from ralph_monitor.alerts.service import AlertService
from ralph_monitor.cluster import EMBEDDED_DBNAME, embedded_cluster, resolve_dsn
from ralph_monitor.config import Settings, report_zone
from ralph_monitor.context import DaemonContext, Feature, FunctionFeature
from ralph_monitor.dashboard.service import SiteService
from ralph_monitor.errors import StoreUnavailable
from ralph_monitor.ingest import Ingestor
from ralph_monitor.projector import Projector
from ralph_monitor.protocol import Origin
from ralph_monitor.scheduler import Scheduler
from ralph_monitor.server import EventServer, activated_socket, bind_socket, refuse_if_served
from ralph_monitor.spool import Spool
from ralph_monitor.store import EventStore, ProjectionStore, ensure_database

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 5.0
CLOSE_GRACE_S = 2.0
QUIESCE_QUIET_S = 0.3
QUIESCE_MAX_S = 2.0
"""On SIGTERM, keep reading until clients are quiet this long (bounded), then drain."""
STATE_DIR_MODE = 0o751
"""Traversable by nginx (site/) and by the embedded cluster's user, not listable."""


class Notifier:
    """sd_notify messages; silent when not started by systemd (no NOTIFY_SOCKET)."""

    def __init__(self) -> None:
        self._notifier = sdnotify.SystemdNotifier() if os.environ.get("NOTIFY_SOCKET") else None
        usec = os.environ.get("WATCHDOG_USEC")
        for_us = os.environ.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid())
        self.watchdog_interval_s = int(usec) / 2_000_000 if usec and usec.isdigit() and for_us else None
        # Child processes (pg_dump, an embedded postgres) must not talk to systemd as us.
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            os.environ.pop(name, None)

    def send(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(message)


def _terminate_during_startup(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run_daemon(settings: Settings) -> int:
    """`ralph-monitor run`: serve until SIGTERM/SIGINT. Returns the exit code."""
    # Until the event loop installs its handlers, SIGTERM unwinds (stopping the cluster).
    signal.signal(signal.SIGTERM, _terminate_during_startup)
    refuse_if_served(settings)
    notifier = Notifier()
    settings.state_dir.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    cluster = None
    dsn = None
    if settings.embedded_database:
        cluster = embedded_cluster(settings.state_dir)
        cluster.start()
        ensure_database(cluster.dsn("postgres"), EMBEDDED_DBNAME)
        dsn = cluster.dsn(EMBEDDED_DBNAME)
        log.info("no [database] dsn configured: using the private cluster in %s", cluster.root)
    try:
        return asyncio.run(_serve(settings, dsn=dsn, notifier=notifier,
                                  database_dir=cluster.data_dir if cluster is not None else None))
    finally:
        if cluster is not None:
            cluster.stop()


async def _serve(settings: Settings, *, dsn: str | None, notifier: Notifier, database_dir: Path | None) -> int:
    host = settings.host
    stores = [EventStore(settings, dsn=dsn) for _ in range(settings.database_writer_connections)]
    spool = Spool(settings.spool_dir)
    spool.open()
    if spool.backlog:
        log.info("spool %s holds %d records from before; replaying when PostgreSQL answers",
                 spool.path, spool.backlog)
    try:
        for store in stores:
            await store.connect()
    except StoreUnavailable as exc:
        log.warning("%s; starting anyway, events will be spooled to %s", exc, spool.path)

    ingestor = Ingestor(settings, stores, spool, host=host)
    server = EventServer(settings, ingestor, host=host)
    ingestor.on_queue_change = server.on_queue_change
    projection_store = ProjectionStore(settings, dsn=dsn)
    projector = Projector(settings, projection_store, host=host,
                          emit=lambda event: ingestor.submit(event, None, None))
    ingestor.on_commit = projector.wake
    sock = activated_socket()
    activated = sock is not None
    if sock is None:
        sock = bind_socket(settings)
    await server.start(sock)
    writer = asyncio.create_task(ingestor.run(), name="writer")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    disks = {"state": settings.state_dir, "site": settings.site_dir, "backups": settings.backup_dir}
    if database_dir is not None:
        disks["database"] = database_dir
    helpers = [asyncio.create_task(_report_status(notifier, ingestor, server, projector, settings, disks),
                                   name="status"),
               asyncio.create_task(projector.run(), name="projector")]
    if notifier.watchdog_interval_s:
        helpers.append(asyncio.create_task(_watchdog(notifier, notifier.watchdog_interval_s), name="watchdog"))
    scheduler = Scheduler(zone=report_zone(settings.reports_timezone))
    context = DaemonContext(
        settings=settings, dsn=resolve_dsn(settings) if dsn is None else dsn,
        origin=Origin(host=host, uid=os.getuid(), pid=os.getpid()), scheduler=scheduler,
        record=lambda event: ingestor.submit(event, None, None), projector=projector)
    features = install_features(context)
    scheduler.start()
    where = "socket from systemd" if activated else settings.socket_path
    log.info("ralph-monitor %s listening on %s (host %s)", __version__, where, host)
    notifier.send("READY=1")

    stop_wait = asyncio.create_task(stop.wait())
    await asyncio.wait({stop_wait, writer}, return_when=asyncio.FIRST_COMPLETED)
    if writer.done():
        writer.result()
    log.info("stopping: committing what was received")
    notifier.send("STOPPING=1")
    scheduler.shutdown()
    for feature in features:
        if inspect.isawaitable(stopping := feature.stop()):
            await stopping
    await server.quiesce(quiet_s=QUIESCE_QUIET_S, max_s=QUIESCE_MAX_S)
    await server.stop_accepting()
    await ingestor.stop()
    await writer
    server.close_connections()
    await _wait_closed(server)
    for task in helpers:
        task.cancel()
    await asyncio.gather(*helpers, return_exceptions=True)
    await projection_store.close()
    for store in stores:
        await store.close()
    spool.close()
    if not activated:
        with suppress(FileNotFoundError):
            os.unlink(settings.socket_path)
    sock.close()
    log.info("stopped; %d events stored in this run, %d spooled",
             ingestor.stats.events_total, ingestor.stats.spooled_total)
    return 0


def install_features(context: DaemonContext) -> list[Feature]:
    """Install the scheduled features (each adds one line here); they are stopped at shutdown."""
    features: list[Feature] = [
        FunctionFeature(jobs.install, jobs.stop_running_work),
        SiteService(),
        AlertService(),
    ]
    for feature in features:
        feature.install(context)
    return features


async def _wait_closed(server: EventServer) -> None:
    """Give transports a moment to hand the last replies to the kernel."""
    deadline = asyncio.get_running_loop().time() + CLOSE_GRACE_S
    while server.connection_count and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


async def _watchdog(notifier: Notifier, interval_s: float) -> None:
    while True:
        notifier.send("WATCHDOG=1")
        await asyncio.sleep(interval_s)


async def _report_status(notifier: Notifier, ingestor: Ingestor, server: EventServer,
                         projector: Projector, settings: Settings, disks: dict[str, Path]) -> None:
    """STATUS= every few seconds; also samples free disk space for the health row, and says
    in the log when a disk becomes low (once per change, not every sample)."""
    warned: dict[str, str] = {}
    while True:
        await asyncio.sleep(STATUS_INTERVAL_S)
        ingestor.disks = await asyncio.to_thread(disk.sample, disks)
        low = disk.low_disks(ingestor.disks, settings.monitor_disk_warn_free_percent)
        if low != warned:
            if low:
                log.warning("disk space low: %s; see README \"Full disks\"", "; ".join(
                    f"{label} {how} ({ingestor.disks[label].path})" for label, how in low.items()))
            elif warned:
                log.info("disk space is fine again")
            warned = low
        database = "up" if ingestor.database_up else "DOWN (spooling)"
        failing = (f", aggregates FAILING for {projector.failing_sessions} session(s)"
                   if projector.failing_sessions else "")
        space = f", disk LOW: {', '.join(f'{label} {how}' for label, how in low.items())}" if low else ""
        notifier.send(
            f"STATUS={ingestor.stats.rate():.0f} events/s, {server.connection_count} connections, "
            f"{ingestor.pending} queued, spool {ingestor.spool_backlog}, database {database}{failing}{space}")

