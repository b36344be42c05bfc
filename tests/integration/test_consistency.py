"""One scenario, every view: `ralph-query night / session / failures / compare / status`, the
overview (cards, tables, JSON snapshot), the session, spec and month pages and the morning
report all count the same specs the same way (outcomes.py), and every failure that later
passed says so. The scenario has each outcome: passed, fixed on retry (CR-103, as issue 14 saw
it), failed after a retry, failed, timed out, and a failure being retried now; two sessions
running and one stalled."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from ralph_monitor.config import load_settings
from ralph_monitor.dashboard.render import render_once
from ralph_monitor.outcomes import Counts
from tests.conftest import Daemon, LineClient
from tests.integration.test_overnight import BIN, ralph_query, session_state, wait_until_settled
from tests.scenario import scenario_zone
from tests.site_helpers import read_json, read_page

NIGHTLY = "e1000000-0000-4000-8000-000000000001"
REFACTOR = "e2000000-0000-4000-8000-000000000002"
LIVE = "e3000000-0000-4000-8000-000000000003"
DOCS = "e4000000-0000-4000-8000-000000000004"
RUNNING = (REFACTOR, LIVE)
SESSIONS = (NIGHTLY, REFACTOR, LIVE, DOCS)

EXPECTED = Counts(passed=3, fixed_on_retry=1, failed=2, timed_out=1, running=3)
"""NIGHTLY: CR-101 passed, CR-103 fixed on retry, CR-102 and CR-105 failed, CR-104 timed out;
REFACTOR: CR-201 passed, CR-202 failed and is being retried; LIVE: CR-301 running; DOCS: CR-401
passed, CR-402 running (when it stalled)."""
DECIDED = Counts(**{**EXPECTED.__dict__, "running": 0})
"""What the night counts: the specs whose last attempt ended in it."""


def scenario(now: datetime) -> list[dict[str, Any]]:
    def ev(kind: str, minutes_ago: float, session: str, spec: str | None = None, **data: Any) -> dict[str, Any]:
        event: dict[str, Any] = {"type": kind, "session_id": session, "event_id": str(uuid.uuid4()),
                                 "ts": (now - timedelta(minutes=minutes_ago)).isoformat()}
        if spec:
            event["spec_id"] = spec
        if data:
            event["data"] = data
        return event

    def attempt(session: str, spec: str, start: float, end: float, kind: str, error: str | None = None) -> list[dict[str, Any]]:
        data: dict[str, Any] = {"cost_usd": 0.10, "tokens_used": 1000}
        if error:
            data["error"] = error
        return [ev("spec_started", start, session, spec), ev(kind, end, session, spec, **data)]

    return [
        ev("session_started", 100, NIGHTLY, name="nightly", total_specs=5),
        *attempt(NIGHTLY, "CR-101", 99, 95, "spec_completed"),
        *attempt(NIGHTLY, "CR-102", 94, 90, "spec_failed", "AssertionError: 3 != 4"),
        *attempt(NIGHTLY, "CR-102", 89, 85, "spec_failed", "AssertionError: 3 != 4"),
        *attempt(NIGHTLY, "CR-103", 84, 80, "spec_failed", "TypeError: cart is undefined"),
        *attempt(NIGHTLY, "CR-103", 79, 75, "spec_completed"),
        *attempt(NIGHTLY, "CR-104", 74, 60, "timeout_triggered", "no progress for 14 min"),
        *attempt(NIGHTLY, "CR-105", 59, 55, "spec_failed", "ImportError: no module named shop.tax"),
        ev("session_ended", 54, NIGHTLY, status="completed"),
        ev("session_started", 50, REFACTOR, name="refactor", total_specs=2),
        *attempt(REFACTOR, "CR-201", 49, 45, "spec_completed"),
        *attempt(REFACTOR, "CR-202", 44, 40, "spec_failed", "mypy: 12 errors"),
        ev("spec_started", 39, REFACTOR, "CR-202"),
        ev("session_started", 30, LIVE, name="live", total_specs=1),
        ev("spec_started", 29, LIVE, "CR-301"),
        ev("session_started", 70, DOCS, name="docs", total_specs=2),
        *attempt(DOCS, "CR-401", 69, 65, "spec_completed"),
        ev("spec_started", 64, DOCS, "CR-402"),
        ev("session_heartbeat", 40, DOCS),
    ]


def heartbeats(daemon: Daemon) -> None:
    """A fresh sign of life for the running sessions (stall_after_s is 120 s)."""
    client = LineClient(daemon.connect())
    for session in RUNNING:
        assert client.request({"type": "session_heartbeat", "session_id": session})["ok"]
    client.close()
    wait_until_settled(daemon.dsn, lambda: all(session_state(daemon.dsn, s) == "running" for s in RUNNING))


@pytest.fixture
def night(daemon_factory: Any) -> Daemon:
    now = datetime.now(timezone.utc)
    d = daemon_factory(aggregates={"stall_after_s": 120.0},
                       reports={"timezone": scenario_zone(now), "night_start": "08:00", "night_end": "16:00"})
    d.start()
    client = LineClient(d.connect())
    for event in scenario(now):
        assert client.request(event)["ok"]
    client.close()
    wait_until_settled(d.dsn, lambda: session_state(d.dsn, DOCS) == "stalled")
    heartbeats(d)
    return d


def cli_json(daemon: Daemon, *args: str) -> Any:
    return json.loads(ralph_query(daemon, *args, "--json").stdout)


def section(text: str, title: str) -> int:
    """The count in a "Title (N):" heading of ralph-query's text, 0 when the section is absent."""
    match = re.search(rf"^{re.escape(title)} \((\d+)\):$", text, re.MULTILINE)
    return int(match[1]) if match else 0


