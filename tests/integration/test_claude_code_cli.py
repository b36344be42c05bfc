"""The real Claude Code CLI (`@anthropic-ai/claude-code`, pinned, from npm) with the hook and
the loop wrapper, against a local stand-in for the Messages API (tests/messages_api_mock.py).

The CLI runs with only the environment it needs to talk to the mock (a dummy API key, no
telemetry, no auto-update, no error reports, a temporary HOME), plus PATH, TMPDIR and the
test run's marker; it never reaches anything else. What a user would check is checked: every
hook event is filed under the CLI's session (or the loop's spec), the tokens recorded equal
what the "API" billed and what the CLI printed, the cost equals the CLI's, and the hook costs
the agent well under a second per run.

`ralph-monitor import claude-code` is checked on the transcripts the CLI wrote, against the
mock's bill, the CLI's own costs and ccusage (npm) reading the same files.

The CLI and ccusage are installed once into ~/.cache/ralph-monitor-tests (or $RALPH_TEST_CACHE);
with no npm, or no registry to install from, the tests skip and say so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests import leaks
from tests.agent_tools import BIN, events, settle, wait_for
from tests.conftest import Daemon, query
from tests.hook_payloads import readme_hook_settings
from tests.messages_api_mock import MessagesApiMock, Script

CLI_VERSION = "2.1.328"
CCUSAGE_VERSION = "20.0.24"
"""The newest ccusage whose native binary is on npm (20.0.26's is not)."""
CACHE_ROOT = Path(os.environ.get("RALPH_TEST_CACHE") or Path.home() / ".cache" / "ralph-monitor-tests")
INSTALL_TIMEOUT_S = 300
RUN_TIMEOUT_S = 120
OFFLINE_SIGNS = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT", "ENETUNREACH", "ECONNRESET", "network")
RECOMMENDED_EVENTS = tuple(readme_hook_settings()["hooks"])
"""The hook events the README installs the hook for."""
FINAL_TEXT = "Done: the command ran.\nIt printed mock-tool-ran.\nNothing else to do."
SECRET = "sk-" + "ant-api03-" + "Xq7" * 30 + "AA"
"""An API key the scripted command exports and prints: it must not reach the database."""
COMMAND = f"export SERVICE_API_KEY={SECRET} && echo mock-tool-ran $SERVICE_API_KEY"
SCRIPTED_RUN_EVENTS = ("session_started", "cc.SessionStart", "cc.UserPromptSubmit", "cc.PreToolUse", "cc.PostToolUse",
                       "cc.PostToolBatch", "cc.Stop", "cc.SessionEnd", "session_ended")
"""What the hook records of one run of "Run the scripted command" outside a loop, in order."""


def npm_tool(package: str, version: str, binary: str) -> Path:
    """`binary` of the npm package `package@version`, installed into the cache on first use."""
    home = CACHE_ROOT / f"{package.replace('/', '+')}-{version}"
    path = home / "node_modules" / ".bin" / binary
    if path.exists():
        return path
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"npm is not installed: cannot install {package}")
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{package.replace('/', '+')}-{version}-", dir=CACHE_ROOT))
    try:
        result = subprocess.run([npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund",
                                 "--loglevel", "error", f"{package}@{version}"],
                                capture_output=True, timeout=INSTALL_TIMEOUT_S, env={**os.environ, "TMPDIR": str(staging)})
        output = (result.stdout + result.stderr).decode(errors="replace")
        if result.returncode != 0 and any(sign in output for sign in OFFLINE_SIGNS):
            pytest.skip(f"the npm registry is unreachable, cannot install {package}: {output[-300:]}")
        assert result.returncode == 0, output
        staging.rename(home)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


@pytest.fixture(scope="module")
def claude_cli() -> Path:
    return npm_tool("@anthropic-ai/claude-code", CLI_VERSION, "claude")


@pytest.fixture(scope="module")
def ccusage() -> Path:
    return npm_tool("ccusage", CCUSAGE_VERSION, "ccusage")


@pytest.fixture
def api() -> Any:
    mock = MessagesApiMock(script=Script(
        command=COMMAND, final_text=FINAL_TEXT,
        calls_by_word={"forbidden": ("Write", {"file_path": "/etc/ralph-monitor-test-forbidden", "content": "no\n"})},
        errors_by_word={"broken": 400})).start()
    yield mock
    mock.stop()


