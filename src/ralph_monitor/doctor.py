"""`ralph-monitor doctor`: check a deployment, one line per check (OK / WARN / FAIL) with the fix.

Exit status 1 when any check FAILs. It reads and connects, never changes anything.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import re
import shutil
import socket
import stat
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ralph_monitor import resources
from ralph_monitor.backup import list_backups, pg_tool
from ralph_monitor.cluster import resolve_dsn
from ralph_monitor.config import CONFIG_ENV_VAR, DEFAULT_CONFIG_PATH, Settings, load_settings
from ralph_monitor.errors import RalphMonitorError, StoreUnavailable
from ralph_monitor.store import DatabaseFacts, database_facts, describe_dsn, dsn_uses_tcp

OK, WARN, FAIL = "OK", "WARN", "FAIL"
DAEMON_USER = "ralph-monitor"
BACKUP_WARN_AGE = timedelta(hours=26)
BACKUP_FAIL_AGE = timedelta(hours=50)
PRUNE_WARN_AGE = timedelta(hours=50)
DISK_FAIL = (0.03, 256 << 20)
"""FAIL below 3 % or 256 MiB free; WARN below the next pair."""
DISK_WARN = (0.10, 2 << 30)
NGINX_CONFIG_DIRS = ("/etc/nginx/sites-enabled", "/etc/nginx/conf.d")
NGINX_SITE = "/etc/nginx/sites-available/ralph-monitor.conf"
"""Where the package puts its nginx site."""
SERVICE_UNIT = Path("/usr/lib/systemd/system/ralph-monitor.service")
SERVICE_STATE_DIR = Path("/var/lib/ralph-monitor")
"""StateDirectory=ralph-monitor: the one writable path under ProtectSystem=strict."""
UNIX_ONLY_DROPIN = Path("/etc/systemd/system/ralph-monitor.service.d/50-unix-socket-only.conf")
"""Written by the package's postinst when the database is reached over a Unix socket."""


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name:<11} {self.detail}"
        return text + (f" -- fix: {self.fix}" if self.fix else "")


