"""The dashboard where an alert's link lands: a phone (390x844) and a desktop (1400x900), light
and dark, served by the real nginx. On the overview, a session page and a spec page: the document
never scrolls sideways, the first failure's error is on the first screen of its section, an
anchor highlights its item (also without JavaScript), text is at least 16 px and links are 44 px
touch targets on the phone. Screenshots of each go to test-artifacts/ (phone-*.png)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from ralph_monitor.config import load_settings
from ralph_monitor.dashboard.render import render_once
from ralph_monitor.dashboard.views import page_name
from tests.browser.conftest import Nginx, start_nginx, stop_nginx, watch
from tests.browser.test_dashboard import assert_clean
from tests.conftest import Daemon, LineClient, short_tempdir
from tests.integration.test_overnight import session_state, wait_until_settled
from tests.scenario import scenario_zone

NIGHTLY = "f1000000-0000-4000-8000-000000000001"
YESTERDAY = "f0000000-0000-4000-8000-000000000000"
LIVE = "f2000000-0000-4000-8000-000000000002"
STALLED = "f3000000-0000-4000-8000-000000000003"
REQUEST = "f4000000-0000-4000-8000-000000000004"
LONG_SPEC = "tests/checkout/test_cart_totals.py::TestRounding::test_discounted_vat_lines_are_rounded_per_line"
PYTEST_ERROR = ("FAILED tests/checkout/test_cart_totals.py::TestRounding::test_discounted_vat_lines_are_rounded_per_line"
                " - AssertionError: assert Decimal('19.99') == Decimal('20.00')")
LONG_ERROR = PYTEST_ERROR + "\n" + "\n".join(
    f"  File \"/home/ralph/work/shop-backend/src/shop/checkout/pricing/rounding_{i}.py\", line {40 + i}, in round_line"
    for i in range(12))
PHONE, DESKTOP = {"width": 390, "height": 844}, {"width": 1400, "height": 900}
LAPTOP = {"width": 1100, "height": 800}


def scenario(now: datetime) -> list[dict[str, Any]]:
    def ev(kind: str, minutes_ago: float, session: str, spec: str | None = None, **data: Any) -> dict[str, Any]:
        event: dict[str, Any] = {"type": kind, "session_id": session, "event_id": str(uuid.uuid4()),
                                 "ts": (now - timedelta(minutes=minutes_ago)).isoformat()}
        if spec:
            event["spec_id"] = spec
        if data:
            event["data"] = data
        return event

    name = "nightly: shop-backend / feature/checkout-rounding-per-line-items"
    yesterday = [ev("session_started", 1560, YESTERDAY, name=name, total_specs=4)]
    for i, spec in enumerate(("CR-101", "CR-103", LONG_SPEC, "CR-105")):
        yesterday += [ev("spec_started", 1559 - 10 * i, YESTERDAY, spec),
                      ev("spec_completed" if spec != "CR-105" else "spec_failed", 1551 - 10 * i, YESTERDAY, spec,
                         cost_usd=0.2, **({"error": "ImportError: shop.tax"} if spec == "CR-105" else {}))]
    return [
        *yesterday, ev("session_ended", 1500, YESTERDAY, status="completed"),
        ev("session_started", 120, NIGHTLY, name=name, total_specs=4),
        ev("spec_started", 119, NIGHTLY, "CR-101"),
        ev("spec_completed", 110, NIGHTLY, "CR-101", cost_usd=0.21, tokens_used=12000),
        ev("spec_started", 109, NIGHTLY, "CR-103"),
        ev("spec_failed", 100, NIGHTLY, "CR-103", cost_usd=0.31, tokens_used=15000, error=PYTEST_ERROR),
        ev("spec_started", 99, NIGHTLY, "CR-103"),
        ev("spec_completed", 90, NIGHTLY, "CR-103", cost_usd=0.18, tokens_used=9000),
        ev("spec_started", 89, NIGHTLY, LONG_SPEC),
        ev("spec_failed", 80, NIGHTLY, LONG_SPEC, cost_usd=0.44, tokens_used=22000, error=LONG_ERROR),
        ev("spec_started", 79, NIGHTLY, "CR-105"),
        ev("timeout_triggered", 60, NIGHTLY, "CR-105", cost_usd=0.12, tokens_used=6000,
           error="no progress for 19 min: /home/ralph/work/shop-backend/.ralph/logs/CR-105/attempt-1.log"),
        ev("session_ended", 59, NIGHTLY, status="completed"),
        ev("session_started", 50, STALLED, name="refactor: payments", total_specs=3),
        ev("spec_started", 49, STALLED, "CR-201"),
        ev("session_heartbeat", 40, STALLED),
        ev("session_started", 30, LIVE, name="live: api-migration", total_specs=2),
        ev("spec_started", 29, LIVE, "CR-301"),
        {**ev("intervention_request", 10, LIVE, "CR-301",
              message="Migration 0042 drops the column orders.legacy_id, which reports/legacy_export.sql still "
                      "reads. Proceed, or keep the column?"), "event_id": REQUEST},
    ]


@pytest.fixture
def site(daemon_factory: Any) -> Iterator[Nginx]:
    now = datetime.now(timezone.utc)
    d: Daemon = daemon_factory(aggregates={"stall_after_s": 120.0},
                               reports={"timezone": scenario_zone(now), "night_start": "08:00", "night_end": "16:00"})
    d.start()
    client = LineClient(d.connect())
    for event in scenario(now):
        assert client.request(event)["ok"]
    assert client.request({"type": "session_heartbeat", "session_id": LIVE})["ok"]
    client.close()
    wait_until_settled(d.dsn, lambda: session_state(d.dsn, STALLED) == "stalled"
                       and session_state(d.dsn, LIVE) == "waiting_for_human")  # its request is open
    root = short_tempdir("rm-phone-")
    render_once(load_settings(d.config_path), dsn=d.dsn, site_dir=root / "site", full=True)
    server = start_nginx(root / "site", root / "nginx")
    yield server
    stop_nginx(server)
    shutil.rmtree(root, ignore_errors=True)


PAGES = {
    "overview": ("/", "#night h3 + table tbody tr:first-child td.msg"),
    "session": (f"/sessions/{NIGHTLY}.html", "#runs tr.badrow td.msg, #runs tr.fixedrow td.msg"),
    "spec": (f"/specs/{page_name('CR-103')}.html", "#runs tr.fixedrow td.msg"),
}
"""Each page, and the error of the first failure listed in its failures' section."""

