"""Publishing the dashboard without a database: releases flipped into place, incremental
renders replacing only the files whose bytes changed, old releases pruned, aborts leaving nothing."""

from __future__ import annotations

import os
from pathlib import Path

from ralph_monitor.dashboard.publish import KEEP_RELEASES, FullRelease, IncrementalRelease, SiteDir


def test_incremental_publish_rewrites_only_changed_files(tmp_path: Path) -> None:
    sd = SiteDir(tmp_path / "site")
    sd.prepare()
    full = FullRelease(sd)
    full.write("a.html", b"one")
    full.write("sub/b.html", b"two")
    full.commit()
    root = sd.published()
    assert root is not None and os.readlink(sd.current) == f"releases/{root.name}"
    mtime = (root / "a.html").stat().st_mtime_ns
    inc = IncrementalRelease(sd, root)
    inc.write("a.html", b"one")
    inc.write("sub/b.html", b"TWO")
    inc.write("new/c.html", b"three")
    inc.commit()
    assert inc.written == 2
    assert (root / "a.html").stat().st_mtime_ns == mtime
    assert (root / "sub" / "b.html").read_bytes() == b"TWO" and (root / "new" / "c.html").read_bytes() == b"three"
    assert not [p for p in root.rglob(".*")]  # no temporary file left behind
    for _ in range(3):
        again = FullRelease(sd)
        again.write("a.html", b"x")
        again.commit()
    sd.prune(keep_newest=KEEP_RELEASES)
    assert len(list(sd.releases.iterdir())) == KEEP_RELEASES
    aborted = FullRelease(sd)
    aborted.write("a.html", b"half")
    aborted.abort()
    assert not aborted.root.exists() and (sd.current / "a.html").read_bytes() == b"x"
