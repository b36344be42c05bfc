"""`ralph-monitor dashboard-user add|remove|list`: who may open the dashboard from another
machine. The packaged nginx site answers on 127.0.0.1 without a password and on port 443 (TLS)
only with one from this htpasswd file; an empty file lets nobody in.

Passwords are hashed with SHA-512 crypt (`$6$`, what nginx's crypt(3) reads) from the system's
libcrypt, never stored in clear. The file is replaced atomically, mode 0640, group www-data
(nginx's workers read it) when that group exists.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import getpass
import grp
import os
import re
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

from ralph_monitor.cli_common import EXIT_FAILURE, EXIT_OK
from ralph_monitor.config import Settings
from ralph_monitor.errors import ConfigError

DEFAULT_FILE = Path("/etc/ralph-monitor/dashboard.htpasswd")
NGINX_GROUP = "www-data"
_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_SALT_CHARS = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def hash_password(password: str) -> str:
    """SHA-512 crypt of `password` with a fresh salt, as `crypt(3)` makes it."""
    library = ctypes.util.find_library("crypt")
    if library is None:
        raise ConfigError("libcrypt is not installed (Debian package libcrypt1)")
    crypt = ctypes.CDLL(library).crypt
    crypt.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
    crypt.restype = ctypes.c_char_p
    salt = "$6$" + "".join(secrets.choice(_SALT_CHARS) for _ in range(16))
    hashed = crypt(password.encode(), salt.encode())
    if not hashed or not hashed.startswith(salt.encode()):
        raise ConfigError("this system's crypt(3) cannot make SHA-512 hashes")
    return hashed.decode()


def read_users(path: Path) -> dict[str, str]:
    """name -> hash of every user in the file (none when it does not exist)."""
    if not path.exists():
        return {}
    users = {}
    for line in path.read_text().splitlines():
        name, sep, hashed = line.partition(":")
        if sep and name and not name.startswith("#"):
            users[name] = hashed
    return users


def write_users(path: Path, users: dict[str, str]) -> None:
    """Replace the file atomically with `users`, readable by root and nginx only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.writelines(f"{name}:{hashed}\n" for name, hashed in sorted(users.items()))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o640)
        try:
            os.chown(tmp, -1, grp.getgrnam(NGINX_GROUP).gr_gid)
        except KeyError:
            pass   # no nginx here (yet): root alone reads it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise ConfigError("the two passwords differ")
    if len(password) < 8:
        raise ConfigError("a dashboard password needs at least 8 characters")
    return password


def _cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    if not _NAME.match(args.name):
        raise ConfigError(f"{args.name!r} is not a user name nginx can read (letters, digits, . _ @ -)")
    users = read_users(args.file)
    existed = args.name in users
    users[args.name] = hash_password(_read_password(args.password_stdin))
    write_users(args.file, users)
    print(f"{'password changed for' if existed else 'added'} {args.name} in {args.file}")
    return EXIT_OK


def _cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    users = read_users(args.file)
    if users.pop(args.name, None) is None:
        print(f"{args.name} is not in {args.file}", file=sys.stderr)
        return EXIT_FAILURE
    write_users(args.file, users)
    print(f"removed {args.name} from {args.file}")
    return EXIT_OK


def _cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    for name in read_users(args.file):
        print(name)
    return EXIT_OK


def add_commands(sub: Any) -> None:
    users = sub.add_parser(
        "dashboard-user", help="who may open the dashboard from another machine (nginx basic auth over TLS)",
        description="Manage the htpasswd file of the packaged nginx site: on 127.0.0.1 the dashboard needs "
        "no password; on port 443 (TLS) it asks for one of these users. Run as root.")
    actions = users.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, func, help_text in (("add", _cmd_add, "add a user, or change its password"),
                                    ("remove", _cmd_remove, "remove a user"),
                                    ("list", _cmd_list, "list the users")):
        parser = actions.add_parser(action, help=help_text)
        if action != "list":
            parser.add_argument("name", help="user name")
        if action == "add":
            parser.add_argument("--password-stdin", action="store_true",
                                help="read the password from the first line of stdin instead of asking twice")
        parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help=f"htpasswd file (default {DEFAULT_FILE})")
        parser.set_defaults(func=func, no_settings=True)
