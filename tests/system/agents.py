"""Agents that keep sending through restarts: each writer resends what was not acknowledged
(same event_id, so a resend is stored once) on a new connection, and counts every connection
the socket refused.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

WINDOW = 20
REPLY_TIMEOUT_S = 5.0
"""A daemon that does not answer in this long (stopped, killed) is given up on: reconnect, resend."""


@dataclass
class Writer:
    number: int
    acked: set[str] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)
    spooled: int = 0
    reconnects: int = 0
    rejected: list[str] = field(default_factory=list)


class Agents:
    """`writers` threads, each sending windows of `WINDOW` events every `pace_s` seconds until
    stopped. `connect` opens a connection to the event socket."""

    def __init__(self, connect: Callable[[], socket.socket], *, writers: int, pace_s: float, tag: str) -> None:
        self.writers = [Writer(i) for i in range(writers)]
        self._connect = connect
        self._pace_s = pace_s
        self._tag = tag
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in self.writers]

    def __enter__(self) -> Agents:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        assert not any(t.is_alive() for t in self._threads), "agents did not stop"

    @property
    def acked(self) -> set[str]:
        return set().union(*(w.acked for w in self.writers))

    @property
    def refused(self) -> list[str]:
        return [r for w in self.writers for r in w.refused]

    @property
    def spooled(self) -> int:
        return sum(w.spooled for w in self.writers)

    @property
    def reconnects(self) -> int:
        return sum(w.reconnects for w in self.writers)

    @property
    def rejected(self) -> list[str]:
        return [r for w in self.writers for r in w.rejected]

    def wait_for_acks(self, more_than: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) <= more_than:
            assert time.monotonic() < deadline, f"no new acks in {timeout} s ({len(self.acked)} so far)"
            time.sleep(0.05)

    def _run(self, writer: Writer) -> None:
        pending: list[tuple[str, bytes]] = []   # sent or to send, not yet acknowledged
        seq = 0
        sock: socket.socket | None = None
        while not self._stop.is_set() or (pending and sock is not None):
            if sock is None:
                try:
                    sock = self._connect()
                    sock.settimeout(REPLY_TIMEOUT_S)
                    replies = sock.makefile("rb")
                except OSError as exc:   # ECONNREFUSED, ENOENT: what socket activation must prevent
                    writer.refused.append(f"{type(exc).__name__}: {exc}")
                    time.sleep(0.05)
                    continue
            if not pending:
                for _ in range(WINDOW):
                    event_id = str(uuid.uuid4())
                    line = json.dumps({"type": "session_heartbeat", "event_id": event_id,
                                       "data": {"writer": writer.number, "seq": seq, "run": self._tag}})
                    pending.append((event_id, line.encode() + b"\n"))
                    seq += 1
            try:
                sock.sendall(b"".join(line for _, line in pending))
                while pending:
                    reply = replies.readline()
                    if not reply:
                        raise ConnectionError("closed by the daemon")
                    answer = json.loads(reply)
                    event_id, _ = pending.pop(0)
                    if answer.get("ok"):
                        assert answer["id"] == event_id, (answer, event_id)
                        writer.acked.add(event_id)
                        writer.spooled += bool(answer.get("spooled"))
                    else:
                        writer.rejected.append(answer.get("error", "?"))
            except (OSError, ConnectionError, ValueError):
                sock.close()
                sock = None
                writer.reconnects += 1
                continue
            time.sleep(self._pace_s)
        if sock is not None:
            sock.close()
