"""The dashboard in a real browser, served by the real nginx with the shipped site config:
the overview and a session page of the scripted overnight run, the live refresh (304s), the
stale warning, the page without JavaScript, and the HTTP headers nginx sends."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from ralph_monitor.dashboard.render import render_once
from ralph_monitor.config import load_settings
from tests.browser.conftest import Nginx, start_nginx, stop_nginx, watch
from tests.conftest import Daemon, query, short_tempdir
from tests.integration.test_overnight import overnight  # noqa: F401 (fixture)
from tests.scenario import A
from tests.site_helpers import keep_live_run_alive


@pytest.fixture
def served(overnight: Daemon) -> Iterator[tuple[Nginx, Path]]:
    """The scripted run rendered (under the service's UMask) and served by nginx."""
    keep_live_run_alive(overnight)
    root = short_tempdir("rm-web-")
    site_dir = root / "site"
    old = os.umask(0o027)  # as under systemd: only the explicit modes make the files readable
    try:
        render_once(load_settings(overnight.config_path), dsn=overnight.dsn, site_dir=site_dir, full=True)
    finally:
        os.umask(old)
    server = start_nginx(site_dir, root / "nginx")
    yield server, site_dir
    stop_nginx(server)
    shutil.rmtree(root, ignore_errors=True)


def fetch(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def assert_clean(w: Any, base: str) -> None:
    assert not w.console_errors, w.console_errors
    assert not w.page_errors, w.page_errors
    external = [u for u in w.requests if not u.startswith(base + "/")]
    assert not external, f"requests outside the dashboard: {external}"


def test_overview_and_session_page_in_chromium(served: tuple[Nginx, Path], browser: Any, artifacts: Path,
                                               overnight: Daemon) -> None:
    server, _ = served
    # 15 and 27, plus session_stalled events when the shuffled arrival or a slow machine made
    # the stall check see a session silent for longer than the fixture's 30 s.
    events_of_a = query(overnight.dsn, "SELECT count(*) AS n FROM events WHERE session_id = %s", (A,))[0]["n"]
    all_events = query(overnight.dsn, "SELECT count(*) AS n FROM events")[0]["n"]
    for scheme in ("light", "dark"):
        context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme=scheme,
                                      timezone_id="Europe/Berlin")
        page = context.new_page()
        w = watch(page)
        page.goto(server.base_url + "/", wait_until="networkidle")
        body = page.inner_text("body")
        assert "Needs you" in body and "1 request waits for an answer" in body and "1 session stalled" in body
        assert "Which branch should I rebase on?" in body
        assert "live-run" in body and "docs-run" in body and "nightly-batch" in body
        assert "TypeError: cart is undefined" in body
        assert page.inner_text("[data-testid=spend_today]") == "$0.31"
        assert page.inner_text("[data-testid=week_success]") == "80%"
        page.wait_for_function("document.getElementById('updated').textContent.indexOf('s ago') >= 0")
        assert re.fullmatch(r"updated \d+ s ago", page.inner_text("#updated"))
        assert page.locator("#stale").is_hidden()
        first_time = page.locator("time").first
        assert not first_time.inner_text().endswith("UTC")  # shown in the viewer's zone
        assert "UTC" in (first_time.get_attribute("title") or "")
        assert page.locator("svg[role=img]").count() >= 3
        page.screenshot(path=str(artifacts / f"dashboard-overview-{scheme}.png"), full_page=True)
        assert_clean(w, server.base_url)

        page.click("text=nightly-batch")
        page.wait_for_url(f"**/sessions/{A}.html")
        body = page.inner_text("body")
        assert "nightly-batch" in page.inner_text("h1") and "completed" in page.inner_text("h1")
        assert "3 of 4" in body and "$0.27" in body and "2,700" in body
        assert "TypeError: cart is undefined" in body and "no progress for 19 min" in body
        assert "Need the staging API key" in body and "use the sandbox key" in body
        assert page.locator("table[data-testid=timeline] tbody tr").count() == events_of_a
        assert page.locator("svg[role=img] > title").first.text_content() == "Timeline of spec runs"
        page.screenshot(path=str(artifacts / f"dashboard-session-{scheme}.png"), full_page=True)
        page.click("a.spec >> text=CR-02")
        page.wait_for_url("**/specs/CR-02.html")
        assert "CR-02" in page.inner_text("h1")
        page.goto(server.base_url + "/events/index.html", wait_until="networkidle")
        assert page.locator("table[data-testid=events] tbody tr").count() == all_events
        assert_clean(w, server.base_url)
        context.close()


def test_live_refresh_uses_304_and_the_stale_warning_shows(served: tuple[Nginx, Path], browser: Any,
                                                           artifacts: Path) -> None:
    server, site_dir = served
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    w = watch(page)
    page.goto(server.base_url + "/", wait_until="networkidle")
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # polls again, now
    page.wait_for_timeout(500)
    polls = [status for method, path, status in server.requests() if path == "/api/status.json"]
    assert polls[:1] == [200] and 304 in polls[1:], polls

    # The monitor stopped 10 minutes ago; the page now says so, in red.
    status_path = site_dir / "current" / "api" / "status.json"
    snapshot = json.loads(status_path.read_text())
    old = datetime.now(timezone.utc) - timedelta(minutes=10)
    snapshot["generated_at"] = old.isoformat().replace("+00:00", "Z")
    snapshot["live"]["waiting"] = "7"
    snapshot["live"]["digest"] = "something-else"
    tmp = status_path.with_name(".status.json.tmp")
    tmp.write_text(json.dumps(snapshot))
    tmp.chmod(0o644)
    os.replace(tmp, status_path)
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    page.wait_for_selector("#stale", state="visible")
    assert "Monitor not updating since" in page.inner_text("#stale")
    color = page.eval_on_selector("#stale", "e => getComputedStyle(e).backgroundColor")
    assert color == "rgb(207, 34, 46)", color  # red
    assert page.inner_text("[data-live=waiting]") == "7"  # numbers follow the snapshot
    assert page.locator("#changed").is_visible()  # and the page offers a reload
    page.screenshot(path=str(artifacts / "dashboard-stale.png"))
    assert_clean(w, server.base_url)
    context.close()


def test_the_page_is_complete_without_javascript(served: tuple[Nginx, Path], browser: Any, artifacts: Path) -> None:
    server, _ = served
    context = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    w = watch(page)
    page.goto(server.base_url + "/", wait_until="load")
    body = page.inner_text("body")
    assert "Which branch should I rebase on?" in body and "live-run" in body and "$0.31" in body
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", body)
    assert page.locator("#stale").is_hidden()
    page.goto(f"{server.base_url}/sessions/{A}.html", wait_until="load")
    assert "TypeError: cart is undefined" in page.inner_text("body")
    page.screenshot(path=str(artifacts / "dashboard-session-nojs.png"), full_page=True)
    assert_clean(w, server.base_url)
    context.close()


def test_nginx_headers(served: tuple[Nginx, Path]) -> None:
    server, site_dir = served
    base = server.base_url
    status, headers, body = fetch(base + "/")
    assert status == 200 and b"ralph-monitor" in body
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-cache"
    assert "server" not in headers or "nginx/" not in headers["server"]

    status, headers, body = fetch(base + "/api/status.json", {"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(body))["kind"] == "status"
    assert "content-security-policy" in headers and headers["cache-control"] == "no-cache"
    status, _, _ = fetch(base + "/api/status.json", {"If-None-Match": headers["etag"]})
    assert status == 304
    status, _, _ = fetch(base + "/api/status.json", {"If-Modified-Since": headers["last-modified"]})
    assert status == 304
    status, headers, _ = fetch(base + f"/api/sessions/{A}.json")
    assert status == 200 and headers["content-type"].startswith("application/json")

    css = next(p.name for p in (site_dir / "current" / "static").iterdir() if p.suffix == ".css")
    status, headers, _ = fetch(f"{base}/static/{css}")
    assert status == 200 and headers["cache-control"] == "max-age=315360000"
    assert "content-security-policy" in headers

    assert fetch(base + "/", method="POST")[0] == 403  # read-only
    assert fetch(base + "/api/status.json", method="DELETE")[0] == 403
    (site_dir / "current" / ".index.html.1234.tmp").write_text("half")
    assert fetch(base + "/.index.html.1234.tmp")[0] == 404
    assert fetch(base + "/releases/")[0] == 404
    assert fetch(base + "/nope.html")[0] == 404
