"""The static dashboard: HTML pages and JSON snapshots rendered from the query layer into
`[paths] site_dir`, which nginx serves read-only.

Layout of the site dir (nginx's root is `<site_dir>/current`)::

    current -> releases/<name>     the published site (a symlink, flipped atomically)
    releases/<name>/               index.html, sessions/<id>.html, specs/<spec>.html,
                                   events/..., api/*.json, static/<asset>.<hash>.<ext>
    render-state.json              when the last render ran, how long it took, the last error
    .lock                          one renderer at a time (daemon or `ralph-monitor render`)

Publishing never exposes a half-written file. A full rebuild renders a new release
directory and flips `current` to it (the previous release stays for a while, for readers
that resolved the old link). An incremental render renders the changed pages in memory
first, then replaces each changed file by rename, pages before the pages linking to them
(sessions and specs, then the events pages, then the overview and api/status.json). Files
whose bytes did not change are left alone, so their ETag stays and nginx can answer 304.
Files are 0644 and directories 0755 whatever the umask (the service runs with UMask=0027).

Incremental: only the sessions whose aggregate changed since the previous render (by the
database's clock, with an overlap for transactions in flight), the specs whose runs changed
in them, the events pages and the overview are rendered. A full rebuild runs at start-up,
every FULL_EVERY_S, and on `ralph-monitor render --full`; on a big site it spreads the session
pages over helper processes.

In the daemon (SiteService) renders run in a long-lived child process (RenderProcess): every
[schedule] render_interval_s, and render_debounce_s after the aggregates changed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import os
import pickle
import pwd
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import date, datetime, time as dtime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from markupsafe import Markup, escape

from ralph_monitor import __version__, charts, queries
from ralph_monitor.config import Settings, report_zone
from ralph_monitor.errors import RalphMonitorError
from ralph_monitor.logs import setup_logging
from ralph_monitor.resources import resource_dir
from ralph_monitor.store import ReadStore, open_read_store
from ralph_monitor.textfmt import duration, json_default, money, percent, shorten

if TYPE_CHECKING:
    from ralph_monitor.daemon import DaemonContext

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Version of the JSON snapshots' shape (README, "Dashboard"); bumped on incompatible changes."""
FILE_MODE = 0o644
DIR_MODE = 0o755
KEEP_RELEASES = 2
"""The published release and the one before it (a reader may still be opening its files)."""
OVERLAP = timedelta(seconds=30)
"""A session recomputed in a transaction that began before the previous render but committed
after it carries an `updated_at` before that render; look back this far to catch it."""
FULL_EVERY_S = 6 * 3600
"""Also rebuild everything this often (drops pages of sessions pruned by retention)."""
CHUNK = 200
"""Sessions or specs read from the database per round of queries."""
INCREMENTAL_MAX_SESSIONS = 300
"""An incremental render holds its pages in memory; with more changed sessions than this
(e.g. after rebuild-aggregates) a full rebuild, which streams to disk, is cheaper anyway."""
PARALLEL_MIN_SESSIONS = 400
"""A full rebuild of at least this many sessions spreads them over several processes."""
MAX_PROCESSES = 4
HELPER_TIMEOUT_S = 600
RENDER_TIMEOUT_S = 900
"""A render process that has not answered after this long is taken for hung and replaced."""
WHOLE_TIMELINE_MAX = 500
"""A session with at most this many events lists every one; bigger ones list all but
heartbeats and tool-level hook events (which the CLI still lists)."""
TIMELINE_LIMIT = 2000
SESSION_RUNS_LIMIT = 1000
SPEC_RUNS_LIMIT = 100
EVENTS_PER_PAGE = 100
EVENT_TYPES_WINDOW = timedelta(days=7)
LATE_EVENTS = timedelta(hours=6)
"""An incremental render notices new events of a type only if they happened at most this long
before the previous render; later ones (a long spool replay) wait for the next full rebuild,
which comes at least as often (FULL_EVERY_S)."""
RECENT_SESSIONS_DAYS = 7
DAYS_CHARTED = 30
STALE_AFTER_S = 180
POLL_INTERVAL_S = 15
JSON_DATA_MAX = 4096
"""Event data larger than this (as JSON) is replaced by an excerpt in the JSON snapshots."""
ASSETS = ("style.css", "app.js", "favicon.svg")
TEMPLATES = ("overview.html", "session.html", "spec.html", "events.html", "archive.html")
JOB_NAME = "render-site"
RENDER_DUTY = 10
"""After new events, wait at least this many times the last render's duration before the next."""
ACTIVE_STATES = ("running", "stalled")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")


