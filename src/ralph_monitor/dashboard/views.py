"""What the pages and JSON snapshots show, formatted: the helpers the templates and the renderer share.

Everything that comes from agents (names, spec ids, errors, event data) is escaped here or by
Jinja's autoescape. Times go out in UTC; the page's script shows them in the viewer's zone.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Container, Sequence
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

import jinja2
import orjson
from markupsafe import Markup, escape

from ralph_monitor import __version__, changes, queries
from ralph_monitor.dashboard import charts
from ralph_monitor.outcomes import (FAILED, FAILING_STATUSES, FIXED_ON_RETRY, INTERRUPTED, LATER_PASSED, PASSED,
                                    RETRIED, RUNNING, STATUS_WORDS, TIMED_OUT, WORDS, Counts, SpecResult,
                                    attempt_word, fixed_later)
from ralph_monitor.resources import resource_dir
from ralph_monitor.textfmt import duration, json_default, money, percent, shorten

SCHEMA_VERSION = 1
"""Version of the JSON snapshots' shape (README, "Dashboard"); bumped on incompatible changes."""
JSON_DATA_MAX = 4096
"""Event data larger than this (bytes of compact JSON) is replaced by an excerpt in the JSON snapshots."""
STALE_AFTER_S = 180
POLL_INTERVAL_S = 15
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


def iso(moment: datetime | None) -> str | None:
    """A moment in UTC, ISO 8601 with a `Z` (the snapshots' and render-state's format)."""
    return None if moment is None else moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def when(moment: datetime | None) -> Markup:
    """A <time> element in UTC, to the second; the page's script shows it in the viewer's time zone."""
    if moment is None:
        return Markup("–")
    text = iso(moment.replace(microsecond=0)) or ""  # no agent-supplied text in here: nothing to escape
    return Markup(f'<time datetime="{text}">{text[:10]} {text[11:16]} UTC</time>')


_LONG_TOKEN = re.compile(r"\S{16,}")
_AFTER_SEPARATOR = re.compile(r"(?<=[/._:=,-])(?=[^\s/._:=,-])")


def breakable(text: str) -> Markup:
    """Escaped text whose long tokens (paths, test ids) may wrap after / . _ : = , - (a <wbr>
    there), not mid-word; the stylesheet breaks a token with no such place anywhere, last."""
    escaped = str(escape(text))
    if len(escaped) < 16:
        return Markup(escaped)
    return Markup(_LONG_TOKEN.sub(lambda m: _AFTER_SEPARATOR.sub("<wbr>", m[0]), escaped))


def error_html(text: str | None, width: int = 240, limit: int = 4000) -> Markup:
    """An error message: short ones inline, long ones folded (first `width` characters shown,
    at most `limit` inside). Agent text: escaped."""
    if not text:
        return Markup("")
    if len(text) <= width:
        return Markup(f'<span class="err">{breakable(text)}</span>')
    rest = (f"\n… ({len(text):,} characters in all; ralph-query shows the rest)" if len(text) > limit else "")
    return Markup(f'<details class="err"><summary>{breakable(shorten(text, width))}</summary>'
                  f"<pre>{breakable(text[:limit])}{rest}</pre></details>")


def spec_link(root: str, spec_id: str) -> Markup:
    return Markup(f'<a class="spec" href="{root}specs/{escape(page_name(spec_id))}.html">'
                  f"{breakable(shorten(spec_id, 48))}</a>")


def session_link(root: str, session_id: uuid.UUID, name: str | None, pages: Container[uuid.UUID] | None = None) -> Markup:
    """A link to the session's page; only its name where it has none (`pages`: the sessions that
    have one, those whose events are kept; older ones are in the month pages)."""
    label = escape(shorten(name or str(session_id)[:8], 48))
    if pages is not None and session_id not in pages:
        return Markup(f'<span class="session" title="{session_id}">{label}</span>')
    return Markup(f'<a href="{root}sessions/{session_id}.html">{label}</a>')


