"""Checks of the systemd units and the sysusers.d / tmpfiles.d snippets.

Static checks parse the files with a small line-based parser (configparser
cannot hold repeated keys such as SystemCallFilter= or After=). When the
systemd tools are installed, the files are also checked by systemd itself:
``systemd-analyze verify`` / ``security --offline``, and ``systemd-sysusers`` /
``systemd-tmpfiles`` applied to a throw-away root. None of this needs systemd
to be running as PID 1.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVICE = REPO / "systemd" / "ralph-monitor.service"
SOCKET = REPO / "systemd" / "ralph-monitor.socket"
SYSUSERS = REPO / "packaging" / "sysusers.d" / "ralph-monitor.conf"
TMPFILES = REPO / "packaging" / "tmpfiles.d" / "ralph-monitor.conf"
UNIT_NAMES = (SERVICE.name, SOCKET.name)

# The highest acceptable `systemd-analyze security` exposure (0 = best, 10 = worst).
MAX_EXPOSURE = 2.0

TOOL_ENV = {**os.environ, "LC_ALL": "C", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "cat"}


# --------------------------------------------------------------------------- parsing


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Parse a unit file into {section: [(key, value), ...]}, keeping repeats in order."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):  # continuation line
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}:{lineno}: assignment outside a section"
        assert "=" in line, f"{path.name}:{lineno}: not KEY=VALUE: {raw!r}"
        key, value = line.split("=", 1)
        current.append((key.strip(), value.strip()))
    assert not pending, f"{path.name}: file ends with a continuation"
    return sections


def values(unit: dict, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def last(unit: dict, section: str, key: str) -> str | None:
    found = values(unit, section, key)
    return found[-1] if found else None


def words(unit: dict, section: str, key: str) -> list[str]:
    """All space-separated items of a list-valued key (After=, Wants=, ...)."""
    return [w for v in values(unit, section, key) for w in v.split()]


def table_lines(path: Path) -> list[list[str]]:
    """Non-comment lines of a sysusers.d / tmpfiles.d file, split like systemd does."""
    import shlex

    return [
        shlex.split(line)
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


@pytest.fixture(scope="module")
def service() -> dict:
    return parse_unit(SERVICE)


@pytest.fixture(scope="module")
def socket_unit() -> dict:
    return parse_unit(SOCKET)


# --------------------------------------------------------------------------- static checks


def test_service_lifecycle(service):
    assert last(service, "Service", "Type") == "notify"
    assert last(service, "Service", "NotifyAccess") == "main"
    assert last(service, "Service", "WatchdogSec") == "30"
    assert last(service, "Service", "Restart") == "on-failure"
    assert last(service, "Service", "KillMode") == "mixed"
    assert last(service, "Service", "TimeoutStopSec") == "60"
    exec_start = last(service, "Service", "ExecStart")
    assert exec_start is not None
    assert exec_start.split()[:2] == ["/opt/ralph-monitor/bin/ralph-monitor", "run"]
    assert "--config /etc/ralph-monitor/config.toml" in exec_start


def test_service_dependencies(service):
    assert "ralph-monitor.socket" in words(service, "Unit", "Requires")
    after = words(service, "Unit", "After")
    assert {"ralph-monitor.socket", "postgresql.service", "network-online.target"} <= set(after)
    # The database may be remote: order after a local PostgreSQL, never pull it in.
    for key in ("Wants", "Requires", "BindsTo", "Requisite"):
        assert "postgresql.service" not in words(service, "Unit", key), key


def test_service_identity_and_state(service):
    assert last(service, "Service", "User") == "ralph-monitor"
    assert last(service, "Service", "Group") == "ralph-monitor"
    assert "ralph" in words(service, "Service", "SupplementaryGroups")
    assert last(service, "Service", "StateDirectory") == "ralph-monitor"
    assert last(service, "Service", "UMask") == "0027"
    assert "PYTHONUNBUFFERED=1" in words(service, "Service", "Environment")


def test_service_hardening(service):
    expect = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "ProtectProc": "invisible",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
    }
    for key, want in expect.items():
        assert last(service, "Service", key) == want, key
    # pg_dump / postgres read non-pid files in /proc.
    assert last(service, "Service", "ProcSubset") is None
    assert set(words(service, "Service", "RestrictAddressFamilies")) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
    }
    filters = values(service, "Service", "SystemCallFilter")
    assert "@system-service" in filters
    denied = [w for f in filters if f.startswith("~") for w in f[1:].split()]
    assert {"@privileged", "@resources"} <= set(denied)


def test_socket(socket_unit):
    assert last(socket_unit, "Socket", "ListenStream") == "/run/ralph-monitor/events.sock"
    assert last(socket_unit, "Socket", "SocketMode") == "0660"
    assert last(socket_unit, "Socket", "SocketUser") == "root"
    assert last(socket_unit, "Socket", "SocketGroup") == "ralph"
    assert last(socket_unit, "Socket", "DirectoryMode") == "0755"
    assert last(socket_unit, "Socket", "RemoveOnStop") == "no"
    assert last(socket_unit, "Socket", "Accept") == "no"
    assert last(socket_unit, "Socket", "Service") == SERVICE.name
    assert "sockets.target" in words(socket_unit, "Install", "WantedBy")


def test_sysusers_defines_unit_accounts(service, socket_unit):
    lines = table_lines(SYSUSERS)
    users = {l[1]: l for l in lines if l[0] == "u"}
    groups = {l[1] for l in lines if l[0] == "g"} | set(users)  # u also makes a group
    members = {(l[1], l[2]) for l in lines if l[0] == "m"}
    user = last(service, "Service", "User")
    assert user in users
    assert users[user][4] == "/var/lib/ralph-monitor"
    assert users[user][5].endswith("nologin")
    assert last(service, "Service", "Group") in groups
    assert last(socket_unit, "Socket", "SocketGroup") in groups
    assert (user, "ralph") in members


def test_tmpfiles_modes_match_units(service, socket_unit):
    entries = {l[1]: l for l in table_lines(TMPFILES) if l[0] == "d"}
    want = {
        "/run/ralph-monitor": ("0755", "root", "ralph"),
        "/var/lib/ralph-monitor": ("0751", "ralph-monitor", "ralph-monitor"),
        "/var/lib/ralph-monitor/site": ("0755", "ralph-monitor", "ralph-monitor"),
        "/var/lib/ralph-monitor/backups": ("0700", "ralph-monitor", "ralph-monitor"),
        "/var/lib/ralph-monitor/spool": ("0700", "ralph-monitor", "ralph-monitor"),
    }
    for path, (mode, user, group) in want.items():
        assert path in entries, path
        assert tuple(entries[path][2:5]) == (mode, user, group), path
    # systemd re-applies StateDirectoryMode= (default 0755) on every start, and the
    # socket unit chmods its directory: both must agree with tmpfiles.d.
    assert last(service, "Service", "StateDirectoryMode") == "0751"
    assert last(socket_unit, "Socket", "DirectoryMode") == "0755"


# --------------------------------------------------------------------------- systemd tools

analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)

# Lines that only say the machine has no working systemd manager/bus/cgroups;
# they do not point at a problem in our units.
ENV_COMPLAINT = re.compile(
    r"not been booted with systemd|Failed to connect to bus|Failed to (initialize|allocate) manager"
    r"|Failed to create .*control group|cgroup|Running in chroot|Failed to determine|/proc/",
    re.IGNORECASE,
)
# What verify prints for a misspelt directive or section (wording differs by version:
# "Unknown key 'X' in section [S]" in 252, "Unknown lvalue 'X'" in older ones).
UNKNOWN_KEY = re.compile(r"Unknown (key|lvalue|section)", re.IGNORECASE)


def _help_text() -> str:
    return subprocess.run(
        ["systemd-analyze", "--help"], capture_output=True, text=True, env=TOOL_ENV
    ).stdout


def _unit_copies(dest: Path, typo: bool = False) -> list[Path]:
    """Copy both units to dest; ExecStart's binary is not installed here, use /bin/true."""
    true = "/bin/true" if os.path.exists("/bin/true") else shutil.which("true")
    assert true, "no 'true' binary"
    out = []
    for src in (SERVICE, SOCKET):
        text = src.read_text()
        if src == SERVICE:
            text, n = re.subn(
                r"^ExecStart=/opt/ralph-monitor/bin/ralph-monitor\b",
                f"ExecStart={true}",
                text,
                flags=re.MULTILINE,
            )
            assert n == 1
            if typo:
                text, n = re.subn(r"^ProtectHome=", "ProtecHome=", text, flags=re.MULTILINE)
                assert n == 1
        path = dest / src.name
        path.write_text(text)
        out.append(path)
    return out