def _age(when: datetime, now: datetime) -> str:
    seconds = max(0, int((now - when).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


def _as_daemon() -> str:
    """How to look as the daemon does: as its system user where the package made one, else (a
    checkout's scripts/run) as whoever started it."""
    try:
        pwd.getpwnam(DAEMON_USER)
    except KeyError:
        return "run doctor as the user that runs the daemon (the one that started `ralph-monitor run`)"
    return f"run doctor as the daemon's user: sudo -u {DAEMON_USER} ralph-monitor doctor"


# --------------------------------------------------------------------------- checks


def check_config(path: str | None) -> tuple[Check, Settings | None]:
    shown = path or os.environ.get(CONFIG_ENV_VAR) or str(DEFAULT_CONFIG_PATH)
    try:
        settings = load_settings(path)
    except RalphMonitorError as exc:
        return Check("config", FAIL, str(exc)), None
    file = Path(shown)
    if not file.exists():
        return Check("config", WARN, f"{file} does not exist: running on defaults (private PostgreSQL cluster)",
                     f"ralph-monitor init-config {file}"), settings
    mode = stat.S_IMODE(file.stat().st_mode)
    if mode & stat.S_IWOTH:
        return Check("config", FAIL, f"{file} is writable by every user (mode {mode:04o})",
                     f"chmod 640 {file}"), settings
    if settings.database_dsn and "password" in settings.database_dsn.lower():
        return Check("config", WARN, f"{file}: the DSN holds a password",
                     "move it to [database] password_file (mode 0600)"), settings
    return Check("config", OK, f"{file} (mode {mode:04o})"), settings


def check_socket(settings: Settings) -> Check:
    path = Path(settings.socket_path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return Check("socket", FAIL, f"{path} does not exist: nothing accepts events",
                     "systemctl enable --now ralph-monitor.socket (or start ralph-monitor run)")
    except PermissionError:
        return Check("socket", WARN, f"cannot see {path} from this user", _as_daemon())
    if not stat.S_ISSOCK(st.st_mode):
        return Check("socket", FAIL, f"{path} is not a socket", "remove it and restart ralph-monitor.socket")
    problems = []
    mode = stat.S_IMODE(st.st_mode)
    if mode != settings.socket_mode_bits:
        problems.append(f"mode {mode:04o}, expected {settings.socket_mode}")
    if mode & 0o002:
        return Check("socket", FAIL, f"{path} is writable by every local user (mode {mode:04o})",
                     "set SocketMode=0660 in ralph-monitor.socket / [socket] mode")
    if settings.socket_group:
        try:
            import grp

            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        if group != settings.socket_group:
            problems.append(f"group {group}, expected {settings.socket_group}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(2.0)
    try:
        sock.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return Check("socket", WARN, f"{path}: this user may not write events ({exc.strerror})",
                         f"add writers to group {settings.socket_group or 'of the socket'}: usermod -aG "
                         f"{settings.socket_group or 'GROUP'} USER")
        return Check("socket", FAIL, f"{path}: nothing is listening ({exc.strerror})",
                     "systemctl restart ralph-monitor.socket ralph-monitor.service")
    finally:
        sock.close()
    if problems:
        return Check("socket", WARN, f"{path} accepts connections but has " + ", ".join(problems),
                     "check SocketMode=/SocketGroup= in ralph-monitor.socket and [socket] in the config")
    return Check("socket", OK, f"{path} accepts connections (mode {mode:04o})")


def check_database(settings: Settings, dsn: str) -> tuple[Check, DatabaseFacts | None]:
    try:
        facts = database_facts(settings, dsn)
    except StoreUnavailable as exc:
        fix = "check [database] dsn / password_file and that PostgreSQL runs"
        if os.geteuid() == 0 and settings.database_dsn and "user=" not in settings.database_dsn:
            fix = _as_daemon() + " (the DSN names no user, so root connects as role 'root')"
        elif settings.embedded_database:
            fix = "start the daemon: it runs the private cluster (systemctl start ralph-monitor)"
        return Check("database", FAIL, str(exc), fix), None
    except RalphMonitorError as exc:
        return Check("database", FAIL, str(exc), "check [database] in the config"), None
    where = describe_dsn(dsn).split(" as ", 1)[0]
    return Check("database", OK, f"{where}: connected as {facts.user} "
                                 f"(PostgreSQL {facts.server_version.split()[0]})"), facts


def check_roles(settings: Settings, facts: DatabaseFacts) -> Check:
    if settings.embedded_database:
        return Check("roles", OK, "private cluster: one local superuser, reachable only through "
                                  f"{settings.state_dir}/postgresql/run")
    if not facts.events_table:
        return Check("roles", WARN, f"connected as {facts.user}; no events table yet to check privileges on",
                     "start the daemon once (it creates the schema), then run doctor again")
    if not facts.can_insert_events:
        return Check("roles", FAIL, f"role {facts.user} may not write events",
                     f"connect as the writer role that owns the tables ({_as_daemon()})")
    notes = []
    status = OK
    fix = ""
    if facts.superuser:
        status, fix = WARN, "create a dedicated writer role without SUPERUSER and use it in [database] dsn"
        notes.append(f"writer {facts.user} is a SUPERUSER")
    else:
        notes.append(f"writer {facts.user}")
    if facts.reader_roles:
        notes.append("read-only: " + ", ".join(facts.reader_roles))
    else:
        status = WARN
        fix = fix or ("create a read-only role: CREATE ROLE ralph_reader NOLOGIN; GRANT SELECT ON ALL TABLES "
                      "IN SCHEMA public TO ralph_reader (packaged: dpkg-reconfigure ralph-monitor)")
        notes.append("no read-only role")
    return Check("roles", status, "; ".join(notes), fix)


def check_migrations(facts: DatabaseFacts) -> Check:
    known = [m.version for m in resources.migrations()]
    applied = facts.applied_migrations
    newer = sorted(set(applied) - set(known))
    if newer:
        return Check("migrations", FAIL, f"the database has migrations {newer} this ralph-monitor does not know",
                     "upgrade ralph-monitor to the version that wrote them")
    missing = sorted(set(known) - set(applied))
    if missing:
        return Check("migrations", WARN, f"migrations {missing} are not applied yet",
                     "(re)start the daemon: it applies them at start-up")
    return Check("migrations", OK, f"schema at version {max(known)}")


def check_pg_dump(settings: Settings, facts: DatabaseFacts | None) -> Check:
    status_if_missing = FAIL if settings.schedule_backup_time else WARN
    try:
        path = pg_tool(settings, "pg_dump")
    except RalphMonitorError as exc:
        return Check("pg_dump", status_if_missing, str(exc), "apt-get install postgresql-client")
    import subprocess

    try:
        text = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                              stdin=subprocess.DEVNULL).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("pg_dump", status_if_missing, f"{path} does not run: {exc}", "reinstall postgresql-client")
    match = re.search(r"(\d+)(?:\.(\d+))?", text)
    major = int(match[1]) if match else 0
    if facts is not None and match and major < facts.server_version_num // 10000:
        server = facts.server_version_num // 10000
        return Check("pg_dump", status_if_missing, f"{path} is version {major}, older than the server ({server})",
                     f"apt-get install postgresql-client-{server}, or set [backup] pg_dump")
    return Check("pg_dump", OK, f"{path} ({text})")


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(label: str, directory: Path, *, need_bytes: int = 0) -> Check:
    where = _existing(directory)
    try:
        st = os.statvfs(where)
    except OSError as exc:
        return Check(label, WARN, f"cannot stat {where}: {exc.strerror}")
    free = st.f_bavail * st.f_frsize
    total = st.f_blocks * st.f_frsize or 1
    share = free / total
    text = f"{directory}: {free / 2**30:.1f} GiB free ({share:.0%})"
    if share < DISK_FAIL[0] or free < DISK_FAIL[1]:
        return Check(label, FAIL, text, "free some space or move [paths] to a larger disk")
    if free < need_bytes:
        return Check(label, FAIL, text + f"; the next backup needs about {need_bytes / 2**30:.1f} GiB",
                     "free some space, lower [backup] keep_daily/keep_weekly, or move [paths] backup_dir")
    if share < DISK_WARN[0] or free < DISK_WARN[1]:
        return Check(label, WARN, text, "free some space soon")
    if directory.exists() and os.geteuid() != 0 and not os.access(directory, os.W_OK | os.X_OK):
        return Check(label, WARN, text + "; not writable by this user", _as_daemon())
    return Check(label, OK, text)


def check_backups(settings: Settings, facts: DatabaseFacts | None, now: datetime) -> tuple[Check, int]:
    if not settings.schedule_backup_time:
        return Check("backup", WARN, "nightly backups are disabled ([schedule] backup_time is empty)",
                     'set [schedule] backup_time = "03:30"'), 0
    try:
        backups = list_backups(settings.backup_dir)
    except PermissionError:
        return Check("backup", WARN, f"cannot read {settings.backup_dir}", _as_daemon()), 0
    latest_failed = facts.latest.get("backup_failed") if facts else None
    if not backups:
        if latest_failed:
            return Check("backup", FAIL, f"no backup in {settings.backup_dir}; the last attempt failed "
                                         f"{_age(latest_failed[0], now)}: {latest_failed[1].get('error')}",
                         "fix the cause, then run: ralph-monitor backup"), 0
        return Check("backup", WARN, f"no backup in {settings.backup_dir} yet (nightly at "
                                     f"{settings.schedule_backup_time})", "run one now: ralph-monitor backup"), 0
    newest = backups[-1]
    size = newest.path.stat().st_size
    text = f"{len(backups)} backups; newest {newest.path.name}, {_age(newest.taken_at, now)}, {size / 2**20:.1f} MiB"
    if latest_failed and latest_failed[0] > newest.taken_at:
        return Check("backup", FAIL, f"{text}; a later backup failed {_age(latest_failed[0], now)}: "
                                     f"{latest_failed[1].get('error')}", "fix the cause, then run: ralph-monitor backup"), size
    age = now - newest.taken_at
    if age > BACKUP_FAIL_AGE:
        return Check("backup", FAIL, text, "is the daemon running? run one now: ralph-monitor backup"), size
    if age > BACKUP_WARN_AGE:
        return Check("backup", WARN, text, "is the daemon running? run one now: ralph-monitor backup"), size
    return Check("backup", OK, text), size


def check_prune(settings: Settings, facts: DatabaseFacts | None, now: datetime) -> Check:
    if not settings.schedule_prune_time:
        return Check("prune", WARN, "retention is disabled ([schedule] prune_time is empty): tables grow forever",
                     'set [schedule] prune_time = "04:15"')
    if facts is None or not facts.events_table:
        return Check("prune", WARN, "unknown (database not reachable)")
    done = facts.latest.get("prune_completed")
    failed = facts.latest.get("prune_failed")
    if failed and (done is None or failed[0] > done[0]):
        return Check("prune", WARN, f"the last prune failed {_age(failed[0], now)}: {failed[1].get('error')}",
                     "fix the cause, then run: ralph-monitor prune")
    if done is None:
        return Check("prune", OK, f"no prune yet (daily at {settings.schedule_prune_time})")
    if now - done[0] > PRUNE_WARN_AGE:
        return Check("prune", WARN, f"last prune {_age(done[0], now)}", "is the daemon running? ralph-monitor prune")
    return Check("prune", OK, f"last prune {_age(done[0], now)}, removed {done[1].get('events', 0)} events")


def check_render(settings: Settings, now: datetime) -> Check:
    state_file = settings.site_dir / "render-state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Check("dashboard", WARN, f"never rendered ({state_file} is missing)",
                     "start the daemon, or run: ralph-monitor render")
    except (OSError, ValueError) as exc:
        return Check("dashboard", WARN, f"cannot read {state_file}: {exc}")
    error = state.get("last_error")
    last = state.get("last_render_at")
    try:
        when = datetime.fromisoformat(last) if last else None
    except ValueError:
        when = None
    limit = timedelta(seconds=max(300, 3 * settings.schedule_render_interval_s))
    if error:
        return Check("dashboard", WARN, f"last render failed: {error.get('message')}", "see journalctl -u ralph-monitor")
    if when is None:
        return Check("dashboard", WARN, "never rendered", "start the daemon, or run: ralph-monitor render")
    if now - when > limit:
        return Check("dashboard", WARN, f"last render {_age(when, now)}: stale", "is the daemon running?")
    return Check("dashboard", OK, f"last render {_age(when, now)} into {settings.site_dir}")


def check_spool(settings: Settings, facts: DatabaseFacts | None) -> Check:
    path = settings.spool_dir
    on_disk = 0
    try:
        on_disk = sum(p.stat().st_size for p in path.iterdir() if p.is_file() and p.suffix == ".spool")
    except FileNotFoundError:
        pass
    except PermissionError:
        pass
    reported = facts.spool_backlog.get(settings.host, 0) if facts else 0
    if reported:
        return Check("spool", WARN, f"{reported} events wait in {path} for PostgreSQL",
                     "they are replayed when the database answers; check the database check above")
    if on_disk > 1 << 20:
        return Check("spool", WARN, f"{on_disk / 2**20:.1f} MiB in {path}",
                     "replayed when the database answers; is the daemon running?")
    return Check("spool", OK, f"empty ({path})")


def check_projection(facts: DatabaseFacts | None) -> Check:
    """Sessions whose aggregates are not updated because their projection fails."""
    if facts is None or not facts.events_table:
        return Check("aggregates", WARN, "unknown: no database to look at", "see the database check above")
    failing = facts.projection_failures
    if not failing:
        return Check("aggregates", OK, "every session's projection is up to date")
    first = failing[0]
    return Check("aggregates", FAIL,
                 f"{facts.projection_failures_total} session(s) not updated; oldest {first['session_id']} "
                 f"since {first['first_failed_at']:%Y-%m-%d %H:%M}: {first['error'][:200]}",
                 "fix the cause (see the daemon's log), then run: ralph-monitor rebuild-aggregates")


def _running_nginx_configs() -> list[Path]:
    """The config files (with the files they include) of the nginx masters running here, such
    as the private one `scripts/run` starts."""
    configs: list[Path] = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace").split()
        except OSError:
            continue
        if argv[:3] != ["nginx:", "master", "process"] or "-c" not in argv[:-1]:
            continue
        main = Path(argv[argv.index("-c") + 1])
        configs.append(main)
        try:
            text = main.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for pattern in re.findall(r"\binclude\s+([^;\s]+);", text):
            if pattern.startswith("/"):
                configs.extend(Path("/").glob(pattern.lstrip("/")))
    return configs


def check_nginx(settings: Settings) -> Check:
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.path.exists(p)), None)
    root = str(settings.site_dir)
    found = []
    enabled = [conf for directory in NGINX_CONFIG_DIRS if Path(directory).is_dir()
               for conf in sorted(Path(directory).glob("*"))]
    for conf in enabled + _running_nginx_configs():
        try:
            if root in conf.read_text(encoding="utf-8", errors="replace") and str(conf) not in found:
                found.append(str(conf))
        except OSError:
            continue
    if found and nginx:
        return Check("nginx", OK, f"site enabled: {', '.join(found)}")
    if found:
        return Check("nginx", WARN, f"{', '.join(found)} serves {root} but nginx is not installed",
                     "apt-get install nginx")
    if nginx and Path(NGINX_SITE).exists():
        return Check("nginx", WARN, f"no enabled nginx site serves {root}",
                     "ln -s ../sites-available/ralph-monitor.conf /etc/nginx/sites-enabled/ && "
                     "nginx -t && systemctl reload nginx")
    if nginx:   # a checkout: the package's site is not installed
        return Check("nginx", WARN, f"no running or enabled nginx site serves {root}",
                     "scripts/run serves it on http://127.0.0.1:8080/; or install packaging/nginx/ralph-monitor.conf "
                     f"as {NGINX_SITE} (root: {root}/current) and enable it")
    return Check("nginx", WARN, f"nginx is not installed: the dashboard in {root} is not served",
                 "apt-get install nginx")