def state_badge(state: str, counts: Counts | None = None) -> Markup:
    """A session's execution state. A session that ran to its end with specs still failing says
    how many (in amber, red when none passed): a green "completed" over a night of failures is
    what a tired reader would take away."""
    value = escape(state)
    words = value.replace("_", " ")
    if state == "completed" and counts is not None and counts.still_failing:
        tone = "none-passed" if not counts.completed else "some-failed"
        return Markup(f'<span class="state completed {tone}">{words}, {counts.still_failing} failed</span>')
    return Markup(f'<span class="state {value}">{words}</span>')


def progress_bar(done: int, failed: int, total: int | None) -> Markup:
    """Specs done and failed of the session's total, as a bar; without total_specs there is
    nothing to measure progress against (a full bar would lie)."""
    if not total:
        return Markup('<span class="none" title="the session did not say how many specs it has (total_specs)">'
                      "no total</span>")
    whole = max(total, done + failed)
    ok, fail = 100 * done / whole, 100 * failed / whole
    return Markup(f'<svg class="progress" viewBox="0 0 100 8" preserveAspectRatio="none" role="img" '
                  f'aria-label="{done} of {total} specs done, {failed} failed"><rect class="track" width="100" '
                  f'height="8"/><rect class="ok" width="{ok:.1f}" height="8"/><rect class="fail" x="{ok:.1f}" '
                  f'width="{fail:.1f}" height="8"/></svg>')


def session_rows(sessions: list[queries.SessionSummary], root: str, *, anchors: bool = False,
                 pages: Container[uuid.UUID] | None = None) -> Markup:
    """The <tr> rows of a table of sessions (the overview's week, a month's page: hundreds),
    in plain Python as run_rows (a template loop took ~15 ms for a month). The phone layout
    labels their cells by column from the stylesheet (table.sessions), which also right-aligns
    the numbers by column (a class on each cell weighed ~1 MB of a 10x site). `anchors`: each
    row has the id session-<id>."""
    out = []
    for s in sessions:
        c = s.counts
        row_id = f' id="session-{s.id}"' if anchors else ""
        total = s.total_specs if s.total_specs is not None else "?"
        fixed = (f' <span class="mark fixed" title="fixed on retry">{c.fixed_on_retry} on retry</span>'
                 if c.fixed_on_retry else "")
        took = ((s.end_time or s.last_event_at) - s.start_time).total_seconds()
        out.append(f'<tr{row_id}><td>{session_link(root, s.id, s.name, pages)}</td><td>{state_badge(s.execution_state, c)}</td>'
                   f'<td>{when(s.start_time)}</td><td>{duration(took)}</td>'
                   f'<td>{progress_bar(s.specs_completed, s.specs_failed, s.total_specs)}</td>'
                   f'<td>{s.specs_completed}/{total}{fixed}</td><td>{c.failed}</td>'
                   f'<td>{c.timed_out}</td><td>{number(s.tokens_used)}</td>'
                   f'<td>{money(s.cost_usd)}</td></tr>\n')
    return Markup("".join(out))


def result_rows(results: list[SpecResult], root: str, *, pages: Container[uuid.UUID] | None = None) -> Markup:
    """The <tr> rows of a table of specs of sessions (outcomes.SpecResult: the night's still
    failing, fixed on retry, being retried), each linked to its last attempt, in plain Python as
    run_rows (the overview shows up to 150: a template loop took ~4 ms)."""
    out = []
    for r in results:
        href = escape(run_href(root, r.session_id, r.spec_id, r.attempts, pages))
        error = error_html(r.error) if r.error else "–"
        out.append(f'<tr class="{"fixedrow" if r.outcome == FIXED_ON_RETRY else "badrow"}">\n'
                   f'<td data-label="Ended"><a href="{href}">{when(r.ended_at)}</a></td>\n'
                   f'<td data-label="Spec" class="lead">{spec_link(root, r.spec_id)}</td>'
                   f'<td data-label="Outcome">{outcome_badge(r.outcome)}</td>\n'
                   f'<td data-label="Attempts" class="n">{r.attempts}</td>'
                   f'<td data-label="Session" class="wide">{session_link(root, r.session_id, r.session_name, pages)}</td>\n'
                   f'<td data-label="Error" class="msg">{error}</td></tr>\n')
    return Markup("".join(out))