def _verify(paths: list[Path]) -> tuple[int, list[str]]:
    cmd = ["systemd-analyze", "verify", "--man=no"]
    help_text = _help_text()
    if "--recursive-errors" in help_text:
        cmd.append("--recursive-errors=no")  # judge our units, not the host's
    if "--generators" in help_text:
        cmd.append("--generators=no")
    proc = subprocess.run(
        cmd + [str(p) for p in paths],
        capture_output=True,
        text=True,
        env=TOOL_ENV,
        cwd=paths[0].parent,
        timeout=60,
    )
    lines = [l for l in (proc.stdout + proc.stderr).splitlines() if l.strip()]
    return proc.returncode, lines


@analyze
def test_systemd_analyze_verify(tmp_path):
    # Canary: a copy with a misspelt directive must be reported; if it is not,
    # verify cannot parse units in this environment and its silence means nothing.
    (tmp_path / "canary").mkdir()
    _, canary = _verify(_unit_copies(tmp_path / "canary", typo=True))
    if not any(UNKNOWN_KEY.search(l) and "ProtecHome" in l for l in canary):
        pytest.skip("systemd-analyze verify does not work here:\n" + "\n".join(canary))

    (tmp_path / "real").mkdir()
    rc, lines = _verify(_unit_copies(tmp_path / "real"))
    report = "\n".join(lines)
    about_us = [l for l in lines if UNKNOWN_KEY.search(l) or any(n in l for n in UNIT_NAMES)]
    assert not about_us, f"systemd-analyze verify found problems:\n{report}"
    if rc != 0:
        other = [l for l in lines if not ENV_COMPLAINT.search(l)]
        assert not other, f"systemd-analyze verify exited {rc}:\n{report}"


