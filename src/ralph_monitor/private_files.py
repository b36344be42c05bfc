"""Files that hold every event (backups, retention archives): owner-only and made durable.

Shared by `backup` and `retention`: both write under a hidden `.partial` name, fsync, then
rename into place, and name their files by the UTC time they were taken.
"""

from __future__ import annotations

import os
from pathlib import Path

from ralph_monitor.errors import MaintenanceError

FILE_MODE = 0o600
"""Backups and archives hold every event: readable by their owner only."""
PARTIAL_SUFFIX = ".partial"
UTC_STAMP = "%Y%m%dT%H%M%S"
"""strftime format of the UTC time in backup and archive file names (followed by `Z`)."""


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private(path: Path) -> None:
    """Create an empty file only its owner can read; fails if `path` exists (or is a link)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    os.close(fd)


def unique_path(path: Path) -> Path:
    """`path`, or `stem-N.suffix` with the first N that names no file yet."""
    if not path.exists():
        return path
    stem, suffix = (path.name.split(".", 1) + [""])[:2]
    for n in range(2, 10_000):
        candidate = path.with_name(f"{stem}-{n}.{suffix}" if suffix else f"{stem}-{n}")
        if not candidate.exists():
            return candidate
    raise MaintenanceError(f"too many files named like {path}")
