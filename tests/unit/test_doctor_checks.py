"""doctor's checks that need no database: the systemd sandbox and the backup age."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ralph_monitor import doctor
from ralph_monitor.config import Settings


@pytest.fixture
def packaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    unit = tmp_path / "ralph-monitor.service"
    unit.write_text("[Service]\n")
    monkeypatch.setattr(doctor, "SERVICE_UNIT", unit)
    dropin = tmp_path / "50-unix-socket-only.conf"
    monkeypatch.setattr(doctor, "UNIX_ONLY_DROPIN", dropin)
    return dropin


def test_sandbox_is_not_checked_without_the_packaged_unit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(doctor, "SERVICE_UNIT", tmp_path / "absent.service")
    assert doctor.check_sandbox(Settings(paths_backup_dir="/srv/backups")) is None


def test_sandbox_paths_outside_the_state_directory_fail(packaged: Path) -> None:
    assert doctor.check_sandbox(Settings()).status == "OK"
    check = doctor.check_sandbox(Settings(paths_backup_dir="/srv/backups", paths_site_dir="/var/www/ralph"))
    assert check.status == "FAIL"
    assert "ReadWritePaths=/var/www/ralph /srv/backups" in check.fix


def test_sandbox_unix_only_dropin_against_a_tcp_dsn(packaged: Path) -> None:
    packaged.write_text("[Service]\nRestrictAddressFamilies=AF_UNIX\n")
    assert doctor.check_sandbox(Settings(database_dsn="host=/var/run/postgresql dbname=r")).status == "OK"
    for dsn in ("host=db.example dbname=r", "postgresql://w@10.0.0.5/r", "hostaddr=10.0.0.5 dbname=r"):
        check = doctor.check_sandbox(Settings(database_dsn=dsn))
        assert check.status == "FAIL" and f"rm {packaged}" in check.fix, dsn


def test_backup_age(tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    settings = Settings(paths_state_dir=str(tmp_path), paths_backup_dir=str(backups))
    now = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
    assert doctor.check_backups(settings, None, now)[0].status == "WARN"  # none yet
    for age_h, status in ((2, "OK"), (30, "WARN"), (60, "FAIL")):
        for old in backups.iterdir():
            old.unlink()
        (backups / f"ralph-monitor-{now - timedelta(hours=age_h):%Y%m%dT%H%M%S}Z.dump").write_bytes(b"x")
        assert doctor.check_backups(settings, None, now)[0].status == status, age_h
    assert doctor.check_backups(Settings(schedule_backup_time=""), None, now)[0].status == "WARN"


def test_the_fix_names_the_daemons_user_only_where_it_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout's scripts/run has no ralph-monitor system user: `sudo -u ralph-monitor` would fail."""
    def missing(name: str) -> object:
        raise KeyError(name)

    monkeypatch.setattr(doctor.pwd, "getpwnam", missing)
    assert "sudo" not in doctor._as_daemon() and "ralph-monitor run" in doctor._as_daemon()
    monkeypatch.setattr(doctor.pwd, "getpwnam", lambda name: object())
    assert "sudo -u ralph-monitor ralph-monitor doctor" in doctor._as_daemon()