def status_badge(status: str, outcome: str | None = None) -> Markup:
    """A run's status; a failure also says what came of it (outcomes.py): fixed on retry, or retried."""
    badge = (f'<span class="status {charts.STATUS_CLASS.get(status, "muted")}">'
             f"{escape(STATUS_WORDS.get(status, status))}</span>")
    if fixed_later(status, outcome or ""):
        badge += f' <span class="mark fixed">{WORDS[LATER_PASSED]}</span>'
    elif status in FAILING_STATUSES and outcome == RETRIED:
        badge += f' <span class="mark retried">{WORDS[RETRIED]}</span>'
    return Markup(badge)


OUTCOME_CLASS = {PASSED: "ok", FIXED_ON_RETRY: "ok", FAILED: "fail", TIMED_OUT: "timeout", RUNNING: "running",
                 INTERRUPTED: "muted"}


def outcome_badge(outcome: str) -> Markup:
    """A spec's outcome in a session (outcomes.py)."""
    return Markup(f'<span class="status {OUTCOME_CLASS[outcome]}">{WORDS[outcome]}</span>')


def row_class(status: str, outcome: str) -> str:
    """A table row's class: a failure that still counts is marked bad, one fixed later is marked so."""
    if status not in FAILING_STATUSES:
        return ""
    return ' class="fixedrow"' if fixed_later(status, outcome) else ' class="badrow"'


def run_anchor(spec_id: str, attempt: int) -> str:
    """The id of a spec run's row on its session's page (sessions/<id>.html#run-<spec>-<attempt>)."""
    return f"run-{page_name(spec_id)}-{attempt}"


def run_href(root: str, session_id: uuid.UUID, spec_id: str, attempt: int,
             pages: Container[uuid.UUID] | None = None) -> str:
    """The run's row on its session's page; the spec's page where the session has none (`pages`)."""
    if pages is not None and session_id not in pages:
        return f"{root}specs/{escape(page_name(spec_id))}.html#run-{session_id}-{attempt}"
    return f"{root}sessions/{session_id}.html#{run_anchor(spec_id, attempt)}"


def run_rows(runs: list[queries.SpecRunRow], root: str, *, by: str,
             pages: Container[uuid.UUID] | None = None, kept: dict[tuple[Any, ...], str] | None = None) -> Markup:
    """The <tr> rows of a table of spec runs: of one session (`by="session"`: the spec is the
    link, the row's id is run_anchor) or of one spec (`by="spec"`: the session is, and the row's
    id is `run-<session id>-<attempt>`). A full rebuild renders tens of thousands of these, so
    this is plain Python rather than a template loop (5-10x faster); agent text is escaped. The
    phone layout labels their cells by column from the stylesheet (table.runs-by-session /
    -by-spec), not with a data-label per cell: that would add ~15% to the site. `pages`: the
    sessions that have a page (session_link). `kept`: rows rendered before (a spec's page lists
    up to 100 runs, and each minute's render rewrites the pages of the specs that ran, mostly
    with the same runs), by what the row shows (run_row_key)."""
    out = []
    for r in runs:
        has_page = by == "spec" and (pages is None or r.session_id in pages)
        if kept is not None:
            key = run_row_key(r, root, by, has_page)
            if (row := kept.get(key)) is not None:
                out.append(row)
                continue
        status, started = status_badge(r.status, r.outcome), when(r.start_time or r.end_time)
        if by == "session":
            anchor = escape(run_anchor(r.spec_id, r.attempt))
            lead = (f'<td>{spec_link(root, r.spec_id)}</td><td>{r.attempt}</td><td>{status}</td>'
                    f'<td>{started}</td>')
        else:
            anchor = f"run-{r.session_id}-{r.attempt}"
            lead = (f'<td>{started}</td><td>{session_link(root, r.session_id, r.session_name, pages)}</td>'
                    f'<td>{r.attempt}</td><td>{status}</td>')
        row = (f'<tr id="{anchor}"{row_class(r.status, r.outcome)}>{lead}<td>{duration(r.duration_seconds)}</td>'
               f'<td>{number(r.tokens_used)}</td><td>{money(r.cost_usd)}</td>'
               f'<td{commit_titles(r.git)}>{escape(r.changes) or "–"}</td>'
               f'<td class="msg">{error_html(r.error_message)}</td></tr>\n')
        if kept is not None:
            if len(kept) >= ROWS_KEPT:
                kept.clear()
            kept[key] = row
        out.append(row)
    return Markup("".join(out))