@analyze
def test_systemd_analyze_security(tmp_path):
    if "--offline" not in _help_text():
        pytest.skip("systemd-analyze security --offline needs systemd >= 252")
    service_copy = _unit_copies(tmp_path)[0]
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(service_copy)],
        capture_output=True,
        text=True,
        env=TOOL_ENV,
        cwd=tmp_path,
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    m = re.search(r"Overall exposure level for ralph-monitor\.service:\s*([0-9.]+)", out)
    assert m, f"no exposure score in output (rc={proc.returncode}):\n{out}"
    assert float(m.group(1)) <= MAX_EXPOSURE, out


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown in the test root needs root")


@needs_root
@pytest.mark.skipif(
    not (shutil.which("systemd-sysusers") and shutil.which("systemd-tmpfiles")),
    reason="systemd-sysusers / systemd-tmpfiles are not installed",
)
def test_sysusers_and_tmpfiles_apply(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for tool, conf in (("systemd-sysusers", SYSUSERS), ("systemd-tmpfiles", TMPFILES)):
        cmd = [tool, f"--root={root}"]
        if tool == "systemd-tmpfiles":
            cmd.append("--create")
        proc = subprocess.run(
            cmd + [str(conf)], capture_output=True, text=True, env=TOOL_ENV, timeout=60
        )
        assert proc.returncode == 0, f"{tool}: {proc.stdout}{proc.stderr}"

    def ids(file: str) -> dict[str, list[str]]:
        rows = (l.split(":") for l in (root / "etc" / file).read_text().splitlines())
        return {r[0]: r for r in rows}

    passwd, group = ids("passwd"), ids("group")
    uid = int(passwd["ralph-monitor"][2])
    assert passwd["ralph-monitor"][6].endswith("nologin")
    assert "ralph-monitor" in group["ralph"][3].split(",")
    gid = {name: int(row[2]) for name, row in group.items()}

    want = {
        "run/ralph-monitor": (0o755, 0, gid["ralph"]),
        "var/lib/ralph-monitor": (0o751, uid, gid["ralph-monitor"]),
        "var/lib/ralph-monitor/site": (0o755, uid, gid["ralph-monitor"]),
        "var/lib/ralph-monitor/backups": (0o700, uid, gid["ralph-monitor"]),
        "var/lib/ralph-monitor/spool": (0o700, uid, gid["ralph-monitor"]),
    }
    for rel, (mode, owner, grp) in want.items():
        st = (root / rel).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, owner, grp), rel