def cli_env(home: Path, api: MessagesApiMock, **extra: str) -> dict[str, str]:
    """Only what the CLI needs to run against the mock, and nothing that reaches further."""
    env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "TMPDIR": str(home),
           "ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "sk-ant-api03-dummy-key-for-the-local-mock",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
           "DISABLE_ERROR_REPORTING": "1", "DISABLE_AUTOUPDATER": "1",
           leaks.MARKER: os.environ[leaks.MARKER]}
    env.update(extra)
    return env


def install_hooks(home: Path, command: str, hooked: tuple[str, ...] = RECOMMENDED_EVENTS) -> None:
    """~/.claude/settings.json with `command` as the hook of each event in `hooked`."""
    settings = home / ".claude" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    hooks = {name: [{"hooks": [{"type": "command", "command": command, "timeout": 5}]}] for name in hooked}
    settings.write_text(json.dumps({"hooks": hooks}))


def timed(command: str, times: Path) -> str:
    """`command`, with the wall time of each call (as Claude Code waits for it) appended to `times`."""
    return (f"/bin/sh -c 't0=$(date +%s%N); {command}; echo $(( $(date +%s%N) - t0 )) >> {times}'")


def run_claude(claude: Path, prompt: str, env: dict[str, str], cwd: Path) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    result = subprocess.run([str(claude), "-p", prompt, "--allowedTools", "Bash", "--output-format", "json"],
                            capture_output=True, env=env, cwd=cwd, timeout=RUN_TIMEOUT_S)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return json.loads(result.stdout), elapsed


def cli_tokens(result: dict[str, Any]) -> int:
    usage = result["usage"]
    return sum(usage[f] for f in ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                                  "cache_read_input_tokens"))


def test_the_hook_records_a_real_claude_session_as_the_api_billed_it(claude_cli: Path, api: MessagesApiMock,
                                                                     daemon: Daemon, tmp_path: Path) -> None:
    home, project = tmp_path / "home", tmp_path / "shop"
    project.mkdir()
    times = tmp_path / "hook-ns.txt"
    install_hooks(home, timed(f"{BIN / 'ralph-monitor'} hook --socket {daemon.socket_path}", times),
                  RECOMMENDED_EVENTS + ("MessageDisplay",))
    result, _ = run_claude(claude_cli, "Run the scripted command", cli_env(home, api), project)
    session = result["session_id"]
    assert result["result"] == FINAL_TEXT and result["num_turns"] == 2

    rows = wait_for(lambda: (found := events(daemon.dsn)) and len(found) >= 9 and found, what="the hook's events")
    settle(daemon.dsn, lambda: query(daemon.dsn, "SELECT 1 FROM sessions WHERE end_time IS NOT NULL"))
    assert {r["session_id"] for r in rows} == {session}
    # Every hook event the run fired, in order; MessageDisplay (every streamed chunk) is left out.
    assert [r["event_type"] for r in rows] == list(SCRIPTED_RUN_EVENTS)
    data = {r["event_type"]: r["payload"]["data"] for r in rows}
    assert data["cc.PreToolUse"]["tool_input"]["command"] == (
        "export SERVICE_API_KEY=[REDACTED:anthropic_key] && echo mock-tool-ran $SERVICE_API_KEY")
    assert data["cc.PostToolUse"]["tool_response"]["stdout"] == "mock-tool-ran [REDACTED:anthropic_key]"
    assert data["cc.PostToolUse"]["redactions"] == 2  # in the command, in its output
    assert not query(daemon.dsn, "SELECT 1 FROM events WHERE strpos(payload::text, %s) > 0", (SECRET[:20],))
    assert data["cc.PostToolBatch"]["tools"] == [{"tool_name": "Bash",
                                                  "tool_use_id": data["cc.PreToolUse"]["tool_use_id"]}]
    # The Stop hook ran before the CLI wrote the last reply; the hook waited for it.
    assert data["cc.Stop"]["last_assistant_message"] == FINAL_TEXT
    assert data["cc.Stop"]["usage"]["tokens_used"] == api.tokens_total() == cli_tokens(result)
    assert data["cc.Stop"]["usage"]["by_model"] == api.usage_by_model()
    assert data["cc.SessionEnd"]["cost"]["cost_usd"] == result["total_cost_usd"]
    ended = data["session_ended"]
    assert (ended["cost_source"], ended["models"]) == ("api", list(result["modelUsage"]))
    row = query(daemon.dsn, "SELECT * FROM sessions")[0]
    assert (row["name"], row["execution_state"]) == ("claude shop", "completed")
    assert row["tokens_used"] == api.tokens_total()
    assert row["cost_usd"] == round(Decimal(str(result["total_cost_usd"])), 6)
    # Every hook call the CLI made was timed (bench/hook.py reports what they cost; a timed
    # assertion here would only measure how busy the machine is).
    calls = [int(line) / 1e9 for line in times.read_text().split()]
    assert len(calls) >= 9  # the 7 events above and MessageDisplay, once per reply