def run_row_key(r: queries.SpecRunRow, root: str, by: str, has_page: bool) -> tuple[Any, ...]:
    """Everything a run's row shows (run_rows): its run (session, spec and attempt: not its id,
    which changes each time the projector writes the session's runs again, every minute for a
    running session), what can change in it, and the page it is on. `git` goes in as its repr."""
    return ("run", r.session_id, r.spec_id, r.attempt, root, by, has_page, r.session_name if by == "spec" else None,
            r.status, r.outcome, r.start_time, r.end_time, r.duration_seconds, r.tokens_used, r.cost_usd,
            r.error_message, r.git_commits, r.git_files_changed, r.git_insertions, r.git_deletions, r.git_dirty,
            None if r.git is None else repr(r.git))


BAD_EVENTS = frozenset({"spec_failed", "timeout_triggered", "session_stalled", "intervention_request", "loop_stuck",
                        "backup_failed", "prune_failed"})
"""Event types whose timeline row is marked as bad news."""
SPEC_EVENTS = frozenset({"spec_started", "spec_completed", "spec_failed", "timeout_triggered"})


ROWS_KEPT = 20_000
"""Rendered table rows a renderer keeps (a few MB; all are dropped when it is full): an event
never changes, and each minute's render lists mostly the same events and spec runs again (the
running sessions' pages, the events pages, the pages of the specs that ran)."""


def event_rows(events: Sequence[Any], root: str, *, spec_pages: Container[str] | None = None,
               sessions: bool = False, pages: Container[uuid.UUID] | None = None,
               kept: dict[tuple[Any, ...], str] | None = None) -> Markup:
    """The <tr> rows of a timeline: a session's (its spec linked where the spec has a page,
    `spec_pages`) or an events page's (`sessions`: with a session column; spec events linked).
    Plain Python like run_rows: a session page lists up to 2,000 events, and each minute's
    render rewrites the running sessions' pages. Agent text is escaped. `kept`: rows rendered
    before, by event and what else the row depends on (one database's: event ids are its)."""
    out = []
    for e in events:
        spec = e.spec_id
        linked = bool(spec) and (spec in spec_pages if spec_pages is not None else e.event_type in SPEC_EVENTS)
        has_page = sessions and e.session_id is not None and (pages is None or e.session_id in pages)
        key = (e.id, e.event_id, root, sessions, linked, has_page)
        if kept is not None and (row := kept.get(key)) is not None:
            out.append(row)
            continue
        parts = ['<tr class="badrow">' if e.event_type in BAD_EVENTS else "<tr>",
                 f'<td>{when(e.occurred_at)}</td><td><span class="etype">{breakable(e.event_type)}</span></td>']
        if sessions:
            parts.append(f"<td>{session_link(root, e.session_id, None, pages) if e.session_id else '–'}</td>")
        if linked:
            parts.append(f"<td>{spec_link(root, spec)}</td>")
        else:
            parts.append(f'<td><span class="code">{escape(shorten(spec, 48))}</span></td>' if spec else "<td></td>")
        parts.append(f'<td class="msg">{breakable(data_summary(e.data, 200))}</td><td>{escape(e.host)}</td></tr>\n')
        row = "".join(parts)
        if kept is not None:
            if len(kept) >= ROWS_KEPT:
                kept.clear()
            kept[key] = row
        out.append(row)
    return Markup("".join(out))


COMMITS_IN_TITLE = 10


def commit_titles(git: Any) -> str:
    """A ` title="..."` attribute listing a run's commits (short hash and subject), or ""."""
    commits = git.get("commits") if isinstance(git, dict) else None
    if not commits:
        return ""
    lines = [f"{str(c.get('hash'))[:10]} {c.get('subject')}" for c in commits[:COMMITS_IN_TITLE]]
    if len(commits) > COMMITS_IN_TITLE:
        lines.append(f"and {len(commits) - COMMITS_IN_TITLE} more")
    return f' title="{escape(chr(10).join(lines))}"'


