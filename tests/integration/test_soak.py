"""The soak benchmark in small (issue 12): two minutes of mixed traffic with poison, idle and
fire-and-forget clients, a PostgreSQL restart and a daemon restart, through bench/soak.py as
a subprocess (its own cluster and daemon). Nothing acknowledged is lost or stored twice, every
line is answered, and the aggregates keep up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
MINUTES = 2
RATE_EVENTS_PER_S = 100
IDLE_CLIENTS = 200
TIMEOUT_S = 240.0
"""The run takes about 2 min 10 s: two minutes of traffic, cluster and daemon start, checks."""


def test_soak_two_minutes(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, str(SOAK), "--minutes", str(MINUTES), "--rate", str(RATE_EVENTS_PER_S),
         "--idle-clients", str(IDLE_CLIENTS), "--json", str(out)],
        capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert result.returncode == 0, f"soak failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    report = json.loads(out.read_text())
    events = report["events"]

    assert report["ok"] and all(report["invariants"].values()), report["invariants"]
    assert events["sent"] > MINUTES * 60 * RATE_EVENTS_PER_S * 0.8
    assert events["acked"] == events["stored"] == events["sent"]
    assert events["lost"] == 0 and events["stored_twice"] == 0 and events["unanswered"] == 0
    assert events["spooled_acks"] > 0, "the PostgreSQL restart should have made the daemon spool"
    assert events["poison_sent"] > 0 and events["poison_acked"] == events["poison_sent"]
    rejected = report["rejected_lines"]
    assert rejected["sent"] > 0 and rejected["answered_ok_false"] == rejected["sent"]
    assert report["socat"]["lost_outside"] == 0
    assert [o["name"] for o in report["outages"]] == ["postgresql restart", "daemon restart"]
    assert report["daemon_exit_codes"] == [0, 0]
    assert len(report["rss_mb"]) == 2, "both daemon processes are reported"
    assert report["projector_lag_s"]["not_projected"] == 0 and report["projector_lag_s"]["p99"] is not None
    assert report["ack_latency"]["steady"]["count"] > 0
    assert report["projection_failures"] == 0
    assert report["clean_session"]["projected"]
