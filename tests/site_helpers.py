"""Reading a rendered site in tests: values marked `data-testid`, table rows, every file."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any


class _TestIds(HTMLParser):
    """Text of every element with a data-testid (nested text included)."""

    VOID = {"meta", "link", "br", "img", "input", "hr", "rect", "path", "line", "circle"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.values: dict[str, str] = {}
        self.rows: dict[str, int] = {}
        self._open: list[tuple[str, str | None]] = []
        self._text: dict[str, list[str]] = {}
        self._table: str | None = None
        self._in_tbody = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        testid = dict(attrs).get("data-testid")
        if tag == "table" and testid:
            self._table = testid
            self.rows[testid] = 0
        if tag == "tbody":
            self._in_tbody = True
        if tag == "tr" and self._in_tbody and self._table:
            self.rows[self._table] += 1
        if tag in self.VOID:
            return
        self._open.append((tag, testid))
        if testid:
            self._text[testid] = []

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        pass

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_tbody = False
        if tag == "table":
            self._table = None
        while self._open:
            open_tag, testid = self._open.pop()
            if testid:
                self.values[testid] = " ".join("".join(self._text.pop(testid)).split())
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, testid in self._open:
            if testid and testid in self._text:
                self._text[testid].append(data)


def page_values(html: str) -> tuple[dict[str, str], dict[str, int]]:
    """(text of each data-testid element, body row count of each data-testid table)."""
    parser = _TestIds()
    parser.feed(html)
    parser.close()
    return parser.values, parser.rows


def read_page(site: Path, relpath: str) -> tuple[str, dict[str, str], dict[str, int]]:
    html = (site / "current" / relpath).read_text(encoding="utf-8")
    values, rows = page_values(html)
    return html, values, rows


def read_json(site: Path, relpath: str) -> Any:
    return json.loads((site / "current" / relpath).read_text(encoding="utf-8"))


def site_files(site: Path) -> list[Path]:
    return sorted(p for p in (site / "current").resolve().rglob("*") if p.is_file())


SCRIPT_TAG = re.compile(r"<script\b[^>]*>", re.IGNORECASE)


def keep_live_run_alive(daemon: Any) -> None:
    """A fresh heartbeat for the scripted run's live session C, so it is `running` (not stalled
    by [aggregates] stall_after_s = 120) whatever time the fixture took."""
    from tests.conftest import LineClient, query
    from tests.integration.test_overnight import session_state, wait_until_settled
    from tests.scenario import C

    client = LineClient(daemon.connect())
    assert client.request({"type": "session_heartbeat", "session_id": C})["ok"]
    client.close()
    wait_until_settled(daemon.dsn, lambda: session_state(daemon.dsn, C) == "running")
    assert query(daemon.dsn, "SELECT count(*) AS n FROM dirty_sessions")[0]["n"] == 0