def test_the_settings_claude_settings_prints_record_a_real_claude_session(claude_cli: Path, api: MessagesApiMock,
                                                                          daemon: Daemon, tmp_path: Path) -> None:
    """`ralph-monitor claude-settings` as the settings file: `python -S` and the fast entry, --guard
    on PreToolUse and UserPromptSubmit, the status line; Claude Code runs each command as it is."""
    home, project = tmp_path / "home", tmp_path / "shop"
    project.mkdir()
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / "settings.json").write_bytes(subprocess.run(
        [str(BIN / "ralph-monitor"), "claude-settings", "--socket", daemon.socket_path],
        capture_output=True, timeout=60, check=True).stdout)
    result, _ = run_claude(claude_cli, "Run the scripted command", cli_env(home, api), project)
    assert result["result"] == FINAL_TEXT and result["num_turns"] == 2
    rows = wait_for(lambda: (found := events(daemon.dsn)) and len(found) >= len(SCRIPTED_RUN_EVENTS) and found,
                    what="the hook's events")
    settle(daemon.dsn, lambda: query(daemon.dsn, "SELECT 1 FROM sessions WHERE end_time IS NOT NULL"))
    assert [r["event_type"] for r in rows] == list(SCRIPTED_RUN_EVENTS)
    assert {r["session_id"] for r in rows} == {result["session_id"]}
    stop = next(r for r in rows if r["event_type"] == "cc.Stop")["payload"]["data"]
    assert stop["usage"]["tokens_used"] == api.tokens_total() == cli_tokens(result)


