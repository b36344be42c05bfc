"""Settings: one frozen dataclass, read from a TOML file, every key with a safe default.

Each field carries its TOML section, key and help text in its metadata, so the loader,
the validator and `ralph-monitor init-config` all work from the same table.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import math
import os
import re
import socket
import stat
import tomllib
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from ralph_monitor.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/ralph-monitor/config.toml")
CONFIG_ENV_VAR = "RALPH_MONITOR_CONFIG"


def _setting(section: str, default: Any, help: str, *, minimum: float | None = None) -> Any:
    return field(default=default, metadata={"section": section, "help": help, "minimum": minimum})


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every setting of the daemon and the CLI. Field name = `<section>_<key>` in TOML."""

    socket_path: str = _setting(
        "socket", "/run/ralph-monitor/events.sock",
        "Unix socket agents write events to (ignored under systemd socket activation).")
    socket_mode: str = _setting(
        "socket", "0660", "Permissions of the socket file, octal. Group-writable only.")
    socket_group: str = _setting(
        "socket", "ralph", "Group allowed to write events (the socket's group); empty keeps the daemon's group.")

    database_dsn: str = _setting(
        "database", "",
        "libpq connection string for the writer role. Empty: run a private PostgreSQL "
        "cluster under paths.state_dir.")
    database_read_dsn: str = _setting(
        "database", "",
        "libpq connection string the dashboard, ralph-query and reports read from, e.g. a streaming "
        "replica (writes never go there). Empty: the write DSN. If it cannot be reached, reads fall back "
        "to the write DSN with a warning (logged and shown in the monitor's health).")
    database_password_file: str = _setting(
        "database", "", "File (mode 0600) holding the database password, so none sits in this file.")
    database_connect_timeout_s: float = _setting(
        "database", 3.0, "Seconds to wait for PostgreSQL before spooling events locally.", minimum=0.1)
    database_retry_interval_s: float = _setting(
        "database", 2.0, "Seconds between reconnection attempts while events are spooled.", minimum=0.1)
    database_writer_connections: int = _setting(
        "database", 2,
        "Connections that commit events in parallel (PostgreSQL works on one batch while the daemon "
        "prepares the next). Each client connection always uses the same one, so its events keep their order.",
        minimum=1)

    paths_state_dir: str = _setting(
        "paths", "/var/lib/ralph-monitor", "Daemon state: spool, embedded cluster, site and backups.")
    paths_site_dir: str = _setting(
        "paths", "", "Where the static dashboard is written. Empty: <state_dir>/site.")
    paths_backup_dir: str = _setting(
        "paths", "", "Where pg_dump backups are kept. Empty: <state_dir>/backups.")

    limits_max_line_bytes: int = _setting(
        "limits", 1_048_576, "Longest accepted event line in bytes; longer lines are rejected.", minimum=1024)
    limits_max_connections: int = _setting(
        "limits", 2048, "Simultaneous client connections; more are refused with an error line.", minimum=1)
    limits_max_connections_per_uid: int = _setting(
        "limits", 1024, "Simultaneous connections of one writer uid, so one user cannot take every slot.",
        minimum=1)
    limits_evict_idle_after_s: float = _setting(
        "limits", 10.0, "At a connection limit, a client silent this long is closed (with an error line "
        "saying why) to make room for a new one, instead of refusing the new one.", minimum=0.1)
    limits_idle_timeout_s: float = _setting(
        "limits", 300.0, "Seconds a client may stay connected without sending anything.", minimum=0.1)
    limits_max_pending_events: int = _setting(
        "limits", 20_000, "Events waiting for commit before the daemon stops reading (backpressure).",
        minimum=1)
    limits_max_batch_events: int = _setting(
        "limits", 5_000, "Most events committed in one transaction (group commit).", minimum=1)
    limits_reject_excerpt_bytes: int = _setting(
        "limits", 4096, "How much of a rejected line is kept in the rejects table.", minimum=64)
    limits_max_rejects_per_connection: int = _setting(
        "limits", 100, "Rejected lines recorded per connection; later ones are answered but not stored.",
        minimum=1)
    limits_max_rejects_per_minute: int = _setting(
        "limits", 1000,
        "Rejected lines recorded per minute for each writer uid, over all its connections (reconnecting "
        "does not reset it); later ones are answered but not stored.", minimum=1)

    aggregates_stall_after_s: float = _setting(
        "aggregates", 600.0, "A running session with no event for this long is marked stalled.", minimum=1.0)

    reports_timezone: str = _setting(
        "reports", "", "Time zone for 'last night', days and weeks (e.g. Europe/Berlin). Empty: this machine's.")
    reports_night_start: str = _setting(
        "reports", "18:00", "When the overnight window starts (HH:MM, local to reports.timezone).")
    reports_night_end: str = _setting(
        "reports", "09:00", "When the overnight window ends, the next morning (HH:MM).")
    reports_morning_report: bool = _setting(
        "reports", True, "At night_end, send last night's report to the [alerts] destinations.")

    schedule_render_interval_s: float = _setting(
        "schedule", 60.0, "Seconds between dashboard regenerations (new events also trigger one).", minimum=5.0)
    schedule_render_debounce_s: float = _setting(
        "schedule", 3.0, "After new events, wait this long before refreshing the dashboard.", minimum=0.1)
    schedule_backup_time: str = _setting(
        "schedule", "03:30", "Daily pg_dump backup time (HH:MM in [reports] timezone); empty disables it.")
    schedule_prune_time: str = _setting(
        "schedule", "04:15", "Daily retention pruning time (HH:MM in [reports] timezone); empty disables it.")

    retention_events_days: int = _setting(
        "retention", 30, "Keep events this many days (whole daily partitions are dropped).", minimum=1)
    retention_sessions_days: int = _setting(
        "retention", 365, "Keep sessions (and their spec runs) this many days after they end.", minimum=1)
    retention_metric_buckets_days: int = _setting(
        "retention", 7, "Keep 5-minute metric buckets this many days.", minimum=1)
    retention_rejects_days: int = _setting(
        "retention", 30, "Keep rejected lines this many days.", minimum=1)

    backup_keep_daily: int = _setting(
        "backup", 7, "Daily backups to keep.", minimum=1)
    backup_keep_weekly: int = _setting(
        "backup", 4, "Weekly backups (the newest of each ISO week) to keep beyond the daily ones.", minimum=0)
    backup_pg_dump: str = _setting(
        "backup", "",
        "pg_dump to run (pg_restore is taken from the same directory); it must be at least the "
        "server's version. Empty: the newest /usr/lib/postgresql/*/bin/pg_dump, else pg_dump on PATH.")

    monitor_host: str = _setting(
        "monitor", "", "Host name stored with each event. Empty: this machine's host name.")
    monitor_log_level: str = _setting(
        "monitor", "info", "One of debug, info, warning, error.")
    monitor_disk_warn_free_percent: float = _setting(
        "monitor", 10.0, "Below this share of free space (%), the state, site, backup or database disk is "
        "reported low (STATUS=, the health panel, doctor); below 3 % it is critical.", minimum=0)

    alerts_urls: tuple[str, ...] = _setting(
        "alerts", (), "Where alerts go: Apprise URLs, one per destination (ntfy://, slack://, mailto://, "
        "json://, ...; see https://github.com/caronc/apprise/wiki). They hold tokens: keep this file 0640.")
    alerts_command: str = _setting(
        "alerts", "", "A command run for every alert message, the message as JSON on its stdin "
        "(exit 0 = delivered). Empty: none.")
    alerts_dashboard_url: str = _setting(
        "alerts", "", "The dashboard's address as people open it (e.g. https://build-box/ralph/), for "
        "links in alerts. Empty: no links.")
    alerts_intervention_after_min: float = _setting(
        "alerts", 5.0, "Alert when a request for a human is unanswered this many minutes (0: never).", minimum=0)
    alerts_on_stall: bool = _setting("alerts", True, "Alert when a session stalls (no sign of life).")
    alerts_on_failure: bool = _setting("alerts", True, "Alert when a session ends with failed specs.")
    alerts_on_monitor_health: bool = _setting(
        "alerts", True, "Alert when the monitor itself is unhealthy: spool backlog growing, backups failing, "
        "aggregates not updated, a disk low, a daemon not reporting.")
    alerts_spool_backlog_after_min: float = _setting(
        "alerts", 10.0, "A spool backlog older than this many minutes counts as unhealthy.", minimum=0)
    alerts_check_interval_s: float = _setting(
        "alerts", 10.0, "Seconds between two evaluations of the alert rules.", minimum=0.1)
    alerts_retry_after_s: float = _setting(
        "alerts", 30.0, "First wait before a failed message is retried; it doubles each time, up to an hour.",
        minimum=0.1)
    alerts_give_up_after_h: float = _setting(
        "alerts", 24.0, "Stop retrying a message that could not be delivered for this many hours.", minimum=0.01)

    budget_night_usd: float = _setting(
        "budget", 0.0, "Spend (USD) of one night, all sessions, above which an alert goes out (0: no limit).",
        minimum=0)
    budget_night_tokens: int = _setting("budget", 0, "Tokens of one night (0: no limit).", minimum=0)
    budget_session_usd: float = _setting(
        "budget", 0.0, "Spend (USD) of one session (0: no limit). `ralph-monitor loop` stops starting specs "
        "past it.", minimum=0)
    budget_session_tokens: int = _setting("budget", 0, "Tokens of one session (0: no limit).", minimum=0)

    redaction_enabled: bool = _setting(
        "redaction", True, "Replace secret-shaped text (API keys, tokens, private keys, password= and "
        "Authorization: values) in what the hook, the loop and the import send, before it is stored.")
    redaction_patterns: tuple[str, ...] = _setting(
        "redaction", (), "More regular expressions (Python syntax) whose matches are redacted, e.g. "
        "[\"corp-[0-9a-f]{32}\"].")

    import_prices_file: str = _setting(
        "import", "", "A TOML file of model prices (USD per million tokens) that replace or add to the table "
        "`ralph-monitor import claude-code` estimates costs with; see agent/prices.py. Empty: the shipped table.")

    @property
    def state_dir(self) -> Path:
        return Path(self.paths_state_dir)

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    @property
    def cluster_dir(self) -> Path:
        return self.state_dir / "postgresql"

    @property
    def site_dir(self) -> Path:
        return Path(self.paths_site_dir) if self.paths_site_dir else self.state_dir / "site"

    @property
    def backup_dir(self) -> Path:
        return Path(self.paths_backup_dir) if self.paths_backup_dir else self.state_dir / "backups"

    @property
    def host(self) -> str:
        return self.monitor_host or socket.gethostname()

    @property
    def socket_mode_bits(self) -> int:
        return int(self.socket_mode, 8)

    @property
    def embedded_database(self) -> bool:
        """True when no DSN is configured and the daemon runs its own cluster."""
        return not self.database_dsn