def test_every_view_counts_the_same(night: Daemon, tmp_path: Path) -> None:
    # The CLI: night, each session, failures, compare, status.
    n = cli_json(night, "night")
    assert Counts.of(n["outcomes"]) == DECIDED
    assert (n["outcomes"]["still_failing"], n["outcomes"]["decided"]) == (3, 7)
    assert sorted(r["spec_id"] for r in n["still_failing"]) == ["CR-102", "CR-104", "CR-105"]
    assert [(r["spec_id"], r["attempts"], r["error"]) for r in n["fixed_on_retry"]] == [
        ("CR-103", 2, "TypeError: cart is undefined")]
    assert [(r["spec_id"], r["error"]) for r in n["retrying"]] == [("CR-202", "mypy: 12 errors")]
    text = ralph_query(night, "night").stdout
    assert f"7 specs decided: {EXPECTED.sentence()} (57% success)" in text
    assert (section(text, "Still failing"), section(text, "Fixed on retry"), section(text, "Failed, being retried now")) \
        == (3, 1, 1)
    table = {line.split()[0]: line.split() for line in text.splitlines() if line[:8] in {s[:8] for s in SESSIONS}}
    per_session = Counts()
    for session in SESSIONS:
        detail = cli_json(night, "session", session)
        s = detail["session"]
        finals = [r["outcome"] for r in detail["spec_runs"]]
        counts = Counts.tally(finals)
        per_session += counts
        assert (s["specs_completed"], s["specs_fixed_on_retry"], s["specs_failed"], s["specs_timed_out"]) == (
            counts.completed, counts.fixed_on_retry, counts.still_failing, counts.timed_out)
        assert f": {counts.sentence()};" in ralph_query(night, "session", session).stdout.splitlines()[2]
        row = table[session[:8]]
        assert (row[-6], row[-5]) == (str(counts.failed), str(counts.timed_out))  # FAILED, TIMED OUT columns
    assert per_session == EXPECTED
    failures = [json.loads(line) for line in ralph_query(night, "failures", "--json").stdout.splitlines()]
    assert sum(Counts.of(f["counts"]).still_failing for f in failures) == EXPECTED.still_failing
    assert {f["spec_id"]: Counts.of(f["counts"]).fixed_on_retry for f in failures}["CR-103"] == 1
    assert {f["spec_id"] for f in failures} == {"CR-102", "CR-103", "CR-104", "CR-105", "CR-202"}
    week = cli_json(night, "compare")["current"]
    assert Counts.of(week) == DECIDED
    assert "Running now (3):" in ralph_query(night, "status").stdout

    # The dashboard, and its snapshot.
    heartbeats(night)
    render_once(load_settings(night.config_path), dsn=night.dsn, site_dir=tmp_path, full=True)
    html, values, rows = read_page(tmp_path, "index.html")
    assert values["active_count"] == str(rows["active"]) == "3" and values["stalled"] == "1"
    assert (values["night_completed"], values["night_fixed"], values["night_failed"], values["night_timed_out"]) == (
        str(EXPECTED.completed), str(EXPECTED.fixed_on_retry), str(EXPECTED.failed), str(EXPECTED.timed_out))
    assert values["night_success"] == "57%" and EXPECTED.sentence() in values["night"]
    assert (rows["night-still-failing"], rows["night-fixed"], rows["night-retrying"]) == (3, 1, 1)
    assert "CR-103" in values["night-fixed"] and "TypeError: cart is undefined" in values["night-fixed"]
    assert values["week_success"] == "57%"
    recent = re.search(r'data-testid="recent-failures">(.*?)</table>', html, re.DOTALL)[1]
    cr103 = next(row for row in recent.split("<tr") if "CR-103" in row)
    assert "fixed on retry" in cr103 and 'class="fixedrow"' in cr103
    top = re.search(r'data-testid="top-failing">(.*?)</table>', html, re.DOTALL)[1]
    cr103 = next(row for row in top.split("<tr") if ">CR-103<" in row)
    assert re.findall(r'class="n">([^<]*)<', cr103) == ["1/2", "0", "1"]  # failed runs, still failing, fixed
    snap = read_json(tmp_path, "api/status.json")
    assert Counts.of(snap["night"]["outcomes"]) == DECIDED
    assert [r["spec_id"] for r in snap["night"]["fixed_on_retry"]] == ["CR-103"]
    assert (snap["live"]["active"], snap["live"]["stalled"], snap["live"]["night_failed"]) == ("3", "1", "2")

    html, values, rows = read_page(tmp_path, f"sessions/{NIGHTLY}.html")
    assert (values["specs_completed"], values["specs_fixed"], values["specs_failed"], values["specs_timed_out"]) == (
        "2 of 5", "1", "2", "1")
    attempt1 = re.search(r'<tr id="run-CR-103-1"[^>]*>(.*?)</tr>', html, re.DOTALL)
    assert attempt1 and "fixed on retry" in attempt1[1] and "TypeError: cart is undefined" in attempt1[1]
    assert "retried" in re.search(r'<tr id="run-CR-102-1"[^>]*>(.*?)</tr>', html, re.DOTALL)[1]
    _, values, _ = read_page(tmp_path, "specs/CR-103.html")
    assert values["spec_counts"] == Counts(fixed_on_retry=1).sentence()
    html = "".join(read_page(tmp_path, f"sessions/{p.name}")[0]
                   for p in (tmp_path / "current" / "sessions").glob("20*.html"))  # month pages
    for session in SESSIONS:
        row = re.search(rf'<tr id="session-{session}">(.*?)</tr>', html, re.DOTALL)[1]
        detail = cli_json(night, "session", session)["session"]
        assert re.findall(r"<td[^>]*>(.*?)</td>", row)[6:8] == [  # the Failed and Timed out columns
            str(detail["specs_failed"] - detail["specs_timed_out"]), str(detail["specs_timed_out"])]

    # The morning report.
    report = subprocess.run([str(BIN / "ralph-monitor"), "alert", "report", "--config", str(night.config_path)],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    assert report.startswith("Night of ") and f": {EXPECTED.completed} completed, {EXPECTED.failed} failed, " \
                                                  f"{EXPECTED.timed_out} timed out" in report.splitlines()[0]
    assert f"7 specs decided in 10 spec runs ({EXPECTED.sentence()})" in report
    assert "**Still failing (3)**" in report and "**Fixed on retry (1)**" in report
    assert "- CR-103 (fixed on retry after 2 attempts, nightly): TypeError: cart is undefined" in report
