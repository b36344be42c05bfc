"""Real-browser fixtures: the Debian nginx serving the shipped site config on 127.0.0.1, and
the Debian chromium (headless) driven by Playwright. Playwright never downloads a browser
here: it launches /usr/bin/chromium. The tests skip, saying why, only when nginx, chromium or
the playwright package is really absent (`scripts/test` installs all three)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE_CONF = ROOT / "packaging" / "nginx" / "ralph-monitor.conf"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
NGINX = Path(shutil.which("nginx") or "/usr/sbin/nginx")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _missing() -> str | None:
    if not NGINX.exists():
        return "nginx is not installed (Debian package `nginx`; scripts/test installs it)"
    if not CHROMIUM.exists():
        return "chromium is not installed (Debian package `chromium`; scripts/test installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install -e '.[test]')"
    return None


MISSING = _missing()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)
            if MISSING:
                item.add_marker(pytest.mark.skip(reason=MISSING))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def site_config_for(site_dir: Path, port: int) -> str:
    """The shipped site config, listening on 127.0.0.1:<port> only (plain HTTP, so no password)
    and serving `site_dir`."""
    text = SITE_CONF.read_text()
    text, listens = re.subn(r"^\s*listen .*;\n", "", text, flags=re.MULTILINE)
    text, tls = re.subn(r"^\s*ssl_.*;\n", "", text, flags=re.MULTILINE)
    text, servers = re.subn(r"^server \{\n", f"server {{\n    listen 127.0.0.1:{port};\n", text, flags=re.MULTILINE)
    text, roots = re.subn(r"^(\s*)root /var/lib/ralph-monitor/site/current;$", rf"\1root {site_dir}/current;",
                          text, flags=re.MULTILINE)
    assert (listens, tls, servers, roots) == (4, 3, 1, 1), "the shipped nginx config changed shape; update this rewrite"
    return text


@dataclass
class Nginx:
    base_url: str
    prefix: Path
    process: subprocess.Popen[bytes]

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request so far."""
        out = []
        for line in self.access_log.read_text().splitlines():
            match = re.search(r'"(\w+) (\S+) HTTP/[\d.]+" (\d{3})', line)
            if match:
                out.append((match[1], match[2], int(match[3])))
        return out


def start_nginx(site_dir: Path, prefix: Path) -> Nginx:
    """nginx in the foreground (a child of the test), with a private prefix and logs."""
    port = free_port()
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "site.conf").write_text(site_config_for(site_dir, port))
    user = "user nobody nogroup;\n" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(f"""{user}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/site.conf;
}}
""")
    check = subprocess.run([str(NGINX), "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    log = open(prefix / "nginx.out", "wb")
    process = subprocess.Popen([str(NGINX), "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                               stdout=log, stderr=log)
    log.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"nginx exited: {(prefix / 'nginx.out').read_text()}"
                                 f"{(prefix / 'error.log').read_text() if (prefix / 'error.log').exists() else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return Nginx(f"http://127.0.0.1:{port}", prefix, process)


def stop_nginx(server: Nginx) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGQUIT)  # graceful shutdown
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Module-scoped: Playwright's sync API keeps an event loop running in this thread while it
    is open, and later tests call asyncio.run()."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@dataclass
class Watched:
    """What a page did: console errors, uncaught errors, every request URL."""

    console_errors: list[str]
    page_errors: list[str]
    requests: list[str]


def watch(page: Any) -> Watched:
    w = Watched([], [], [])
    page.on("console", lambda msg: w.console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: w.page_errors.append(str(exc)))
    page.on("request", lambda req: w.requests.append(req.url))
    return w


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
