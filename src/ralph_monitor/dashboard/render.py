"""Rendering the dashboard from the query layer: HTML pages and JSON snapshots, published
through publish.py.

Incremental: only the sessions whose aggregate changed since the previous render (by the
database's clock, with an overlap for transactions in flight), the specs whose runs changed
in them, the events pages and the overview are rendered.

The site follows the events retention window: a session has a page (timeline, events) only
while its events are kept (its activity ended after the window's start, retention.Cutoffs);
older sessions are listed in the month pages (sessions/YYYY-MM.html, api/sessions/YYYY-MM.json)
and in their specs' history, and links go to a session page only where there is one. When the
window moves on (once a UTC day), the next render is a full one, which leaves the pages of
sessions that left it out of the new release. A full rebuild runs at start-up,
every FULL_EVERY_S (service.py), and on `ralph-monitor render --full`; on a big site it
spreads the session pages over helper processes (worker.py).

Two connections: while the first reads and renders the session and spec pages, a thread reads
the site-wide pages' data (overview, events, alerts) on the second, in three round trips
(queries' plans, store.gather): the database works on one core while the templates run on the
other.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from datetime import date, datetime, time as dtime, timedelta, timezone
from pathlib import Path
from typing import Any

from markupsafe import Markup

from ralph_monitor import queries
from ralph_monitor.config import Settings, report_zone
from ralph_monitor.dashboard import charts, worker
from ralph_monitor.dashboard.publish import KEEP_RELEASES, FullRelease, IncrementalRelease, RenderResult, SiteDir
from ralph_monitor.dashboard.views import (SCHEMA_VERSION, bounded_data, dump_json, fields, iso, page_name, snapshot,
                                           template_environment, when)
from ralph_monitor.errors import RalphMonitorError, RenderFailed
from ralph_monitor.outcomes import Counts
from ralph_monitor.resources import resource_dir
from ralph_monitor.retention import Cutoffs
from ralph_monitor.store import Plan, ReadStore, gather, open_read_store
from ralph_monitor.textfmt import money, percent

OVERLAP = timedelta(seconds=30)
"""A session recomputed in a transaction that began before the previous render but committed
after it carries an `updated_at` before that render; look back this far to catch it."""
CHUNK = 200
"""Sessions or specs read from the database per round of queries."""
INCREMENTAL_MAX_SESSIONS = 300
"""An incremental render holds its pages in memory; with more changed sessions than this
(e.g. after rebuild-aggregates) a full rebuild, which streams to disk, is cheaper anyway."""
PARALLEL_MIN_SESSIONS = 100
"""A full rebuild of at least this many sessions spreads them over several processes (a
session page with its timeline takes ~15 ms: 100 of them are worth a helper's start-up)."""
WHOLE_TIMELINE_MAX = 500
"""A session with at most this many events lists every one; bigger ones list all but
heartbeats and tool-level hook events (which the CLI still lists)."""
TIMELINE_LIMIT = 2000
SESSION_RUNS_LIMIT = 1000
SPEC_RUNS_LIMIT = 100
SPEC_RUNS_MIN = 20
"""A spec's page lists its runs within the events retention window (as the site's session
pages follow it), at least its newest SPEC_RUNS_MIN and at most SPEC_RUNS_LIMIT; older runs
stay in the database for `ralph-query spec` and count in the page's totals."""
EVENTS_PER_PAGE = 100
EVENT_TYPES_WINDOW = timedelta(days=7)
LIST_REFRESH = timedelta(minutes=5)
"""Lists that change with every minute of a busy night, which nobody reads minute by minute,
are rewritten by incremental renders at most this often: a month's page (at once when one of
its sessions starts or changes state) and the page of a busy event type (BUSY_TYPE_EVENTS)."""
BUSY_TYPE_EVENTS = 1000
"""An event type with at least this many events in EVENT_TYPES_WINDOW is busy (tool calls,
heartbeats); a rarer one (failures, requests for a human) has its page rewritten at once."""
NEVER = datetime.min.replace(tzinfo=timezone.utc)
LATE_EVENTS = timedelta(hours=6)
"""An incremental render notices new events of a type only if they happened at most this long
before the last full rebuild (by the 5-minute counts since then); later ones (a long spool
replay) wait for the next full rebuild, which comes at least as often (FULL_EVERY_S)."""
RECENT_SESSIONS_DAYS = 7
NIGHT_ROWS_SHOWN = 50
"""Specs the overview lists per outcome of the night (still failing, fixed on retry, being
retried). A night of a hundred sessions (100x) left ~400 failing: 280 kB of the page, more
than anyone reads in the morning; api/status.json and `ralph-query night` list every one."""
DAYS_CHARTED = 30
ASSETS = ("style.css", "app.js", "favicon.svg")
ALERTS_WINDOW = timedelta(days=7)
ALERTS_PER_PAGE = 200
TEMPLATES = ("overview.html", "session.html", "spec.html", "events.html", "archive.html", "alerts.html")
ACTIVE_STATES = ("running", "stalled", "waiting_for_human", "paused_for_usage_limit")


@dataclass
class _Counter:
    pages: int = 0
    sessions: int = 0
    specs: int = 0


@dataclass(frozen=True)
class _OverviewData:
    """What the overview and api/status.json show."""

    status: queries.Status
    night: queries.NightSummary
    compare: queries.Comparison
    spend: queries.Spend
    top_failing: list[queries.FailingSpec]
    recent_failures: list[queries.SpecRunRow]
    recent_sessions: list[queries.SessionSummary]
    rejects: list[queries.RejectRow]
    events_since: datetime
    events_until: datetime
    event_counts: list[tuple[datetime, int]]


@dataclass(frozen=True)
class _EventsData:
    """What the events pages to write show."""

    types: list[tuple[str, int]]
    """Every event type of EVENT_TYPES_WINDOW with its count there (events/index.html)."""
    pages: list[tuple[str | None, list[queries.EventRow]]]
    """The pages to write and their newest events: None for events/index.html, else a type's page."""


@dataclass(frozen=True)
class _SiteWide:
    """The data of the pages every render writes or checks: the overview, the events pages and
    the alerts page. They do not depend on which sessions changed, so a second connection reads
    them in a thread (SiteRenderer._read_site_wide) while the first reads and renders the session
    and spec pages: the database works on one core while the templates run on the other."""

    overview: _OverviewData
    events: _EventsData
    alerts: list[queries.AlertRow]


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _kept(session: queries.SessionSummary, since: datetime) -> bool:
    """Whether the session has a page: its activity ended at or after the window's start (as
    queries.sessions_active_since selects them)."""
    return (session.end_time or session.last_event_at) >= since


def _run_fingerprint(runs: list[queries.SpecRunRow], session_name: str | None) -> dict[str, str]:
    """Per spec: a digest of what its page shows about these runs."""
    by_spec: dict[str, list[str]] = {}
    for r in runs:
        by_spec.setdefault(r.spec_id, []).append(repr((r.attempt, r.start_time, r.end_time, r.status, r.tokens_used,
                                                        r.cost_usd, r.error_message, r.git, session_name)))
    return {spec: hashlib.sha1("|".join(rows).encode()).hexdigest() for spec, rows in by_spec.items()}


class SiteRenderer:
    """Renders the site from the database. Blocking: the daemon runs it in its render process
    (RenderProcess), `ralph-monitor render` in its own."""

    def __init__(self, settings: Settings, *, dsn: str | None = None, site_dir: Path | None = None) -> None:
        self.settings = settings
        self.dsn = dsn
        self.site = SiteDir(site_dir or settings.site_dir)
        self.zone = report_zone(settings.reports_timezone)
        self._pages: set[uuid.UUID] = set()
        """Sessions that have a page in the release being rendered (their events are kept)."""
        self._pages_since: datetime | None = None
        """The start of the retention window the published release's session pages follow."""
        self._window_start: datetime | None = None
        """The same, for the render under way."""
        self.env = template_environment(self._pages, kept_rows={})
        self._stack: ExitStack | None = None
        self._store: ReadStore | None = None
        self._side_stack: ExitStack | None = None
        self._side_store: ReadStore | None = None
        """The connection of the site-wide pages' reads (_read_site_wide), used by its thread only."""
        self._side_pool: ThreadPoolExecutor | None = None
        self.overlap = OVERLAP
        self._since: datetime | None = None
        self._event_types: list[str] = []
        self._types_at: dict[str, datetime] = {}
        """When each event type's page was last rewritten (by the render's clock)."""
        self._types_anchor: datetime | None = None
        self._type_counts: dict[str, int] = {}
        """Each event type's events since _types_anchor when its page was last rewritten (a full
        rebuild moves the anchor to LATE_EVENTS before it)."""
        self._before_anchor: dict[str, int] = {}
        """Each event type's events in EVENT_TYPES_WINDOW before _types_anchor, as counted at
        _before_counted_at: summing a week of 5-minute counts takes ~10 ms at 10x, so incremental
        renders count only since the anchor and add this part, read again every LIST_REFRESH."""
        self._before_counted_at = NEVER
        self._listed: dict[uuid.UUID, str] = {}
        """Each session's state as its month's page shows it."""
        self._months_at: dict[date, datetime] = {}
        """When each month's page was last rewritten (by the render's clock)."""
        self._alerts_digest = ""
        self._digests: dict[str, str] = {}
        """Session and spec pages of the published release: a digest of what each was rendered
        from (its data, and which of the sessions it names have a page). A full rebuild links
        a page whose digest did not change from the published release instead of rendering it
        again; an incremental render leaves it alone."""
        self._active_runs: dict[uuid.UUID, dict[str, str]] = {}
        """Spec-run digests of sessions still going, to re-render only specs whose runs changed."""
        self._assets = self._load_assets()
        for name in TEMPLATES:  # compile now (~0.1 s, a few MB), not in the middle of the first render
            self.env.get_template(name)

    def _load_assets(self) -> dict[str, tuple[str, bytes]]:
        assets = {}
        for name in ASSETS:
            data = (resource_dir("site_templates") / name).read_bytes()
            stem, ext = name.rsplit(".", 1)
            assets[name] = (f"static/{stem}.{hashlib.sha256(data).hexdigest()[:10]}.{ext}", data)
        return assets

    def close(self) -> None:
        if self._side_pool is not None:
            self._side_pool.shutdown(wait=True)  # a read still under way uses the side connection
            self._side_pool = None
        for stack in (self._stack, self._side_stack):
            if stack is not None:
                with suppress(Exception):
                    stack.close()
        self._stack = self._store = self._side_stack = self._side_store = None

    def _connect(self) -> ReadStore:
        if self._store is None:
            self._stack, self._store = self._open()
        return self._store

    def _connect_side(self) -> ReadStore:
        if self._side_store is None:
            self._side_stack, self._side_store = self._open()
        return self._side_store

    def _open(self) -> tuple[ExitStack, ReadStore]:
        stack = ExitStack()
        return stack, stack.enter_context(open_read_store(self.settings, dsn=self.dsn))

    # ------------------------------------------------------------------------------------

    def render(self, *, full: bool = False, now: datetime | None = None) -> RenderResult:
        """Render and publish; raises on failure (the published site is then untouched)."""
        started = time.monotonic()
        try:
            with self.site.lock():
                result = self._render_locked(full=full, now=now, started=started)
        except BaseException:
            self.close()  # reconnect next time (and wait for the site-wide thread)
            self._forget_published()
            raise
        if any(store is not None and store.fallback for store in (self._store, self._side_store)):
            self.close()  # read from the primary for want of the replica: try the replica again next time
        return result

    def _forget_published(self) -> None:
        """After a failed render: what it read and noted is not what the published site shows.
        So the next render writes again each session and spec page it is asked for (_digests),
        every spec of the sessions that changed (_active_runs), every events page
        (_types_anchor), the month pages of the sessions that changed and the alerts page."""
        self._digests.clear()
        self._active_runs.clear()
        self._types_anchor = None
        self._listed.clear()
        self._months_at.clear()
        self._alerts_digest = ""

    def _render_locked(self, *, full: bool, now: datetime | None, started: float) -> RenderResult:
        published = self.site.published()
        if published is None:
            full = True
        if not full and self._since is None:  # a new process: continue from the last render's state
            state = self.site.read_state()
            if (published is not None and state.get("release") == published.name and state.get("since")
                    and state.get("pages_since")):
                self._since = datetime.fromisoformat(state["since"])
                self._pages_since = datetime.fromisoformat(state["pages_since"])
            else:
                full = True
        store = self._connect()
        db_now = queries.database_now(store)
        now = now or datetime.now(timezone.utc)
        pages_since = Cutoffs.at(self.settings, now).events
        if pages_since != self._pages_since:
            full = True  # the window moved on: a new release without the pages of sessions that left it
        if full:
            changed = queries.sessions_active_since(store, pages_since)
        else:
            changed = [s for s in queries.sessions_changed_since(store, self._since) if _kept(s, pages_since)]
            if len(changed) > INCREMENTAL_MAX_SESSIONS:
                full = True  # e.g. after rebuild-aggregates: stream to a new release, not via memory
                changed = queries.sessions_active_since(store, pages_since)
        self._window_start = pages_since
        self._pages.clear()
        if full:
            self._pages.update(s.id for s in changed)
        else:
            self._pages.update(queries.session_ids_active_since(store, pages_since))
        out: FullRelease | IncrementalRelease = (
            FullRelease(self.site, previous=published) if full or published is None
            else IncrementalRelease(self.site, published))
        count = _Counter()
        try:
            self._render_all(store, out, count, changed, full=full, now=now)
            out.commit()
        except BaseException:
            out.abort()
            raise
        release = out.name if isinstance(out, FullRelease) else published.name  # type: ignore[union-attr]
        self._since = db_now - self.overlap
        self._pages_since = pages_since
        seconds = time.monotonic() - started
        state = self.site.read_state()
        state.update({"version": SCHEMA_VERSION, "release": release, "since": self._since.isoformat(),
                      "pages_since": pages_since.isoformat(),
                      "last_render_at": iso(now), "last_render_seconds": round(seconds, 3),
                      "last_render_full": full, "last_error": None})
        if full:
            state["last_full_at"] = iso(now)
        self.site.write_state(state)
        if full:
            self.site.prune(keep_newest=KEEP_RELEASES)
        return RenderResult(full=full, pages=count.pages, written=out.written, sessions=count.sessions,
                            specs=count.specs, seconds=seconds, release=release)

    def record_failure(self, exc: BaseException) -> None:
        self.site.record_failure(f"{type(exc).__name__}: {exc}")

    def _page(self, template: str, root: str, **context: Any) -> bytes:
        assets = {name: root + path for name, (path, _) in self._assets.items()}
        html = self.env.get_template(template).render(root=root, asset=assets, **context)
        return html.encode()

    def _render_all(self, store: ReadStore, out: FullRelease | IncrementalRelease, count: _Counter,
                    changed: list[queries.SessionSummary], *, full: bool, now: datetime) -> None:
        for path, data in self._assets.values():
            if full or not out.has(path):
                out.write(path, data)
        if full:  # a linked (unchanged) session page keeps its runs' digests from before
            active = {s.id for s in changed if s.execution_state in ACTIVE_STATES}
            self._active_runs = {i: runs for i, runs in self._active_runs.items() if i in active}
        site_wide = self._read_site_wide(now, full=full)
        helpers = worker.processes() - 1 if full and len(changed) >= PARALLEL_MIN_SESSIONS else 0
        with ExitStack() as stack:
            pending = []
            if helpers and isinstance(out, FullRelease):
                # Big sites: other processes render shares of the session pages into the same
                # new release meanwhile (2 cores: ~1.8x faster). Each gets five sessions for
                # every three this process keeps, as this one also renders everything else.
                pattern = [0, 0, 0] + [w for w in range(1, helpers + 1) for _ in range(5)]
                shares: list[list[queries.SessionSummary]] = [[] for _ in range(helpers + 1)]
                for i, session in enumerate(changed):
                    shares[pattern[i % len(pattern)]].append(session)
                pending = [worker.start_share(stack, self.site, type(self).render_share,
                                              (self.settings, self.dsn, self.site.path, out.name, share,
                                               set(self._pages), self._window_start, out.previous,
                                               self._digests_of(share)))
                           for share in shares[1:]]
                changed = shares[0]
            spec_todo = self._render_sessions(store, out, count, changed, full=full)
            spec_list = queries.spec_ids(store) if full else sorted(spec_todo)
            for chunk in _chunks(spec_list, CHUNK):
                for history in queries.spec_histories(store, chunk, limit=SPEC_RUNS_LIMIT,
                                                         since=self._window_start, at_least=SPEC_RUNS_MIN):
                    self._spec_pages(out, history)
                    count.specs += 1
                    count.pages += 2
            wide = site_wide.result()
            count.pages += self._events_pages(out, wide.events, now)
            count.pages += self._alerts_page(out, wide.alerts, full=full)
            count.pages += self._archive_pages(store, out, changed, now, full=full)
            count.pages += self._overview(out, wide.overview, now)
            for helper in pending:
                sessions, active_runs, digests = worker.finish_share(helper)
                count.sessions += sessions
                count.pages += 2 * sessions
                out.written += 2 * sessions
                self._active_runs.update(active_runs)
                self._digests.update(digests)

    def _read_site_wide(self, now: datetime, *, full: bool) -> Future[_SiteWide]:
        """Starts reading the site-wide pages' data on the side connection, in a thread."""
        if self._side_pool is None:
            self._side_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render-site-wide")
        return self._side_pool.submit(self._site_wide, now, full=full)

    def _site_wide(self, now: datetime, *, full: bool) -> _SiteWide:
        """In the thread: the site-wide pages' reads, in three round trips (store.gather)."""
        store = self._connect_side()
        overview, events, alerts = store.run(gather([
            self._overview_data(store, now), self._events_data(store, now, full=full),
            queries.recent_alerts.plan(store, since=now - ALERTS_WINDOW, limit=ALERTS_PER_PAGE)]))
        return _SiteWide(overview=overview, events=events, alerts=alerts)

    @classmethod
    def render_share(cls, settings: Settings, dsn: str | None, site_dir: Path, release: str,
                     sessions: list[queries.SessionSummary], pages: set[uuid.UUID], window_start: datetime,
                     previous: Path | None,
                     digests: dict[str, str]) -> tuple[int, dict[uuid.UUID, dict[str, str]], dict[str, str]]:
        """In a helper process (worker.start_share): the pages of `sessions`, written into the
        release being built (`pages`: the sessions that have one, for links; unchanged ones
        linked from `previous` by their `digests`); how many, the spec-run digests of those
        still going, and the pages' digests."""
        renderer = cls(settings, dsn=dsn, site_dir=site_dir)
        renderer._pages.update(pages)
        renderer._window_start = window_start
        renderer._digests.update(digests)
        try:
            count = _Counter()
            renderer._render_sessions(renderer._connect(), FullRelease(renderer.site, release, previous=previous),
                                      count, sessions, full=True)
            return count.sessions, renderer._active_runs, renderer._digests_of(sessions)
        finally:
            renderer.close()

    def _render_sessions(self, store: ReadStore, out: FullRelease | IncrementalRelease, count: _Counter,
                         sessions: list[queries.SessionSummary], *, full: bool) -> set[str]:
        """Session pages; the specs whose runs changed in them (incremental renders)."""
        spec_todo: set[str] = set()
        for chunk in _chunks(sessions, CHUNK):
            previous = queries.previous_sessions(store, [s.id for s in chunk])
            digests = {s.id: self._session_digest(s, previous.get(s.id)) for s in chunk}
            todo = []
            for s in chunk:
                relpaths = (f"sessions/{s.id}.html", f"api/sessions/{s.id}.json")
                if self._digests.get(relpaths[0]) == digests[s.id] and (
                        isinstance(out, IncrementalRelease) or out.link(relpaths)):
                    count.sessions += 1
                    count.pages += 2
                else:
                    todo.append(s)
            if not todo:
                continue
            details = queries.session_details(store, todo, whole_timeline_max=WHOLE_TIMELINE_MAX,
                                              timeline_limit=TIMELINE_LIMIT)
            diffs = queries.diffs_against_previous(store, todo, runs_of={i: d.spec_runs for i, d in details.items()},
                                                   previous={s.id: previous[s.id] for s in todo if s.id in previous})
            for detail in details.values():
                self._session_pages(out, detail, diffs.get(detail.session.id))
                self._digests[f"sessions/{detail.session.id}.html"] = digests[detail.session.id]
                count.sessions += 1
                count.pages += 2
                if not full:
                    spec_todo |= self._changed_specs(detail)
                elif detail.session.execution_state in ACTIVE_STATES:
                    self._active_runs[detail.session.id] = _run_fingerprint(detail.spec_runs, detail.session.name)
        return spec_todo

    def _digests_of(self, sessions: list[queries.SessionSummary]) -> dict[str, str]:
        paths = {f"sessions/{s.id}.html" for s in sessions}
        return {p: d for p, d in self._digests.items() if p in paths}

    def _session_digest(self, session: queries.SessionSummary, baseline: queries.SessionSummary | None) -> str:
        """What a session page is rendered from, in short: the session's aggregate (recomputed,
        with a new updated_at, whenever one of its events arrives), its baseline's, whether the
        baseline has a page, and, for a session that began before the events window, the
        window (its first events go with the window's start)."""
        early = self._window_start is not None and session.start_time < self._window_start
        source = repr((session, baseline and (baseline.id, baseline.updated_at, baseline.id in self._pages),
                       self._window_start if early else None))
        return hashlib.sha1(source.encode()).hexdigest()

    def _unchanged(self, out: FullRelease | IncrementalRelease, relpaths: tuple[str, ...], source: bytes) -> bool:
        """Whether the published release has these pages from the same `source` (all that they
        are rendered from): a full rebuild links them, an incremental render keeps them.
        Otherwise the caller renders them, and their digest is noted now."""
        digest = hashlib.sha1(source).hexdigest()
        if self._digests.get(relpaths[0]) == digest:
            if isinstance(out, IncrementalRelease) or out.link(relpaths):
                return True
        self._digests[relpaths[0]] = digest
        return False

    def _changed_specs(self, detail: queries.SessionDetail) -> set[str]:
        session = detail.session
        digests = _run_fingerprint(detail.spec_runs, session.name)
        before = self._active_runs.pop(session.id, None)
        if session.execution_state in ACTIVE_STATES:
            self._active_runs[session.id] = digests
        if before is None:
            return set(digests)
        return {spec for spec, digest in digests.items() if before.get(spec) != digest} | (set(before) - set(digests))

    # Pages ------------------------------------------------------------------------------------

    def _session_pages(self, out: FullRelease | IncrementalRelease, detail: queries.SessionDetail,
                       diff: queries.SessionDiff | None) -> None:
        s = detail.session
        runs = detail.spec_runs[:SESSION_RUNS_LIMIT]
        complete = s.event_count <= WHOLE_TIMELINE_MAX and len(detail.timeline) < TIMELINE_LIMIT
        spec_pages = {r.spec_id for r in detail.spec_runs}
        out.write(f"sessions/{s.id}.html", self._page(
            "session.html", "../", title=s.label, session=s, month=s.start_time.astimezone(self.zone),
            runs=runs, more_runs=len(detail.spec_runs) - len(runs),
            timeline=detail.timeline, timeline_complete=complete,
            interventions=detail.interventions, gantt=charts.session_gantt(s, detail.spec_runs, detail.interventions),
            spec_pages=spec_pages, diff=diff, git=queries.GitTotals.of(detail.spec_runs)))
        out.write(f"api/sessions/{s.id}.json", dump_json(snapshot("session", None, {
            "session": s, "spec_runs": detail.spec_runs, "interventions": detail.interventions,
            "timeline_complete": complete,
            "timeline": [{**fields(e), "data": bounded_data(e.data)} for e in detail.timeline],
        })))

    def _archive_pages(self, store: ReadStore, out: FullRelease | IncrementalRelease,
                       changed: list[queries.SessionSummary], now: datetime, *, full: bool) -> int:
        """sessions/index.html (every month, with totals) and a page per local month listing
        its sessions: every month in a full render, else those the changed sessions started in,
        when one of them is new to its page or changed state, or LIST_REFRESH after the page
        was last written. (A session whose start moves to another month leaves the old page at
        the next full one.)"""
        if full:
            self._listed.clear()
            self._months_at.clear()
        todo_months = set()
        for s in changed:
            month = s.start_time.astimezone(self.zone).date().replace(day=1)
            if self._listed.get(s.id) != s.execution_state or now - self._months_at.get(month, NEVER) >= LIST_REFRESH:
                todo_months.add(month)
        if not (full or todo_months):
            return 0
        months = queries.session_months(store, self.zone)
        todo = [m.month for m in months] if full else sorted(todo_months)
        zone = str(self.zone)
        listed = Markup("Listed at {}. While sessions run, this page is rewritten when one starts or changes "
                        "state, and every {} minutes; a session's own page and the overview are current."
                        ).format(when(now), int(LIST_REFRESH.total_seconds() // 60))
        out.write("sessions/index.html", self._page(
            "archive.html", "../", title="Sessions", month=None, months=months, sessions=[], zone=zone,
            listed_note=listed))
        for month in todo:
            sessions = queries.sessions_of_month(store, month, self.zone)
            self._listed.update((s.id, s.execution_state) for s in sessions)
            self._months_at[month] = now
            out.write(f"sessions/{month:%Y-%m}.html", self._page(
                "archive.html", "../", title=f"Sessions of {month:%B %Y}", month=month, months=months,
                sessions=sessions, zone=zone, listed_note=listed))
            out.write(f"api/sessions/{month:%Y-%m}.json", dump_json(snapshot("sessions_of_month", None, {
                "month": month, "timezone": zone, "sessions": [
                    {**fields(s), "page": s.id in self._pages} for s in sessions]})))
        return 1 + 2 * len(todo)

    def _spec_pages(self, out: FullRelease | IncrementalRelease, history: queries.SpecHistory) -> None:
        name = page_name(history.spec_id)
        # The snapshot holds all the page is rendered from, so its bytes (and which sessions
        # have pages, for the links) are the pages' digest: cheaper than the history's repr.
        data = dump_json(snapshot("spec", None, {
            "spec_id": history.spec_id, "total_runs": history.total_runs, "total_failures": history.total_failures,
            "sessions": history.counts.as_json(), "runs": history.runs}))
        linked = bytes(r.session_id in self._pages for r in history.runs)
        if self._unchanged(out, (f"specs/{name}.html", f"api/specs/{name}.json"), data + linked):
            return
        durations = [r.duration_seconds for r in history.runs if r.status != "running" and r.duration_seconds is not None]
        stats = {
            "recent": Counts.tally(r.outcome for r in history.runs),
            "avg_duration": sum(durations) / len(durations) if durations else None,
        }
        out.write(f"specs/{name}.html", self._page(
            "spec.html", "../", title=history.spec_id, history=history, stats=stats,
            strip=charts.outcome_strip(history.runs)))
        out.write(f"api/specs/{name}.json", data)

    def _events_data(self, store: ReadStore, now: datetime, *, full: bool) -> Plan[_EventsData]:
        """events/index.html (every type, with counts) always; a type's page when its count
        since the anchor moved since the page was written (or the list of types changed).
        Runs in the site-wide thread (_site_wide), the only one that uses the events pages' state
        (_event_types, _types_at, _types_anchor, _type_counts, _before_anchor, _before_counted_at)."""
        everything = full or self._types_anchor is None
        anchor = now - LATE_EVENTS if everything else self._types_anchor
        recount = everything or now - self._before_counted_at >= LIST_REFRESH
        seen = yield from queries.event_types_seen.plan(store, now - EVENT_TYPES_WINDOW if recount else anchor,
                                                        anchor=anchor)
        if recount:
            self._before_anchor = {t.event_type: t.count - t.since_anchor for t in seen if t.count > t.since_anchor}
            self._before_counted_at = now
        recent = {t.event_type: t.since_anchor for t in seen}
        names = sorted(recent.keys() | self._before_anchor.keys())
        counts = {name: self._before_anchor.get(name, 0) + recent.get(name, 0) for name in names}
        if everything:
            self._types_anchor, self._type_counts = anchor, {}
        if everything or names != self._event_types:
            todo = names
        else:  # a type whose count since the anchor moved has new events
            todo = [name for name in names if recent.get(name, 0) != self._type_counts.get(name, 0)
                    and (counts[name] < BUSY_TYPE_EVENTS or now - self._types_at.get(name, NEVER) >= LIST_REFRESH)]
        self._event_types = names
        self._types_at.update((t, now) for t in todo)
        self._type_counts.update((name, recent.get(name, 0)) for name in todo)
        pages: list[str | None] = [None, *todo]
        events = yield from gather([queries.recent_events.plan(store, event_type=event_type, limit=EVENTS_PER_PAGE)
                                    for event_type in pages])
        return _EventsData(types=list(counts.items()), pages=list(zip(pages, events)))

    def _events_pages(self, out: FullRelease | IncrementalRelease, data: _EventsData, now: datetime) -> int:
        pages = 0
        for event_type, events in data.pages:
            if event_type is None:
                html = self._page("events.html", "../", title="Events", events=events, types=data.types,
                                  current_type=None, generated_at=now)
                out.write("events/index.html", html)
                out.write("api/events.json", dump_json(snapshot("events", now, {"events": [
                    {**{k: v for k, v in fields(e).items() if k != "payload"}, "data": bounded_data(e.data)}
                    for e in events]})))
                pages += 2
            else:  # no render time and no counts on a type's page: unchanged, it keeps its bytes
                out.write(f"events/{page_name(event_type)}.html", self._page(
                    "events.html", "../", title=f"Events: {event_type}", events=events,
                    types=[(t, None) for t, _ in data.types], current_type=event_type))
                pages += 1
        return pages

    def _alerts_page(self, out: FullRelease | IncrementalRelease, alerts: list[queries.AlertRow], *,
                     full: bool) -> int:
        """alerts.html and api/alerts.json: what fired in the last ALERTS_WINDOW, and its delivery;
        rewritten only when an alert or a delivery changed (the page carries no render time)."""
        digest = hashlib.sha256(dump_json([fields(a) for a in alerts])).hexdigest()
        if not full and digest == self._alerts_digest and out.has("alerts.html"):
            return 0
        self._alerts_digest = digest
        out.write("alerts.html", self._page("alerts.html", "", title="Alerts", alerts=alerts,
                                            destinations=bool(self.settings.alerts_urls or self.settings.alerts_command)))
        out.write("api/alerts.json", dump_json(snapshot("alerts", None, {"alerts": [fields(a) for a in alerts]})))
        return 2

    def _overview_data(self, store: ReadStore, now: datetime) -> Plan[_OverviewData]:
        zone = self.zone
        night_window = queries.night_window(now, zone, start=dtime.fromisoformat(self.settings.reports_night_start),
                                            end=dtime.fromisoformat(self.settings.reports_night_end))
        events_until = datetime.fromtimestamp((now.timestamp() // 300 + 1) * 300, timezone.utc)
        events_since = events_until - timedelta(hours=24)
        (status, night, compare, spend, top_failing, recent_failures, recent_sessions, rejects,
         event_counts) = yield from gather([
            queries.status.plan(store, now),
            queries.night_summary.plan(store, night_window),
            queries.compare_weeks.plan(store, now, zone),
            queries.spend.plan(store, now, zone, days=DAYS_CHARTED),
            queries.top_failing_specs.plan(store, now - timedelta(days=7), limit=10),
            queries.recent_failed_runs.plan(store, limit=10),
            queries.sessions_since.plan(store, now - timedelta(days=RECENT_SESSIONS_DAYS), limit=30),
            queries.recent_rejects.plan(store, limit=5),
            queries.event_counts.plan(store, events_since)])
        return _OverviewData(status=status, night=night, compare=compare, spend=spend, top_failing=top_failing,
                             recent_failures=recent_failures, recent_sessions=recent_sessions, rejects=rejects,
                             events_since=events_since, events_until=events_until, event_counts=event_counts)

    def _overview(self, out: FullRelease | IncrementalRelease, data: _OverviewData, now: datetime) -> int:
        zone = self.zone
        status, night, compare, spend = data.status, data.night, data.compare, data.spend
        today = now.astimezone(zone).date()
        days = [today - timedelta(days=n) for n in range(DAYS_CHARTED - 1, -1, -1)]
        running = [s for s in status.active if s.execution_state == "running"]
        stalled = [s for s in status.active if s.execution_state == "stalled"]
        # Sessions waiting at a prompt in the agent; those waiting on a request are in its table.
        waiting_sessions = [s for s in status.active
                            if s.execution_state == "waiting_for_human" and not s.interventions_pending]
        stuck = [s for s in status.active if s.loop_findings]
        live = live_numbers(status, night, compare, spend)
        charts_ = {
            "spend": charts.spend_per_day(spend.per_day, days),
            "success": charts.success_per_day(spend.per_day, days),
            "events": charts.events_per_bucket(data.event_counts, data.events_since, data.events_until),
        }
        html = self._page(
            "overview.html", "", title="Overview", now=now, generated_at=now, zone=str(zone), status=status,
            running=running, stalled=stalled, waiting_sessions=waiting_sessions, stuck=stuck, night=night,
            night_rows=NIGHT_ROWS_SHOWN, compare=compare, spend=spend, top_failing=data.top_failing,
            recent_failures=data.recent_failures,
            recent_sessions=data.recent_sessions, rejects=data.rejects, live=live,
            charts=charts_, stale_hosts=[h for h in status.hosts if (now - h.last_seen).total_seconds() > 60])
        status_snapshot = snapshot("status", now, {
            "timezone": str(zone), "live": live,
            "active": status.active, "pending_interventions": status.pending_interventions,
            "night": {"since": iso(night.window.since), "until": iso(night.window.until), "sessions": night.sessions,
                      "outcomes": night.outcomes.as_json(), "still_failing": night.still_failing,
                      "fixed_on_retry": night.fixed_on_retry, "retrying": night.retrying, "git": night.git},
            "week": {"this_week": {"since": iso(compare.this_week.since), "until": iso(compare.this_week.until),
                                   "outcomes": compare.current.as_json()},
                     "last_week": {"since": iso(compare.last_week.since), "until": iso(compare.last_week.until),
                                   "outcomes": compare.previous.as_json()}},
            "spend": {"today": spend.today.as_json(), "week": spend.week.as_json(),
                      "month": spend.month.as_json(), "per_day": spend.per_day},
            "top_failing_specs": data.top_failing, "recent_failures": data.recent_failures,
            "recent_sessions": data.recent_sessions, "usage": status.usage,
            "monitor": {"hosts": status.hosts, "last_backup": status.last_backup, "last_prune": status.last_prune,
                        "rejects_last_24h": status.rejects_last_24h, "recent_rejects": data.rejects,
                        "reads": status.reads},
            "events_per_5min": [{"bucket": t, "count": n} for t, n in data.event_counts],
        })
        out.write("index.html", html)
        out.write("api/status.json", dump_json(status_snapshot))
        return 2


def live_numbers(status: queries.Status, night: queries.NightSummary, compare: queries.Comparison,
                 spend: queries.Spend) -> dict[str, str]:
    """The overview's headline numbers, formatted as shown; the page's script copies them from
    api/status.json into the elements marked `data-live="<key>"`."""
    stalled = sum(1 for s in status.active if s.execution_state == "stalled")
    digest_source = "|".join(sorted(f"{s.id}:{s.execution_state}:{s.current_spec}" for s in status.active)
                             + sorted(str(i.event_id) for i in status.pending_interventions))
    o = night.outcomes
    return {
        "active": str(len(status.active)),
        "stalled": str(stalled),
        "waiting": str(len(status.pending_interventions)),
        "night_success": percent(o.counts.success_rate),
        "night_completed": str(o.counts.completed),
        "night_fixed": str(o.counts.fixed_on_retry),
        "night_failed": str(o.counts.failed),
        "night_timed_out": str(o.counts.timed_out),
        "night_cost": money(o.cost_usd),
        "week_success": percent(compare.current.counts.success_rate),
        "last_week_success": percent(compare.previous.counts.success_rate),
        "spend_today": money(spend.today.cost_usd),
        "spend_week": money(spend.week.cost_usd),
        "spend_month": money(spend.month.cost_usd),
        "rejects_24h": str(status.rejects_last_24h),
        "spool_backlog": str(sum(h.spool_backlog for h in status.hosts)),
        "ingest_rate": f"{sum(h.ingest_rate_per_s for h in status.hosts):.1f}",
        "digest": hashlib.sha1(digest_source.encode()).hexdigest()[:16],
    }


# Entry point ------------------------------------------------------------------------------------


def render_once(settings: Settings, *, dsn: str | None, full: bool = False,
                site_dir: Path | None = None, now: datetime | None = None) -> RenderResult:
    """`ralph-monitor render [--full]`; raises RalphMonitorError (RenderFailed) for what an operator can fix."""
    site = site_dir or settings.site_dir
    if os.geteuid() == 0 and site.exists() and site.stat().st_uid != 0:
        try:
            owner = pwd.getpwuid(site.stat().st_uid).pw_name
        except KeyError:
            owner = str(site.stat().st_uid)
        raise RalphMonitorError(f"{site} belongs to {owner}, and files written by root would be out of the "
                                f"daemon's reach: run `sudo -u {owner} ralph-monitor render`")
    renderer = SiteRenderer(settings, dsn=dsn, site_dir=site)
    try:
        return renderer.render(full=full, now=now)
    except OSError as exc:
        raise RenderFailed(f"could not write the dashboard in {site}: {exc}") from exc
    finally:
        renderer.close()


