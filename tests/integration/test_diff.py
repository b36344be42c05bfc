"""`ralph-query diff` on two scripted nights of one loop, sent through the socket: every
category (newly failing, fixed, still failing, flaky, slower, costlier, new errors), the
defaults (the latest session against the previous one of its name, not merely the previous
session), the session page's "Since the previous run" and the morning report leading with it."""

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
from tests.conftest import Daemon, LineClient, query
from tests.integration.test_overnight import BIN, ralph_query, wait_until_settled
from tests.scenario import scenario_zone
from tests.site_helpers import read_page

BEFORE = "b1000000-0000-4000-8000-000000000001"
DOCS = "d2000000-0000-4000-8000-000000000002"
AFTER = "a3000000-0000-4000-8000-000000000003"

# spec: attempts of the earlier night, attempts of the later one; each (end event, minutes, cost, error)
NIGHTS: dict[str, tuple[list[tuple[str, float, float, str | None]], list[tuple[str, float, float, str | None]]]] = {
    "CR-01": ([("spec_completed", 5, 0.10, None)], [("spec_completed", 5, 0.10, None)]),
    "CR-02": ([("spec_completed", 5, 0.10, None)], [("spec_failed", 5, 0.10, "AssertionError: totals differ")]),
    "CR-03": ([("spec_failed", 5, 0.10, "ImportError: no module cart")], [("spec_completed", 5, 0.10, None)]),
    "CR-04": ([("spec_failed", 5, 0.10, "KeyError: 'sku'")], [("spec_failed", 5, 0.10, "KeyError: 'sku'")]),
    "CR-05": ([("spec_completed", 5, 0.10, None)],
              [("spec_failed", 2, 0.05, "flaky: fixture timed out"), ("spec_completed", 3, 0.05, None)]),
    "CR-06": ([("spec_completed", 5, 0.10, None)], [("spec_completed", 20, 0.10, None)]),
    "CR-07": ([("spec_completed", 5, 0.10, None)], [("spec_completed", 5, 0.60, None)]),
    "CR-08": ([("spec_completed", 5, 0.10, None)], []),
    "CR-09": ([], [("timeout_triggered", 10, 0.10, "no progress for 10 min")]),
    "CR-10": ([("spec_failed", 5, 0.10, "E1: lint failed")], [("spec_failed", 5, 0.10, "E2: type check failed")]),
}


def night(session: str, name: str, start: datetime, which: int) -> list[dict[str, Any]]:
    """The events of one night: its specs one after the other, each attempt as scripted."""
    t = start

    def ev(kind: str, spec: str | None = None, **data: Any) -> dict[str, Any]:
        event: dict[str, Any] = {"type": kind, "session_id": session, "ts": t.isoformat(), "event_id": str(uuid.uuid4())}
        if spec:
            event["spec_id"] = spec
        if data:
            event["data"] = data
        return event

    events = [ev("session_started", name=name, total_specs=len(NIGHTS))]
    for spec, attempts in NIGHTS.items():
        for end, minutes, cost, error in attempts[which]:
            t += timedelta(seconds=1)
            events.append(ev("spec_started", spec))
            t += timedelta(minutes=minutes)
            events.append(ev(end, spec, cost_usd=cost, tokens_used=1000, **({"error": error} if error else {})))
    t += timedelta(seconds=1)
    events.append(ev("session_ended", status="completed"))
    return events


@pytest.fixture
def two_nights(daemon_factory: Any) -> Daemon:
    now = datetime.now(timezone.utc)
    # The report's window: today 06:00 to now in a zone where it is about noon; the later night ran in it.
    d = daemon_factory(reports={"timezone": scenario_zone(now), "night_start": "06:00", "night_end": "18:00"},
                       alerts={"dashboard_url": "https://build-box/ralph/"})
    d.start()
    client = LineClient(d.connect())
    for event in (night(BEFORE, "nightly", now - timedelta(hours=27), 0) + night(DOCS, "docs", now - timedelta(hours=20), 0)
                  + night(AFTER, "nightly", now - timedelta(hours=3), 1)):
        assert client.request(event)["ok"]
    client.close()
    wait_until_settled(d.dsn, lambda: query(d.dsn, "SELECT count(*) AS n FROM sessions WHERE end_time IS NOT NULL")[0]["n"] == 3)
    return d


EXPECTED = {"newly_failing": ["CR-02", "CR-09"], "fixed": ["CR-03"], "still_failing": ["CR-04", "CR-10"],
            "flaky": ["CR-05"], "slower": ["CR-06"], "costlier": ["CR-07"]}
NEW_ERRORS = [("AssertionError: totals differ", ["CR-02"]), ("flaky: fixture timed out", ["CR-05"]),
              ("no progress for 10 min", ["CR-09"]), ("E2: type check failed", ["CR-10"])]


