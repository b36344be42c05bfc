"""Debian 12 containers with systemd as PID 1, for the system tests.

A root file system made once by `debootstrap` is cached under /var/cache/ralph-monitor-test/
(keyed by the package list, so changing the list makes a new one). Each container boots an
overlay of it (the cache stays untouched) with `systemd-nspawn --boot`, with a private network
namespace (loopback only, so the containers' nginx and PostgreSQL never meet the host's; or
joined to a bridge of the test's own, for several hosts talking to each other), and
commands run inside with `nsenter` into the container's init. `--register=no --keep-unit`
because the host has no systemd as PID 1 to register with.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

CACHE = Path(os.environ.get("RALPH_SYSTEM_TEST_CACHE", "/var/cache/ralph-monitor-test"))
MIRROR = os.environ.get("RALPH_SYSTEM_TEST_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "postgresql", "postgresql-client", "nginx-light", "socat",
            "openssl", "procps", "libpam-systemd")
"""Everything the package depends on or recommends is in the cached root, so `apt install ./x.deb`
needs no network (the containers have none)."""
TOOLS = ("systemd-nspawn", "debootstrap", "nsenter", "dpkg-deb")


def unavailable() -> str | None:
    """Why this machine cannot boot a test container, or None when it can."""
    if os.geteuid() != 0:
        return "booting a container needs root"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian packages systemd-container, debootstrap; scripts/test installs them)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay file system"
    return None


def base_root() -> Path:
    """The cached Debian root, made by debootstrap on first use (a few minutes; later runs reuse it)."""
    key = hashlib.sha256(" ".join((SUITE, MIRROR) + PACKAGES).encode()).hexdigest()[:12]
    root = CACHE / f"{SUITE}-{key}"
    if (root / "etc" / "os-release").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # concurrent test runs wait for one debootstrap
        if (root / "etc" / "os-release").exists():
            return root
        partial = CACHE / f".{root.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
                               str(partial), MIRROR], capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            raise RuntimeError(f"debootstrap failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        _prepare(partial)
        partial.rename(root)
    return root


def _prepare(root: Path) -> None:
    """Make the fresh root boot quickly and quietly in a container."""
    (root / "etc" / "hostname").write_text("ralph-test\n")
    # Nothing to wait for on a loopback-only network; no console login to start.
    for unit in ("systemd-networkd-wait-online.service", "getty@tty1.service", "console-getty.service",
                 "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer"):
        link = root / "etc" / "systemd" / "system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # Images in a test container have no documentation to spare.
    (root / "etc" / "dpkg" / "dpkg.cfg.d" / "01-nodoc").write_text(
        "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/ralph-monitor/*\n")


class Container:
    """One booted container: `run` executes a command inside, `path` maps a container path
    to the host's view of its file system (to put files in or read them)."""

    def __init__(self, name: str, workdir: Path, *, bridge: str | None = None) -> None:
        """`bridge`: a host bridge to join (with `--network-bridge`; give the container an address
        with `set_address`), for tests where containers talk to each other; else loopback only."""
        self.name = name
        self.bridge = bridge
        self.workdir = workdir
        self.merged = workdir / "root"
        self.log_path = workdir / "console.log"
        self._nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def boot(self, timeout: float = 90) -> Container:
        lower = base_root()
        for part in ("upper", "work", "root"):
            (self.workdir / part).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={lower},upperdir={self.workdir / 'upper'},workdir={self.workdir / 'work'}",
                        str(self.merged)], check=True, capture_output=True, timeout=30)
        (self.merged / "etc" / "hostname").write_text(f"{self.name}\n")
        console = open(self.log_path, "wb")
        self._nspawn = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit",
             f"--network-bridge={self.bridge}" if self.bridge else "--private-network",
             f"--machine={self.name}", "--directory", str(self.merged), "--console=pipe"],
            stdin=subprocess.DEVNULL, stdout=console, stderr=console, start_new_session=True)
        console.close()
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self._nspawn.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"container {self.name} did not start:\n{self.console()}")
            self.leader = self._find_init()
            time.sleep(0.1)
        state = ""
        while state not in ("running", "degraded"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"container {self.name} did not finish booting ({state}):\n{self.console()}")
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            time.sleep(0.2)
        return self

    def _find_init(self) -> int:
        """The container's PID 1 as the host sees it: the descendant of systemd-nspawn that runs systemd."""
        assert self._nspawn is not None
        todo = [self._nspawn.pid]
        while todo:
            pid = todo.pop()
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                try:
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        return child
                except OSError:
                    continue
                todo.append(child)
        return 0

    def set_address(self, cidr: str) -> None:
        """Give the bridged interface (host0) an address: the host's `ip` in the container's
        network namespace (the cached root has no iproute2, and no networkd runs)."""
        for command in (["ip", "addr", "add", cidr, "dev", "host0"], ["ip", "link", "set", "host0", "up"]):
            subprocess.run(["nsenter", "-t", str(self.leader), "-n", "--", *command], check=True,
                           capture_output=True, timeout=30)

    def console(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def run(self, *command: str, check: bool = True, timeout: float = 120, user: str | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """`command` inside the container (as `user` with its HOME, else root), with a clean environment."""
        home = self.home(user) if user else "/root"
        if user:
            command = ("runuser", "-u", user, "--", *command)
        proc = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "--", "/usr/bin/env", "-i",
             "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
             f"HOME={home}", *command],
            capture_output=True, text=True, timeout=timeout, input=input,
            stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"in {self.name}: {shlex.join(command)} exited {proc.returncode}:\n"
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def home(self, user: str) -> str:
        """The home directory of `user` inside the container."""
        for line in self.path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return fields[5]
        raise KeyError(user)

    def sh(self, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-ec", script, **kwargs)  # type: ignore[arg-type]

    def path(self, inside: str) -> Path:
        """A container path seen from the host through its init's root (works for /run too)."""
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")

    def connect(self, socket_path: str, timeout: float = 30) -> socket.socket:
        """A connection from the host to a Unix socket inside the container."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.path(socket_path)))
        except OSError:
            sock.close()
            raise
        return sock

    def psql(self, sql: str, database: str = "ralph_monitor") -> list[list[str]]:
        """Rows of `sql`, run by the postgres superuser inside, as lists of strings."""
        out = self.run("psql", "-X", "-At", "-F", "\t", "-d", database, "-c", sql, user="postgres").stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def wait_until(self, predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"in {self.name}: timed out after {timeout} s waiting for {what}")
            time.sleep(0.2)

    def shutdown(self) -> None:
        """Stop the container (poweroff, then kill) and remove its overlay."""
        if self._nspawn is not None and self._nspawn.poll() is None:
            if self.leader:
                subprocess.run(["kill", "-s", "RTMIN+4", str(self.leader)], capture_output=True)  # systemd: poweroff
            try:
                self._nspawn.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self._nspawn.pid, 9)
                self._nspawn.wait(10)
        subprocess.run(["umount", "-l", str(self.merged)], capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)
