"""Full disks (issue 18): small tmpfs filesystems for the state dir (the spool) and for a
PostgreSQL cluster's data, filled up. The daemon stays up, clients get clear errors instead of
false acks, nothing acknowledged is lost once space returns, and everything resumes by itself.

Root only (mount); skipped with the reason elsewhere.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ralph_monitor.cluster import Cluster
from ralph_monitor.store import ensure_database
from tests.conftest import Daemon, LineClient, query, short_tempdir
from tests.integration.test_faults import own_cluster  # noqa: F401 - a fixture
from tests.loadgen import Load

pytestmark = pytest.mark.slow

REPLAY_TIMEOUT_S = 60.0


def mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {result.stderr.strip()}")


def unmount(path: Path) -> None:
    subprocess.run(["umount", "--lazy", str(path)], capture_output=True)


def grow(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def fill(path: Path) -> Path | None:
    """Take every byte left on the filesystem of `path`; the file to delete to give it back
    (None when the disk was so full that not even an empty file fitted)."""
    filler = path / "filler"
    try:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
        return None
    try:
        for size in (1 << 16, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def give_back(filler: Path | None) -> None:
    if filler is not None:
        filler.unlink()


@pytest.fixture
def tmpfs() -> Iterator[Any]:
    """Mount small tmpfs filesystems; all unmounted at the end."""
    mounted: list[Path] = []

    def make(size: str) -> Path:
        path = short_tempdir("rm-fs-")
        mount_tmpfs(path, size)
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        unmount(path)
        shutil.rmtree(path, ignore_errors=True)


def wait_stored(dsn: str, event_ids: list[str]) -> int:
    deadline = time.monotonic() + REPLAY_TIMEOUT_S
    stored = -1
    while time.monotonic() < deadline:
        try:
            stored = query(dsn, "SELECT count(*) AS n FROM events WHERE event_id = ANY(%s::uuid[])",
                           (event_ids,))[0]["n"]
        except Exception:  # the database may still be starting
            stored = -1
        if stored == len(event_ids):
            return stored
        time.sleep(0.2)
    return stored


def assert_each_stored_once(dsn: str, event_ids: list[str]) -> None:
    rows = query(dsn, "SELECT event_id::text AS id, count(*) AS n FROM events WHERE event_id = ANY(%s::uuid[]) "
                      "GROUP BY 1", (event_ids,))
    assert len(rows) == len(set(event_ids)), f"{len(set(event_ids)) - len(rows)} acknowledged events are missing"
    assert all(r["n"] == 1 for r in rows), "an event was stored twice"


def send_until_refused(daemon: Daemon, limit: int = 20_000) -> tuple[list[str], dict[str, Any]]:
    """Send events one by one until one is refused; the acked ids and the refusal."""
    client = LineClient(daemon.connect())
    acked = []
    try:
        for i in range(limit):
            event_id = str(uuid.uuid4())
            reply = client.request({"type": "session_heartbeat", "event_id": event_id,
                                    "data": {"i": i, "pad": "x" * 200}})
            if not reply["ok"]:
                return acked, reply
            assert reply.get("spooled"), reply
            acked.append(event_id)
    finally:
        client.close()
    raise AssertionError(f"{limit} events spooled and none refused: is the spool on the small disk?")


def test_spool_fills_while_postgres_is_down_then_postgres_returns_while_the_disk_is_still_full(
        daemon_factory: Any, own_cluster: tuple[Cluster, str], tmpfs: Any, tmp_path: Path) -> None:  # noqa: F811
    cluster, dsn = own_cluster
    state = tmpfs("1m")
    elsewhere = tmp_path
    daemon: Daemon = daemon_factory(dsn=dsn, paths={"state_dir": str(state), "site_dir": str(elsewhere / "site"),
                                                    "backup_dir": str(elsewhere / "backups")},
                                    limits={"max_batch_events": 50})
    daemon.start()
    cluster.stop()
    acked, refusal = send_until_refused(daemon)
    assert refusal["code"] == "not_stored", refusal
    assert "No space left on device" in refusal["error"] and "NOT stored" in refusal["error"], refusal
    filler = fill(state)  # not one byte left, not even for the replay offset
    assert daemon.process is not None and daemon.process.poll() is None
    cluster.start()
    assert wait_stored(dsn, acked) == len(acked)
    assert daemon.process.poll() is None, "the daemon died:\n" + daemon.log()[-3000:]
    # The replay empties the spool (which gives its space back): new events are stored again.
    client = LineClient(daemon.connect())
    deadline = time.monotonic() + REPLAY_TIMEOUT_S
    while (reply := client.request({"type": "session_heartbeat"})).get("spooled"):
        assert time.monotonic() < deadline, "events are still spooled"
        time.sleep(0.2)
    client.close()
    assert reply["ok"] is True, reply
    assert os.path.getsize(state / "spool" / "events.spool") == 0
    assert_each_stored_once(dsn, acked)
    log = daemon.log()
    assert "cannot save the spool's replay offset" in log
    assert "events are NOT acknowledged" in log
    assert "spool.py" not in log and "ingest.py" not in log, "the write path raised"
    give_back(filler)
    daemon.stop()


def test_crash_during_replay_with_an_unsaved_offset_stores_each_event_once(
        daemon_factory: Any, own_cluster: tuple[Cluster, str], tmpfs: Any, tmp_path: Path) -> None:  # noqa: F811
    cluster, dsn = own_cluster
    state = tmpfs("1m")
    elsewhere = tmp_path
    paths = {"state_dir": str(state), "site_dir": str(elsewhere / "site"), "backup_dir": str(elsewhere / "b")}
    daemon: Daemon = daemon_factory(dsn=dsn, paths=paths, limits={"max_batch_events": 20})
    daemon.start()
    cluster.stop()
    acked, _ = send_until_refused(daemon)
    filler = fill(state)
    cluster.start()
    time.sleep(0.3)   # part of the spool replayed, its offset not saved (no space)
    daemon.kill()
    give_back(filler)
    daemon.start()
    assert wait_stored(dsn, acked) == len(acked)
    assert_each_stored_once(dsn, acked)
    daemon.stop()


@pytest.fixture
def small_cluster(tmpfs: Any) -> Iterator[tuple[Cluster, str, Path]]:
    """A PostgreSQL cluster whose data lives on a small tmpfs."""
    root = tmpfs("96m")
    cluster = Cluster(root / "cluster")
    cluster.start()
    ensure_database(cluster.dsn("postgres"), "ralph")
    yield cluster, cluster.dsn("ralph"), root
    cluster.stop(mode="immediate")


def test_postgres_out_of_space_events_are_spooled_and_replayed_when_space_returns(
        daemon_factory: Any, small_cluster: tuple[Cluster, str, Path]) -> None:
    cluster, dsn, root = small_cluster
    daemon: Daemon = daemon_factory(dsn=dsn)
    daemon.start()
    filler = fill(root)
    load = Load(daemon.socket_path, writers=4, per_writer=3000).start()
    load.join(180)
    assert load.spooled > 0, "PostgreSQL should have run out of space"
    assert daemon.process is not None and daemon.process.poll() is None
    give_back(filler)
    if not cluster.is_running():   # a full pg_wal stops PostgreSQL (PANIC); an admin starts it again
        cluster.start()
    assert wait_stored(dsn, load.acked) == len(load.acked)
    assert_each_stored_once(dsn, load.acked)
    assert daemon.process.poll() is None
    assert "spool.py" not in daemon.log() and "ingest.py" not in daemon.log(), "the write path raised"
    daemon.stop()


def test_low_disk_is_visible_before_it_is_full(daemon_factory: Any, tmpfs: Any) -> None:
    state = tmpfs("8m")
    daemon: Daemon = daemon_factory(paths={"state_dir": str(state)}, monitor={"disk_warn_free_percent": 50})
    daemon.start()
    (state / "ballast").write_bytes(b"\0" * (6 << 20))  # 75 % used: low, not yet critical
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = query(daemon.dsn, "SELECT disks FROM monitor_hosts")
        if rows and "state" in rows[0]["disks"] and rows[0]["disks"]["state"]["free_bytes"] < (3 << 20):
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"free space not recorded: {rows}")
    assert rows[0]["disks"]["state"]["path"] == str(state)
    deadline = time.monotonic() + 15
    while "disk space low: state" not in daemon.log():
        assert time.monotonic() < deadline, daemon.log()[-2000:]
        time.sleep(0.2)
    doctor = subprocess.run([str(Path(os.sys.executable).parent / "ralph-monitor"), "doctor", "--config",
                             str(daemon.config_path)], capture_output=True, text=True, timeout=60)
    assert "disk state" in doctor.stdout
    (state / "ballast").unlink()
    daemon.stop()


def test_site_disk_full_keeps_the_published_dashboard_and_renders_again_when_space_returns(
        daemon_factory: Any, tmpfs: Any) -> None:
    site = tmpfs("4m")
    daemon: Daemon = daemon_factory(paths={"site_dir": str(site / "site")}, schedule={"render_interval_s": 5.0})
    daemon.start()
    current = site / "site" / "current"
    deadline = time.monotonic() + REPLAY_TIMEOUT_S
    while not (current / "index.html").exists():
        assert time.monotonic() < deadline, "no dashboard published"
        time.sleep(0.2)
    index = (current / "index.html").read_bytes()
    client = LineClient(daemon.connect())
    sessions = []
    deadline = time.monotonic() + REPLAY_TIMEOUT_S
    while "cannot write the dashboard" not in daemon.log():   # pruning old releases frees room: fill again
        assert time.monotonic() < deadline, "the render never met the full disk:\n" + daemon.log()[-2000:]
        filler = fill(site)
        sessions.append(str(uuid.uuid4()))
        assert client.request({"type": "session_started", "session_id": sessions[-1],
                               "data": {"name": f"while-full-{len(sessions)}"}})["ok"]
        time.sleep(0.5)
    client.close()
    assert (current / "index.html").read_bytes()   # the last good site is still served
    assert daemon.process is not None and daemon.process.poll() is None
    log = daemon.log()
    assert "No space left on device" in log and "Traceback" not in log, log[-3000:]
    assert not (current / "sessions" / f"{sessions[-1]}.html").exists()
    give_back(filler)
    deadline = time.monotonic() + REPLAY_TIMEOUT_S
    while not (current / "sessions" / f"{sessions[-1]}.html").exists():
        assert time.monotonic() < deadline, "the dashboard was not rendered again:\n" + daemon.log()[-2000:]
        time.sleep(0.3)
    assert (current / "index.html").read_bytes() != index
    assert "dashboard renders again" in daemon.log()
    daemon.stop()


def test_backup_disk_full_removes_the_partial_dump_keeps_older_backups_and_says_so(
        daemon: Daemon, tmpfs: Any) -> None:
    backups = tmpfs("16m")
    daemon.settings.setdefault("paths", {})["backup_dir"] = str(backups)
    daemon.write_config()
    run = [str(Path(os.sys.executable).parent / "ralph-monitor"), "backup", "--config", str(daemon.config_path)]
    first = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    kept = sorted(p.name for p in backups.iterdir())
    filler = fill(backups)
    second = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert second.returncode == 1
    assert "No space left on device" in second.stderr and "Traceback" not in second.stderr, second.stderr
    assert sorted(p.name for p in backups.iterdir() if p.name != "filler") == kept  # no partial dump left
    failed = query(daemon.dsn, "SELECT payload->'data'->>'error' AS error FROM events "
                               "WHERE event_type = 'backup_failed'")
    assert failed and "No space left on device" in failed[0]["error"]
    give_back(filler)
    third = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr
