"""The Debian package: build it, install it with dpkg -i on this machine, check files, users,
database roles and config, run the packaged daemon (socket activation as systemd would do it)
and `ralph-monitor doctor`, then purge it again.

It changes the host (users, /opt, /etc), so it runs only as root on a machine where
ralph-monitor is not installed, and it undoes everything it did. It runs in a private mount
namespace in which /var/lib/ralph-monitor and /run/ralph-monitor, when they exist already
(e.g. from `scripts/run` as root), are hidden under empty tmpfs mounts, so their contents
are neither seen nor touched.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ralph_monitor.cluster import Cluster
from tests.conftest import short_tempdir

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PREFIX = Path("/opt/ralph-monitor")
CONFIG = Path("/etc/ralph-monitor/config.toml")
STATE = Path("/var/lib/ralph-monitor")
SOCKET = Path("/run/ralph-monitor/events.sock")
UNITS = ("ralph-monitor.service", "ralph-monitor.socket")
MASKED = (STATE, Path("/run/ralph-monitor"))
"""Hidden under a tmpfs inside the test's mount namespace when they exist already."""
TOUCHED = (PREFIX, Path("/etc/ralph-monitor"), STATE, Path("/run/ralph-monitor"),
           Path("/usr/lib/systemd/system/ralph-monitor.service"))


def _installed() -> bool:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "ralph-monitor"], capture_output=True, text=True)
    return "installed" in out.stdout and "not-installed" not in out.stdout


