"""Loop health (issue 16) end to end: a real daemon and database, alerts delivered to a local
HTTP receiver. Scripted sessions for each rule fire once (one `loop_stuck` event, one alert)
and resolve once; a spec that fails twice and then passes fires nothing; a session waiting
for a human is shown as such; and the kill switches stop loops: `ralph-monitor loop --stop-on
stuck` around a fake agent that repeats one error, `ralph-monitor guard` and the hook's
`--guard` mode around a shell loop the project does not run.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ralph_monitor.config import load_settings
from ralph_monitor.dashboard.render import render_once
from tests.agent_tools import BIN, agent_env, monitor, wait_for
from tests.conftest import Daemon, query
from tests.integration.test_alerts import Receiver, alerting_daemon, receiver, send  # noqa: F401 - a fixture
from tests.site_helpers import read_page

RULE_TITLES = {
    "repeated_error": "Loop stuck (repeated error): errors",
    "repeated_tool_call": "Loop stuck (repeated tool call): tools",
    "no_change": "Loop stuck (no change): idle-tree",
    "no_progress": "Loop stuck (no progress): no-progress",
    "burn_rate": "Loop stuck (burn rate): burner",
}


def at(moment: datetime) -> str:
    return moment.isoformat()


def started(sid: str, name: str, when: datetime | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "session_started", "session_id": sid, "data": {"name": name}}
    if when is not None:
        event["ts"] = at(when)
    return event


def run(sid: str, spec: str, end: str, data: dict[str, Any], when: datetime | None = None) -> list[dict[str, Any]]:
    """A spec run: spec_started then `end`, at `when` (default: now)."""
    first: dict[str, Any] = {"type": "spec_started", "session_id": sid, "spec_id": spec}
    last: dict[str, Any] = {"type": end, "session_id": sid, "spec_id": spec, "data": data}
    if when is not None:
        first["ts"], last["ts"] = at(when), at(when + timedelta(seconds=30))
    return [first, last]


def tool_call(sid: str, command: str) -> dict[str, Any]:
    return {"type": "cc.PreToolUse", "session_id": sid,
            "data": {"tool_name": "Bash", "tool_input": {"command": command}, "tool_use_id": f"toolu_{uuid.uuid4().hex}"}}


def git(head_before: str, head_after: str) -> dict[str, Any]:
    return {"head_before": head_before, "head_after": head_after, "commits": [], "files_changed": 0,
            "insertions": 0, "deletions": 0, "dirty": False}


def stuck_events(dsn: str, sid: str) -> list[dict[str, Any]]:
    return query(dsn, "SELECT event_type, payload->'data'->>'rule' AS rule FROM events "
                      "WHERE session_id = %s AND event_type IN ('loop_stuck', 'loop_recovered') ORDER BY occurred_at",
                 (sid,))


def test_each_rule_fires_once_and_resolves_and_a_retry_that_passes_fires_nothing(
        daemon_factory: Any, receiver: Receiver) -> None:
    daemon = alerting_daemon(daemon_factory, receiver)
    now = datetime.now(timezone.utc)
    errors, retry, tools, idle, quiet, burner = (str(uuid.uuid4()) for _ in range(6))
    events: list[dict[str, Any]] = [started(errors, "errors"), started(retry, "retry"), started(tools, "tools"),
                                    started(idle, "idle-tree")]
    # The same failure three times: line numbers, temp paths, ids and times differ.
    for n, (line, tmp) in enumerate(((41, "tmpa8f3k2"), (57, "tmpq01zz9"), (63, "tmp7c2b1x"))):
        events += run(errors, "CR-1", "spec_failed", {"error": (
            f'File "/tmp/{tmp}/test_api.py", line {line}, in test_login\nAssertionError: expected 200, got 500 '
            f"(request {uuid.uuid4()} at 2026-11-28T0{n}:1{n}:00Z)")})
    # Fails twice, then passes: a retry, not a stuck loop.
    events += run(retry, "CR-2", "spec_failed", {"error": 'File "/tmp/tmpx1/t.py", line 3: flaky'})
    events += run(retry, "CR-2", "spec_failed", {"error": 'File "/tmp/tmpx2/t.py", line 9: flaky'})
    events += run(retry, "CR-2", "spec_completed", {})
    # The same tool call five times in a row (only a number in it differs).
    events += [tool_call(tools, f"pytest tests/test_db.py -x --seed {n}") for n in range(5)]
    # Three runs that left the tree as it was.
    for n in range(3):
        events += run(idle, f"iteration-{n}", "spec_completed", {"git": git("a1b2c3d4e5f6", "a1b2c3d4e5f6")})
    # Alive (heartbeats) for 40 minutes, no spec ended, no tool call succeeded.
    events += [started(quiet, "no-progress", now - timedelta(minutes=40)),
               {"type": "spec_started", "session_id": quiet, "spec_id": "Q-1", "ts": at(now - timedelta(minutes=40))}]
    events += [{"type": "session_heartbeat", "session_id": quiet, "ts": at(now - timedelta(minutes=m))}
               for m in (30, 20, 10, 0)]
    # Two runs an hour for three hours, then ten in twenty minutes.
    events.append(started(burner, "burner", now - timedelta(hours=5)))
    for n in range(6):
        events += run(burner, f"B-{n}", "spec_completed", {"cost_usd": 0.1}, now - timedelta(hours=4.5 - n * 0.5))
    for n in range(10):
        events += run(burner, f"S-{n}", "spec_completed", {"cost_usd": 0.1}, now - timedelta(minutes=90 - 2 * n))
    send(daemon, *events)

    receiver.wait_for(lambda: set(RULE_TITLES.values()) <= set(receiver.titles()), "not every rule fired")
    alert = next(m for m in receiver.received if m["title"] == RULE_TITLES["repeated_error"])
    assert "the same error 3 times in a row (spec CR-1)" in alert["message"]
    assert f"https://build-box/ralph/sessions/{errors}.html#loop-health" in alert["message"]
    assert "the same Bash call 5 times in a row" in next(
        m["message"] for m in receiver.received if m["title"] == RULE_TITLES["repeated_tool_call"])
    assert "spec runs in the last hour" in next(
        m["message"] for m in receiver.received if m["title"] == RULE_TITLES["burn_rate"])
    status = subprocess.run([str(BIN / "ralph-query"), "status", "--config", str(daemon.config_path)],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    assert "! stuck (repeated error): errors — the same error 3 times in a row (spec CR-1)" in status
    assert "! stuck (no progress): no-progress — alive but no progress for 40 min" in status
    detail = subprocess.run([str(BIN / "ralph-query"), "session", errors, "--config", str(daemon.config_path)],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    assert "! stuck (repeated error): the same error 3 times in a row (spec CR-1)" in detail
    subprocess.run([str(BIN / "ralph-monitor"), "render", "--full", "--config", str(daemon.config_path)],
                   check=True, capture_output=True, timeout=120)
    page = (daemon.root / "state" / "site" / "current" / "sessions" / f"{errors}.html").read_text()
    assert 'id="loop-health"' in page and "the same error 3 times in a row" in page

    # Each comes unstuck: a pass, another call, a commit, a spec done, the rate back down.
    resolving = run(errors, "CR-1", "spec_completed", {})
    resolving.append(tool_call(tools, "git status"))
    resolving += run(idle, "iteration-3", "spec_completed", {"git": git("a1b2c3d4e5f6", "0f9e8d7c6b5a")})
    resolving.append({"type": "spec_completed", "session_id": quiet, "spec_id": "Q-1"})
    resolving += run(burner, "B-9", "spec_completed", {"cost_usd": 0.1}, datetime.now(timezone.utc))
    send(daemon, *resolving)
    receiver.wait_for(lambda: {f"Resolved: {t}" for t in RULE_TITLES.values()} <= set(receiver.titles()),
                      "not every rule resolved")
    time.sleep(2)   # several projections and evaluations later: nothing more
    titles = receiver.titles()
    for title in RULE_TITLES.values():
        assert titles.count(title) == 1 and titles.count(f"Resolved: {title}") == 1, titles
    for sid, rule in ((errors, "repeated_error"), (tools, "repeated_tool_call"), (idle, "no_change"),
                      (quiet, "no_progress"), (burner, "burn_rate")):
        assert [(e["event_type"], e["rule"]) for e in stuck_events(daemon.dsn, sid)] == [
            ("loop_stuck", rule), ("loop_recovered", rule)]
    assert stuck_events(daemon.dsn, retry) == []
    assert not any("retry" in t for t in titles)


def test_a_session_waiting_for_a_human_is_listed_first_with_how_long(daemon: Daemon, tmp_path: Path) -> None:
    asking, prompting, busy = (str(uuid.uuid4()) for _ in range(3))
    send(daemon, started(busy, "busy"), started(asking, "asking"), started(prompting, "prompting"),
         {"type": "intervention_request", "session_id": asking, "data": {"message": "Which schema?"}},
         {"type": "cc.Notification", "session_id": prompting,
          "data": {"notification_type": "permission_prompt", "message": "Claude needs your permission to use Bash"}})

    def states() -> dict[str, str]:
        return {r["name"]: r["execution_state"] for r in query(daemon.dsn, "SELECT name, execution_state FROM sessions")}

    wait_for(lambda: states() == {"busy": "running", "asking": "waiting_for_human", "prompting": "waiting_for_human"},
             what="waiting_for_human")
    out = subprocess.run([str(BIN / "ralph-query"), "status", "--config", str(daemon.config_path)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert "! waiting for a human: asking — since" in out and "! waiting for a human: prompting — since" in out
    table = out.split("\n\n")[0]
    assert table.index("prompting") < table.index("busy") and table.index("asking") < table.index("busy")
    # The overview: the request in its table, the prompt in the agent listed once, beside it.
    render_once(load_settings(daemon.config_path), dsn=daemon.dsn, site_dir=tmp_path / "site", full=True)
    html, _, rows = read_page(tmp_path / "site", "index.html")
    assert "1 request waits for an answer · 1 session waits at a prompt" in html
    assert rows["pending"] == 1 and "Which schema?" in html
    at_prompt = html.split('data-testid="waiting-sessions"')[1].split("</ul>")[0]
    assert ">prompting</a>" in at_prompt and ">asking</a>" not in at_prompt
    # The agent goes on (the permission was granted; the question answered): running again.
    send(daemon, {"type": "cc.PostToolUse", "session_id": prompting, "data": {"tool_name": "Bash"}},
         {"type": "user_feedback", "session_id": asking, "data": {"answer": "v2"}})
    wait_for(lambda: set(states().values()) == {"running"}, what="running again")


FAKE_AGENT = textwrap.dedent('''\
    #!/bin/sh
    # Fails the same way every time (only the temp dir and the line number change).
    echo "Traceback: File \\"/tmp/tmp$$/build.py\\", line $(( $$ % 500 )): ImportError: no module named foo" >&2
    sleep 0.2
    exit 1
''')


def test_the_loop_wrapper_stops_an_agent_that_repeats_one_error(daemon: Daemon, tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    agent.write_text(FAKE_AGENT)
    agent.chmod(0o755)
    env = agent_env(tmp_path / "spool")
    done = subprocess.run([str(BIN / "ralph-monitor"), "loop", "--config", str(daemon.config_path), "--iterations",
                           "0", "--stop-on", "stuck", "--name", "spinner", "--quiet", "--", str(agent)],
                          capture_output=True, env=env, timeout=120, cwd=tmp_path)  # no git: the error rule fires
    assert done.returncode == 4, done.stderr.decode()
    assert b"stopping: flagged stuck: the same error" in done.stderr, done.stderr.decode()
    wait_for(lambda: query(daemon.dsn, "SELECT 1 FROM sessions WHERE execution_state = 'stuck'"), what="stuck")
    session = query(daemon.dsn, "SELECT * FROM sessions")[0]
    assert session["final_result"]["status"] == "stuck"
    assert "the same error" in session["final_result"]["reason"]
    assert session["specs_failed"] >= 3
    guard = wait_for(lambda: (g := monitor(daemon, "guard", "--config", str(daemon.config_path), "--session",
                                           str(session["id"]), env=env)).returncode == 1 and b"ended as stuck" in g.stderr
                     and g, what="guard sees the stuck session")
    assert b"ralph-monitor: session " in guard.stderr


GUARDED_LOOP = textwrap.dedent('''\
    #!/bin/sh
    # A loop the project does not run: it records its runs with `emit` and asks `guard` each time.
    i=0
    while {monitor} guard --quiet --session "$RALPH_SESSION_ID"; do
        i=$((i + 1))
        [ $i -gt 50 ] && exit 9
        {monitor} emit spec_started --spec "iteration-$i" >/dev/null
        {monitor} emit spec_failed --spec "iteration-$i" error="exit 1: /tmp/run-$i/out.log line $i: disk quota" >/dev/null
        sleep 0.3
    done
    echo "stopped after $i iterations"
''')


def test_guard_and_the_hook_mode_stop_a_loop_the_project_does_not_run(daemon: Daemon, tmp_path: Path) -> None:
    sid = str(uuid.uuid4())
    env = agent_env(tmp_path / "spool", RALPH_SESSION_ID=sid, RALPH_MONITOR_CONFIG=str(daemon.config_path))
    script = tmp_path / "loop.sh"
    script.write_text(GUARDED_LOOP.format(monitor=BIN / "ralph-monitor"))
    script.chmod(0o755)
    hook_input = json.dumps({"session_id": "00893aaf-19fa-41d2-8238-13269b9b3ca0", "hook_event_name": "PreToolUse",
                             "tool_name": "Bash", "tool_input": {"command": "make"}, "cwd": str(tmp_path)}).encode()
    hook = monitor(daemon, "hook", "--guard", env=env, input=hook_input)
    assert hook.returncode == 0 and hook.stdout == b""   # not flagged: nothing printed
    unguarded = monitor(daemon, "hook", env=env, input=hook_input)
    assert unguarded.returncode == 0 and unguarded.stdout == b""
    # No daemon to ask: nothing is stopped (and --strict says it could not tell).
    away = str(tmp_path / "no-daemon.sock")
    assert monitor(daemon, "hook", "--guard", "--socket", away, env=env, input=hook_input).stdout == b""
    unknown = monitor(daemon, "guard", "--socket", away, env=env)
    assert unknown.returncode == 0 and b"cannot tell" in unknown.stderr
    assert monitor(daemon, "guard", "--socket", away, "--strict", env=env).returncode == 2

    done = subprocess.run([str(script)], capture_output=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert b"stopped after" in done.stdout and b"flagged stuck: the same error" in done.stderr
    iterations = int(done.stdout.split()[-2])
    assert 3 <= iterations < 50
    # Claude Code's hook in --guard mode now stops the agent; without --guard it still prints nothing.
    hook = monitor(daemon, "hook", "--guard", env=env, input=hook_input)
    assert hook.returncode == 0
    output = json.loads(hook.stdout)
    assert output["continue"] is False and "flagged stuck: the same error" in output["stopReason"]
    assert monitor(daemon, "hook", env=env, input=hook_input).stdout == b""
    # A spec that passes ends the episode: the guard lets the loop go on again.
    send(daemon, *run(sid, "iteration-x", "spec_completed", {}))
    wait_for(lambda: monitor(daemon, "guard", "--session", sid, env=env).returncode == 0, what="unflagged")
    assert monitor(daemon, "hook", "--guard", env=env, input=hook_input).stdout == b""