NO_SIDEWAYS = "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
SCROLLED_SIDEWAYS = """() => [...document.querySelectorAll('section, .grid2 > *')]
  // Parts that scroll sideways on their own (a page can fit while a table in it is cut off).
  .filter(el => el.scrollWidth > el.clientWidth + 1)
  .map(el => `${el.tagName}#${el.id}.${el.className}: ${el.scrollWidth} > ${el.clientWidth}`)"""
SMALL_TEXT = """() => {
  // Visible text under 16 px, outside charts (SVG text scales with the picture; its caption is HTML).
  const small = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!node.textContent.trim() || !el || el.closest('svg, thead, [hidden]') || !el.getClientRects().length) continue;
    const size = parseFloat(getComputedStyle(el).fontSize);
    if (size < 16) small.push(`${el.tagName}.${el.className}: ${size}px "${node.textContent.trim().slice(0, 30)}"`);
  }
  return small.slice(0, 10);
}"""
SMALL_TARGETS = """() => {
  // Links and toggles a thumb uses (tables, navigation, filters, breadcrumbs) under 44 px tall.
  const small = [];
  for (const el of document.querySelectorAll('table a, nav a, .crumbs a, summary, .brand')) {
    const box = el.getBoundingClientRect();
    if (box.width && box.height < 44) small.push(`${el.tagName} "${el.textContent.trim().slice(0, 30)}": ${box.height}px`);
  }
  return small.slice(0, 10);
}"""


