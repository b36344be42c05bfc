"""The system tier: the Debian package installed in booted Debian 12 containers, under a real
systemd (tests/system/container.py). Every test here is marked `system`; the whole tier skips,
saying why, only where this machine cannot boot a container (not root, no systemd-nspawn or
debootstrap, no overlay file system).

The package is built once per run; one container with it installed is shared by the tests that
leave it as they found it (`installed`), and tests that change the installation itself boot
their own (`fresh_container`).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import short_tempdir
from tests.system.container import Container, unavailable

REPO = Path(__file__).resolve().parents[2]
UNAVAILABLE = unavailable()
_names = itertools.count(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.system)
            if UNAVAILABLE:
                item.add_marker(pytest.mark.skip(reason=f"cannot boot a test container: {UNAVAILABLE}"))


def build_deb(outdir: Path, *, revision: str = "1") -> Path:
    proc = subprocess.run([str(REPO / "packaging" / "build-deb"), str(outdir)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "DEB_REVISION": revision}, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip())


@pytest.fixture(scope="session")
def deb() -> Iterator[Path]:
    """The package, built from this checkout by packaging/build-deb."""
    outdir = short_tempdir("rm-deb-")
    yield build_deb(outdir)
    shutil.rmtree(outdir, ignore_errors=True)


def install(container: Container, package: Path) -> subprocess.CompletedProcess[str]:
    """`apt install ./<package>` inside the container (no network: everything it needs is there)."""
    target = container.merged / "root" / package.name
    target.write_bytes(package.read_bytes())
    return container.run("apt-get", "install", "-y", "-q", f"/root/{package.name}", timeout=300)


@pytest.fixture
def fresh_container() -> Iterator[Container]:
    """A newly booted container without the package, for one test."""
    container = Container(f"ralph-sys-{next(_names)}", short_tempdir("rm-ct-"))
    try:
        yield container.boot()
    finally:
        container.shutdown()


@pytest.fixture(scope="session")
def installed(deb: Path) -> Iterator[Container]:
    """One container with the package installed by apt, shared by the tests that leave the
    installation as they found it. An agent user `agent` (in group ralph) and `outsider` (not)."""
    container = Container("ralph-sys-0", short_tempdir("rm-ct-"))
    try:
        container.boot()
        install(container, deb)
        container.run("useradd", "--create-home", "--groups", "ralph", "agent")
        container.run("useradd", "--create-home", "outsider")
        yield container
    finally:
        container.shutdown()
