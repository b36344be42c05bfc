"""The query benchmark in small: bench/queries.py at the design note's own volume (--scale 1)
builds its data, re-projects a sample of its sessions with the daemon's projection step and
finds them equal to the generated rows (else it exits non-zero), and times every row once. The
benchmark's figures are only worth reading while its data is what the daemon would have written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "queries.py"
TIMEOUT_S = 120.0
"""The run takes ~8 s here: a cluster, 150,000 events, 39 rows timed once."""


def test_bench_data_is_what_the_daemon_projects(tmp_path: Path) -> None:
    out = tmp_path / "queries.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--scale", "1", "--repeats", "1", "--warmup", "0", "--quiet-wait", "0",
         "--json", str(out)],
        capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert result.returncode == 0, f"bench/queries.py failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    assert "re-projected from their events, all equal" in result.stdout, result.stdout[-3000:]
    rows = json.loads(out.read_text())
    assert len(rows) >= 39 and not [r for r in rows if r["error"]], rows
    assert all(r["median_ms"] > 0 and r["scale"] == 1 for r in rows), rows
