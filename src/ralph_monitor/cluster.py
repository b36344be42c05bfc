"""A private PostgreSQL cluster under a directory: the zero-config default and the tests' server.

It listens only on a Unix socket inside its own directory (no TCP port, nothing to clash
with). PostgreSQL refuses to run as root, so when we are root the cluster runs as the
`postgres` system user (Debian's package creates it) through `runuser`.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ralph_monitor.config import Settings
from ralph_monitor.errors import ClusterError

log = logging.getLogger(__name__)

CLUSTER_USER_WHEN_ROOT = "postgres"
SUPERUSER = "postgres"
START_TIMEOUT_S = 60
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
SERVER_SETTINGS = {
    "listen_addresses": "''",
    "unix_socket_permissions": "0700",
    "jit": "off",
    "max_connections": "200",
    "shared_buffers": "128MB",
    "logging_collector": "off",
}


def _version(bindir: Path) -> int:
    return int(bindir.parent.name) if bindir.parent.name.isdigit() else 0


def find_program(name: str, *, companions: tuple[str, ...] = ()) -> str | None:
    """Path of PostgreSQL program `name`: in the newest Debian install that has it (and its
    `companions`), else on PATH. pg_dump must be at least the server's version, so newest wins."""
    for bindir in reversed(sorted(Path("/").glob(PG_BIN_GLOB.lstrip("/")), key=_version)):
        if all((bindir / program).exists() for program in (name, *companions)):
            return str(bindir / name)
    return shutil.which(name)


def find_bindir() -> Path:
    """Directory holding initdb/pg_ctl: the newest Debian install, else pg_ctl on PATH."""
    pg_ctl = find_program("pg_ctl", companions=("initdb",))
    if pg_ctl:
        bindir = Path(pg_ctl).parent
        # Found on PATH, pg_ctl may be a link into the install's own directory.
        return bindir if bindir.match(PG_BIN_GLOB) else Path(pg_ctl).resolve().parent
    raise ClusterError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; install them with "
        "'apt-get install postgresql' or set [database] dsn to an existing server")


@dataclass(frozen=True)
class Cluster:
    """A cluster in `root`: data in root/data, socket in root/run, log in root/server.log."""

    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def dsn(self, dbname: str) -> str:
        return f"host={self.socket_dir} dbname={dbname} user={SUPERUSER}"

    @property
    def run_as(self) -> str | None:
        return CLUSTER_USER_WHEN_ROOT if os.geteuid() == 0 else None

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(find_bindir() / args[0]), *args[1:]]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL)

    def _prepare_dirs(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        if self.run_as:
            try:
                user = pwd.getpwnam(self.run_as)
            except KeyError:
                raise ClusterError(
                    f"running as root, the embedded cluster needs the '{self.run_as}' system user; "
                    "install the 'postgresql' package or set [database] dsn") from None
            for path in (self.root, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
            probe = subprocess.run(["runuser", "-u", self.run_as, "--", "test", "-w", str(self.root)],
                                   capture_output=True, check=False)
            if probe.returncode != 0:
                raise ClusterError(
                    f"user '{self.run_as}' cannot reach {self.root}: a parent directory is not "
                    f"traversable (chmod o+x on each parent) or set [paths] state_dir elsewhere")

    def is_initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def initialise(self) -> None:
        """Run initdb (once) and write our server settings."""
        self._prepare_dirs()
        if self.is_initialised():
            return
        result = self._run("initdb", "--pgdata", str(self.data_dir), "--username", SUPERUSER,
                           "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions")
        if result.returncode != 0:
            raise ClusterError(f"initdb in {self.data_dir} failed: {result.stderr.strip()[-2000:]}")
        settings = dict(SERVER_SETTINGS, unix_socket_directories=f"'{self.socket_dir}'")
        conf = "".join(f"{key} = {value}\n" for key, value in settings.items())
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write("\n# ralph-monitor embedded cluster\n" + conf)
        log.info("initialised a private PostgreSQL cluster in %s", self.data_dir)

    def is_running(self) -> bool:
        return self.is_initialised() and self._run("pg_ctl", "status", "-D", str(self.data_dir)).returncode == 0

    def start(self) -> None:
        """Initialise if needed and start; a cluster left running (daemon crash) is reused."""
        self.initialise()
        if self.is_running():
            return
        result = self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file),
                           "-w", "-t", str(START_TIMEOUT_S))
        if result.returncode != 0:
            tail = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise ClusterError(f"PostgreSQL in {self.data_dir} did not start: "
                               f"{result.stderr.strip()} {tail.strip()}")
        log.info("started the private PostgreSQL cluster (socket in %s)", self.socket_dir)

    def stop(self, mode: str = "fast") -> None:
        if not self.is_running():
            return
        result = self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w",
                           "-t", str(START_TIMEOUT_S))
        if result.returncode != 0:
            raise ClusterError(f"PostgreSQL in {self.data_dir} did not stop: {result.stderr.strip()}")


EMBEDDED_DBNAME = "ralph_monitor"


def embedded_cluster(state_dir: Path) -> Cluster:
    """The zero-config cluster of a daemon whose state lives in `state_dir`."""
    return Cluster(state_dir / "postgresql")


def resolve_dsn(settings: Settings) -> str:
    """The DSN to use: [database] dsn, else the embedded cluster's database."""
    return settings.database_dsn or embedded_cluster(settings.state_dir).dsn(EMBEDDED_DBNAME)
