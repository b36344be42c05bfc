"""Upgrading and purging the package on a running host.

Version N is installed and takes events; N+1 (this package with one more migration and a
higher revision) is installed by apt while agents keep sending: nothing acknowledged is lost,
the socket never refuses a connection, the edited config is kept and the migration applied.
Then `apt purge` removes the package, its config and unit state, and keeps the database.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.system.agents import Agents
from tests.system.conftest import install
from tests.system.container import Container
from tests.system.test_service import CONFIG, SOCKET, assert_nothing_lost, main_pid, wait_active

MIGRATION_SQL = "CREATE TABLE upgrade_marker (note text NOT NULL);\nINSERT INTO upgrade_marker VALUES ('N+1');\n"


def next_version(deb: Path, workdir: Path) -> tuple[Path, int, str]:
    """The package N+1: `deb` with one more migration and the revision raised by one; with the
    new migration's number and the new version."""
    tree = workdir / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, timeout=120)
    migrations = next(tree.glob("opt/ralph-monitor/lib/python3*/site-packages/ralph_monitor/sql/migrations"))
    number = len(list(migrations.glob("*.sql"))) + 1
    (migrations / f"{number:04d}_upgrade_marker.sql").write_text(MIGRATION_SQL)
    control = tree / "DEBIAN" / "control"
    text = control.read_text()
    version = re.search(r"^Version: (\S+)-(\d+)$", text, re.MULTILINE)
    assert version, text
    new_version = f"{version[1]}-{int(version[2]) + 1}"
    control.write_text(text.replace(version[0], f"Version: {new_version}"))
    target = workdir / deb.name.replace(f"-{version[2]}_", f"-{int(version[2]) + 1}_")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "-z1", "--build", str(tree), str(target)],
                   check=True, capture_output=True, timeout=300)
    return target, number, new_version


def test_upgrade_under_load_then_purge(fresh_container: Container, deb: Path, tmp_path: Path) -> None:
    newer, migration, new_version = next_version(deb, tmp_path)
    host = fresh_container
    install(host, deb)
    host.sh(f"echo '# edited by the admin' >> {CONFIG}")
    edited = host.path(CONFIG).read_bytes()
    before = wait_active(host)

    with Agents(lambda: host.connect(SOCKET), writers=20, pace_s=0.2, tag="upgrade") as agents:
        agents.wait_for_acks(200)
        upgraded = install(host, newer)
        restarted = wait_active(host, other_than=before)
        agents.wait_for_acks(len(agents.acked) + 200)
    assert_nothing_lost(host, agents, "upgrade")
    assert "ralph-monitor" in upgraded.stdout
    assert host.run("dpkg-query", "-W", "-f=${Version}", "ralph-monitor").stdout == new_version
    assert host.path(CONFIG).read_bytes() == edited
    assert host.psql(f"SELECT name FROM schema_migrations WHERE version = {migration}") == [["upgrade_marker"]]
    assert host.psql("SELECT note FROM upgrade_marker") == [["N+1"]]
    assert main_pid(host) == restarted

    purged = host.run("apt-get", "purge", "-y", "-q", "ralph-monitor")
    assert "the database ralph_monitor and the roles ralph-monitor and ralph_reader are kept" in purged.stdout
    for path in ("/opt/ralph-monitor", "/etc/ralph-monitor", "/usr/lib/systemd/system/ralph-monitor.service",
                 "/etc/systemd/system/sockets.target.wants/ralph-monitor.socket",
                 "/etc/systemd/system/ralph-monitor.service.d", "/var/lib/ralph-monitor/site",
                 "/etc/nginx/sites-available/ralph-monitor.conf"):
        assert not host.path(path).exists(), path
    assert host.run("systemctl", "is-active", "ralph-monitor.socket", check=False).stdout.strip() == "inactive"
    stored = int(host.psql("SELECT count(*) FROM events WHERE payload->'data'->>'run' = 'upgrade'")[0][0])
    assert stored >= len(agents.acked)   # the database outlives a purge
