"""Alerts end to end (issue 14): a real daemon and database, Apprise delivering to a local
HTTP receiver (json://) and to a local SMTP server (mailto://, aiosmtpd), and the command
channel. Each rule fires once, dedupes, resolves; failed deliveries are retried with backoff
and survive a daemon restart (the outbox is in PostgreSQL); a destination that hangs does
not delay acknowledgements.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ralph_monitor import queries
from ralph_monitor.alerts.rules import HOST_SILENT_S
from ralph_monitor.config import Settings
from ralph_monitor.store import AlertStore, open_read_store
from tests.agent_tools import agent_env
from tests.conftest import Daemon, LineClient, query
from tests.integration.test_absurd_values import INJECT_FAILURE
from tests.integration.test_agent_loop import fake_claude  # noqa: F401 - a fixture
from tests.integration.test_overnight import BIN
from tests.ops import execute
from tests.scenario import scenario_zone

FAST = {"check_interval_s": 0.3, "retry_after_s": 0.3, "intervention_after_min": 0.02,
        "dashboard_url": "https://build-box/ralph/"}
WAIT_S = 30.0


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records what Apprise posts. `fail_next` requests are
    answered 500; with `hang_s` set, each request waits that long before its answer."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.fail_next = 0
        self.hang_s = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.hang_s:
                    time.sleep(receiver.hang_s)
                if receiver.fail_next > 0:
                    receiver.fail_next -= 1
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.server_address[1]}/hook"

    def titles(self) -> list[str]:
        return [m["title"] for m in self.received]

    def wait_for(self, predicate: Any, what: str, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"{what}; received: {self.titles()}"
            time.sleep(0.1)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def alerting_daemon(daemon_factory: Any, receiver: Receiver, **extra: Any) -> Daemon:
    daemon: Daemon = daemon_factory(alerts={**FAST, "urls": [receiver.url]}, **extra)
    daemon.start()
    return daemon


def send(daemon: Daemon, *events: dict[str, Any]) -> None:
    client = LineClient(daemon.connect())
    try:
        for event in events:
            assert client.request(event)["ok"]
    finally:
        client.close()


def test_a_request_for_a_human_fires_once_and_resolves_when_answered(daemon_factory: Any, receiver: Receiver) -> None:
    daemon = alerting_daemon(daemon_factory, receiver)
    sid = str(uuid.uuid4())
    request_id = str(uuid.uuid4())
    send(daemon, {"type": "session_started", "session_id": sid, "data": {"name": "night-run"}},
         {"type": "intervention_request", "session_id": sid, "spec_id": "CR-7", "event_id": request_id,
          "data": {"message": "Which database should the migration target?"}})
    receiver.wait_for(lambda: any(t.startswith("Agent needs you") for t in receiver.titles()), "no alert")
    alert = next(m for m in receiver.received if m["title"].startswith("Agent needs you"))
    assert alert["title"] == "Agent needs you: night-run on CR-7"
    assert "Which database should the migration target?" in alert["message"]
    assert f"https://build-box/ralph/sessions/{sid}.html#request-{request_id}" in alert["message"]
    time.sleep(2)   # several evaluations later: still one message
    assert sum(t.startswith("Agent needs you") for t in receiver.titles()) == 1
    send(daemon, {"type": "user_feedback", "session_id": sid, "data": {"request_id": request_id, "answer": "prod"}})
    receiver.wait_for(lambda: "Resolved: Agent needs you: night-run on CR-7" in receiver.titles(), "not resolved")
    rows = query(daemon.dsn, "SELECT rule, resolved_at FROM alerts")
    assert len(rows) == 1 and rows[0]["rule"] == "intervention_waiting" and rows[0]["resolved_at"] is not None
    out = subprocess.run([str(BIN / "ralph-query"), "alerts", "--config", str(daemon.config_path)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert "Agent needs you: night-run on CR-7" in out and "firing sent, resolved sent" in out
    assert " resolved " in out and "one-off" not in out
    # The dashboard's alerts page says the same, with the delivery of each message.
    subprocess.run([str(BIN / "ralph-monitor"), "render", "--full", "--config", str(daemon.config_path)],
                   check=True, capture_output=True, timeout=120)
    page = (daemon.root / "state" / "site" / "current" / "alerts.html").read_text()
    assert "Agent needs you: night-run on CR-7" in page and "firing sent, resolved sent" in page
    snapshot = json.loads((daemon.root / "state" / "site" / "current" / "api" / "alerts.json").read_text())
    assert snapshot["alerts"][0]["rule"] == "intervention_waiting"


def test_stall_failure_budget_and_monitor_rules_each_fire_once(daemon_factory: Any, receiver: Receiver) -> None:
    daemon = alerting_daemon(daemon_factory, receiver, aggregates={"stall_after_s": 2},
                             budget={"session_usd": 1.0})
    stalling, failing, costly = (str(uuid.uuid4()) for _ in range(3))
    send(daemon,
         {"type": "session_started", "session_id": stalling, "data": {"name": "stalls"}},
         {"type": "spec_started", "session_id": stalling, "spec_id": "S-1"},
         {"type": "session_started", "session_id": failing, "data": {"name": "fails"}},
         {"type": "spec_started", "session_id": failing, "spec_id": "F-1"},
         {"type": "spec_failed", "session_id": failing, "spec_id": "F-1", "data": {"error": "tests failed"}},
         {"type": "session_ended", "session_id": failing, "data": {"status": "failed"}},
         {"type": "session_started", "session_id": costly, "data": {"name": "costly"}},
         {"type": "spec_started", "session_id": costly, "spec_id": "C-1"},
         {"type": "spec_completed", "session_id": costly, "spec_id": "C-1", "data": {"cost_usd": 2.5}})
    receiver.wait_for(lambda: {"Session stalled: stalls", "Session ended with 1 failed spec: fails",
                               "Session over budget: costly"} <= set(receiver.titles()), "rules did not fire")
    # The stalled session comes back: resolved. The others happened: they never resolve or repeat.
    send(daemon, {"type": "session_heartbeat", "session_id": stalling},
         {"type": "session_ended", "session_id": stalling})
    receiver.wait_for(lambda: "Resolved: Session stalled: stalls" in receiver.titles(), "stall not resolved")
    time.sleep(2)
    titles = receiver.titles()
    assert titles.count("Session ended with 1 failed spec: fails") == 1
    assert titles.count("Session over budget: costly") == 1
    assert "Spent $2.50 of $1.00" in next(m["message"] for m in receiver.received
                                          if m["title"] == "Session over budget: costly")
    assert not any(t.startswith("Resolved: Session over budget") for t in titles)
    # The monitor itself: a session whose aggregates cannot be updated.
    bad = str(uuid.uuid4())
    with psycopg.connect(daemon.dsn, autocommit=True) as conn:
        conn.execute(INJECT_FAILURE.replace("%(sid)s", f"'{bad}'"))
    send(daemon, {"type": "session_started", "session_id": bad})
    receiver.wait_for(lambda: "ralph-monitor: aggregates not updated" in receiver.titles(), "no monitor alert")
    with psycopg.connect(daemon.dsn, autocommit=True) as conn:
        conn.execute("DROP TRIGGER fail_projection ON sessions")
    subprocess.run([str(BIN / "ralph-monitor"), "rebuild-aggregates", "--config", str(daemon.config_path)],
                   check=True, capture_output=True, timeout=120)
    receiver.wait_for(lambda: "Resolved: ralph-monitor: aggregates not updated" in receiver.titles(),
                      "monitor alert not resolved")


def test_failed_deliveries_are_retried_and_survive_a_restart(daemon_factory: Any, receiver: Receiver) -> None:
    receiver.fail_next = 3
    daemon = alerting_daemon(daemon_factory, receiver)
    sid = str(uuid.uuid4())
    send(daemon, {"type": "session_started", "session_id": sid, "data": {"name": "retry"}},
         {"type": "intervention_request", "session_id": sid, "data": {"message": "help"}})
    receiver.wait_for(lambda: bool(receiver.received), "never delivered after failures")
    row = query(daemon.dsn, "SELECT attempts, sent_at, last_error FROM alert_messages")[0]
    assert row["attempts"] == 4 and row["sent_at"] is not None and row["last_error"] is None
    # Destination down, daemon restarted: the outbox keeps the message, the new daemon sends it.
    port = receiver.server.server_address[1]
    receiver.close()
    send(daemon, {"type": "user_feedback", "session_id": sid, "data": {"answer": "ok"}})
    deadline = time.monotonic() + WAIT_S
    while not query(daemon.dsn, "SELECT 1 FROM alert_messages WHERE kind = 'resolved' AND attempts > 0 "
                                "AND last_error IS NOT NULL"):
        assert time.monotonic() < deadline, "the resolved message was never tried"
        time.sleep(0.1)
    daemon.stop()
    back = Receiver.__new__(Receiver)
    back.__init__()  # a new receiver, on the same port as before
    back.server.server_close()
    back.server = ThreadingHTTPServer(("127.0.0.1", port), back.server.RequestHandlerClass)
    back.thread = threading.Thread(target=back.server.serve_forever, daemon=True)
    back.thread.start()
    try:
        daemon.start()
        back.wait_for(lambda: "Resolved: Agent needs you: retry" in back.titles(), "not delivered after restart")
    finally:
        back.close()


def test_a_hanging_destination_does_not_delay_acks(daemon_factory: Any, receiver: Receiver) -> None:
    receiver.hang_s = 20.0
    daemon = alerting_daemon(daemon_factory, receiver)
    sid = str(uuid.uuid4())
    send(daemon, {"type": "session_started", "session_id": sid},
         {"type": "intervention_request", "session_id": sid, "data": {"message": "stuck?"}})
    deadline = time.monotonic() + WAIT_S
    while not query(daemon.dsn, "SELECT 1 FROM alert_messages WHERE attempts > 0"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    client = LineClient(daemon.connect())
    slowest = 0.0
    for _ in range(200):
        started = time.monotonic()
        assert client.request({"type": "session_heartbeat", "session_id": sid})["ok"]
        slowest = max(slowest, time.monotonic() - started)
    client.close()
    # The destination hangs for 20 s per message: an ack that waited for it would take that long.
    assert slowest < receiver.hang_s / 2, f"an ack took {slowest:.2f} s while a destination hung"


def test_alert_test_reports_each_destination(daemon_factory: Any, receiver: Receiver, tmp_path: Path) -> None:
    marker = tmp_path / "command-got"
    daemon: Daemon = daemon_factory(alerts={"urls": [receiver.url, "json://127.0.0.1:9/nothing-listens"],
                                            "command": f"cat > {marker}"})
    daemon.write_config()
    result = subprocess.run([str(BIN / "ralph-monitor"), "alert", "test", "--config", str(daemon.config_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result
    lines = result.stdout.splitlines()
    assert any(line.startswith("json://127.0.0.1 #") and line.endswith("delivered") for line in lines), lines
    assert any("FAILED" in line for line in lines), lines
    assert "command: delivered" in lines
    assert receiver.titles() == ["ralph-monitor test message"]
    assert json.loads(marker.read_text())["kind"] == "test"
    rows = query(daemon.dsn, "SELECT kind, sent_at IS NOT NULL AS sent, gave_up_at IS NOT NULL AS gave_up "
                             "FROM alert_messages ORDER BY id")
    assert [(r["kind"], r["sent"], r["gave_up"]) for r in rows] == [
        ("test", True, False), ("test", False, True), ("test", True, False)]


def test_alerts_reach_an_smtp_server(daemon_factory: Any) -> None:
    from aiosmtpd.controller import Controller

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    mails: list[str] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
            mails.append(envelope.content.decode(errors="replace"))
            return "250 OK"

    smtp = Controller(Handler(), hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        daemon: Daemon = daemon_factory(alerts={**FAST, "urls": [
            f"mailto://127.0.0.1:{port}?from=ralph@build-box.local&to=ops@example.com&mode=insecure"]})
        daemon.start()
        sid = str(uuid.uuid4())
        send(daemon, {"type": "session_started", "session_id": sid, "data": {"name": "mail-run"}},
             {"type": "intervention_request", "session_id": sid, "data": {"message": "Approve the deploy?"}})
        deadline = time.monotonic() + WAIT_S
        while not mails:
            assert time.monotonic() < deadline, "no mail arrived"
            time.sleep(0.1)
        assert "Subject: Agent needs you: mail-run" in mails[0] and "To: ops@example.com" in mails[0]
        assert "Approve the deploy?" in mails[0]
    finally:
        smtp.stop()


def test_the_morning_report_lists_the_night(daemon_factory: Any, receiver: Receiver) -> None:
    # The "night" is today in a zone where it is about noon: a run in UTC's last minute of the day
    # would fall outside 00:00-23:59.
    daemon = alerting_daemon(daemon_factory, receiver, reports={
        "timezone": scenario_zone(datetime.now(timezone.utc)), "night_start": "00:00", "night_end": "23:59"})
    sid = str(uuid.uuid4())
    send(daemon, {"type": "session_started", "session_id": sid, "data": {"name": "nightly"}},
         {"type": "spec_started", "session_id": sid, "spec_id": "CR-1"},
         {"type": "spec_completed", "session_id": sid, "spec_id": "CR-1", "data": {"cost_usd": 0.5}},
         {"type": "spec_started", "session_id": sid, "spec_id": "CR-2"},
         {"type": "spec_failed", "session_id": sid, "spec_id": "CR-2",
          "data": {"error": "AssertionError: expected 3 rows", "cost_usd": 0.25}})
    deadline = time.monotonic() + WAIT_S
    while query(daemon.dsn, "SELECT count(*) AS n FROM spec_runs WHERE status <> 'running'")[0]["n"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    result = subprocess.run([str(BIN / "ralph-monitor"), "alert", "report", "--send", "--config",
                             str(daemon.config_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "1 completed, 1 failed, 0 timed out, $0.75" in result.stdout
    receiver.wait_for(lambda: any(t.startswith("Night of") for t in receiver.titles()), "no report")
    report = next(m for m in receiver.received if m["title"].startswith("Night of"))
    assert "CR-2" in report["message"] and "AssertionError: expected 3 rows" in report["message"]
    assert "https://build-box/ralph/" in report["message"]


def test_budget_check_stops_a_shell_loop_over_budget(daemon_factory: Any) -> None:
    daemon: Daemon = daemon_factory(budget={"night_usd": 5.0, "session_usd": 2.0},
                                    reports={"timezone": "UTC", "night_start": "00:00"})
    daemon.start()
    sid = str(uuid.uuid4())
    check = [str(BIN / "ralph-monitor"), "budget", "check", "--config", str(daemon.config_path)]
    within = subprocess.run([*check, "--session", sid], capture_output=True, text=True, timeout=60)
    assert within.returncode == 0, within
    send(daemon, {"type": "session_started", "session_id": sid, "data": {"name": "spender"}},
         {"type": "spec_started", "session_id": sid, "spec_id": "B-1"},
         {"type": "spec_completed", "session_id": sid, "spec_id": "B-1", "data": {"cost_usd": 3.25}})
    deadline = time.monotonic() + WAIT_S
    while subprocess.run([*check, "--session", sid], capture_output=True, timeout=60).returncode == 0:
        assert time.monotonic() < deadline, "the session never went over its budget"
        time.sleep(0.3)
    over = subprocess.run([*check, "--session", sid], capture_output=True, text=True, timeout=60)
    assert over.returncode == 1 and "session spender: $3.25 of $2.00" in over.stdout
    assert "OVER BUDGET" in over.stderr
    night = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert night.returncode == 0 and "$3.25 of $5.00" in night.stdout
    assert subprocess.run([*check, "--max-usd", "3"], capture_output=True, timeout=60).returncode == 1
    by_prefix = subprocess.run([*check, "--session", sid[:8]], capture_output=True, text=True, timeout=60)
    assert by_prefix.returncode == 1 and "session spender" in by_prefix.stdout
    unknown = subprocess.run([*check, "--session", "ffffffff", "--strict"], capture_output=True, text=True,
                             timeout=60)
    assert unknown.returncode == 2 and "ffffffff" in unknown.stderr


def test_budget_check_fails_open_unless_strict(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[database]\ndsn = "host=/nonexistent dbname=nothing"\nconnect_timeout_s = 1.0\n'
                      '[budget]\nnight_usd = 1.0\n')
    config.chmod(0o640)
    check = [str(BIN / "ralph-monitor"), "budget", "check", "--config", str(config)]
    lenient = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert lenient.returncode == 0 and "cannot check the budget" in lenient.stderr and "fail open" in lenient.stderr
    strict = subprocess.run([*check, "--strict"], capture_output=True, text=True, timeout=60)
    assert strict.returncode == 2 and "cannot check the budget" in strict.stderr


def test_a_loop_over_budget_stops_at_the_right_spec_and_the_alert_goes_out(
        daemon_factory: Any, receiver: Receiver, fake_claude: Path, tmp_path: Path) -> None:  # noqa: F811
    daemon = alerting_daemon(daemon_factory, receiver, budget={"session_usd": 0.6})
    specs = tmp_path / "specs.txt"
    specs.write_text("ok-1\nok-2\nok-3\nok-4\n")   # $0.25, $0.50, $0.75, $1.00
    result = subprocess.run(
        [str(BIN / "ralph-monitor"), "loop", "--config", str(daemon.config_path), "--specs", str(specs),
         "--name", "capped", "--", str(fake_claude), "{spec}", "-p", "--output-format", "json"],
        capture_output=True, env=agent_env(tmp_path / "spool"), timeout=120, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert b"stopping after ok-2: spent $0.75 of --max-cost $0.60; no further spec is started" in result.stderr
    deadline = time.monotonic() + WAIT_S
    while not (rows := query(daemon.dsn, "SELECT * FROM sessions WHERE execution_state = 'budget_exceeded'")):
        assert time.monotonic() < deadline, query(daemon.dsn, "SELECT execution_state FROM sessions")
        time.sleep(0.1)
    assert rows[0]["specs_completed"] == 2 and rows[0]["total_specs"] == 4
    assert [r["spec_id"] for r in query(daemon.dsn, "SELECT spec_id FROM spec_runs ORDER BY start_time")] == [
        "ok-1", "ok-2"]
    receiver.wait_for(lambda: "Session over budget: capped" in receiver.titles(), "no budget alert")


def test_a_one_shot_alert_fires_once_across_passes_and_daemons(db_dsn: str) -> None:
    """Two daemons' alert stores on one database: a failed session fires once in all, however
    many passes each makes while it holds, and another session failing later fires too."""
    settings = replace(Settings(), alerts_on_monitor_health=False)
    night = (datetime.now(timezone.utc) - timedelta(hours=15), datetime.now(timezone.utc))
    first, second = AlertStore(settings, dsn=db_dsn), AlertStore(settings, dsn=db_dsn)

    def fail_a_session(name: str) -> None:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO sessions (id, name, start_time, end_time, last_event_at, execution_state, "
                         "specs_failed) VALUES (%s, %s, now() - interval '1 hour', now(), now(), 'failed', 1)",
                         (uuid.uuid4(), name))

    try:
        fail_a_session("red")
        fired = [store.evaluate(night=night, destinations=["json://127.0.0.1:9/"])[0]
                 for _ in range(3) for store in (first, second)]
        assert fired == [1, 0, 0, 0, 0, 0]
        fail_a_session("redder")
        fired = [store.evaluate(night=night, destinations=["json://127.0.0.1:9/"])[0]
                 for _ in range(2) for store in (second, first)]
        assert fired == [1, 0, 0, 0]
    finally:
        first.close()
        second.close()
    assert sorted(r["title"] for r in query(db_dsn, "SELECT title FROM alerts")) == [
        "Session ended with 1 failed spec: red", "Session ended with 1 failed spec: redder"]
    # Listed as what they are: a thing that happened, not a problem that was fixed ("resolved").
    with open_read_store(settings, dsn=db_dsn) as store:
        listed = queries.recent_alerts(store, since=night[0])
    assert [a.state for a in listed] == ["one-off", "one-off"]


def test_a_restarted_daemon_does_not_report_its_own_host_as_silent(db_dsn: str) -> None:
    """On start its health row is as old as its downtime until it writes the next one: paging
    "ralph-monitor on <this host> is not reporting" (then "Resolved") on every restart is noise.
    Another silent host fires at once; this host's own row is judged once the start is over."""
    settings = Settings()
    store = AlertStore(settings, dsn=db_dsn)
    for host in (settings.host, "build-2"):
        execute(db_dsn, "INSERT INTO monitor_hosts (host, version, started_at, last_seen) "
                        "VALUES (%s, '0', now() - interval '2 days', now() - interval '10 minutes')", (host,))
    night = (datetime.now(timezone.utc) - timedelta(hours=15), datetime.now(timezone.utc))

    def silent() -> set[str]:
        return {r["title"] for r in query(db_dsn, "SELECT title FROM alerts WHERE subject LIKE 'silent:%%' "
                                                  "AND resolved_at IS NULL")}
    try:
        store.evaluate(night=night, destinations=[])
        assert silent() == {"ralph-monitor on build-2 is not reporting"}
        store._first_pass_at -= timedelta(seconds=HOST_SILENT_S)  # the start is over; the row is still old
        store.evaluate(night=night, destinations=[])
        assert silent() == {"ralph-monitor on build-2 is not reporting",
                            f"ralph-monitor on {settings.host} is not reporting"}
    finally:
        store.close()
