"""Dashboard views and charts without a database: file names for agent-chosen keys, SVG charts
(escaping, well-formed, text alternatives), templates rendering hostile values."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
import xml.etree.ElementTree as ET
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from ralph_monitor.dashboard import charts, views
from ralph_monitor.dashboard.render import SiteRenderer
from ralph_monitor.outcomes import Counts, spec_outcome
from ralph_monitor.queries import DailyRuns, InterventionRow, SessionSummary, SpecRunRow

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
EVIL = "<script>alert('x')</script>\"&'"


@given(st.text(min_size=1, max_size=300))
def test_page_names_are_safe_file_names(key: str) -> None:
    name = views.page_name(key)
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._~-]*|~[0-9a-f]{12}", name), name
    assert ".." not in name and "/" not in name and len(name) <= 80


@given(st.lists(st.text(min_size=1, max_size=40), min_size=2, max_size=30, unique=True))
def test_page_names_never_collide(keys: list[str]) -> None:
    assert len({views.page_name(k) for k in keys}) == len(keys)


def test_plain_names_stay_readable() -> None:
    assert views.page_name("CR-01") == "CR-01"
    assert views.page_name("cc.PreToolUse") == "cc.PreToolUse"
    assert views.page_name("javascript:alert").startswith("javascript-alert~")
    assert views.page_name("../../etc/passwd").startswith("etc-passwd~")


def session(**over: object) -> SessionSummary:
    values: dict[str, object] = dict(
        id=uuid.uuid4(), name=EVIL, host="h", start_time=NOW - timedelta(hours=2), end_time=None,
        last_event_at=NOW, total_specs=3, specs_completed=1, specs_failed=1, specs_timed_out=0,
        specs_fixed_on_retry=0, execution_state="running", tokens_used=10, cost_usd=Decimal("1.5"), event_count=9,
        interventions_pending=1, final_result=None, metadata={}, updated_at=NOW, current_spec=None)
    values.update(over)
    return SessionSummary(**values)  # type: ignore[arg-type]


def run(spec: str, status: str, minutes: int, **over: object) -> SpecRunRow:
    values: dict[str, object] = dict(
        id=1, session_id=uuid.uuid4(), spec_id=spec, attempt=1, start_time=NOW - timedelta(minutes=minutes + 10),
        end_time=None if status == "running" else NOW - timedelta(minutes=minutes), duration_seconds=600.0,
        status=status, outcome=spec_outcome([status]), tokens_used=5, cost_usd=Decimal("0.1"), error_message=EVIL * 50 if status == "failed" else None,
        output_summary=None, session_name=EVIL)
    values.update(over)
    return SpecRunRow(**values)  # type: ignore[arg-type]


def parse(chart: charts.Chart) -> ET.Element:
    root = ET.fromstring(str(chart.svg))  # well-formed XML: nothing unescaped got through
    assert root.get("role") == "img"
    ns = "{http://www.w3.org/2000/svg}"
    assert root.find(f"{ns}title") is not None and root.find(f"{ns}desc") is not None
    assert root.find(f"{ns}desc").text == chart.summary
    return root


def test_charts_escape_agent_strings_and_carry_text_alternatives() -> None:
    runs = [run(EVIL, "failed", 90), run("CR-2", "completed", 60), run("CR-3", "timeout", 30),
            run("CR-4", "running", 0)]
    asks = [InterventionRow(event_id=uuid.uuid4(), spec_id=EVIL, requested_at=NOW - timedelta(minutes=50),
                            message=EVIL)]
    gantt = charts.session_gantt(session(), runs, asks)
    svg = str(gantt.svg)
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    root = parse(gantt)
    assert "4 runs of 4 specs (1 completed, 1 failed, 1 timed out, 1 running)" in gantt.summary
    assert len(root.findall(".//{http://www.w3.org/2000/svg}rect")) >= 4
    strip = charts.outcome_strip(runs)
    assert "<script>" not in str(strip.svg)
    parse(strip)
    days = [date(2026, 11, d) for d in range(1, 31)]
    per_day = [DailyRuns(date(2026, 11, 3), Counts(passed=2, fixed_on_retry=1, failed=1), 5, Decimal("2.5"), 100),
               DailyRuns(date(2026, 11, 30), Counts(timed_out=2), 2, Decimal(0), 0)]
    spend = charts.spend_per_day(per_day, days)
    parse(spend)
    assert "$2.50 in all" in spend.summary and "Nov 3" in spend.summary
    rate = charts.success_per_day(per_day, days)
    parse(rate)
    assert "3 of 6 specs (50%)" in rate.summary
    assert "Nov 3: 75% (3 completed (1 fixed on retry), 1 failed, 0 timed out)" in str(rate.svg)
    counts = [(NOW - timedelta(minutes=10), 7), (NOW - timedelta(hours=3), 2)]
    events = charts.events_per_bucket(counts, NOW - timedelta(hours=24), NOW)
    parse(events)
    assert "9 in all, at most 7" in events.summary


def test_gantt_draws_row_backgrounds_as_one_path_and_styles_labels_from_the_stylesheet() -> None:
    """A session page's Gantt is drawn for every session in the events window: its every-other-row
    background is one path (one subpath a stripe), and where its labels anchor is a class that
    style.css defines (markup and stylesheet must agree: the page has no inline styles)."""
    runs = [run(f"CR-{i:03}", "completed", 200 - i) for i in range(80)]
    root = parse(charts.session_gantt(session(start_time=NOW - timedelta(hours=4)), runs))
    ns = "{http://www.w3.org/2000/svg}"
    stripes = [e for e in root.iter() if e.get("class") == "stripe"]
    assert len(stripes) == 1 and stripes[0].tag == f"{ns}path"
    assert stripes[0].get("d").count("M") == 40 and stripes[0].get("d").startswith("M0 20h1100v16H0z")
    labels = root.findall(f"{ns}text")
    assert len(labels) == 3 + 80 and not [t for t in labels if t.get("text-anchor")]
    assert sum(1 for t in labels if t.get("class") == "label end") == 80 + 1
    assert sum(1 for t in labels if t.get("class") == "label mid") == 1
    css = (Path(__file__).resolve().parents[2] / "site_templates" / "style.css").read_text()
    assert ".chart .end { text-anchor: end; }" in css and ".chart .mid { text-anchor: middle; }" in css


def test_charts_with_nothing_to_show() -> None:
    parse(charts.session_gantt(session(end_time=None, last_event_at=session().start_time), []))
    parse(charts.outcome_strip([]))
    parse(charts.events_per_bucket([], NOW - timedelta(hours=24), NOW))
    parse(charts.spend_per_day([], [date(2026, 11, 1)]))


def test_long_tokens_wrap_after_separators_and_stay_escaped() -> None:
    assert str(views.breakable("FAILED tests/checkout/test_cart.py::TestRounding - <b>")) == (
        "FAILED tests/<wbr>checkout/<wbr>test_<wbr>cart.<wbr>py::<wbr>TestRounding - &lt;b&gt;")
    assert str(views.breakable("short/path words")) == "short/path words"
    assert "<wbr>" not in str(views.breakable("&" * 40)) and "&amp;" in str(views.breakable("&" * 40))


def test_data_summary_is_one_short_line() -> None:
    assert views.data_summary({"error": "boom\n  at x", "tokens_used": 5}) == "boom at x · tokens_used: 5"
    assert len(views.data_summary({"blob": "y" * 10_000}, 100)) == 100
    assert views.data_summary(None) == "" and views.data_summary({}) == ""
    # Values read as the agent's JSON said them, not as Python prints them.
    assert views.data_summary({"status": True, "name": None}) == "status: true · name: null"
    assert views.value_text({"demo": True, "tags": ["a"]}) == '{"demo": true, "tags": ["a"]}'
    assert views.value_text("plain") == "plain"
    assert str(views.when(NOW)) == '<time datetime="2026-11-25T12:00:00Z">2026-11-25 12:00 UTC</time>'


def test_templates_escape_hostile_values(tmp_path: Path) -> None:
    renderer = SiteRenderer.__new__(SiteRenderer)
    renderer.env = views.template_environment()
    renderer._assets = {"style.css": ("static/style.x.css", b""), "app.js": ("static/app.x.js", b""),
                        "favicon.svg": ("static/favicon.x.svg", b"")}
    s = session(metadata={EVIL: EVIL}, final_result={"status": EVIL})
    runs = [run(EVIL, "failed", 30)]
    from ralph_monitor.queries import TimelineEvent

    timeline = [TimelineEvent(id=1, event_id=uuid.uuid4(), event_type="spec_failed", spec_id=EVIL,
                              occurred_at=NOW, host=EVIL, data={"error": EVIL * 1000})]
    html = renderer._page("session.html", "../", title=EVIL, session=s, month=s.start_time, runs=runs, more_runs=0,
                          timeline=timeline,
                          timeline_complete=True, hidden_events=0, interventions=[],
                          gantt=charts.session_gantt(s, runs), spec_pages={EVIL}, diff=None).decode()
    assert html.count("<script") == 1  # the page's own script file
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert 'href="../specs/' + views.page_name(EVIL) + '.html"' in html
    assert (EVIL * 1000) not in html.replace("&lt;", "<")
    assert "style=" not in html and " on" + "error=" not in html


def test_spec_runs_in_json_carry_git_but_not_the_counts_generated_from_it() -> None:
    encoded = json.loads(views.dump_json([run("CR-1", "completed", 5, git={"commit_count": 2}, git_commits=2)]))
    assert encoded[0]["git"] == {"commit_count": 2} and "git_commits" not in encoded[0]


def test_snapshots_encode_what_queries_and_agents_hold() -> None:
    from zoneinfo import ZoneInfo
    value = {"at": datetime(2026, 1, 1, 8, 30, 0, 5, tzinfo=timezone.utc),
             "paris": datetime(2026, 1, 1, 9, 30, tzinfo=ZoneInfo("Europe/Paris")), "cost": Decimal("0.10"),
             "id": uuid.UUID(int=5), "day": date(2026, 1, 2), "big": 10 ** 30, "far": 1e30, "text": "é\u2028<",
             7: "int key"}
    data = views.dump_json(value)
    assert data.endswith(b"}\n") and b"\n" not in data[:-1]
    expected = {"at": "2026-01-01T08:30:00.000005Z", "paris": "2026-01-01T09:30:00+01:00", "cost": 0.1,
                "id": str(uuid.UUID(int=5)), "day": "2026-01-02", "big": 10 ** 30, "far": 1e30, "text": "é\u2028<",
                "7": "int key"}
    assert json.loads(data) == expected
    value.pop("big")  # without it, orjson's path: the same text
    assert json.loads(views.dump_json(value)) == {k: v for k, v in expected.items() if k != "big"}


def test_kept_timeline_rows_read_as_rendered_ones() -> None:
    from ralph_monitor.queries import EventRow
    with_page, without_page = uuid.uuid4(), uuid.uuid4()
    events = [EventRow(id=n, event_id=uuid.uuid4(), event_type=kind, session_id=sid, spec_id="CR-1",
                       occurred_at=NOW + timedelta(seconds=n), created_at=NOW, host="h", writer_uid=None,
                       writer_pid=None, payload={"data": {"error": EVIL}})
              for n, (kind, sid) in enumerate([("spec_failed", with_page), ("heartbeat", without_page),
                                               ("spec_started", None)])]
    kept: dict[tuple[object, ...], str] = {}
    plain = views.event_rows(events, "../", sessions=True, pages={with_page})
    assert views.event_rows(events, "../", sessions=True, pages={with_page}, kept=kept) == plain
    assert len(kept) == 3
    assert views.event_rows(events, "../", sessions=True, pages={with_page}, kept=kept) == plain  # from kept
    # What a row depends on besides its event is in the key: a session's page appearing ...
    both = views.event_rows(events, "../", sessions=True, pages={with_page, without_page}, kept=kept)
    assert both == views.event_rows(events, "../", sessions=True, pages={with_page, without_page})
    assert both != plain and f'href="../sessions/{without_page}.html"' in both
    # ... and the page's place in the site, and which specs have a page.
    assert views.event_rows(events, "", sessions=True, pages={with_page}, kept=kept) == views.event_rows(
        events, "", sessions=True, pages={with_page})
    assert views.event_rows(events, "../", spec_pages=set(), kept=kept) == views.event_rows(events, "../", spec_pages=set())
    assert "&lt;script&gt;" in plain and "<script>" not in plain


def test_kept_run_rows_read_as_rendered_ones() -> None:
    """A row from `kept` is the row run_rows would render now: every change a run's row shows
    (its end, its git record, its session's name, its session's page) renders it again."""
    with_page = uuid.uuid4()
    runs = [run("CR-1", "running", 5, id=1, session_id=with_page),
            run("CR-2", "failed", 9, id=2, git={"repo": "/r", "commits": [{"hash": "abc", "subject": "one"}]},
                git_commits=1)]
    kept: dict[tuple[object, ...], str] = {}
    for by in ("spec", "session"):
        plain = views.run_rows(runs, "../", by=by, pages={with_page})
        assert views.run_rows(runs, "../", by=by, pages={with_page}, kept=kept) == plain
        assert views.run_rows(runs, "../", by=by, pages={with_page}, kept=kept) == plain  # from kept
    assert len(kept) == 4
    # The projector writes a session's runs again (new ids) whenever it changes: the same rows.
    again = [dataclasses.replace(r, id=r.id + 100) for r in runs]
    assert views.run_rows(again, "../", by="session", pages={with_page}, kept=kept) == views.run_rows(
        runs, "../", by="session", pages={with_page}) and len(kept) == 4
    changed = [
        [run("CR-1", "completed", 1, id=1, session_id=with_page), runs[1]],
        [runs[0], run("CR-2", "failed", 9, id=2, git={"repo": "/r", "commits": [{"hash": "abc", "subject": "two"}]},
                      git_commits=1)],
        [runs[0], run("CR-2", "failed", 9, id=2, session_name="renamed", git=runs[1].git, git_commits=1)],
    ]
    for changed_runs in changed:
        for by in ("spec", "session"):
            fresh = views.run_rows(changed_runs, "../", by=by, pages={with_page})
            assert views.run_rows(changed_runs, "../", by=by, pages={with_page}, kept=kept) == fresh
    assert "two" in views.run_rows(changed[1], "../", by="spec", pages={with_page}, kept=kept)
    # Which sessions have a page, and the page's place in the site, are in the key too.
    assert views.run_rows(runs, "../", by="spec", pages=set(), kept=kept) == views.run_rows(
        runs, "../", by="spec", pages=set())
    assert views.run_rows(runs, "", by="spec", pages={with_page}, kept=kept) == views.run_rows(
        runs, "", by="spec", pages={with_page})
    assert "&lt;script&gt;" in views.run_rows(runs, "../", by="spec", kept=kept)


def test_snapshots_cut_event_data_bigger_than_4_kib_of_json() -> None:
    small = {"tool_name": "Bash", "tokens_used": 10 ** 30, "text": "é" * 100}
    assert views.bounded_data(small) is small  # a number beyond 64 bits: the standard encoder measures it
    for big in ({"stdout": "x" * 5000}, {"text": "é" * 2100}, {"n": 10 ** 30, "stdout": "x" * 5000}, ["<"] * 1500):
        cut = views.bounded_data(big)
        whole = json.dumps(big, ensure_ascii=False, separators=(",", ":"))
        assert cut == {"_truncated": True, "json_chars": len(whole), "excerpt": whole[:1000]}, str(big)[:40]
    edge = {"s": "x" * (views.JSON_DATA_MAX - 8)}  # {"s":"..."}: exactly JSON_DATA_MAX bytes
    assert views.bounded_data(edge) is edge and views.bounded_data({"s": edge["s"] + "x"})["_truncated"]


def test_session_and_result_rows_escape_agent_strings_and_link_only_kept_sessions() -> None:
    """The tables built in Python (session_rows, result_rows) escape what agents chose (names,
    states, spec ids, errors), link a session only where it has a page, and say when a session
    gave no total instead of drawing a full bar."""
    kept, gone = session(execution_state=EVIL), session(name=None, total_specs=None, specs_fixed_on_retry=1)
    html = str(views.session_rows([kept, gone], "../", anchors=True, pages={kept.id}))
    assert "<script" not in html and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&#34;&amp;&#39;" in html
    assert f'<tr id="session-{kept.id}"><td><a href="../sessions/{kept.id}.html">' in html
    assert f'<span class="session" title="{gone.id}">{str(gone.id)[:8]}</span>' in html  # no page: no link
    assert 'aria-label="1 of 3 specs done, 1 failed"' in html and "no total" in html and "1 on retry" in html
    assert html.count("<tr") == 2
    from ralph_monitor.outcomes import SpecResult

    results = [SpecResult(kept.id, EVIL, "failed", 2, NOW, 60.0, 5, Decimal("0.1"), EVIL * 100, (EVIL,), EVIL),
               SpecResult(gone.id, "CR-2", "fixed_on_retry", 2, NOW, None, 0, Decimal(0), None, (), None)]
    rows = str(views.result_rows(results, "", pages={kept.id}))
    assert "<script" not in rows and rows.count("<tr") == 2
    assert f'href="sessions/{kept.id}.html#' in rows  # the last attempt on its session's page
    assert f'href="specs/CR-2.html#run-{gone.id}-2"' in rows  # no session page: the spec's page
    assert '<tr class="badrow">' in rows and '<tr class="fixedrow">' in rows and "<details" in rows


def test_a_session_that_ended_with_failing_specs_does_not_wear_a_green_completed() -> None:
    """'completed' is how the loop ended; a reader at 7 am reads the badge's colour as how the
    night went. With specs still failing it says how many: amber when some passed, red when none did."""
    def badge(**counts: int) -> str:
        s = session(**{"execution_state": "completed", "end_time": NOW, "specs_completed": 0, "specs_failed": 0,
                       "specs_timed_out": 0, "specs_fixed_on_retry": 0, **counts})
        html = str(views.session_rows([s], "../"))
        return re.search(r'<span class="state [^"]*">[^<]*</span>', html).group(0)

    assert badge(specs_completed=3) == '<span class="state completed">completed</span>'
    assert badge(specs_completed=3, specs_failed=2, specs_timed_out=1) == \
        '<span class="state completed some-failed">completed, 2 failed</span>'
    assert badge(specs_failed=2) == '<span class="state completed none-passed">completed, 2 failed</span>'
    running = session(execution_state="running", specs_failed=2, specs_completed=0)
    assert '<span class="state running">running</span>' in str(views.session_rows([running], "../"))
    css = (Path(__file__).resolve().parents[2] / "site_templates" / "style.css").read_text()
    assert ".state.completed.some-failed {" in css and ".state.completed.none-passed {" in css