def _exists(name: str, db: str) -> bool:
    try:
        (pwd.getpwnam if db == "passwd" else grp.getgrnam)(name)
        return True
    except KeyError:
        return False


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "installs a package: needs root"
    for tool in ("dpkg", "dpkg-deb", "systemd-sysusers", "runuser", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if _installed():
        return "ralph-monitor is installed on this machine; not touching it"
    leftovers = [str(p) for p in TOUCHED if p.exists() and p not in MASKED]
    if leftovers or _exists("ralph-monitor", "passwd") or _exists("ralph-monitor", "group"):
        return f"this machine already has ralph-monitor files or users ({', '.join(leftovers) or 'users'})"
    return None


def run(*command: str, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"{command} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def open_cluster() -> Iterator[Cluster]:
    """A PostgreSQL the package's postinst can set up and the daemon's user can reach
    (the suite's own cluster keeps its socket private)."""
    root = short_tempdir("rm-pkg-")
    cluster = Cluster(root / "cluster")
    cluster.initialise()
    with open(cluster.data_dir / "postgresql.conf", "a", encoding="utf-8") as f:
        f.write("unix_socket_permissions = 0777\n")
    cluster.start()
    cluster.root.chmod(0o711)
    cluster.socket_dir.chmod(0o755)
    yield cluster
    cluster.stop(mode="immediate")
    shutil.rmtree(root, ignore_errors=True)


def _cleanup_host(groups_before: set[str]) -> None:
    """Undo the installation: the package, and the users and groups it created (a group
    `ralph` that existed before, e.g. for `scripts/run`, stays)."""
    if _installed():
        run("dpkg", "--purge", "ralph-monitor", check=False)
    if _exists("ralph-monitor", "passwd"):
        run("userdel", "ralph-monitor", check=False)
    for group in ("ralph-monitor", "ralph"):
        if group not in groups_before and _exists(group, "group"):
            run("groupdel", group, check=False)
    for path in (STATE, Path("/run/ralph-monitor"), Path("/etc/ralph-monitor")):
        shutil.rmtree(path, ignore_errors=True)


_ACTIVATE = """
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


def _wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_build_install_doctor_purge(open_cluster: Cluster, tmp_path: Path) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    deb = Path(run(str(REPO / "packaging" / "build-deb"), str(tmp_path / "dist"), timeout=300).stdout.strip())
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-m", "tests.integration.test_deb_install",
                           str(deb), str(open_cluster.socket_dir), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=REPO, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and "package flow: OK" in proc.stdout, proc.stdout + proc.stderr
    print(proc.stdout)
    assert not _installed()


def install_and_check(deb: Path, socket_dir: Path, tmp_path: Path) -> None:
    """Runs inside the private mount namespace (see the module's docstring)."""
    groups_before = {g for g in ("ralph", "ralph-monitor") if _exists(g, "group")}
    for path in MASKED:
        if path.exists():
            run("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(path))
    assert deb.name.startswith("ralph-monitor_") and deb.suffix == ".deb"
    listing = run("dpkg-deb", "--contents", str(deb)).stdout
    for path in ("./opt/ralph-monitor/bin/ralph-monitor", "./usr/lib/systemd/system/ralph-monitor.service",
                 "./usr/lib/systemd/system/ralph-monitor.socket", "./usr/lib/sysusers.d/ralph-monitor.conf",
                 "./usr/lib/tmpfiles.d/ralph-monitor.conf", "./usr/share/man/man1/ralph-monitor.1.gz",
                 "./usr/share/ralph-monitor/config.toml.example"):
        assert path in listing, path

    pg_env = {"PGHOST": str(socket_dir)}
    daemon: subprocess.Popen[bytes] | None = None
    try:
        installed = run("dpkg", "-i", str(deb), env=pg_env, timeout=300)
        assert "database ralph_monitor, roles ralph-monitor (writer) and ralph_reader" in installed.stderr

        # Files, users, directories.
        assert run(str(PREFIX / "bin" / "ralph-monitor"), "--version").stdout.startswith("ralph-monitor ")
        assert os.readlink("/usr/bin/ralph-query") == str(PREFIX / "bin" / "ralph-query")
        user = pwd.getpwnam("ralph-monitor")
        assert user.pw_dir == str(STATE) and user.pw_shell.endswith("nologin")
        assert "ralph-monitor" in grp.getgrnam("ralph").gr_mem
        for path, mode in ((STATE, 0o751), (STATE / "backups", 0o700), (STATE / "spool", 0o700)):
            st = path.stat()
            assert (stat.S_IMODE(st.st_mode), st.st_uid) == (mode, user.pw_uid), path
        for unit, target in (("ralph-monitor.socket", "sockets.target"), ("ralph-monitor.service", "multi-user.target")):
            assert Path(f"/etc/systemd/system/{target}.wants/{unit}").is_symlink(), unit

        # The config: written once, private to root and group ralph, DSN without a password.
        st = CONFIG.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, grp.getgrgid(st.st_gid).gr_name) == (0o640, 0, "ralph")
        text = CONFIG.read_text()
        assert f'dsn = "host={socket_dir} dbname=ralph_monitor"' in text
        database = tomllib.loads(text)["database"]
        assert "password" not in database["dsn"] and not database["password_file"]
        assert Path("/etc/systemd/system/ralph-monitor.service.d/50-unix-socket-only.conf").exists()

        # Roles: a writer that is no superuser and owns the database; a read-only group role.
        with psycopg.connect(f"host={socket_dir} dbname=postgres user=postgres", autocommit=True) as conn:
            roles = dict(conn.execute("SELECT rolname, (rolsuper OR rolcreaterole OR rolcreatedb) "
                                      "FROM pg_roles WHERE rolname IN ('ralph-monitor', 'ralph_reader')").fetchall())
            assert roles == {"ralph-monitor": False, "ralph_reader": False}
            owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database "
                                 "WHERE datname = 'ralph_monitor'").fetchone()
            assert owner == ("ralph-monitor",)

        # Reinstalling never touches an edited config.
        with CONFIG.open("a") as f:
            f.write("# edited by the admin\n")
        edited = CONFIG.read_bytes()
        run("dpkg", "-i", str(deb), env=pg_env, timeout=300)
        assert CONFIG.read_bytes() == edited

        # The packaged daemon, as systemd runs it: user ralph-monitor, socket handed over.
        SOCKET.parent.mkdir(exist_ok=True)
        listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listening.bind(str(SOCKET))
        os.chown(SOCKET, 0, grp.getgrnam("ralph").gr_gid)
        SOCKET.chmod(0o660)
        listening.listen(64)
        log = (tmp_path / "daemon.log").open("wb")
        daemon = subprocess.Popen(
            [str(PREFIX / "bin" / "python"), "-c", _ACTIVATE,
             str(listening.fileno()), str(PREFIX / "bin" / "ralph-monitor"), "run", "--config", str(CONFIG)],
            pass_fds=(listening.fileno(),), stdout=log, stderr=log, cwd="/",
            user="ralph-monitor", group="ralph-monitor", extra_groups=["ralph"],
            env={"PATH": "/usr/bin:/bin", "HOME": str(STATE), "LANG": "C.UTF-8"})
        listening.close()
        emit = run("/usr/bin/ralph-monitor", "emit", "session_heartbeat", "--no-spool", "--timeout", "30",
                   "--socket", str(SOCKET), env={"HOME": str(tmp_path)})
        assert len(emit.stdout.strip()) == 36
        as_daemon = ("runuser", "-u", "ralph-monitor", "--")
        backup = run(*as_daemon, "/usr/bin/ralph-monitor", "backup")
        assert backup.stdout.startswith(f"backup written: {STATE}/backups/ralph-monitor-")
        _wait_for(lambda: (STATE / "site" / "render-state.json").exists(), 30, "the first dashboard render")

        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        if not Path("/etc/nginx/sites-available/ralph-monitor.conf").exists():
            nginx = None  # built without packaging/nginx
        enabled = Path("/etc/nginx/sites-enabled")
        if nginx and enabled.is_dir():  # enable the packaged site (the host's own are hidden)
            run("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(enabled))
            (enabled / "ralph-monitor.conf").symlink_to("../sites-available/ralph-monitor.conf")
            run(nginx, "-t")
        doctor = run(*as_daemon, "/usr/bin/ralph-monitor", "doctor", check=False)
        print("doctor as ralph-monitor:\n" + doctor.stdout)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        lines = {line.split()[1]: line for line in doctor.stdout.splitlines()}
        for name in ("config", "socket", "database", "roles", "migrations", "pg_dump", "backup", "sandbox",
                     "dashboard", "spool") + (("nginx",) if nginx else ()):
            assert lines[name].startswith("OK "), lines[name]
        assert "read-only: ralph_reader" in lines["roles"]
        # As root the DSN (no user: peer authentication) does not fit; doctor says what to do.
        as_root = run("/usr/bin/ralph-monitor", "doctor", check=False)
        assert as_root.returncode == 1 and "sudo -u ralph-monitor ralph-monitor doctor" in as_root.stdout

        # The read-only role reads what the daemon wrote, and cannot write.
        with psycopg.connect(f"host={socket_dir} dbname=ralph_monitor user=postgres", autocommit=True) as conn:
            conn.execute("SET ROLE ralph_reader")
            assert conn.execute("SELECT count(*) FROM events").fetchone()[0] >= 2  # type: ignore[index]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("INSERT INTO rejects (reject_id, received_at, host, reason, detail, line_bytes, "
                             "excerpt) VALUES (gen_random_uuid(), now(), 'h', 'x', 'x', 1, 'x')")

        daemon.terminate()
        assert daemon.wait(30) == 0, (tmp_path / "daemon.log").read_text()
        daemon = None

        purged = run("dpkg", "--purge", "ralph-monitor", timeout=120)
        assert "keeping backups" in purged.stderr
        for path in (PREFIX, CONFIG.parent, Path("/usr/lib/systemd/system/ralph-monitor.service"),
                     Path("/etc/systemd/system/sockets.target.wants/ralph-monitor.socket"),
                     Path("/etc/systemd/system/ralph-monitor.service.d"), STATE / "site"):
            assert not path.exists() and not path.is_symlink(), path
        assert list((STATE / "backups").iterdir())  # backups outlive a purge
        assert not _installed()
    finally:
        if daemon is not None:
            daemon.kill()
            daemon.wait(10)
        _cleanup_host(groups_before)


if __name__ == "__main__":
    install_and_check(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
    print("package flow: OK")