LOG_LEVELS = ("debug", "info", "warning", "error")


def _fields() -> dict[tuple[str, str], dataclasses.Field[Any]]:
    table = {}
    for f in dataclasses.fields(Settings):
        section = f.metadata["section"]
        table[(section, f.name.removeprefix(section + "_"))] = f
    return table


def _type_name(kind: Any) -> str:
    return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
            "tuple[str, ...]": "a list of strings"}[kind]


def _coerce(origin: str, section: str, key: str, f: dataclasses.Field[Any], value: Any) -> Any:
    kind = f.type
    where = f"{origin}: [{section}] {key}"
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise ConfigError(f"{where} must be {_type_name(kind)}, e.g. [\"ntfy://ntfy.sh/my-topic\"]; got {value!r}")
        return tuple(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}; default is {str(f.default).lower()}")
        return value
    expected = {"str": str, "int": int, "float": float}[kind]
    if not isinstance(value, expected) or isinstance(value, bool):
        raise ConfigError(
            f"{where} must be {_type_name(kind)}, got {value!r}; default is {f.default!r}")
    if kind == "float" and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}; default is {f.default!r}")
    minimum = f.metadata["minimum"]
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where} = {value!r} is below the minimum {minimum!r}")
    return value


def _validate(settings: Settings, origin: str) -> None:
    for pattern in settings.redaction_patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{origin}: [redaction] patterns: {pattern!r} is not a regular expression: {exc}") from None
    try:
        mode = settings.socket_mode_bits
        if not 0 <= mode <= 0o777:
            raise ValueError(mode)
    except ValueError:
        raise ConfigError(
            f"{origin}: [socket] mode = {settings.socket_mode!r} is not an octal permission mode "
            "(0000 to 0777); use e.g. \"0660\"") from None
    if mode & 0o007:
        raise ConfigError(
            f"{origin}: [socket] mode = {settings.socket_mode!r} lets every local user write events; "
            "use \"0660\" and add writers to [socket] group")
    if settings.monitor_log_level not in LOG_LEVELS:
        raise ConfigError(
            f"{origin}: [monitor] log_level = {settings.monitor_log_level!r}; use one of {', '.join(LOG_LEVELS)}")
    for name in ("paths_state_dir", "paths_site_dir", "paths_backup_dir", "socket_path", "backup_pg_dump",
                 "import_prices_file"):
        value = getattr(settings, name)
        if value and not os.path.isabs(value):
            section, key = name.split("_", 1)
            raise ConfigError(f"{origin}: [{section}] {key} = {value!r} must be an absolute path")
    if settings.reports_timezone:
        try:
            zoneinfo.ZoneInfo(settings.reports_timezone)
        except (ValueError, zoneinfo.ZoneInfoNotFoundError):
            raise ConfigError(
                f"{origin}: [reports] timezone = {settings.reports_timezone!r} is not a known time zone; "
                "use a name like \"Europe/Berlin\" or \"UTC\" (see timedatectl list-timezones)") from None
    for section, key in (("reports", "night_start"), ("reports", "night_end"),
                         ("schedule", "backup_time"), ("schedule", "prune_time")):
        value = getattr(settings, f"{section}_{key}")
        if section == "schedule" and not value:
            continue
        try:
            datetime.time.fromisoformat(value)
        except ValueError:
            raise ConfigError(
                f"{origin}: [{section}] {key} = {value!r} is not a time of day; use HH:MM, e.g. \"18:00\"") from None