def test_the_loop_records_each_spec_with_the_results_fields_and_flags_refused_tools(
        claude_cli: Path, api: MessagesApiMock, daemon: Daemon, tmp_path: Path) -> None:
    home, project = tmp_path / "home", tmp_path / "shop"
    project.mkdir()
    install_hooks(home, f"{BIN / 'ralph-monitor'} hook")  # the socket comes from the loop
    specs = tmp_path / "specs.txt"
    specs.write_text("spec-ok\nspec-forbidden\nspec-broken\n")
    env = cli_env(home, api, RALPH_MONITOR_CLIENT_SPOOL=str(tmp_path / "spool"))
    loop = subprocess.run(
        [str(BIN / "ralph-monitor"), "loop", "--config", str(daemon.config_path), "--specs", str(specs),
         "--name", "nightly", "--quiet", "--", str(claude_cli), "-p", "Work on {spec}", "--allowedTools", "Bash",
         "--output-format", "json"], capture_output=True, env=env, cwd=project, timeout=3 * RUN_TIMEOUT_S)
    assert loop.returncode == 1, loop.stderr.decode(errors="replace")  # spec-broken failed
    wait_for(lambda: len(events(daemon.dsn, "event_type = 'cc.SessionEnd'")) == 3, what="the last hook events")
    settle(daemon.dsn, lambda: query(daemon.dsn, "SELECT 1 FROM sessions WHERE end_time IS NOT NULL"))
    session = query(daemon.dsn, "SELECT * FROM sessions")[0]
    runs = {r["spec_id"]: r for r in query(daemon.dsn, "SELECT * FROM spec_runs")}
    done = {r["spec_id"]: r["payload"]["data"] for r in events(
        daemon.dsn, "event_type IN ('spec_completed', 'spec_failed')")}
    assert {k: r["status"] for k, r in runs.items()} == {
        "spec-ok": "completed", "spec-forbidden": "completed", "spec-broken": "failed"}

    ok = done["spec-ok"]
    assert (ok["subtype"], ok["terminal_reason"], ok["api_error_status"]) == ("success", "completed", None)
    assert ok["tokens_used"] == api.tokens_total("spec-ok")
    assert {m: u["costUSD"] for m, u in ok["model_usage"].items()} == {next(iter(ok["model_usage"])): ok["cost_usd"]}
    assert ok["duration_api_ms"] > 0 and "attention" not in ok and runs["spec-ok"]["error_message"] is None
    assert runs["spec-ok"]["tokens_used"] == api.tokens_total("spec-ok")

    refused = done["spec-forbidden"]
    assert refused["attention"] == ["permission_denied"] and refused["permission_denial_count"] == 1
    assert refused["permission_denials"][0]["tool_name"] == "Write"
    assert runs["spec-forbidden"]["error_message"] == (
        "permission denied: 1 tool call refused: Write /etc/ralph-monitor-test-forbidden")

    broken = done["spec-broken"]
    assert broken["is_error"] is True and broken["api_error_status"] == 400
    assert "API status 400" in runs["spec-broken"]["error_message"]

    assert session["cost_usd"] == round(sum(Decimal(str(d.get("cost_usd", 0))) for d in done.values()), 6)
    assert session["tokens_used"] == api.tokens_total()
    # Every hook event of a run is filed under the loop's session and that run's spec, and
    # names the CLI's own session of that run.
    hooked = events(daemon.dsn, "event_type LIKE 'cc.%%'")
    assert {h["session_id"] for h in hooked} == {str(session["id"])}
    for spec, result in done.items():
        mine = [h for h in hooked if h["spec_id"] == spec]
        assert mine and {h["payload"]["data"]["cc_session_id"] for h in mine} == {result["claude_session_id"]}
    assert not query(daemon.dsn, "SELECT 1 FROM events WHERE strpos(payload::text, %s) > 0", (SECRET[:20],))
    stops = {h["spec_id"]: h["payload"]["data"]["usage"] for h in hooked if h["event_type"] == "cc.Stop"}
    assert stops["spec-ok"]["tokens_used"] == ok["tokens_used"]
    assert stops["spec-forbidden"]["tokens_used"] == done["spec-forbidden"]["tokens_used"]


