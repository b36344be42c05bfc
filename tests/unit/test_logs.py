"""Logs: journald priority prefixes under systemd, and no secrets in any line."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from ralph_monitor.logs import redact, setup_logging


@pytest.mark.parametrize("text, shown", [
    ("connection failed: host=/run dbname=x user=w password=s3cret sslmode=off",
     "connection failed: host=/run dbname=x user=w password=*** sslmode=off"),
    ("dsn 'password = \"x\" host=h' ", None),
    ("password='se cret' host=h", "password=*** host=h"),
    ("postgresql://writer:hunter2@db.example:5432/ralph", "postgresql://writer:***@db.example:5432/ralph"),
    ("env PGPASSWORD=abc pg_dump", "env PGPASSWORD=*** pg_dump"),
    ("no secret here: 3 events", "no secret here: 3 events"),
])
def test_redact(text: str, shown: str | None) -> None:
    out = redact(text)
    assert "s3cret" not in out and "hunter2" not in out and "se cret" not in out and "abc" not in out
    if shown is not None:
        assert out == shown


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_journald_lines_carry_priorities_and_no_secrets(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    setup_logging("info")
    log = logging.getLogger("ralph_monitor.test")
    log.error("backup failed: could not connect: password=topsecret\nsecond line")
    log.warning("spooling")
    log.info("started")
    log.debug("hidden")
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["<3>ralph_monitor.test: backup failed: could not connect: password=***",
                     "<3>second line", "<4>ralph_monitor.test: spooling", "<6>ralph_monitor.test: started"]