def check_sandbox(settings: Settings) -> Check | None:
    """Under the packaged unit (ProtectSystem=strict) only /var/lib/ralph-monitor is writable,
    and with the package's Unix-socket drop-in the service cannot open TCP connections."""
    if not SERVICE_UNIT.exists():
        return None
    outside = [f"{label} {path}" for label, path in (("state_dir", settings.state_dir),
                                                     ("site_dir", settings.site_dir),
                                                     ("backup_dir", settings.backup_dir))
               if not _is_within(path, SERVICE_STATE_DIR)]
    if outside:
        paths = " ".join(str(p).split(" ", 1)[1] for p in outside)
        return Check("sandbox", FAIL, f"the service may write only below {SERVICE_STATE_DIR}; outside it: "
                                      + ", ".join(outside),
                     f"systemctl edit ralph-monitor, add [Service] ReadWritePaths={paths}, then restart")
    if UNIX_ONLY_DROPIN.exists() and settings.database_dsn and dsn_uses_tcp(settings.database_dsn):
        return Check("sandbox", FAIL, f"the DSN connects over TCP but {UNIX_ONLY_DROPIN} allows Unix sockets only",
                     f"rm {UNIX_ONLY_DROPIN} && systemctl daemon-reload && systemctl restart ralph-monitor")
    if UNIX_ONLY_DROPIN.exists():
        return Check("sandbox", OK, "service restricted to Unix sockets (the DSN needs no TCP); "
                                    f"writes only below {SERVICE_STATE_DIR}")
    return Check("sandbox", OK, f"service writes only below {SERVICE_STATE_DIR}")


