"""A session page's timeline (queries.session_details): a small session lists every event; a
big one its story without heartbeats and tool-level hook events (cc.*), read from the index
that holds just those; both cut to the newest `timeline_limit`, oldest first."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from ralph_monitor import queries
from ralph_monitor.config import load_settings
from ralph_monitor.store import open_read_store
from tests.conftest import Daemon, LineClient, query
from tests.integration.test_overnight import wait_until_settled

BIG, SMALL = str(uuid.UUID(int=11, version=4)), str(uuid.UUID(int=12, version=4))
KINDS = ["cc.PreToolUse", "cc.PostToolUse", "session_heartbeat", "cc.Stop", "spec_started", "spec_completed"]


def session_events(session: str, count: int, now: datetime) -> list[dict[str, Any]]:
    events = [{"type": "session_started", "session_id": session, "ts": (now - timedelta(hours=2)).isoformat(),
               "event_id": str(uuid.uuid4()), "data": {"name": session[:8]}}]
    for n in range(count):
        kind = KINDS[n % len(KINDS)]
        event = {"type": kind, "session_id": session, "event_id": str(uuid.uuid4()),
                 "ts": (now - timedelta(hours=2) + timedelta(seconds=5 * (n + 1))).isoformat()}
        if kind.startswith("spec_"):
            event["spec_id"] = f"CR-{n // len(KINDS)}"
        events.append(event)
    return events


def expected(dsn: str, session: str, *, story: bool, limit: int) -> list[int]:
    where = " AND event_type <> 'session_heartbeat' AND event_type NOT LIKE 'cc.%%'" if story else ""
    rows = query(dsn, f"SELECT id FROM events WHERE session_id = %s{where} ORDER BY occurred_at DESC, id DESC "
                      f"LIMIT {limit}", (session,))
    return [r["id"] for r in reversed(rows)]


def test_big_sessions_list_their_story_small_ones_every_event(daemon: Daemon) -> None:
    now = datetime.now(timezone.utc)
    client = LineClient(daemon.connect())
    for event in session_events(BIG, 700, now) + session_events(SMALL, 60, now):
        assert client.request(event)["ok"]
    client.close()
    wait_until_settled(daemon.dsn)
    with open_read_store(load_settings(daemon.config_path), dsn=daemon.dsn) as store:
        sessions = [s for s in queries.sessions_since(store, now - timedelta(days=1)) if str(s.id) in (BIG, SMALL)]
        assert len(sessions) == 2
        details_all = queries.session_details(store, sessions, whole_timeline_max=500, timeline_limit=2000)
        for limit in (2000, 7):
            details = queries.session_details(store, sessions, whole_timeline_max=500, timeline_limit=limit)
            big, small = details[uuid.UUID(BIG)].timeline, details[uuid.UUID(SMALL)].timeline
            assert [e.id for e in big] == expected(daemon.dsn, BIG, story=True, limit=limit)
            assert [e.id for e in small] == expected(daemon.dsn, SMALL, story=False, limit=limit)
            assert not any(e.event_type.startswith("cc.") or e.event_type == "session_heartbeat" for e in big)
            assert len(small) == min(limit, len(expected(daemon.dsn, SMALL, story=False, limit=2000)))
        assert {"cc.PreToolUse", "session_heartbeat"} <= {e.event_type for e in details_all[uuid.UUID(SMALL)].timeline}
        assert len(details[uuid.UUID(BIG)].timeline) == 7

    # An event from before the session started, arriving late: the bound moves back with it.
    early = {"type": "intervention_request", "session_id": BIG, "event_id": str(uuid.uuid4()),
             "ts": (now - timedelta(days=1, hours=3)).isoformat(), "data": {"message": "clock behind?"}}
    client = LineClient(daemon.connect())
    assert client.request(early)["ok"]
    client.close()
    wait_until_settled(daemon.dsn)
    first = query(daemon.dsn, "SELECT first_event_at = (SELECT min(occurred_at) FROM events WHERE session_id = %s) "
                              "AS exact FROM sessions WHERE id = %s", (BIG, BIG))
    assert first == [{"exact": True}]
    with open_read_store(load_settings(daemon.config_path), dsn=daemon.dsn) as store:
        sessions = [s for s in queries.sessions_since(store, now - timedelta(days=2)) if str(s.id) in (BIG, SMALL)]
        details = queries.session_details(store, sessions, whole_timeline_max=500, timeline_limit=2000)
    assert [e.id for e in details[uuid.UUID(BIG)].timeline] == expected(daemon.dsn, BIG, story=True, limit=2000)
    assert details[uuid.UUID(BIG)].timeline[0].event_id == uuid.UUID(early["event_id"])
    with open_read_store(load_settings(daemon.config_path), dsn=daemon.dsn) as store:
        one = queries.session_detail(store, uuid.UUID(BIG), timeline_limit=None).timeline  # `ralph-query session`
    assert [e.id for e in one] == [r["id"] for r in query(
        daemon.dsn, "SELECT id FROM events WHERE session_id = %s ORDER BY occurred_at, id", (BIG,))]
    assert one[0].event_id == uuid.UUID(early["event_id"])
