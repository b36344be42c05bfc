"""`[database] read_dsn`: a real streaming standby made by pg_basebackup. The dashboard and
`ralph-query` read there (a paused replay hides new events from them), writes never do, the
health panel and `status` show the replica's lag, and a replica that is away makes reads fall
back to the primary with a warning, logged and shown."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ralph_monitor.cluster import Cluster
from ralph_monitor.config import load_settings
from ralph_monitor.dashboard.render import render_once
from ralph_monitor.store import ensure_database
from tests.conftest import Daemon, LineClient, query, short_tempdir
from tests.ops import execute

BIN = Path(sys.executable).parent


@pytest.fixture
def primary_and_standby() -> Iterator[tuple[Cluster, Cluster, str]]:
    """A primary of this test's own (it is written to) and, once the test asks, its standby."""
    root = short_tempdir("rm-repl-")
    primary = Cluster(root / "primary")
    primary.start()
    ensure_database(primary.dsn("postgres"), "ralph")
    standby = Cluster(root / "standby")
    yield primary, standby, primary.dsn("ralph")
    standby.stop(mode="immediate")
    primary.stop(mode="immediate")
    shutil.rmtree(root, ignore_errors=True)


def make_standby(primary: Cluster, standby: Cluster) -> None:
    """pg_basebackup of the running primary, started as a streaming standby on its own socket."""
    standby._prepare_dirs()
    made = standby._run("pg_basebackup", "--pgdata", str(standby.data_dir), "--write-recovery-conf",
                        "--wal-method=stream", "--checkpoint=fast", "--host", str(primary.socket_dir),
                        "--username", "postgres")
    assert made.returncode == 0, made.stderr
    with open(standby.data_dir / "postgresql.conf", "a", encoding="utf-8") as f:
        f.write(f"\nunix_socket_directories = '{standby.socket_dir}'\nhot_standby_feedback = on\n")
    standby.start()


def ralph_query(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ralph-query"), *args, "--config", str(daemon.config_path)],
                          capture_output=True, text=True, check=True, timeout=60)


def status_json(daemon: Daemon) -> dict[str, Any]:
    return json.loads(ralph_query(daemon, "status", "--json").stdout)


def feedback_events(daemon: Daemon, marker: str) -> list[dict[str, Any]]:
    out = ralph_query(daemon, "events", "--since", "1h", "--type", "user_feedback", "--json").stdout
    return [e for e in map(json.loads, out.splitlines()) if marker in json.dumps(e)]


def wait_until(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.2)


def render_overview(daemon: Daemon, site: Path) -> str:
    render_once(load_settings(daemon.config_path), dsn=daemon.dsn, site_dir=site, full=True)
    return (site / "current" / "index.html").read_text()


def test_reads_go_to_the_replica_and_fall_back_to_the_primary(daemon_factory, primary_and_standby,
                                                              tmp_path: Path) -> None:
    primary, standby, dsn = primary_and_standby
    standby_dsn = standby.dsn("ralph")
    d: Daemon = daemon_factory(dsn=dsn, database={"read_dsn": standby_dsn})
    d.start()  # migrates the primary
    session = str(uuid.uuid4())
    client = LineClient(d.connect())
    assert client.request({"type": "session_started", "session_id": session,
                           "data": {"name": "replica run", "total_specs": 1}})["ok"]
    make_standby(primary, standby)
    wait_until(lambda: query(standby_dsn, "SELECT count(*) AS n FROM sessions")[0]["n"] == 1,
               "the standby has replayed the session")

    status = status_json(d)
    reads = status["reads"]
    assert reads["in_recovery"] is True and reads["fallback"] is None
    assert str(standby.socket_dir) in reads["database"]
    assert reads["lag_s"] is not None and reads["lag_s"] < 30

    # Replay paused: what the primary stores now is not seen by ralph-query nor the dashboard.
    execute(standby.dsn("postgres"), "SELECT pg_wal_replay_pause()")
    marker = f"replica-probe-{uuid.uuid4()}"
    assert client.request({"type": "user_feedback", "session_id": session, "data": {"text": marker}})["ok"]
    wait_until(lambda: query(dsn, "SELECT count(*) AS n FROM events WHERE payload::text LIKE %s",
                             (f"%{marker}%",))[0]["n"] == 1, "the primary stores the probe (writes go there)")
    time.sleep(1.5)
    assert feedback_events(d, marker) == [], "ralph-query read the primary, not the replica"
    lagging = status_json(d)["reads"]
    assert lagging["lag_s"] >= 1.0, lagging
    text = ralph_query(d, "status").stdout
    assert "reads from the replica" in text and "lag" in text
    overview = render_overview(d, tmp_path / "site1")
    assert 'data-testid="replica_lag"' in overview and marker not in overview
    execute(standby.dsn("postgres"), "SELECT pg_wal_replay_resume()")
    wait_until(lambda: feedback_events(d, marker) != [], "the resumed replica shows the probe")

    # The replica away: reads fall back to the primary, with a warning logged and shown.
    standby.stop(mode="immediate")
    marker2 = f"replica-gone-{uuid.uuid4()}"
    assert client.request({"type": "user_feedback", "session_id": session, "data": {"text": marker2}})["ok"]
    done = ralph_query(d, "status")
    assert "cannot be reached" in done.stdout and "reading from the primary" in done.stdout
    assert "read replica" in done.stderr  # the logged warning
    assert status_json(d)["reads"]["fallback"]
    wait_until(lambda: feedback_events(d, marker2) != [], "the primary answers the reads")
    overview = render_overview(d, tmp_path / "site2")
    assert 'data-testid="reads"' in overview and "cannot be reached" in overview
    client.close()
    assert d.stop() == 0