def _check_secret_exposure(path: Path, data: dict[str, Any]) -> None:
    """Refuse a world-readable config that holds a password (guarantee 7)."""
    database = data.get("database")
    alerts = data.get("alerts")
    if not path.stat().st_mode & stat.S_IROTH:
        return
    for key in ("dsn", "read_dsn"):
        dsn = str(database.get(key, "")) if isinstance(database, dict) else ""  # else: reported later
        if "password" in dsn.lower() or _dsn_url_has_password(dsn):
            raise ConfigError(
                f"{path}: [database] {key} contains a password but the file is world-readable; "
                f"move the password to [database] password_file (mode 0600) or run: chmod 640 {path}")
    if isinstance(alerts, dict) and alerts.get("urls"):
        raise ConfigError(
            f"{path}: [alerts] urls hold the destinations' tokens but the file is world-readable; "
            f"run: chmod 640 {path}")


def _dsn_url_has_password(dsn: str) -> bool:
    if "://" not in dsn:
        return False
    netloc = dsn.split("://", 1)[1].split("/", 1)[0]
    return "@" in netloc and ":" in netloc.split("@", 1)[0]


def report_zone(name: str) -> zoneinfo.ZoneInfo:
    """The reporting time zone: the named one, else this machine's ($TZ, /etc/localtime), else UTC."""
    if name:
        return zoneinfo.ZoneInfo(name)
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        candidates.append(os.path.realpath("/etc/localtime").split("/zoneinfo/", 1)[1])
    except IndexError:
        pass
    for candidate in candidates:
        if candidate:
            try:
                return zoneinfo.ZoneInfo(candidate)
            except (ValueError, OSError):
                continue
    return zoneinfo.ZoneInfo("UTC")


