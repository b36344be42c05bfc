"""The installed package under a real systemd: socket activation and who may write, restarts
and kills under load, the watchdog, scheduled backup and prune under the unit's hardening,
restore, the unit's exposure score, and the journal.

These tests share one container (`installed`) and leave the service running as they found it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest

from tests.system.agents import Agents
from tests.system.container import Container

SOCKET = "/run/ralph-monitor/events.sock"
CONFIG = "/etc/ralph-monitor/config.toml"
SERVICE = "ralph-monitor.service"


def unit_property(container: Container, name: str, unit: str = SERVICE) -> str:
    return container.run("systemctl", "show", "--value", "-p", name, unit).stdout.strip()


def main_pid(container: Container) -> int:
    return int(unit_property(container, "MainPID"))


def wait_active(container: Container, *, other_than: int = 0, timeout: float = 60) -> int:
    """Wait until the service is active (and, with `other_than`, runs a new main process); its pid."""
    def ready() -> bool:
        return (unit_property(container, "ActiveState") == "active"
                and main_pid(container) not in (0, other_than))
    container.wait_until(ready, timeout, f"{SERVICE} active" + (f" with a pid other than {other_than}" if other_than else ""))
    return main_pid(container)


def stored(container: Container, tag: str) -> set[str]:
    rows = container.psql(f"SELECT event_id FROM events WHERE payload->'data'->>'run' = '{tag}'")
    return {row[0] for row in rows}


def assert_nothing_lost(container: Container, agents: Agents, tag: str) -> None:
    """Every acknowledged event is stored (those acked as spooled once the replay is done),
    and no connection was refused."""
    acked = agents.acked
    assert acked and agents.rejected == []
    deadline = time.monotonic() + 30
    while (missing := acked - stored(container, tag)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged events ({agents.spooled} spooled) are not stored"
    assert agents.refused == [], f"the socket refused {len(agents.refused)} connections: {agents.refused[:3]}"


@pytest.fixture
def agents(installed: Container, request: pytest.FixtureRequest) -> Iterator[Agents]:
    """Twenty agents on the host, writing into the container's socket, a few windows a second each."""
    tag = request.node.name
    with Agents(lambda: installed.connect(SOCKET), writers=20, pace_s=0.2, tag=tag) as running:
        running.wait_for_acks(100)
        yield running
    wait_active(installed)


def test_socket_activation_and_who_may_write(installed: Container) -> None:
    assert installed.run("systemctl", "is-enabled", "ralph-monitor.socket").stdout.strip() == "enabled"
    installed.run("systemctl", "stop", SERVICE)
    assert unit_property(installed, "ActiveState", "ralph-monitor.socket") == "active"
    assert unit_property(installed, "ActiveState") == "inactive"
    listing = installed.run("stat", "-c", "%a %U %G", SOCKET).stdout.split()
    assert listing == ["660", "root", "ralph"]

    # The first event starts the daemon; an agent in group ralph may write.
    emitted = installed.run("ralph-monitor", "emit", "session_heartbeat", "--no-spool", "--timeout", "30",
                            "note=first", user="agent")
    event_id = emitted.stdout.strip()
    assert unit_property(installed, "ActiveState") == "active"
    row = installed.psql(f"SELECT writer_uid FROM events WHERE event_id = '{event_id}'")
    agent_uid = installed.run("id", "-u", "agent").stdout.strip()
    assert row == [[agent_uid]]

    # A user outside the group cannot even connect.
    refused = installed.run("ralph-monitor", "emit", "session_heartbeat", "--no-spool", "--socket", SOCKET,
                            user="outsider", check=False)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr, refused.stderr


def test_restart_and_kill_under_load_lose_nothing(installed: Container, agents: Agents,
                                                   request: pytest.FixtureRequest) -> None:
    before = wait_active(installed)
    installed.run("systemctl", "restart", SERVICE)
    after_restart = wait_active(installed, other_than=before)
    agents.wait_for_acks(len(agents.acked) + 200)

    installed.run("systemctl", "kill", "-s", "KILL", SERVICE)
    wait_active(installed, other_than=after_restart)   # Restart=on-failure
    agents.wait_for_acks(len(agents.acked) + 200)
    agents.stop()
    assert agents.reconnects >= 20, "the writers were never cut off: the restarts did not happen under load"
    assert_nothing_lost(installed, agents, request.node.name)


