"""Free space of the disks the monitor writes to, and when it is low.

A full disk is an ordinary night on a build box. The daemon survives it (spool, renders and
backups treat ENOSPC as a state), but it should be seen before it happens: the daemon samples
these figures for STATUS= and its monitor_hosts row (the health panel, `ralph-query status`,
alerts), and `doctor` reads the same thresholds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CRITICAL_FREE_SHARE = 0.03
"""Below this share free, a disk is critical whatever the setting says."""
CRITICAL_FREE_BYTES = 64 << 20
"""... or below this many bytes free."""
OK, LOW, CRITICAL = "ok", "low", "critical"


@dataclass(frozen=True)
class DiskUsage:
    """Space on the filesystem holding `path` (for this user: blocks reserved for root are
    not counted as free)."""

    path: str
    free_bytes: int
    total_bytes: int

    @property
    def free_share(self) -> float:
        return self.free_bytes / self.total_bytes if self.total_bytes else 1.0

    def level(self, warn_free_percent: float) -> str:
        if self.free_share < CRITICAL_FREE_SHARE or self.free_bytes < CRITICAL_FREE_BYTES:
            return CRITICAL
        return LOW if self.free_share * 100 < warn_free_percent else OK

    def describe(self) -> str:
        return f"{self.path}: {self.free_bytes / 2**20:,.0f} MiB free ({self.free_share:.0%})"


def existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists (a directory not made yet is on its parent's disk)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def usage(path: Path) -> DiskUsage | None:
    """The disk of `path`, or None when it cannot be looked at."""
    try:
        st = os.statvfs(existing(path))
    except OSError:
        return None
    return DiskUsage(str(path), st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


def sample(paths: dict[str, Path]) -> dict[str, DiskUsage]:
    """Usage per label (state, site, backups, database), for those that can be looked at."""
    found = {}
    for label, path in paths.items():
        if (measured := usage(path)) is not None:
            found[label] = measured
    return found


def low_disks(disks: dict[str, DiskUsage], warn_free_percent: float) -> dict[str, str]:
    """Per disk below the threshold, how low: e.g. {"state": "2% free (CRITICAL)"}."""
    return {label: f"{d.free_share:.0%} free{' (CRITICAL)' if d.level(warn_free_percent) == CRITICAL else ''}"
            for label, d in disks.items() if d.level(warn_free_percent) != OK}