def _is_within(path: Path, parent: Path) -> bool:
    try:
        Path(os.path.normpath(path)).relative_to(parent)
        return True
    except ValueError:
        return False


def run_checks(config_path: str | None, *, now: datetime | None = None) -> list[Check]:
    now = now or datetime.now(timezone.utc)
    config, settings = check_config(config_path)
    checks = [config]
    if settings is None:
        return checks
    checks.append(check_socket(settings))
    dsn = resolve_dsn(settings)
    database, facts = check_database(settings, dsn)
    checks.append(database)
    if facts is not None:
        checks += [check_roles(settings, facts), check_migrations(facts)]
    checks.append(check_pg_dump(settings, facts))
    backup, last_size = check_backups(settings, facts, now)
    checks += [check_disk("disk state", settings.state_dir),
               check_disk("disk site", settings.site_dir),
               check_disk("disk backup", settings.backup_dir, need_bytes=2 * last_size),
               backup, check_prune(settings, facts, now), check_render(settings, now),
               check_spool(settings, facts), check_projection(facts), check_nginx(settings)]
    sandbox = check_sandbox(settings)
    if sandbox is not None:
        checks.append(sandbox)
    return checks


def main(config_path: str | None, *, as_json: bool = False) -> int:
    checks = run_checks(config_path)
    if as_json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        for check in checks:
            print(check.line())
        fails = sum(c.status == FAIL for c in checks)
        warns = sum(c.status == WARN for c in checks)
        print(f"{len(checks)} checks: {fails} FAIL, {warns} WARN", file=sys.stderr)
    return 1 if any(c.status == FAIL for c in checks) else 0
