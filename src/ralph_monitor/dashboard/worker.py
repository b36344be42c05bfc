"""The processes renders run in: the daemon's render process, and the helpers of a big rebuild.

RenderProcess keeps rendering out of the daemon's interpreter (acknowledgements keep their
latency while a page renders, and the render's memory is its own). A full rebuild of a big site
spreads its session pages over helper processes (start_share / finish_share), one per CPU.

Both are plain subprocesses speaking pickle over pipes (between this package's own processes
only), not multiprocessing, which would re-import the daemon's __main__ in the child. What a
child runs (the renderer class, its share method) comes to it pickled by reference, as module
and name: so this module needs not import the renderer, which imports it.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import secrets
import select
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from contextlib import ExitStack, suppress
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, Protocol

from ralph_monitor.config import Settings
from ralph_monitor.dashboard.publish import RenderResult, SiteDir, replace_file
from ralph_monitor.errors import RalphMonitorError, RenderFailed
from ralph_monitor.logs import setup_logging

log = logging.getLogger(__name__)

MAX_PROCESSES = 4
HELPER_TIMEOUT_S = 600
RENDER_TIMEOUT_S = 900
"""A render process that has not answered after this long is taken for hung and replaced."""

Share = tuple[subprocess.Popen[bytes], Path]
"""A helper process and the file its result comes back in."""


class Renderer(Protocol):
    """What the render process holds (SiteRenderer)."""

    def render(self, *, full: bool) -> RenderResult: ...

    def close(self) -> None: ...


# Helper processes of a big full rebuild -------------------------------------------------------


def processes() -> int:
    """How many processes a big full rebuild may use (the CPUs this process may run on, at most 4)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_PROCESSES, cpus))


def start_share(stack: ExitStack, site: SiteDir, job: Callable[..., Any], args: tuple[Any, ...]) -> Share:
    """A helper process running `job(*args)` (a module-level function or a class's method, as
    pickle sends it by name); its result comes back in a file in the site dir. `stack` kills the
    helper and removes the file when the render ends, however it ends."""
    result = site.path / f".share-{secrets.token_hex(4)}.pickle"
    process = subprocess.Popen(
        [sys.executable, "-c", "from ralph_monitor.dashboard import worker; worker._share_main()"],
        stdin=subprocess.PIPE)

    def stop() -> None:
        if process.poll() is None:
            process.kill()
        process.wait()
        with suppress(FileNotFoundError):
            result.unlink()

    stack.callback(stop)
    assert process.stdin is not None
    with process.stdin:
        process.stdin.write(pickle.dumps((result, job, args)))
    return process, result