def test_watchdog_restarts_a_hung_daemon(installed: Container, agents: Agents,
                                         request: pytest.FixtureRequest) -> None:
    watchdog_s = int(unit_property(installed, "WatchdogUSec").removesuffix("s"))
    hung = wait_active(installed)
    installed.run("kill", "-s", "STOP", str(hung))
    stopped_at = time.monotonic()
    restarted = wait_active(installed, other_than=hung, timeout=watchdog_s + 30)
    took = time.monotonic() - stopped_at
    assert took < watchdog_s + 10, f"restarted {took:.0f} s after it hung (WatchdogSec={watchdog_s})"
    journal = installed.run("journalctl", "-u", SERVICE, "--since", "-2min", "-o", "cat").stdout
    assert "Watchdog timeout" in journal, journal[-2000:]
    agents.wait_for_acks(len(agents.acked) + 200)
    agents.stop()
    assert restarted != hung
    assert_nothing_lost(installed, agents, request.node.name)


def test_scheduled_backup_and_prune_run_under_the_unit_and_restore(installed: Container) -> None:
    # Both jobs one or two minutes from now (the container's clock is UTC, as is [reports] timezone).
    at = installed.run("date", "-u", "+%H:%M", "-d", "+80 seconds").stdout.strip()
    installed.run("cp", CONFIG, "/root/config.toml.orig")
    try:
        installed.sh(f"sed -i -e 's/^backup_time = .*/backup_time = \"{at}\"/' "
                     f"-e 's/^prune_time = .*/prune_time = \"{at}\"/' -e 's/^timezone = .*/timezone = \"UTC\"/' {CONFIG}")
        installed.run("systemctl", "restart", SERVICE)

        def outcome(kind: str) -> list[list[str]]:
            return installed.psql(f"SELECT event_type, payload->'data'->>'error' FROM events "
                                  f"WHERE event_type LIKE '{kind}_%' AND received_at > now() - interval '3 minutes'")
        installed.wait_until(lambda: outcome("backup") and outcome("prune"), 150, "the scheduled backup and prune")
    finally:
        installed.run("cp", "/root/config.toml.orig", CONFIG)
        installed.run("systemctl", "restart", SERVICE)
    assert outcome("backup")[0][0] == "backup_completed", outcome("backup")
    assert outcome("prune")[0][0] == "prune_completed", outcome("prune")

    dump = installed.sh("ls -t /var/lib/ralph-monitor/backups/*.dump | head -1").stdout.strip()
    installed.run("createdb", "-O", "ralph-monitor", "ralph_monitor_restored", user="postgres")
    try:
        restored = installed.run("ralph-monitor", "restore", dump, "--into",
                                 "host=/var/run/postgresql dbname=ralph_monitor_restored", user="ralph-monitor")
        assert "restored" in restored.stdout.lower(), restored.stdout
        counts = installed.psql("SELECT count(*) FROM events WHERE event_type = 'session_heartbeat'",
                                "ralph_monitor_restored")
        assert int(counts[0][0]) > 0
    finally:
        installed.run("dropdb", "--force", "ralph_monitor_restored", user="postgres")


def test_exposure_score_below_two(installed: Container) -> None:
    report = installed.run("systemd-analyze", "security", "--no-pager", SERVICE).stdout
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report)
    assert score, report[-2000:]
    assert float(score[1]) < 2.0, report


def test_journal_has_priority_and_structured_fields(installed: Container) -> None:
    installed.run("systemctl", "restart", SERVICE)
    wait_active(installed)
    lines = installed.run("journalctl", "-u", SERVICE, "-o", "json", "--since", "-1min",
                          "_TRANSPORT=journal").stdout.splitlines()
    records = [json.loads(line) for line in lines]
    ours = [r for r in records if r.get("SYSLOG_IDENTIFIER") == "ralph-monitor"]
    assert ours, lines[-5:]
    started = [r for r in ours if r.get("LOGGER", "").startswith("ralph_monitor")]
    assert started, ours[-3:]
    for record in started:
        assert record["PRIORITY"] in {"2", "3", "4", "6", "7"}
        assert record["CODE_FILE"].endswith(".py") and int(record["CODE_LINE"]) > 0
