"""A small load generator for tests: writer threads that pipeline events and record acks."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

WINDOW = 50


@dataclass
class WriterResult:
    writer: int
    acked: list[str] = field(default_factory=list)
    spooled: int = 0
    errors: list[str] = field(default_factory=list)


def _write(socket_path: str, writer: int, count: int, result: WriterResult, stop: threading.Event,
           pace_s: float) -> None:
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(socket_path)
        replies = sock.makefile("rb")
        seq = 0
        while seq < count and not stop.is_set():
            ids = []
            lines = []
            for _ in range(min(WINDOW, count - seq)):
                event_id = str(uuid.uuid4())
                ids.append(event_id)
                lines.append(json.dumps({"type": "session_heartbeat", "event_id": event_id,
                                         "data": {"writer": writer, "seq": seq}}))
                seq += 1
            sock.sendall(("\n".join(lines) + "\n").encode())
            for event_id in ids:
                line = replies.readline()
                if not line:
                    raise ConnectionError("connection closed")
                reply = json.loads(line)
                if not reply.get("ok"):
                    result.errors.append(reply.get("error", "?"))
                    continue
                assert reply["id"] == event_id, (reply, event_id)
                result.acked.append(event_id)
                result.spooled += bool(reply.get("spooled"))
            if pace_s:
                time.sleep(pace_s)
        sock.close()
    except (OSError, ConnectionError, ValueError) as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}")


class Load:
    """`writers` threads each sending `per_writer` events; `stop()` ends them early."""

    def __init__(self, socket_path: str, *, writers: int, per_writer: int, pace_s: float = 0.0) -> None:
        self.results = [WriterResult(i) for i in range(writers)]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=_write, args=(socket_path, i, per_writer, r, self._stop, pace_s),
                                          daemon=True) for i, r in enumerate(self.results)]

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def join(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "writers did not finish in time"

    def stop(self) -> None:
        self._stop.set()
        self.join()

    @property
    def acked(self) -> list[str]:
        return [event_id for r in self.results for event_id in r.acked]

    @property
    def spooled(self) -> int:
        return sum(r.spooled for r in self.results)