def finish_share(helper: Share) -> Any:
    """Wait for a helper; what its job returned."""
    process, result = helper
    try:
        status = process.wait(timeout=HELPER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RenderFailed(f"a dashboard render helper took more than {HELPER_TIMEOUT_S} s; stopped it") from None
    if status != 0:
        raise RenderFailed(f"a dashboard render helper failed (exit status {status}); see its log above")
    return pickle.loads(result.read_bytes())


def _share_main() -> None:
    """Entry point of a helper process: (result file, job, arguments) in on stdin, pickled.
    No cyclic garbage collection: the process is gone after one share (see pause_collector)."""
    gc.disable()
    result, job, args = pickle.load(sys.stdin.buffer)
    replace_file(result, pickle.dumps(job(*args)))


# The daemon's render process ------------------------------------------------------------------


def pause_collector() -> None:
    """Before a render: no cyclic garbage collection until it is published. A render allocates
    many objects that live a moment, so the collector would run ~10 times in a one-minute
    render, each run walking every object the renderer keeps (compiled templates, caches):
    ~10% of an incremental render at 10x, and, now and then, a full collection of ~60 ms in the
    middle of one. A render leaves a few thousand objects in cycles (a few hundred kB), which
    collect_between_renders frees."""
    gc.disable()


def collect_between_renders(*, full: bool) -> None:
    """After a render is answered, while nobody waits: collect its cyclic garbage, then move
    what survived (what the renderer keeps) out of the collector's sight (gc.freeze), so the
    next collection walks only what the next render made. After a full rebuild everything is
    looked at again (gc.unfreeze), so that nothing frozen lives on as garbage longer than the
    time between full rebuilds."""
    if full:
        gc.unfreeze()
    gc.collect()
    gc.freeze()
    gc.enable()


class RenderProcess:
    """A long-lived child process that renders the site for the daemon, one render at a time.
    The daemon's worker thread waits for the answer; a child that died or hung is replaced at
    the next render. The child exits when its stdin closes (the daemon stopped, even by
    kill -9), and at once on `stop()`."""

    def __init__(self, make: Callable[..., Renderer], settings: Settings, dsn: str | None) -> None:
        """`make(settings, dsn=dsn)` builds the renderer in the child."""
        self._args = (make, settings, dsn)
        self._process: subprocess.Popen[bytes] | None = None
        self._busy = threading.Lock()
        """Held while a render is in progress."""
        self._guard = threading.Lock()
        """Orders starting a child against `stop()`: a child started is a child stopped."""
        self._stopped = False

    def render(self, *, full: bool) -> RenderResult:
        """Blocking (the daemon calls it in a worker thread); raises RenderFailed."""
        with self._busy:
            process = self._child()
            assert process.stdin is not None and process.stdout is not None
            try:
                pickle.dump(("render", full), process.stdin)
                process.stdin.flush()
                ready, _, _ = select.select([process.stdout], [], [], RENDER_TIMEOUT_S)
                if not ready:
                    raise TimeoutError(f"no answer in {RENDER_TIMEOUT_S} s")
                status, value = pickle.load(process.stdout)
            except (OSError, EOFError, pickle.UnpicklingError, TimeoutError) as exc:
                self.close(kill=True)
                if self._stopped:
                    raise RenderFailed("stopped: the daemon is shutting down") from None
                raise RenderFailed(f"the render process died or hung ({type(exc).__name__}: {exc}); "
                                   "a new one starts with the next render") from None
            if status != "ok":
                raise RenderFailed(value)
            return value  # type: ignore[no-any-return]

    def _child(self) -> subprocess.Popen[bytes]:
        if self._process is not None and self._process.poll() is not None:
            log.warning("the render process exited with status %s; starting a new one", self._process.returncode)
            self.close()
        with self._guard:
            if self._stopped:
                raise RenderFailed("not started: the daemon is shutting down")
            if self._process is None:
                self._process = subprocess.Popen(
                    [sys.executable, "-c", "from ralph_monitor.dashboard import worker; worker._render_process_main()"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                assert self._process.stdin is not None
                pickle.dump(self._args, self._process.stdin)
                self._process.stdin.flush()
            return self._process

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def stop(self) -> None:
        """The daemon is stopping (called on its event loop): start no more children. A child
        that is rendering gets SIGTERM, unwinds (its unpublished release and helpers go) and
        exits, so the thread waiting for it returns at once; an idle one is closed."""
        with self._guard:
            self._stopped = True
            process = self._process
        if self._busy.acquire(blocking=False):
            try:
                self.close()
            finally:
                self._busy.release()
        elif process is not None:
            with suppress(OSError):
                process.terminate()

    def close(self, *, kill: bool = False) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if kill:
            process.kill()
        for stream in (process.stdin, process.stdout):
            with suppress(OSError):
                stream.close()  # type: ignore[union-attr]
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=RENDER_TIMEOUT_S)


def _exit_on_signal(signum: int, frame: FrameType | None) -> NoReturn:
    """SIGTERM in the render process: unwind the render in progress (aborting it) and exit."""
    raise SystemExit(128 + signum)


def _render_process_main() -> None:
    """The render process: (make, settings, dsn) once, then one (request, answer) pickle pair
    per render, over its stdin and stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the daemon, which then closes our stdin
    signal.signal(signal.SIGTERM, _exit_on_signal)
    requests = sys.stdin.buffer
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to the log, not into the answers
    make, settings, dsn = pickle.load(requests)
    setup_logging(settings.monitor_log_level)
    renderer = make(settings, dsn=dsn)
    try:
        while True:
            try:
                _, full = pickle.load(requests)
            except EOFError:
                return
            pause_collector()
            try:
                answer: tuple[str, Any] = ("ok", renderer.render(full=full))
            except OSError as exc:   # a full or read-only disk: a state to report in one line
                answer = ("error", f"cannot write the dashboard in {settings.site_dir}: {exc.strerror or exc}"
                                   + (f" ({exc.filename})" if exc.filename else ""))
            except RalphMonitorError as exc:   # the database away, ...: its message says it all
                answer = ("error", str(exc))
            except Exception:   # a bug: the traceback is what someone needs
                answer = ("error", traceback.format_exc().rstrip())
            pickle.dump(answer, answers)
            answers.flush()
            collect_between_renders(full=full)
    finally:
        renderer.close()