# Names and formatting -------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def page_name(key: str) -> str:
    """A file name (without extension) for an agent-chosen key such as a spec id or event type.

    Plain keys keep their name (`CR-01`); anything else (slashes, dots first, spaces,
    non-ASCII, very long) becomes a cleaned prefix plus `~` and a hash, and `~` never occurs
    in a plain name, so two keys never share a file."""
    if _SAFE_NAME.fullmatch(key) and ".." not in key:
        return key
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", key).strip("-")[:40]
    return f"{cleaned}~{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else _utc(moment).isoformat().replace("+00:00", "Z")


def when(moment: datetime | None) -> Markup:
    """A <time> element in UTC; the page's script shows it in the viewer's time zone."""
    if moment is None:
        return Markup("–")
    iso = _iso(moment)  # no agent-supplied text in here: nothing to escape
    return Markup(f'<time datetime="{iso}">{iso[:10]} {iso[11:16]} UTC</time>')


def error_html(text: str | None, width: int = 240, limit: int = 4000) -> Markup:
    """An error message: short ones inline, long ones folded (first `width` characters shown,
    at most `limit` inside). Agent text: escaped."""
    if not text:
        return Markup("")
    if len(text) <= width:
        return Markup(f'<span class="err">{escape(text)}</span>')
    rest = (f"\n… ({len(text):,} characters in all; ralph-query shows the rest)" if len(text) > limit else "")
    return Markup(f'<details class="err"><summary>{escape(shorten(text, width))}</summary>'
                  f"<pre>{escape(text[:limit])}{rest}</pre></details>")


def spec_link(root: str, spec_id: str) -> Markup:
    return Markup(f'<a class="spec" href="{root}specs/{escape(page_name(spec_id))}.html">'
                  f"{escape(shorten(spec_id, 48))}</a>")


def session_link(root: str, session_id: uuid.UUID, name: str | None) -> Markup:
    label = escape(shorten(name or str(session_id)[:8], 48))
    return Markup(f'<a href="{root}sessions/{session_id}.html">{label}</a>')


def status_badge(status: str) -> Markup:
    return Markup(f'<span class="status {charts.STATUS_CLASS.get(status, "muted")}">'
                  f"{escape(charts.STATUS_WORD.get(status, status))}</span>")


def run_rows(runs: list[queries.SpecRunRow], root: str, *, by: str) -> Markup:
    """The <tr> rows of a table of spec runs: of one session (`by="session"`: the spec is the
    link) or of one spec (`by="spec"`: the session is). A full rebuild renders ~200,000 of these,
    so this is plain Python rather than a template loop (5-10x faster); agent text is escaped."""
    out = []
    for r in runs:
        bad = ' class="badrow"' if r.status in ("failed", "timeout") else ""
        status, started = status_badge(r.status), when(r.start_time or r.end_time)
        if by == "session":
            lead = f'<td>{spec_link(root, r.spec_id)}</td><td class="n">{r.attempt}</td><td>{status}</td><td>{started}</td>'
        else:
            lead = (f'<td>{started}</td><td>{session_link(root, r.session_id, r.session_name)}</td>'
                    f'<td class="n">{r.attempt}</td><td>{status}</td>')
        out.append(f"<tr{bad}>{lead}<td>{duration(r.duration_seconds)}</td><td class=\"n\">{number(r.tokens_used)}</td>"
                   f'<td class="n">{money(r.cost_usd)}</td><td class="msg">{error_html(r.error_message)}</td></tr>\n')
    return Markup("".join(out))


def number(value: int | float | None) -> str:
    return "–" if value is None else f"{value:,}"


def data_summary(data: Any, width: int = 160) -> str:
    """One line about an event's data: the fields people look for first, else compact JSON."""
    if not isinstance(data, dict) or not data:
        return "" if data in (None, {}) else shorten(json.dumps(data, ensure_ascii=False, default=str), width)
    keys = ("error", "message", "reason", "tool_name", "status", "name", "title", "tokens_used", "cost_usd")
    picked = [f"{k}: {data[k]}" if k not in ("error", "message") else str(data[k]) for k in keys if k in data]
    text = " · ".join(picked) if picked else json.dumps(data, ensure_ascii=False, default=str)
    return shorten(text, width)


def _bounded_data(data: Any) -> Any:
    text = json.dumps(data, ensure_ascii=False, default=str)
    if len(text) <= JSON_DATA_MAX:
        return data
    return {"_truncated": True, "json_chars": len(text), "excerpt": text[:1000]}


def _outcomes_json(o: queries.Outcomes) -> dict[str, Any]:
    return {**_fields(o), "finished": o.finished, "success_rate": o.success_rate}


def _fields(value: Any) -> dict[str, Any]:
    """A dataclass's fields, shallow (dataclasses.asdict deep-copies every value: far slower).
    The query layer's dataclasses are plain (no slots), so their __dict__ is exactly that."""
    return dict(value.__dict__)


_JSON_TYPES: dict[type, Any] = {datetime: _iso, date: date.isoformat, uuid.UUID: str,
                                Decimal: float}


