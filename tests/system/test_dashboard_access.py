"""The dashboard is not open by default: the packaged nginx site, enabled as the README says,
serves it on 127.0.0.1 without a password, over TLS (the certificate made at installation)
only to users added with `ralph-monitor dashboard-user add`, and not at all on other addresses.
"""

from __future__ import annotations

import json

from tests.system.container import Container

FETCH = """
import base64, json, ssl, sys, urllib.error, urllib.request
url, user, password = sys.argv[1], sys.argv[2], sys.argv[3]
request = urllib.request.Request(url)
if user:
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
context = ssl.create_default_context(cafile="/etc/ralph-monitor/tls/dashboard.crt")
try:
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        print(json.dumps([response.status, response.read().decode(errors="replace")]))
except urllib.error.HTTPError as error:
    print(json.dumps([error.code, ""]))
"""


def fetch(container: Container, url: str, user: str = "", password: str = "") -> tuple[int, str]:
    """(status, body) of a GET from inside the container; TLS checked against the installed certificate."""
    status, body = json.loads(container.run("python3", "-c", FETCH, url, user, password).stdout)
    return status, body


def test_dashboard_on_loopback_and_behind_a_password_over_tls(installed: Container) -> None:
    installed.run("ln", "-sf", "../sites-available/ralph-monitor.conf", "/etc/nginx/sites-enabled/ralph-monitor.conf")
    try:
        installed.run("nginx", "-t")
        installed.run("systemctl", "reload-or-restart", "nginx")
        installed.wait_until(lambda: installed.path("/var/lib/ralph-monitor/site/current/index.html").exists(),
                             60, "the first render")

        status, page = fetch(installed, "http://127.0.0.1/")
        assert status == 200 and "ralph-monitor" in page
        status, snapshot = fetch(installed, "http://127.0.0.1/api/status.json")
        assert status == 200 and json.loads(snapshot)["kind"] == "status"

        # Another address of this host: not the dashboard (Debian's default site answers there).
        status, other = fetch(installed, "http://127.0.0.2/")
        assert "ralph-monitor" not in other

        # TLS: nobody gets in until a user is added.
        assert fetch(installed, "https://127.0.0.1/")[0] == 401
        assert installed.run("ralph-monitor", "dashboard-user", "list").stdout == ""
        added = installed.run("ralph-monitor", "dashboard-user", "add", "alice", "--password-stdin",
                              input="correct horse battery\n")
        assert "added alice" in added.stdout
        assert installed.run("stat", "-c", "%a %U %G", "/etc/ralph-monitor/dashboard.htpasswd").stdout.split() \
            == ["640", "root", "www-data"]
        status, page = fetch(installed, "https://127.0.0.1/", "alice", "correct horse battery")
        assert status == 200 and "ralph-monitor" in page
        assert fetch(installed, "https://127.0.0.1/", "alice", "wrong password")[0] == 401
        installed.run("ralph-monitor", "dashboard-user", "remove", "alice")
        assert fetch(installed, "https://127.0.0.1/", "alice", "correct horse battery")[0] == 401
    finally:
        installed.run("rm", "-f", "/etc/nginx/sites-enabled/ralph-monitor.conf")
        installed.run("systemctl", "reload-or-restart", "nginx")