def first_screen_of_section(page: Any, selector: str) -> None:
    """With its section's heading at the top of the screen, the first failure's error is on the screen."""
    error = page.locator(selector).first
    page.evaluate("el => el.closest('section').querySelector('h2').scrollIntoView()", error.element_handle())
    box = error.bounding_box()
    viewport = page.viewport_size
    assert box is not None and 0 <= box["y"] and box["y"] + 24 <= viewport["height"], (selector, box)
    assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"], (selector, box)
    assert error.inner_text().strip()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_phone_and_desktop_layouts(site: Nginx, browser: Any, artifacts: Path, scheme: str) -> None:
    for size in (PHONE, DESKTOP):
        context = browser.new_context(viewport=size, color_scheme=scheme, device_scale_factor=1,
                                      is_mobile=size is PHONE, has_touch=size is PHONE)
        page = context.new_page()
        w = watch(page)
        for name, (path, error) in PAGES.items():
            page.goto(site.base_url + path, wait_until="networkidle")
            assert page.evaluate(NO_SIDEWAYS), (name, size, page.evaluate("document.documentElement.scrollWidth"))
            first_screen_of_section(page, error)
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(artifacts / f"phone-{name}-{size['width']}-{scheme}.png"), full_page=True)
            if size is PHONE:
                assert page.evaluate(SMALL_TEXT) == [], name
                assert page.evaluate(SMALL_TARGETS) == [], name
                # Tables are cards: status, name, time and error of a row within the screen's width.
                row = page.locator("table.stack tbody tr").first
                assert row.evaluate("r => getComputedStyle(r).display") == "grid"
            background = page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
            assert (background == "rgb(15, 18, 22)") == (scheme == "dark"), background
        if size is DESKTOP:  # and a laptop window: no page, and no table in it, scrolls sideways
            for width in (DESKTOP, LAPTOP):
                page.set_viewport_size(width)
                for name, (path, _) in PAGES.items():
                    page.goto(site.base_url + path, wait_until="networkidle")
                    assert page.evaluate(NO_SIDEWAYS), (name, width, page.evaluate("document.documentElement.scrollWidth"))
                    assert page.evaluate(SCROLLED_SIDEWAYS) == [], (name, width)
        assert_clean(w, site.base_url)
        context.close()


@pytest.mark.parametrize("javascript", [True, False])
def test_anchors_land_on_the_item_and_highlight_it(site: Nginx, browser: Any, artifacts: Path,
                                                   javascript: bool) -> None:
    targets = {
        "request": (f"/sessions/{LIVE}.html#request-{REQUEST}", f"#request-{REQUEST}"),
        "run": (f"/sessions/{NIGHTLY}.html#run-CR-103-1", "#run-CR-103-1"),
        "spec-run": (f"/specs/{page_name('CR-103')}.html#run-{NIGHTLY}-1", f"#run-{NIGHTLY}-1"),
        "session": (f"/#session-{STALLED}", f"#session-{STALLED}"),
        "section": (f"/sessions/{NIGHTLY}.html#runs", "#runs"),
    }
    for size in (PHONE, DESKTOP):
        context = browser.new_context(viewport=size, java_script_enabled=javascript)
        page = context.new_page()
        for name, (url, selector) in targets.items():
            page.goto(site.base_url + url, wait_until="load")
            item = page.locator(selector)
            assert item.evaluate("el => el.matches(':target')"), name
            highlighted = item.evaluate("""el => {
                const row = el.tagName === 'TR' ? el : el.querySelector('h2');
                const paint = e => getComputedStyle(e).backgroundColor;
                return [paint(row), paint(row.firstElementChild || row)];
            }""")
            assert any(color in ("rgb(255, 248, 197)",) for color in highlighted), (name, highlighted)
            box = item.bounding_box()  # scrolled to it (as far as the page goes)
            assert box is not None and 0 <= box["y"] and box["y"] + min(box["height"], 100) <= size["height"], (name, box)
            assert page.evaluate(NO_SIDEWAYS), name
            if name in ("request", "run"):
                page.screenshot(path=str(artifacts / f"phone-anchor-{name}-{size['width']}"
                                                     f"{'' if javascript else '-nojs'}.png"))
        if not javascript:  # the page reads whole without its script: times in UTC
            assert "UTC" in page.inner_text("main")
        context.close()