def _json_default(value: Any) -> Any:
    """textfmt.json_default's encoding, by type first (a full rebuild encodes ~1 M values)."""
    convert = _JSON_TYPES.get(type(value))
    if convert is not None:
        return convert(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value.__dict__  # read, never changed, by the encoder
    return json_default(value)


def _dump(value: Any) -> bytes:
    return (json.dumps(value, default=_json_default, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _snapshot(kind: str, generated_at: datetime | None, body: dict[str, Any]) -> dict[str, Any]:
    """The envelope of every JSON file. Pages rendered only when their data changed (sessions,
    specs) carry no `generated_at`, so an unchanged page keeps its bytes (and its ETag)."""
    head: dict[str, Any] = {"version": SCHEMA_VERSION, "kind": kind}
    if generated_at is not None:
        head["generated_at"] = _iso(generated_at)
    return {**head, **body}


# Publishing ------------------------------------------------------------------------------------


def _mkdirs(path: Path, made: set[Path]) -> None:
    """Create `path` and missing parents with mode 0755 (not the umask's)."""
    if path in made or path.is_dir():
        made.add(path)
        return
    _mkdirs(path.parent, made)
    with suppress(FileExistsError):
        path.mkdir()
    path.chmod(DIR_MODE)
    made.add(path)


def _umask() -> int:
    """This process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o777  # unknown: always chmod


def _needs_chmod() -> bool:
    """Whether the umask takes bits of 0644 away (systemd's UMask=0027 does)."""
    return bool(_umask() & FILE_MODE)


def _write_file(path: Path, data: bytes, *, chmod: bool = True) -> None:
    """Write a new file with mode 0644 (the caller makes it visible by rename, or it sits in
    a release nobody serves yet). `chmod=False` when the umask is known to leave 0644 alone."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        if chmod:
            os.fchmod(fd, FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _replace_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    _write_file(tmp, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise


class FullRelease:
    """A new release directory, written file by file; published by flipping `current`."""

    def __init__(self, site: SiteDir, name: str | None = None) -> None:
        """A new release, or (`name`) one being written by another process too."""
        # Names sort by age (microseconds), which prune() relies on.
        self.name = name or f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S.%f}-{secrets.token_hex(2)}"
        self.root = site.releases / self.name
        self._site = site
        self._made: set[Path] = set()
        self._chmod = _needs_chmod()
        self.written = 0
        _mkdirs(self.root, self._made)

    def write(self, relpath: str, data: bytes) -> None:
        path = self.root / relpath
        _mkdirs(path.parent, self._made)
        _write_file(path, data, chmod=self._chmod)
        self.written += 1

    def has(self, relpath: str) -> bool:
        return (self.root / relpath).exists()

    def commit(self) -> None:
        self._site.flip(self.name)  # old releases are pruned after the render (SiteDir.prune)

    def abort(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class IncrementalRelease:
    """Changed files of the published release, kept in memory until `commit` renames them
    into place in the order they were written."""

    def __init__(self, site: SiteDir, root: Path) -> None:
        self.root = root
        self._files: dict[str, bytes] = {}
        self.written = 0

    def write(self, relpath: str, data: bytes) -> None:
        self._files[relpath] = data

    def has(self, relpath: str) -> bool:
        return relpath in self._files or (self.root / relpath).exists()

    def commit(self) -> None:
        made: set[Path] = set()
        for relpath, data in self._files.items():
            path = self.root / relpath
            try:
                if path.read_bytes() == data:
                    continue
            except FileNotFoundError:
                _mkdirs(path.parent, made)
            _replace_file(path, data)
            self.written += 1

    def abort(self) -> None:
        self._files.clear()


class SiteDir:
    """The site directory: releases, the `current` link, the render state and the lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.releases = path / "releases"
        self.current = path / "current"
        self.state_path = path / "render-state.json"

    def prepare(self) -> None:
        _mkdirs(self.releases, set())
        self.path.chmod(DIR_MODE)

    @contextmanager
    def lock(self) -> Iterator[None]:
        self.prepare()
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def published(self) -> Path | None:
        """The directory `current` points to, if there is one."""
        try:
            target = os.readlink(self.current)
        except OSError:
            return None
        path = self.path / target
        return path if path.is_dir() else None

    def flip(self, name: str) -> None:
        link = self.path / f".current.{secrets.token_hex(4)}"
        os.symlink(f"releases/{name}", link)
        try:
            os.replace(link, self.current)
        except BaseException:
            with suppress(OSError):
                link.unlink()
            raise

    def prune(self, *, keep_newest: int) -> None:
        """Remove old releases, never the published one."""
        published = self.published()
        releases = sorted((p for p in self.releases.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True)
        keep = {p for p in releases[:keep_newest]} | ({published} if published else set())
        for path in releases:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def write_state(self, state: dict[str, Any]) -> None:
        _replace_file(self.state_path, _dump(state))

    def record_failure(self, message: str) -> None:
        """Note a failed render in render-state.json (for `doctor` and people), best effort."""
        with suppress(Exception), self.lock():
            state = self.read_state()
            state["last_error"] = {"at": _iso(datetime.now(timezone.utc)), "message": message}
            self.write_state(state)


# Rendering ---------------------------------------------------------------------------------------


@dataclass
class RenderResult:
    full: bool
    pages: int
    """Files rendered (HTML and JSON)."""
    written: int
    """Files that changed on disk (a full rebuild writes all of them)."""
    sessions: int
    specs: int
    seconds: float
    release: str


@dataclass
class _Counter:
    pages: int = 0
    sessions: int = 0
    specs: int = 0


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resource_dir("site_templates"))),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters.update(money=money, percent=percent, duration=duration, shorten=shorten, when=when,
                       number=number, summary=data_summary, page_name=page_name, iso=_iso)
    env.globals.update(version=__version__, error_html=error_html, run_rows=run_rows, spec_link=spec_link,
                       session_link=session_link, status_badge=status_badge, status_word=charts.STATUS_WORD,
                       stale_after_s=STALE_AFTER_S, poll_interval_s=POLL_INTERVAL_S)
    return env


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _run_fingerprint(runs: list[queries.SpecRunRow], session_name: str | None) -> dict[str, str]:
    """Per spec: a digest of what its page shows about these runs."""
    by_spec: dict[str, list[str]] = {}
    for r in runs:
        by_spec.setdefault(r.spec_id, []).append(repr((r.attempt, r.start_time, r.end_time, r.status, r.tokens_used,
                                                        r.cost_usd, r.error_message, session_name)))
    return {spec: hashlib.sha1("|".join(rows).encode()).hexdigest() for spec, rows in by_spec.items()}


class SiteRenderer:
    """Renders the site from the database. Blocking: the daemon runs it in its render process
    (RenderProcess), `ralph-monitor render` in its own."""

    def __init__(self, settings: Settings, *, dsn: str | None = None, site_dir: Path | None = None) -> None:
        self.settings = settings
        self.dsn = dsn
        self.site = SiteDir(site_dir or settings.site_dir)
        self.zone = report_zone(settings.reports_timezone)
        self.env = _environment()
        self._stack: ExitStack | None = None
        self._store: ReadStore | None = None
        self.overlap = OVERLAP
        self._since: datetime | None = None
        self._event_types: list[str] = []
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
        if self._stack is not None:
            with suppress(Exception):
                self._stack.close()
        self._stack = self._store = None

    def _connect(self) -> ReadStore:
        if self._store is None:
            stack = ExitStack()
            self._store = stack.enter_context(open_read_store(self.settings, dsn=self.dsn))
            self._stack = stack
        return self._store

    # ------------------------------------------------------------------------------------

    def render(self, *, full: bool = False, now: datetime | None = None) -> RenderResult:
        """Render and publish; raises on failure (the published site is then untouched)."""
        started = time.monotonic()
        try:
            with self.site.lock():
                return self._render_locked(full=full, now=now, started=started)
        except BaseException:
            self.close()  # reconnect next time
            raise

    def _render_locked(self, *, full: bool, now: datetime | None, started: float) -> RenderResult:
        published = self.site.published()
        if published is None:
            full = True
        if not full and self._since is None:  # a new process: continue from the last render's state
            state = self.site.read_state()
            if published is not None and state.get("release") == published.name and state.get("since"):
                self._since = datetime.fromisoformat(state["since"])
            else:
                full = True
        store = self._connect()
        db_now = queries.database_now(store)
        now = now or datetime.now(timezone.utc)
        changed = queries.sessions_changed_since(store, None if full else self._since)
        if len(changed) > INCREMENTAL_MAX_SESSIONS:
            full = True  # e.g. after rebuild-aggregates: stream to a new release, not via memory
            changed = queries.sessions_changed_since(store, None)
        out: FullRelease | IncrementalRelease = (FullRelease(self.site) if full or published is None
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
        seconds = time.monotonic() - started
        state = self.site.read_state()
        state.update({"version": SCHEMA_VERSION, "release": release, "since": self._since.isoformat(),
                      "last_render_at": _iso(now), "last_render_seconds": round(seconds, 3),
                      "last_render_full": full, "last_error": None})
        if full:
            state["last_full_at"] = _iso(now)
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
        if full:
            self._active_runs.clear()
        helpers = _processes() - 1 if full and len(changed) >= PARALLEL_MIN_SESSIONS else 0
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
                pending = [_start_share(stack, self.site,
                                        (self.settings, self.dsn, self.site.path, out.name, share, now))
                           for share in shares[1:]]
                changed = shares[0]
            spec_todo = self._render_sessions(store, out, count, changed, full=full, now=now)
            spec_list = queries.spec_ids(store) if full else sorted(spec_todo)
            for chunk in _chunks(spec_list, CHUNK):
                for history in queries.spec_histories(store, chunk, limit=SPEC_RUNS_LIMIT):
                    self._spec_pages(out, history)
                    count.specs += 1
                    count.pages += 2
            count.pages += self._events_pages(store, out, now, full=full)
            count.pages += self._archive_pages(store, out, changed, full=full)
            count.pages += self._overview(store, out, now)
            for helper in pending:
                sessions, active_runs = _finish_share(helper)
                count.sessions += sessions
                count.pages += 2 * sessions
                out.written += 2 * sessions
                self._active_runs.update(active_runs)

    def _render_sessions(self, store: ReadStore, out: FullRelease | IncrementalRelease, count: _Counter,
                         sessions: list[queries.SessionSummary], *, full: bool, now: datetime) -> set[str]:
        """Session pages; the specs whose runs changed in them (incremental renders)."""
        spec_todo: set[str] = set()
        for chunk in _chunks(sessions, CHUNK):
            details = queries.session_details(store, chunk, whole_timeline_max=WHOLE_TIMELINE_MAX,
                                              timeline_limit=TIMELINE_LIMIT)
            for detail in details.values():
                self._session_pages(out, detail, now)
                count.sessions += 1
                count.pages += 2
                if not full:
                    spec_todo |= self._changed_specs(detail)
                elif detail.session.execution_state in ACTIVE_STATES:
                    self._active_runs[detail.session.id] = _run_fingerprint(detail.spec_runs, detail.session.name)
        return spec_todo

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
                       now: datetime) -> None:
        s = detail.session
        runs = detail.spec_runs[:SESSION_RUNS_LIMIT]
        complete = s.event_count <= WHOLE_TIMELINE_MAX and len(detail.timeline) < TIMELINE_LIMIT
        spec_pages = {r.spec_id for r in detail.spec_runs}
        out.write(f"sessions/{s.id}.html", self._page(
            "session.html", "../", title=s.label, session=s, month=s.start_time.astimezone(self.zone),
            runs=runs, more_runs=len(detail.spec_runs) - len(runs),
            timeline=detail.timeline, timeline_complete=complete,
            interventions=detail.interventions, gantt=charts.session_gantt(s, detail.spec_runs, detail.interventions),
            spec_pages=spec_pages))
        out.write(f"api/sessions/{s.id}.json", _dump(_snapshot("session", None, {
            "session": s, "spec_runs": detail.spec_runs, "interventions": detail.interventions,
            "timeline_complete": complete,
            "timeline": [{**_fields(e), "data": _bounded_data(e.data)} for e in detail.timeline],
        })))

    def _archive_pages(self, store: ReadStore, out: FullRelease | IncrementalRelease,
                       changed: list[queries.SessionSummary], *, full: bool) -> int:
        """sessions/index.html (every month, with totals) and a page per local month listing
        its sessions: every month in a full render, else those the changed sessions started in.
        (A session whose start moves to another month leaves the old page at the next full one.)"""
        if not (full or changed):
            return 0
        months = queries.session_months(store, self.zone)
        if full:
            todo = [m.month for m in months]
        else:
            todo = sorted({s.start_time.astimezone(self.zone).date().replace(day=1) for s in changed})
        zone = str(self.zone)
        out.write("sessions/index.html", self._page(
            "archive.html", "../", title="Sessions", month=None, months=months, sessions=[], zone=zone))
        for month in todo:
            out.write(f"sessions/{month:%Y-%m}.html", self._page(
                "archive.html", "../", title=f"Sessions of {month:%B %Y}", month=month, months=months,
                sessions=queries.sessions_of_month(store, month, self.zone), zone=zone))
        return 1 + len(todo)

    def _spec_pages(self, out: FullRelease | IncrementalRelease, history: queries.SpecHistory) -> None:
        name = page_name(history.spec_id)
        finished = [r for r in history.runs if r.status != "running"]
        completed = sum(1 for r in finished if r.status == "completed")
        durations = [r.duration_seconds for r in finished if r.duration_seconds is not None]
        stats = {
            "recent_rate": completed / len(finished) if finished else None,
            "recent_finished": len(finished),
            "avg_duration": sum(durations) / len(durations) if durations else None,
            "total_rate": 1 - history.total_failures / history.total_runs if history.total_runs else None,
        }
        out.write(f"specs/{name}.html", self._page(
            "spec.html", "../", title=history.spec_id, history=history, stats=stats,
            strip=charts.outcome_strip(history.runs)))
        out.write(f"api/specs/{name}.json", _dump(_snapshot("spec", None, {
            "spec_id": history.spec_id, "total_runs": history.total_runs, "total_failures": history.total_failures,
            "runs": history.runs})))

    def _events_pages(self, store: ReadStore, out: FullRelease | IncrementalRelease, now: datetime, *,
                      full: bool) -> int:
        """events/index.html (every type, with counts) always; a type's page when events of
        that type were stored since the last render (or the list of types changed)."""
        types = queries.event_types_seen(store, now - EVENT_TYPES_WINDOW)
        names = [t for t, _ in types]
        if full or self._since is None or names != self._event_types:
            todo = names
        else:
            fresh = queries.event_types_created_since(store, self._since, happened_after=self._since - LATE_EVENTS)
            todo = [t for t in names if t in fresh]
        self._event_types = names
        pages = 0
        for event_type in [None, *todo]:
            events = queries.recent_events(store, event_type=event_type, limit=EVENTS_PER_PAGE)
            if event_type is None:
                html = self._page("events.html", "../", title="Events", events=events, types=types,
                                  current_type=None, generated_at=now)
                out.write("events/index.html", html)
                out.write("api/events.json", _dump(_snapshot("events", now, {"events": [
                    {**{k: v for k, v in _fields(e).items() if k != "payload"}, "data": _bounded_data(e.data)}
                    for e in events]})))
                pages += 2
            else:  # no render time and no counts on a type's page: unchanged, it keeps its bytes
                out.write(f"events/{page_name(event_type)}.html", self._page(
                    "events.html", "../", title=f"Events: {event_type}", events=events,
                    types=[(t, None) for t in names], current_type=event_type))
                pages += 1
        return pages

    def _overview(self, store: ReadStore, out: FullRelease | IncrementalRelease, now: datetime) -> int:
        zone = self.zone
        status = queries.status(store, now)
        night_window = queries.night_window(now, zone, start=dtime.fromisoformat(self.settings.reports_night_start),
                                            end=dtime.fromisoformat(self.settings.reports_night_end))
        night = queries.night_summary(store, night_window)
        compare = queries.compare_weeks(store, now, zone)
        spend = queries.spend(store, now, zone, days=DAYS_CHARTED)
        top_failing = queries.top_failing_specs(store, now - timedelta(days=7), limit=10)
        recent_failures = queries.recent_failed_runs(store, limit=10)
        recent_sessions = queries.sessions_since(store, now - timedelta(days=RECENT_SESSIONS_DAYS), limit=30)
        rejects = queries.recent_rejects(store, limit=5)
        events_until = datetime.fromtimestamp((now.timestamp() // 300 + 1) * 300, timezone.utc)
        events_since = events_until - timedelta(hours=24)
        event_counts = queries.event_counts(store, events_since)
        today = now.astimezone(zone).date()
        days = [today - timedelta(days=n) for n in range(DAYS_CHARTED - 1, -1, -1)]
        running = [s for s in status.active if s.execution_state == "running"]
        stalled = [s for s in status.active if s.execution_state == "stalled"]
        live = live_numbers(status, night, compare, spend)
        charts_ = {
            "spend": charts.spend_per_day(spend.per_day, days),
            "success": charts.success_per_day(spend.per_day, days),
            "events": charts.events_per_bucket(event_counts, events_since, events_until),
        }
        html = self._page(
            "overview.html", "", title="Overview", now=now, generated_at=now, zone=str(zone), status=status,
            running=running, stalled=stalled, night=night, compare=compare, spend=spend, top_failing=top_failing,
            recent_failures=recent_failures, recent_sessions=recent_sessions, rejects=rejects, live=live,
            charts=charts_, stale_hosts=[h for h in status.hosts if (now - h.last_seen).total_seconds() > 60])
        snapshot = _snapshot("status", now, {
            "timezone": str(zone), "live": live,
            "active": status.active, "pending_interventions": status.pending_interventions,
            "night": {"since": night.window.since, "until": night.window.until, "sessions": night.sessions,
                      "outcomes": _outcomes_json(night.outcomes), "failures": night.failures},
            "week": {"this_week": {"since": compare.this_week.since, "until": compare.this_week.until,
                                   "outcomes": _outcomes_json(compare.current)},
                     "last_week": {"since": compare.last_week.since, "until": compare.last_week.until,
                                   "outcomes": _outcomes_json(compare.previous)}},
            "spend": {"today": _outcomes_json(spend.today), "week": _outcomes_json(spend.week),
                      "month": _outcomes_json(spend.month), "per_day": spend.per_day},
            "top_failing_specs": top_failing, "recent_failures": recent_failures,
            "recent_sessions": recent_sessions,
            "monitor": {"hosts": status.hosts, "last_backup": status.last_backup, "last_prune": status.last_prune,
                        "rejects_last_24h": status.rejects_last_24h, "recent_rejects": rejects},
            "events_per_5min": [{"bucket": t, "count": n} for t, n in event_counts],
        })
        out.write("index.html", html)
        out.write("api/status.json", _dump(snapshot))
        return 2


def _processes() -> int:
    """How many processes a big full rebuild may use (the CPUs this process may run on, at most 4)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_PROCESSES, cpus))


def _start_share(stack: ExitStack, site: SiteDir, args: tuple[Any, ...]) -> tuple[subprocess.Popen[bytes], Path]:
    """A helper process rendering a share of the session pages (`_render_share(*args)`); its
    result comes back in a file. A plain subprocess rather than multiprocessing, which would
    re-import the daemon's __main__ in the child."""
    result = site.path / f".share-{secrets.token_hex(4)}.pickle"
    process = subprocess.Popen([sys.executable, "-c", "from ralph_monitor import site; site._share_main()"],
                               stdin=subprocess.PIPE)

    def stop() -> None:
        if process.poll() is None:
            process.kill()
        process.wait()
        with suppress(FileNotFoundError):
            result.unlink()

    stack.callback(stop)
    assert process.stdin is not None
    with process.stdin:
        process.stdin.write(pickle.dumps((result, args)))
    return process, result


def _finish_share(helper: tuple[subprocess.Popen[bytes], Path]) -> tuple[int, dict[uuid.UUID, dict[str, str]]]:
    process, result = helper
    try:
        status = process.wait(timeout=HELPER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"a dashboard render helper took more than {HELPER_TIMEOUT_S} s; stopped it") from None
    if status != 0:
        raise RuntimeError(f"a dashboard render helper failed (exit status {status}); see its log above")
    return pickle.loads(result.read_bytes())


def _share_main() -> None:
    """Entry point of a helper process: (result file, arguments) in on stdin, pickled (between
    this package's own processes only)."""
    result, args = pickle.load(sys.stdin.buffer)
    _replace_file(result, pickle.dumps(_render_share(*args)))


def _render_share(settings: Settings, dsn: str | None, site_dir: Path, release: str,
                  sessions: list[queries.SessionSummary], now: datetime) -> tuple[int, dict[uuid.UUID, dict[str, str]]]:
    """In a helper process: the pages of `sessions`, written into the release being built."""
    renderer = SiteRenderer(settings, dsn=dsn, site_dir=site_dir)
    try:
        count = _Counter()
        renderer._render_sessions(renderer._connect(), FullRelease(renderer.site, release), count, sessions,
                                  full=True, now=now)
        return count.sessions, renderer._active_runs
    finally:
        renderer.close()


def live_numbers(status: queries.Status, night: queries.NightSummary, compare: queries.Comparison,
                 spend: queries.Spend) -> dict[str, str]:
    """The overview's headline numbers, formatted as shown; the page's script copies them from
    api/status.json into the elements marked `data-live="<key>"`."""
    running = sum(1 for s in status.active if s.execution_state == "running")
    stalled = sum(1 for s in status.active if s.execution_state == "stalled")
    digest_source = "|".join(sorted(f"{s.id}:{s.execution_state}:{s.current_spec}" for s in status.active)
                             + sorted(str(i.event_id) for i in status.pending_interventions))
    o = night.outcomes
    return {
        "running": str(running),
        "stalled": str(stalled),
        "waiting": str(len(status.pending_interventions)),
        "night_success": percent(o.success_rate),
        "night_completed": str(o.completed),
        "night_failed": str(o.failed + o.timed_out),
        "night_cost": money(o.cost_usd),
        "week_success": percent(compare.current.success_rate),
        "last_week_success": percent(compare.previous.success_rate),
        "spend_today": money(spend.today.cost_usd),
        "spend_week": money(spend.week.cost_usd),
        "spend_month": money(spend.month.cost_usd),
        "rejects_24h": str(status.rejects_last_24h),
        "spool_backlog": str(sum(h.spool_backlog for h in status.hosts)),
        "ingest_rate": f"{sum(h.ingest_rate_per_s for h in status.hosts):.1f}",
        "digest": hashlib.sha1(digest_source.encode()).hexdigest()[:16],
    }


# Entry points ----------------------------------------------------------------------------------


def render_once(settings: Settings, *, dsn: str | None, full: bool = False,
                site_dir: Path | None = None, now: datetime | None = None) -> RenderResult:
    """`ralph-monitor render [--full]`."""
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
    finally:
        renderer.close()


class RenderFailed(RuntimeError):
    """A render failed in the render process; the message is its traceback."""


class RenderProcess:
    """A long-lived child process that renders the site for the daemon. Rendering then never
    holds the daemon's interpreter lock (acknowledgements keep their latency while a page
    renders) and its memory is its own. The daemon's worker thread waits for the answer; a
    child that died or hung is replaced at the next render. The child exits when its stdin
    closes (the daemon stopped, even by kill -9)."""

    def __init__(self, settings: Settings, dsn: str | None) -> None:
        self._args = (settings, dsn)
        self._process: subprocess.Popen[bytes] | None = None

    def render(self, *, full: bool) -> RenderResult:
        process = self._child()
        assert process.stdin is not None and process.stdout is not None
        try:
            pickle.dump(("render", full), process.stdin)
            process.stdin.flush()
            ready, _, _ = select.select([process.stdout], [], [], RENDER_TIMEOUT_S)
            if not ready:
                raise TimeoutError(f"no answer in {RENDER_TIMEOUT_S} s")
            status, value = pickle.load(process.stdout)
        except (OSError, EOFError, pickle.UnpicklingError, TimeoutError) as exc:
            self.close(kill=True)
            raise RuntimeError(f"the render process died or hung ({type(exc).__name__}: {exc}); "
                               "a new one starts with the next render") from None
        if status != "ok":
            raise RenderFailed(value)
        return value  # type: ignore[no-any-return]

    def _child(self) -> subprocess.Popen[bytes]:
        if self._process is not None and self._process.poll() is not None:
            log.warning("the render process exited with status %s; starting a new one", self._process.returncode)
            self.close()
        if self._process is None:
            self._process = subprocess.Popen(
                [sys.executable, "-c", "from ralph_monitor import site; site._render_process_main()"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert self._process.stdin is not None
            pickle.dump(self._args, self._process.stdin)
            self._process.stdin.flush()
        return self._process

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def close(self, *, kill: bool = False) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if kill:
            process.kill()
        for stream in (process.stdin, process.stdout):
            with suppress(OSError):
                stream.close()  # type: ignore[union-attr]
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=RENDER_TIMEOUT_S)


def _render_process_main() -> None:
    """The render process: settings once, then one (request, answer) pickle pair per render,
    over its stdin and stdout (between this package's own processes only)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the daemon, which then closes our stdin
    requests = sys.stdin.buffer
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to the log, not into the answers
    settings, dsn = pickle.load(requests)
    setup_logging(settings.monitor_log_level)
    renderer = SiteRenderer(settings, dsn=dsn)
    try:
        while True:
            try:
                _, full = pickle.load(requests)
            except EOFError:
                return
            try:
                answer: tuple[str, Any] = ("ok", renderer.render(full=full))
            except Exception:
                answer = ("error", traceback.format_exc().rstrip())
            pickle.dump(answer, answers)
            answers.flush()
    finally:
        renderer.close()


class SiteService:
    """The dashboard inside the daemon: a scheduled render every [schedule] render_interval_s,
    a debounced one after aggregates changed, a full rebuild at start-up and every FULL_EVERY_S.
    Renders run in the render process (a worker thread waits for it); a failure is logged,
    the last good site stays."""

    def __init__(self, context: DaemonContext) -> None:
        self._context = context
        self._process = RenderProcess(context.settings, context.dsn)
        self._site = SiteDir(context.settings.site_dir)
        self._full_due = 0.0  # monotonic time of the next full rebuild; 0: at once
        self._running = False
        self._again = False
        self._kick: asyncio.TimerHandle | None = None
        self._failing = False
        self._last_seconds = 0.0
        """How long the last incremental render took."""

    def install(self) -> None:
        settings = self._context.settings
        self._context.scheduler.every(JOB_NAME, settings.schedule_render_interval_s, self.run, run_now=True)
        self._context.projector.listeners.append(self.changed)

    def changed(self) -> None:
        """Aggregates changed: render within [schedule] render_debounce_s (once for a burst), or
        later when renders are slow, so that rendering takes at most 1/RENDER_DUTY of the time
        (it shares the CPUs, and the database, with ingestion)."""
        if self._kick is None:
            delay = max(self._context.settings.schedule_render_debounce_s, RENDER_DUTY * self._last_seconds)
            self._kick = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._kick = None
        if self._running:
            self._again = True
        else:
            self._context.scheduler.run_soon(JOB_NAME)

    async def run(self) -> None:
        self._running = True
        try:
            while True:
                self._again = False
                full = time.monotonic() >= self._full_due
                if await asyncio.to_thread(self._render, full) and full:
                    self._full_due = time.monotonic() + FULL_EVERY_S
                if not self._again:
                    return
        finally:
            self._running = False

    def _render(self, full: bool) -> bool:
        try:
            result = self._process.render(full=full)
        except Exception as exc:
            detail = str(exc) if isinstance(exc, RenderFailed) else f"{type(exc).__name__}: {exc}"
            summary = detail.strip().splitlines()[-1] if detail.strip() else type(exc).__name__
            if not self._failing:
                log.error("dashboard render failed; the last good site stays published:\n%s", detail)
            else:
                log.warning("dashboard render failed again: %s", summary)
            self._failing = True
            self._site.record_failure(summary)
            return False
        if self._failing:
            log.info("dashboard renders again")
            self._failing = False
        if not result.full:
            self._last_seconds = result.seconds
        (log.info if result.full else log.debug)(
            "dashboard %s: %d pages, %d files changed, %.3f s (release %s)",
            "rebuilt" if result.full else "updated", result.pages, result.written, result.seconds, result.release)
        return True


def install(context: DaemonContext) -> None:
    SiteService(context).install()
