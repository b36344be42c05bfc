"""`ralph-monitor emit`, `flush` and the Python client against a real daemon: round trips,
rejections, the client-side spool while the daemon is down, exactly-once delivery after."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from ralph_monitor.agent.client import Client, EventRejected, encode_event, new_event
from ralph_monitor.agent.spool import ClientSpool
from ralph_monitor.errors import ClientError
from tests.agent_tools import agent_env, events, monitor, settle
from tests.conftest import Daemon, query

SESSION = "6f1c2b4e-2222-4000-8000-000000000002"


def test_emit_round_trip_env_ids_json_and_rejection(daemon: Daemon, tmp_path: Path) -> None:
    env = agent_env(tmp_path / "spool")
    cfg = ["--config", str(daemon.config_path)]
    ok = monitor(daemon, "emit", "spec_completed", "--spec", "CR-01", "--session", SESSION, "tokens_used=1200",
                 "cost_usd=0.42", "note=two words", "--ts", "2026-11-25T03:12:00Z", *cfg, env=env)
    assert ok.returncode == 0, ok.stderr
    event_id = ok.stdout.decode().strip()
    row = events(daemon.dsn)[0]
    assert row["event_id"] == event_id and row["spec_id"] == "CR-01" and row["session_id"] == SESSION
    assert row["payload"]["data"] == {"tokens_used": 1200, "cost_usd": 0.42, "note": "two words"}
    assert row["occurred_at"].isoformat() == "2026-11-25T03:12:00+00:00"

    env_ids = monitor(daemon, "emit", "session_heartbeat", "--json", *cfg,
                      env={**env, "RALPH_SESSION_ID": SESSION, "RALPH_SPEC_ID": "CR-02"})
    reply = json.loads(env_ids.stdout)
    assert reply["ok"] is True
    stored = events(daemon.dsn, "event_id = %s", (reply["id"],))[0]
    assert (stored["session_id"], stored["spec_id"]) == (SESSION, "CR-02")
    assert stored["payload"]["ts"]  # the client's clock, set when the event was made

    again = monitor(daemon, "emit", "session_heartbeat", "--event-id", reply["id"], "--json", *cfg, env=env)
    assert json.loads(again.stdout).get("duplicate") is True
    assert b"belongs to no session" in again.stderr  # neither --session nor $RALPH_SESSION_ID: stored, and said
    assert b"belongs to no session" not in env_ids.stderr and b"belongs to no session" not in ok.stderr

    bad = monitor(daemon, "emit", "spec_started", "--session", "not-a-uuid", *cfg, env=env)
    assert bad.returncode == 1
    assert b"rejected: session_id 'not-a-uuid' is not a valid UUID" in bad.stderr
    assert not ClientSpool.for_socket(daemon.socket_path, tmp_path / "spool").has_pending()  # refusals are not spooled


def test_emit_spools_while_the_daemon_is_down_then_delivers_in_order_exactly_once(daemon_factory: Any,
                                                                                     tmp_path: Path) -> None:
    d = daemon_factory()
    d.write_config()
    env = agent_env(tmp_path / "spool")
    cfg = ["--config", str(d.config_path)]
    ids = []
    for n in range(3):
        result = monitor(d, "emit", "session_heartbeat", "--session", SESSION, f"n={n}", *cfg, env=env)
        assert result.returncode == 0 and b"daemon is unreachable" in result.stderr
        ids.append(result.stdout.decode().strip())
    elsewhere = tmp_path / "other.sock"   # a spool per socket: the way out names that socket
    other = monitor(d, "emit", "session_heartbeat", "--session", SESSION, "--socket", str(elsewhere), *cfg, env=env)
    assert other.returncode == 0 and f"`ralph-monitor flush --socket {elsewhere}`".encode() in other.stderr
    strict = monitor(d, "emit", "session_heartbeat", "--no-spool", *cfg, env=env)
    assert strict.returncode == 1 and b"no daemon socket" in strict.stderr
    nothing = monitor(d, "flush", *cfg, env=env)
    assert nothing.returncode == 1 and b"no daemon socket" in nothing.stderr

    d.start()
    live = monitor(d, "emit", "session_heartbeat", "--session", SESSION, "n=3", *cfg, env=env)
    assert live.returncode == 0 and not live.stderr
    ids.append(live.stdout.decode().strip())
    rows = events(d.dsn)
    assert [r["event_id"] for r in rows] == ids  # spool first, in order, then the new one
    assert [r["payload"]["data"]["n"] for r in rows] == [0, 1, 2, 3]

    # A spooled event the daemon already has (acked but the ack was lost) is stored once.
    spool = ClientSpool.for_socket(d.socket_path, tmp_path / "spool")
    spool.append([encode_event(rows[0]["payload"]), encode_event(new_event("session_heartbeat", session_id=SESSION))])
    flushed = monitor(d, "flush", *cfg, env=env)
    assert flushed.returncode == 0
    assert b"delivered 2 events (1 were already stored)" in flushed.stdout
    assert len(events(d.dsn)) == 5
    assert monitor(d, "flush", *cfg, env=env).stdout.startswith(b"nothing waiting")


def test_client_session_and_spec_context_managers(daemon: Daemon, tmp_path: Path) -> None:
    client = Client(daemon.socket_path, spool_dir=tmp_path / "spool")
    with client.session("nightly", total_specs=4, metadata={"repo": "shop"}, heartbeat_s=None) as session:
        with client.spec("CR-01") as run:
            run.set(tokens_used=1000, cost_usd=0.25, output_summary="done")
        with pytest.raises(ValueError):
            with client.spec("CR-02"):
                raise ValueError("cart is undefined")
        with client.spec("CR-03") as run:
            run.set(tokens_used=10)
            run.fail("tests still red")
        session.emit("intervention_request", spec_id="CR-04", message="Which API key?")
    sid = session.session_id
    settle(daemon.dsn, lambda: query(daemon.dsn, "SELECT 1 FROM sessions WHERE id = %s AND end_time IS NOT NULL", (sid,)))
    row = query(daemon.dsn, "SELECT * FROM sessions WHERE id = %s", (sid,))[0]
    assert (row["name"], row["total_specs"], row["execution_state"]) == ("nightly", 4, "completed")
    assert (row["specs_completed"], row["specs_failed"], row["tokens_used"]) == (1, 2, 1010)
    runs = query(daemon.dsn, "SELECT spec_id, status, error_message, duration_seconds FROM spec_runs "
                             "WHERE session_id = %s ORDER BY spec_id", (sid,))
    assert [(r["spec_id"], r["status"]) for r in runs] == [("CR-01", "completed"), ("CR-02", "failed"), ("CR-03", "failed")]
    assert runs[1]["error_message"] == "ValueError: cart is undefined"
    assert runs[2]["error_message"] == "tests still red"
    end = events(daemon.dsn, "event_type = 'session_ended'")[0]["payload"]["data"]
    assert end == {"status": "completed", "specs_completed": 1, "specs_failed": 2, "tokens_used": 1010,
                   "cost_usd": 0.25}
    failed = events(daemon.dsn, "event_type = 'spec_failed' AND spec_id = 'CR-02'")[0]["payload"]["data"]
    assert "Traceback" in failed["traceback"] and failed["duration_s"] >= 0

    with pytest.raises(KeyboardInterrupt):
        with client.session("interrupted run", heartbeat_s=0.05) as session:
            with client.spec("CR-09"):
                threading.Event().wait(0.2)
                raise KeyboardInterrupt
    sid = session.session_id
    settle(daemon.dsn, lambda: query(daemon.dsn, "SELECT 1 FROM sessions WHERE id = %s AND end_time IS NOT NULL", (sid,)))
    assert query(daemon.dsn, "SELECT execution_state FROM sessions WHERE id = %s", (sid,))[0]["execution_state"] == "interrupted"
    assert query(daemon.dsn, "SELECT status FROM spec_runs WHERE session_id = %s", (sid,))[0]["status"] == "interrupted"
    assert events(daemon.dsn, "event_type = 'session_heartbeat' AND session_id = %s", (sid,))
    with pytest.raises(EventRejected) as rejected:
        client.emit("spec_started", spec_id="x" * 300)
    assert rejected.value.code == "invalid_spec_id"
    client.close()


def test_client_is_thread_safe_reconnects_and_spools_across_a_restart(daemon: Daemon, tmp_path: Path) -> None:
    client = Client(daemon.socket_path, spool_dir=tmp_path / "spool", timeout_s=2.0)
    sent: list[str] = []
    lock = threading.Lock()

    def work(k: int) -> None:
        for i in range(40):
            reply = client.emit("session_heartbeat", session_id=SESSION, data={"k": k, "i": i})
            with lock:
                sent.append(reply["id"])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(sent)) == 320

    daemon.stop()
    down = [client.emit("session_heartbeat", session_id=SESSION, data={"down": i}) for i in range(3)]
    assert all(r["client_spooled"] for r in down)
    daemon.start()
    back = client.emit("session_heartbeat", session_id=SESSION, data={"down": 3})
    assert back["ok"] and not back.get("client_spooled")
    rows = events(daemon.dsn)
    assert len(rows) == 324 and len({r["event_id"] for r in rows}) == 324
    assert [r["payload"]["data"]["down"] for r in rows if "down" in r["payload"]["data"]] == [0, 1, 2, 3]
    client.close()

    no_spool = Client(str(tmp_path / "missing.sock"), spool=False)
    with pytest.raises(ClientError, match="no daemon socket"):
        no_spool.emit("session_heartbeat")


def test_client_finds_the_socket_from_the_environment(daemon: Daemon, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("RALPH_MONITOR_SOCKET", daemon.socket_path)
    monkeypatch.setenv("RALPH_MONITOR_CLIENT_SPOOL", str(tmp_path / "spool"))
    monkeypatch.setenv("RALPH_SESSION_ID", SESSION)
    with Client() as client:
        reply = client.emit("user_feedback", message="ok")
    assert events(daemon.dsn, "event_id = %s", (reply["id"],))[0]["session_id"] == SESSION
    monkeypatch.delenv("RALPH_MONITOR_SOCKET")
    assert Client(config=daemon.config_path).socket_path == daemon.socket_path
    assert uuid.UUID(reply["id"])
