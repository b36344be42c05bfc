"""Several hosts, one PostgreSQL: three containers, each with the package installed by apt and
its daemon under systemd, write over TCP to PostgreSQL in a fourth (SCRAM, the password in a
file only the service user can read, TLS with the server's certificate verified), on a bridge
of the test's own. Every event carries its host; the aggregates are exactly the sum of what the
agents sent; `ralph-query status` and the dashboard list the hosts; a stopped central database
makes every host spool, and everything lands once when it is back; one host down leaves the
others undisturbed.

The four containers are booted once for the module and shared by its tests, in this order.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import short_tempdir
from tests.system.conftest import install
from tests.system.container import Container

NET = "10.88.0"
CENTRAL_IP = f"{NET}.10"
PASSWORD = f"pw-{uuid.uuid4().hex}"
CONFIG = "/etc/ralph-monitor/config.toml"
BIN = "/opt/ralph-monitor/bin"
SOCKET = "/run/ralph-monitor/events.sock"
DSN = (f"host={CENTRAL_IP} dbname=ralph_monitor user=ralph_writer "
       "sslmode=verify-ca sslrootcert=/etc/ralph-monitor/db-ca.pem")

CENTRAL_SETUP = f"""
cat >> /etc/postgresql/15/main/postgresql.conf <<'EOF'
listen_addresses = '*'
password_encryption = 'scram-sha-256'
EOF
cat > /etc/postgresql/15/main/pg_hba.conf <<'EOF'
local   all            postgres                      peer
local   all            all                           peer
hostnossl all          all           0.0.0.0/0       reject
hostssl ralph_monitor  ralph_writer  {NET}.0/24      scram-sha-256
EOF
systemctl restart postgresql
until pg_isready -q; do sleep 0.2; done
runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 <<'EOF'
CREATE ROLE ralph_writer LOGIN PASSWORD '{PASSWORD}';
CREATE DATABASE ralph_monitor OWNER ralph_writer;
EOF
"""

HOST_SETUP = f"""
systemctl stop ralph-monitor.service ralph-monitor.socket
install -m 0600 -o ralph-monitor -g ralph-monitor /dev/null /etc/ralph-monitor/db-password
printf '%s\\n' '{PASSWORD}' > /etc/ralph-monitor/db-password
sed -i 's|^dsn = ""|dsn = "{DSN}"|; s|^password_file = ""|password_file = "/etc/ralph-monitor/db-password"|' {CONFIG}
rm -f /etc/systemd/system/ralph-monitor.service.d/50-unix-socket-only.conf
systemctl daemon-reload
systemctl enable --now ralph-monitor.socket
systemctl start ralph-monitor.service
useradd --create-home --groups ralph agent
"""


CLOSING = "('spec_completed', 'spec_failed', 'timeout_triggered')"
"""The events that close a spec run, carrying its tokens and cost."""


def bridge_name() -> str:
    return f"rmbr{os.getpid() % 100000}"


@pytest.fixture(scope="module")
def fleet(deb: Path) -> Iterator[tuple[Container, list[Container]]]:
    """(central PostgreSQL, [three hosts]) on a bridge of their own."""
    bridge = bridge_name()
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True, capture_output=True)
    subprocess.run(["ip", "link", "set", bridge, "up"], check=True, capture_output=True)
    tag = uuid.uuid4().hex[:3]
    central = Container(f"db{tag}", short_tempdir("rm-ct-"), bridge=bridge)
    hosts = [Container(f"h{tag}-{n}", short_tempdir("rm-ct-"), bridge=bridge) for n in (1, 2, 3)]
    everyone = [central, *hosts]
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(Container.boot, everyone))
        for n, container in enumerate(everyone):
            container.set_address(f"{NET}.{10 + n}/24")
        central.sh(CENTRAL_SETUP)
        ca = central.path("/etc/ssl/certs/ssl-cert-snakeoil.pem").read_bytes()

        def set_up(host: Container) -> None:
            host.run("systemctl", "disable", "--now", "postgresql")  # this host uses the central database
            install(host, deb)
            host.path("/etc/ralph-monitor/db-ca.pem").write_bytes(ca)
            host.sh(HOST_SETUP)
            host.wait_until(lambda: host.run("systemctl", "is-active", "ralph-monitor.service",
                                             check=False).stdout.strip() == "active", 90, "the daemon runs")

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(set_up, hosts))
        yield central, hosts
    finally:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(Container.shutdown, everyone))
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def scalar(central: Container, sql: str) -> str:
    return central.psql(sql)[0][0]


def events_of(central: Container, tag: str) -> dict[str, int]:
    """Events whose data carries `tag`, per host."""
    rows = central.psql(f"SELECT host, count(*) FROM events WHERE payload->'data'->>'tag' = '{tag}' GROUP BY host")
    return {host: int(n) for host, n in rows}


def send(host: Container, tag: str, count: int) -> list[dict[str, object]]:
    """`count` events from an agent on `host` (through its socket), with their replies."""
    session = str(uuid.uuid4())
    lines = [json.dumps({"type": "user_feedback", "session_id": session, "event_id": str(uuid.uuid4()),
                         "data": {"tag": tag, "n": i}}) + "\n" for i in range(count)]
    with host.connect(SOCKET) as sock:
        sock.sendall("".join(lines).encode())
        buffer = b""
        while buffer.count(b"\n") < count:
            chunk = sock.recv(65536)
            assert chunk, f"{host.name}: the daemon closed the connection"
            buffer += chunk
    return [json.loads(line) for line in buffer.splitlines()]


def settled(central: Container) -> bool:
    return scalar(central, "SELECT (SELECT count(*) FROM dirty_sessions) + (SELECT count(*) FROM dirty_buckets)") == "0"


def test_three_hosts_write_to_one_database_and_the_aggregates_are_the_sum(fleet) -> None:
    central, hosts = fleet
    # TLS and SCRAM: every connection of the writer role is encrypted, and its password is
    # readable by the service user only.
    for host in hosts:
        mode = host.run("stat", "-c", "%a %U", "/etc/ralph-monitor/db-password").stdout.split()
        assert mode == ["600", "ralph-monitor"]
        denied = host.run("cat", "/etc/ralph-monitor/db-password", user="agent", check=False)
        assert denied.returncode != 0
    with ThreadPoolExecutor(3) as pool:
        runs = list(pool.map(lambda h: h[1].run(f"{BIN}/ralph-monitor", "demo", "--seed", str(h[0]),
                                                 user="agent", timeout=120), enumerate(hosts, 1)))
    assert all(r.returncode == 0 for r in runs)
    names = sorted(h.name for h in hosts)
    central.wait_until(lambda: settled(central) and scalar(central, "SELECT count(*) FROM sessions") == "12",
                       60, "the aggregates of 3 x 4 demo sessions")
    assert scalar(central, "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) "
                           "WHERE usename = 'ralph_writer' AND NOT ssl") == "0"
    assert int(scalar(central, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'ralph_writer'")) >= 3
    assert scalar(central, "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid "
                           "WHERE rolname = 'ralph_writer'") == "t"

    # Every event carries its host, and each host sent the same demo (other ids, other seed).
    per_host = dict(central.psql("SELECT coalesce(host, '(none)'), count(*) FROM events GROUP BY 1 ORDER BY 1"))
    assert sorted(per_host) == names
    for host in hosts:
        sessions = central.psql(f"SELECT count(DISTINCT session_id) FROM events WHERE host = '{host.name}'")
        assert sessions == [["4"]]
    # The aggregates are exactly the sum over the hosts of what their agents sent.
    total = {"sessions": 0, "spec_runs": 0, "cost": Decimal(0), "tokens": 0, "events": 0}
    for host in hosts:
        where = f"host = '{host.name}'"
        total["sessions"] += int(scalar(central, f"SELECT count(*) FROM events WHERE {where} "
                                                 "AND event_type = 'session_started'"))
        total["spec_runs"] += int(scalar(central, f"SELECT count(*) FROM events WHERE {where} "
                                                  "AND event_type = 'spec_started'"))
        total["cost"] += Decimal(scalar(central, "SELECT coalesce(sum((payload->'data'->>'cost_usd')::numeric), 0) "
                                                 f"FROM events WHERE {where} AND event_type IN {CLOSING}"))
        total["tokens"] += int(scalar(central, "SELECT coalesce(sum((payload->'data'->>'tokens_used')::bigint), 0) "
                                               f"FROM events WHERE {where} AND event_type IN {CLOSING}"))
        total["events"] += int(per_host[host.name])
    assert int(scalar(central, "SELECT count(*) FROM sessions")) == total["sessions"] == 12
    assert int(scalar(central, "SELECT count(*) FROM spec_runs")) == total["spec_runs"]
    assert Decimal(scalar(central, "SELECT sum(cost_usd) FROM spec_runs")) == total["cost"]
    assert Decimal(scalar(central, "SELECT sum(cost_usd) FROM sessions")) == total["cost"]
    assert int(scalar(central, "SELECT sum(tokens_used) FROM sessions")) == total["tokens"]
    assert int(scalar(central, "SELECT sum(count) FROM metric_buckets")) == total["events"]

    # The hosts are listed, with their last sign of life, by ralph-query and the dashboard.
    status = hosts[0].run(f"{BIN}/ralph-query", "status").stdout
    assert all(f"{name}: last seen" in status for name in names), status
    hosts[0].run("runuser", "-u", "ralph-monitor", "--", f"{BIN}/ralph-monitor", "render", "--full",
                 "--config", CONFIG)
    overview = hosts[0].path("/var/lib/ralph-monitor/site/current/index.html").read_text()
    assert all(f"<td>{name}</td>" in overview for name in names)


def test_central_database_stopped_every_host_spools_and_all_lands_once(fleet) -> None:
    central, hosts = fleet
    central.run("systemctl", "stop", "postgresql@15-main", "postgresql")
    assert central.run("pg_isready", check=False).returncode != 0
    tag = f"outage-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda h: send(h, tag, 200), hosts))
    for host, answered in zip(hosts, replies):
        assert all(r["ok"] and r.get("spooled") for r in answered), (host.name, answered[:3])
    central.run("systemctl", "start", "postgresql@15-main", "postgresql")
    central.wait_until(lambda: events_of(central, tag) == {h.name: 200 for h in hosts}, 90,
                       "every spooled event in the central database")
    assert scalar(central, f"SELECT count(DISTINCT event_id) FROM events WHERE payload->'data'->>'tag' = '{tag}'") \
        == "600"


def test_one_host_down_does_not_disturb_the_others(fleet) -> None:
    central, hosts = fleet
    down, *up = hosts
    down.shutdown()
    tag = f"one-down-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda h: send(h, tag, 300), up))
    assert all(r["ok"] and not r.get("spooled") for answered in replies for r in answered)
    central.wait_until(lambda: events_of(central, tag) == {h.name: 300 for h in up}, 30,
                       "the other hosts' events stored")
    status = up[0].run(f"{BIN}/ralph-query", "status").stdout
    assert f"{down.name}: last seen" in status
