"""`ralph-monitor backup | restore | prune | doctor`: the operator's commands.

Registered on the `ralph-monitor` parser by `cli.monitor_parser` (one call), so they share
its config loading, logging and error printing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from typing import Any

from ralph_monitor.cluster import resolve_dsn
from ralph_monitor.config import DEFAULT_CONFIG_PATH, Settings, report_zone
from ralph_monitor.errors import RalphMonitorError
from ralph_monitor.protocol import Event, Origin, internal_event

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1

BACKUP_HELP = """\
Run one backup now, as the nightly job does ([schedule] backup_time): pg_dump
--format=custom of the whole database into [paths] backup_dir (default
/var/lib/ralph-monitor/backups) as ralph-monitor-YYYYMMDDTHHMMSSZ.dump. The dump is
written under a temporary name, read back with pg_restore (its table of contents and
every data block) and only then renamed; a manifest beside it (.dump.json) holds its
SHA-256 and the row count of every table, which `restore` checks. Older backups are
rotated out: the newest of each of the last [backup] keep_daily days, plus the newest of
each of [backup] keep_weekly ISO weeks before those. A backup_completed or backup_failed
event is recorded, so `ralph-query status` and the dashboard show the last backup.

Run it as the daemon's user so the files belong to it:
  sudo -u ralph-monitor ralph-monitor backup
"""

RESTORE_HELP = """\
Restore a backup made by `ralph-monitor backup` into the database DSN, in a single
transaction (all or nothing). The target must be empty: create one with
  sudo -u postgres createdb -O ralph-monitor ralph_monitor_restored
A database that already holds tables is refused unless --force is given; then the
objects in the backup are dropped and recreated (stop the daemon first). When the
backup's manifest is present, the file's SHA-256 is checked before, and every table's
row count after the restore; any difference is an error.

