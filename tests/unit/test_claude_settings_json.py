"""`ralph-monitor claude-settings`: the Claude Code settings it prints are valid JSON with the
README's hook events, each command this Python with -S and the absolute path of the fast entry;
`--socket` and `--no-guard` change what they say. (tests/integration/test_claude_settings.py runs
the commands against a daemon.)"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from ralph_monitor.cli import CLAUDE_HOOK_EVENTS, GUARD_HOOK_EVENTS
from tests.hook_payloads import readme_hook_settings

README = Path(__file__).resolve().parents[2] / "README.md"
ENTRY_SUFFIX = os.path.join("ralph_monitor", "agent", "fast_entry.py")


def claude_settings(*args: str, cwd: Path | None = None, **env: str) -> dict[str, Any]:
    """The settings printed in an environment with no socket and no config but `env`'s."""
    environ = {k: v for k, v in os.environ.items() if k not in ("RALPH_MONITOR_SOCKET", "RALPH_MONITOR_CONFIG")}
    environ.setdefault("RALPH_MONITOR_CONFIG", "/nonexistent/config.toml")
    done = subprocess.run([sys.executable, "-m", "ralph_monitor", "claude-settings", *args], capture_output=True,
                          cwd=cwd, timeout=60, env={**environ, **env})
    assert done.returncode == 0 and done.stderr == b"", done.stderr
    return json.loads(done.stdout)


def hook_commands(settings: dict[str, Any]) -> dict[str, list[str]]:
    """Each event's hook command, split as /bin/sh would."""
    commands = {}
    for event, groups in settings["hooks"].items():
        [group] = groups
        [hook] = group["hooks"]
        assert (hook["type"], hook["timeout"]) == ("command", 5)
        commands[event] = shlex.split(hook["command"])
    return commands


def test_the_events_are_the_readmes() -> None:
    assert tuple(readme_hook_settings()["hooks"]) == CLAUDE_HOOK_EVENTS
    guarded = re.findall(r'"(\w+)":\s*\[\{"hooks": \[\{"type": "command", "command": "ralph-monitor hook --guard"',
                         README.read_text())
    assert set(guarded) == GUARD_HOOK_EVENTS


def test_every_command_is_this_python_with_s_and_the_fast_entry() -> None:
    settings = claude_settings()
    assert set(settings) == {"hooks", "statusLine"}
    assert tuple(settings["hooks"]) == CLAUDE_HOOK_EVENTS
    entry = hook_commands(settings)["SessionStart"][2]
    assert os.path.isabs(entry) and entry.endswith(ENTRY_SUFFIX) and os.path.isfile(entry)
    for event, argv in hook_commands(settings).items():
        assert argv[:3] == [sys.executable, "-S", entry]
        assert argv[3:] == (["hook", "--guard"] if event in GUARD_HOOK_EVENTS else ["hook"]) + [
            "--socket", "/run/ralph-monitor/events.sock"]  # no config: the default socket
    assert settings["statusLine"]["type"] == "command"
    assert shlex.split(settings["statusLine"]["command"]) == [sys.executable, "-S", entry, "statusline", "--socket",
                                                              "/run/ralph-monitor/events.sock"]
    hooks = [groups[0]["hooks"][0]["command"] for groups in settings["hooks"].values()]
    for command in [settings["statusLine"]["command"], *hooks]:
        assert command.startswith(f"{shlex.quote(sys.executable)} -S ")


def test_socket_is_made_absolute_and_given_to_every_command(tmp_path: Path) -> None:
    settings = claude_settings("--socket", "run dir/events.sock", cwd=tmp_path)
    absolute = str(tmp_path / "run dir" / "events.sock")
    for argv in [*hook_commands(settings).values(), shlex.split(settings["statusLine"]["command"])]:
        assert argv[-2:] == ["--socket", absolute]


def test_without_socket_the_one_the_hook_would_find_is_written_in(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[socket]\npath = "/srv/rm/events.sock"\n')
    for settings in (claude_settings(RALPH_MONITOR_CONFIG=str(config)), claude_settings("--config", str(config))):
        assert {argv[-1] for argv in hook_commands(settings).values()} == {"/srv/rm/events.sock"}
    from_env = claude_settings(RALPH_MONITOR_CONFIG=str(config), RALPH_MONITOR_SOCKET="/env/events.sock")
    assert {argv[-1] for argv in hook_commands(from_env).values()} == {"/env/events.sock"}


def test_no_guard_leaves_guard_out() -> None:
    settings = claude_settings("--no-guard")
    assert all(argv[3:5] == ["hook", "--socket"] for argv in hook_commands(settings).values())
    assert "--guard" not in json.dumps(settings)