def settings_from_mapping(data: dict[str, Any], origin: str) -> Settings:
    """Build Settings from parsed TOML, naming the offending key on any error."""
    table = _fields()
    sections = {s for s, _ in table}
    values: dict[str, Any] = {}
    for section, body in data.items():
        if section not in sections:
            hint = difflib.get_close_matches(section, sections, n=1)
            raise ConfigError(
                f"{origin}: unknown section [{section}]"
                + (f"; did you mean [{hint[0]}]?" if hint else f"; known: {', '.join(sorted(sections))}"))
        if not isinstance(body, dict):
            raise ConfigError(f"{origin}: {section} must be a [{section}] table")
        for key, value in body.items():
            f = table.get((section, key))
            if f is None:
                keys = [k for s, k in table if s == section]
                hint = difflib.get_close_matches(key, keys, n=1)
                raise ConfigError(
                    f"{origin}: unknown setting [{section}] {key}"
                    + (f"; did you mean {hint[0]!r}?" if hint else f"; known: {', '.join(keys)}"))
            values[f.name] = _coerce(origin, section, key, f, value)
    settings = Settings(**values)
    _validate(settings, origin)
    return settings


def load_settings(path: str | Path | None = None) -> Settings:
    """Read settings from `path`, $RALPH_MONITOR_CONFIG, or the default file if it exists.

    An explicitly named file must exist; the default file may be absent (zero-config).
    """
    explicit = path is not None or CONFIG_ENV_VAR in os.environ
    config_path = Path(path or os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH)
    try:
        raw = config_path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(
                f"config file {config_path} does not exist; create one with: "
                f"ralph-monitor init-config {config_path}") from None
        return Settings()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {config_path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{config_path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path}: invalid TOML: {exc}") from None
    _check_secret_exposure(config_path, data)
    return settings_from_mapping(data, str(config_path))


def read_password(settings: Settings) -> str | None:
    """The database password from [database] password_file, or None when not set."""
    if not settings.database_password_file:
        return None
    path = Path(settings.database_password_file)
    try:
        if path.stat().st_mode & (stat.S_IRWXO):
            raise ConfigError(
                f"[database] password_file {path} is accessible to other users; run: chmod 600 {path}")
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"[database] password_file {path}: {exc.strerror}") from None


def render_default_config() -> str:
    """A commented TOML file with every setting at its default."""
    lines = ["# ralph-monitor configuration. Every setting is shown at its default.", ""]
    current = None
    for (section, key), f in _fields().items():
        if section != current:
            if current is not None:
                lines.append("")
            lines.append(f"[{section}]")
            current = section
        lines.append(f"# {f.metadata['help']}")
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        lines.append(tomli_w.dumps({key: default}).rstrip("\n"))
    return "\n".join(lines) + "\n"
