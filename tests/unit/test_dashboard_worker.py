"""The daemon's render process without a database: `stop()` ends a render in progress at once
(the child unwinds and exits), closes an idle child, and starts no new one; the garbage
collector runs between renders, not during them."""

from __future__ import annotations

import gc
import json
import threading
import time
import weakref
from pathlib import Path

import pytest

from ralph_monitor.config import Settings
from ralph_monitor.dashboard.publish import RenderResult
from ralph_monitor.dashboard.worker import RenderProcess
from ralph_monitor.errors import RenderFailed



class FakeRenderer:
    """Stands in for SiteRenderer in the render process: a full render takes a minute, an
    incremental one is instant. `dsn` is a directory where it notes what happened."""

    def __init__(self, settings: Settings, *, dsn: str) -> None:
        self.notes = Path(dsn)

    def render(self, *, full: bool) -> RenderResult:
        if full:
            (self.notes / "started").touch()
            time.sleep(60)
        return RenderResult(full=full, pages=0, written=0, sessions=0, specs=0, seconds=0.0, release="r")

    def close(self) -> None:
        (self.notes / "closed").touch()


class _Node:
    me: object


class CycleRenderer:
    """Stands in for SiteRenderer: each render leaves a reference cycle behind and notes (in
    render-<n>.json under `dsn`) whether the collector could run during it and whether the
    cycle of the render before is gone."""

    def __init__(self, settings: Settings, *, dsn: str) -> None:
        self.notes = Path(dsn)
        self.renders = 0
        self.last: weakref.ref[_Node] | None = None

    def render(self, *, full: bool) -> RenderResult:
        self.renders += 1
        note = {"collector_on": gc.isenabled(), "frozen": gc.get_freeze_count(),
                "previous_cycle_freed": self.last is not None and self.last() is None}
        node = _Node()
        node.me = node
        self.last = weakref.ref(node)
        (self.notes / f"render-{self.renders}.json").write_text(json.dumps(note))
        return RenderResult(full=full, pages=0, written=0, sessions=0, specs=0, seconds=0.0, release="r")

    def close(self) -> None:
        pass


@pytest.fixture
def process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RenderProcess:
    # The child unpickles FakeRenderer by module name: let it import this file as pytest did.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[__name__.count(".")]))
    return RenderProcess(FakeRenderer, Settings(), str(tmp_path))


def test_stop_ends_a_render_in_progress_at_once(process: RenderProcess, tmp_path: Path) -> None:
    errors: list[str] = []

    def render() -> None:
        try:
            process.render(full=True)
        except RenderFailed as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=render)
    thread.start()
    deadline = time.monotonic() + 20
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "started").exists()
    stopped_at = time.monotonic()
    process.stop()
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - stopped_at < 5
    assert errors == ["stopped: the daemon is shutting down"]
    assert (tmp_path / "closed").exists()  # the child unwound (SIGTERM), it was not killed
    with pytest.raises(RenderFailed, match="not started"):
        process.render(full=False)


def test_stop_closes_an_idle_render_process(process: RenderProcess, tmp_path: Path) -> None:
    assert process.render(full=False).release == "r"
    assert process.pid is not None
    process.stop()
    assert process.pid is None and (tmp_path / "closed").exists()


def test_the_collector_runs_between_renders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[__name__.count(".")]))
    process = RenderProcess(CycleRenderer, Settings(), str(tmp_path))
    try:
        for full in (True, False, False):
            process.render(full=full)
    finally:
        process.stop()
    notes = [json.loads((tmp_path / f"render-{n}.json").read_text()) for n in (1, 2, 3)]
    assert [n["collector_on"] for n in notes] == [False, False, False]
    assert [n["previous_cycle_freed"] for n in notes] == [False, True, True]
    assert notes[1]["frozen"] > 0  # what the renderer keeps is out of the collector's way