def test_diff_finds_every_category(two_nights: Daemon) -> None:
    # Default: the latest session (AFTER) against the previous one of its name (BEFORE, not DOCS).
    data = json.loads(ralph_query(two_nights, "diff", "--json").stdout)
    assert (data["baseline"]["id"], data["session"]["id"]) == (BEFORE, AFTER)
    assert {kind: [c["spec_id"] for c in data[kind]] for kind in EXPECTED} == EXPECTED
    assert [(e["error"], e["spec_ids"]) for e in data["new_errors"]] == NEW_ERRORS
    assert data["not_run"] == ["CR-08"]
    assert [c["before"] for c in data["newly_failing"] if c["spec_id"] == "CR-09"] == [None]
    assert (data["before"]["completed"], data["before"]["failed"]) == (6, 3)
    assert (data["now"]["completed"], data["now"]["fixed_on_retry"], data["now"]["failed"], data["now"]["timed_out"]) \
        == (5, 1, 3, 1)

    text = ralph_query(two_nights, "diff").stdout
    assert "nightly (a3000000, started" in text
    assert "2 newly failing, 1 fixed, 2 still failing, 1 flaky, 1 slower, 1 costlier, 4 new errors" in text
    for title in ("Newly failing (2):", "Fixed (1):", "Still failing (2):",
                  "Flaky (failed, then passed on a retry) (1):", "Slower (1):", "Costlier (1):", "New errors (4):"):
        assert title in text
    assert "Not run (yet) this time (1): CR-08" in text

    # Either order, the earlier session is the baseline; one id: against the previous run of its name.
    for args in (("b1", "a3"), (AFTER, BEFORE), ("a3",)):
        again = json.loads(ralph_query(two_nights, "diff", *args, "--json").stdout)
        assert (again["baseline"]["id"], again["session"]["id"]) == (BEFORE, AFTER)
    stricter = json.loads(ralph_query(two_nights, "diff", "--threshold", "400", "--json").stdout)
    assert (stricter["slower"], [c["spec_id"] for c in stricter["costlier"]]) == ([], ["CR-07"])
    lonely = ralph_query(two_nights, "diff", BEFORE, check=False)
    assert lonely.returncode == 1 and "has no earlier session named 'nightly'" in lonely.stderr

    # Newer sessions with nothing to compare with (one without a name, as `ralph-monitor emit
    # --session` makes, the first run of a new loop) do not hide the latest repeated one.
    client = LineClient(two_nights.connect())
    for event in ({"type": "spec_started", "session_id": str(uuid.uuid4()), "spec_id": "CR-01"},
                  {"type": "session_started", "session_id": str(uuid.uuid4()), "data": {"name": "weekly"}}):
        assert client.request(event)["ok"]
    client.close()
    wait_until_settled(two_nights.dsn, lambda: query(two_nights.dsn, "SELECT count(*) AS n FROM sessions")[0]["n"] == 5)
    latest = json.loads(ralph_query(two_nights, "diff", "--json").stdout)
    assert (latest["baseline"]["id"], latest["session"]["id"]) == (BEFORE, AFTER)


def test_the_session_page_and_the_report_lead_with_the_changes(two_nights: Daemon, tmp_path: Path) -> None:
    render_once(load_settings(two_nights.config_path), dsn=two_nights.dsn, site_dir=tmp_path, full=True)
    html, values, rows = read_page(tmp_path, f"sessions/{AFTER}.html")
    assert values["diff-headline"] == "2 newly failing, 1 fixed, 2 still failing, 1 flaky, 1 slower, 1 costlier, 4 new errors"
    listed = {kind: re.findall(r'<a class="spec" href="#run-(CR-\d+)-\d+">', re.search(
        rf'data-testid="diff-{kind.replace("_", "-")}">(.*?)</ul>', html, re.DOTALL)[1]) for kind in EXPECTED}
    assert listed == EXPECTED
    assert all(error in values["diff-new-errors"] for error, _ in NEW_ERRORS)
    assert "CR-06 5m 00s → 20m 00s" in values["diff-slower"] and "CR-07 $0.10 → $0.60" in values["diff-costlier"]
    assert f'href="../sessions/{BEFORE}.html"' in html and 'href="#run-CR-05-2"' in html and 'id="run-CR-05-2"' in html
    # The failed first attempt of the flaky spec says what came of it.
    assert "failed</span> <span class=\"mark fixed\">fixed on retry</span>" in html
    _, values, _ = read_page(tmp_path, f"sessions/{BEFORE}.html")
    assert "diff" not in values  # nothing ran before it under its name

    report = subprocess.run([str(BIN / "ralph-monitor"), "alert", "report", "--config", str(two_nights.config_path)],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    body = report.split("\n", 1)[1].lstrip()
    assert body.startswith("**What changed since the previous run**\n- nightly: 2 newly failing, 1 fixed, "
                           "2 still failing, 1 flaky, 1 slower, 1 costlier, 4 new errors (newly failing: CR-02, CR-09; "
                           "fixed: CR-03; flaky: CR-05; slower: CR-06; costlier: CR-07)"), body
    assert f"https://build-box/ralph/sessions/{AFTER}.html#changes" in body
    assert f"https://build-box/ralph/sessions/{AFTER}.html#run-CR-05-2" in body  # fixed on retry, linked
