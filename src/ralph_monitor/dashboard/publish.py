"""Publishing the dashboard: the site directory, its releases, and files that appear whole.

Layout of the site dir (nginx's root is `<site_dir>/current`)::

    current -> releases/<name>     the published site (a symlink, flipped atomically)
    releases/<name>/               index.html, sessions/<id>.html, specs/<spec>.html,
                                   events/..., api/*.json, static/<asset>.<hash>.<ext>
    render-state.json              when the last render ran, how long it took, the last error
    .lock                          one renderer at a time (daemon or `ralph-monitor render`)

Publishing never exposes a half-written file. A full rebuild renders a new release
directory and flips `current` to it (the previous release stays for a while, for readers
that resolved the old link). An incremental render renders the changed pages in memory
first, then replaces each changed file by rename, a few at a time (on ext4 a rename over a
file waits for the new file's data: ~0.3 ms each), and the overview and api/status.json, which
link to the others, last. Files whose bytes did not change are left alone, so their ETag stays
and nginx can answer 304.
Files are 0644 and directories 0755 whatever the umask (the service runs with UMask=0027).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ralph_monitor.dashboard.views import dump_json, iso

FILE_MODE = 0o644
DIR_MODE = 0o755
LAST_FILES = ("index.html", "api/status.json")
"""An incremental render puts these in place after every other file it changed."""
COMMIT_THREADS = 4
"""Files an incremental render puts in place at once (4: 11 -> 7.5 ms for 24 files)."""
KEEP_RELEASES = 2
"""The published release and the one before it (a reader may still be opening its files)."""


@dataclass
class RenderResult:
    """What one render published (the daemon logs it, `ralph-monitor render` prints it)."""

    full: bool
    pages: int
    """Files rendered (HTML and JSON)."""
    written: int
    """Files that changed on disk (a full rebuild writes all of them)."""
    sessions: int
    specs: int
    seconds: float
    release: str


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


def replace_file(path: Path, data: bytes, *, chmod: bool = True) -> None:
    """Replace `path` with a file holding `data`, atomically (a new file, renamed over it);
    `chmod` as for _write_file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    _write_file(tmp, data, chmod=chmod)
    try:
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise


class FullRelease:
    """A new release directory, written file by file; published by flipping `current`."""

    def __init__(self, site: SiteDir, name: str | None = None, *, previous: Path | None = None) -> None:
        """A new release, or (`name`) one being written by another process too; `previous`:
        the published release, whose unchanged files `link` takes over."""
        # Names sort by age (microseconds), which prune() relies on.
        self.name = name or f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S.%f}-{secrets.token_hex(2)}"
        self.root = site.releases / self.name
        self.previous = previous
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

    def link(self, relpaths: tuple[str, ...]) -> bool:
        """Take these files over from the previous release (hard links: no release ever changes
        a file in place), all or none; False when it lacks one."""
        if self.previous is None or not all((self.previous / p).is_file() for p in relpaths):
            return False
        for relpath in relpaths:
            path = self.root / relpath
            _mkdirs(path.parent, self._made)
            os.link(self.previous / relpath, path)
            self.written += 1
        return True

    def commit(self) -> None:
        self._site.flip(self.name)  # old releases are pruned after the render (SiteDir.prune)

    def abort(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class IncrementalRelease:
    """Changed files of the published release, kept in memory until `commit` renames them
    into place (LAST_FILES last)."""

    def __init__(self, site: SiteDir, root: Path) -> None:
        self.root = root
        self._files: dict[str, bytes] = {}
        self._chmod = _needs_chmod()
        self.written = 0

    def write(self, relpath: str, data: bytes) -> None:
        self._files[relpath] = data

    def has(self, relpath: str) -> bool:
        return relpath in self._files or (self.root / relpath).exists()

    def commit(self) -> None:
        made: set[Path] = set()
        first = [item for item in self._files.items() if item[0] not in LAST_FILES]
        last = [item for item in self._files.items() if item[0] in LAST_FILES]
        with ThreadPoolExecutor(COMMIT_THREADS, thread_name_prefix="render-commit") as pool:
            self.written += sum(pool.map(lambda item: self._put(*item, made), first))
        self.written += sum(self._put(*item, made) for item in last)

    def _put(self, relpath: str, data: bytes, made: set[Path]) -> bool:
        """Put one file in place unless it holds these bytes already; whether it changed."""
        path = self.root / relpath
        try:
            if path.read_bytes() == data:
                return False
        except FileNotFoundError:
            _mkdirs(path.parent, made)
        replace_file(path, data, chmod=self._chmod)
        return True

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
        replace_file(self.state_path, dump_json(state))

    def record_failure(self, message: str) -> None:
        """Note a failed render in render-state.json (for `doctor` and people), best effort."""
        with suppress(Exception), self.lock():
            state = self.read_state()
            state["last_error"] = {"at": iso(datetime.now(timezone.utc)), "message": message}
            self.write_state(state)
