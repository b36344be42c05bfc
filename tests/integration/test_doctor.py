"""`ralph-monitor doctor`: one line per check with OK / WARN / FAIL and the fix; exit 1 on FAIL."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, admin_connect
from tests.ops import execute, monitor, write_config

LINE = re.compile(r"^(OK|WARN|FAIL)\s+(\S+(?: \S+)?)\s{1,}(.*)$")


def doctor(config: Path) -> tuple[int, dict[str, tuple[str, str]]]:
    proc = monitor("doctor", config=config)
    checks = {}
    for line in proc.stdout.splitlines():
        match = LINE.match(line)
        assert match, f"not a check line: {line!r}"
        checks[match[2].strip()] = (match[1], match[3])
    return proc.returncode, checks


def test_doctor_on_a_healthy_daemon(daemon: Daemon, pg_cluster: Any) -> None:
    rc, checks = doctor(daemon.config_path)
    assert rc == 0, checks
    for name in ("config", "socket", "database", "migrations", "pg_dump", "disk state", "disk backup", "spool"):
        assert checks[name][0] == "OK", (name, checks[name])
    assert checks["backup"][0] == "WARN" and "fix: run one now: ralph-monitor backup" in checks["backup"][1]
    # The tests connect as the cluster's superuser, and there is no read-only role yet.
    assert checks["roles"][0] == "WARN" and "SUPERUSER" in checks["roles"][1]

    reader = f"reader_{uuid.uuid4().hex[:8]}"
    with admin_connect(pg_cluster) as conn:
        conn.execute(f"CREATE ROLE {reader} NOLOGIN")
    try:
        execute(daemon.dsn, f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader}")
        assert monitor("backup", config=daemon.config_path).returncode == 0
        rc, checks = doctor(daemon.config_path)
        assert rc == 0
        assert f"read-only: {reader}" in checks["roles"][1]
        assert checks["backup"][0] == "OK" and "1 backups; newest ralph-monitor-" in checks["backup"][1]
    finally:
        execute(daemon.dsn, f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {reader}")
        with admin_connect(pg_cluster) as conn:
            conn.execute(f"DROP ROLE {reader}")

    proc = monitor("doctor", "--json", config=daemon.config_path)
    assert {c["name"] for c in json.loads(proc.stdout)} >= {"config", "socket", "database", "backup", "nginx"}


def test_doctor_fails_with_fixes_when_nothing_works(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", {
        "socket": {"path": str(tmp_path / "missing.sock")},
        "database": {"dsn": f"host={tmp_path} dbname=nothing user=nobody", "connect_timeout_s": 1.0},
        "paths": {"state_dir": str(tmp_path / "state")},
    })
    rc, checks = doctor(config)
    assert rc == 1
    assert checks["config"][0] == "OK"
    assert checks["socket"][0] == "FAIL" and "fix: systemctl enable --now ralph-monitor.socket" in checks["socket"][1]
    assert checks["database"][0] == "FAIL" and "fix:" in checks["database"][1]
    for status, text in checks.values():
        if status != "OK":
            assert "fix:" in text or "unknown" in text, text


def test_doctor_reports_a_socket_nobody_listens_on(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays, nothing listens
    path.chmod(0o660)
    config = write_config(tmp_path / "config.toml", {"socket": {"path": str(path), "group": ""},
                                                     "paths": {"state_dir": str(tmp_path / "state")},
                                                     "database": {"dsn": "host=/nonexistent dbname=x"}})
    _, checks = doctor(config)
    assert checks["socket"][0] == "FAIL" and "nothing is listening" in checks["socket"][1]


def test_doctor_reports_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[retention]\nevents_dayz = 3\n")
    proc = monitor("doctor", config=config)
    assert proc.returncode == 1
    assert proc.stdout.startswith("FAIL  config") and "did you mean 'events_days'" in proc.stdout


def test_doctor_sees_the_nginx_that_scripts_run_starts(daemon: Daemon, tmp_path: Path) -> None:
    """A private nginx (as scripts/run starts one, config outside /etc/nginx) serving the site
    dir counts as serving the dashboard."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("nginx is not installed (scripts/test installs it)")
    site_dir = daemon.root / "state" / "site"
    rc, checks = doctor(daemon.config_path)
    assert checks["nginx"][0] == "WARN" and str(site_dir) in checks["nginx"][1]
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (prefix / "site.conf").write_text(f"server {{ listen 127.0.0.1:{port}; root {site_dir}/current; }}\n")
    (prefix / "nginx.conf").write_text(
        ("user nobody nogroup;\n" if os.geteuid() == 0 else "")
        + f"daemon off;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\nevents {{}}\n"
        f"http {{ access_log off; client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy; "
        f"fastcgi_temp_path {prefix}/fastcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi; "
        f"include {prefix}/site.conf; }}\n")
    server = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not (prefix / "nginx.pid").exists():
            assert server.poll() is None and time.monotonic() < deadline, server.communicate(timeout=5)[0]
            time.sleep(0.05)
        rc, checks = doctor(daemon.config_path)
        assert checks["nginx"] == ("OK", f"site enabled: {prefix / 'site.conf'}"), checks
    finally:
        server.terminate()
        server.wait(10)