WIDE_CHART = """sel => {
  const figure = document.querySelector(sel), chart = figure.querySelector('svg'), hint = figure.querySelector('.swipe');
  const f = figure.getBoundingClientRect(), c = chart.getBoundingClientRect();
  return {scrolls: figure.scrollWidth > figure.clientWidth, left: c.left - f.left, right: f.right - c.right,
          hint: hint !== null && getComputedStyle(hint).display !== 'none' && hint.getBoundingClientRect().width > 0};
}"""


def test_a_chart_wider_than_a_phone_says_so_and_the_last_24_hours_open_at_their_newest(
        site: Nginx, browser: Any, artifacts: Path) -> None:
    """On a phone the wide charts scroll sideways: the 24 hours of events open at their right end
    (now), not at '24 h ago' (which read as a night without activity), and each says it scrolls;
    on a desktop they fit and say nothing."""
    for size in (PHONE, DESKTOP):
        context = browser.new_context(viewport=size, is_mobile=size is PHONE, has_touch=size is PHONE)
        page = context.new_page()
        page.goto(site.base_url + "/", wait_until="load")
        events = page.evaluate(WIDE_CHART, "figure.newest")
        if size is PHONE:
            page.locator("figure.newest").screenshot(path=str(artifacts / "phone-events-chart-390.png"))
        page.goto(site.base_url + f"/sessions/{NIGHTLY}.html", wait_until="load")
        gantt = page.evaluate(WIDE_CHART, "figure.wide")
        if size is PHONE:
            page.locator("figure.wide").screenshot(path=str(artifacts / "phone-gantt-390.png"))
            assert events["scrolls"] and events["hint"] and abs(events["right"]) < 20 and events["left"] < -100, events
            assert gantt["scrolls"] and gantt["hint"] and abs(gantt["left"]) < 20, gantt  # its spec labels in sight
        else:
            assert not events["scrolls"] and not events["hint"] and not gantt["scrolls"] and not gantt["hint"]
        context.close()


ALIGNED = """sel => [...document.querySelectorAll(sel + ' > tbody > tr:first-child > td')]
  .map(td => getComputedStyle(td).textAlign === 'right' ? 'R' : 'L').join('')"""


def test_numbers_in_the_big_tables_line_up_on_the_right_on_a_desktop_and_read_as_cards_on_a_phone(
        site: Nginx, browser: Any) -> None:
    """The tables of hundreds of rows align their numbers by column from the stylesheet (no class
    on each cell): attempts, tokens, cost, and a session's counts."""
    pages = {f"/sessions/{NIGHTLY}.html": ("table.runs-by-session", "LRLLLRRLL"),
             f"/specs/{page_name('CR-103')}.html": ("table.runs-by-spec", "LLRLLRRLL"),
             "/": ("table.sessions", "LLLLLRRRRR")}
    for size in (DESKTOP, PHONE):
        context = browser.new_context(viewport=size)
        page = context.new_page()
        for path, (table, desktop) in pages.items():
            page.goto(site.base_url + path, wait_until="load")
            expected = desktop if size is DESKTOP else "L" * len(desktop)
            assert page.evaluate(ALIGNED, table) == expected, (path, size)
        context.close()