Ownership and grants are not restored: connect as the role that should own the tables
(the daemon's writer role) or name it with --role, then re-apply the reader's grants
(on a packaged install: dpkg-reconfigure ralph-monitor).

Example:
  sudo -u ralph-monitor ralph-monitor restore \\
      /var/lib/ralph-monitor/backups/ralph-monitor-20261125T033000Z.dump \\
      --into 'host=/var/run/postgresql dbname=ralph_monitor_restored'
"""

PRUNE_HELP = """\
Apply the retention policy now, as the nightly job does ([schedule] prune_time):
  events          older than [retention] events_days whole UTC days: each old daily
                  partition is detached and dropped (no row-by-row DELETE, so the cost
                  does not grow with the table), plus stray old rows of the default
                  partition and the client event ids of those days;
  sessions        that ended (or, if they never ended, last showed life) more than
                  [retention] sessions_days ago, with their spec runs and interventions;
                  a session that is still running is never removed;
  metric buckets  older than [retention] metric_buckets_days;
  rejects         received more than [retention] rejects_days ago.
Ingestion is never blocked: locks on the events table are taken with a short timeout
and retried. A prune_completed (or prune_failed) event is recorded.
"""

DOCTOR_HELP = """\
Check this deployment and print one line per check: OK, WARN or FAIL, with the fix.
Checks the config file, the event socket and its permissions, the database (reachable,
roles, privileges, migrations), pg_dump, free disk space in the state and backup
directories, the age of the last backup, prune and dashboard render, the spool backlog
and the nginx site. Exits 1 when any check FAILs, 0 otherwise.

Run it as the daemon's user to test the daemon's own access:
  sudo -u ralph-monitor ralph-monitor doctor
"""


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help=f"config file (default: $RALPH_MONITOR_CONFIG or {DEFAULT_CONFIG_PATH})")


def _origin(settings: Settings) -> Origin:
    return Origin(host=settings.host, uid=os.getuid(), pid=os.getpid())


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, sort_keys=True))


def _record_now(settings: Settings, dsn: str, event: Event) -> None:
    """Store one of the monitor's own events (backup_completed, ...); the daemon uses context.record."""
    from ralph_monitor.store import EventStore

    async def write() -> None:
        store = EventStore(settings, dsn=dsn)
        try:
            await store.write_batch([event], [], excerpt_bytes=settings.limits_reject_excerpt_bytes)
        finally:
            await store.close()

    try:
        asyncio.run(write())
    except RalphMonitorError as exc:
        log.warning("could not record the %s event: %s", event.event_type, exc)


def _cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    from ralph_monitor import backup

    dsn = resolve_dsn(settings)
    try:
        result = backup.backup(settings, dsn, zone=report_zone(settings.reports_timezone))
    except RalphMonitorError as exc:
        _record_now(settings, dsn, internal_event(
            "backup_failed", origin=_origin(settings),
            data={"error": str(exc), "backup_dir": str(settings.backup_dir)}))
        raise
    _record_now(settings, dsn, internal_event("backup_completed", origin=_origin(settings),
                                              data=result.event_data()))
    if args.json:
        _print_json({**result.event_data(), "counts": result.counts})
        return EXIT_OK
    print(f"backup written: {result.path} ({result.size_bytes} bytes, {result.duration_s:.1f} s, "
          f"{result.counts.get('events', 0)} events)")
    for path in result.removed:
        print(f"rotated out:    {path.name}")
    return EXIT_OK


def _cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    from ralph_monitor import backup

    result = backup.restore(settings, args.file, args.into, force=args.force, role=args.role)
    if args.json:
        _print_json({"counts": result.counts, "verified": result.expected is not None,
                     "replaced": result.replaced, "duration_s": round(result.duration_s, 3)})
        return EXIT_OK
    for table, n in sorted(result.counts.items()):
        print(f"  {table:<20} {n:>10}")
    if result.expected is not None:
        print(f"restored and verified: every table's row count equals the backup's manifest "
              f"({result.duration_s:.1f} s)")
    else:
        print(f"restored ({result.duration_s:.1f} s); no manifest beside {args.file}, "
              "so row counts were not checked")
    return EXIT_OK


def _cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    from ralph_monitor import retention

    dsn = resolve_dsn(settings)
    report = retention.prune(settings, dsn, dry_run=args.dry_run, archive_dir=args.archive)
    if not args.dry_run:
        data = report.event_data()
        if report.errors:
            data["error"] = "; ".join(report.errors)
        _record_now(settings, dsn, internal_event(
            "prune_failed" if report.errors else "prune_completed", origin=_origin(settings), data=data))
    if args.json:
        _print_json(report.event_data())
    else:
        if args.dry_run:
            print("dry run: nothing was removed")
        for line in report.lines():
            print(line)
        print(f"took {report.duration_s:.2f} s")
    return EXIT_FAILURE if report.errors else EXIT_OK


def _cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    from ralph_monitor import doctor

    return doctor.main(args.config, as_json=args.json)


def add_commands(sub: Any) -> None:
    """Add backup, restore, prune and doctor to the `ralph-monitor` subparsers."""
    raw = argparse.RawDescriptionHelpFormatter

    backup = sub.add_parser("backup", help="run a verified pg_dump backup now (and rotate old ones)",
                            description=BACKUP_HELP, formatter_class=raw)
    _add_config(backup)
    backup.add_argument("--json", action="store_true", help="print the result as JSON")
    backup.set_defaults(func=_cmd_backup)

    restore = sub.add_parser("restore", help="restore a backup into an empty database and verify it",
                             description=RESTORE_HELP, formatter_class=raw)
    _add_config(restore)
    restore.add_argument("file", metavar="FILE", help="a ralph-monitor-*.dump file")
    restore.add_argument("--into", metavar="DSN", required=True,
                         help="libpq connection string of the target database, e.g. 'dbname=restored'")
    restore.add_argument("--force", action="store_true",
                         help="restore into a database that is not empty (drops the backup's objects first)")
    restore.add_argument("--role", metavar="ROLE", help="role to own the restored objects (SET ROLE)")
    restore.add_argument("--json", action="store_true", help="print the result as JSON")
    restore.set_defaults(func=_cmd_restore)

    prune = sub.add_parser("prune", help="apply the retention policy now (or --dry-run to see it)",
                           description=PRUNE_HELP, formatter_class=raw)
    _add_config(prune)
    prune.add_argument("--dry-run", action="store_true", help="only report what would be removed")
    prune.add_argument("--archive", metavar="DIR", help="first write the removed rows to DIR as gzip'd JSON lines "
                       "(events_YYYYMMDD.jsonl.gz per day, sessions-STAMP.jsonl.gz, ...)")
    prune.add_argument("--json", action="store_true", help="print the report as JSON")
    prune.set_defaults(func=_cmd_prune)

    doctor = sub.add_parser("doctor", help="check this deployment: one line per check, with the fix",
                            description=DOCTOR_HELP, formatter_class=raw)
    _add_config(doctor)
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")
    # doctor loads (and reports on) the config itself.
    doctor.set_defaults(func=_cmd_doctor, no_settings=True)
