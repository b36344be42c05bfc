"""Charts as inline SVG, drawn on the server: no chart library, no script, no CDN.

Every chart is an `<svg role="img">` with a `<title>` and a `<desc>` (the text alternative,
also shown as a caption by the templates), a `<title>` tooltip on every mark, and CSS classes
instead of colours, so the site's stylesheet decides the palette for light and dark mode (and
no `style` attribute is needed under the strict Content-Security-Policy). Everything that
comes from agents (spec ids, errors) is escaped here, because these strings bypass Jinja.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from markupsafe import Markup, escape

from ralph_monitor.outcomes import STATUS_WORDS, Counts, attempt_word
from ralph_monitor.queries import DailyRuns, InterventionRow, SessionSummary, SpecRunRow
from ralph_monitor.textfmt import duration, money, percent, shorten

STATUS_CLASS = {"completed": "ok", "failed": "fail", "timeout": "timeout", "running": "running",
                "interrupted": "muted", "budget_exceeded": "fail", "stuck": "fail", "waiting_for_human": "timeout"}


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _attrs(attrs: dict[str, object]) -> str:
    return "".join(f' {k.rstrip("_").replace("_", "-")}="{escape(str(v))}"' for k, v in attrs.items() if v is not None)


def _el(tag: str, body: str = "", **attrs: object) -> str:
    return f"<{tag}{_attrs(attrs)}>{body}</{tag}>" if body else f"<{tag}{_attrs(attrs)}/>"


ANCHOR_CLASS = {"start": "", "middle": " mid", "end": " end"}
"""A label's text-anchor as a class (style.css): an attribute on each of a Gantt's ~80 labels
weighed ~0.3 MB of a 10x site."""


def _text(x: float, y: float, text: str, cls: str, anchor: str = "start") -> str:
    return f'<text x="{_num(x)}" y="{_num(y)}" class="{cls}{ANCHOR_CLASS[anchor]}">{escape(text)}</text>'


def _tip(text: str) -> str:
    return f"<title>{escape(text)}</title>"


@dataclass(frozen=True)
class Chart:
    svg: Markup
    summary: str
    """One sentence saying what the chart shows; the templates print it as the caption."""


def _svg(width: int, height: int, title: str, summary: str, body: list[str]) -> Chart:
    # Ids from the content, not a counter: an unchanged page renders to the same bytes.
    uid = hashlib.sha1("".join([title, summary, *body]).encode()).hexdigest()[:10]
    head = (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'role="img" aria-labelledby="ct{uid} cd{uid}" preserveAspectRatio="xMinYMin meet">'
            f'<title id="ct{uid}">{escape(title)}</title><desc id="cd{uid}">{escape(summary)}</desc>')
    return Chart(Markup(head + "".join(body) + "</svg>"), summary)


def _day_series(per_day: Sequence[DailyRuns], days: Sequence[date]) -> list[DailyRuns]:
    by_day = {d.day: d for d in per_day}
    return [by_day.get(d) or DailyRuns(d, Counts(), 0, Decimal(0), 0) for d in days]


W, WIDE, H = 640, 1100, 170
"""Chart widths in SVG units: a half-width chart and a full-width one (about 1 unit per CSS
pixel on a laptop screen, so 11-unit labels stay readable)."""
LEFT, RIGHT, TOP, BOTTOM = 48, 8, 10, 24


def _frame(width: int, max_label: str, mid_label: str, first: str, last: str) -> list[str]:
    plot_h = H - TOP - BOTTOM
    return [
        _el("line", x1=LEFT, y1=TOP, x2=width - RIGHT, y2=TOP, class_="grid"),
        _el("line", x1=LEFT, y1=TOP + plot_h / 2, x2=width - RIGHT, y2=TOP + plot_h / 2, class_="grid"),
        _el("line", x1=LEFT, y1=H - BOTTOM, x2=width - RIGHT, y2=H - BOTTOM, class_="axis"),
        _text(LEFT - 4, TOP + 4, max_label, "label", "end"),
        _text(LEFT - 4, TOP + plot_h / 2 + 4, mid_label, "label", "end"),
        _text(LEFT - 4, H - BOTTOM + 4, "0", "label", "end"),
        _text(LEFT, H - 6, first, "label"),
        _text(width - RIGHT, H - 6, last, "label", "end"),
    ]


def _bars(width: int, values: Sequence[float | None], top: float, classes: Sequence[str],
          tips: Sequence[str]) -> list[str]:
    plot_w, plot_h = width - LEFT - RIGHT, H - TOP - BOTTOM
    step = plot_w / max(1, len(values))
    gap = min(2.0, step * 0.2)
    bar_w = _num(step - gap)
    out = []
    # f-strings rather than _el: the overview draws ~350 bars each minute. The classes are ours;
    # the tips are escaped by _tip.
    for i, (value, cls, tip) in enumerate(zip(values, classes, tips)):
        x = _num(LEFT + i * step + gap / 2)
        if value is None:  # no data: a faint full-height slot, so the tooltip still says so
            out.append(f'<rect x="{x}" y="{TOP}" width="{bar_w}" height="{plot_h}" class="empty">{_tip(tip)}</rect>')
            continue
        h = 0.0 if top <= 0 else max(1.0, plot_h * value / top) if value > 0 else 0.0
        out.append(f'<rect x="{x}" y="{_num(TOP + plot_h - h)}" width="{bar_w}" height="{_num(max(h, 0.5))}" '
                   f'class="{cls}">{_tip(tip)}</rect>')
    return out


def _nice_top(value: float) -> float:
    """A round axis maximum at or above `value` (1, 2, 2.5 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    base = 10.0 ** math.floor(math.log10(value))
    return next(base * step for step in (1, 2, 2.5, 5, 10) if base * step >= value * (1 - 1e-9))


def _short_day(day: date) -> str:
    return f"{day:%b} {day.day}"


def spend_per_day(per_day: Sequence[DailyRuns], days: Sequence[date]) -> Chart:
    series = _day_series(per_day, days)
    costs = [float(d.cost_usd) for d in series]
    top = _nice_top(max(costs, default=0.0))
    total = sum(costs)
    busiest = max(series, key=lambda d: d.cost_usd) if series else None
    summary = (f"Spend per day over the last {len(series)} days: {money(total)} in all"
               + (f", most on {_short_day(busiest.day)} ({money(busiest.cost_usd)})." if busiest and total else "."))
    body = _frame(W, money(top), money(top / 2), _short_day(days[0]), _short_day(days[-1])) if days else []
    body += _bars(W, costs, top, ["bar"] * len(series),
                  [f"{_short_day(d.day)}: {money(d.cost_usd)}, {d.tokens_used:,} tokens" for d in series])
    return _svg(W, H, "Spend per day", summary, body)


def _rate_class(rate: float) -> str:
    return "ok" if rate >= 0.8 else "warn" if rate >= 0.5 else "fail"


def success_per_day(per_day: Sequence[DailyRuns], days: Sequence[date]) -> Chart:
    series = _day_series(per_day, days)
    rates = [d.counts.success_rate for d in series]
    decided = sum(d.counts.decided for d in series)
    completed = sum(d.counts.completed for d in series)
    summary = (f"Share of specs that completed (retries included), per day over the last {len(series)} days: "
               f"{completed} of {decided} specs ({percent(completed / decided if decided else None)}).")
    tips = [f"{_short_day(d.day)}: no spec finished" if r is None else
            f"{_short_day(d.day)}: {percent(r)} ({d.counts.sentence()})"
            for d, r in zip(series, rates)]
    body = _frame(W, "100%", "50%", _short_day(days[0]), _short_day(days[-1])) if days else []
    body += _bars(W, rates, 1.0, [_rate_class(r) if r is not None else "" for r in rates], tips)
    return _svg(W, H, "Success rate per day", summary, body)


def events_per_bucket(counts: Sequence[tuple[datetime, int]], since: datetime, until: datetime,
                      *, bucket: timedelta = timedelta(minutes=5)) -> Chart:
    """Events per 5-minute bucket from `since` to `until` (buckets without events count 0)."""
    by_time = dict(counts)
    slots: list[datetime] = []
    t = since
    while t < until:
        slots.append(t)
        t += bucket
    values = [float(by_time.get(s, 0)) for s in slots]
    top = _nice_top(max(values, default=0.0))
    total = int(sum(values))
    peak_i = max(range(len(values)), key=values.__getitem__) if values else None
    hours = round((until - since).total_seconds() / 3600)
    summary = (f"Events stored per 5 minutes over the last {hours} hours: {total:,} in all"
               + (f", at most {int(values[peak_i]):,} in one 5-minute bucket." if peak_i is not None and total
                  else "."))
    body = _frame(WIDE, f"{int(top):,}", _num(top / 2), f"{hours} h ago", "now")
    body += _bars(WIDE, values, top, ["bar"] * len(values),
                  [f"{s:%H:%M} UTC: {int(v):,} events" for s, v in zip(slots, values)])
    return _svg(WIDE, H, "Events per 5 minutes", summary, body)


GANTT_ROW = 16
GANTT_LABEL = 120
GANTT_MAX_ROWS = 120


def session_gantt(session: SessionSummary, runs: Sequence[SpecRunRow],
                  interventions: Sequence[InterventionRow] = ()) -> Chart:
    """One row per spec (its attempts side by side), x = time from the session's start to its
    end (or its last sign of life), bars coloured by outcome; requests for a human as marks."""
    start = session.start_time
    end = max(session.end_time or session.last_event_at, session.last_event_at, start + timedelta(seconds=1))
    rows: dict[str, list[SpecRunRow]] = {}
    for run in runs:
        rows.setdefault(run.spec_id, []).append(run)
    shown = list(rows.items())[:GANTT_MAX_ROWS]
    width = WIDE
    plot_w = width - GANTT_LABEL - 8
    height = 22 + GANTT_ROW * max(1, len(shown)) + 8
    span = (end - start).total_seconds()

    def x_of(moment: datetime | None) -> float:
        moment = moment or end
        return GANTT_LABEL + plot_w * min(1.0, max(0.0, (moment - start).total_seconds() / span))

    middle = _num(GANTT_LABEL + plot_w / 2)
    # Every other row's background, as one path (a rect each weighed ~0.5 MB of a 10x site).
    stripes = "".join(f"M0 {20 + i * GANTT_ROW}h{width}v{GANTT_ROW}H0z" for i in range(0, len(shown), 2))
    body = [_el("path", d=stripes, class_="stripe")]
    body += [_text(GANTT_LABEL, 12, "start", "label"),
             _text(GANTT_LABEL + plot_w / 2, 12, f"+{duration(span / 2)}", "label", "middle"),
             _text(width - 8, 12, f"+{duration(span)}", "label", "end"),
             _el("line", x1=middle, y1=16, x2=middle, y2=height - 4, class_="grid")]
    for i, (spec, attempts) in enumerate(shown):
        y = 20 + i * GANTT_ROW
        body.append(_text(GANTT_LABEL - 6, y + GANTT_ROW - 4, shorten(spec, 18), "label", "end"))
        for run in attempts:  # hot in a full rebuild: plain f-strings, only the tooltip is agent text
            x0 = x_of(run.start_time or run.end_time)
            x1 = x_of(run.end_time if run.status != "running" else session.last_event_at)
            tip = (f"{spec} attempt {run.attempt}: {attempt_word(run.status, run.outcome)}"
                   f" after {duration(run.duration_seconds)}"
                   + (f" — {shorten(run.error_message, 200)}" if run.error_message else ""))
            body.append(f'<rect x="{x0:.1f}" y="{y + 3}" width="{max(2.0, x1 - x0):.1f}" height="{GANTT_ROW - 6}" '
                        f'rx="2" class="{STATUS_CLASS.get(run.status, "muted")}">{_tip(tip)}</rect>')
    row_of = {spec: i for i, (spec, _) in enumerate(shown)}
    for req in interventions:
        i = row_of.get(req.spec_id or "")
        y = 20 + (i if i is not None else 0) * GANTT_ROW + GANTT_ROW / 2
        x = x_of(req.requested_at)
        tip = ("asked for a human" + (" (answered)" if req.answered_at else " (WAITING)")
               + (f": {shorten(req.message, 200)}" if req.message else ""))
        body.append(_el("path", _tip(tip), d=f"M{_num(x)} {_num(y - 6)}l5 6l-5 6l-5 -6z",
                        class_="ask" if req.answered_at is None else "asked"))
    counts = {status: sum(1 for r in runs if r.status == status) for status in STATUS_CLASS}
    parts = [f"{n} {STATUS_WORDS[s]}" for s, n in counts.items() if n]
    summary = (f"Spec runs of this session over time, {duration(span)} from its start: {len(runs)} runs of "
               f"{len(rows)} specs" + (f" ({', '.join(parts)})" if parts else "") + "."
               + (f" Only the first {GANTT_MAX_ROWS} specs are drawn." if len(rows) > GANTT_MAX_ROWS else ""))
    return _svg(width, height, "Timeline of spec runs", summary, body)


def outcome_strip(runs: Sequence[SpecRunRow]) -> Chart:
    """One square per run of a spec, oldest to newest (`runs` come newest first)."""
    ordered = list(reversed(runs))
    size, gap, per_row = 12, 3, 40
    rows = max(1, -(-len(ordered) // per_row))
    width, height = per_row * (size + gap), rows * (size + gap)
    body = []
    for i, run in enumerate(ordered):
        x, y = (i % per_row) * (size + gap), (i // per_row) * (size + gap)
        tip = (f"attempt {run.attempt} in {run.session_name or str(run.session_id)[:8]}: "
               f"{attempt_word(run.status, run.outcome)}"
               + (f" after {duration(run.duration_seconds)}" if run.duration_seconds is not None else "")
               + (f" — {shorten(run.error_message, 200)}" if run.error_message else ""))
        body.append(f'<rect x="{x}" y="{y}" width="{size}" height="{size}" rx="2" '
                    f'class="{STATUS_CLASS.get(run.status, "muted")}">{_tip(tip)}</rect>')
    counts = {status: sum(1 for r in runs if r.status == status) for status in STATUS_CLASS}
    parts = [f"{n} {STATUS_WORDS[s]}" for s, n in counts.items() if n]
    last = f" The newest run {attempt_word(runs[0].status, runs[0].outcome)}." if runs else ""
    summary = f"Outcome of the last {len(runs)} runs, oldest first: {', '.join(parts) or 'none'}.{last}"
    return _svg(width, height, "Outcomes of recent runs", summary, body)