def test_a_permission_prompt_puts_the_session_in_waiting_for_human_until_the_agent_goes_on(
        claude_cli: Path, api: MessagesApiMock, daemon: Daemon, tmp_path: Path) -> None:
    home, project = tmp_path / "home", tmp_path / "shop"
    project.mkdir()
    hook = f"{BIN / 'ralph-monitor'} hook --socket {daemon.socket_path}"
    install_hooks(home, hook)
    # The permission request stays open while its hook runs: the person who has not answered yet.
    settings = home / ".claude" / "settings.json"
    hooks = json.loads(settings.read_text())
    hooks["hooks"]["PermissionRequest"] = [{"hooks": [{"type": "command", "command": f"{hook}; sleep 8", "timeout": 20}]}]
    settings.write_text(json.dumps(hooks))
    agent = subprocess.Popen([str(claude_cli), "-p", "Work on spec-forbidden", "--output-format", "json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(home, api), cwd=project)
    try:
        waiting = wait_for(lambda: query(daemon.dsn, "SELECT * FROM sessions WHERE execution_state = 'waiting_for_human'"),
                           timeout=RUN_TIMEOUT_S, what="the session waiting for a human")[0]
        asked = events(daemon.dsn, "event_type = 'cc.PermissionRequest'")
        assert waiting["waiting_since"] == asked[0]["occurred_at"]
        assert asked[0]["payload"]["data"]["tool_name"] == "Write"
        out = subprocess.run([str(BIN / "ralph-query"), "status", "--config", str(daemon.config_path)],
                             capture_output=True, text=True, check=True, timeout=60).stdout
        assert f"! waiting for a human: {waiting['name']} — since" in out
    finally:
        stdout, stderr = agent.communicate(timeout=RUN_TIMEOUT_S)
    assert agent.returncode == 0, stderr.decode(errors="replace")[-2000:]
    # Claude went on (here: the prompt was refused in -p mode) and finished: no longer waiting.
    settle(daemon.dsn, lambda: query(daemon.dsn, "SELECT 1 FROM sessions WHERE end_time IS NOT NULL"))
    session = query(daemon.dsn, "SELECT * FROM sessions")[0]
    assert (session["execution_state"], session["waiting_since"]) == ("completed", None)


def ccusage_daily(ccusage: Path, home: Path) -> dict[str, dict[str, dict[str, int]]]:
    """ccusage's tokens per day (UTC) and model for the transcripts under `home`."""
    result = subprocess.run([str(ccusage), "daily", "--json", "--offline", "--timezone", "UTC"],
                            capture_output=True, timeout=120, cwd=home,
                            env={"HOME": str(home), "CLAUDE_CONFIG_DIR": str(home / ".claude"), "PATH": "/usr/bin:/bin",
                                 leaks.MARKER: os.environ[leaks.MARKER]})
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    names = {"inputTokens": "input_tokens", "outputTokens": "output_tokens",
             "cacheCreationTokens": "cache_creation_input_tokens", "cacheReadTokens": "cache_read_input_tokens"}
    daily: dict[str, dict[str, dict[str, int]]] = {}
    for day in json.loads(result.stdout)["daily"]:
        for model in day["modelBreakdowns"]:
            daily.setdefault(day["period"], {})[model["modelName"]] = {ours: model[theirs] for theirs, ours in names.items()}
    return daily


def test_importing_what_the_cli_wrote_matches_the_bill_the_cli_and_ccusage(
        claude_cli: Path, ccusage: Path, api: MessagesApiMock, daemon: Daemon, tmp_path: Path) -> None:
    home, project = tmp_path / "home", tmp_path / "shop"
    project.mkdir()
    env = cli_env(home, api)
    results = [run_claude(claude_cli, prompt, env, project)[0]
               for prompt in ("Run the scripted command", "Write the forbidden file")]
    projects = home / ".claude" / "projects"
    imported = subprocess.run(
        [str(BIN / "ralph-monitor"), "import", "claude-code", "--config", str(daemon.config_path),
         "--projects", str(projects), "--since", "all", "--json"],
        capture_output=True, timeout=120, env={**os.environ, "RALPH_MONITOR_CLIENT_SPOOL": str(tmp_path / "spool")})
    assert imported.returncode == 0, imported.stderr.decode(errors="replace")
    summary = json.loads(imported.stdout)
    assert (summary["sessions"], summary["turns"], summary["tool_calls"]) == (2, 2, 2)
    assert summary["tokens_used"] == api.tokens_total() == sum(cli_tokens(r) for r in results)
    assert summary["daily"] == ccusage_daily(ccusage, home)  # per day and model, as ccusage counts them
    settle(daemon.dsn, lambda: len(query(daemon.dsn, "SELECT 1 FROM sessions WHERE end_time IS NOT NULL")) == 2)
    sessions = {str(s["id"]): s for s in query(daemon.dsn, "SELECT * FROM sessions")}
    for result in results:
        session = sessions[result["session_id"]]
        assert session["tokens_used"] == cli_tokens(result)
        assert session["cost_usd"] == round(Decimal(str(result["total_cost_usd"])), 6)  # the CLI's own figure
        end = events(daemon.dsn, "event_type = 'session_ended' AND session_id = %s", (result["session_id"],))
        assert end[-1]["payload"]["data"]["cost_source"] == "api"
    tools = {t["payload"]["data"]["tool_name"]: t for t in events(daemon.dsn, "event_type LIKE 'cc.PostToolUse%%'")}
    assert tools["Bash"]["event_type"] == "cc.PostToolUse"
    assert tools["Bash"]["payload"]["data"]["tool_input"]["command"].startswith("export SERVICE_API_KEY=[REDACTED:")
    assert tools["Write"]["event_type"] == "cc.PostToolUseFailure"  # refused: -p has nobody to ask
    assert not query(daemon.dsn, "SELECT 1 FROM events WHERE strpos(payload::text, %s) > 0", (SECRET[:20],))
