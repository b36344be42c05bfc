"""Write a man page (roff) for `ralph-monitor` or, with --query, `ralph-query`, from the
argparse help itself, so the page and `--help` never disagree.

    python packaging/manpage.py VERSION [--query] > ralph-monitor.1
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date, datetime, timezone

FILES = """\
.TP
.I /etc/ralph-monitor/config.toml
Configuration (TOML); every setting is listed with its default and help in
.IR /usr/share/ralph-monitor/config.toml.example .
.TP
.I /run/ralph-monitor/events.sock
The event socket (owned by ralph-monitor.socket, mode 0660, group ralph).
.TP
.I /var/lib/ralph-monitor
State: spool/, site/ (the dashboard nginx serves), backups/.
"""


def _escape(text: str) -> str:
    lines = []
    for line in text.replace("\\", "\\e").splitlines():
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def _block(text: str) -> str:
    return ".nf\n" + _escape(text.rstrip()) + "\n.fi\n"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor for this
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def render(parser: argparse.ArgumentParser, name: str, version: str, summary: str) -> str:
    os.environ["COLUMNS"] = "80"
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    stamp = datetime.fromtimestamp(int(epoch), tz=timezone.utc).date() if epoch else date.today()
    out = [f'.TH {name.upper()} 1 "{stamp:%Y-%m-%d}" "{name} {version}" "User Commands"',
           ".SH NAME", f"{name} \\- {summary}", ".SH SYNOPSIS", _block(parser.format_usage().removeprefix("usage: ")),
           ".SH DESCRIPTION", _block(parser.format_help())]
    commands = _subparsers(parser)
    if commands:
        out.append(".SH COMMANDS")
        for command, sub in commands.items():
            out += [f".SS {command}", _block(sub.format_help())]
    other = "ralph-query(1)" if name == "ralph-monitor" else "ralph-monitor(1)"
    out += [".SH FILES", FILES, ".SH SEE ALSO", f"{other}, systemctl(1), journalctl(1), pg_dump(1), pg_restore(1)"]
    return "\n".join(out) + "\n"


def main() -> int:
    version = sys.argv[1] if len(sys.argv) > 1 else "unknown"
    if "--query" in sys.argv:
        from ralph_monitor.query_cli import query_parser

        sys.stdout.write(render(query_parser(), "ralph-query", version,
                                "answer what happened overnight from the ralph-monitor database"))
    else:
        from ralph_monitor.cli import monitor_parser

        sys.stdout.write(render(monitor_parser(), "ralph-monitor", version,
                                "record every event of overnight coding-agent runs in PostgreSQL"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