DIFF_ITEMS = 10
"""Specs (or errors) listed per kind of change on a session page; `ralph-query diff` lists all."""
_CHANGE_KINDS = (("newly_failing", "Newly failing"), ("fixed", "Fixed"), ("still_failing", "Still failing"),
                 ("flaky", "Flaky: failed, then passed on a retry"), ("slower", "Slower"), ("costlier", "Costlier"))


def _change_item(kind: str, c: changes.SpecChange) -> str:
    link = f'<a class="spec" href="#{escape(run_anchor(c.spec_id, c.now.attempts))}">{breakable(shorten(c.spec_id, 48))}</a>'
    before = c.before
    if kind == "slower" and before is not None:
        return f"{link} {duration(before.duration_seconds)} → {duration(c.now.duration_seconds)}"
    if kind == "costlier" and before is not None:
        return f"{link} {money(before.cost_usd)} → {money(c.now.cost_usd)}"
    if kind in ("newly_failing", "still_failing", "flaky"):
        word = "" if before is not None or kind != "newly_failing" else " (not run before)"
        return f"{link}{word} {error_html(c.now.error, 160)}"
    return link


def change_lists(c: changes.Changes) -> Markup:
    """The "Since the previous run" lists of a session page, one per kind of change (at most
    DIFF_ITEMS items each): plain Python like run_rows, as a full rebuild renders one per session."""
    out = [_change_list(title, kind, getattr(c, kind), functools.partial(_change_item, kind))
           for kind, title in _CHANGE_KINDS]
    out.append(_change_list("New errors", "new_errors", c.new_errors, lambda e: (
        f"{breakable(shorten(', '.join(e.spec_ids), 80))}: {error_html(e.error, 200)}")))
    return Markup("\n".join(part for part in out if part))


def _change_list(title: str, kind: str, items: Sequence[Any], item_html: Callable[[Any], str]) -> str:
    """One kind's list: its first DIFF_ITEMS items, and how many more; "" when it has none."""
    if not items:
        return ""
    more = f'<li class="more">and {len(items) - DIFF_ITEMS} more</li>' if len(items) > DIFF_ITEMS else ""
    return (f'<h3>{title} ({len(items)})</h3><ul class="changes" data-testid="diff-{kind.replace("_", "-")}">'
            + "".join(f"<li>{item_html(x)}</li>" for x in items[:DIFF_ITEMS]) + more + "</ul>")


def number(value: int | float | None) -> str:
    return "–" if value is None else f"{value:,}"


def value_text(value: Any) -> str:
    """An agent's value as its JSON said it: a string as is, else JSON (true, null, [1, 2]; not
    Python's True, None or {'a': 1})."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def data_summary(data: Any, width: int = 160) -> str:
    """One line about an event's data: the fields people look for first, else compact JSON."""
    if not isinstance(data, dict) or not data:
        return "" if data in (None, {}) else shorten(json.dumps(data, ensure_ascii=False, default=str), width)
    keys = ("error", "message", "reason", "tool_name", "status", "name", "title", "tokens_used", "cost_usd")
    picked = [f"{k}: {value_text(data[k])}" if k not in ("error", "message") else value_text(data[k])
              for k in keys if k in data]
    text = " · ".join(picked) if picked else json.dumps(data, ensure_ascii=False, default=str)
    return shorten(text, width)


