"""The static dashboard rendered from a real database: numbers equal the query layer's on the
scripted overnight run, hostile agent strings are escaped, publishing is atomic, rendering is
incremental, and a failing render keeps the last good site without disturbing ingestion."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import threading
import time
import uuid
from datetime import datetime, time as dtime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest

from ralph_monitor import queries, retention
from ralph_monitor.config import load_settings, report_zone
from ralph_monitor.dashboard import charts, worker
from ralph_monitor.dashboard.publish import KEEP_RELEASES, RenderResult
from ralph_monitor.dashboard.render import SiteRenderer, render_once
from ralph_monitor.dashboard.views import SCHEMA_VERSION, page_name
from ralph_monitor.store import open_read_store
from ralph_monitor.textfmt import money, percent
from tests.conftest import Daemon, LineClient, query
from tests.integration.test_overnight import BIN, overnight, wait_until_settled  # noqa: F401 (fixture)
from tests.ops import execute
from tests.scenario import A, B, C, overnight_events, scenario_zone
from tests.site_helpers import SCRIPT_TAG, keep_live_run_alive, read_json, read_page, site_files


def render(daemon: Daemon, site_dir: Path, **kwargs: Any) -> RenderResult:
    return render_once(load_settings(daemon.config_path), dsn=daemon.dsn, site_dir=site_dir, **kwargs)


def incremental_renderer(daemon: Daemon, site_dir: Path) -> SiteRenderer:
    """The daemon's renderer on `site_dir`, its incremental renders reading changes from the
    previous render on (no overlap: a test's changes come one render apart)."""
    renderer = SiteRenderer(load_settings(daemon.config_path), dsn=daemon.dsn, site_dir=site_dir)
    renderer.overlap = timedelta(0)
    return renderer


def send(daemon: Daemon, events: list[dict[str, Any]]) -> None:
    client = LineClient(daemon.connect())
    for event in events:
        reply = client.request(event)
        assert reply["ok"], reply
    client.close()


def test_numbers_on_the_page_equal_the_query_layer(overnight: Daemon, tmp_path: Path) -> None:
    keep_live_run_alive(overnight)
    now = datetime.now(timezone.utc)
    result = render(overnight, tmp_path, full=True, now=now)
    assert result.full and result.sessions == 3 and result.specs == 7

    settings = load_settings(overnight.config_path)
    zone = report_zone(settings.reports_timezone)
    with open_read_store(settings, dsn=overnight.dsn) as store:
        status = queries.status(store, now)
        night = queries.night_summary(store, queries.night_window(
            now, zone, start=dtime.fromisoformat(settings.reports_night_start),
            end=dtime.fromisoformat(settings.reports_night_end)))
        compare = queries.compare_weeks(store, now, zone)
        spend = queries.spend(store, now, zone, days=30)
        top = queries.top_failing_specs(store, now - timedelta(days=7))
        detail_a = queries.session_detail(store, uuid.UUID(A))
        history = queries.spec_history(store, "CR-02")
        events = queries.recent_events(store, limit=100)

    html, values, rows = read_page(tmp_path, "index.html")
    running = [s for s in status.active if s.execution_state == "running"]
    stalled = [s for s in status.active if s.execution_state == "stalled"]
    assert len(running) == 1
    assert values["active_count"] == str(len(status.active)) == str(rows["active"]) == "2"  # the table's rows
    assert values["stalled"] == str(len(stalled)) == "1"
    assert values["waiting"] == str(len(status.pending_interventions)) == "1"
    assert values["spend_today"] == money(spend.today.cost_usd) == "$0.31"
    assert values["spend_month"] == money(spend.month.cost_usd)
    assert values["spend_week"] == money(spend.week.cost_usd)
    c = night.outcomes.counts
    assert values["night_success"] == percent(c.success_rate) == "80%"
    assert values["night_completed"] == str(c.completed) == "4"
    assert values["night_fixed"] == str(c.fixed_on_retry) == "1"
    assert values["night_failed"] == str(c.failed) == "0"
    assert values["night_timed_out"] == str(c.timed_out) == "1"
    assert values["night_cost"] == money(night.outcomes.cost_usd)
    assert values["week_success"] == percent(compare.current.counts.success_rate) == "80%"
    assert compare.previous.counts.success_rate is None and "no runs last week" in values["week_compare"]
    assert values["rejects_24h"] == str(status.rejects_last_24h)
    assert values["spool_backlog"] == "0"
    assert rows["pending"] == 1 and "Which branch should I rebase on?" in values["pending"]
    assert "Need the staging API key" not in html  # answered
    assert rows["night-still-failing"] == len(night.still_failing) == 1
    assert rows["night-fixed"] == len(night.fixed_on_retry) == 1
    assert "TypeError: cart is undefined" in values["night-fixed"] and "no progress for 19 min" in values["night-still-failing"]
    assert rows["top-failing"] == len(top) == 2
    assert rows["recent-sessions"] == 3
    assert "Needs you" in values["verdict"] and "1 session stalled" in values["verdict"]

    snap = read_json(tmp_path, "api/status.json")
    assert snap["version"] == SCHEMA_VERSION and snap["kind"] == "status"
    assert datetime.fromisoformat(snap["generated_at"]) == now.replace(microsecond=now.microsecond)
    assert sorted(s["name"] for s in snap["active"]) == sorted(s.name for s in status.active)
    assert [i["message"] for i in snap["pending_interventions"]] == ["Which branch should I rebase on?"]
    assert Decimal(str(snap["spend"]["today"]["cost_usd"])) == spend.today.cost_usd
    assert snap["spend"]["today"]["tokens_used"] == spend.today.tokens_used == 3100
    assert snap["night"]["outcomes"]["completed"] == night.outcomes.counts.completed
    assert snap["week"]["this_week"]["outcomes"]["success_rate"] == compare.current.counts.success_rate
    assert {(f["spec_id"], f["failures"], f["runs"]) for f in snap["top_failing_specs"]} == {
        (f.spec_id, f.failures, f.runs) for f in top}
    assert snap["live"]["active"] == values["active_count"]
    assert sum(b["count"] for b in snap["events_per_5min"]) == len(events)  # 25 sent, the stall(s), a heartbeat

    html, values, rows = read_page(tmp_path, f"sessions/{A}.html")
    s = detail_a.session
    assert values["specs_completed"] == f"{s.specs_completed} of {s.total_specs}" == "3 of 4"
    assert (values["specs_fixed"], values["specs_failed"], values["specs_timed_out"]) == (
        str(s.counts.fixed_on_retry), str(s.counts.failed), str(s.counts.timed_out)) == ("1", "0", "1")
    assert values["cost_usd"] == money(s.cost_usd) == "$0.27"
    assert values["tokens_used"] == f"{s.tokens_used:,}" == "2,700"
    assert values["event_count"] == str(s.event_count)
    assert rows["spec-runs"] == len(detail_a.spec_runs) == 5
    assert rows["timeline"] == len(detail_a.timeline) == s.event_count  # a small session lists every event
    assert rows["interventions"] == 1
    assert "TypeError: cart is undefined" in html and "no progress for 19 min" in html
    assert 'aria-labelledby' in html and "Timeline of spec runs" in html
    data = read_json(tmp_path, f"api/sessions/{A}.json")
    assert data["kind"] == "session" and data["timeline_complete"] is True
    assert [(r["spec_id"], r["attempt"], r["status"], r["tokens_used"]) for r in data["spec_runs"]] == [
        (r.spec_id, r.attempt, r.status, r.tokens_used) for r in detail_a.spec_runs]
    assert len(data["timeline"]) == s.event_count

    _, values, rows = read_page(tmp_path, f"sessions/{B}.html")
    assert "Waiting for a human" in html or rows["interventions"] == 1
    _, values, rows = read_page(tmp_path, "specs/CR-02.html")
    assert values["total_runs"] == str(len(history)) == "2"
    assert values["total_failures"] == "1"
    assert rows["spec-history"] == 2
    spec_json = read_json(tmp_path, "api/specs/CR-02.json")
    assert [(r["attempt"], r["status"]) for r in spec_json["runs"]] == [(r.attempt, r.status) for r in history]

    _, values, rows = read_page(tmp_path, "events/index.html")
    assert rows["events"] == len(events) >= 27
    _, _, rows = read_page(tmp_path, "events/spec_failed.html")
    assert rows["events"] == 2
    assert len(read_json(tmp_path, "api/events.json")["events"]) == len(events)


def test_every_link_points_to_a_rendered_file(overnight: Daemon, tmp_path: Path) -> None:
    render(overnight, tmp_path, full=True)
    assert_every_link_resolves(tmp_path)


HOSTILE = [
    "<script>alert('x')</script>",
    '"><img src=x onerror=alert(1)>',
    "'; DROP TABLE sessions; --",
    "</textarea></title><svg onload=alert(1)>",
]


def test_hostile_agent_strings_are_escaped_and_truncated(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory()
    d.start()
    now = datetime.now(timezone.utc)
    session = str(uuid.uuid4())
    long_error = "E" * 60_000 + "<script>tail</script>"

    def ev(kind: str, minutes_ago: float, spec: str | None = None, **data: Any) -> dict[str, Any]:
        event: dict[str, Any] = {"type": kind, "session_id": session,
                                 "ts": (now - timedelta(minutes=minutes_ago)).isoformat()}
        if spec is not None:
            event["spec_id"] = spec
        if data:
            event["data"] = data
        return event

    specs = [*HOSTILE, "../../etc/passwd", "CR-01/../../x", ".hidden", "ünïcødé spec", "x" * 200]
    events = [ev("session_started", 30, name=HOSTILE[0], total_specs=len(specs),
                 metadata={HOSTILE[1]: HOSTILE[3], "repo": HOSTILE[0]})]
    for i, spec in enumerate(specs):
        events.append(ev("spec_started", 29 - i, spec, title=HOSTILE[1]))
        events.append(ev("spec_failed", 28.5 - i, spec, error=HOSTILE[i % len(HOSTILE)] + long_error,
                         tokens_used=10, cost_usd=0.01))
    events.append(ev("intervention_request", 5, specs[0], message=HOSTILE[1] + "x" * 5000))
    events.append(ev("javascript:alert", 4, HOSTILE[2], tool_input={"command": HOSTILE[0] * 1000}))
    events.append(ev("cc.PreToolUse", 3, HOSTILE[0], tool_name=HOSTILE[1]))
    send(d, events)
    client = LineClient(d.connect())
    assert client.request(HOSTILE[0] + HOSTILE[1])["code"] == "invalid_json"  # shown among rejected lines
    client.close()
    wait_until_settled(d.dsn)
    result = render(d, tmp_path, full=True)
    assert result.specs == len(specs)

    root = (tmp_path / "current").resolve()
    html_files = [p for p in site_files(tmp_path) if p.suffix == ".html"]
    names = {p.relative_to(root).as_posix() for p in site_files(tmp_path)}
    assert all(root in p.parents for p in site_files(tmp_path))
    assert "specs/CR-01/../../x.html" not in names and not any(".." in n for n in names)
    for spec in specs:
        assert f"specs/{page_name(spec)}.html" in names
    assert f"events/{page_name('javascript:alert')}.html" in names
    assert 'href="javascript:' not in (root / "events" / "index.html").read_text()
    for path in html_files:
        text = path.read_text(encoding="utf-8")
        # Only the page's own script tag; every agent string shows up escaped.
        scripts = SCRIPT_TAG.findall(text)
        assert len(scripts) == 1 and "static/app." in scripts[0], path  # only the page's own script file
        assert "<img" not in text and "<svg onload" not in text, path
        assert "</textarea></title>" not in text
        assert "E" * 4001 not in text, f"{path.name}: a 60 kB error must be truncated"
        assert len(text) < 400_000, path
        assert 'style="' not in text, path  # the CSP forbids inline styles
    session_html = (root / "sessions" / f"{session}.html").read_text()
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in session_html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in session_html
    assert "60,021 characters in all" in session_html or "10,000 characters in all" in session_html
    for path in site_files(tmp_path):
        if path.suffix == ".json":
            json.loads(path.read_text())
    snap = json.loads((root / "api" / "sessions" / f"{session}.json").read_text())
    assert snap["session"]["name"] == HOSTILE[0]  # JSON keeps the data; served as application/json


def test_publishing_is_atomic_under_50_regenerations(overnight: Daemon, tmp_path: Path) -> None:
    settings = load_settings(overnight.config_path)
    renderer = SiteRenderer(settings, dsn=overnight.dsn, site_dir=tmp_path)
    renderer.render(full=True)
    current = tmp_path / "current"
    watched = ["index.html", "api/status.json", f"sessions/{A}.html", f"api/sessions/{C}.json",
               "specs/CR-02.html", "events/index.html"]
    problems: list[str] = []
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            for rel in watched:
                try:
                    data = (current / rel).read_bytes()
                except OSError as exc:
                    problems.append(f"{rel}: {exc}")
                    continue
                reads += 1
                if rel.endswith(".json"):
                    try:
                        json.loads(data)
                    except ValueError:
                        problems.append(f"{rel}: partial JSON ({len(data)} bytes)")
                elif not data.rstrip().endswith(b"</html>"):
                    problems.append(f"{rel}: partial HTML ({len(data)} bytes)")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    client = LineClient(overnight.connect())
    try:
        for i in range(50):
            # New events every round, so pages really change between regenerations.
            assert client.request({"type": "session_heartbeat", "session_id": C, "data": {"i": i}})["ok"]
            renderer.render(full=i % 5 == 0)
    finally:
        stop.set()
        for t in threads:
            t.join()
        client.close()
        renderer.close()
    assert not problems, problems[:10]
    assert reads > 200
    releases = sorted(p.name for p in (tmp_path / "releases").iterdir())
    assert len(releases) == KEEP_RELEASES and os.readlink(current) == f"releases/{releases[-1]}"


def test_files_are_world_readable_whatever_the_umask(overnight: Daemon, tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        render(overnight, tmp_path, full=True)
        render(overnight, tmp_path)  # incremental writes too
    finally:
        os.umask(old)
    root = (tmp_path / "current").resolve()
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: {oct(mode)}"
    assert stat.S_IMODE((tmp_path / "releases").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "render-state.json").stat().st_mode) == 0o644


@pytest.fixture
def calm_overnight(daemon_factory: Any) -> Daemon:
    """The scripted run on a daemon that marks nothing stalled while a test runs."""
    now = datetime.now(timezone.utc)
    d = daemon_factory(aggregates={"stall_after_s": 86400.0}, reports={"timezone": scenario_zone(now)})
    d.start()
    send(d, overnight_events(now))
    wait_until_settled(d.dsn)
    return d


def test_incremental_render_touches_only_what_changed(calm_overnight: Daemon, tmp_path: Path) -> None:
    overnight = calm_overnight
    renderer = incremental_renderer(overnight, tmp_path)
    try:
        first = renderer.render(full=True)
        assert first.full and first.sessions == 3
        root = (tmp_path / "current").resolve()
        page_a = root / "sessions" / f"{A}.html"
        spec_a = root / "specs" / "CR-02.html"
        before = (page_a.stat().st_mtime_ns, spec_a.stat().st_mtime_ns)

        quiet = renderer.render()
        assert not quiet.full and quiet.sessions == 0 and quiet.specs == 0
        assert quiet.written <= 4  # index.html, api/status.json, events/index.html, api/events.json

        def mtime(relpath: str) -> int:
            return (root / relpath).stat().st_mtime_ns

        types_before = {t: mtime(f"events/{t}.html") for t in ("session_heartbeat", "spec_completed", "spec_failed")}
        send(overnight, [{"type": "session_heartbeat", "session_id": C}])
        wait_until_settled(overnight.dsn)
        beat = renderer.render()
        assert (beat.sessions, beat.specs) == (1, 0)  # C's page; no spec run changed
        assert (tmp_path / "current").resolve() == root  # same release, files replaced in place
        # The page of the type with a new event, not the others.
        assert [t for t, m in types_before.items() if mtime(f"events/{t}.html") != m] == ["session_heartbeat"]

        send(overnight, [{"type": "spec_completed", "session_id": C, "spec_id": "CR-20",
                          "data": {"tokens_used": 5, "cost_usd": 0.5}}])
        wait_until_settled(overnight.dsn)
        done = renderer.render()
        assert (done.sessions, done.specs) == (1, 1)
        assert "completed" in (root / "specs" / "CR-20.html").read_text()
        assert "CR-20" in (root / "events" / "spec_completed.html").read_text()
        assert mtime("events/spec_failed.html") == types_before["spec_failed"]
        assert (page_a.stat().st_mtime_ns, spec_a.stat().st_mtime_ns) == before
        _, values, _ = read_page(tmp_path, "index.html")
        assert values["spend_today"] == "$0.81"
        state = json.loads((tmp_path / "render-state.json").read_text())
        assert state["release"] == root.name and state["last_error"] is None
    finally:
        renderer.close()

    # A new process (ralph-monitor render) continues incrementally from render-state.json.
    out = subprocess.run([str(BIN / "ralph-monitor"), "render", "--config", str(overnight.config_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "updated the dashboard" in out.stdout


def test_a_night_of_many_failures_lists_the_first_50_on_the_overview_and_every_one_in_the_api(
        daemon_factory: Any, tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    d = daemon_factory(aggregates={"stall_after_s": 86400.0}, reports={"timezone": scenario_zone(now)})
    d.start()
    session = str(uuid.uuid4())
    night = now - timedelta(hours=5)  # ~07:00 local: last night (18:00-09:00)
    events = [{"type": "session_started", "session_id": session, "ts": night.isoformat(), "data": {"name": "big night"}}]
    for n in range(53):
        at = (night + timedelta(seconds=10 + 2 * n)).isoformat()
        events += [{"type": "spec_started", "session_id": session, "spec_id": f"F-{n:02}", "ts": at},
                   {"type": "spec_failed", "session_id": session, "spec_id": f"F-{n:02}", "ts": at,
                    "data": {"error": f"failure {n}"}}]
    send(d, events + [{"type": "session_ended", "session_id": session,
                       "ts": (night + timedelta(minutes=5)).isoformat(), "data": {"status": "failed"}}])
    wait_until_settled(d.dsn)
    render(d, tmp_path, full=True)
    html, values, rows = read_page(tmp_path, "index.html")
    assert "Still failing (53)" in html
    assert rows["night-still-failing"] == 50
    assert values["night-still-failing-more"].startswith("The first 50 of 53 by when they ended")
    section = html[html.index('<section id="night">'):]
    section = section[:section.index("</section>")]
    assert "F-00" in section and "F-49" in section and "F-50" not in section
    assert [r["spec_id"] for r in read_json(tmp_path, "api/status.json")["night"]["still_failing"]] == \
        [f"F-{n:02}" for n in range(53)]


ISO_MOMENT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def test_every_time_in_the_snapshots_is_utc_with_a_z_whatever_the_servers_time_zone(overnight: Daemon,
                                                                                   tmp_path: Path) -> None:
    """The snapshots' times are encoded natively (orjson, a UTC one with a Z): the read
    connection works in UTC on a server set to another zone, and the windows worked out in the
    reporting time zone are converted."""
    dbname = query(overnight.dsn, "SELECT current_database() AS d")[0]["d"]
    execute(overnight.dsn, f"ALTER DATABASE \"{dbname}\" SET TimeZone = 'Asia/Kolkata'")
    assert query(overnight.dsn, "SHOW TimeZone")[0]["TimeZone"] == "Asia/Kolkata"
    render(overnight, tmp_path, full=True)

    def moments(value: Any, where: str) -> Iterator[tuple[str, str]]:
        if isinstance(value, dict):
            for key, item in value.items():
                if key not in ("data", "payload"):  # what agents sent is theirs
                    yield from moments(item, f"{where}.{key}")
        elif isinstance(value, list):
            for item in value:
                yield from moments(item, where)
        elif isinstance(value, str) and ISO_MOMENT.fullmatch(value):
            yield where, value

    found = [(f"{path.name}{where}", text) for path in site_files(tmp_path) if path.suffix == ".json"
             for where, text in moments(json.loads(path.read_text()), "")]
    assert len(found) > 100 and any(where.startswith("status.json.night.since") for where, _ in found)
    assert [(where, text) for where, text in found if not text.endswith("Z")] == []


TYPE_COUNT = re.compile(r'<a href="([^"]+)\.html"[^>]*>[^<]* <span class="count">([\d,]+)</span>')


def test_event_type_counts_stay_those_of_the_last_7_days_across_incremental_renders(calm_overnight: Daemon,
                                                                                    tmp_path: Path) -> None:
    """The events menu's counts: an incremental render counts only since the anchor and adds
    the older part counted before (re-counted every LIST_REFRESH); the sum is the database's."""
    renderer = incremental_renderer(calm_overnight, tmp_path)

    def menu() -> dict[str, int]:
        html, _, _ = read_page(tmp_path, "events/index.html")
        return {name: int(n.replace(",", "")) for name, n in TYPE_COUNT.findall(html)}

    def stored(now: datetime) -> dict[str, int]:
        rows = query(calm_overnight.dsn, "SELECT event_type, count(*) AS n FROM events WHERE occurred_at >= %s "
                     "GROUP BY event_type", (now - timedelta(days=7),))
        return {page_name(r["event_type"]): r["n"] for r in rows}

    try:
        now = datetime.now(timezone.utc)
        if (now + timedelta(minutes=10)).date() != now.date():
            # The events window moves on at UTC midnight, which makes the next render a full one:
            # the renders' clock starts past it (the renderer's `now` only places the windows).
            now += timedelta(minutes=15)
        # Two days old: before the anchor (6 hours before the full rebuild), within the 7 days.
        send(calm_overnight, [{"type": "cc.Stop", "session_id": C, "ts": (now - timedelta(days=2)).isoformat()}] * 2)
        wait_until_settled(calm_overnight.dsn)
        renderer.render(full=True, now=now)
        assert menu() == stored(now) and menu()["cc.Stop"] == 2 and menu()["session_heartbeat"] >= 1
        for minutes, events in [(1, [{"type": "session_heartbeat", "session_id": C}] * 3),
                                (2, [{"type": "cc.Notification", "session_id": C}]),  # a type new to the menu
                                (8, [{"type": "session_heartbeat", "session_id": C}]),  # after a re-count
                                (9, [])]:
            send(calm_overnight, events)
            wait_until_settled(calm_overnight.dsn)
            result = renderer.render(now=now + timedelta(minutes=minutes))
            assert not result.full
            assert menu() == stored(now), minutes
        assert menu()["cc.Notification"] == 1
    finally:
        renderer.close()


def test_render_command_full(overnight: Daemon) -> None:
    out = subprocess.run([str(BIN / "ralph-monitor"), "render", "--full", "--config", str(overnight.config_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "rebuilt the dashboard" in out.stdout
    site_dir = overnight.root / "state" / "site"
    assert (site_dir / "current" / "index.html").is_file()
    assert (site_dir / "current" / "sessions" / f"{A}.html").is_file()


def test_render_command_failing_says_why_in_one_line(daemon_factory: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    d = daemon_factory(paths={"site_dir": str(blocker / "site")})
    d.write_config()
    out = subprocess.run([str(BIN / "ralph-monitor"), "render", "--full", "--config", str(d.config_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(
        f"ralph-monitor: error: could not write the dashboard in {blocker / 'site'}: "), out.stderr


def test_a_failing_render_keeps_the_last_good_site(overnight: Daemon, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(overnight.config_path)
    renderer = SiteRenderer(settings, dsn=overnight.dsn, site_dir=tmp_path)
    try:
        renderer.render(full=True)
        good = (tmp_path / "current").resolve()
        index = (good / "index.html").read_bytes()

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("template exploded")

        monkeypatch.setattr(charts, "events_per_bucket", broken)
        for full in (True, False):
            with pytest.raises(RuntimeError, match="template exploded"):
                renderer.render(full=full)
            assert (tmp_path / "current").resolve() == good
            assert (good / "index.html").read_bytes() == index
        assert [p.name for p in (tmp_path / "releases").iterdir()] == [good.name]
        renderer.record_failure(RuntimeError("template exploded"))
        state = json.loads((tmp_path / "render-state.json").read_text())
        assert "template exploded" in state["last_error"]["message"]
        monkeypatch.undo()
        assert renderer.render().written >= 1
        assert json.loads((tmp_path / "render-state.json").read_text())["last_error"] is None
    finally:
        renderer.close()


def test_after_a_failed_render_the_next_writes_what_changed_before_it(calm_overnight: Daemon, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed render read the changes and noted which pages they touch, then published
    nothing: the next render must still write the session, spec and event-type pages."""
    overnight = calm_overnight
    renderer = incremental_renderer(overnight, tmp_path)
    try:
        renderer.render(full=True)
        root = (tmp_path / "current").resolve()
        send(overnight, [{"type": "spec_started", "session_id": C, "spec_id": "CR-77"}])
        wait_until_settled(overnight.dsn)
        renderer.render()
        assert "running" in (root / "specs" / "CR-77.html").read_text()

        send(overnight, [{"type": "spec_failed", "session_id": C, "spec_id": "CR-77",
                          "data": {"error_message": "boom77"}},
                         {"type": "deploy.note", "session_id": C, "data": {"message": "note77"}}])
        wait_until_settled(overnight.dsn)

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("overview exploded")

        with monkeypatch.context() as patch:
            patch.setattr(charts, "events_per_bucket", broken)  # after the session, spec and events reads
            with pytest.raises(RuntimeError, match="overview exploded"):
                renderer.render()
        assert "boom77" not in (root / "specs" / "CR-77.html").read_text()

        after = renderer.render()
        assert not after.full and (tmp_path / "current").resolve() == root
        assert "boom77" in (root / "specs" / "CR-77.html").read_text()
        assert "boom77" in (root / "sessions" / f"{C}.html").read_text()
        assert "note77" in (root / "events" / "deploy.note.html").read_text()
    finally:
        renderer.close()


def test_daemon_renders_on_its_own_and_survives_render_failures(daemon_factory: Any, tmp_path: Path) -> None:
    good = daemon_factory(schedule={"render_debounce_s": 0.2})
    good.start()
    send(good, [{"type": "session_started", "session_id": A, "data": {"name": "daemon-rendered"}},
                {"type": "intervention_request", "session_id": A, "data": {"message": "help?"}}])
    site_dir = good.root / "state" / "site"
    deadline = time.monotonic() + 20
    snap: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            snap = json.loads((site_dir / "current" / "api" / "status.json").read_text())
        except (OSError, ValueError):
            snap = {}
        # The overview is read last in a render: it may count the request one render before
        # the session's page (listed first) is written. The daemon logs a render after its
        # files are in place: the first (full) one may publish the request before its line.
        if (snap.get("live", {}).get("waiting") == "1" and (site_dir / "current" / "sessions" / f"{A}.html").is_file()
                and "dashboard rebuilt" in good.log()):
            break
        time.sleep(0.1)
    assert snap.get("live", {}).get("waiting") == "1", good.log()
    assert (site_dir / "current" / "sessions" / f"{A}.html").is_file()
    assert "dashboard rebuilt" in good.log()

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    bad = daemon_factory(paths={"site_dir": str(blocker / "site")}, schedule={"render_debounce_s": 0.2})
    bad.start()
    for i in range(20):
        send(bad, [{"type": "session_heartbeat", "session_id": B, "data": {"i": i}}])
    assert query(bad.dsn, "SELECT count(*) AS n FROM events WHERE session_id = %s", (B,))[0]["n"] == 20
    deadline = time.monotonic() + 10
    while "dashboard render failed" not in bad.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "dashboard render failed" in bad.log()
    assert bad.process is not None and bad.process.poll() is None
    assert bad.stop() == 0


def test_a_big_full_rebuild_in_several_processes_gives_the_same_pages(calm_overnight: Daemon, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calm_overnight.stop()   # its health row and alert checks would change pages between the two renders
    now = datetime.now(timezone.utc)
    single = render(calm_overnight, tmp_path / "one", full=True, now=now)
    monkeypatch.setattr("ralph_monitor.dashboard.render.PARALLEL_MIN_SESSIONS", 1)
    monkeypatch.setattr(worker, "processes", lambda: 3)  # this process and two helpers
    shared = render(calm_overnight, tmp_path / "three", full=True, now=now)
    assert (shared.sessions, shared.specs, shared.pages, shared.written) == (
        single.sessions, single.specs, single.pages, single.written)

    def pages(root: Path) -> dict[str, bytes]:
        base = (root / "current").resolve()
        return {p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*") if p.is_file()}

    one, three = pages(tmp_path / "one"), pages(tmp_path / "three")
    assert one.keys() == three.keys()
    assert [k for k in one if one[k] != three[k]] == []


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_the_daemon_renders_in_a_child_process_and_replaces_it_when_it_dies(daemon_factory: Any) -> None:
    d = daemon_factory(schedule={"render_debounce_s": 0.2})
    d.start()
    assert d.process is not None
    site_dir = d.root / "state" / "site"

    def snapshot_shows(waiting: str) -> bool:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if json.loads((site_dir / "current" / "api" / "status.json").read_text())["live"]["waiting"] == waiting:
                    return True
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        return False

    send(d, [{"type": "session_started", "session_id": A},
             {"type": "intervention_request", "session_id": A, "data": {"message": "one"}}])
    assert snapshot_shows("1"), d.log()
    renderers = children(d.process.pid)
    assert len(renderers) == 1
    os.kill(renderers[0], 9)
    send(d, [{"type": "intervention_request", "session_id": A, "data": {"message": "two"}}])
    assert snapshot_shows("2"), d.log()
    # Noticed before the next render, or by a render already under way when the kill came.
    assert ("the render process exited with status -9; starting a new one" in d.log()
            or "the render process died or hung" in d.log()), d.log()
    replacement = children(d.process.pid)
    assert len(replacement) == 1 and replacement != renderers
    assert d.stop() == 0
    deadline = time.monotonic() + 10  # the render process goes with the daemon (its stdin closes)
    while os.path.exists(f"/proc/{replacement[0]}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{replacement[0]}")


def test_a_session_that_never_said_its_total_gets_no_progress_bar(daemon_factory: Any, tmp_path: Path) -> None:
    """A full bar for "1 of ?" would read as finished."""
    d = daemon_factory()
    d.start()
    now = datetime.now(timezone.utc)
    known, unknown = str(uuid.uuid4()), str(uuid.uuid4())
    events = []
    for session, start in ((known, {"name": "with total", "total_specs": 4}), (unknown, {"name": "no total"})):
        for kind, minutes_ago, spec, data in (("session_started", 10, None, start), ("spec_started", 9, "CR-01", {}),
                                              ("spec_completed", 8, "CR-01", {"cost_usd": 0.1})):
            event = {"type": kind, "session_id": session, "ts": (now - timedelta(minutes=minutes_ago)).isoformat(),
                     "data": data}
            if spec:
                event["spec_id"] = spec
            events.append(event)
    send(d, events)
    wait_until_settled(d.dsn)
    render(d, tmp_path, full=True)
    html, _, _ = read_page(tmp_path, "index.html")
    bars = html.count('<svg class="progress"')
    assert bars >= 1 and html.count('aria-label="1 of 4 specs done, 0 failed"') == bars
    assert html.count('title="the session did not say how many specs it has (total_specs)">no total</span>') == bars


def test_every_session_is_listed_month_by_month(daemon_factory: Any, tmp_path: Path) -> None:
    """The archive: sessions/index.html lists each month with its totals, sessions/YYYY-MM.html
    its sessions; an incremental render rewrites only the months whose sessions changed."""
    d = daemon_factory()
    d.start()
    now = datetime.now(timezone.utc)
    old, new, newer = (str(uuid.uuid4()) for _ in range(3))

    def session(sid: str, name: str, started: datetime, cost: float) -> list[dict[str, Any]]:
        return [{"type": "session_started", "session_id": sid, "ts": started.isoformat(), "data": {"name": name}},
                {"type": "spec_completed", "session_id": sid, "spec_id": "CR-01",
                 "ts": (started + timedelta(minutes=5)).isoformat(), "data": {"cost_usd": cost}},
                # ended: an open session silent for long is marked stalled (changed) at any moment
                {"type": "session_ended", "session_id": sid, "ts": (started + timedelta(minutes=6)).isoformat(),
                 "data": {"status": "completed"}}]

    long_ago = now - timedelta(days=70)
    send(d, session(old, "seventy days ago", long_ago, 1.25) + session(new, "this month", now - timedelta(minutes=20), 2))
    wait_until_settled(d.dsn)
    renderer = incremental_renderer(d, tmp_path)
    try:
        renderer.render(full=True)
        root = (tmp_path / "current").resolve()
        old_month, this_month = f"{long_ago:%Y-%m}", f"{now:%Y-%m}"
        index, values, _ = read_page(tmp_path, "sessions/index.html")
        assert f'<a href="{this_month}.html">{now:%B %Y}</a>' in index
        # Its totals are those of when it was written (every few minutes while sessions run): it says when.
        assert values["listed-at"].startswith("Listed at ") and "every 5 minutes" in values["listed-at"]
        assert f'<a href="{old_month}.html">{long_ago:%B %Y}</a>' in index
        assert index.index(this_month) < index.index(old_month), "newest month first"
        assert "$1.25" in index and "$2.00" in index
        old_page = root / "sessions" / f"{old_month}.html"
        assert "seventy days ago" in old_page.read_text() and "this month" not in old_page.read_text()
        assert f'href="../sessions/{new}.html"' in (root / "sessions" / f"{this_month}.html").read_text()
        overview, _, _ = read_page(tmp_path, "index.html")
        assert 'href="sessions/index.html"' in overview
        assert f'<a href="{this_month}.html">{now:%B %Y}</a> › Session' in (root / "sessions" / f"{new}.html").read_text()
        # Seventy days ago is past the events retention window (30 days): listed, no page of its own.
        assert not (root / "sessions" / f"{old}.html").exists() and f"{old}.html" not in old_page.read_text()
        month_json = read_json(tmp_path, f"api/sessions/{old_month}.json")
        assert [(s["id"], s["name"], s["page"]) for s in month_json["sessions"]] == [(old, "seventy days ago", False)]
        before = old_page.stat().st_mtime_ns

        send(d, session(newer, "just now", now - timedelta(minutes=1), 0.5))
        wait_until_settled(d.dsn)
        renderer.render()
        month_page = (root / "sessions" / f"{this_month}.html").read_text()
        assert month_page.index("just now") < month_page.index("this month"), "newest session first"
        assert old_page.stat().st_mtime_ns == before
        assert "$2.50" in read_page(tmp_path, "sessions/index.html")[0]
    finally:
        renderer.close()


def test_session_pages_follow_the_events_retention_window(daemon_factory: Any, tmp_path: Path) -> None:
    """A session whose events are past the retention window has no page and nothing links to
    one (it is in its month's page and its spec's history); a session's page goes with its
    events: the next render after they are pruned, an incremental one included, leaves it out."""
    d = daemon_factory()
    d.start()
    now = datetime.now(timezone.utc)
    old, recent, fresh = (str(uuid.uuid4()) for _ in range(3))

    def session(sid: str, name: str, started: datetime) -> list[dict[str, Any]]:
        return [{"type": "session_started", "session_id": sid, "ts": started.isoformat(), "data": {"name": name}},
                {"type": "spec_started", "session_id": sid, "spec_id": "CR-07", "ts": started.isoformat()},
                {"type": "spec_failed", "session_id": sid, "spec_id": "CR-07",
                 "ts": (started + timedelta(minutes=5)).isoformat(), "data": {"error": "boom", "cost_usd": 0.5}},
                {"type": "session_ended", "session_id": sid, "ts": (started + timedelta(minutes=6)).isoformat(),
                 "data": {"status": "failed"}}]

    send(d, session(old, "forty days ago", now - timedelta(days=40)) + session(recent, "ten days ago",
         now - timedelta(days=10)) + session(fresh, "just now", now - timedelta(minutes=20)))
    wait_until_settled(d.dsn)
    d.stop()  # nothing changes the pages but what this test does
    settings = load_settings(d.config_path)
    renderer = SiteRenderer(settings, dsn=d.dsn, site_dir=tmp_path)
    try:
        result = renderer.render(full=True, now=now)
        assert result.sessions == 2
        root = (tmp_path / "current").resolve()

        def pages() -> set[str]:
            return {p.stem for p in (root / "sessions").glob("*.html")} & {old, recent, fresh}

        def links_to(sid: str) -> list[str]:
            return [p.relative_to(root).as_posix() for p in site_files(tmp_path)
                    if p.suffix in (".html", ".json") and f"{sid}.html" in p.read_text()]

        assert pages() == {recent, fresh} and links_to(old) == []
        assert not (root / "api" / "sessions" / f"{old}.json").exists()
        spec_page = (root / "specs" / "CR-07.html").read_text()
        assert "forty days ago" in spec_page and f'href="../sessions/{recent}.html"' in spec_page
        assert "forty days ago" in (root / "sessions" / f"{now - timedelta(days=40):%Y-%m}.html").read_text()
        assert_every_link_resolves(tmp_path)

        # 25 days later the ten-day-old session's events are pruned: its page goes, and its links.
        later = now + timedelta(days=25)
        report = retention.prune(settings, d.dsn, now=later)
        assert not report.errors and report.removed["events"] >= 4
        result = renderer.render(now=later)
        assert result.full, "the window moved on: a new release"
        root = (tmp_path / "current").resolve()
        assert pages() == {fresh} and links_to(recent) == [] and links_to(old) == []
        assert not (root / "api" / "sessions" / f"{recent}.json").exists()
        assert_every_link_resolves(tmp_path)
        quiet = renderer.render(now=later + timedelta(minutes=1))
        assert not quiet.full and pages() == {fresh}
    finally:
        renderer.close()


def assert_every_link_resolves(site: Path) -> None:
    """Every href and src of the published site's pages names a file of the site."""
    root = (site / "current").resolve()
    missing = set()
    for path in site_files(site):
        if path.suffix != ".html":
            continue
        for target in re.findall(r'(?:href|src)="([^"#]+)"', path.read_text()):
            resolved = (path.parent / target).resolve()
            if not resolved.is_file() or root not in resolved.parents:
                missing.add((str(path.relative_to(root)), target))
    assert not missing


def test_a_full_rebuild_links_the_pages_that_did_not_change(calm_overnight: Daemon, tmp_path: Path) -> None:
    """A second full rebuild takes unchanged session and spec pages over from the published
    release (same inode) and gives byte for byte the site a fresh render gives; a session
    whose aggregate changed is rendered again."""
    calm_overnight.stop()
    now = datetime.now(timezone.utc)
    settings = load_settings(calm_overnight.config_path)
    renderer = SiteRenderer(settings, dsn=calm_overnight.dsn, site_dir=tmp_path / "site")
    try:
        renderer.render(full=True, now=now)
        first = (tmp_path / "site" / "current").resolve()
        query(calm_overnight.dsn, "UPDATE sessions SET name = 'renamed batch', updated_at = now() WHERE id = %s "
                                  "RETURNING id", (A,))
        renderer.render(full=True, now=now)
        second = (tmp_path / "site" / "current").resolve()
        assert first != second
        assert (first / f"sessions/{B}.html").stat().st_ino == (second / f"sessions/{B}.html").stat().st_ino
        assert (first / "specs/CR-10.html").stat().st_ino == (second / "specs/CR-10.html").stat().st_ino
        assert (first / f"sessions/{A}.html").stat().st_ino != (second / f"sessions/{A}.html").stat().st_ino
        assert "renamed batch" in (second / f"sessions/{A}.html").read_text()
    finally:
        renderer.close()
    render(calm_overnight, tmp_path / "fresh", full=True, now=now)
    fresh = (tmp_path / "fresh" / "current").resolve()
    mine = {p.relative_to(second).as_posix(): p.read_bytes() for p in second.rglob("*") if p.is_file()}
    theirs = {p.relative_to(fresh).as_posix(): p.read_bytes() for p in fresh.rglob("*") if p.is_file()}
    assert mine.keys() == theirs.keys() and [k for k in mine if mine[k] != theirs[k]] == []


def test_a_spec_page_lists_the_runs_of_the_events_window_and_at_least_its_newest_20(daemon: Daemon,
                                                                                    tmp_path: Path) -> None:
    """The site follows the events retention window (30 days): a spec run daily for 45 days lists
    its last 30 days' runs; a spec last run 35-44 days ago still lists its newest runs (at least
    20, here all 10 of them); both count every run kept."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    events = []
    for day in range(45):
        for spec in ("CR-DAILY", "CR-OLD") if day >= 35 else ("CR-DAILY",):
            session, at = str(uuid.uuid4()), now - timedelta(days=day, hours=1)
            events += [{"type": "session_started", "session_id": session, "ts": at.isoformat()},
                       {"type": "spec_started", "session_id": session, "spec_id": spec,
                        "ts": (at + timedelta(minutes=1)).isoformat()},
                       {"type": "spec_completed", "session_id": session, "spec_id": spec,
                        "ts": (at + timedelta(minutes=5)).isoformat()},
                       {"type": "session_ended", "session_id": session, "ts": (at + timedelta(minutes=6)).isoformat()}]
    send(daemon, events)
    wait_until_settled(daemon.dsn, lambda: query(daemon.dsn, "SELECT count(*) AS n FROM spec_runs")[0]["n"] == 55)
    render(daemon, tmp_path, full=True, now=now)
    window_start = retention.Cutoffs.at(load_settings(daemon.config_path), now).events  # what session pages follow
    in_window = sum(1 for day in range(45) if now - timedelta(days=day, hours=1, minutes=-1) >= window_start)
    assert 30 <= in_window <= 31

    daily = read_json(tmp_path, "api/specs/CR-DAILY.json")
    assert daily["total_runs"] == 45
    assert len(daily["runs"]) == in_window and all(
        datetime.fromisoformat(r["start_time"]) >= window_start for r in daily["runs"])
    _, values, rows = read_page(tmp_path, "specs/CR-DAILY.html")
    assert rows["spec-history"] == in_window and values["total_runs"] == "45"

    old = read_json(tmp_path, "api/specs/CR-OLD.json")
    assert old["total_runs"] == 10 and len(old["runs"]) == 10


def test_the_overview_says_how_many_monitor_hosts_are_not_reporting(daemon_factory: Any, tmp_path: Path) -> None:
    """A host whose health row is a minute old is not reporting: the banner counts them in words
    that agree with the number, and the health panel marks each."""
    d = daemon_factory()
    d.start()
    render(d, tmp_path, full=True)
    html, _, _ = read_page(tmp_path, "index.html")
    assert "not reporting" not in html, "the daemon's own host reports every 10 s"
    for count, host in enumerate(("build-1", "build-2"), start=1):
        execute(d.dsn, "INSERT INTO monitor_hosts (host, version, started_at, last_seen) "
                       "VALUES (%s, '0', now() - interval '2 days', now() - interval '5 minutes')", (host,))
        render(d, tmp_path, full=True)
        html, _, _ = read_page(tmp_path, "index.html")
        banner = html[html.index("Needs you:"):html.index("</div>", html.index("Needs you:"))]
        assert ("1 monitor host not reporting" if count == 1 else "2 monitor hosts not reporting") in banner, banner
        assert html.count('<strong class="failt">not reporting</strong>') == count
