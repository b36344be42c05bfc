"""Start `ralph-monitor run` and wait until it says READY=1 on a private NOTIFY_SOCKET, as
systemd would: shared by the test fixtures and the benchmarks (bench/ puts the repository
root on sys.path to import it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

READY_TIMEOUT_S = 60.0
POLL_S = 0.2


class DaemonNotReady(RuntimeError):
    """The daemon exited, or did not report READY=1 in time; the message ends with its log."""


def start_daemon(config_path: Path, *, log_path: Path, notify_path: Path, env: dict[str, str] | None = None,
                 wait: bool = True, timeout_s: float = READY_TIMEOUT_S,
                 pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    """`python -m ralph_monitor run --config config_path`, output appended to `log_path`;
    returns once it sent READY=1 (at once with wait=False). `env` is added to this process's
    environment and may point NOTIFY_SOCKET elsewhere (then wait=False)."""
    if notify_path.exists():
        notify_path.unlink()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    try:
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "ralph_monitor", "run", "--config", str(config_path)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, pass_fds=pass_fds,
                env={**os.environ, "NOTIFY_SOCKET": str(notify_path), **(env or {})})
        if wait:
            _wait_ready(process, notify, log_path, timeout_s)
        return process
    finally:
        notify.close()


def _wait_ready(process: subprocess.Popen[bytes], notify: socket.socket, log_path: Path, timeout_s: float) -> None:
    notify.settimeout(POLL_S)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DaemonNotReady(f"daemon exited with {process.returncode}:\n{_tail(log_path)}")
        try:
            if b"READY=1" in notify.recv(4096):
                return
        except TimeoutError:
            continue
    raise DaemonNotReady(f"daemon not ready after {timeout_s:g} s:\n{_tail(log_path)}")


def _tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