def template_environment(pages: Container[uuid.UUID] | None = None,
                         kept_rows: dict[tuple[Any, ...], str] | None = None) -> jinja2.Environment:
    """The Jinja environment of site_templates/, with these helpers as filters and globals;
    links go to session pages only for the sessions in `pages` (all when None); `kept_rows`:
    the renderer's rendered table rows (event_rows, run_rows)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resource_dir("site_templates"))),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters.update(money=money, percent=percent, duration=duration, shorten=shorten, when=when,
                       number=number, summary=data_summary, page_name=page_name, iso=iso, breakable=breakable,
                       value_text=value_text)
    env.globals.update(version=__version__, error_html=error_html,
                       run_rows=functools.partial(run_rows, pages=pages, kept=kept_rows),
                       session_rows=functools.partial(session_rows, pages=pages), state_badge=state_badge,
                       result_rows=functools.partial(result_rows, pages=pages),
                       progress_bar=progress_bar,
                       spec_link=spec_link, session_link=functools.partial(session_link, pages=pages),
                       status_badge=status_badge, attempt_word=attempt_word, row_class=row_class,
                       run_anchor=run_anchor, run_href=functools.partial(run_href, pages=pages),
                       outcome_badge=outcome_badge,
                       change_lists=change_lists, event_rows=functools.partial(event_rows, pages=pages, kept=kept_rows),
                       stale_after_s=STALE_AFTER_S, poll_interval_s=POLL_INTERVAL_S)
    return env


# JSON snapshots ------------------------------------------------------------------------------


def bounded_data(data: Any) -> Any:
    """Event data as it goes into a snapshot: whole, or an excerpt when its compact JSON is
    bigger than JSON_DATA_MAX bytes (UTF-8). orjson measures it (a session snapshot holds up to
    2,000 events: the standard encoder took a third of its time); the standard one writes what
    orjson refuses (a number beyond 64 bits, which jsonb keeps)."""
    try:
        encoded = orjson.dumps(data)
    except TypeError:  # orjson.JSONEncodeError
        encoded = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str).encode()
    if len(encoded) <= JSON_DATA_MAX:
        return data
    text = encoded.decode()
    return {"_truncated": True, "json_chars": len(text), "excerpt": text[:1000]}


def fields(value: Any) -> dict[str, Any]:
    """A dataclass's fields, shallow (dataclasses.asdict deep-copies every value: far slower).
    The query layer's dataclasses are plain (no slots), so their __dict__ is exactly that."""
    return dict(value.__dict__)


_GIT_COUNTS = frozenset({"git_commits", "git_files_changed", "git_insertions", "git_deletions", "git_dirty"})


def _moment(moment: datetime) -> str:
    """A time as orjson writes it (OPT_UTC_Z), for the standard encoder's path."""
    return moment.isoformat().replace("+00:00", "Z")


_JSON_TYPES: dict[type, Any] = {datetime: _moment, date: date.isoformat, uuid.UUID: str, Decimal: float}


def _json_default(value: Any) -> Any:
    """textfmt.json_default's encoding, by type first (a full rebuild encodes ~1 M values)."""
    convert = _JSON_TYPES.get(type(value))
    if convert is not None:
        return convert(value)
    if type(value) is queries.SpecRunRow:  # its git_* counts are columns generated from `git`, which it carries
        return {k: v for k, v in value.__dict__.items() if k not in _GIT_COUNTS}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value.__dict__  # read, never changed, by the encoder
    return json_default(value)


_ORJSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
"""Datetimes natively: a UTC one with a `Z`, as the snapshots' times are (the read connection
sees every time in UTC, store/reads.py; the renderer passes the windows of the reporting time
zone through `iso`); another keeps its offset. Converting every one in _json_default took two
thirds of a session snapshot's encoding time. Dataclasses go through _json_default (a spec run
without its generated git counts)."""


def dump_json(value: Any) -> bytes:
    """A snapshot file's bytes: compact JSON and a newline. orjson (a full rebuild writes ~10,000
    files); the standard encoder for what orjson refuses (an integer beyond 64 bits)."""
    try:
        return orjson.dumps(value, default=_json_default, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return (json.dumps(value, default=_json_default, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def snapshot(kind: str, generated_at: datetime | None, body: dict[str, Any]) -> dict[str, Any]:
    """The envelope of every JSON file. Pages rendered only when their data changed (sessions,
    specs) carry no `generated_at`, so an unchanged page keeps its bytes (and its ETag)."""
    head: dict[str, Any] = {"version": SCHEMA_VERSION, "kind": kind}
    if generated_at is not None:
        head["generated_at"] = iso(generated_at)
    return {**head, **body}
